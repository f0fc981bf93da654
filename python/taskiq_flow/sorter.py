"""A drop-in replacement for :class:`graphlib.TopologicalSorter`, run by the Rust core.

Swap ``from graphlib import TopologicalSorter`` for ``from taskiq_flow import TopologicalSorter``
and nothing else changes but speed: the same methods, the same order of ready nodes, the same
exceptions with the same messages (:class:`~taskiq_flow.exceptions.CycleError` is a
:class:`graphlib.CycleError`; the others are :class:`ValueError`).

Two deliberate differences, both on paths where ``graphlib`` leaves things half-done:

- ``done(a, b, c)`` is all or nothing: if ``c`` is invalid, ``a`` and ``b`` stay not done (graphlib
  marks ``a`` and ``b`` done before raising).
- ``static_order()`` runs the whole graph in the core on the first ``next()``; abandoning the
  iterator halfway leaves every node done (graphlib leaves the rest pending).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Generic, NoReturn, TypeVar

from taskiq_flow._core import DagSorter
from taskiq_flow.exceptions import CycleError, StateError, UnknownIdError

__all__ = ["TopologicalSorter"]

T = TypeVar("T", bound=Hashable)


class TopologicalSorter(Generic[T]):
    """Topologically sorts a graph of hashable nodes (the :mod:`graphlib` protocol).

    :param graph: optional mapping of each node to an iterable of its predecessors.
    """

    __slots__ = ("_core", "_dst", "_ids", "_nodes", "_src")

    def __init__(self, graph: Mapping[T, Iterable[T]] | None = None) -> None:
        self._ids: dict[T, int] = {}
        self._nodes: list[T] = []
        self._src: list[int] = []
        self._dst: list[int] = []
        self._core: DagSorter | None = None
        if graph is not None:
            for node, predecessors in graph.items():
                self.add(node, *predecessors)

    def add(self, node: T, *predecessors: T) -> None:
        """Adds ``node`` and edges from each of ``predecessors`` to it.

        Calling it again for the same node adds to its predecessors; a predecessor seen for the
        first time becomes a node without predecessors of its own.

        :raises ValueError: after :meth:`prepare`.
        """
        if self._core is not None:
            raise StateError("Nodes cannot be added after a call to prepare()")
        ids = self._ids
        nodes = self._nodes
        target = ids.get(node)
        if target is None:
            target = ids[node] = len(nodes)
            nodes.append(node)
        for pred in predecessors:
            source = ids.get(pred)
            if source is None:
                source = ids[pred] = len(nodes)
                nodes.append(pred)
            self._src.append(source)
            self._dst.append(target)

    def _freeze(self) -> DagSorter:
        if self._core is not None:
            raise StateError("cannot prepare() more than once")
        core = DagSorter(len(self._nodes))
        core.add_edges(self._src, self._dst)
        self._src = []
        self._dst = []
        self._core = core
        return core

    def _cycle(self, err: CycleError) -> NoReturn:
        nodes = self._nodes
        raise CycleError("nodes are in a cycle", [nodes[i] for i in err.args[1]]) from None

    def prepare(self) -> None:
        """Freezes the graph and checks it for cycles.

        On a cycle :class:`CycleError` is raised, but :meth:`get_ready` still hands out every node
        the cycle does not block.

        :raises CycleError: the graph has a cycle (``args[1]`` lists it).
        :raises ValueError: when called twice.
        """
        core = self._freeze()
        try:
            core.prepare()
        except CycleError as err:
            self._cycle(err)

    def _prepared(self) -> DagSorter:
        core = self._core
        if core is None:
            raise StateError("prepare() must be called first")
        return core

    def get_ready(self) -> tuple[T, ...]:
        """Returns every node that became ready since the last call, and marks them as out.

        :raises ValueError: before :meth:`prepare`.
        """
        nodes = self._nodes
        return tuple([nodes[i] for i in self._prepared().get_ready()])

    def is_active(self) -> bool:
        """Whether progress can still be made: nodes are ready or out and not done.

        :raises ValueError: before :meth:`prepare`.
        """
        return self._prepared().is_active()

    def __bool__(self) -> bool:
        return self.is_active()

    def done(self, *nodes: T) -> None:
        """Marks nodes handed out by :meth:`get_ready` as processed, releasing their successors.

        All or nothing: if any node is invalid, none is marked.

        :raises ValueError: before :meth:`prepare`, for a node never added, a node not handed out
            yet, or a node already done.
        """
        core = self._prepared()
        ids = self._ids
        try:
            batch = [ids[node] for node in nodes]
        except KeyError:
            missing = next(node for node in nodes if node not in ids)
            raise UnknownIdError(f"node {missing!r} was not added using add()") from None
        try:
            core.done_many(batch)
        except StateError as err:
            node_id = err.args[1]
            message = str(err.args[0]).replace(
                f"node {node_id} ", f"node {self._nodes[node_id]!r} ", 1
            )
            raise StateError(message) from None

    def static_order(self) -> Iterator[T]:
        """Prepares the graph and yields every node in a topological order.

        :raises CycleError: on the first ``next()``, if the graph has a cycle.
        :raises ValueError: on the first ``next()``, if :meth:`prepare` was called already.
        """
        core = self._freeze()
        try:
            order = core.static_order()
        except CycleError as err:
            self._cycle(err)
        yield from map(self._nodes.__getitem__, order)
