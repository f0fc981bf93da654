"""Pipelines on a schedule (taskiq_flow.schedule, taskiq-flow schedule): each slot once."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, InvalidValueError, Pipeline, pipeline_task
from taskiq_flow.once import InMemoryKeyStore
from taskiq_flow.schedule import PipelineSchedule, Scheduler, slot_key


def counting_pipeline(broker: InMemoryBroker, runs: list[int]) -> DataflowPipeline:
    @broker.task
    @pipeline_task(output="n")
    async def count(x: int) -> int:
        runs.append(x)
        return len(runs)

    return DataflowPipeline.from_tasks(broker, [count])


def test_slots_are_the_same_wall_clock_times_for_every_scheduler() -> None:
    broker = InMemoryBroker()
    pipeline = counting_pipeline(broker, [])
    every = PipelineSchedule("s", pipeline, every=60, inputs={"x": 1})
    assert every.next_slot(125.0) == 180.0 and every.slot_at_or_before(125.0) == 120.0
    assert every.next_slot(180.0) == 240.0
    cron = PipelineSchedule("c", pipeline, cron="*/15 * * * *", inputs={"x": 1})
    assert cron.next_slot(0.0) == 900.0 and cron.slot_at_or_before(1799.0) == 900.0
    window = PipelineSchedule("w", pipeline, every=10, start=25, end=50)
    assert window.next_slot(0) == 30 and window.next_slot(40) is None
    assert window.slot_at_or_before(100) == 40 and window.slot_at_or_before(29) is None
    assert slot_key("nightly", 1_777_600_800) == "nightly@2026-05-01T02:00:00Z"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0}, "every must be"),
        ({"every": float("inf")}, "every must be"),
        ({}, "every= or cron="),
        ({"every": 1, "cron": "* * * * *"}, "every= or cron="),
        ({"cron": "* * *"}, "five fields"),
        ({"cron": "61 * * * *"}, "not valid|never fires"),
        ({"every": 1, "catch_up": "all"}, "catch_up"),
        ({"every": 1, "end": "tomorrow"}, "end must be"),
    ],
)
def test_bad_schedules_are_refused_where_declared(kwargs: dict[str, Any], message: str) -> None:
    pipeline = counting_pipeline(InMemoryBroker(), [])
    with pytest.raises(InvalidValueError, match=message):
        PipelineSchedule("s", pipeline, **kwargs)
    with pytest.raises(InvalidValueError, match="DataflowPipeline or a Pipeline"):
        PipelineSchedule("s", object(), every=1)
    with pytest.raises(InvalidValueError, match="two schedules"):
        Scheduler([PipelineSchedule("s", pipeline, every=1)] * 2)


@pytest.mark.parametrize(("policy", "expected"), [("last", 1), ("none", 0)])
async def test_slots_missed_while_no_scheduler_ran_follow_the_catch_up_policy(
    policy: str, expected: int
) -> None:
    """Every slot of the window passed while no scheduler ran: ``last`` fires the last one once
    (a scheduler started again fires nothing more), ``none`` fires none."""
    broker = InMemoryBroker()
    await broker.startup()
    runs: list[int] = []
    pipeline = counting_pipeline(broker, runs)
    now = math.floor(time.time())
    schedule = PipelineSchedule(
        "missed", pipeline, every=1, inputs={"x": 1}, catch_up=policy, start=now - 5, end=now - 1
    )  # type: ignore[arg-type]
    fired: list[tuple[float, Any]] = []
    store = InMemoryKeyStore()
    for _restart in range(2):
        scheduler = Scheduler([schedule], store, lambda _s, slot, out: fired.append((slot, out)))
        await scheduler.run()
    assert len(runs) == expected
    if expected:
        assert fired == [(now - 2, {"n": 1}), (now - 2, {"n": 1})]  # the same slot, one run
    await broker.shutdown()


async def test_a_sequential_pipeline_runs_on_a_schedule() -> None:
    broker = InMemoryBroker()
    await broker.startup()
    calls: list[int] = []

    @broker.task
    async def echo(x: int) -> int:
        calls.append(x)
        return x

    now = math.floor(time.time())
    schedule = PipelineSchedule(
        "seq", Pipeline(broker, echo), every=1, inputs={"x": 3}, start=now - 3, end=now - 1
    )
    fired: list[Any] = []
    await Scheduler([schedule], InMemoryKeyStore(), lambda *a: fired.append(a[2])).run()
    assert fired == [3] and calls == [3]
    await broker.shutdown()


APP = textwrap.dedent(
    """
    import os
    from redis.asyncio import Redis
    from taskiq import InMemoryBroker
    from taskiq_flow import DataflowPipeline, pipeline_task
    from taskiq_flow.schedule import PipelineSchedule

    broker = InMemoryBroker()

    @broker.task
    @pipeline_task(output="n")
    async def count(x: int) -> int:
        redis = Redis.from_url(os.environ["SCHED_REDIS"])
        n = await redis.incr("sched:runs")
        await redis.aclose()
        return n

    pipeline = DataflowPipeline.from_tasks(broker, [count])
    start = float(os.environ["SCHED_START"])
    schedules = [
        PipelineSchedule("tick", pipeline, every=1, inputs={"x": 1}, start=start, end=start + 5)
    ]
    """
)


async def _done_slots(redis: Redis) -> list[dict[str, Any]]:
    keys = [k async for k in redis.scan_iter("taskiq_flow:once:*") if not k.endswith(b":lease")]
    records = [json.loads(raw) for raw in [await redis.get(k) for k in keys] if raw is not None]
    return [r for r in records if r.get("state") == "done"]


async def test_three_schedulers_over_five_slots_make_five_runs(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """Three `taskiq-flow schedule` processes on one Redis, one of them killed and started
    again mid-way: each of the 5 slots runs exactly once."""
    (tmp_path / "sched_app.py").write_text(APP)
    start = math.ceil(time.time()) + 6  # every scheduler is up before the first slot
    env = {**os.environ, "SCHED_REDIS": redis_url, "SCHED_START": str(start)}
    command = [sys.executable, "-m", "taskiq_flow.cli", "schedule", "sched_app:schedules"]
    command += ["--redis", redis_url, "--lease", "1", "--log-level", "WARNING"]

    async def scheduler() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*command, cwd=tmp_path, env=env)

    procs = [await scheduler() for _ in range(3)]
    try:
        # Killed between slots (right after the second slot's run is stored), then restarted.
        await until(lambda: _two_done(redis), 30, "two slots to run")
        procs[0].kill()
        await procs[0].wait()
        procs[0] = await scheduler()
        codes = [await asyncio.wait_for(p.wait(), 60) for p in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert codes == [0, 0, 0]
    assert int(await redis.get("sched:runs")) == 5  # five slots, five runs
    done = await _done_slots(redis)
    assert sorted(r["key"].rpartition("@")[2] for r in done) == [
        slot_key("tick", start + i).rpartition("@")[2] for i in range(5)
    ]
    assert sorted(r["result"]["n"] for r in done) == [1, 2, 3, 4, 5]  # one run per slot


async def _two_done(redis: Redis) -> bool:
    return len(await _done_slots(redis)) >= 2
