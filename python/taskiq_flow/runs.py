"""``taskiq-flow runs``: the runs tracked in Redis, and resuming one whose orchestrator died.

::

    taskiq-flow runs list --redis redis://127.0.0.1:6379 [--status abandoned]
    taskiq-flow runs resume RUN --redis URL --pipeline app:pipeline [--input name=JSON ...]

``list`` prints one line per run (id, state, name, steps done, age); a run whose orchestrator
died shows as ``abandoned`` once its lease lapsed. ``resume`` imports the dataflow pipeline the run
was made with (``module:attribute``, a :class:`~taskiq_flow.DataflowPipeline` or a function
returning one), refuses a run that is live in another process or already finished, and runs it to
the end from what tracking recorded, with the same inputs given again (``--input``, each value
JSON). Everything is checked before anything is sent; errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from redis.exceptions import RedisError

from taskiq_flow.exceptions import InvalidValueError, TaskiqFlowError

__all__ = ["main"]


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InvalidValueError(f"--input must look like name=JSON, got {pair!r}")
        try:
            inputs[name] = json.loads(raw)
        except ValueError:
            raise InvalidValueError(f"--input {name}: not JSON: {raw!r}") from None
    return inputs


def _import_pipeline(path: str) -> Any:
    from taskiq_flow.dataflow import DataflowPipeline

    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise InvalidValueError(f"--pipeline must look like module:attribute, got {path!r}")
    sys.path.insert(0, str(Path(os.getcwd()).resolve()))
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:  # the user's module, reported in one line
        raise InvalidValueError(f"cannot import {path!r}: {type(exc).__name__}: {exc}") from None
    if inspect.isfunction(found):
        found = found()
    if not isinstance(found, DataflowPipeline):
        raise InvalidValueError(f"{path!r} is a {type(found).__name__}, not a DataflowPipeline")
    return found


async def _list(url: str, prefix: str, status: str | None) -> int:
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisPipelineStorage
    from taskiq_flow.tracking import PipelineTrackingManager

    async with Redis.from_url(url) as redis:
        tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix=prefix))
        runs = await tracking.list_pipelines(status=status)  # type: ignore[arg-type]
    now = time.time()
    for run in runs:
        done = sum(1 for s in run.steps if s.status == "done")
        print(
            f"{run.pipeline_id}  {run.status:<9}  {run.name}  {done}/{len(run.steps)} steps  "
            f"started {now - run.started_at:,.0f}s ago"
        )
    return 0


async def _resume(url: str, prefix: str, run_id: str, pipeline: Any, inputs: Any) -> int:
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisPipelineStorage
    from taskiq_flow.tracking import PipelineTrackingManager

    async with Redis.from_url(url) as redis:
        tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix=prefix))
        record = await tracking.get_status(run_id)
        if record.status == "running":
            raise InvalidValueError(
                f"run {run_id} is live in another process; it can be resumed once abandoned"
            )
        if record.status == "done":
            raise InvalidValueError(f"run {run_id} is done: nothing to resume")
        await pipeline.broker.startup()
        try:
            outputs = await pipeline.with_tracking(tracking).resume(run_id, **inputs)
        finally:
            await pipeline.broker.shutdown()
    print(json.dumps(outputs, default=repr))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``taskiq-flow runs list|resume ...``; returns the exit status."""
    parser = _OneLineParser(prog="taskiq-flow runs", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    listing = commands.add_parser("list", help="the tracked runs and their states")
    resuming = commands.add_parser("resume", help="run an abandoned run to the end")
    for sub in (listing, resuming):
        sub.add_argument("--redis", required=True, help="the Redis URL tracking lives in")
        sub.add_argument("--prefix", default="taskiq_flow", help="the tracking key prefix")
    listing.add_argument("--status", help="only runs in this state (running, abandoned, ...)")
    resuming.add_argument("run", help="the run id")
    resuming.add_argument("--pipeline", required=True, help="module:attribute of the pipeline")
    resuming.add_argument("--input", action="append", default=[], help="name=JSON, repeated")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return asyncio.run(_list(args.redis, args.prefix, args.status))
        inputs = _inputs(args.input)
        pipeline = _import_pipeline(args.pipeline)
        return asyncio.run(_resume(args.redis, args.prefix, args.run, pipeline, inputs))
    except (TaskiqFlowError, OSError, RedisError) as exc:
        sys.stderr.write(f"taskiq-flow runs: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("taskiq-flow runs: interrupted\n")
        return 130
