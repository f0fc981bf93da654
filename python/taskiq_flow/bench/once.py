"""The cost of an idempotency key per run: the same one-task dataflow run with and without a key,
in one process (keys in memory) and on a ``redis-server`` started for the bench (keys in Redis).

Each keyed run uses a new key (the claim, the lease and the stored result: the whole cost of a run
that is not a duplicate); a duplicate trigger of a finished key is timed too (it sends nothing).
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import time
import uuid
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow.dataflow import DataflowPipeline, pipeline_task
from taskiq_flow.once import InMemoryKeyStore, KeyStore
from taskiq_flow.testing import redis_server

__all__ = ["report", "run_once_bench"]


async def _measure(store: KeyStore, runs: int, repeats: int) -> dict[str, float]:
    broker = InMemoryBroker()

    @broker.task
    @pipeline_task(output="y")
    async def step(x: int) -> int:
        return x

    await broker.startup()
    pipeline = DataflowPipeline.from_tasks(broker, [step])
    prefix = uuid.uuid4().hex[:8]
    try:

        async def plain() -> None:
            for i in range(runs):
                await pipeline.kiq_dataflow(x=i)

        async def keyed() -> None:
            tag = uuid.uuid4().hex[:8]
            for i in range(runs):
                await pipeline.with_idempotency_key(
                    f"{prefix}-{tag}-{i}", store=store
                ).kiq_dataflow(x=i)

        await pipeline.with_idempotency_key(f"{prefix}-done", store=store).kiq_dataflow(x=0)

        async def duplicate() -> None:
            for _ in range(runs):
                await pipeline.with_idempotency_key(f"{prefix}-done", store=store).kiq_dataflow(x=0)

        bodies = (("no key", plain), ("new key", keyed), ("finished key", duplicate))
        best = {name: float("inf") for name, _ in bodies}
        for _ in range(repeats):
            for name, body in bodies:
                start = time.perf_counter()
                await body()
                best[name] = min(best[name], time.perf_counter() - start)
        return {name: seconds / runs * 1e6 for name, seconds in best.items()}
    finally:
        await broker.shutdown()


def run_once_bench(runs: int = 500, repeats: int = 3) -> dict[str, Any]:
    """Microseconds per run: without a key, with a new key, a duplicate of a finished key; in
    memory and, if ``redis-server`` and the redis extra are there, on Redis (else why not)."""
    results: dict[str, Any] = {
        "in memory": asyncio.run(_measure(InMemoryKeyStore(), runs, repeats))
    }
    if shutil.which("redis-server") is None:
        results["redis"] = "skipped: redis-server is not installed"
        return results
    try:
        importlib.import_module("redis")
    except ImportError:
        results["redis"] = "skipped: redis is not installed (pip install 'taskiq-flow[redis]')"
        return results
    from redis.asyncio import Redis

    from taskiq_flow.once import RedisKeyStore

    async def on_redis(url: str) -> dict[str, float]:
        client = Redis.from_url(url)
        try:
            return await _measure(RedisKeyStore(client), runs, repeats)
        finally:
            await client.aclose()

    with redis_server() as url:
        results["redis"] = asyncio.run(on_redis(url))
    return results


def report(results: dict[str, Any]) -> str:
    """The table: per run, without a key, with one, and a duplicate; the key's cost."""
    lines = ["idempotency keys (one-task dataflow, InMemoryBroker), per run:"]
    for where, figures in results.items():
        if isinstance(figures, str):
            lines.append(f"  {where}: {figures}")
            continue
        plain, keyed, dup = figures["no key"], figures["new key"], figures["finished key"]
        lines.append(
            f"  keys {where}: no key {plain:,.0f} us, new key {keyed:,.0f} us "
            f"(+{keyed - plain:,.0f} us, {keyed / plain:.2f}x), duplicate of a finished key "
            f"{dup:,.0f} us (nothing sent)"
        )
    return "\n".join(lines)
