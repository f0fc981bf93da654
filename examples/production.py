"""The production checklist, in one program: each item configured, then checked by a failure.

Docs: docs/performance.md#production-checklist

max_parallel sized for the kind of task, one connection limit shared by every task, timeouts and
retries (backoff and jitter) on every task, tracking that is cleaned up, dead letters reviewed
and replayed, and a failing dependency tried on purpose. Queue priorities and tracking TTLs need
Redis: see docs/redis.md.
Run: python examples/production.py
"""

import asyncio
import logging
import os

from taskiq import InMemoryBroker

from taskiq_flow import (
    CapacityLimiter,
    DataflowPipeline,
    DeadLetterQueue,
    PipelineTrackingManager,
    RetryPolicy,
    StepFailedError,
    pipeline_task,
)

broker = InMemoryBroker()
CORES = os.cpu_count() or 4
connections = CapacityLimiter(5)  # the database allows 5 connections: every task shares them
calls = {"enrich": 0}
service_up = {"geo": False}


@broker.task
@pipeline_task(output="rows", timeout=5)
async def load(batch: int) -> list[int]:
    async with connections:
        await asyncio.sleep(0.01)
        return list(range(batch * 10, batch * 10 + 10))


@broker.task
@pipeline_task(
    output="enriched",
    timeout=2,
    retry=RetryPolicy(max_attempts=4, delay=0.01, backoff=2.0, jitter=0.2),
)
async def enrich(rows: list[int]) -> list[int]:
    calls["enrich"] += 1
    if calls["enrich"] < 3:  # a flaky service: the first two attempts fail
        raise ConnectionError("enrichment service reset the connection")
    return [r * 2 for r in rows]


@broker.task
@pipeline_task(output="located", timeout=2, retry=RetryPolicy(max_attempts=2, delay=0.01))
async def locate(rows: list[int]) -> list[str]:
    if not service_up["geo"]:
        raise RuntimeError("geo service is down")
    return [f"cell-{r % 7}" for r in rows]


@broker.task
@pipeline_task(output="stored", timeout=5)
async def store(enriched: list[int]) -> int:
    async with connections:
        return len(enriched)


async def main() -> None:
    # The failures below are on purpose: keep taskiq's traceback per failed attempt quiet.
    logging.getLogger("taskiq").setLevel(logging.CRITICAL)
    tracking = PipelineTrackingManager()
    dead_letters = DeadLetterQueue()
    pipeline = (
        DataflowPipeline.from_tasks(
            broker,
            [load, enrich, locate, store],
            max_parallel=4 * CORES,  # I/O-bound steps: a few times the cores
            on_error="continue",  # a failed branch does not stop the others
            timeout=30,  # the whole run
        )
        .with_tracking(tracking)
        .with_dead_letters(dead_letters)
    )

    try:
        await pipeline.kiq_dataflow(batch=1)
        raise AssertionError("locate cannot succeed while the geo service is down")
    except StepFailedError as exc:
        print(f"failed step: {exc.step}; finished anyway: {sorted(exc.results)}")
        assert exc.step == "locate" and exc.results["stored"] == 10

    status = await tracking.get_status(pipeline.pipeline_id)
    attempts = {step.name: step.attempts for step in status.steps}
    print(f"attempts per step: {attempts}")
    assert attempts["enrich"] == 3  # two failures, retried with backoff

    # Review the dead letters, fix the cause, replay.
    letters = dead_letters.list()
    print(f"dead letters: {[(d.step, d.error_type, d.attempts) for d in letters]}")
    assert [d.step for d in letters] == ["locate"]
    service_up["geo"] = True
    replayed = await dead_letters.replay(letters[0].id, broker, timeout=5)
    print(f"replayed locate: {replayed[:3]}...; dead letters left: {len(dead_letters.list())}")
    assert dead_letters.list() == []

    # Bounded tracking: nothing is kept forever.
    await asyncio.sleep(0.01)
    removed = await tracking.cleanup(older_than=0)  # in a service: older_than=86_400, hourly
    print(f"tracking records cleaned up: {removed}")
    assert await tracking.list_pipelines() == []
    print("checklist: caps, shared connections, timeouts, retries, dead letters, cleanup: ok")


if __name__ == "__main__":
    asyncio.run(main())
