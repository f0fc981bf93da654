"""Awaiting Redis so that a cancellation always ends the wait.

On Python 3.11, redis-py's read under ``asyncio.timeout`` can absorb a cancellation that lands as
its socket timeout fires, or report it as a connection error (measured here: an idle `taskiq
worker` then never stops on SIGINT or SIGTERM). Every loop that reads Redis until cancelled uses
these two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["cancellable", "reraise_cancellation"]


async def cancellable(read: Awaitable[Any]) -> Any:
    """Awaits a blocking read so that cancelling the caller always ends the wait at once.

    On Python 3.11, redis-py's read under ``asyncio.timeout`` can absorb a cancellation that
    lands as its socket timeout fires (measured here: an idle `taskiq worker` then never stops
    on SIGINT or SIGTERM, its listener reading on). The read runs as its own task, shielded, and
    is cancelled when the caller is.
    """
    task = asyncio.ensure_future(read)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        if task.cancelled() and _being_cancelled() is False:
            # The read was cut, not its caller: a failed read (retried), never a stop.
            raise RedisConnectionError("the read from Redis was cancelled") from None
        raise


def reraise_cancellation() -> None:
    """redis-py may report a read cancelled by the worker's shutdown as a connection error: a
    task being cancelled must stop, not retry."""
    if _being_cancelled():
        raise asyncio.CancelledError


def _being_cancelled() -> bool | None:
    """Whether the running task was asked to stop (``None`` before Python 3.11: unknown)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
    return None if cancelling is None else cancelling() > 0
