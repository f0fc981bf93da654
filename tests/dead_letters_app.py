"""Tasks that fail until fixed, on the Redis app of tests/redis_app.py: imported by `taskiq worker`
processes (``dead_letters_app:broker``), by the tests that run them and by ``taskiq-flow runs
replay --broker dead_letters_app:broker``."""

from __future__ import annotations

from redis.asyncio import Redis
from redis_app import URL, broker

from taskiq_flow import pipeline_task

__all__ = ["broker", "charge"]


@broker.task
@pipeline_task(output="receipt")
async def charge(order: int, note: dict[str, list[int]]) -> dict[str, object]:
    """Fails until the key ``payments:up`` exists in Redis (the cause, fixed by the test); counts
    its calls per order (``charge:<order>:calls``)."""
    client = Redis.from_url(URL)
    try:
        await client.incr(f"charge:{order}:calls")
        if not await client.exists("payments:up"):
            raise RuntimeError(f"payment service unavailable for order {order}")
    finally:
        await client.aclose()
    return {"order": order, "note": note, "charged": True}
