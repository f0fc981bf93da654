"""Admission: our CapacityLimiter vs asyncio.Semaphore and anyio.CapacityLimiter, alone and composed
with a second cap and a RateLimiter (vs the same from asyncio.Semaphore and a Python token bucket).

Rate accuracy against aiolimiter is a delivered share, not a time:
``taskiq-flow bench --group rate``.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_contender

from taskiq_flow.bench import workloads as w

CONTENDERS = [w.OURS, "asyncio.Semaphore", "anyio.CapacityLimiter"]


@pytest.mark.parametrize("contender", CONTENDERS)
def test_uncontended(benchmark: Any, contender: str) -> None:
    run_contender(benchmark, w.admission_pairs(100_000), contender)


@pytest.mark.parametrize("contender", CONTENDERS)
def test_contended(benchmark: Any, contender: str) -> None:
    run_contender(benchmark, w.admission_contended(20_000), contender)


@pytest.mark.parametrize("contender", [w.OURS, "python"])
def test_two_caps_and_a_rate(benchmark: Any, contender: str) -> None:
    run_contender(benchmark, w.admission_composed(100_000), contender)
