"""Runs that grow against runs declared up front: a three-level ``Expand`` fan-out against the
same tree of tasks declared before the run starts, on the embedded broker, in one process.

The grown run is one dataflow step whose task returns ``Expand(level1, 100 items)``; each
``level1`` task returns ``Expand(level2, 100 items)``, each ``level2`` task ``Expand(leaf, 10
items)``: 10^5 no-op leaves, 110,101 tasks with the 10,101 that expand, ``max_parallel=64`` on
the pipeline (every descendant counted).

The closest honest comparison is the same tree declared up front: a ``DataflowPipeline`` of
110,101 no-op nodes wired as the tree (each node fed by its parent's output), the same cap. It
does the same number of tasks in the same dependency order with the same cap; what differs is
that the grown run learns its shape while it runs. Its declaration (about 2 s for 10^5 nodes) is
not timed: a plan declared up front is built once and run many times, and timing only its run
makes the comparison stricter for the grown run. ``MapReduce.map`` over 110,101 items (no
dependencies at all, the cheapest way to run that many tasks) is shown beside it for scale.

Each contender runs on a fresh ``InMemoryBroker`` in a fresh event loop, interleaved with the
others, ``repeats`` times; the best wall time and the best CPU time of each are kept (the CPU
time of this one process is less disturbed by other processes on a shared machine). The figure is
time per executed task, grown ÷ declared; the target is at most 1.15. The grown run's peak RSS is
measured once more in a fresh interpreter: ``VmHWM`` over ``VmRSS`` right after ``import
taskiq_flow`` (the bench module, about 1 MiB, is imported after that and counted); the target is
at most 150 MiB.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, Expand, MapReduce, pipeline_task

__all__ = [
    "CAP",
    "CONTENDERS",
    "GROWN",
    "LEVELS",
    "report",
    "run_growth_bench",
    "tasks_of",
    "tree_levels",
]

#: The fan-out at each level of the grown tree, root first.
LEVELS = (100, 100, 10)
#: The pipeline's ``max_parallel`` in every contender.
CAP = 64
GROWN = "Expand tree (grown)"
DECLARED = "same tree declared"
FLAT = "MapReduce.map (flat)"
CONTENDERS = (GROWN, DECLARED, FLAT)
#: Time per task, grown ÷ declared, and peak RSS above import: what issue 17 asks of growth.
TARGET_RATIO = 1.15
TARGET_MIB = 150.0


def tree_levels(scale: float = 1.0) -> tuple[int, int, int]:
    """The fan-outs at ``scale`` (the leaves scale with it; the last level stays 10).

    :param scale: 1.0 for 100 x 100 x 10; 0.01 for 10 x 10 x 10.
    """
    first, second, last = LEVELS
    factor = math.sqrt(scale)
    return max(2, round(first * factor)), max(2, round(second * factor)), last


def tasks_of(levels: tuple[int, int, int]) -> int:
    """Every task of the tree: the root, the two expanding levels and the leaves."""
    a, b, c = levels
    return 1 + a + a * b + a * b * c


def _grown(broker: InMemoryBroker, levels: tuple[int, int, int]) -> DataflowPipeline:
    """The tree as a run that grows: leaf ``k`` of the tree returns ``k``."""
    _, b, c = levels

    @broker.task(task_name="growth_bench_leaf")
    async def leaf(k: int) -> int:
        return k

    @broker.task(task_name="growth_bench_level2")
    async def level2(j: int) -> Expand:
        return Expand(leaf, list(range(j * c, (j + 1) * c)))

    @broker.task(task_name="growth_bench_level1")
    async def level1(i: int) -> Expand:
        return Expand(level2, list(range(i * b, (i + 1) * b)))

    @broker.task(task_name="growth_bench_root")
    @pipeline_task(output="tree")
    async def root(width: int) -> Expand:
        return Expand(level1, list(range(width)))

    return DataflowPipeline.from_tasks(broker, [root], max_parallel=CAP)


def _noop(broker: InMemoryBroker) -> Any:
    @broker.task(task_name="growth_bench_noop")
    async def noop(x: int = 0) -> int:
        return x

    return noop


def _declared(broker: InMemoryBroker, levels: tuple[int, int, int]) -> DataflowPipeline:
    """The same tree declared up front: node ``v`` takes its parent's output ``v<parent>``."""
    noop = _noop(broker)
    pipeline = DataflowPipeline(broker, max_parallel=CAP)
    pipeline.add_dataflow_task(noop, output="v0", inputs={"x": "seed"})
    parents = [0]
    node = 1
    for width in levels:
        below = []
        for parent in parents:
            for _ in range(width):
                pipeline.add_dataflow_task(noop, output=f"v{node}", inputs={"x": f"v{parent}"})
                below.append(node)
                node += 1
        parents = below
    pipeline.dag  # noqa: B018 - validated before the clock starts, as a long-lived plan would be
    return pipeline


def _leaves(tree: Any) -> list[int]:
    return [leaf for first in tree for second in first for leaf in second]


