"""Comparative benchmarks: taskiq-flow's core against named peers, in one run, as ratios.

Run ``taskiq-flow bench`` (or ``python -m taskiq_flow.bench``) for the quick suite, ``--full`` for
the 10^6-node sizes. Every workload runs all contenders in the same process, interleaved, on the
same input; a ratio is ``peer time / our time`` (above 1: we are faster). The peers come with
``pip install 'taskiq-flow[bench]'``; without them the command says so in one line and exits 2.

The harness ships in the wheel (an extra can add dependencies, not files, so ``taskiq-flow bench``
could not work from a wheel otherwise) but costs nothing to a plain install: ``import taskiq_flow``
never imports it, and its peers are imported only here, on demand.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from taskiq_flow.bench import pipelines
from taskiq_flow.bench import workloads as w
from taskiq_flow.cli._help import COLUMNS, HelpFormatter, OneLineParser, paragraphs

__all__ = ["PEERS", "Result", "main", "memory_per_node", "missing_peers", "run", "run_workload"]


@dataclass
class Result:
    """One contender's best time on one workload."""

    group: str
    workload: str
    contender: str
    seconds: float
    per_unit_ns: float
    unit: str
    correct: bool
    ratio: float | None = None  # peer time / our time; None for ours
    detail: str = ""


def run_workload(workload: w.Workload, repeats: int) -> list[Result]:
    """Times every contender ``repeats`` times, interleaved, keeping each one's best run."""
    best: dict[str, float] = {}
    correct: dict[str, bool] = {}
    detail: dict[str, str] = {}
    names = list(workload.contenders)
    for rep in range(repeats):
        # Rotate the order so that no contender always runs first (cold caches) or last.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            fn = workload.contenders[name]()
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                out = fn()
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            correct[name] = correct.get(name, True) and bool(workload.check(out))
            if workload.describe is not None:
                detail[name] = workload.describe(out)
            best[name] = min(best.get(name, float("inf")), elapsed)
            del out, fn
    reference = best[workload.reference]
    return [
        Result(
            workload.group,
            workload.name,
            name,
            seconds,
            seconds / workload.units * 1e9,
            workload.unit_name,
            correct[name],
            None if name == workload.reference else seconds / reference,
            detail.get(name, ""),
        )
        for name, seconds in best.items()
    ]


_MEMORY_SNIPPETS = {
    w.OURS: (
        "from taskiq_flow.core import DagSorter\n"
        "s = DagSorter(g.n); s.add_edges(g.src, g.dst); s.prepare()\n"
    ),
    "graphlib": (
        "import graphlib\n"
        "preds = g.predecessors()\n"
        "ts = graphlib.TopologicalSorter()\n"
        "before = rss()\n"
        "for v in range(g.n): ts.add(v, *preds[v])\n"
        "ts.prepare()\n"
    ),
    "rustworkx": (
        "import rustworkx as rx\n"
        "pairs = list(zip(g.src, g.dst))\n"
        "before = rss()\n"
        "graph = rx.PyDiGraph(); graph.add_nodes_from(range(g.n))\n"
        "graph.add_edges_from_no_data(pairs); ts = rx.TopologicalSorter(graph)\n"
    ),
    "python_kahn": (
        "from taskiq_flow.bench.peers import KahnSorter\nk = KahnSorter(g.n, g.src, g.dst)\n"
    ),
}


