"""A retry's backoff is a state of the core: the node keeps its slots while it waits, the core
hands it out again when the retry is due, explains the wait, and fails it if the run stops."""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import until
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    MapReduce,
    PipelineCancelledError,
    RetryPolicy,
    pipeline_task,
)
from taskiq_flow._core import DagScheduler
from taskiq_flow.optimization.parallel import global_cap, set_max_parallel_tasks


async def test_a_retry_waits_out_its_backoff_holding_its_slot(broker: InMemoryBroker) -> None:
    """Under a cap of 1, the item that failed keeps the slot through its backoff: the next item
    starts only after the retry finished, and the retry starts no sooner than its delay."""
    loop = asyncio.get_running_loop()
    started: list[tuple[int, float]] = []
    failed_once: set[int] = set()

    @broker.task
    async def flaky(x: int) -> int:
        started.append((x, loop.time()))
        if x == 0 and x not in failed_once:
            failed_once.add(x)
            raise RuntimeError("first attempt")
        return x * 10

    retry = RetryPolicy(max_attempts=2, delay=0.2, jitter=0.0)
    results = await MapReduce.map(broker, flaky, [0, 1], max_parallel=1, retry=retry)
    assert results == [0, 10]
    assert [x for x, _ in started] == [0, 0, 1]
    assert started[1][1] - started[0][1] >= 0.2 * 0.95  # the loop clock, as the core's


async def test_the_core_explains_a_backoff_with_its_due_time(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=2, delay=30, jitter=0))
    async def flaky(x: int) -> int:
        raise RuntimeError("boom")

    pipeline = DataflowPipeline(broker).add_dataflow_task(flaky)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    await until(lambda: _in_backoff(pipeline) or run.done())
    scheduler = _scheduler(pipeline)
    assert scheduler is not None
    why = scheduler.explain(0)
    now = asyncio.get_running_loop().time()
    assert (why["state"], why["reason"]) == ("running", "backoff")
    assert 25 < why["retry_at"] - now <= 30
    assert scheduler.counts()["backoff"] == 1
    assert scheduler.next_wakeup() == why["retry_at"]
    assert re.fullmatch(
        r"waiting: retry backoff after attempt 1 failed \(RuntimeError: boom\); "
        r"next attempt in (2\d|30)\.\d s",
        pipeline.explain("flaky"),
    )
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError):
        await asyncio.wait_for(run, 10)
    assert scheduler.state(0) == "failed"  # cancelled in its backoff: its last attempt failed
    assert scheduler.counts()["backoff"] == 0


def _scheduler(pipeline: DataflowPipeline) -> DagScheduler | None:
    """The core scheduler of the pipeline's run in progress."""
    engine = pipeline._last_engine
    run = engine.last_run if engine is not None else None
    return run.scheduler if run is not None else None


def _in_backoff(pipeline: DataflowPipeline) -> bool:
    scheduler = _scheduler(pipeline)
    return scheduler is not None and scheduler.explain(0)["reason"] == "backoff"


async def test_a_run_stopped_in_a_backoff_gives_its_process_slot_back_at_once(
    broker: InMemoryBroker,
) -> None:
    """The process cap is 1 and the only task waits out a 60 s backoff when its run is
    cancelled: the next run gets the slot at once, not after the backoff."""
    set_max_parallel_tasks(1)
    attempts: list[int] = []

    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=3, delay=60, jitter=0))
    async def flaky(x: int) -> int:
        attempts.append(x)
        raise RuntimeError("down")

    @broker.task
    async def fine(x: int) -> int:
        return x

    pipeline = DataflowPipeline(broker).add_dataflow_task(flaky)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    await until(lambda: _in_backoff(pipeline) or run.done())
    assert global_cap().cap.in_use == 1
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError):
        await asyncio.wait_for(run, 10)
    assert global_cap().cap.in_use == 0
    assert await asyncio.wait_for(MapReduce.map(broker, fine, [1, 2]), 10) == [1, 2]
    assert attempts == [1]  # never tried again after the cancel
