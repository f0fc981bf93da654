"""Async admission limiters on the Rust core: a concurrency cap and an exact rate limit.

:class:`CapacityLimiter` has the shape of :class:`anyio.CapacityLimiter` (``acquire``,
``acquire_nowait``, ``release``, ``total_tokens``, ``statistics()``, ``async with``); the count and
the decision to hand a released slot to a waiter are the core's, the waiting is anyio's.

:class:`RateLimiter` is a token bucket kept as a theoretical arrival time: each ``acquire`` reserves
the next token in the core and sleeps exactly until it is due, so concurrent callers are served in
call order at exactly ``rate`` per second, with bursts of up to ``burst``.

Both are cancellation-safe: a waiter cancelled before it is served leaves no trace; a waiter
cancelled after a slot was handed to it passes the slot on; cancellation is always re-raised.
Both work under asyncio and trio (through anyio), with the clock of the running event loop, so
tests can drive them with a virtual clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

import anyio

from taskiq_flow._core import ConcurrencyCounter, TokenBucket

__all__ = ["CapacityLimiter", "RateLimiter"]

#: What a queued acquirer waits on: a bare future under asyncio (the cheapest wake-up there is),
#: an :class:`anyio.Event` under any other backend.
_Waiter = asyncio.Future[None] | anyio.Event


def _new_waiter() -> _Waiter:
    try:
        return asyncio.get_running_loop().create_future()
    except RuntimeError:
        return anyio.Event()


def _grant(waiter: _Waiter) -> None:
    if isinstance(waiter, asyncio.Future):
        waiter.set_result(None)
    else:
        waiter.set()


def _granted(waiter: _Waiter) -> bool:
    if isinstance(waiter, asyncio.Future):
        return waiter.done() and not waiter.cancelled()
    return waiter.is_set()


class CapacityLimiter:
    """Lets at most ``total_tokens`` holders in at once; the rest wait in FIFO order.

    Unlike :class:`anyio.CapacityLimiter` it does not track borrowers (a task may hold several
    tokens), and an uncontended :meth:`acquire` does not yield to the event loop (as
    :class:`asyncio.Semaphore`).

    :param total_tokens: the cap, an int >= 1.
    :raises InvalidValueError: for a cap below 1 or not an int.
    """

    __slots__ = ("_counter", "_waiters")

    def __init__(self, total_tokens: int) -> None:
        self._counter = ConcurrencyCounter(total_tokens)
        self._waiters: deque[_Waiter] = deque()

    @property
    def total_tokens(self) -> int:
        """The cap. Raising it admits waiters at once; lowering it lets holders finish."""
        return self._counter.cap

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._counter.cap = value
        self._wake()

    @property
    def borrowed_tokens(self) -> int:
        """Tokens held now."""
        return self._counter.in_use

    @property
    def available_tokens(self) -> int:
        """Tokens free now."""
        return self._counter.available

    def statistics(self) -> anyio.CapacityLimiterStatistics:
        """Tokens held, the cap and the number of waiters (``borrowers`` is not tracked: ``()``)."""
        return anyio.CapacityLimiterStatistics(
            borrowed_tokens=self._counter.in_use,
            total_tokens=self._counter.cap,
            borrowers=(),
            tasks_waiting=len(self._waiters),
        )

    def acquire_nowait(self) -> None:
        """Takes a token without waiting.

        :raises anyio.WouldBlock: if none is free or others are already waiting.
        """
        if self._waiters or not self._counter.try_acquire():
            raise anyio.WouldBlock

    async def acquire(self) -> None:
        """Takes a token, waiting in line for one if none is free."""
        if not self._waiters and self._counter.try_acquire():
            return
        waiter = _new_waiter()
        self._waiters.append(waiter)
        try:
            await (waiter if isinstance(waiter, asyncio.Future) else waiter.wait())
        except BaseException:
            if _granted(waiter):
                # The slot was handed to us as we were cancelled: pass it on.
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Returns a token; the first waiter, if any, gets it.

        :raises InvalidValueError: if no token is held.
        """
        waiters = self._waiters
        if self._counter.release(bool(waiters)):
            _grant(waiters.popleft())

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._counter.try_acquire():
            _grant(waiters.popleft())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class RateLimiter:
    """Admits at most ``rate`` acquisitions per second, in bursts of up to ``burst``.

    Exact: over any window of ``t`` seconds at most ``burst + rate * t`` acquisitions complete,
    and a caller waits no longer than its place in line requires.

    :param rate: tokens per second, a finite number > 0.
    :param burst: bucket size, an int >= 1 (tokens that may be used at once after a quiet spell).
    :raises InvalidValueError: for a rate <= 0, NaN or infinite, or a burst below 1.
    """

    __slots__ = ("_bucket",)

    def __init__(self, rate: float, burst: int = 1) -> None:
        self._bucket = TokenBucket(rate, burst)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._bucket.rate

    @property
    def burst(self) -> int:
        """Bucket size."""
        return self._bucket.burst

    def available_tokens(self) -> int:
        """Whole tokens available now."""
        return self._bucket.available(anyio.current_time())

    def try_acquire(self) -> bool:
        """Takes a token if one is available now, without waiting."""
        return self._bucket.try_acquire(anyio.current_time()) is None

    async def acquire(self) -> None:
        """Takes the next token, sleeping until it is due."""
        delay = self._bucket.reserve(anyio.current_time())
        if delay <= 0.0:
            return
        try:
            await anyio.sleep(delay)
        except BaseException:
            self._bucket.refund(anyio.current_time())
            raise

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
