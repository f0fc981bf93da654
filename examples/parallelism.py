"""Parallelism tuning: max_parallel per step, per pipeline, per map, and globally.

Docs: docs/performance.md#choosing-max_parallel

Run: python examples/parallelism.py
"""

import asyncio
import os
import time

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, MapReduce, Pipeline, pipeline_task
from taskiq_flow.optimization.parallel import set_max_parallel_tasks

broker = InMemoryBroker()
in_flight = 0
peak = 0


@broker.task
async def process_item(item: int) -> int:
    """An I/O-bound task: mostly waiting."""
    global in_flight, peak
    in_flight += 1
    peak = max(peak, in_flight)
    await asyncio.sleep(0.01)
    in_flight -= 1
    return item * 2


@broker.task
@pipeline_task(output="doubled")
async def double_all(data: list[int]) -> list[int]:
    await asyncio.sleep(0.005)
    return [2 * x for x in data]


@broker.task
@pipeline_task(output="total")
async def total(doubled: list[int]) -> int:
    return sum(doubled)


async def main() -> None:
    global peak
    items = list(range(100))

    # 2.1 Sequential pipeline: at most 10 of these tasks at once (the guide's first line).
    pipeline = Pipeline(broker).map(process_item, items, max_parallel=10)
    result = await (await pipeline.kiq()).wait_result()
    print(f"Pipeline.map: {len(result.return_value)} results, peak in flight {peak}")

    # 2.1 MapReduce with its own bound.
    peak = 0
    mapped = await MapReduce.map(broker, process_item, items, max_parallel=15)
    print(f"MapReduce.map: {len(mapped)} results, peak in flight {peak}")

    # 2.2 CPU-bound work: about the core count.
    cpu_cores = os.cpu_count() or 4
    peak = 0
    await MapReduce.map(broker, process_item, items, max_parallel=cpu_cores + 2)
    print(f"cpu-bound bound {cpu_cores + 2}: peak in flight {peak}")

    # 2.2 Find the knee of the curve for a dataflow pipeline.
    data = list(range(1_000))
    for parallel in [5, 10, 20, 50]:
        pipeline = DataflowPipeline(broker, max_parallel=parallel)
        pipeline.add_dataflow_task(double_all).add_dataflow_task(total)
        start = time.time()
        await pipeline.kiq_dataflow(data)
        duration = time.time() - start
        print(f"Parallelism {parallel}: {duration:.2f}s")

    # 2.3 A global cap across everything running in this process.
    set_max_parallel_tasks(8)
    peak = 0
    await asyncio.gather(
        MapReduce.map(broker, process_item, items, max_parallel=20),
        MapReduce.map(broker, process_item, items, max_parallel=20),
    )
    print(f"two maps of max_parallel=20 under a global cap of 8: peak in flight {peak}")
    set_max_parallel_tasks(None)
    assert peak == 8


if __name__ == "__main__":
    asyncio.run(main())
