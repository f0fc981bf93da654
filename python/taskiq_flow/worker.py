"""``taskiq-flow worker``: a taskiq worker that advertises what it offers and takes placed tasks.

::

    taskiq-flow worker app:broker --name gpu-1 --cpu-cores 8 --ram-gb 32 \\
        --resource gpu=1 --label gpu=true [-- any taskiq worker option]

It runs ``taskiq worker app:broker --workers 1`` with the advert in its environment. A broker made
by :func:`taskiq_flow.distributed.reliable_stream_broker` then consumes the worker's own queue
first (``<queue>.<name>``) and keeps the advert alive in Redis with a heartbeat. An orchestrator
builds its pool from the live adverts::

    pool = ResourceAwareWorkerPool(await discover_workers(redis))

and every task the Rust placer puts on a worker is sent to that worker's own queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from taskiq_flow.distributed import WORKER_ENV
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.resources import WorkerSpec

__all__ = ["advert_from_args", "main"]


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidValueError(f"{what} must look like key=value, got {item!r}")
        out[key] = value
    return out


def _label_value(raw: str) -> object:
    try:
        return json.loads(raw)  # true, 3, 2.5 ...
    except ValueError:
        return raw


def advert_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The advert a worker publishes, validated as the pool will read it."""
    advert: dict[str, object] = {"name": args.name, "cpu_cores": args.cpu_cores}
    if args.ram_gb is not None:
        advert["ram_gb"] = args.ram_gb
    else:
        advert["ram_mb"] = args.ram_mb or 0
    for key, value in _pairs(args.resource, "--resource").items():
        advert[key] = float(value) if "." in value else int(value)
    advert["labels"] = {k: _label_value(v) for k, v in _pairs(args.label, "--label").items()}
    WorkerSpec.parse(0, advert)  # the same checks as the pool: refuse bad capacities here
    return advert


def main(argv: list[str] | None = None) -> int:
    """Parses the worker's capacity and execs ``taskiq worker`` with its advert."""
    parser = argparse.ArgumentParser(prog="taskiq-flow worker", description=__doc__.split("\n")[0])
    parser.add_argument("broker", help="the broker, as taskiq worker takes it (module:attribute)")
    parser.add_argument("--name", required=True, help="unique worker name ([A-Za-z0-9_.-])")
    parser.add_argument("--cpu-cores", type=float, default=0.0)
    ram = parser.add_mutually_exclusive_group()
    ram.add_argument("--ram-gb", type=float)
    ram.add_argument("--ram-mb", type=float)
    parser.add_argument("--resource", action="append", default=[], help="name=amount, e.g. gpu=1")
    parser.add_argument("--label", action="append", default=[], help="key=value, e.g. gpu=true")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    try:
        advert = advert_from_args(args)
    except InvalidValueError as exc:
        parser.error(str(exc))
    env = {**os.environ, WORKER_ENV: json.dumps(advert)}
    command = [sys.executable, "-m", "taskiq", "worker", args.broker, "--workers", "1", *rest]
    os.execvpe(sys.executable, command, env)
    return 0  # pragma: no cover - exec does not return
