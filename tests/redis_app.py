"""A taskiq app on Redis for the multi-process tests: imported by `taskiq worker` processes and by
the test that orchestrates them. Configured by environment variables set by the test."""

from __future__ import annotations

import asyncio
import os
import time

from taskiq_redis import RedisStreamBroker

from taskiq_flow import FlowMiddleware, pipeline_task
from taskiq_flow.distributed import RedisCompletionChannel, json_result_backend

URL = os.environ["TASKIQ_FLOW_TEST_REDIS"]
QUEUE = os.environ.get("TASKIQ_FLOW_TEST_QUEUE", "taskiq_flow_test")

broker = (
    RedisStreamBroker(URL, queue_name=QUEUE, idle_timeout=2_000)
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
    time.sleep(0.002)  # a sync task holds a thread a moment, so both workers get some
    return [x * x, os.getpid()]


@broker.task
async def explode(x: int) -> int:
    raise ValueError(f"bad input {x}")


@broker.task
async def held(x: int) -> int:
    """Counts the tasks running at once across every worker, in Redis, and keeps the peak."""
    from redis.asyncio import Redis

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
        await asyncio.sleep(0.05)
        await client.decr("held:running")
    finally:
        await client.aclose()
    return x
