"""What bounds a run: each limit in turn, measured from inside the tasks.

Docs: docs/performance.md#what-bounds-a-run

The same 48 I/O-bound tasks (50 ms each) run unbounded, then under a step's max_parallel, a
pipeline's max_parallel, the process-wide cap and a worker pool; the tightest bound wins, and
throughput follows it.
Run: python examples/landscape.py
"""

import asyncio
import time

from taskiq import InMemoryBroker

from taskiq_flow import CPUProfile, MapReduce, Pipeline, ResourceAwareWorkerPool
from taskiq_flow.optimization.parallel import set_max_parallel_tasks

broker = InMemoryBroker()
gauge = {"now": 0, "peak": 0}


@broker.task
@CPUProfile(cpu_units=1)  # only a worker pool reads this
async def call_service(item: int) -> int:
    gauge["now"] += 1
    gauge["peak"] = max(gauge["peak"], gauge["now"])
    await asyncio.sleep(0.05)
    gauge["now"] -= 1
    return item


ITEMS = list(range(48))


async def measure(label: str, run) -> int:
    gauge["peak"] = 0
    started = time.perf_counter()
    assert await run() == ITEMS
    elapsed = time.perf_counter() - started
    print(f"{label:<44} peak {gauge['peak']:>2}  {len(ITEMS) / elapsed:6.0f} tasks/s")
    return gauge["peak"]


async def mapped(pipeline: Pipeline) -> list[int]:
    return (await (await pipeline.kiq()).wait_result()).return_value


async def main() -> None:
    peaks = [
        await measure("no bound", lambda: MapReduce.map(broker, call_service, ITEMS)),
        await measure(
            "step: map(..., max_parallel=12)",
            lambda: mapped(Pipeline(broker).map(call_service, ITEMS, max_parallel=12)),
        ),
        await measure(
            "pipeline max_parallel=6 over step's 12",
            lambda: mapped(
                Pipeline(broker, max_parallel=6).map(call_service, ITEMS, max_parallel=12)
            ),
        ),
    ]
    set_max_parallel_tasks(4)
    try:
        peaks.append(
            await measure(
                "process: set_max_parallel_tasks(4) over 6",
                lambda: MapReduce.map(broker, call_service, ITEMS, max_parallel=6),
            )
        )
    finally:
        set_max_parallel_tasks(None)
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 2}, {"cpu_cores": 1}])
    peaks.append(
        await measure(
            "workers: 3 cores for 1-core tasks",
            lambda: MapReduce.map(broker, call_service, ITEMS, worker_pool=pool),
        )
    )
    assert peaks == [48, 12, 6, 4, 3], peaks


if __name__ == "__main__":
    asyncio.run(main())
