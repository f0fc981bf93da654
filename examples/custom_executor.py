"""Custom executors: route GPU tasks to a GPU pool, the rest to the broker.

Docs: docs/performance.md#custom-engines

Run: python examples/custom_executor.py
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, ExecutionEngine, pipeline_task

broker = InMemoryBroker()


@broker.task
@pipeline_task(output="image")
async def load_image(path: str) -> list[int]:
    return [len(path)] * 4


@broker.task
@pipeline_task(output="embedding", labels={"requires_gpu": True})
async def embed(image: list[int]) -> list[float]:
    return [x / 10 for x in image]


@broker.task
@pipeline_task(output="label")
async def classify(embedding: list[float]) -> str:
    return "cat" if sum(embedding) > 1 else "dog"


class GpuWorkerPool:
    """Stands in for a pool of GPU workers: runs the task function itself, counting calls."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    async def submit(self, task_node, inputs):
        self.submitted.append(task_node.name)
        return await task_node.task.original_func(**inputs)


class GPUOptimizedEngine(ExecutionEngine):
    gpu_worker_pool = GpuWorkerPool()

    async def schedule_task(self, task_node, inputs):
        # Custom scheduling logic: route GPU tasks to GPU workers
        if task_node.labels.get("requires_gpu"):
            return await self.gpu_worker_pool.submit(task_node, inputs)
        return await super().schedule_task(task_node, inputs)


async def main() -> None:
    dag = DataflowPipeline.from_tasks(broker, [load_image, embed, classify]).dag
    inputs = {"path": "photos/cat.png"}
    engine = GPUOptimizedEngine(broker, dag)
    results = await engine.execute(inputs)
    print(results)
    print(f"sent to the GPU pool: {engine.gpu_worker_pool.submitted}")
    assert engine.gpu_worker_pool.submitted == ["embed"]


if __name__ == "__main__":
    asyncio.run(main())
