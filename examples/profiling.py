"""Profiling: built-in step timing, tracemalloc, cProfile.

Docs: docs/performance.md#finding-bottlenecks

Run: python examples/profiling.py
"""

import asyncio
import cProfile
import pstats
import tracemalloc

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, Pipeline, PipelineTrackingManager, pipeline_task

broker = InMemoryBroker()


@broker.task
@pipeline_task(output="rows")
async def load(source: str) -> list[int]:
    await asyncio.sleep(0.02)
    return list(range(10_000))


@broker.task
@pipeline_task(output="stats")
def summarize(rows: list[int]) -> dict[str, float]:
    return {"n": len(rows), "mean": sum(rows) / len(rows)}


@broker.task
async def square_all(rows: list[int]) -> list[int]:
    return [r * r for r in rows]


async def main() -> None:
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [load, summarize]).with_tracking(tracking)
    await pipeline.kiq_dataflow(source="warehouse")

    # 5.1 Built-in timing: every step's duration, measured where it ran.
    pipeline_id = pipeline.pipeline_id
    status = await tracking.get_status(pipeline_id)
    for step in status.steps:
        print(f"{step.name}: {step.duration_ms}ms")

    # 5.2 Memory profiling of a sequential pipeline.
    data = list(range(50_000))
    sequential = Pipeline(broker, square_all)
    tracemalloc.start()
    await (await sequential.kiq(data)).wait_result()
    current, peak = tracemalloc.get_traced_memory()
    print(f"Current: {current / 1024 / 1024:.1f} MB")
    print(f"Peak: {peak / 1024 / 1024:.1f} MB")
    tracemalloc.stop()

    # 5.3 CPU profiling.
    profiler = cProfile.Profile()
    profiler.enable()
    await (await sequential.kiq(data)).wait_result()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative")
    stats.print_stats(5)


if __name__ == "__main__":
    asyncio.run(main())
