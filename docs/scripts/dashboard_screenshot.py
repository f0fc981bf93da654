"""Makes ``docs/img/dashboard.png``: a real run, watched live in the dashboard through headless
chromium, caught while its bars grow (not a test; run it by hand when the page changes)::

    python docs/scripts/dashboard_screenshot.py

An audio run of eight steps under the run's cap of 2: ``fetch`` and ``decode`` are done, two
analyses run, ``transcribe`` waits for the cap (its bar says so, and a click on it shows why),
``summarize`` and ``publish`` wait for their inputs. Needs the ``dashboard`` extra and Debian's
``chromium`` (the tests' own ``tests/headless.py`` drives it).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, PipelineTrackingManager, pipeline_task
from taskiq_flow.dashboard import serve

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from headless import headless_page  # noqa: E402  (the tests' browser driver)

OUT = ROOT / "docs" / "img" / "dashboard.png"


def audio_pipeline(broker: InMemoryBroker, tracking: PipelineTrackingManager) -> DataflowPipeline:
    """fetch -> decode -> {loudness, fingerprint, transcribe} -> summarize -> publish."""

    @broker.task
    @pipeline_task(output="audio")
    async def fetch(url: str) -> str:
        await asyncio.sleep(0.4)
        return url

    @broker.task
    @pipeline_task(output="pcm")
    async def decode(audio: str) -> str:
        await asyncio.sleep(0.6)
        return audio

    @broker.task
    @pipeline_task(output="loudness")
    async def loudness(pcm: str) -> float:
        await asyncio.sleep(3.0)
        return -14.0

    @broker.task
    @pipeline_task(output="fingerprint")
    async def fingerprint(pcm: str) -> str:
        await asyncio.sleep(3.5)
        return "ab12"

    @broker.task
    @pipeline_task(output="transcript")
    async def transcribe(pcm: str) -> str:
        await asyncio.sleep(1.0)
        return "hello"

    @broker.task
    @pipeline_task(output="summary")
    async def summarize(loudness: float, fingerprint: str, transcript: str) -> str:
        await asyncio.sleep(0.5)
        return transcript

    @broker.task
    @pipeline_task(output="published")
    async def publish(summary: str) -> str:
        return summary

    tasks = [fetch, decode, loudness, fingerprint, transcribe, summarize, publish]
    return DataflowPipeline.from_tasks(
        broker, tasks, max_parallel=2, name="audio-ingest"
    ).with_tracking(tracking)


async def main() -> None:
    broker = InMemoryBroker()
    await broker.startup()
    tracking = PipelineTrackingManager()
    pipeline = audio_pipeline(broker, tracking)
    # A finished run first, so the runs list has history; then the one photographed.
    await pipeline.kiq_dataflow(url="https://media.example/track-000.flac")
    run = asyncio.create_task(pipeline.kiq_dataflow(url="https://media.example/track-001.flac"))
    await asyncio.sleep(0.05)
    run_id = pipeline.pipeline_id
    async with await serve(tracking) as server:
        with tempfile.TemporaryDirectory() as profile:
            async with headless_page(Path(profile)) as page:
                await page.open(f"{server.base_url}/runs/{run_id}", width=1280, height=900)
                await asyncio.sleep(1.8)  # fetch and decode done, two analyses well along
                index = [s.name for s in pipeline.dag.nodes].index("transcribe")
                await page.evaluate(
                    f"document.querySelector('#steps-rows .tr[data-step=\"{index}\"]')"
                    ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
                )
                await asyncio.sleep(0.3)
                source = await page.evaluate(
                    "document.getElementById('explain-text').dataset.source"
                )
                assert source == "run", source
                OUT.write_bytes(await page.screenshot())
    await run
    await broker.shutdown()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
