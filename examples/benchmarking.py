"""Benchmarking: average and P95 latency of a pipeline over iterations.

Docs: docs/performance.md#benchmarking

Run: python examples/benchmarking.py
"""

import asyncio
import time

from taskiq import InMemoryBroker

from taskiq_flow import Pipeline

broker = InMemoryBroker()
data = list(range(200))


@broker.task
async def ids(items: list[int]) -> list[int]:
    return items


@broker.task
async def work(item: int) -> int:
    await asyncio.sleep(0.001)
    return item + 1


async def benchmark(pipeline, iterations=10):
    durations = []
    for _ in range(iterations):
        start = time.perf_counter()
        result = await pipeline.kiq(data)
        await result.wait_result()
        duration = time.perf_counter() - start
        durations.append(duration)
    avg = sum(durations) / len(durations)
    p95 = sorted(durations)[int(0.95 * len(durations))]
    print(f"Average: {avg:.3f}s, P95: {p95:.3f}s")
    return durations


async def main() -> None:
    for max_parallel in (8, 64):
        print(f"max_parallel={max_parallel}: ", end="")
        await benchmark(Pipeline(broker, ids).map(work, max_parallel=max_parallel))


if __name__ == "__main__":
    asyncio.run(main())