def _contender(name: str, levels: tuple[int, int, int]) -> Callable[[], bool]:
    """Builds the contender (untimed) and returns the timed run, which answers whether the
    run's outputs are right."""
    broker = InMemoryBroker()
    n = tasks_of(levels)
    a, b, c = levels

    async def main(body: Callable[[], Any]) -> bool:
        await broker.startup()
        try:
            return bool(await body())
        finally:
            await broker.shutdown()

    if name == GROWN:
        grown = _grown(broker, levels)

        async def body() -> bool:
            out = await grown.kiq_dataflow(width=a)
            return _leaves(out["tree"]) == list(range(a * b * c))

    elif name == DECLARED:
        declared = _declared(broker, levels)

        async def body() -> bool:
            out = await declared.kiq_dataflow(seed=7)
            return len(out) == n and all(v == 7 for v in out.values())

    else:
        noop = _noop(broker)

        async def body() -> bool:
            out = await MapReduce.map(broker, noop, range(n), max_parallel=CAP)
            return out == list(range(n))

    return lambda: asyncio.run(main(body))


#: Run in a fresh interpreter: the grown tree once, then what it took.
_MEMORY_SCRIPT = """
import json, sys

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

import taskiq_flow

after_import = status("VmRSS")
from taskiq_flow.bench.growth import _contender

levels = tuple(json.loads(sys.argv[1]))
run = _contender(sys.argv[2], levels)
correct = run()
print(json.dumps([correct, after_import, status("VmHWM")]))
"""


def peak_rss_over_import(levels: tuple[int, int, int], name: str = GROWN) -> dict[str, Any]:
    """One run of a contender in a fresh interpreter: its peak RSS above ``import taskiq_flow``.

    :raises subprocess.CalledProcessError: the run failed.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(levels), name],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    correct, after_import, peak = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "correct": bool(correct),
        "peak_rss_over_import_mib": (peak - after_import) / 1024,
        "peak_rss_mib": peak / 1024,
    }


def run_growth_bench(scale: float = 1.0, repeats: int = 3) -> dict[str, Any]:
    """Times the grown tree, the same tree declared up front and a flat map of as many tasks,
    interleaved, ``repeats`` times each; then the grown run's memory in a fresh interpreter.

    :param scale: shrinks the tree (see :func:`tree_levels`).
    :param repeats: runs of each contender; the best wall and CPU times are kept.
    :return: ``levels``, ``tasks``, per contender ``{wall_s, cpu_s, us_per_task,
        cpu_us_per_task, correct}``, the ratios grown ÷ declared and the memory figures.
    """
    levels = tree_levels(scale)
    n = tasks_of(levels)
    best: dict[str, dict[str, Any]] = {
        name: {"wall_s": math.inf, "cpu_s": math.inf, "correct": True} for name in CONTENDERS
    }
    for rep in range(repeats):
        order = CONTENDERS[rep % len(CONTENDERS) :] + CONTENDERS[: rep % len(CONTENDERS)]
        for name in order:
            run = _contender(name, levels)
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            correct = run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = best[name]
            row["correct"] = row["correct"] and correct
            row["wall_s"] = min(row["wall_s"], wall)
            row["cpu_s"] = min(row["cpu_s"], cpu)
            del run
    for row in best.values():
        row["us_per_task"] = row["wall_s"] / n * 1e6
        row["cpu_us_per_task"] = row["cpu_s"] / n * 1e6
    grown, declared = best[GROWN], best[DECLARED]
    memory = peak_rss_over_import(levels)
    return {
        "levels": list(levels),
        "tasks": n,
        "max_parallel": CAP,
        "repeats": repeats,
        "contenders": best,
        "ratio_wall": grown["wall_s"] / declared["wall_s"],
        "ratio_cpu": grown["cpu_s"] / declared["cpu_s"],
        "memory": memory,
        "correct": all(row["correct"] for row in best.values()) and memory["correct"],
    }


def report(result: dict[str, Any]) -> str:
    """The growth section of ``taskiq-flow bench`` (80 columns): time per task of each
    contender, the ratio grown ÷ declared against its target, and the grown run's peak RSS
    against its target."""
    a, b, c = result["levels"]
    n = result["tasks"]
    lines = [
        f"runs that grow: an Expand tree {a} x {b} x {c} ({n:,} tasks, {a * b * c:,} leaves)",
        f"  vs the same tree declared up front; max_parallel={result['max_parallel']}, "
        f"InMemoryBroker, best of {result['repeats']}",
        f"  {'contender':<22}  {'wall/task':>10}  {'CPU/task':>10}  ok",
    ]
    for name, row in result["contenders"].items():
        lines.append(
            f"  {name:<22}  {row['us_per_task']:7.1f} us  {row['cpu_us_per_task']:7.1f} us  "
            f"{'yes' if row['correct'] else 'NO'}"
        )
    for what, key in (("wall", "ratio_wall"), ("CPU", "ratio_cpu")):
        ratio = result[key]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"  grown / declared, {what} time per task: {ratio:.2f}x "
            f"(target <= {TARGET_RATIO:.2f}x: {verdict})"
        )
    mib = result["memory"]["peak_rss_over_import_mib"]
    verdict = "met" if mib <= TARGET_MIB else "MISSED"
    lines.append(
        f"  grown run's peak RSS: {mib:.0f} MiB above import taskiq_flow "
        f"(target <= {TARGET_MIB:.0f} MiB: {verdict})"
    )
    return "\n".join(lines)
