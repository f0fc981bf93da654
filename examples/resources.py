"""Resource-aware scheduling: annotate tasks, describe workers, let the core place.

Docs: docs/performance.md#resource-profiles

Run: python examples/resources.py
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_flow import (
    CPUProfile,
    MapReduce,
    RAMProfile,
    ResourceAwareWorkerPool,
    ResourceProfile,
    UnschedulableError,
)

broker = InMemoryBroker()
running = 0
peak = 0


@broker.task
@CPUProfile(cpu_units=2)  # Needs 2 CPU cores
@RAMProfile(ram_mb=4096)  # Needs 4GB RAM
def heavy_computation(data):
    # Will only run on workers with sufficient resources
    return sum(data)


@broker.task
@CPUProfile(cpu_units=2)
async def tracked(seconds: float) -> float:
    global running, peak
    running += 1
    peak = max(peak, running)
    await asyncio.sleep(seconds)
    running -= 1
    return seconds


@ResourceProfile(gpu=1, labels={"gpu": True})
@broker.task
async def render(frame: int) -> str:
    return f"frame-{frame}"


@ResourceProfile(gpu=4)
@broker.task
async def train_giant_model() -> None:
    return None


async def main() -> None:
    pool = ResourceAwareWorkerPool(
        workers=[
            {"cpu_cores": 8, "ram_gb": 32, "gpu": 1, "labels": {"gpu": True}},
            {"cpu_cores": 4, "ram_gb": 16, "labels": {"gpu": False}},
        ]
    )
    # Tasks are automatically routed to compatible workers.
    print("heavy_computation ->", pool.place(heavy_computation, task_id=1))
    print("render ->", pool.place(render, task_id=2))
    print("another render waits:", pool.place(render, task_id=3))
    print("why:", pool.explain(render))
    pool.release(1)
    pool.release(2)

    # 12 cores in all, 2 per task: at most 6 of these run at once, whatever max_parallel says.
    await MapReduce.map(broker, tracked, [0.02] * 24, max_parallel=100, worker_pool=pool)
    print(f"24 two-core tasks on 12 cores: peak {peak} at once")
    assert peak == 6

    try:
        await MapReduce.map(broker, train_giant_model, [None], worker_pool=pool)
    except UnschedulableError as err:
        print(f"refused before sending: {err}")


if __name__ == "__main__":
    asyncio.run(main())
