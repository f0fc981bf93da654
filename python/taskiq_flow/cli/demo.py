"""``taskiq-flow demo``: a real-looking dataflow pipeline on the embedded broker.

An audio-ingest pipeline runs for a batch of tracks on taskiq's ``InMemoryBroker`` (no server):
fetch the manifest, download, decode, then three analyses in parallel (loudness, fingerprint,
transcript), then tag and publish. Each track is one dataflow run with ``max_parallel=3``; the batch
shares a global cap. A progress bar shows tasks finished; then the step timing table, read back from
tracking, marks the slowest step, as the guide's troubleshooting section does by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from taskiq import InMemoryBroker

from taskiq_flow._duration import duration
from taskiq_flow.cli._help import (
    HelpFormatter,
    OneLineParser,
    number,
    paragraphs,
    whole_number,
    writable_file,
)
from taskiq_flow.dataflow import DataflowPipeline, pipeline_task
from taskiq_flow.optimization.parallel import set_max_parallel_tasks
from taskiq_flow.progress import progress_bar
from taskiq_flow.report import write_report
from taskiq_flow.tracking import PipelineStatus, PipelineTrackingManager

__all__ = ["build_pipeline", "main", "run_demo", "run_with_dashboard"]

#: The most tracks one demo ingests (200 take about 45 s and 230 MB here at --speed 0).
MAX_TRACKS = 1_000
#: The largest ``--speed``: a track then takes about a minute.
MAX_SPEED = 100.0


def build_pipeline(
    broker: InMemoryBroker, speed: float = 1.0, on_progress: Any = None
) -> DataflowPipeline:
    """The audio pipeline's tasks on ``broker``; ``speed`` scales every simulated wait."""

    async def io(seconds: float) -> None:
        await asyncio.sleep(seconds * speed)

    @broker.task
    @pipeline_task(output="manifest")
    async def fetch_manifest(track_id: str) -> dict[str, Any]:
        await io(0.02)
        return {"track_id": track_id, "url": f"https://media.example/{track_id}.flac"}

    @broker.task
    @pipeline_task(output="audio")
    async def download(manifest: dict[str, Any]) -> dict[str, Any]:
        await io(0.08 + random.random() * 0.04)
        return {"track_id": manifest["track_id"], "bytes": 4_000_000}

    @broker.task
    @pipeline_task(output="pcm")
    def decode(audio: dict[str, Any]) -> list[float]:
        # CPU work in a sync task: taskiq runs it in its thread pool.
        seed = int(hashlib.sha256(audio["track_id"].encode()).hexdigest()[:8], 16)
        rnd = random.Random(seed)
        return [rnd.uniform(-1, 1) for _ in range(20_000)]

    @broker.task
    @pipeline_task(output="loudness")
    async def loudness(pcm: list[float]) -> float:
        await io(0.01)
        return round(sum(x * x for x in pcm) / len(pcm), 4)

    @broker.task
    @pipeline_task(output="fingerprint")
    async def fingerprint(pcm: list[float]) -> str:
        await io(0.03)
        return hashlib.blake2b(repr(pcm[:512]).encode(), digest_size=8).hexdigest()

    @broker.task
    @pipeline_task(output="transcript")
    async def transcribe(pcm: list[float]) -> str:
        await io(0.15 + random.random() * 0.05)  # the slow external service
        return f"{len(pcm)} samples of speech"

    @broker.task
    @pipeline_task(output="tags")
    async def tag(loudness: float, fingerprint: str, transcript: str) -> dict[str, Any]:
        await io(0.01)
        return {"loudness": loudness, "fingerprint": fingerprint, "words": transcript}

    @broker.task
    @pipeline_task(output="published")
    async def publish(manifest: dict[str, Any], tags: dict[str, Any]) -> str:
        await io(0.02)
        return f"{manifest['track_id']}:{tags['fingerprint']}"

    tasks = [fetch_manifest, download, decode, loudness, fingerprint, transcribe, tag, publish]
    return DataflowPipeline.from_tasks(
        broker, tasks, max_parallel=3, name="audio-ingest", on_progress=on_progress
    )


