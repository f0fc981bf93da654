"""Pipeline workloads: our pipelines against the raw taskiq floor, on the embedded broker.

The floor is what taskiq itself costs: ``kiq()`` every task, then ``wait_result()`` on each. Every
contender runs the same no-op task the same number of times on a fresh ``InMemoryBroker`` (keeping
all results, so the floor's ``wait_result`` can finish), in a fresh event loop; the ratio is
``contender time / floor time`` (1.0 is free orchestration).

Each pipeline runs twice: on the in-process lane (:mod:`taskiq_flow.run.local`, the default) and,
marked ``(kiq)``, with ``TASKIQ_FLOW_FAST_PATH=0``, every task through taskiq's ``kiq()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow.bench.workloads import Contender, Workload
from taskiq_flow.dataflow import DataflowPipeline
from taskiq_flow.mapreduce import MapReduce
from taskiq_flow.pipeline import Pipeline
from taskiq_flow.run.local import ENV_VAR

FLOOR = "raw_taskiq"

__all__ = [
    "FLOOR",
    "chain",
    "dataflow_scale",
    "layered_dataflow",
    "no_op_tasks",
    "on_both_lanes",
    "streaming_memory",
]


def _fresh_broker() -> tuple[InMemoryBroker, Any, Any]:
    broker = InMemoryBroker(max_stored_results=-1)

    @broker.task(task_name="bench_noop")
    async def noop(x: int = 0) -> int:
        return x

    @broker.task(task_name="bench_combine")
    async def combine(a: int = 0, b: int = 0, c: int = 0, d: int = 0, seed: int = 0) -> int:
        return a + b + c + d + seed

    return broker, noop, combine


def _runner(
    body: Callable[[Any], Awaitable[Any]],
    build: Callable[[InMemoryBroker, Any, Any], Any] = lambda b, n, c: (b, n, c),
) -> Contender:
    """A contender: ``build(broker, noop, combine)`` runs untimed (a pipeline is built once and
    run many times); ``body(built)`` is what is timed, in a fresh event loop."""

    def setup() -> Callable[[], Any]:
        broker, noop, combine = _fresh_broker()
        built = build(broker, noop, combine)

        async def main() -> Any:
            await broker.startup()
            try:
                return await body(built)
            finally:
                await broker.shutdown()

        return lambda: asyncio.run(main())

    return setup


def _through_kiq(contender: Contender) -> Contender:
    """``contender`` with every task sent through taskiq's ``kiq()`` (``TASKIQ_FLOW_FAST_PATH=0``
    while it runs)."""

    def setup() -> Callable[[], Any]:
        timed = contender()

        def run() -> Any:
            before = os.environ.get(ENV_VAR)
            os.environ[ENV_VAR] = "0"
            try:
                return timed()
            finally:
                if before is None:
                    del os.environ[ENV_VAR]
                else:
                    os.environ[ENV_VAR] = before

        return run

    return setup


def on_both_lanes(contenders: dict[str, Contender]) -> dict[str, Contender]:
    """Each contender but the floor, on the in-process lane and, as ``"<name> (kiq)"``, through
    ``kiq()``."""
    both: dict[str, Contender] = {}
    for name, contender in contenders.items():
        both[name] = contender
        if name != FLOOR:
            both[f"{name} (kiq)"] = _through_kiq(contender)
    return both


async def _floor(n: int, broker: InMemoryBroker, noop: Any) -> list[int]:
    tasks = [await noop.kiq(i) for i in range(n)]
    return [(await t.wait_result(check_interval=0)).return_value for t in tasks]


def no_op_tasks(n: int, max_parallel: int | None) -> Workload:
    """``n`` independent no-op tasks: the floor, a wide dataflow, ``MapReduce.map``,
    ``Pipeline.map``."""

    async def floor(built: Any) -> list[int]:
        broker, noop, _ = built
        return await _floor(n, broker, noop)

    def build_dataflow(broker: InMemoryBroker, noop: Any, _c: Any) -> DataflowPipeline:
        pipeline = DataflowPipeline(broker, max_parallel=max_parallel)
        for i in range(n):
            pipeline.add_dataflow_task(noop, output=f"v{i}", inputs={"x": "seed"})
        pipeline.dag  # noqa: B018 - validated once, as a long-lived pipeline would be
        return pipeline

    async def dataflow(pipeline: DataflowPipeline) -> list[int]:
        return list((await pipeline.kiq_dataflow(seed=1)).values())

    async def mapped(built: Any) -> list[int]:
        broker, noop, _ = built
        return await MapReduce.map(broker, noop, range(n), max_parallel=max_parallel)

    def build_sequential(broker: InMemoryBroker, noop: Any, _c: Any) -> Pipeline:
        return Pipeline(broker, noop).map(noop, range(n), max_parallel=max_parallel)

    async def sequential(pipeline: Pipeline) -> list[int]:
        result = await (await pipeline.kiq(0)).wait_result()
        return list(result.return_value)

    contenders = on_both_lanes(
        {
            FLOOR: _runner(floor),
            "DataflowPipeline": _runner(dataflow, build_dataflow),
            "MapReduce.map": _runner(mapped),
            "Pipeline.map": _runner(sequential, build_sequential),
        }
    )
    bound = "unbounded" if max_parallel is None else f"max_parallel={max_parallel}"
    return Workload(
        "pipelines",
        f"{n:,} no-op tasks, {bound}",
        n,
        "task",
        contenders,
        lambda out: len(out) == n,
        reference=FLOOR,
    )


def layered_dataflow(n: int, max_parallel: int | None) -> Workload:
    """A layered random DAG of ``n`` tasks, each fed by 4 outputs of the layer before."""
    rnd = random.Random(5)
    width = max(8, int(n**0.5))
    wiring: list[dict[str, str]] = []
    for v in range(n):
        if v < width:
            wiring.append({"seed": "seed"})
        else:
            start = (v // width - 1) * width
            picks = rnd.sample(range(start, start + width), 4)
            wiring.append({p: f"v{s}" for p, s in zip("abcd", picks)})

    async def floor(built: Any) -> list[int]:
        # The same calls as the DAG's (one seed, or four inputs), each sent and awaited raw.
        _broker, _noop, combine = built
        calls = [
            {"seed": 1} if "seed" in wiring[v] else {"a": 1, "b": 1, "c": 1, "d": 1}
            for v in range(n)
        ]
        tasks = [await combine.kiq(**kwargs) for kwargs in calls]
        return [(await t.wait_result(check_interval=0)).return_value for t in tasks]

    async def dataflow(built: Any) -> list[int]:
        # Timed with its build: declaring n nodes is part of what a DAG this size costs.
        broker, _noop, combine = built
        pipeline = DataflowPipeline(broker, max_parallel=max_parallel)
        for v in range(n):
            pipeline.add_dataflow_task(combine, output=f"v{v}", inputs=wiring[v])
        return list((await pipeline.kiq_dataflow(seed=1)).values())

    bound = "unbounded" if max_parallel is None else f"max_parallel={max_parallel}"
    return Workload(
        "pipelines",
        f"layered DAG of {n:,} tasks, {bound}, build included",
        n,
        "task",
        on_both_lanes({FLOOR: _runner(floor), "DataflowPipeline": _runner(dataflow)}),
        lambda out: len(out) == n,
        reference=FLOOR,
    )


def chain(n: int) -> Workload:
    """``n`` dependent steps, each fed the previous one's value: the floor ``kiq()``s a task and
    waits for its result before the next; the pipelines run a chain built beforehand (a chain is
    latency-bound: this is the cost of one hop)."""

    async def floor(built: Any) -> int:
        # The same calls as the chain's: ``combine(a=previous, seed=1)``.
        _broker, _noop, combine = built
        value = 0
        for _ in range(n):
            task = await combine.kiq(a=value, seed=1)
            value = (await task.wait_result(check_interval=0)).return_value
        return value

    def build_dataflow(broker: InMemoryBroker, _n: Any, combine: Any) -> DataflowPipeline:
        pipeline = DataflowPipeline(broker)
        for v in range(n):
            inputs = {"a": f"v{v - 1}", "seed": "one"} if v else {"seed": "one"}
            pipeline.add_dataflow_task(combine, output=f"v{v}", inputs=inputs)
        pipeline.dag  # noqa: B018 - validated once, as a long-lived pipeline would be
        return pipeline

    async def dataflow(pipeline: DataflowPipeline) -> int:
        value: int = (await pipeline.kiq_dataflow(one=1))[f"v{n - 1}"]
        return value

    return Workload(
        "pipelines",
        f"chain of {n:,} steps, one hop after another",
        n,
        "hop",
        on_both_lanes(
            {FLOOR: _runner(floor), "DataflowPipeline": _runner(dataflow, build_dataflow)}
        ),
        lambda out: out == n,
        reference=FLOOR,
    )


#: The memory probe of the scripts below: ``status("VmRSS")`` now, ``status("VmHWM")`` the peak,
#: both from the process's own memory map, which (unlike ``ru_maxrss``) does not start from the
#: parent's size.
_STATUS = """
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
"""


def _in_fresh_interpreter(script: str, n: int, timeout: float) -> list[Any]:
    """Runs ``script`` with its ``{n}`` replaced by ``n`` in a fresh interpreter; returns the
    JSON list its last line prints.

    :raises subprocess.CalledProcessError: if the script fails.
    """
    proc = subprocess.run(
        [sys.executable, "-c", script.replace("{n}", str(n))],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    out: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


_STREAM_SCRIPT = (
    """
