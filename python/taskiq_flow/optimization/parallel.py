"""The global parallelism cap: one limit over every pipeline of the process — or of many.

::

    from taskiq_flow.optimization.parallel import set_max_parallel_tasks

    set_max_parallel_tasks(100)   # never more than 100 pipeline tasks in flight in this process
    set_max_parallel_tasks(None)  # no global cap (the default)

    # One cap shared by every orchestrator process that names the same Redis and limit:
    set_max_parallel_tasks(100, redis=Redis.from_url(url), name="etl")

Every pipeline, dataflow and map takes a slot before it sends a task and gives it back when the task
completes or fails for good. In one process the count and the hand-off are the Rust core's
(:class:`taskiq_flow.CapacityLimiter`); across processes the count lives in Redis
(:class:`taskiq_flow.distributed.RedisCapacityLimiter`: an atomic script, and leases that expire
when their holder dies).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.limits import CapacityLimiter

__all__ = [
    "SlotLimiter",
    "get_max_parallel_tasks",
    "global_limiter",
    "set_max_parallel_tasks",
]

#: The cap when none is set: the largest the core accepts.
UNLIMITED = 4_294_967_295


class SlotLimiter(Protocol):
    """What pipelines need of the global limiter."""

    @property
    def total_tokens(self) -> int: ...

    @property
    def borrowed_tokens(self) -> int: ...

    def acquire(self) -> Awaitable[None]: ...

    def acquire_nowait(self) -> None: ...

    def release(self) -> None: ...


_LOCAL = CapacityLimiter(UNLIMITED)
_ACTIVE: SlotLimiter = _LOCAL


def set_max_parallel_tasks(
    n: int | None,
    *,
    redis: Any = None,
    name: str = "global",
    lease_seconds: float = 30.0,
) -> None:
    """Caps the pipeline tasks in flight; ``None`` lifts the cap.

    Without ``redis`` the cap covers this process: lowering it lets tasks already in flight
    finish; raising it admits waiting ones at once. With a ``redis.asyncio.Redis`` client, the cap
    is shared by every process that sets one with the same ``name`` on the same Redis; a process
    that dies holding slots loses them after ``lease_seconds``.

    :param n: an int >= 1, or ``None``.
    :raises InvalidValueError: for anything else.
    """
    global _ACTIVE
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidValueError(f"max parallel tasks must be an int >= 1 or None, got {n!r}")
    if redis is not None:
        if n is None:
            raise InvalidValueError("a shared cap through Redis needs a number of tasks")
        from taskiq_flow.distributed import RedisCapacityLimiter

        _ACTIVE = RedisCapacityLimiter(redis, name, n, lease_seconds=lease_seconds)
        return
    _ACTIVE = _LOCAL
    _LOCAL.total_tokens = UNLIMITED if n is None else n


def get_max_parallel_tasks() -> int | None:
    """The global cap, or ``None`` when there is none."""
    cap = _ACTIVE.total_tokens
    return None if cap == UNLIMITED else cap


def global_limiter() -> SlotLimiter:
    """The limiter pipelines take their slots from (each run keeps the one active at its start)."""
    return _ACTIVE
