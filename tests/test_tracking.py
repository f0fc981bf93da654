"""The tracking manager: status, listing, deletion, cleanup by age; a step's tasks counted by
state."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import (
    InvalidValueError,
    MapReduce,
    PipelineTrackingManager,
    RetryPolicy,
    StepFailedError,
    UnknownIdError,
)
from taskiq_flow.distributed import RedisPipelineStorage


async def test_lifecycle_listing_deletion_and_cleanup() -> None:
    tracking = PipelineTrackingManager()
    await tracking.begin("run-1", "etl", [("load", 1), ("map(clean)", 10)])
    live = await tracking.get_status("run-1")
    assert (live.status, [s.name for s in live.steps]) == ("running", ["load", "map(clean)"])
    assert live.steps[1].tasks == 10
    await tracking.end("run-1", "done")
    await tracking.begin("run-2", "etl", [("load", 1)])
    await tracking.end("run-2", "failed", "boom")
    assert [s.pipeline_id for s in await tracking.list_pipelines()] == ["run-1", "run-2"]
    assert [s.pipeline_id for s in await tracking.list_pipelines("failed")] == ["run-2"]
    failed = await tracking.get_status("run-2")
    assert failed.error == "boom" and failed.duration_ms is not None
    assert failed.steps[0].status == "cancelled"  # never finished
    assert await tracking.delete_pipeline("run-1")
    assert not await tracking.delete_pipeline("run-1")
    with pytest.raises(UnknownIdError, match="no pipeline run with id 'run-1'"):
        await tracking.get_status("run-1")
    assert await tracking.cleanup(older_than=3600) == 0
    ended = failed.finished_at
    assert ended is not None
    await until(lambda: time.time() > ended, 5, "the clock to pass the run's end")
    assert await tracking.cleanup(older_than=0) == 1
    assert await tracking.list_pipelines() == []
    with pytest.raises(InvalidValueError):
        await tracking.cleanup(older_than=-1)


# -- a step of many tasks counts them by state ---------------------------------------------------


async def _map_counts_mid_run(
    broker: InMemoryBroker, tracking: PipelineTrackingManager, reader: PipelineTrackingManager
) -> None:
    """A 10^4-item map (its max_parallel is its run's cap, 50) whose items from 5000 on wait for
    a gate: mid-run, the one step reads 5000 done, 50 running, 4950 pending; at the end, 10^4
    done. ``reader`` reads the records as another process would (``runs show``)."""
    items, cap, held = 10_000, 50, 5_000
    gate = asyncio.Event()
    blocked: list[int] = []
    all_blocked = asyncio.Event()

    @broker.task
    async def item(x: int) -> int:
        if x >= held:
            blocked.append(x)
            if len(blocked) == cap:
                all_blocked.set()
            await gate.wait()
        return x

    run = asyncio.ensure_future(
        MapReduce.map(broker, item, range(items), max_parallel=cap, tracking=tracking)
    )
    await asyncio.wait_for(all_blocked.wait(), 60)
    [record] = await tracking.list_pipelines()
    # 5050 admitted (0..5049) with 50 in flight: 5000 finished, and only those could.
    expected = {"pending": 4_950, "running": 50, "retrying": 0, "done": 5_000}
    expected |= {"failed": 0, "skipped": 0, "cancelled": 0}

    async def live_counts() -> dict[str, int]:
        [step] = (await reader.get_status(record.pipeline_id)).steps
        return dict(step.counts)

    async def counted() -> bool:
        return await live_counts() == expected

    await until(counted, 30, f"the records to read {expected}")
    live = await reader.get_status(record.pipeline_id)
    [step] = live.steps
    assert (step.tasks, step.status, live.status) == (items, "running", "running")
    assert step.attempts == held + cap and "5000 done, 50 running, 4950 pending" in (
        step.counts_text()
    )
    gate.set()
    assert await asyncio.wait_for(run, 120) == list(range(items))
    done = await reader.get_status(record.pipeline_id)
    [step] = done.steps
    assert (done.status, step.status, step.tasks, step.attempts) == ("done", "done", items, items)
    assert step.counts == {"pending": 0, "running": 0, "retrying": 0, "done": items,
                           "failed": 0, "skipped": 0, "cancelled": 0}  # fmt: skip
    assert sum(step.counts.values()) == items
    # The other 9950 waited for the run's own cap, and the record says so.
    assert set(step.waited) <= {"ready", "run_cap"} and step.waited["run_cap"] > 0


async def test_a_ten_thousand_item_map_is_one_step_counting_its_tasks(
    broker: InMemoryBroker,
) -> None:
    tracking = PipelineTrackingManager()
    await _map_counts_mid_run(broker, tracking, tracking)


async def test_counts_read_from_redis_by_another_process_agree_with_the_run(
    broker: InMemoryBroker, redis_url: str
) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
        prefix = "counts_test"
        tracking = PipelineTrackingManager(RedisPipelineStorage(client, prefix=prefix))
        other = PipelineTrackingManager(RedisPipelineStorage(client, prefix=prefix))
        await _map_counts_mid_run(broker, tracking, other)
    finally:
        await client.aclose()


async def test_counts_of_failed_skipped_and_cancelled_tasks(broker: InMemoryBroker) -> None:
    """A map with failures (on_error="continue"): one step, each task counted where it ended;
    a run that fails fast: what never ran is counted cancelled."""

    @broker.task
    async def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    tracking = PipelineTrackingManager()
    with pytest.raises(StepFailedError):
        await MapReduce.map(
            broker, odd_fails, range(10), max_parallel=3, on_error="continue",
            retry=RetryPolicy(max_attempts=1), tracking=tracking,
        )  # fmt: skip
    [record] = await tracking.list_pipelines()
    [step] = record.steps
    assert (step.status, step.tasks_done, step.tasks_failed, step.tasks_pending) == (
        "failed", 5, 5, 0,
    )  # fmt: skip
    assert sum(step.counts.values()) == 10

    gate = asyncio.Event()

    @broker.task
    async def first_fails(x: int) -> int:
        if x == 0:
            raise ValueError("the first fails")
        await gate.wait()
        return x

    fast = PipelineTrackingManager()
    with pytest.raises(StepFailedError):
        await MapReduce.map(
            broker, first_fails, range(10), max_parallel=3,
            retry=RetryPolicy(max_attempts=1), tracking=fast,
        )  # fmt: skip
    gate.set()
    [record] = await fast.list_pipelines()
    [step] = record.steps
    assert record.status == "failed" and step.tasks_failed == 1
    # Two were out when it stopped, seven never started: all cancelled for this run.
    assert (step.tasks_cancelled, step.tasks_pending, step.tasks_running) == (9, 0, 0)
    assert sum(step.counts.values()) == 10


async def test_old_records_read_back_with_their_counts(redis_url: str) -> None:
    """A step record written before the counts (and a run before resumes) reads back: its
    ``tasks_done`` is kept and the other counts are 0."""
    client = Redis.from_url(redis_url)
    try:
        storage = RedisPipelineStorage(client, prefix="old_records")
        run_key, steps_key, _ = storage.keys_of("old")
        head = {"pipeline_id": "old", "name": "etl", "status": "done", "started_at": 1.0,
                "finished_at": 2.0, "error": None, "steps": 1}  # fmt: skip
        step = {"name": "map(clean)", "status": "done", "duration_ms": 5.0, "attempts": 12,
                "error": None, "started_at": 1.0, "finished_at": 1.5, "tasks": 10,
                "tasks_done": 10, "waited": {"ready": 0.5}, "waiting": None}  # fmt: skip
        await client.set(run_key, json.dumps(head), ex=60)
        await client.hset(steps_key, "0", json.dumps(step))
        await client.expire(steps_key, 60)
        record = await PipelineTrackingManager(storage).get_status("old")
        [read] = record.steps
        assert record.resumes == [] and record.resumed_at is None
        assert (read.tasks_done, read.attempts, read.counts["done"], read.tasks_pending) == (
            10, 12, 10, 0,
        )  # fmt: skip
        assert read.ready_at is None and read.waited == {"ready": 0.5}
    finally:
        await client.aclose()
