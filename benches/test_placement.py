"""Placement: the core's best fit, first fit and plan vs Python and numpy peers, on fitting and
oversubscribed clusters."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_contender

from taskiq_flow.bench import workloads as w

SHAPES = pytest.mark.parametrize("shape", w.SHAPES)
SIZES = [(10, 10_000), (1_000, 10_000), (10, 100_000), (1_000, 100_000)]


def _online(*peers: str) -> Any:
    """``(workers, tasks, contender)`` for every size: ours and the numpy peer everywhere, the
    pure-Python scan only where the workload runs it (``workloads._PYTHON_SCAN_LIMIT``)."""
    return pytest.mark.parametrize(
        ("workers", "tasks", "contender"),
        [
            (workers, tasks, contender)
            for workers, tasks in SIZES
            for contender in (w.OURS, *peers)
            if not contender.startswith("python_") or workers * tasks <= w._PYTHON_SCAN_LIMIT
        ],
    )


def _run(benchmark: Any, workload: w.Workload, contender: str) -> None:
    assert contender in workload.contenders, f"{contender} is not a contender of {workload.name}"
    run_contender(benchmark, workload, contender, rounds=1)


@_online("python_best_fit", "numpy_best_fit")
@SHAPES
def test_online_best_fit(
    benchmark: Any, workers: int, tasks: int, shape: str, contender: str
) -> None:
    _run(benchmark, w.placement_online(workers, tasks, shape), contender)


@_online("python_first_fit", "numpy_first_fit")
@SHAPES
def test_online_first_fit(
    benchmark: Any, workers: int, tasks: int, shape: str, contender: str
) -> None:
    _run(benchmark, w.placement_online(workers, tasks, shape, "first_fit"), contender)


@pytest.mark.parametrize("contender", [w.OURS, "python_ffd", "python_smallest_first"])
@SHAPES
@pytest.mark.parametrize("workers", [10, 1_000])
def test_plan(benchmark: Any, workers: int, shape: str, contender: str) -> None:
    _run(benchmark, w.placement_plan(workers, 10_000, shape), contender)


@_online("python_best_fit", "numpy_best_fit")
@SHAPES
def test_pool(benchmark: Any, workers: int, tasks: int, shape: str, contender: str) -> None:
    _run(benchmark, w.placement_pool(workers, tasks, shape), contender)
