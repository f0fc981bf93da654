"""Placement: the core's best fit and plan vs pure-Python best fit and first-fit-decreasing."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_contender

from taskiq_flow.bench import workloads as w


@pytest.mark.parametrize("contender", [w.OURS, "python_best_fit"])
@pytest.mark.parametrize("tasks", [10_000, 100_000])
@pytest.mark.parametrize("workers", [10, 1_000])
def test_online_best_fit(benchmark: Any, workers: int, tasks: int, contender: str) -> None:
    run_contender(benchmark, w.placement_online(workers, tasks), contender, rounds=1)


@pytest.mark.parametrize("contender", [w.OURS, "python_ffd"])
@pytest.mark.parametrize("workers", [10, 1_000])
def test_plan(benchmark: Any, workers: int, contender: str) -> None:
    run_contender(benchmark, w.placement_plan(workers, 10_000), contender, rounds=1)
