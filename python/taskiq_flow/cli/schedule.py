"""``taskiq-flow schedule``: drives pipeline schedules, each slot fired once.

::

    taskiq-flow schedule app:schedules --redis redis://127.0.0.1:6379

``app:schedules`` names a :class:`~taskiq_flow.schedule.PipelineSchedule`, a list of them, or a
function returning either. With ``--redis`` any number of these processes (on any hosts) may
drive the same schedules: each slot runs once (its key claimed in Redis, see
:mod:`taskiq_flow.once`), and a scheduler started again does not run a slot twice. Without it, the
keys live in this process: run one scheduler only. The command runs until every schedule's window
ends (forever for a schedule without ``end``) or Ctrl-C. Errors are one line: exit status 2 for a
malformed command line, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
from typing import Any

from taskiq_flow.cli._help import HelpFormatter, OneLineParser, number
from taskiq_flow.cli._imports import check_import_path, import_object
from taskiq_flow.exceptions import InvalidValueError, TaskiqFlowError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="taskiq-flow schedule",
        description="Run pipelines on their schedules; each slot fires exactly once however "
        "many schedulers run (with --redis).",
        epilog=(
            "examples:\n"
            "  taskiq-flow schedule app:schedules --redis redis://127.0.0.1:6379\n"
            "  taskiq-flow schedule app:nightly                 (one process, keys in memory)"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "schedules",
        metavar="MODULE:ATTRIBUTE",
        help="a PipelineSchedule, a list of them, or a function returning either",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="claim each slot in this Redis (for many schedulers)"
    )
    parser.add_argument(
        "--prefix", default="taskiq_flow", help="key prefix in Redis (default taskiq_flow)"
    )
    parser.add_argument(
        "--lease",
        type=number(0.1, 1e6),
        default=15.0,
        metavar="SECONDS",
        help="how long a slot's run stays held after its scheduler died (default 15)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _schedules(path: str) -> list[Any]:
    from taskiq_flow.schedule import PipelineSchedule

    found = import_object(path, "schedule")
    if inspect.isfunction(found):
        found = found()
    if isinstance(found, PipelineSchedule):
        return [found]
    if isinstance(found, (list, tuple)) and all(isinstance(s, PipelineSchedule) for s in found):
        return list(found)
    raise InvalidValueError(
        f"{path!r} is a {type(found).__name__}, not a PipelineSchedule or a list of them"
    )


async def _run(schedules: list[Any], url: str | None, prefix: str, lease: float) -> int:
    from taskiq_flow.once import KeyStore, RedisKeyStore
    from taskiq_flow.schedule import Scheduler

    client: Any = None
    store: KeyStore | None = None
    if url is not None:
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        store = RedisKeyStore(client, prefix=prefix, lease_seconds=lease)
        await client.ping()  # an unreachable Redis is one line, before anything runs
    scheduler = Scheduler(schedules, store)
    brokers = scheduler.brokers()
    for broker in brokers:
        await broker.startup()
    try:
        await scheduler.run()
    finally:
        for broker in brokers:
            await broker.shutdown()
        if client is not None:
            await client.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``taskiq-flow schedule``; returns the exit status."""
    args = _parser().parse_args(argv)
    problem = check_import_path(args.schedules, "schedule")
    if problem is not None:
        sys.stderr.write(f"taskiq-flow schedule: {problem}\n")
        return 2
    from redis.exceptions import RedisError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    try:
        schedules = _schedules(args.schedules)
        return asyncio.run(_run(schedules, args.redis, args.prefix, args.lease))
    except (TaskiqFlowError, OSError, RedisError) as exc:
        sys.stderr.write(f"taskiq-flow schedule: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("taskiq-flow schedule: interrupted\n")
        return 130
