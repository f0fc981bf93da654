"""``taskiq-flow runs resume``: running a run whose orchestrator died to the end.

::

    taskiq-flow runs list --redis redis://127.0.0.1:6379 --status abandoned
    taskiq-flow runs resume RUN --redis URL --pipeline app:pipeline

A run whose orchestrator died shows as ``abandoned`` once its lease lapsed. ``resume`` imports the
dataflow pipeline the run was made with (``module:attribute``, a
:class:`~taskiq_flow.DataflowPipeline` or a function returning one), refuses a run that is live in
another process or already finished, and runs it to the end from what tracking recorded, with the
inputs stored with the run. Inputs given (``--input NAME=JSON``, repeatable) must be the stored
ones, unless the change is allowed (``inputs_changed_ok``, ``--inputs-changed-ok``); a run whose
inputs could not be stored (over the storage's size limit) needs them given. Everything is checked
before anything is sent; errors are one line: exit status 2 for a malformed ``--input``, 1 for
anything else.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from typing import Any

from redis.exceptions import RedisError

from taskiq_flow.cli._imports import import_object
from taskiq_flow.exceptions import InvalidValueError, TaskiqFlowError

__all__ = ["parse_inputs", "resume"]


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``["x=3", 'folder="/data"']`` as ``{"x": 3, "folder": "/data"}``: each value is JSON.

    :raises InvalidValueError: for a pair without ``=``, a name given twice, or a value that is
        not JSON (saying that a string needs JSON quotes, with the pair quoted as it should be).
    """
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InvalidValueError(f"--input must look like NAME=JSON, got {pair!r}")
        if name in inputs:
            raise InvalidValueError(f"--input {name} is given twice")
        try:
            inputs[name] = json.loads(raw)
        except ValueError:
            quoted = json.dumps(raw)
            raise InvalidValueError(
                f"--input {name}: {raw!r} is not JSON; a string needs JSON quotes: "
                f"--input {name}='{quoted}'"
            ) from None
    return inputs


def _import_pipeline(path: str) -> Any:
    from taskiq_flow.dataflow import DataflowPipeline

    found = import_object(path, "--pipeline")
    if inspect.isfunction(found):
        found = found()
    if not isinstance(found, DataflowPipeline):
        raise InvalidValueError(f"{path!r} is a {type(found).__name__}, not a DataflowPipeline")
    return found


async def _resume(
    url: str,
    prefix: str,
    run_id: str,
    pipeline: Any,
    given: dict[str, Any] | None,
    inputs_changed_ok: bool,
    timeout: float,
) -> int:
    from taskiq_flow.cli.runs import redis_client
    from taskiq_flow.distributed import RedisPipelineStorage
    from taskiq_flow.tracking import PipelineTrackingManager

    async with redis_client(url, timeout) as redis:
        tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix=prefix))
        record = await tracking.get_status(run_id)
        if record.status == "running":
            raise InvalidValueError(
                f"run {run_id} is live in another process; it can be resumed once abandoned"
            )
        if record.status == "done":
            raise InvalidValueError(f"run {run_id} is done: nothing to resume")
        inputs = await tracking.resume_inputs(run_id, given, inputs_changed_ok=inputs_changed_ok)
        await pipeline.broker.startup()
        try:
            outputs = await pipeline.with_tracking(tracking).resume(run_id, **inputs)
        finally:
            await pipeline.broker.shutdown()
    print(json.dumps(outputs, default=repr))
    return 0


def resume(
    url: str,
    prefix: str,
    run_id: str,
    pipeline: str,
    inputs: list[str],
    inputs_changed_ok: bool = False,
    timeout: float = 10.0,
) -> int:
    """``taskiq-flow runs resume``: checks the input, then runs ``run_id`` to the end with the
    inputs stored with it (or ``inputs``, ``NAME=JSON`` each, if they are the stored ones or
    ``inputs_changed_ok``); returns the exit status (errors are one line on stderr: 2 for a
    malformed ``--input``, 1 for anything else). ``timeout`` bounds each wait for Redis, in
    seconds."""
    try:
        values = parse_inputs(inputs)
    except InvalidValueError as exc:
        sys.stderr.write(f"taskiq-flow runs: {exc}\n")
        return 2
    try:
        found = _import_pipeline(pipeline)
        return asyncio.run(
            _resume(url, prefix, run_id, found, values or None, inputs_changed_ok, timeout)
        )
    except (TaskiqFlowError, OSError, RedisError) as exc:
        sys.stderr.write(f"taskiq-flow runs: {type(exc).__name__}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("taskiq-flow runs: interrupted\n")
        return 130
