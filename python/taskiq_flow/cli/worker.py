"""``taskiq-flow worker``: a taskiq worker that advertises what it offers and takes placed tasks.

::

    taskiq-flow worker app:broker --name gpu-1 --cpu-cores 8 --ram-gb 32 \\
        --resource gpu=1 --label gpu=true [-- any taskiq worker option]

Everything is checked before any process starts (the name, each capacity, resource and label, and
the broker's import path, imported as ``taskiq worker`` will): bad input exits with status 2 and
one line, instead of a worker process that taskiq's supervisor restarts forever. Then it runs
``taskiq worker app:broker --workers 1`` with the advert in its environment and supervises it.
Ctrl-C or SIGTERM drain it and stop it with one line: it takes no new message, lets its running
tasks finish for up to ``--drain-timeout`` seconds (default 20), cancels what still runs, gives
back at once everything it holds (another worker takes it immediately) and exits; a second
signal, or 15 s past the drain timeout, kills it. A broker
made by :func:`taskiq_flow.distributed.reliable_stream_broker` then consumes the worker's own queue
first (``<queue>.<name>``) and keeps the advert alive in Redis with a heartbeat. An orchestrator
builds its pool from the live adverts::

    pool = ResourceAwareWorkerPool(await discover_workers(redis))

and every task the Rust placer puts on a worker is sent to that worker's own queue.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from taskiq_flow.cli._help import HelpFormatter, OneLineParser, paragraphs
from taskiq_flow.distributed import WORKER_ENV, validate_key_part
from taskiq_flow.distributed.broker import (
    CUT_GRACE,
    DEFAULT_DRAIN_TIMEOUT,
    validate_drain_timeout,
)
from taskiq_flow.distributed.workers import DRAIN_ENV
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.resources import WorkerSpec

__all__ = ["advert_from_args", "check_broker", "main"]

#: Seconds a Ctrl-C waits before this wrapper passes it on to ``taskiq worker`` (which a terminal's
#: Ctrl-C reaches directly too).
FORWARD_DELAY = 0.5

#: Seconds a stopping worker gets past its drain timeout (to cut, give back and exit) before
#: it is killed.
STOP_GRACE = 15.0


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


def _amount(key: str, raw: str) -> float | int:
    try:
        return float(raw) if "." in raw or "e" in raw.lower() else int(raw)
    except ValueError:
        raise InvalidValueError(
            f"--resource {key}={raw}: the amount must be a number, e.g. {key}=1"
        ) from None


def advert_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The advert a worker publishes, validated as the pool will read it.

    :raises InvalidValueError: for a bad name, capacity, resource or label.
    """
    validate_key_part("--name", args.name)
    advert: dict[str, object] = {"name": args.name, "cpu_cores": args.cpu_cores}
    if args.ram_gb is not None:
        advert["ram_gb"] = args.ram_gb
    else:
        advert["ram_mb"] = args.ram_mb or 0
    for key, value in _pairs(args.resource, "--resource").items():
        advert[key] = _amount(key, value)
    advert["labels"] = {k: _label_value(v) for k, v in _pairs(args.label, "--label").items()}
    try:
        WorkerSpec.parse(0, advert)  # the same checks as the pool: refuse bad capacities here
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(str(exc)) from None
    return advert


