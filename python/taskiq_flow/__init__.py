"""taskiq-flow: pipeline and DAG orchestration for taskiq, on a Rust scheduling core.

The public names are re-exported here; ``taskiq_flow._core`` (the compiled core) is private.

- :class:`TopologicalSorter` — a drop-in :class:`graphlib.TopologicalSorter`.
- :class:`DagGraph`, :class:`DagSorter`, :class:`DagScheduler` — the core's DAG analysis and state
  machines on integer node ids, for services that embed the scheduler directly.
- :class:`CapacityLimiter`, :class:`RateLimiter` — async admission limiters.
- :class:`Placer` — resource placement of tasks onto workers.
"""

from taskiq_flow._core import DagGraph, DagScheduler, DagSorter, Placer
from taskiq_flow.exceptions import (
    CycleError,
    InternalError,
    InvalidValueError,
    StateError,
    TaskiqFlowError,
    UnknownIdError,
    UnschedulableError,
)
from taskiq_flow.limits import CapacityLimiter, RateLimiter
from taskiq_flow.sorter import TopologicalSorter

__all__ = [
    "CapacityLimiter",
    "CycleError",
    "DagGraph",
    "DagScheduler",
    "DagSorter",
    "InternalError",
    "InvalidValueError",
    "Placer",
    "RateLimiter",
    "StateError",
    "TaskiqFlowError",
    "TopologicalSorter",
    "UnknownIdError",
    "UnschedulableError",
]

__version__ = "0.1.0"