def timing_table(statuses: list[PipelineStatus]) -> Table:
    """Per step: runs, mean and max ``duration_ms`` across runs; the slowest step marked."""
    per_step: dict[str, list[float]] = {}
    for status in statuses:
        for step in status.steps:
            if step.duration_ms is not None:
                per_step.setdefault(step.name, []).append(step.duration_ms)
    means = {name: sum(v) / len(v) for name, v in per_step.items()}
    slowest = max(means, key=lambda name: means[name]) if means else None
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("mean ms", justify="right")
    table.add_column("max ms", justify="right")
    table.add_column("")
    for name, values in per_step.items():
        mark = "<- slowest" if name == slowest else ""
        table.add_row(
            Text(name), str(len(values)), f"{means[name]:.1f}", f"{max(values):.1f}", mark
        )
    return table


async def run_demo(
    tracks: int = 8,
    speed: float = 1.0,
    stream: TextIO | None = None,
    report: str | os.PathLike[str] | None = None,
    tracking: PipelineTrackingManager | None = None,
) -> list[PipelineStatus]:
    """Runs the demo and prints it; returns the tracking records of every run.

    :param stream: where to print (standard output by default).
    :param report: where to write the HTML report of the slowest run (none if ``None``).
    :param tracking: where the runs are tracked (a new in-memory one by default; a dashboard
        serving it shows them live).
    """
    stream = sys.stdout if stream is None else stream
    broker = InMemoryBroker()
    await broker.startup()
    tracking = PipelineTrackingManager() if tracking is None else tracking
    console = Console(file=stream, highlight=False)
    console.print(
        f"taskiq-flow demo: audio ingest of {tracks} tracks, embedded InMemoryBroker\n"
        "  fetch_manifest -> download -> decode\n"
        "    -> {loudness, fingerprint, transcribe} -> tag -> publish",
        markup=False,
    )
    total = tracks * 8
    finished: dict[int, int] = {}
    started = time.perf_counter()
    set_max_parallel_tasks(12)
    try:
        with progress_bar("tasks", console=console) as bar:

            def progress_for(run: int) -> Any:
                def report(done: int, _total: int) -> None:
                    finished[run] = done
                    bar(sum(finished.values()), total)

                return report

            pipelines = [
                build_pipeline(broker, speed, progress_for(i)).with_tracking(tracking)
                for i in range(tracks)
            ]
            outputs = await asyncio.gather(
                *(p.kiq_dataflow(track_id=f"track-{i:03d}") for i, p in enumerate(pipelines))
            )
    finally:
        set_max_parallel_tasks(None)
        await broker.shutdown()
    elapsed = time.perf_counter() - started
    statuses = [await tracking.get_status(p.pipeline_id or "") for p in pipelines]
    console.print(
        f"\npublished {len(outputs)} tracks in {duration(elapsed)} "
        f"({total / elapsed:.0f} tasks/s, at most 12 tasks in flight)\n"
    )
    console.print("step timing (measured where each task ran):")
    console.print(timing_table(statuses))
    if report is not None:
        slowest = max(range(tracks), key=lambda i: statuses[i].duration_ms or 0.0)
        path = write_report(report, statuses[slowest], dag=pipelines[slowest].dag)
        console.print(
            f"report of the slowest run (DAG, timeline, steps):\n  {path}",
            markup=False,
            soft_wrap=True,  # a path is copied whole, not wrapped
        )
    return statuses


class _DashboardGone(Exception):
    """The dashboard could not start (its extra is missing, its port is taken): one line."""


async def run_with_dashboard(
    tracks: int,
    speed: float,
    report: str | os.PathLike[str] | None,
    port: int,
    served: list[bool],
    stream: TextIO | None = None,
) -> list[PipelineStatus]:
    """Runs the demo with the dashboard served over its tracking (on 127.0.0.1), prints the
    address and the token, and keeps serving after the demo until cancelled (Ctrl-C).

    :param port: the dashboard's port (0: a free one).
    :param served: set to ``[True]`` once the demo finished and only the dashboard serves.
    :raises _DashboardGone: if the dashboard cannot listen.
    """
    from taskiq_flow.dashboard.server import serve

    stream = sys.stdout if stream is None else stream
    tracking = PipelineTrackingManager()
    try:
        server = await serve(tracking, port=port)
    except OSError as err:
        raise _DashboardGone(
            f"cannot listen on 127.0.0.1:{port}: {err.strerror or err}; give another "
            "--dashboard-port (0: any free one)"
        ) from None
    try:
        stream.write(f"dashboard: {server.base_url}  token: {server.token}\n")
        stream.write(f"  open {server.url}\n")
        stream.flush()
        statuses = await run_demo(tracks, speed, stream=stream, report=report, tracking=tracking)
        stream.write(f"the dashboard goes on serving at {server.base_url}; Ctrl-C stops it\n")
        stream.flush()
        served[:] = [True]
        await asyncio.Event().wait()  # until Ctrl-C or SIGTERM cancels it
    finally:
        await server.close()
    return statuses