def check_broker(path: str, app_dir: str | None = None) -> None:
    """Imports ``module:attribute`` as ``taskiq worker`` will, and checks it is a taskiq broker
    (or a function returning one), before any worker process starts.

    :raises InvalidValueError: naming what is wrong.
    """
    from taskiq import AsyncBroker

    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise InvalidValueError(f"the broker must look like module:attribute, got {path!r}")
    sys.path.insert(0, str(Path(app_dir or os.getcwd()).resolve()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever the user's module raises, reported in one line
        raise InvalidValueError(
            f"cannot import {module_name!r} for the broker {path!r}: {type(exc).__name__}: {exc}"
        ) from None
    broker = module
    for part in attribute.split("."):
        if not hasattr(broker, part):
            raise InvalidValueError(f"{module_name!r} has no {attribute!r} (the broker {path!r})")
        broker = getattr(broker, part)
    if not isinstance(broker, AsyncBroker) and not inspect.isfunction(broker):
        raise InvalidValueError(
            f"{path!r} is a {type(broker).__name__}, not a taskiq broker (or a function "
            "returning one)"
        )


def main(argv: list[str] | None = None) -> int:
    """Validates everything (name, capacity, broker import path), then runs ``taskiq worker``
    with the advert and supervises it: Ctrl-C or SIGTERM stop it gracefully, with one line.

    :return: the exit status (2 for bad input, before any process starts).
    """
    parser = OneLineParser(
        prog="taskiq-flow worker",
        description=paragraphs(
            "Run a taskiq worker (taskiq worker BROKER --workers 1) that advertises what it "
            "offers in Redis and consumes its own queue first, so that a "
            "ResourceAwareWorkerPool built from discover_workers() places tasks on it. "
            "Everything is checked before any process starts; bad input exits with status 2 "
            "and one line."
        ),
        epilog=(
            "examples:\n"
            "  taskiq-flow worker app:broker --name cpu-1 --cpu-cores 4 --ram-gb 16\n"
            "  taskiq-flow worker app:broker --name gpu-1 --cpu-cores 8 --ram-gb 32 \\\n"
            "      --resource gpu=1 --label gpu=true\n"
            "\n"
            "taskiq worker options: put them after --, they are passed through as given:\n"
            "  taskiq-flow worker app:broker --name w1 --cpu-cores 2 -- --max-async-tasks 50\n"
            "\n"
            "Ctrl-C or SIGTERM drains the worker: no new message is taken, running tasks\n"
            "finish for up to --drain-timeout seconds, what still runs is cancelled, and\n"
            "everything it holds is given back at once to the other workers. A second\n"
            "signal, or 15 s past the drain timeout, kills it."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "broker", help="the broker, as taskiq worker takes it (module:attribute, e.g. app:broker)"
    )
    parser.add_argument(
        "--name",
        required=True,
        help="unique worker name, letters, digits and _.- (required); its own queue is "
        "<queue>.<name>",
    )
    parser.add_argument(
        "--cpu-cores",
        type=float,
        default=0.0,
        metavar="N",
        help="CPU cores this worker offers; 0.5 is half a core (default: 0)",
    )
    ram = parser.add_mutually_exclusive_group()
    ram.add_argument(
        "--ram-gb", type=float, metavar="N", help="RAM this worker offers, in GB (default: 0)"
    )
    ram.add_argument(
        "--ram-mb",
        type=float,
        metavar="N",
        help="RAM this worker offers, in MB; instead of --ram-gb (default: 0)",
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="any other resource it offers, e.g. gpu=1 (repeatable; default: none)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label tasks can require, e.g. gpu=true (repeatable; default: none)",
    )
    parser.add_argument(
        "--drain-timeout",
        default=str(DEFAULT_DRAIN_TIMEOUT),
        metavar="S",
        help="seconds a stopping worker lets its running tasks finish before it cancels them "
        "and gives back what it holds; 0 cancels at once (default: %(default)s)",
    )
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    app_dir = None
    if "--app-dir" in rest[:-1]:
        app_dir = rest[rest.index("--app-dir") + 1]
    try:
        drain = validate_drain_timeout(args.drain_timeout, "--drain-timeout")
        advert = advert_from_args(args)
        check_broker(args.broker, app_dir)
    except InvalidValueError as exc:
        parser.error(str(exc))
    env = {**os.environ, WORKER_ENV: json.dumps(advert), DRAIN_ENV: repr(drain)}
    command = [sys.executable, "-m", "taskiq", "worker", args.broker, "--workers", "1", *rest]
    return _supervise(command, env, args.name, drain + CUT_GRACE + STOP_GRACE)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            found += [int(k) for k in kids]
            todo += [int(k) for k in kids]
    return found


def _supervise(command: list[str], env: dict[str, str], name: str, grace: float) -> int:
    """Runs ``taskiq worker``; on the first SIGINT/SIGTERM asks it to stop (SIGINT, taskiq's
    graceful stop: its child drains), on the second or after ``grace`` seconds kills it and its
    children."""
    proc = subprocess.Popen(command, env=env)
    stopping: list[Any] = []

    def kill_all() -> None:
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    forwarded = False

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:
            kill_all()
            return
        stopping.append((signal.Signals(signum), time.monotonic()))

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while True:
        try:
            code = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            if not stopping:
                continue
            how, since = stopping[0]
            waited = time.monotonic() - since
            # The stop is passed on from this loop, not the handler, and a Ctrl-C only after a
            # moment: a terminal's Ctrl-C reached taskiq's supervisor too, and a second SIGINT
            # landing while its handler runs deadlocks it (its handler puts on a
            # multiprocessing queue, which is not reentrant).
            if not forwarded and (how == signal.SIGTERM or waited >= FORWARD_DELAY):
                forwarded = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
            if waited > grace:
                kill_all()
    if stopping:
        sys.stderr.write(f"taskiq-flow worker {name}: stopped by {stopping[0][0].name}\n")
        return 0
    return code