import asyncio, json, time
from taskiq import InMemoryBroker
from taskiq_flow import MapReduce

broker = InMemoryBroker()

@broker.task(task_name="bench_square")
async def square(x: int) -> int:
    return x * x
"""
    + _STATUS
    + """
async def main():
    await broker.startup()
    before = status("VmRSS")
    start = time.perf_counter()
    count = total = 0
    async for value in MapReduce.stream(broker, square, range({n}), max_parallel=64):
        count += 1
        total += value
    elapsed = time.perf_counter() - start
    peak = status("VmHWM")
    await broker.shutdown()
    print(json.dumps([count, elapsed, before, peak]))

asyncio.run(main())
"""
)


def streaming_memory(n: int) -> dict[str, float]:
    """Streams ``n`` items through a no-op task in a fresh interpreter; returns the time per item
    and the peak RSS growth (``VmHWM`` over ``VmRSS`` at the start, Linux)."""
    count, elapsed, before, peak = _in_fresh_interpreter(_STREAM_SCRIPT, n, timeout=3600)
    return {
        "items": count,
        "us_per_item": elapsed / max(count, 1) * 1e6,
        "peak_rss_growth_mib": (peak - before) / 1024,
        "peak_rss_mib": peak / 1024,
    }


_SCALE_SCRIPT = (
    """
