"""Async admission limiters on the Rust core: a concurrency cap and an exact rate limit.

:class:`CapacityLimiter` has the shape of :class:`anyio.CapacityLimiter` (``acquire``,
``acquire_nowait``, ``release``, ``total_tokens``, ``statistics()``, ``async with``); the count, the
line of waiters and the decision to hand a released slot to a waiter are the core's, the waiting is
anyio's.

Both classes live in the core (``taskiq_flow._core``): their ``acquire`` and ``async with`` answer
without creating a coroutine when nothing has to wait (an uncontended pair costs less than an
:class:`asyncio.Semaphore`'s); only a caller that must wait runs the coroutines below, which the
core calls.

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

import anyio

from taskiq_flow._core import CapacityLimiter, RateLimiter

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
    """Wakes a waiter that was handed a token (the core calls this)."""
    if isinstance(waiter, asyncio.Future):
        waiter.set_result(None)
    else:
        waiter.set()


def _granted(waiter: _Waiter) -> bool:
    if isinstance(waiter, asyncio.Future):
        return waiter.done() and not waiter.cancelled()
    return waiter.is_set()


async def _wait_in_line(limiter: CapacityLimiter) -> None:
    """Waits in line for a token of ``limiter`` (its ``acquire`` returns this when none is free).

    Cancellation-safe: a waiter cancelled before it is served leaves the line; one cancelled as
    the token was handed to it passes the token on; the cancellation is re-raised.
    """
    # The coroutine may start after the call that made it (``asyncio.wait_for`` runs it in a new
    # task): a token freed in between must not be missed.
    if limiter.try_acquire():
        return
    waiter = _new_waiter()
    limiter._enqueue(waiter)
    try:
        await (waiter if isinstance(waiter, asyncio.Future) else waiter.wait())
    except BaseException:
        if not limiter._forget(waiter) and _granted(waiter):
            # The slot was handed to us as we were cancelled: pass it on.
            limiter.release()
        raise


async def _sleep_until(limiter: RateLimiter, due: float) -> None:
    """Sleeps until the token reserved for this caller is due (``due`` by the limiter's clock;
    ``acquire`` returns this when the token is not there yet). A cancelled sleeper gives its
    token back."""
    try:
        # Measured when the coroutine starts, which may be later than the reservation.
        await anyio.sleep(max(0.0, due - limiter._now()))
    except BaseException:
        limiter._refund()
        raise
