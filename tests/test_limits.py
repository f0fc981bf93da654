"""CapacityLimiter and RateLimiter under a virtual clock (trio's MockClock): exact, no sleeping."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest
from conftest import until
from trio.testing import MockClock

from taskiq_flow import CapacityLimiter, InvalidValueError, RateLimiter, StateError


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
            await anyio.sleep(0.01)  # holds the slot a while: jobs overlap up to the cap
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
            # Each waiter is in line before the next starts.
            await until(lambda n=i + 1: limiter.statistics().tasks_waiting == n, what=f"waiter {i}")
        stats = limiter.statistics()
        assert (stats.borrowed_tokens, stats.total_tokens, stats.tasks_waiting) == (1, 1, 5)
        with pytest.raises(anyio.WouldBlock):
            limiter.acquire_nowait()
        limiter.release()
    assert order == [0, 1, 2, 3, 4]


async def test_waiter_cancelled_before_grant_leaves_no_trace() -> None:
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await until(lambda: limiter.statistics().tasks_waiting == 1, what="the waiter in line")
        tg.cancel_scope.cancel()
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
    await until(lambda: limiter.statistics().tasks_waiting == 1, what="first in line")
    second = asyncio.create_task(take("second"))
    await until(lambda: limiter.statistics().tasks_waiting == 2, what="second in line")
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
        await until(lambda: limiter.statistics().tasks_waiting == 2, what="both waiters in line")
        assert entered == []
        limiter.total_tokens = 3
    assert sorted(entered) == [1, 2]
    assert limiter.borrowed_tokens == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, math.nan, "3"])
def test_bad_caps_are_refused(bad: object) -> None:
    with pytest.raises(InvalidValueError):
        CapacityLimiter(bad)  # type: ignore[arg-type]


def test_release_without_acquire_is_refused() -> None:
    # A misuse of the limiter's state, like anyio's RuntimeError; still a ValueError.
    with pytest.raises(StateError, match=r"release\(\) must be matched by an earlier acquire"):
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


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop with a hand-driven clock (its own ``time()``)."""

    def __init__(self, now: float) -> None:
        super().__init__()
        self.now = now

    def time(self) -> float:
        return self.now


def _run_on(loop: asyncio.AbstractEventLoop, body: Any) -> Any:
    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()


def test_rate_limiter_reads_the_running_asyncio_loops_clock() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    virtual = _VirtualLoop(now=1_000_000.0)

    async def on_virtual_time() -> list[bool]:
        taken = [limiter.try_acquire(), limiter.try_acquire()]
        virtual.now += 1.0  # exactly one token later, by this loop's clock only
        taken.append(limiter.try_acquire())
        return taken

    assert _run_on(virtual, on_virtual_time) == [True, False, True]

    # A new loop, whose clock is far ahead: the limiter must read it, not keep reading the old
    # loop's time (1,000,001, where the next token is not due yet).
    async def take() -> bool:
        return limiter.try_acquire()

    assert _run_on(_VirtualLoop(now=2_000_000.0), take) is True
    assert _run_on(_VirtualLoop(now=2_000_000.0), take) is False
    # A loop with the default clock (time.monotonic(), far behind 2,000,001 here): none due.
    assert asyncio.run(take()) is False


def test_rate_limiter_follows_its_loop_into_another_thread() -> None:
    import threading

    limiter = RateLimiter(rate=1.0, burst=1)
    results: list[bool] = []

    async def take() -> None:
        results.append(limiter.try_acquire())

    _run_on(_VirtualLoop(now=50.0), take)
    # The same limiter in another thread's loop, whose clock is 10 s ahead: a token is due.
    worker = threading.Thread(target=lambda: _run_on(_VirtualLoop(now=60.0), take))
    worker.start()
    worker.join()
    # Back on a loop whose clock is behind the last grant: no token.
    _run_on(_VirtualLoop(now=60.5), take)
    assert results == [True, True, False]


async def test_uncontended_acquire_does_not_create_a_coroutine() -> None:
    limiter, rate = CapacityLimiter(2), RateLimiter(1e9, burst=10)
    for acquire in (limiter.acquire, rate.acquire, limiter.__aenter__):
        pending = acquire()
        assert not asyncio.iscoroutine(pending)
        assert await pending is None
    assert not asyncio.iscoroutine(limiter.__aexit__(None, None, None))
    limiter.acquire_nowait()
    with pytest.raises(anyio.WouldBlock):
        limiter.acquire_nowait()
    contended = limiter.acquire()  # no token: a place in line, awaited
    assert asyncio.iscoroutine(contended)
    limiter.release()  # handed to the waiter
    await contended
    limiter.release()
    limiter.release()
    assert limiter.borrowed_tokens == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_waiter_started_late_takes_a_token_freed_before_it_ran() -> None:
    # wait_for() runs the acquisition in a new task: the token is freed between the call that
    # found none and the moment the wait starts, and must not be missed.
    limiter = CapacityLimiter(1)
    await limiter.acquire()
    pending = limiter.acquire()
    limiter.release()
    await asyncio.wait_for(pending, timeout=5)
    assert limiter.borrowed_tokens == 1
    limiter.release()


@virtual
async def test_rate_waiter_started_late_sleeps_only_what_is_left() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    await limiter.acquire()  # t = 0
    pending = limiter.acquire()  # reserves the token due at t = 1
    await anyio.sleep(0.75)
    start = anyio.current_time()
    await pending
    assert anyio.current_time() - start == pytest.approx(0.25, abs=1e-9)
