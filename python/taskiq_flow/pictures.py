"""Pictures of a DAG: Mermaid, Graphviz DOT, JSON, and a one-line description.

Every function takes a :class:`GraphView`: anything with ``nodes`` (each with a ``name`` and an
``output``) and the edge lists ``sources``/``targets`` (node indices, edge ``k`` runs from
``sources[k]`` to ``targets[k]``). :class:`taskiq_flow.dataflow.DAG` is one as it is;
:class:`SimpleGraph` builds one from plain names and edges. Levels and the critical path come from
the scheduling core (:class:`~taskiq_flow.DagGraph`), on node indices, so nodes that share a name
are never confused.

::

    print(to_mermaid(pipeline.dag))          # paste into a Markdown file
    Path("dag.dot").write_text(to_dot(pipeline.dag))   # dot -Tsvg dag.dot > dag.svg
    json.dumps(to_json(pipeline.dag))
    describe(pipeline.dag)
    # '<DAG 4 tasks, 4 edges, 3 levels, critical path: clean -> total -> report>'

Names are user input: Mermaid and DOT output escape them so that no name can end a label or inject
syntax. Big graphs collapse: ``collapse=True`` draws all nodes of one name as a single node with a
count (``collapse=key`` groups by any key), so a map over 10^5 items is a picture of a few nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from taskiq_flow._core import DagGraph

__all__ = [
    "JSON_SCHEMA_VERSION",
    "TIMES",
    "CollapseKey",
    "GraphView",
    "Layout",
    "NodeView",
    "SimpleGraph",
    "SimpleNode",
    "describe",
    "layout",
    "to_dot",
    "to_json",
    "to_mermaid",
]

#: The ``schema`` field of :func:`to_json` output; bumped on any incompatible change.
JSON_SCHEMA_VERSION = "taskiq-flow.dag/1"


class NodeView(Protocol):
    """A node of a :class:`GraphView` (e.g. a :class:`~taskiq_flow.TaskNode`)."""

    @property
    def name(self) -> str:
        """The node's name (the task's name; not necessarily unique)."""
        ...

    @property
    def output(self) -> str:
        """The name of what the node produces."""
        ...


class GraphView(Protocol):
    """What the picture functions need from a graph; :class:`~taskiq_flow.dataflow.DAG` has it."""

    @property
    def nodes(self) -> Sequence[NodeView]:
        """The nodes, by index."""
        ...

    @property
    def sources(self) -> Sequence[int]:
        """Edge ``k`` starts at node ``sources[k]``."""
        ...

    @property
    def targets(self) -> Sequence[int]:
        """Edge ``k`` ends at node ``targets[k]``."""
        ...


#: Groups nodes for collapsing: ``True`` groups by name; a callable maps a node to its group key.
CollapseKey = bool | Callable[[NodeView], str]


@dataclass(frozen=True, slots=True)
class SimpleNode:
    """A plain :class:`NodeView`."""

    name: str
    output: str = ""


@dataclass(slots=True)
class SimpleGraph:
    """A plain :class:`GraphView`: for graphs that are not a :class:`~taskiq_flow.dataflow.DAG`
    (e.g. the steps of a sequential pipeline, or a graph read back from JSON)."""

    nodes: list[SimpleNode] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    @classmethod
    def from_edges(cls, names: Sequence[str], edges: Sequence[tuple[int, int]]) -> SimpleGraph:
        """A graph of nodes named ``names`` (outputs the same) and ``(source, target)`` edges."""
        return cls([SimpleNode(n, n) for n in names], [s for s, _ in edges], [t for _, t in edges])

    @classmethod
    def chain(cls, names: Sequence[str]) -> SimpleGraph:
        """Nodes that run one after another (e.g. the steps of a sequential pipeline)."""
        return cls.from_edges(names, [(i, i + 1) for i in range(len(names) - 1)])


@dataclass(slots=True)
class Layout:
    """A graph ready to draw: nodes (possibly collapsed groups) with levels and the critical path.

    ``names[i]``, ``outputs[i]``, ``counts[i]`` (how many graph nodes node ``i`` stands for),
    ``levels[i]`` (its level: the longest chain of dependencies before it; for a group, the lowest
    of its members), edges as ``(source, target, count)`` without repeats or self-loops,
    ``critical`` (node indices along the critical path), ``members[i]`` (the graph node indices
    of node ``i``), and ``path`` (the critical path in graph node indices),
    ``edge_total``/``node_total``/``level_count`` of the graph itself.
    """

    names: list[str]
    outputs: list[str]
    counts: list[int]
    levels: list[int]
    edges: list[tuple[int, int, int]]
    critical: list[int]
    members: list[list[int]]
    node_total: int
    edge_total: int
    level_count: int
    collapsed: bool
    path: list[int]

    def by_level(self) -> list[list[int]]:
        """Node indices per level."""
        out: list[list[int]] = [[] for _ in range(max(self.levels, default=-1) + 1)]
        for i, level in enumerate(self.levels):
            out[level].append(i)
        return out


def _analysis(dag: GraphView) -> DagGraph:
    graph = getattr(dag, "graph", None)
    count = len(dag.nodes)
    if (
        isinstance(graph, DagGraph)
        and graph.node_count == count
        and graph.edge_count == len(dag.sources)
    ):
        return graph
    return DagGraph(count, list(dag.sources), list(dag.targets))


def layout(
    dag: GraphView, collapse: CollapseKey = False, weights: Sequence[int] | None = None
) -> Layout:
    """Levels, critical path and (optionally collapsed) nodes and edges of ``dag``.

    :param collapse: ``True`` merges nodes of the same name into one node with a count; a callable
        merges nodes with the same key (and names the group by that key).
    :param weights: each node's weight for the critical path (e.g. its microseconds), by index;
        1 each by default.
    :raises CycleError: if the graph has a cycle.
    :raises ValueError: if ``weights`` does not have one weight per node.
    """
    nodes = dag.nodes
    graph = _analysis(dag)
    levels = graph.levels()
    if weights is not None and len(weights) != len(nodes):
        raise ValueError(f"weights has {len(weights)} values for {len(nodes)} nodes")
    _, path = graph.critical_path(list(weights) if weights is not None else None)
    sources, targets = dag.sources, dag.targets
    level_count = max(levels, default=-1) + 1
    if collapse is False:
        seen: set[tuple[int, int]] = set()
        edges: list[tuple[int, int, int]] = []
        for s, t in zip(sources, targets):
            if (s, t) not in seen:
                seen.add((s, t))
                edges.append((s, t, 1))
        return Layout(
            [n.name for n in nodes],
            [n.output for n in nodes],
            [1] * len(nodes),
            list(levels),
            edges,
            list(path),
            [[i] for i in range(len(nodes))],
            len(nodes),
            len(sources),
            level_count,
            False,
            list(path),
        )
    key: Callable[[NodeView], str] = (lambda n: n.name) if collapse is True else collapse
    group_of: list[int] = []
    index: dict[str, int] = {}
    names: list[str] = []
    outputs: list[str] = []
    members: list[list[int]] = []
    group_levels: list[int] = []
    for i, node in enumerate(nodes):
        k = key(node)
        g = index.get(k)
        if g is None:
            g = index[k] = len(names)
            names.append(k)
            outputs.append(node.output)
            members.append([])
            group_levels.append(levels[i])
        group_of.append(g)
        members[g].append(i)
        if levels[i] < group_levels[g]:
            group_levels[g] = levels[i]
    for g, m in enumerate(members):
        if len(m) > 1:
            outputs[g] = f"{len(m)} outputs"
    edge_counts: dict[tuple[int, int], int] = {}
    for s, t in zip(sources, targets):
        pair = (group_of[s], group_of[t])
        if pair[0] != pair[1]:
            edge_counts[pair] = edge_counts.get(pair, 0) + 1
    critical: list[int] = []
    for v in path:
        if not critical or critical[-1] != group_of[v]:
            critical.append(group_of[v])
    return Layout(
        names,
        outputs,
        [len(m) for m in members],
        group_levels,
        [(s, t, c) for (s, t), c in edge_counts.items()],
        critical,
        members,
        len(nodes),
        len(sources),
        level_count,
        True,
        list(path),
    )


#: Between a collapsed group's name and its count (a multiplication sign).
TIMES = "\N{MULTIPLICATION SIGN}"


def _label(name: str, count: int) -> str:
    return name if count == 1 else f"{name} {TIMES}{count}"


def _mermaid_text(text: str) -> str:
    """Text safe inside a Mermaid ``["..."]`` label: letters, digits and a few plain characters
    stay; everything else becomes an entity code (``#35;``), so no name can close the label,
    start a comment or inject markup."""
    out = []
    for ch in text:
        if ch.isalnum() or ch in " _.,-+=/:()":
            out.append(ch)
        else:
            out.append(f"#{ord(ch)};")
    return "".join(out)


def to_mermaid(dag: GraphView, collapse: CollapseKey = False, direction: str = "LR") -> str:
    """The graph as a Mermaid flowchart; the critical path is drawn bold and red.

    Nodes are ``n0``, ``n1``, ... (by index) labelled with their (escaped) names; a collapsed group
    is labelled with its name and count (see :data:`TIMES`).

    :param collapse: see :func:`layout`.
    :param direction: ``LR`` (default), ``TB``, ``RL`` or ``BT``.
    :raises ValueError: for another direction.
    """
    if direction not in ("LR", "TB", "RL", "BT", "TD"):
        raise ValueError(f"direction must be LR, TB, RL or BT, got {direction!r}")
    lay = layout(dag, collapse)
    lines = [f"flowchart {direction}"]
    for i, (name, count) in enumerate(zip(lay.names, lay.counts)):
        lines.append(f'    n{i}["{_mermaid_text(_label(name, count))}"]')
    on_path = set(zip(lay.critical, lay.critical[1:]))
    critical_edges = []
    for k, (s, t, count) in enumerate(lay.edges):
        arrow = "-->" if count == 1 else f"-- {count} -->"
        lines.append(f"    n{s} {arrow} n{t}")
        if (s, t) in on_path:
            critical_edges.append(str(k))
    if lay.critical:
        lines.append("    classDef critical stroke:#c62828,stroke-width:3px")
        lines.append(f"    class {','.join(f'n{v}' for v in lay.critical)} critical")
    if critical_edges:
        lines.append(f"    linkStyle {','.join(critical_edges)} stroke:#c62828,stroke-width:3px")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    """Text safe inside a DOT double-quoted string: backslashes and quotes escaped, line breaks
    as ``\\n``, other control characters dropped."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            continue
        else:
            out.append(ch)
    return "".join(out)


def to_dot(dag: GraphView, collapse: CollapseKey = False, name: str = "dag") -> str:
    """The graph as Graphviz DOT (``dot -Tsvg``); the critical path is drawn bold and red.

    Node ids are ``n0``, ``n1``, ... (by index); labels are escaped names (name and count for a
    collapsed group, whose edges carry the number of edges they stand for).

    :param collapse: see :func:`layout`.
    :param name: the graph's name (escaped).
    """
    lay = layout(dag, collapse)
    critical = set(lay.critical)
    on_path = set(zip(lay.critical, lay.critical[1:]))
    lines = [
        f'digraph "{_dot_text(name)}" {{',
        "  rankdir=LR;",
        '  node [shape=box, style="rounded"];',
    ]
    for i, (label, count) in enumerate(zip(lay.names, lay.counts)):
        extra = ', color="#c62828", penwidth=2' if i in critical else ""
        lines.append(f'  n{i} [label="{_dot_text(_label(label, count))}"{extra}];')
    for s, t, count in lay.edges:
        attrs = []
        if count > 1:
            attrs.append(f'label="{count}"')
        if (s, t) in on_path:
            attrs.append('color="#c62828", penwidth=2')
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  n{s} -> n{t}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(dag: GraphView, collapse: CollapseKey = False) -> dict[str, Any]:
    """The graph as JSON-serializable data.

    Schema (``schema`` is :data:`JSON_SCHEMA_VERSION`)::

        {
          "schema": "taskiq-flow.dag/1",
          "collapsed": false,           # true if nodes were grouped (see `count`)
          "node_count": 4,              # nodes of the graph itself (before collapsing)
          "edge_count": 4,              # edges of the graph itself (before collapsing)
          "nodes": [                    # by id (= index)
            {"id": 0, "name": "clean", "output": "clean", "level": 0, "count": 1,
             "critical": true}
          ],
          "edges": [{"source": 0, "target": 1, "count": 1}],   # ids; count > 1 when collapsed
          "levels": [[0], [1, 2], [3]],  # node ids per level; a level's nodes can run at once
          "critical_path": [0, 1, 3],    # node ids along the heaviest chain (weight 1 per node)
          "external_inputs": ["raw"]     # inputs no node produces (if the graph knows them)
        }

    :param collapse: see :func:`layout`.
    """
    lay = layout(dag, collapse)
    critical = set(lay.critical)
    external = getattr(dag, "external_inputs", None)
    return {
        "schema": JSON_SCHEMA_VERSION,
        "collapsed": lay.collapsed,
        "node_count": lay.node_total,
        "edge_count": lay.edge_total,
        "nodes": [
            {
                "id": i,
                "name": lay.names[i],
                "output": lay.outputs[i],
                "level": lay.levels[i],
                "count": lay.counts[i],
                "critical": i in critical,
            }
            for i in range(len(lay.names))
        ],
        "edges": [{"source": s, "target": t, "count": c} for s, t, c in lay.edges],
        "levels": lay.by_level(),
        "critical_path": list(lay.critical),
        "external_inputs": sorted(str(x) for x in external) if external is not None else [],
    }


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe(dag: GraphView, max_path: int = 6, kind: str = "DAG") -> str:
    """A one-line summary for ``repr``:
    ``<DAG 12 tasks, 15 edges, 4 levels, critical path: a -> b -> c>``.

    A critical path longer than ``max_path`` nodes shows its first and last few nodes around
    ``… (N more) …``; names longer than 24 characters are cut with ``…``. Names appear as
    given (this is for a terminal, not for markup).
    """
    nodes = dag.nodes
    if not nodes:
        return f"<{kind} 0 tasks>"
    graph = _analysis(dag)
    _, path = graph.critical_path(None)
    level_count = max(graph.levels(), default=-1) + 1
    names = [_short(nodes[i].name) for i in path]
    if len(names) > max_path:
        head = max(1, (max_path + 1) // 2)
        tail = max(1, max_path - head)
        hidden = len(names) - head - tail
        names = [*names[:head], f"… ({hidden} more) …", *names[-tail:]]
    return (
        f"<{kind} {_plural(len(nodes), 'task')}, {_plural(len(dag.sources), 'edge')}, "
        f"{_plural(level_count, 'level')}, critical path: {' -> '.join(names)}>"
    )


if TYPE_CHECKING:
    from taskiq_flow.dataflow import DAG

    def _a_dag_is_a_graph_view(dag: DAG) -> GraphView:
        """Checked by mypy: :class:`DAG` satisfies :class:`GraphView` as it is."""
        return dag