def memory_per_node(shape: str, n: int) -> dict[str, tuple[float, int, int]]:
    """Resident memory each sorter adds, measured in a fresh interpreter per contender.

    Returns ``{contender: (bytes_per_node, nodes, edges)}``; RSS from ``/proc/self/statm``.
    """
    results: dict[str, tuple[float, int, int]] = {}
    for name, snippet in _MEMORY_SNIPPETS.items():
        code = (
            "import os, json\n"
            "def rss():\n"
            "    with open('/proc/self/statm') as f:\n"
            "        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
            "from taskiq_flow.bench.workloads import make_graph\n"
            f"g = make_graph({shape!r}, {n})\n"
            "before = rss()\n" + snippet + "print(json.dumps([rss() - before, g.n, len(g.src)]))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            continue  # a peer that is not installed
        grown, nodes, edges = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = (grown / nodes, nodes, edges)
    return results


def suite(full: bool, scale: float = 1.0) -> Iterator[tuple[w.Workload, int]]:
    """The workloads of the quick (or full) run, with repeat counts; ``scale`` shrinks sizes."""

    def size(n: int) -> int:
        return max(10, int(n * scale))

    sizes = [1_000, 100_000] + ([1_000_000] if full else [])
    for n in sizes:
        repeats = 5 if n <= 1_000 else (3 if n <= 100_000 else 2)
        for shape in ("wide", "chain", "layered", "reduce"):
            yield w.dag_build(shape, size(n)), repeats
            yield w.dag_batch_loop(shape, size(n)), repeats
            yield w.dag_event_loop(shape, size(n)), repeats
    for n in [10_000, 100_000] + ([1_000_000] if full else []):
        for node_type in ("int", "str"):
            # Three runs at 10^6 too: the best of two is at the mercy of a busy machine.
            yield w.dag_dropin(node_type, size(n)), 5 if n <= 10_000 else 3
    yield w.admission_pairs(size(100_000)), 3
    yield w.rate_pairs(size(100_000)), 3
    yield w.admission_composed(size(100_000)), 3
    yield w.admission_contended(size(20_000)), 3
    for workers in (10, 1_000):
        for tasks in [10_000] + ([100_000] if full else []):
            # One run where the Python peers take tens of seconds.
            repeats = 1 if workers * tasks > 10**7 else 3
            for shape in w.SHAPES:
                yield w.placement_online(workers, size(tasks), shape), repeats
                yield w.placement_online(workers, size(tasks), shape, "first_fit"), repeats
                yield w.placement_plan(workers, size(tasks), shape), repeats
                yield w.placement_pool(workers, size(tasks), shape), repeats
    for tasks in [1_000, 10_000] + ([100_000] if full else []):
        for cap in (None, 16):
            yield pipelines.no_op_tasks(size(tasks), cap), 3 if tasks <= 10_000 else 1
    yield pipelines.layered_dataflow(size(10_000), 16), 3
    yield pipelines.chain(size(1_000)), 3


def run(
    full: bool = False, groups: Iterable[str] | None = None, scale: float = 1.0
) -> list[Result]:
    """Runs the suite and returns every result."""
    wanted = set(groups) if groups else None
    results: list[Result] = []
    for workload, repeats in suite(full, scale):
        if wanted is None or workload.group in wanted:
            results += run_workload(workload, repeats)
    return results


def _table(rows: list[list[str]], numeric: range) -> str:
    """``rows[0]`` as the header, the rest as rows, drawn by rich (numeric columns right-aligned;
    never wrapped: the callers choose what fits)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="right" if i in numeric else "left", no_wrap=True)
    for row in rows[1:]:
        table.add_row(*(Text(cell) for cell in row))
    out = io.StringIO()
    Console(file=out, width=10_000, highlight=False, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


def report(results: list[Result], wide: bool = False) -> str:
    """The core's table (each peer's time as a ratio to ours), then the pipelines' table (each
    pipeline's time per task against the raw taskiq floor).

    :param wide: one row per peer with every column (the group, the answers' details); by
        default the tables fit 80 columns: one section per group, long names shortened.
    """
    by_workload: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by_workload.setdefault((r.group, r.workload), []).append(r)
    core = {k: v for k, v in by_workload.items() if k[0] != "pipelines"}
    tables = [(_core_table if wide else _core_sections)(core)] if core else []
    pipelines = {k: v for k, v in by_workload.items() if k[0] == "pipelines"}
    if pipelines:
        tables.append(_floor_table(pipelines, wide))
    return "\n\n".join(tables)


#: Shorter words for the 80-column tables (``--wide`` prints the names in full).
_ABBREVIATIONS = (
    ("max_parallel=", "cap="),
    ("uncontended", "free"),
    ("contended", "busy"),
    ("workers=", "w="),
    ("tasks=", "n="),
    ("no-op tasks", "no-ops"),
    ("layered DAG of ", "DAG "),
    (" tasks, ", ", "),
    (", build included", " +build"),
    ("python_token_bucket", "py_token_bucket"),
)


def _abbreviate(text: str) -> str:
    for long, short in _ABBREVIATIONS:
        text = text.replace(long, short)
    return text


def _shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, a cut marked with ``~``."""
    return text if len(text) <= width else text[: width - 1] + "~"


def _fit(rows: list[list[str]], numeric: range, width: int = COLUMNS) -> str:
    """A table no wider than ``width``: the widest text column is shortened until it fits."""
    rows = [list(r) for r in rows[:1]] + [[_abbreviate(c) for c in r] for r in rows[1:]]
    text_columns = [i for i in range(len(rows[0])) if i not in numeric]
    while True:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        excess = sum(widths) + 3 * (len(widths) - 1) - width  # rich pads each side by one
        widest = max(text_columns, key=lambda i: widths[i])
        if excess <= 0 or widths[widest] <= 8:
            return _table(rows, numeric)
        for r in rows[1:]:
            r[widest] = _shorten(r[widest], max(8, widths[widest] - excess))


def _core_sections(by_workload: dict[tuple[str, str], list[Result]]) -> str:
    sections: dict[tuple[str, str], list[list[str]]] = {}
    for (group, name), rs in by_workload.items():
        ours = next(r for r in rs if r.ratio is None)
        rows = sections.setdefault(
            (group, ours.unit), [["workload", "peer", "ours ns", "peer ns", "peer÷ours", "ok"]]
        )
        for r in rs:
            if r is not ours:
                rows.append(
                    [
                        name,
                        r.contender,
                        f"{ours.per_unit_ns:,.0f}",
                        f"{r.per_unit_ns:,.0f}",
                        f"{r.ratio:.2f}x",
                        "yes" if ours.correct and r.correct else "NO",
                    ]
                )
    return "\n\n".join(
        f"{group}, time per {unit} (--wide: every column):\n" + _fit(rows, numeric=range(2, 5))
        for (group, unit), rows in sections.items()
    )


def _floor_table(by_workload: dict[tuple[str, str], list[Result]], wide: bool = True) -> str:
    rows = [
        ["workload", "contender", "floor/task", "contender/task", "over floor", "÷ floor", "ok"]
    ]
    if not wide:
        rows = [["workload", "contender", "floor", "contender", "÷ floor", "ok"]]
    for (_, name), rs in by_workload.items():
        floor = next(r for r in rs if r.ratio is None)
        for r in rs:
            if r is floor:
                continue
            row = [
                name,
                r.contender,
                f"{floor.per_unit_ns / 1000:,.1f} us",
                f"{r.per_unit_ns / 1000:,.1f} us",
                f"{(r.per_unit_ns - floor.per_unit_ns) / 1000:+,.1f} us",
                f"{r.ratio:.2f}x",
                "yes" if floor.correct and r.correct else "NO",
            ]
            rows.append(row if wide else row[:4] + row[5:])
    title = "pipelines against the raw taskiq floor (kiq + wait_result), per task:\n"
    if wide:
        return title + _table(rows, numeric=range(2, 6))
    return title + _fit(rows, numeric=range(2, 5))


def _core_table(by_workload: dict[tuple[str, str], list[Result]]) -> str:
    rows = [["group", "workload", "peer", "ours/unit", "peer/unit", "peer ÷ ours", "ok", "result"]]
    for (group, name), rs in by_workload.items():
        ours = next(r for r in rs if r.ratio is None)
        for r in rs:
            if r is ours:
                continue
            rows.append(
                [
                    group,
                    name,
                    r.contender,
                    f"{ours.per_unit_ns:,.0f} ns/{ours.unit}",
                    f"{r.per_unit_ns:,.0f} ns",
                    f"{r.ratio:.2f}x",
                    "yes" if ours.correct and r.correct else "NO",
                    f"ours {ours.detail}; peer {r.detail}" if r.detail else "",
                ]
            )
    return _table(rows, numeric=range(3, 6))


def wrap(text: str, width: int = COLUMNS) -> str:
    """Each line of ``text`` longer than ``width`` wrapped, its continuation indented."""
    out = []
    for line in text.split("\n"):
        indent = " " * (len(line) - len(line.lstrip()))
        out.append(
            textwrap.fill(line, width, subsequent_indent=indent + "    ")
            if len(line) > width
            else line
        )
    return "\n".join(out)


#: The peer libraries of the ``[bench]`` extra that the runner measures against.
PEERS = ("rustworkx", "aiolimiter")


#: The groups :func:`run` times, each peer against ours.
_TIMED_GROUPS = (
    "dag_build",
    "dag_batch_loop",
    "dag_event_loop",
    "dag_dropin",
    "admission",
    "placement",
    "pipelines",
)
#: The groups :func:`main` measures each its own way, in a section of its own.
_OWN_WAY_GROUPS = (
    "memory",
    "rate",
    "streaming",
    "dataflow_scale",
    "instructions",
    "redis",
    "orchestrators",
    "dashboard",
    "growth",
    "once",
)


def missing_peers() -> list[str]:
    """The peers of the ``[bench]`` extra that are not installed."""
    return [name for name in PEERS if w.optional(name) is None]


def _scale(text: str) -> float:
    """``--scale``: a finite number above 0."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``taskiq-flow bench [--full] [--group G ...] [--json PATH]``."""
    parser = OneLineParser(
        prog="taskiq-flow bench",
        description=paragraphs(
            "Compare taskiq-flow's scheduling core against named peers (graphlib, rustworkx, "
            "networkx, asyncio.Semaphore, anyio.CapacityLimiter, aiolimiter, Python placement) "
            "and its pipelines against raw taskiq kiq() + wait_result(), all in one run. A "
            "ratio is peer time / our time: above 1, we are faster. Needs the bench extra: "
            "pip install 'taskiq-flow[bench]'."
        ),
        epilog=(
            "groups: dag_build, dag_batch_loop, dag_event_loop, dag_dropin, admission,\n"
            "  placement, pipelines, memory, rate, streaming, dataflow_scale, redis,\n"
            "  growth, once, instructions (only when named; needs valgrind),\n"
            "  orchestrators (only when named; Dask and Ray with the peers extra),\n"
            "  dashboard (only when named; the dashboard extra)\n"
            "\n"
            "examples:\n"
            "  taskiq-flow bench                        the quick suite (minutes)\n"
            "  taskiq-flow bench --full                 adds the 10^6 sizes\n"
            "  taskiq-flow bench --group admission --scale 0.1\n"
            "  taskiq-flow bench --group orchestrators --full   against Dask and Ray\n"
            "  taskiq-flow bench --wide --json out.json every column, and the raw results"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--full", action="store_true", help="include the 10^6-node sizes (default: quick suite)"
    )
    parser.add_argument(
        "--group",
        action="append",
        choices=[*_TIMED_GROUPS, *_OWN_WAY_GROUPS],
        metavar="GROUP",
        help="run only this group (repeatable; default: every group but instructions)",
    )
    parser.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        metavar="F",
        help="multiply every size by F, e.g. 0.1 (default: 1.0)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write every result as JSON (default: no file)"
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="print the full tables, one line per row whatever its width (default: fit 80 columns)",
    )
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text if args.wide else wrap(text), flush=True)

    groups = set(args.group or [])
    peerless = {"orchestrators", "dashboard", "growth"}  # groups that need no peer library
    missing = missing_peers() if groups - peerless or not groups else []
    if missing:
        names = ", ".join(missing)
        print(
            f"taskiq-flow bench compares against peers that are not installed ({names}): "
            "pip install 'taskiq-flow[bench]'",
            file=sys.stderr,
        )
        return 2
    mode = "full" if args.full else "quick"
    say(f"taskiq-flow bench ({mode}), Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    extra: dict[str, Any] = {}
    timing_groups = groups - set(_OWN_WAY_GROUPS)
    results: list[Result] = []
    answers_right = True  # the answers of the groups measured their own way
    if not groups or timing_groups:
        results = run(args.full, timing_groups or None, args.scale)
        say(report(results, args.wide))
    if not groups or "rate" in groups:
        say("\nrate limit configured at 20,000/s, share delivered after the first burst:")
        for burst, consumers in ((100, 64), (100, 1), (20, 1)):
            rate = w.rate_accuracy(20_000.0, 1.0, burst=burst, consumers=consumers)
            extra[f"rate_delivered_burst{burst}_consumers{consumers}"] = rate
            shown = ", ".join(f"{k} {v:.1%}" for k, v in rate.items())
            say(f"  burst {burst:>3}, {consumers:>2} consumer(s): {shown}")
    if not groups or "streaming" in groups:
        n = max(1_000, int((1_000_000 if args.full else 100_000) * args.scale))
        stream = pipelines.streaming_memory(n)
        extra["streaming"] = stream
        say(
            f"\nstreaming map of {n:,} items (max_parallel=64): "
            f"{stream['us_per_item']:.1f} us/item, peak RSS {stream['peak_rss_mib']:.0f} MiB "
            f"(+{stream['peak_rss_growth_mib']:.1f} MiB while streaming)"
        )
    if "instructions" in groups:  # minutes under valgrind: only when asked for
        from taskiq_flow.bench import instructions

        counts = instructions.instructions_per_task()
        extra["instructions_per_task"] = counts
        say("\n" + instructions.report(counts))
    if not groups or "dataflow_scale" in groups:
        sizes = [100_000] + ([1_000_000] if args.full else [])
        for n in (max(1_000, int(size * args.scale)) for size in sizes):
            scale = pipelines.dataflow_scale(n)
            extra[f"dataflow_scale_{n}"] = scale
            say(
                f"\nlayered dataflow of {n:,} no-op nodes (max_parallel=16), fresh interpreter: "
                f"build {scale['build_us_per_node']:.2f} us/node, "
                f"run {scale['run_us_per_node']:.1f} us/node ({scale['run_s']:.1f} s), "
                f"peak RSS {scale['peak_rss_over_import_mib']:.0f} MiB above import"
            )
            bulk = w.bulk_dataflow_scale(n)
            extra[f"bulk_dataflow_scale_{n}"] = bulk
            say(
                f"  the same declared in bulk (BulkDataflow): "
                f"build {bulk['build_us_per_node']:.2f} us/node, "
                f"run {bulk['run_us_per_node']:.1f} us/node ({bulk['run_s']:.1f} s), "
                f"peak RSS {bulk['peak_rss_over_import_mib']:.0f} MiB above import "
                f"(wiring arrays made in {bulk['wiring_us_per_node']:.2f} us/node, not counted)"
            )
    if not groups or "once" in groups:
        from taskiq_flow.bench import once as once_bench

        once_results = once_bench.run_once_bench(runs=max(50, int(500 * args.scale)))
        extra["once"] = once_results
        say("\n" + once_bench.report(once_results))
        cached = once_results.get("cache", {})
        answers_right = answers_right and all(
            row.get("correct", True) for row in cached.values() if isinstance(row, dict)
        )
    if not groups or "redis" in groups:
        from taskiq_flow.bench import redis as redis_bench

        redis_results = redis_bench.run_redis_bench(tasks=max(100, int(2_000 * args.scale)))
        extra["redis"] = redis_results
        say("\n" + redis_bench.report(redis_results))
    if not groups or "memory" in groups:
        n = max(1_000, int((1_000_000 if args.full else 100_000) * args.scale))
        mem = memory_per_node("layered", n)
        extra["memory_bytes_per_node_layered"] = mem
        say(f"\nmemory, layered graph n={n:,} (4 edges per node), RSS growth per node:")
        for name, (per_node, _, _) in mem.items():
            say(f"  {name:12} {per_node:8.1f} B/node")
    if not groups or "growth" in groups:
        from taskiq_flow.bench import growth

        grown = growth.run_growth_bench(scale=args.scale)
        extra["growth"] = grown
        say("\n" + growth.report(grown))
        answers_right = answers_right and grown["correct"]
    if "dashboard" in groups:  # the dashboard extra; only when asked for
        from taskiq_flow.bench import dashboard as dashboard_bench

        watched = dashboard_bench.run_dashboard_bench(tasks=max(200, int(2_000 * args.scale)))
        extra["dashboard"] = watched
        say("\n" + dashboard_bench.report(watched))
    if "orchestrators" in groups:  # minutes, other libraries' clusters: only when asked for
        from taskiq_flow.bench import orchestrators

        say(
            "\norchestrators: each contender in a fresh process, "
            + ("3 times" if args.full else "once (--full: 3 times)")
        )
        outcome = orchestrators.run_orchestrators(3 if args.full else 1, args.scale, say=say)
        results += orchestrators.results(outcome)
        say(orchestrators.report(outcome))
        if outcome.failed:
            return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [asdict(r) for r in results], **extra}, f, indent=1)
    return 0 if answers_right and all(r.correct for r in results) else 1
