"""pytest-benchmark groups over the same workloads as ``taskiq-flow bench``.

Run: ``pytest benches --benchmark-only --benchmark-group-by=group`` (add ``--benchmark-disable``
for a one-shot correctness pass). Each test is one contender on one workload; the group is the
workload, so pytest-benchmark's table puts the peers side by side, and ``extra_info["correct"]``
records whether the contender's answer checked out.
"""

from __future__ import annotations

from typing import Any

from taskiq_flow.bench.workloads import Workload


def run_contender(benchmark: Any, workload: Workload, contender: str, rounds: int = 3) -> None:
    """Benchmarks one contender (fresh setup per round) and records whether it was correct."""
    assert contender in workload.contenders, (
        f"{contender} missing: pip install 'taskiq-flow[bench]'"
    )
    benchmark.group = f"{workload.group}: {workload.name}"
    benchmark.extra_info["units"] = workload.units
    results: list[Any] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (workload.contenders[contender](),), {}

    def target(fn: Any) -> None:
        results.append(fn())

    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["correct"] = all(workload.check(r) for r in results)
    assert benchmark.extra_info["correct"]
