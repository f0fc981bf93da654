"""A taskiq app on Redis for the drain tests (tests/test_drain.py): imported by `taskiq-flow
worker` processes and by the test that orchestrates them; configured by environment variables.
Unlike tests/redis_app.py, its broker reads as taskiq-redis does by default (100 messages a read),
and every task counts, per item, its starts, the bodies that completed and those cut."""

from __future__ import annotations

import asyncio
import os

from redis.asyncio import Redis

from taskiq_flow import FlowMiddleware
from taskiq_flow.distributed import (
    RedisCompletionChannel,
    json_result_backend,
    reliable_stream_broker,
)

URL = os.environ["TASKIQ_FLOW_TEST_REDIS"]
QUEUE = os.environ["TASKIQ_FLOW_TEST_QUEUE"]

broker = (
    reliable_stream_broker(
        URL,
        queue_name=QUEUE,
        lease_seconds=float(os.environ.get("TASKIQ_FLOW_TEST_LEASE", "30")),
        xread_block=500,
    )
    .with_result_backend(json_result_backend(URL, prefix_str="drain_results"))
    .with_middlewares(FlowMiddleware(RedisCompletionChannel(URL)))
)

_client: Redis | None = None


def client() -> Redis:
    """One client per worker process (thousands of small tasks share it)."""
    global _client
    if _client is None:
        _client = Redis.from_url(URL)
    return _client


@broker.task
async def ping() -> int:
    return os.getpid()


@broker.task
async def counted(
    i: int, seconds: float = 0.0, hold: list[int] | None = None, hold_seconds: float = 0.0
) -> int:
    """Counts its start (``drain:started``, and the pid it ran in, ``drain:ran:<i>``), works for
    ``seconds`` (``hold_seconds`` on the first start of an item in ``hold``), then counts its
    body's completion (``drain:done``); a cancellation is counted (``drain:cut``) and re-raised."""
    redis = client()
    pid = os.getpid()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby("drain:started", str(i), 1)
        pipe.rpush(f"drain:ran:{i}", pid)
        starts, _ = await pipe.execute()
    wait = hold_seconds if hold and i in hold and starts == 1 else seconds
    try:
        if wait:
            await asyncio.sleep(wait)
    except asyncio.CancelledError:
        await redis.hincrby("drain:cut", str(i), 1)
        raise
    await redis.hincrby("drain:done", str(i), 1)
    return i
