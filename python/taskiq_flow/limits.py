"""Async admission limiters on the Rust core: a concurrency cap and an exact rate limit.

:class:`CapacityLimiter` has the shape of :class:`anyio.CapacityLimiter` (``acquire``,
``acquire_nowait``, ``release``, ``total_tokens``, ``statistics()``, ``async with``); the count, the
line of waiters and the decision to hand a released slot to a waiter are the core's, the waiting is
anyio's.

Both limiters subclass a core class whose ``acquire`` and ``async with`` answer without creating a
coroutine when nothing has to wait (an uncontended pair costs less than an
:class:`asyncio.Semaphore`'s); only a caller that must wait runs the coroutines below.

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

import anyio

from taskiq_flow._core import CapacityGate, RateGate

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


class CapacityLimiter(CapacityGate):
    """Lets at most ``total_tokens`` holders in at once; the rest wait in FIFO order.

    Unlike :class:`anyio.CapacityLimiter` it does not track borrowers (a task may hold several
    tokens), and an uncontended :meth:`acquire` does not yield to the event loop (as
    :class:`asyncio.Semaphore`).

    The count, the line of waiters and the uncontended ``acquire`` / ``release`` / ``async with``
    are the core's (no coroutine is created when a token is free); only the wait in line runs here.

    :param total_tokens: the cap, an int >= 1.
    :raises InvalidValueError: for a cap below 1 or not an int.
    """

    __slots__ = ()

    # From the core: ``total_tokens`` (settable), ``borrowed_tokens``, ``available_tokens``,
    # ``tasks_waiting``, ``try_acquire()``, ``acquire()``, ``release()``, ``async with``.

    def statistics(self) -> anyio.CapacityLimiterStatistics:
        """Tokens held, the cap and the number of waiters (``borrowers`` is not tracked: ``()``)."""
        return anyio.CapacityLimiterStatistics(
            borrowed_tokens=self.borrowed_tokens,
            total_tokens=self.total_tokens,
            borrowers=(),
            tasks_waiting=self.tasks_waiting,
        )

    def acquire_nowait(self) -> None:
        """Takes a token without waiting.

        :raises anyio.WouldBlock: if none is free or others are already waiting.
        """
        if not self.try_acquire():
            raise anyio.WouldBlock

    async def _wait(self) -> None:
        """Waits in line for a token (the core calls this when none is free)."""
        # The coroutine may start after the call that made it (``asyncio.wait_for`` runs it in
        # a new task): a token freed in between must not be missed.
        if self.try_acquire():
            return
        waiter = _new_waiter()
        self._enqueue(waiter)
        try:
            await (waiter if isinstance(waiter, asyncio.Future) else waiter.wait())
        except BaseException:
            if not self._forget(waiter) and _granted(waiter):
                # The slot was handed to us as we were cancelled: pass it on.
                self.release()
            raise

    @staticmethod
    def _grant(waiter: _Waiter) -> None:
        """Wakes a waiter that was handed a token (the core calls this)."""
        _grant(waiter)


class RateLimiter(RateGate):
    """Admits at most ``rate`` acquisitions per second, in bursts of up to ``burst``.

    Exact: over any window of ``t`` seconds at most ``burst + rate * t`` acquisitions complete,
    and a caller waits no longer than its place in line requires.

    The bucket and the uncontended ``acquire`` / ``async with`` are the core's, read with the
    event loop's clock (the running asyncio loop's ``time()``, else :func:`anyio.current_time`);
    only the sleep until a reserved token is due runs here.

    :param rate: tokens per second, a finite number > 0.
    :param burst: bucket size, an int >= 1 (tokens that may be used at once after a quiet spell).
    :raises InvalidValueError: for a rate <= 0, NaN or infinite, or a burst below 1.
    """

    __slots__ = ()

    # From the core: ``rate``, ``burst``, ``available_tokens()``, ``try_acquire()``,
    # ``acquire()``, ``async with``.

    async def _sleep_until(self, due: float) -> None:
        """Sleeps until the token reserved for this caller is due (the core calls this, with the
        time by the limiter's clock); a cancelled sleeper gives its token back."""
        try:
            # Measured when the coroutine starts, which may be later than the reservation.
            await anyio.sleep(max(0.0, due - self._now()))
        except BaseException:
            self._refund()
            raise
