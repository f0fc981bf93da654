"""A drop-in replacement for :class:`graphlib.TopologicalSorter`, run by the Rust core.

Swap ``from graphlib import TopologicalSorter`` for ``from taskiq_flow import TopologicalSorter``
and nothing else changes but speed: the same methods, the same order of ready nodes, the same
exceptions with the same messages (:class:`~taskiq_flow.exceptions.CycleError` is a
:class:`graphlib.CycleError` and reports the cycle graphlib reports; the others are
:class:`ValueError`, and an unhashable node is a :class:`TypeError`).

The whole class lives in the core (``taskiq_flow._core.TopologicalSorter``), including the map from
node objects to ids: exact ``int`` and ``str`` nodes are hashed and compared without calling back
into Python; any other hashable object is hashed and compared through Python, with the semantics of
a ``dict`` (``1``, ``1.0`` and ``True`` are one node).

Differences, each on a path where ``graphlib`` leaves things half-done:

- ``add`` and ``done`` are all or nothing: if one argument is bad (unhashable, unknown, not handed
  out, done twice), nothing of the call is applied (graphlib applies the arguments before it).
- ``static_order()`` runs the whole graph in the core on the first ``next()``; abandoning the
  iterator halfway leaves every node done (graphlib leaves the rest pending).
- A node comes out as the object it was first added as (graphlib sometimes hands out a later,
  equal object passed to ``add``); only identity can tell them apart.
- Instances cannot be pickled or copied.
"""

from __future__ import annotations

from taskiq_flow._core import TopologicalSorter

__all__ = ["TopologicalSorter"]
