"""The scheduling core's classes on integer ids, for services that embed it.

Names live with the caller; these classes take ``u32`` node, task and worker ids and lists of
them, in bulk, and never read a clock (time is passed in)::

    from taskiq_flow.core import DagGraph, DagScheduler, DagSorter, Placer

- :class:`DagGraph` — a DAG's analysis: topological order, levels, critical path, a cycle;
- :class:`DagSorter` — a sorter that hands out ready nodes as nodes complete;
- :class:`DagScheduler` — the state machine an orchestrator drives: ready **and** admitted nodes
  (caps, rate limits), failures, cancellation, why each node waits;
- :class:`Placer` — resource placement of tasks onto workers, online and as a batch plan.

The core's classes that speak a Python protocol stay at the top of the package:
:class:`~taskiq_flow.TopologicalSorter` (``graphlib``'s), :class:`~taskiq_flow.CapacityLimiter`
and :class:`~taskiq_flow.RateLimiter` (anyio's).
"""

from taskiq_flow._core import DagGraph, DagScheduler, DagSorter, Placer

__all__ = ["DagGraph", "DagScheduler", "DagSorter", "Placer"]
