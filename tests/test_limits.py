"""CapacityLimiter and RateLimiter under a virtual clock (trio's MockClock): exact, no sleeping."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from taskiq_flow import CapacityLimiter, InvalidValueError, RateLimiter


def virtual_trio() -> Any:
    """trio with a clock that jumps ahead whenever every task sleeps: time is exact and free."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


@pytest.fixture(params=["trio-virtual", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return "asyncio" if request.param == "asyncio" else virtual_trio()


virtual = pytest.mark.parametrize("anyio_backend", [virtual_trio()], ids=["trio-virtual"])


async def test_capacity_limiter_bounds_concurrency_exactly() -> None:
    limiter = CapacityLimiter(3)
    running = peak = 0

    async def job() -> None:
        nonlocal running, peak
        async with limiter:
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.01)
            running -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(job)
    assert peak == 3
    assert limiter.borrowed_tokens == 0 and limiter.available_tokens == 3


async def test_capacity_limiter_is_fifo_and_reports_statistics() -> None:
    limiter = CapacityLimiter(1)
    order: list[int] = []
    await limiter.acquire()

    async def waiter(i: int) -> None:
        async with limiter:
            order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(waiter, i)
            await anyio.sleep(0.01)  # each waiter is in line before the next starts
        stats = limiter.statistics()
        assert (stats.borrowed_tokens, stats.total_tokens, stats.tasks_waiting) == (1, 1, 5)
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
        limiter.release()
    assert order == [0, 1, 2, 3, 4]


async def test_waiter_cancelled_before_grant_leaves_no_trace() -> None:
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    with anyio.move_on_after(0.5):
        await limiter.acquire()
    assert limiter.statistics().tasks_waiting == 0
    limiter.release()
    limiter.acquire_nowait()
    limiter.release()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_waiter_cancelled_after_grant_passes_the_slot_on() -> None:
    # asyncio can cancel a task whose wait already succeeded (Task.cancel() marks it, and the
    # CancelledError comes out of the finished wait); the slot handed to it must not be lost.
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    got: list[str] = []

    async def take(name: str) -> None:
        async with limiter:
            got.append(name)

    first = asyncio.create_task(take("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(take("second"))
    await asyncio.sleep(0)
    assert limiter.statistics().tasks_waiting == 2
    limiter.release()  # hands the slot to `first` ...
    first.cancel()  # ... which is cancelled before it runs again
    await asyncio.wait_for(second, timeout=5)
    assert first.cancelled()
    assert got == ["second"]
    assert limiter.borrowed_tokens == 0


async def test_raising_total_tokens_admits_waiters() -> None:
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    entered: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire()
        entered.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 1)
        tg.start_soon(waiter, 2)
        await anyio.sleep(0.01)
        assert entered == []
        limiter.total_tokens = 3
    assert sorted(entered) == [1, 2]
    assert limiter.borrowed_tokens == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, math.nan, "3"])
def test_bad_caps_are_refused(bad: object) -> None:
    with pytest.raises(InvalidValueError):
        CapacityLimiter(bad)  # type: ignore[arg-type]


def test_release_without_acquire_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="release"):
        CapacityLimiter(2).release()


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-2.0, 1), (math.nan, 1), (math.inf, 1), (5.0, 0), (5.0, 1.5)]
)
def test_bad_rates_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(InvalidValueError):
        RateLimiter(rate, burst)


@virtual
async def test_rate_limiter_spaces_calls_exactly() -> None:
    limiter = RateLimiter(rate=10.0, burst=1)
    start = anyio.current_time()
    stamps = []
    for _ in range(50):
        await limiter.acquire()
        stamps.append(anyio.current_time() - start)
    assert stamps == pytest.approx([i / 10 for i in range(50)], abs=1e-9)


@virtual
async def test_rate_limiter_burst_then_rate_for_concurrent_callers() -> None:
    limiter = RateLimiter(rate=100.0, burst=20)
    start = anyio.current_time()
    stamps: list[float] = []

    async def caller() -> None:
        await limiter.acquire()
        stamps.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(220):
            tg.start_soon(caller)
    stamps.sort()
    assert stamps[:20] == [0.0] * 20
    # The remaining 200 come one every 10 ms, the last at exactly 2 s.
    assert stamps[-1] == pytest.approx(2.0, abs=1e-9)
    assert stamps[20:] == pytest.approx([(i + 1) / 100 for i in range(200)], abs=1e-9)


@virtual
async def test_cancelled_rate_waiter_gives_its_token_back() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    await limiter.acquire()  # t = 0
    with anyio.move_on_after(0.5):
        await limiter.acquire()  # would be served at t = 1
    start = anyio.current_time()
    await limiter.acquire()
    assert anyio.current_time() - start == pytest.approx(0.5, abs=1e-9)  # at t = 1, not t = 2


@virtual
async def test_rate_limiter_try_acquire_and_available() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert limiter.available_tokens() == 3
    assert limiter.try_acquire() and limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    await anyio.sleep(0.5)
    assert limiter.available_tokens() == 1
    async with limiter:
        pass
    assert limiter.available_tokens() == 0
