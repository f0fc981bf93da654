"""Redis benchmarks: pipelines on taskiq-redis with real worker processes, against the raw floor.

Two floors, both taskiq-redis itself: ``kiq()`` every task, then ``wait_result()`` on each (results
polled from the JSON result backend every millisecond, one poller per task); and the cheapest
raw floor, ``kiq()`` every task, then one pipelined ``EXISTS`` over every result key still missing,
every 2 ms. The contender is ``MapReduce.map`` over the same no-op task, whose completions come
back through Redis streams (with the workers' leases, heartbeats and stream trimming on). All run
against the same ``taskiq worker`` processes (1, then 2) on a ``redis-server`` started for the
run. Also: the time the Rust placer takes to place one task among 1,000 registered workers.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from taskiq_flow import MapReduce
from taskiq_flow.core import Placer
from taskiq_flow.run.runner import run_single
from taskiq_flow.testing import redis_server

__all__ = ["placement_decision_us", "run_redis_bench"]


def _start_workers(url: str, queue: str, count: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TASKIQ_FLOW_BENCH_REDIS": url, "TASKIQ_FLOW_BENCH_QUEUE": queue}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "taskiq_flow.bench.redis_app:broker",
            "--workers",
            str(count),
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # past the grace period
        proc.wait()


async def _measure(app: Any, tasks: int, repeats: int) -> dict[str, float]:
    from redis.asyncio import Redis

    broker = app.broker
    await broker.startup()
    client = Redis.from_url(app.URL)
    try:
        deadline = time.monotonic() + 60
        while True:  # workers see only what is sent after their consumer group exists
            try:
                await run_single(broker, app.noop.task_name, (), {"x": 0}, timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise

        async def floor() -> None:
            sent = [await app.noop.kiq(i) for i in range(tasks)]
            await asyncio.gather(*(t.wait_result(check_interval=0.001) for t in sent))

        async def cheapest() -> None:
            sent = [await app.noop.kiq(i) for i in range(tasks)]
            prefix = broker.result_backend.prefix_str
            missing = [f"{prefix}:{t.task_id}" if prefix else t.task_id for t in sent]
            while missing:
                async with client.pipeline(transaction=False) as pipe:
                    for key in missing:
                        pipe.exists(key)
                    found = await pipe.execute()
                missing = [key for key, there in zip(missing, found) if not there]
                if missing:
                    await asyncio.sleep(0.002)

        async def ours() -> None:
            await MapReduce.map(broker, app.noop, range(tasks))

        bodies = (("raw_taskiq_redis", floor), ("cheapest_raw", cheapest), ("MapReduce.map", ours))
        best = {name: float("inf") for name, _ in bodies}
        for _ in range(repeats):
            for name, body in bodies:
                start = time.perf_counter()
                await body()
                best[name] = min(best[name], time.perf_counter() - start)
        return {name: seconds / tasks * 1e6 for name, seconds in best.items()}
    finally:
        await client.aclose()
        await broker.shutdown()


def run_redis_bench(tasks: int = 2_000, repeats: int = 3) -> dict[str, Any] | str:
    """Runs the Redis workloads; returns the figures, or why they were skipped."""
    if shutil.which("redis-server") is None:
        return "skipped: redis-server is not installed (Debian: apt-get install redis-server)"
    try:
        importlib.import_module("taskiq_redis")
    except ImportError:
        return "skipped: taskiq-redis is not installed (pip install 'taskiq-flow[redis]')"
    results: dict[str, Any] = {}
    with redis_server() as url:
        for workers in (1, 2):
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            os.environ["TASKIQ_FLOW_BENCH_REDIS"] = url
            os.environ["TASKIQ_FLOW_BENCH_QUEUE"] = queue
            sys.modules.pop("taskiq_flow.bench.redis_app", None)
            app = importlib.import_module("taskiq_flow.bench.redis_app")
            proc = _start_workers(url, queue, workers)
            try:
                results[f"{workers} worker(s)"] = asyncio.run(_measure(app, tasks, repeats))
            finally:
                _stop(proc)
    results["placement_us_1000_workers"] = placement_decision_us()
    return results


def placement_decision_us(workers: int = 1_000, tasks: int = 20_000) -> float:
    """Microseconds per best-fit placement (with releases) among ``workers`` workers."""
    placer = Placer(["cpu", "ram_mb"])
    for w in range(workers):
        placer.add_worker([2000 + (w % 8) * 1000, 8192])
    start = time.perf_counter()
    for t in range(tasks):
        if placer.place(t, [100 + t % 900, 256]) is not None and t % 3 == 0:
            placer.release(t)
    return (time.perf_counter() - start) / tasks * 1e6


def report(results: dict[str, Any] | str) -> str:
    """The Redis table: per task, the floor, ours, and the ratio."""
    if isinstance(results, str):
        return f"redis: {results}"
    lines = ["redis (taskiq-redis stream broker, real worker processes), per task:"]
    for key, figures in results.items():
        if key == "placement_us_1000_workers":
            continue
        floor, ours = figures["raw_taskiq_redis"], figures["MapReduce.map"]
        cheapest = figures["cheapest_raw"]
        lines.append(
            f"  {key}: raw kiq + wait_result {floor:,.0f} us, kiq + pipelined EXISTS poll "
            f"{cheapest:,.0f} us, MapReduce.map {ours:,.0f} us ({ours / floor:.2f}x the first "
            f"floor, {ours / cheapest:.2f}x the cheapest)"
        )
    lines.append(
        f"  best-fit placement among 1,000 workers: {results['placement_us_1000_workers']:.2f} us"
    )
    return "\n".join(lines)
