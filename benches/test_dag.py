"""DAG build, batch loop and event loop: taskiq_flow vs graphlib, rustworkx and a lean Kahn."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_contender

from taskiq_flow.bench import workloads as w

CONTENDERS = [w.OURS, "graphlib", "rustworkx", "python_kahn"]
SHAPES = ["wide", "chain", "layered", "reduce"]
SIZES = [1_000, 100_000, 1_000_000]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["build", "batch_loop", "event_loop"])
def test_dag(benchmark: Any, kind: str, shape: str, n: int, contender: str) -> None:
    make = {"build": w.dag_build, "batch_loop": w.dag_batch_loop, "event_loop": w.dag_event_loop}
    run_contender(benchmark, make[kind](shape, n), contender, rounds=1 if n >= 1_000_000 else 3)
