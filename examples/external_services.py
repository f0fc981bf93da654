"""External services: a shared connection pool, batching, caching.

Docs: docs/performance.md#external-services

A stand-in service replaces the database so the example runs anywhere.
Run: python examples/external_services.py
"""

import asyncio
import json
from functools import lru_cache

from taskiq import InMemoryBroker

from taskiq_flow import CapacityLimiter, MapReduce

broker = InMemoryBroker()


class FakePool:
    """Stands in for asyncpg's pool: at most max_size connections at once."""

    def __init__(self, max_size: int) -> None:
        self.limiter = CapacityLimiter(max_size)
        self.calls = 0
        self.peak = 0

    async def fetch(self, query: str) -> list[str]:
        async with self.limiter:
            self.calls += 1
            self.peak = max(self.peak, self.limiter.borrowed_tokens)
            await asyncio.sleep(0.002)
            return [query]

    async def bulk_insert(self, rows: list[int]) -> int:
        async with self.limiter:
            self.calls += 1
            await asyncio.sleep(0.002)
            return len(rows)


pool = FakePool(max_size=5)
cache: dict[str, str] = {}


@broker.task
async def db_task(query: str) -> list[str]:
    # 6.1 Reuse connections from one pool.
    return await pool.fetch(query)


@broker.task
async def insert_batch(rows: list[int]) -> int:
    # 6.2 One batch insert instead of many small ones.
    return await pool.bulk_insert(rows)


@broker.task
@lru_cache(maxsize=1000)
def expensive_computation(key: str) -> int:
    # 6.3 An in-process cache.
    return sum(ord(c) for c in key) ** 2


@broker.task
async def cached_task(key: str) -> dict[str, int]:
    # 6.3 A shared cache (a dict here; Redis in production).
    cached = cache.get(key)
    if cached:
        return json.loads(cached)
    result = {"key_length": len(key)}
    cache[key] = json.dumps(result)
    return result


async def main() -> None:
    results = await MapReduce.map(broker, db_task, [f"q{i}" for i in range(50)], max_parallel=20)
    print(f"{len(results)} queries through a pool of 5: peak connections {pool.peak}")
    before = pool.calls
    inserted = await MapReduce.map(broker, insert_batch, [list(range(100))] * 5)
    print(f"inserted {sum(inserted)} rows in {pool.calls - before} batch calls")
    print(await MapReduce.map(broker, expensive_computation, ["a", "b", "a"]))
    print(await MapReduce.map(broker, cached_task, ["k1", "k1"]), f"cache size {len(cache)}")


if __name__ == "__main__":
    asyncio.run(main())
