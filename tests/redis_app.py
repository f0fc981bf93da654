"""A taskiq app on Redis for the multi-process tests: imported by `taskiq worker` processes and by
the test that orchestrates them. Configured by environment variables set by the test."""

from __future__ import annotations

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
