"""The global parallelism cap: one limit over every pipeline of the process.

::

    from taskiq_flow.optimization.parallel import set_max_parallel_tasks

    set_max_parallel_tasks(100)   # never more than 100 pipeline tasks in flight in this process
    set_max_parallel_tasks(None)  # no global cap (the default)

Every pipeline, dataflow and map takes a slot before it sends a task and gives it back when the task
completes or fails for good, so the cap holds across pipelines running at once. The count and the
hand-off are the Rust core's (:class:`taskiq_flow.CapacityLimiter`).
"""

from __future__ import annotations

from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.limits import CapacityLimiter

__all__ = ["get_max_parallel_tasks", "global_limiter", "set_max_parallel_tasks"]

#: The cap when none is set: the largest the core accepts.
UNLIMITED = 4_294_967_295

_LIMITER = CapacityLimiter(UNLIMITED)


def set_max_parallel_tasks(n: int | None) -> None:
    """Caps the pipeline tasks in flight across the whole process; ``None`` lifts the cap.

    Lowering the cap lets tasks already in flight finish; raising it admits waiting ones at once.

    :param n: an int >= 1, or ``None``.
    :raises InvalidValueError: for anything else.
    """
    if n is None:
        _LIMITER.total_tokens = UNLIMITED
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidValueError(f"max parallel tasks must be an int >= 1 or None, got {n!r}")
    _LIMITER.total_tokens = n


def get_max_parallel_tasks() -> int | None:
    """The global cap, or ``None`` when there is none."""
    cap = _LIMITER.total_tokens
    return None if cap == UNLIMITED else cap


def global_limiter() -> CapacityLimiter:
    """The limiter every pipeline takes its slots from."""
    return _LIMITER
