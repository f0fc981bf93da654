"""A taskiq app on Redis for the multi-process tests: imported by `taskiq worker` processes and by
the test that orchestrates them. Configured by environment variables set by the test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from redis.asyncio import Redis

from taskiq_flow import (
    CPUProfile,
    DataflowPipeline,
    FlowMiddleware,
    ResourceProfile,
    pipeline_task,
)
from taskiq_flow.distributed import (
    RedisCompletionChannel,
    json_result_backend,
    reliable_stream_broker,
)

URL = os.environ["TASKIQ_FLOW_TEST_REDIS"]
QUEUE = os.environ.get("TASKIQ_FLOW_TEST_QUEUE", "taskiq_flow_test")

# A worker's lease on what it runs: 2 s unless the test says otherwise ("default": the
# broker's default). A message that killed 3 workers is poison.
_LEASE = os.environ.get("TASKIQ_FLOW_TEST_LEASE", "2")
broker = (
    reliable_stream_broker(
        URL,
        max_deliveries=int(os.environ.get("TASKIQ_FLOW_TEST_MAX_DELIVERIES", "3")),
        queue_name=QUEUE,
        lease_seconds=None if _LEASE == "default" else float(_LEASE),
        xread_block=300,
        xread_count=1,  # one message per read, so that both workers get a share
        priority_queues=["high_priority"],
    )
    .with_result_backend(json_result_backend(URL, prefix_str="taskiq_flow_test_results"))
    .with_middlewares(FlowMiddleware(RedisCompletionChannel(URL)))
)


@broker.task
async def ping() -> int:
    return os.getpid()


@broker.task
@pipeline_task(output="numbers")
async def numbers(n: int) -> list[int]:
    return list(range(n))


@broker.task
@pipeline_task(output="total")
async def total(numbers: list[int]) -> int:
    return sum(numbers)


@broker.task
@pipeline_task(output="where")
async def where(numbers: list[int]) -> int:
    return os.getpid()


@broker.task
def square_with_pid(x: int) -> list[int]:
    time.sleep(0.01)  # a sync task holds a thread a moment, so both workers get some
    return [x * x, os.getpid()]


@broker.task
async def explode(x: int) -> int:
    raise ValueError(f"bad input {x}")


@broker.task
async def held(x: int, seconds: float = 0.05) -> int:
    """Counts the tasks running at once across every worker, in Redis, and keeps the peak."""
    client = Redis.from_url(URL)
    try:
        running = await client.incr("held:running")
        await client.eval(
            "if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
            "redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            "held:peak",
            running,
        )
        await asyncio.sleep(seconds)  # holds its slot a while: tasks overlap up to the cap
        await client.decr("held:running")
    finally:
        await client.aclose()
    return x


async def _count(key: str) -> int:
    client = Redis.from_url(URL)
    try:
        return int(await client.incr(key))
    finally:
        await client.aclose()


@broker.task
@pipeline_task(output="fragile")
async def fragile(x: int) -> int:
    """Kills its worker process on its first delivery; succeeds when redelivered."""
    if await _count(f"fragile:{x}:runs") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


@broker.task
@pipeline_task(output="never")
async def poison(x: int) -> int:
    """Kills its worker process on every delivery."""
    await _count(f"poison:{x}:runs")
    os.kill(os.getpid(), signal.SIGKILL)
    return x


async def _record(entry: str) -> None:
    client = Redis.from_url(URL)
    try:
        await client.rpush("order", entry)
    finally:
        await client.aclose()


@broker.task
async def gate() -> None:
    """Keeps a one-slot worker busy while the test queues work behind it: pushes to
    ``gate:started``, then waits (a minute at most) for the test to push to ``gate:open``."""
    client = Redis.from_url(URL)
    try:
        await client.rpush("gate:started", 1)
        await client.blpop(["gate:open"], timeout=60)
    finally:
        await client.aclose()


@broker.task
async def routine(i: int) -> None:
    await _record(f"routine-{i}")


@broker.task(queue="high_priority")
async def urgent(i: int) -> None:
    await _record(f"urgent-{i}")


def _worker_name() -> str:
    return str(json.loads(os.environ.get("TASKIQ_FLOW_WORKER", "{}")).get("name", "?"))


@broker.task
@CPUProfile(cpu_units=2)
async def crunch(i: int, seconds: float = 0.05) -> str:
    """Two cores' worth of work; counts, per worker, how many run at once."""
    name = _worker_name()
    client = Redis.from_url(URL)
    try:
        running = await client.incr(f"running:{name}")
        await client.eval(
            "if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
            "redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            f"peak:{name}",
            running,
        )
        await asyncio.sleep(seconds)  # works a while: tasks overlap up to the worker's cores
        await client.decr(f"running:{name}")
    finally:
        await client.aclose()
    return name


@broker.task
@ResourceProfile(labels={"ssd": True})
async def needs_ssd(i: int) -> str:
    return _worker_name()


@broker.task
@pipeline_task(output="first")
async def first_step(x: int) -> int:
    await _count("first:runs")
    return x + 1


@broker.task
@pipeline_task(output="second")
async def slow_step(first: int) -> int:
    """While a test holds the key ``second:gate``, runs until it sets ``second:go`` (so that the
    test can kill its orchestrator mid-step, however loaded the machine); else returns at once."""
    await _count("second:runs")
    redis = Redis.from_url(URL)
    try:
        for _ in range(3000):  # at most a minute: a test that forgets to open the gate still ends
            if not await redis.exists("second:gate") or await redis.exists("second:go"):
                break
            await asyncio.sleep(0.02)  # polls the gate the test opens
    finally:
        await redis.aclose()
    return first * 10


@broker.task
@pipeline_task(output="tracked")
async def tracked(i: int, seconds: float = 0.2) -> int:
    """Records each start (item, time, pid) in Redis, then works for ``seconds``."""
    client = Redis.from_url(URL)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.rpush("tracked:starts", json.dumps([i, time.time(), os.getpid()]))
            pipe.sadd("tracked:pids", os.getpid())
            await pipe.execute()
    finally:
        await client.aclose()
    await asyncio.sleep(seconds)
    return i


@broker.task
@pipeline_task(output="slow")
async def slow(x: int, seconds: float = 4.0) -> int:
    """A long, healthy step: counts its runs."""
    await _count(f"slow:{x}:runs")
    await asyncio.sleep(seconds)
    return x


@broker.task
async def big(size: int) -> str:
    """A result of ``size`` bytes."""
    return "x" * size


@broker.task
async def pid() -> int:
    return os.getpid()


#: The pipeline `taskiq-flow runs resume` is pointed at in the tests.
resume_pipeline = DataflowPipeline.from_tasks(broker, [first_step, slow_step])
