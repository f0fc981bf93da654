"""Troubleshooting: find the slowest step of a run.

Docs: docs/performance.md#troubleshooting

Run: python examples/troubleshooting.py
"""

import asyncio

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, PipelineTrackingManager, pipeline_task

broker = InMemoryBroker()


@broker.task
@pipeline_task(output="page")
async def fetch(url: str) -> str:
    await asyncio.sleep(0.03)
    return f"<html>{url}</html>"


@broker.task
@pipeline_task(output="text")
async def extract(page: str) -> str:
    await asyncio.sleep(0.01)
    return page.removeprefix("<html>").removesuffix("</html>")


@broker.task
@pipeline_task(output="entities")
async def analyze(text: str) -> list[str]:
    await asyncio.sleep(0.12)  # the bottleneck
    return text.split("/")


async def main() -> None:
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [fetch, extract, analyze])
    await pipeline.with_tracking(tracking).kiq_dataflow(url="example.com/a/b")
    pipeline_id = pipeline.pipeline_id

    status = await tracking.get_status(pipeline_id)
    slowest = max(status.steps, key=lambda s: s.duration_ms)
    print(f"Slowest step: {slowest.name} at {slowest.duration_ms}ms")
    assert slowest.name == "analyze"


if __name__ == "__main__":
    asyncio.run(main())
