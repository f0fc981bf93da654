"""``taskiq-flow runs resume``: running a run whose orchestrator died to the end.

::

    taskiq-flow runs list --redis redis://127.0.0.1:6379 --status abandoned
    taskiq-flow runs resume RUN --redis URL --pipeline app:pipeline [--input name=JSON ...]

A run whose orchestrator died shows as ``abandoned`` once its lease lapsed. ``resume`` imports the
dataflow pipeline the run was made with (``module:attribute``, a
:class:`~taskiq_flow.DataflowPipeline` or a function returning one), refuses a run that is live in
another process or already finished, and runs it to the end from what tracking recorded, with the
same inputs given again (``--input``, each value JSON). Everything is checked before anything is
sent; errors are one line.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from taskiq_flow.exceptions import InvalidValueError, TaskiqFlowError

__all__ = ["resume"]


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


def resume(url: str, prefix: str, run_id: str, pipeline: str, inputs: list[str]) -> int:
    """``taskiq-flow runs resume``: checks the input, then runs ``run_id`` to the end; returns the
    exit status (errors are one line on stderr)."""
    try:
        values = _inputs(inputs)
        found = _import_pipeline(pipeline)
        return asyncio.run(_resume(url, prefix, run_id, found, values))
    except (TaskiqFlowError, OSError, RedisError) as exc:
        sys.stderr.write(f"taskiq-flow runs: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("taskiq-flow runs: interrupted\n")
        return 130
