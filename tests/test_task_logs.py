"""What taskiq's receiver logs of a pipeline task that skipped or was cut: one INFO line, not an
ERROR with a traceback; a task that really failed is still logged as an error."""

from __future__ import annotations

import asyncio
import logging

import pytest
from taskiq import InMemoryBroker

from taskiq_flow import FlowMiddleware, MapReduce, PipelineCancelledError, Skip, start
from taskiq_flow._logs import RECEIVER_LOGGER
from tests.conftest import until


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the receiver said of how tasks ended (not its "Executing task" lines)."""
    return [
        r
        for r in caplog.records
        if r.name == RECEIVER_LOGGER and not r.getMessage().startswith("Executing task")
    ]


async def test_a_skip_is_an_info_line_and_a_failure_stays_an_error(
    broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    broker.add_middlewares(FlowMiddleware())

    @broker.task
    async def nothing_new() -> int:
        raise Skip("no rows since yesterday")

    @broker.task
    async def broken() -> int:
        raise ValueError("a real fault")

    caplog.set_level(logging.INFO, logger=RECEIVER_LOGGER)
    assert (await (await nothing_new.kiq()).wait_result(timeout=10)).is_err
    skips = _records(caplog)
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in skips] == [
        (logging.INFO, "A pipeline task skipped: no rows since yesterday", None)
    ]

    caplog.clear()
    assert (await (await broken.kiq()).wait_result(timeout=10)).is_err
    (failure,) = _records(caplog)
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], ValueError)


async def test_attempts_cut_by_a_cancel_are_info_lines(
    broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[int] = []

    @broker.task
    async def slow(x: int) -> int:
        started.append(x)
        await asyncio.sleep(60)
        return x

    caplog.set_level(logging.INFO, logger=RECEIVER_LOGGER)
    run = start(MapReduce.map, broker, slow, range(5), max_parallel=5)
    await until(lambda: len(started) == 5, what="5 attempts to start")
    run.cancel()
    with pytest.raises(PipelineCancelledError):
        await run
    await until(lambda: len(_records(caplog)) >= 5, what="the 5 cut attempts to be logged")
    assert {(r.levelno, r.getMessage()) for r in _records(caplog)} == {
        (logging.INFO, "A pipeline task was cut: its run was cancelled")
    }
