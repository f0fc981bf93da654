"""The cost of an idempotency key per run, and of a cache lookup per memoized step, in one process
(in memory) and on a ``redis-server`` started for the bench (in Redis).

Keys: the same one-task dataflow run with and without a key. Each keyed run uses a new key (the
claim, the lease and the stored result: the whole cost of a run that is not a duplicate); a
duplicate trigger of a finished key is timed too (it sends nothing).

Memoized steps: a one-step dataflow and a chain of 3 steps, each declared ``cache=False`` (no
lookup) and ``cache=True``, run on a miss (new inputs every run: a lookup, a claim, a stored value
per step) and on a hit (the same inputs every run: nothing sent). On Redis, the broker's
completions travel through Redis (``FlowMiddleware(RedisCompletionChannel(...))``), so the cache
is in Redis, and the runs without a cache pay the same completions. The three contenders run in
the same rounds, their order rotated; a run's answer and its steps' executions are checked.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from taskiq import AsyncBroker, InMemoryBroker

from taskiq_flow.dataflow import DataflowPipeline, pipeline_task
from taskiq_flow.once import InMemoryKeyStore, KeyStore
from taskiq_flow.run.caching import default_cache
from taskiq_flow.testing import redis_server

__all__ = ["report", "run_cache_bench", "run_once_bench"]

#: The shapes of the memoized-steps rows: their name and their number of steps.
CACHE_SHAPES = (("1 step", 1), ("3 steps", 3))
#: The contenders of a memoized-steps row, in their first round's order.
CACHE_CONTENDERS = ("no cache", "miss", "hit")


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


def _chain(broker: AsyncBroker, steps: int, cache: bool, calls: list[int]) -> DataflowPipeline:
    """``x -> s1 -> ... -> s<steps>`` (at most 3), each step adding 1 to its input
    (``s<k> = x + k``), under task names of its own; each execution of a step appends to
    ``calls``."""

    async def add_to_x(x: int) -> int:
        calls.append(x)
        return x + 1

    async def add_to_s1(s1: int) -> int:
        calls.append(s1)
        return s1 + 1

    async def add_to_s2(s2: int) -> int:
        calls.append(s2)
        return s2 + 1

    tag = uuid.uuid4().hex[:8]
    bodies = (add_to_x, add_to_s1, add_to_s2)[:steps]
    tasks = [
        broker.task(task_name=f"bench_cache_{tag}_{k}")(
            pipeline_task(output=f"s{k}", cache=cache)(body)
        )
        for k, body in enumerate(bodies, 1)
    ]
    return DataflowPipeline.from_tasks(broker, tasks)


def _spread(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def _right(outputs: dict[str, Any], x: int, steps: int) -> bool:
    return outputs == {f"s{k}": x + k for k in range(1, steps + 1)}


async def _runs(pipeline: DataflowPipeline, runs: int, steps: int, inputs: Iterator[int]) -> bool:
    """``runs`` runs of ``pipeline``, each on the next input: whether each answered right."""
    ok = True
    for x in itertools.islice(inputs, runs):
        ok = _right(await pipeline.kiq_dataflow(x=x), x, steps) and ok
    return ok


async def _measure_shape(
    broker: AsyncBroker,
    steps: int,
    runs: int,
    repeats: int,
    clear: Callable[[], Awaitable[None]],
    fresh: Iterator[int],
) -> tuple[dict[str, dict[str, float]], bool]:
    """One shape's row: its contenders' figures, and whether every run was right."""
    calls: list[int] = []
    plain = _chain(broker, steps, False, calls)
    cached = _chain(broker, steps, True, calls)
    bodies = {
        "no cache": functools.partial(_runs, plain, runs, steps, fresh),
        "miss": functools.partial(_runs, cached, runs, steps, fresh),
        "hit": functools.partial(_runs, cached, runs, steps, itertools.repeat(0)),
    }
    executed = {"no cache": runs * steps, "miss": runs * steps, "hit": 0}
    samples: dict[str, list[float]] = {name: [] for name in CACHE_CONTENDERS}
    correct = True
    for round_ in range(repeats):
        await clear()
        correct = _right(await cached.kiq_dataflow(x=0), 0, steps) and correct  # hits' value
        shift = round_ % len(CACHE_CONTENDERS)
        for name in CACHE_CONTENDERS[shift:] + CACHE_CONTENDERS[:shift]:
            calls.clear()
            start = time.perf_counter()
            ok = await bodies[name]()
            samples[name].append((time.perf_counter() - start) / runs * 1e6)
            correct = correct and ok and len(calls) == executed[name]
    return {name: _spread(us) for name, us in samples.items()}, correct


async def _measure_cache(
    broker: AsyncBroker, runs: int, repeats: int, clear: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Microseconds per run of each shape, per contender: ``{shape: {contender: {median, min,
    max}}}`` over ``repeats`` rounds of ``runs`` runs, and ``correct``: whether every run
    answered right and executed its steps exactly when it should (a miss: every step; a hit:
    none). ``clear`` empties the cache before each round (outside the timings)."""
    fresh = itertools.count(1)  # a miss's input: new in every run of the bench
    correct = True
    figures: dict[str, Any] = {}
    await broker.startup()
    try:
        for shape, steps in CACHE_SHAPES:
            figures[shape], ok = await _measure_shape(broker, steps, runs, repeats, clear, fresh)
            correct = correct and ok
    finally:
        await broker.shutdown()
    figures["correct"] = correct
    return figures


