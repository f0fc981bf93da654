"""Memory: pass ids not data, stream in chunks, clean up tracking records.

Docs: docs/performance.md#memory

Run: python examples/memory.py
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, Pipeline, PipelineTrackingManager, pipeline_task

broker = InMemoryBroker()
database = {f"item-{i}": {"id": i, "payload": "x" * 100} for i in range(500)}


@broker.task
def process(item_id: str) -> int:
    """4.1: fetch on demand inside the task; only the id travels."""
    item = database[item_id]
    return len(item["payload"]) + item["id"]


@broker.task
@pipeline_task(output="sizes")
async def measure(chunk: list[str]) -> list[int]:
    return [len(database[key]["payload"]) for key in chunk]


def chunked(iterable: list[str], chunk_size: int = 100):
    for i in range(0, len(iterable), chunk_size):
        yield iterable[i : i + chunk_size]


async def main() -> None:
    tracking = PipelineTrackingManager()

    # 4.1 Pass identifiers, fetch inside the task.
    item_ids = list(database)
    pipeline = Pipeline(broker).map(process, item_ids, max_parallel=32)
    result = await (await pipeline.with_tracking(tracking).kiq()).wait_result()
    print(f"processed {len(result.return_value)} items by id")

    # 4.2 Stream a large dataset in chunks, processing each result before the next chunk.
    large_list = list(database)
    pipeline = DataflowPipeline(broker).add_dataflow_task(measure).with_tracking(tracking)
    seen = 0
    for chunk in chunked(large_list, 100):
        results = await pipeline.kiq_dataflow(chunk)
        seen += len(results["sizes"])
    print(f"measured {seen} items in chunks of 100")

    # 4.3 Clear results after use.
    before = len(await tracking.list_pipelines())
    await tracking.delete_pipeline(pipeline.pipeline_id)
    removed = await tracking.cleanup(older_than=0)
    print(f"tracking records: {before} -> deleted 1, cleaned up {removed} more")
    assert await tracking.list_pipelines() == []


if __name__ == "__main__":
    asyncio.run(main())
