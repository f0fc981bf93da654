"""What watching costs: a pipeline watched by open dashboard pages against the same pipeline
unwatched, per task, in one process (the dashboard served from the pipeline's own event loop,
the worst place for it to be; the pages are one other process reading their event streams, as
browsers would).

A layered dataflow of no-op tasks with in-memory tracking runs ``repeats`` times unwatched and
``repeats`` times watched by ``pages`` open run pages, alternately (the machine's noise falls on
both); the figure is the ratio of the medians of wall time per task. Target: at most 1.05. The
ratio of this process's CPU time per task is given too (a shared machine's load moves it less).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

__all__ = ["report", "run_dashboard_bench"]


def _pipeline(broker: Any, tracking: Any, tasks: int, width: int) -> Any:
    from taskiq_flow import DataflowPipeline

    pipeline = DataflowPipeline(broker, name="watched", max_parallel=width).with_tracking(tracking)

    async def noop(x: int) -> int:
        return x

    task = broker.task(task_name="dashboard_bench_noop")(noop)
    for i in range(tasks):
        source = "seed" if i < width else f"n{i - width}"
        pipeline.add_dataflow_task(task, output=f"n{i}", inputs={"x": source})
    return pipeline


#: The open pages: one process (as browsers are), reading every event stream it is given until
#: its standard input closes, then printing the bytes it received.
_PAGES = """
import asyncio, sys
import aiohttp

async def read(session, url, received):
    async with session.get(url) as response:
        print("open", flush=True)
        async for chunk in response.content.iter_any():
            received[0] += len(chunk)

async def main():
    received = [0]
    async with aiohttp.ClientSession() as session:
        readers = [asyncio.create_task(read(session, url, received)) for url in sys.argv[1:]]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    print(received[0], flush=True)

asyncio.run(main())
"""


async def _open_pages(urls: list[str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PAGES,
        *urls,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    for _ in urls:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.strip() != b"open":
            raise RuntimeError(f"a page did not open: {line!r}")
    return process


async def _close_pages(process: asyncio.subprocess.Process) -> int:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    received = int((await asyncio.wait_for(process.stdout.readline(), 60)).strip() or 0)
    await process.wait()
    return received


async def _bench(
    tasks: int, pages: int, repeats: int, width: int, interval: float
) -> dict[str, Any]:
    from taskiq import InMemoryBroker

    from taskiq_flow import PipelineTrackingManager
    from taskiq_flow.dashboard import serve
    from taskiq_flow.dataflow import ExecutionEngine

    broker = InMemoryBroker()
    await broker.startup()
    tracking = PipelineTrackingManager()
    pipeline = _pipeline(broker, tracking, tasks, width)
    server = await serve(tracking, interval=interval)
    times: dict[str, list[float]] = {"unwatched": [], "watched": []}
    cpu: dict[str, list[float]] = {"unwatched": [], "watched": []}
    received = [0]
    try:
        await ExecutionEngine(broker, pipeline.dag, settings=pipeline.settings).execute(
            {"seed": 0}
        )  # warm up
        for _ in range(repeats):
            for mode in ("unwatched", "watched"):
                run_id = uuid.uuid4().hex
                engine = ExecutionEngine(broker, pipeline.dag, settings=pipeline.settings)
                readers = None
                if mode == "watched":
                    url = f"{server.base_url}/events/runs/{run_id}"
                    readers = await _open_pages([url] * pages)
                began, began_cpu = time.perf_counter(), time.process_time()
                await engine.execute({"seed": 0}, run_id)
                times[mode].append((time.perf_counter() - began) / tasks)
                cpu[mode].append((time.process_time() - began_cpu) / tasks)
                if readers is not None:
                    received[0] += await _close_pages(readers)
                await tracking.delete_pipeline(run_id)
    finally:
        await server.close()
        await broker.shutdown()
    feed = server.app.state.dashboard.feed
    unwatched = statistics.median(times["unwatched"])
    watched = statistics.median(times["watched"])
    return {
        "tasks": tasks,
        "pages": pages,
        "repeats": repeats,
        "interval": interval,
        "unwatched_us_per_task": unwatched * 1e6,
        "watched_us_per_task": watched * 1e6,
        "ratio": watched / unwatched,
        # This process's CPU time per task (the pipeline and the dashboard serving it; not the
        # pages'): what watching costs, less exposed than wall time to a shared machine's load.
        "unwatched_cpu_us_per_task": statistics.median(cpu["unwatched"]) * 1e6,
        "watched_cpu_us_per_task": statistics.median(cpu["watched"]) * 1e6,
        "cpu_ratio": statistics.median(cpu["watched"]) / statistics.median(cpu["unwatched"]),
        "ticks": feed.ticks,
        "reads": feed.reads,
        "bytes_to_pages": received[0],
        "correct": feed.reads == feed.ticks,
    }


def run_dashboard_bench(
    tasks: int = 2_000, pages: int = 5, repeats: int = 5, width: int = 16, interval: float = 0.5
) -> dict[str, Any]:
    """Runs the bench (needs the ``dashboard`` extra); returns its figures: ``ratio`` is watched
    over unwatched wall time per task (medians), ``correct`` that the feed made one tracking
    read per tick.

    :param tasks: tasks of the pipeline (a layered dataflow ``width`` wide).
    :param pages: open run pages while watched.
    :param repeats: runs of each kind, alternated.
    :param interval: the dashboard's seconds between two reads of tracking.
    """
    return asyncio.run(_bench(tasks, pages, repeats, width, interval))


def report(result: dict[str, Any]) -> str:
    """One paragraph of the figures."""
    return (
        f"dashboard: a {result['tasks']:,}-task dataflow watched by {result['pages']} open "
        f"pages (a read every {result['interval']:g} s) costs {result['ratio']:.3f}x unwatched "
        "per task "
        f"({result['watched_us_per_task']:.1f} vs {result['unwatched_us_per_task']:.1f} us, "
        f"medians of {result['repeats']}; target <= 1.05; in CPU time of this process "
        f"{result['cpu_ratio']:.3f}x); the feed made {result['reads']} "
        f"reads in {result['ticks']} ticks and sent {result['bytes_to_pages']:,} bytes"
    )