import asyncio, gc, json, random, time
import taskiq_flow
from taskiq import InMemoryBroker
"""
    + _STATUS
    + """
after_import = status("VmRSS")
broker = InMemoryBroker()  # its default: completions travel as events, not results

@broker.task(task_name="bench_combine")
async def combine(a: int = 0, b: int = 0, c: int = 0, d: int = 0, seed: int = 0) -> int:
    return 0

n = {n}
rnd = random.Random(5)
width = max(8, int(n ** 0.5))

def wiring(v):
    # Made as the nodes are added, so the bench holds no copy of the graph of its own.
    if v < width:
        return {"seed": "seed"}
    start = (v // width - 1) * width
    return {p: f"v{s}" for p, s in zip("abcd", rnd.sample(range(start, start + width), 4))}

async def main():
    await broker.startup()
    started = time.perf_counter()
    pipeline = taskiq_flow.DataflowPipeline(broker, max_parallel=16)
    for v in range(n):
        pipeline.add_dataflow_task(combine, output=f"v{v}", inputs=wiring(v))
    pipeline.dag
    built = time.perf_counter()
    out = await pipeline.kiq_dataflow(seed=1)
    done = time.perf_counter()
    assert len(out) == n
    await broker.shutdown()
    print(json.dumps([built - started, done - built, after_import, status("VmHWM")]))

asyncio.run(main())
"""
)


def dataflow_scale(n: int) -> dict[str, float]:
    """Builds and runs a layered no-op dataflow of ``n`` nodes (``max_parallel=16``) in a fresh
    interpreter: build time per node (the task declared already; the timed loop also makes each
    node's wiring, as a user's code would), run time per node, and the peak RSS above the RSS right
    after ``import taskiq_flow``."""
    build, run, after_import, peak = _in_fresh_interpreter(_SCALE_SCRIPT, n, timeout=7200)
    return {
        "nodes": n,
        "build_us_per_node": build / n * 1e6,
        "run_us_per_node": run / n * 1e6,
        "run_s": run,
        "peak_rss_over_import_mib": (peak - after_import) / 1024,
        "peak_rss_mib": peak / 1024,
    }