def main(argv: list[str] | None = None) -> int:
    """``taskiq-flow demo [--tracks N] [--speed F] [--report PATH] [--dashboard
    [--dashboard-port P]]``. Bad flags exit with status 2 and one line before anything starts;
    a report that cannot be written, or a dashboard port taken, 1; Ctrl-C or SIGTERM stops it
    with one line (exit status 130 or 143; 0 once the demo finished and only its dashboard
    serves, as ``taskiq-flow dashboard`` does)."""
    parser = OneLineParser(
        prog="taskiq-flow demo",
        description=paragraphs(
            "Run an audio-ingest dataflow (8 tasks per track) on taskiq's embedded "
            "InMemoryBroker, no server needed: a progress bar, then the step timing table read "
            "back from tracking, the slowest step marked, and an HTML report of the slowest run."
        ),
        epilog=(
            "examples:\n"
            "  taskiq-flow demo\n"
            "  taskiq-flow demo --tracks 32 --speed 0.1\n"
            "  taskiq-flow demo --report run.html\n"
            "  taskiq-flow demo --dashboard --speed 5\n"
            "\n"
            "Ctrl-C or SIGTERM stops it with one line (exit status 130 or 143;\n"
            "0 once the demo finished and only its dashboard serves)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--tracks",
        type=whole_number(1, MAX_TRACKS),
        default=8,
        metavar="N",
        help=f"tracks to ingest, one run each, 1 to {MAX_TRACKS:,} (default: 8)",
    )
    parser.add_argument(
        "--speed",
        type=number(0.0, MAX_SPEED),
        default=1.0,
        metavar="F",
        help="scale the simulated waits, 0 to 100; 0.1 runs ten times faster, 0 without waits "
        "(default: 1.0)",
    )
    parser.add_argument(
        "--report",
        default=os.path.join(tempfile.gettempdir(), "taskiq-flow-demo.html"),
        help="where to write the slowest run's HTML report (default: %(default)s)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the live dashboard over the demo's runs on 127.0.0.1 (prints its address "
        "and token; it goes on serving after the demo until Ctrl-C; needs the dashboard extra; "
        "default: not served)",
    )
    parser.add_argument(
        "--dashboard-port",
        type=whole_number(0, 65_535),
        default=8000,
        metavar="P",
        help="the dashboard's port, 0 for any free one (default: 8000)",
    )
    args = parser.parse_args(argv)
    problem = writable_file(args.report, "--report")
    if problem is not None:
        parser.error(problem)
    if args.dashboard:
        import importlib.util

        missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(
                f"--dashboard needs the dashboard extra ({missing[0]} is not installed): "
                "pip install 'taskiq-flow[dashboard]'"
            )
    served: list[bool] = []
    body = (
        run_with_dashboard(args.tracks, args.speed, args.report, args.dashboard_port, served)
        if args.dashboard
        else run_demo(args.tracks, args.speed, report=args.report)
    )
    try:
        stopped_by = asyncio.run(_until_signal(body))
    except OSError as err:  # the demo's only file is its report (a full disk, say)
        sys.stderr.write(f"taskiq-flow demo: cannot write --report {args.report}: {err.strerror}\n")
        return 1
    except _DashboardGone as err:
        sys.stderr.write(f"taskiq-flow demo: {err}\n")
        return 1
    if stopped_by is None:
        return 0
    if served:  # the demo had finished: stopping its dashboard is the normal end
        sys.stderr.write(f"taskiq-flow demo: dashboard stopped by {stopped_by.name}\n")
        return 0
    sys.stdout.write("\n")
    sys.stdout.flush()
    sys.stderr.write(f"taskiq-flow demo: stopped by {stopped_by.name}\n")
    return 128 + stopped_by.value


async def _until_signal(body: Awaitable[Any]) -> signal.Signals | None:
    """Runs ``body`` until it ends or SIGINT/SIGTERM arrives; returns the signal, if one did.

    The run is cancelled on a signal; the embedded broker's tasks cancelled with it are expected,
    so taskiq's and asyncio's loggers are quieted instead of printing a traceback for each.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        if not received:
            received.append(sig)
            for name in ("taskiq", "asyncio"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await body
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return received[0] if received else None
