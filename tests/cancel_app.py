"""Tasks that wait to be cancelled, on the Redis app of tests/redis_app.py: imported by `taskiq
worker` processes (``cancel_app:broker``) and by the tests and orchestrators that run them."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis_app import URL, broker

from taskiq_flow import DataflowPipeline, pipeline_task

__all__ = ["broker"]


async def _push(key: str, value: object) -> None:
    client = Redis.from_url(URL)
    try:
        await client.rpush(key, str(value))
    finally:
        await client.aclose()


@broker.task
async def wait_to_be_cut(x: int, tag: str) -> int:
    """Records its start under ``<tag>:started`` and, when cancelled, the time it saw it under
    ``<tag>:cut``; otherwise waits a minute."""
    await _push(f"{tag}:started", x)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.shield(_push(f"{tag}:cut", time.time()))
        raise
    return x


@broker.task
async def quick(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


@broker.task
@pipeline_task(output="numbers")
async def numbers(n: int) -> list[int]:
    return list(range(n))


@broker.task
@pipeline_task(output="waited", each={"x": "numbers"})
async def waited(x: int) -> int:
    return await wait_to_be_cut.original_func(x, "cli")


pipeline = DataflowPipeline.from_tasks(broker, [numbers, waited])