def run_cache_bench(runs: int = 500, repeats: int = 3) -> dict[str, Any]:
    """Microseconds per run of a one-step dataflow and a 3-step chain without a cache, on a
    cache miss and on a hit; in memory and, if ``redis-server`` and the redis extra are there,
    on Redis (else why not). See :func:`_measure_cache` for the figures."""

    async def in_memory() -> dict[str, Any]:
        async def clear() -> None:
            default_cache().clear()

        try:
            return await _measure_cache(InMemoryBroker(), runs, repeats, clear)
        finally:
            default_cache().clear()

    results: dict[str, Any] = {"in memory": asyncio.run(in_memory())}
    why_not = _no_redis()
    if why_not is not None:
        results["redis"] = why_not
        return results
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisCompletionChannel
    from taskiq_flow.events import FlowMiddleware

    async def on_redis(url: str) -> dict[str, Any]:
        # A run's reader holds a connection until its blocking read returns (block_ms), even
        # after the run ended: with the defaults (1 s, a pool of 100), runs faster than 10 ms
        # each run out of connections. Short reads and a large pool keep that out of the rows.
        client = Redis.from_url(url, max_connections=2_000)
        channel = RedisCompletionChannel(client, prefix="bench_cache", block_ms=50)
        broker = InMemoryBroker().with_middlewares(FlowMiddleware(channel))

        async def clear() -> None:
            await client.flushdb()

        try:
            return await _measure_cache(broker, runs, repeats, clear)
        finally:
            await client.aclose()

    with redis_server() as url:
        results["redis"] = asyncio.run(on_redis(url))
    return results


def _no_redis() -> str | None:
    """Why the Redis rows cannot run here, or ``None``."""
    if shutil.which("redis-server") is None:
        return "skipped: redis-server is not installed"
    try:
        importlib.import_module("redis")
    except ImportError:
        return "skipped: redis is not installed (pip install 'taskiq-flow[redis]')"
    return None


def run_once_bench(runs: int = 500, repeats: int = 3) -> dict[str, Any]:
    """Microseconds per run: without a key, with a new key, a duplicate of a finished key; in
    memory and, if ``redis-server`` and the redis extra are there, on Redis (else why not); and
    under ``"cache"``, the memoized steps' rows (:func:`run_cache_bench`)."""
    results: dict[str, Any] = {
        "in memory": asyncio.run(_measure(InMemoryKeyStore(), runs, repeats))
    }
    why_not = _no_redis()
    if why_not is not None:
        results["redis"] = why_not
    else:
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
    # Rounds matter more than runs for a median and its spread: a fifth of the runs, 5 rounds.
    results["cache"] = run_cache_bench(max(10, runs // 5), max(5, repeats))
    return results


def report(results: dict[str, Any]) -> str:
    """The tables: per run, without a key, with one, and a duplicate, the key's cost; then the
    memoized steps' rows, if measured (80 columns)."""
    lines = ["idempotency keys (one-task dataflow, InMemoryBroker), per run:"]
    for where, figures in results.items():
        if where == "cache":
            continue
        if isinstance(figures, str):
            lines.append(f"  {where}: {figures}")
            continue
        plain, keyed, dup = figures["no key"], figures["new key"], figures["finished key"]
        lines.append(
            f"  keys {where}: no key {plain:,.0f} us, new key {keyed:,.0f} us "
            f"(+{keyed - plain:,.0f} us, {keyed / plain:.2f}x), duplicate of a finished key "
            f"{dup:,.0f} us (nothing sent)"
        )
    if "cache" in results:
        lines += ["", cache_report(results["cache"])]
    return "\n".join(lines)


def cache_report(results: dict[str, Any]) -> str:
    """The memoized steps' table: per run, the median over the rounds and the spread of the
    rounds around it (``max - min`` over the median); ``+/step``: the difference to the same run
    without a cache, per step."""
    lines = [
        "memoized steps (dataflow runs, InMemoryBroker; on Redis, completions and cache",
        "in Redis), us per run: median of the rounds +-spread; +/step: the difference",
        "to no cache, per step:",
        f"  {'':19}{'no cache':>13}{'miss':>13}{'+/step':>8}{'hit':>13}{'+/step':>8}{'ok':>4}",
    ]
    for where, figures in results.items():
        if isinstance(figures, str):
            lines.append(f"  cache {where}: {figures}")
            continue
        for shape, steps in CACHE_SHAPES:
            row = figures[shape]
            off = row["no cache"]["median"]
            cells = [f"  {where + ', ' + shape:19}"]
            for name in CACHE_CONTENDERS:
                cells.append(f"{_cell(row[name]):>13}")
                if name != "no cache":
                    cells.append(f"{(row[name]['median'] - off) / steps:>+8,.0f}")
            cells.append(f"{'yes' if figures['correct'] else 'NO':>4}")
            lines.append("".join(cells))
    return "\n".join(lines)


def _cell(figures: dict[str, float]) -> str:
    median = figures["median"]
    spread = (figures["max"] - figures["min"]) / median * 100 if median > 0 else 0.0
    return f"{median:,.0f} +-{min(spread, 999):.0f}%"
