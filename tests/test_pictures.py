"""DAG pictures: exact Mermaid, DOT and JSON; hostile names; big graphs collapsed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow import DAG, CycleError, DataflowPipeline, TaskNode, pipeline_task
from taskiq_flow.pictures import (
    JSON_SCHEMA_VERSION,
    SimpleGraph,
    describe,
    layout,
    to_dot,
    to_json,
    to_mermaid,
)

broker = InMemoryBroker()


@broker.task
@pipeline_task(output="clean")
async def clean(raw: list[int]) -> list[int]:
    return sorted(raw)


@broker.task
@pipeline_task(output="total")
async def total(clean: list[int]) -> int:
    return sum(clean)


@broker.task
@pipeline_task(output="count")
async def count(clean: list[int]) -> int:
    return len(clean)


@broker.task
@pipeline_task(output="report")
async def report(total: int, count: int) -> str:
    return f"{total}/{count}"


def etl() -> DAG:
    """raw -> clean -> (total, count) -> report."""
    return DataflowPipeline.from_tasks(broker, [clean, total, count, report]).dag


def test_mermaid_of_a_small_dag_is_exact() -> None:
    assert to_mermaid(etl()) == (
        "flowchart LR\n"
        '    n0["clean"]\n'
        '    n1["total"]\n'
        '    n2["count"]\n'
        '    n3["report"]\n'
        "    n0 --> n1\n"
        "    n0 --> n2\n"
        "    n1 --> n3\n"
        "    n2 --> n3\n"
        "    classDef critical stroke:#c62828,stroke-width:3px\n"
        "    class n0,n1,n3 critical\n"
        "    linkStyle 0,2 stroke:#c62828,stroke-width:3px\n"
    )
    assert to_mermaid(etl(), direction="TB").startswith("flowchart TB\n")
    with pytest.raises(ValueError, match="direction"):
        to_mermaid(etl(), direction="LR; click")


def test_dot_of_a_small_dag_is_exact() -> None:
    red = 'color="#c62828", penwidth=2'
    assert to_dot(etl()) == (
        'digraph "dag" {\n'
        "  rankdir=LR;\n"
        '  node [shape=box, style="rounded"];\n'
        f'  n0 [label="clean", {red}];\n'
        f'  n1 [label="total", {red}];\n'
        '  n2 [label="count"];\n'
        f'  n3 [label="report", {red}];\n'
        f"  n0 -> n1 [{red}];\n"
        "  n0 -> n2;\n"
        f"  n1 -> n3 [{red}];\n"
        "  n2 -> n3;\n"
        "}\n"
    )


def test_json_of_a_small_dag_is_exact_and_serializable() -> None:
    data = to_json(etl())
    assert json.loads(json.dumps(data)) == data
    node = {"output": "", "count": 1}
    assert data == {
        "schema": JSON_SCHEMA_VERSION,
        "collapsed": False,
        "node_count": 4,
        "edge_count": 4,
        "nodes": [
            {**node, "id": 0, "name": "clean", "output": "clean", "level": 0, "critical": True},
            {**node, "id": 1, "name": "total", "output": "total", "level": 1, "critical": True},
            {**node, "id": 2, "name": "count", "output": "count", "level": 1, "critical": False},
            {**node, "id": 3, "name": "report", "output": "report", "level": 2, "critical": True},
        ],
        "edges": [
            {"source": 0, "target": 1, "count": 1},
            {"source": 0, "target": 2, "count": 1},
            {"source": 1, "target": 3, "count": 1},
            {"source": 2, "target": 3, "count": 1},
        ],
        "levels": [[0], [1, 2], [3]],
        "critical_path": [0, 1, 3],
        "external_inputs": ["raw"],
    }


def test_describe_is_one_readable_line() -> None:
    assert describe(etl()) == (
        "<DAG 4 tasks, 4 edges, 3 levels, critical path: clean -> total -> report>"
    )
    assert describe(SimpleGraph()) == "<DAG 0 tasks>"
    assert describe(SimpleGraph.from_edges(["only"], [])) == (
        "<DAG 1 task, 0 edges, 1 level, critical path: only>"
    )
    chain = SimpleGraph.chain([f"s{i}" for i in range(20)])
    assert describe(chain) == (
        "<DAG 20 tasks, 19 edges, 20 levels, critical path: "
        "s0 -> s1 -> s2 -> … (14 more) … -> s17 -> s18 -> s19>"
    )
    long = SimpleGraph.from_edges(["x" * 40], [])
    assert describe(long).endswith(f"critical path: {'x' * 23}…>")


def test_nodes_that_share_a_name_are_told_apart_by_index() -> None:
    graph = SimpleGraph.from_edges(["same", "same", "other"], [(1, 0), (0, 2)])
    data = to_json(graph)
    assert [n["level"] for n in data["nodes"]] == [1, 0, 2]
    assert data["critical_path"] == [1, 0, 2]
    collapsed = to_json(graph, collapse=True)
    assert [(n["name"], n["count"]) for n in collapsed["nodes"]] == [("same", 2), ("other", 1)]
    # The edge inside the group is dropped; the one out of it stays.
    assert collapsed["edges"] == [{"source": 0, "target": 1, "count": 1}]


def test_a_cycle_is_refused() -> None:
    with pytest.raises(CycleError):
        to_mermaid(SimpleGraph.from_edges(["a", "b"], [(0, 1), (1, 0)]))


HOSTILE = [
    'a"]; click n0 call alert(1) %%',
    "x --> y",
    "back\\slash\\",
    'quote" -> n9 [label="pwn',
    "line\nbreak",
    "<script>alert('x')</script>",
    "Ünïcødé 名前 🚀",
    "#quot; #35; &amp;",
    "}}{{ [[ ]] ( ) | ;",
    "`md` **bold** %% comment",
    "ctl\x00\x07chars",
]


def _mermaid_unescape(label: str) -> str:
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), label)


def test_hostile_names_cannot_break_mermaid() -> None:
    graph = SimpleGraph.from_edges(HOSTILE, [(i, i + 1) for i in range(len(HOSTILE) - 1)])
    text = to_mermaid(graph)
    lines = text.splitlines()
    labels = lines[1 : 1 + len(HOSTILE)]
    assert len(lines) == 1 + len(HOSTILE) + (len(HOSTILE) - 1) + 3
    safe_label = re.compile(r'^    n(\d+)\["([^"\[\]{}<>`|%\n]*)"\]$')
    for i, line in enumerate(labels):
        match = safe_label.match(line)
        assert match, line
        assert int(match.group(1)) == i
        assert _mermaid_unescape(match.group(2)) == HOSTILE[i]
    for line in lines[1 + len(HOSTILE) :]:
        assert re.match(
            r"^    (n\d+ --> n\d+|classDef .*|class [n0-9,]+ critical|linkStyle .*)$", line
        )


_DOT_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def _dot_unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted[1:-1])


def test_hostile_names_cannot_break_dot() -> None:
    edges = [(i, i + 1) for i in range(len(HOSTILE) - 1)]
    hostile = to_dot(SimpleGraph.from_edges(HOSTILE, edges), name='g" { evil')
    plain = to_dot(SimpleGraph.from_edges([f"p{i}" for i in range(len(HOSTILE))], edges))
    # With every quoted string blanked, a hostile graph has the same syntax as a plain one.
    assert _DOT_STRING.sub('""', hostile) == _DOT_STRING.sub('""', plain)
    labels = re.findall(r'label=("(?:[^"\\\n]|\\.)*")', hostile)
    expected = [h.replace("\x00", "").replace("\x07", "") for h in HOSTILE]
    assert [_dot_unescape(q) for q in labels] == expected
    assert hostile.startswith('digraph "g\\" { evil" {\n')


def _fan(width: int) -> DAG:
    """split -> width x work -> join, as real TaskNodes."""
    nodes = [TaskNode("split", clean, "parts", ("raw",))]
    nodes += [TaskNode("work", total, f"w{i}", ("parts",)) for i in range(width)]
    nodes.append(TaskNode("join", report, "joined", tuple(f"w{i}" for i in range(width))))
    return DAG(nodes)


def test_a_hundred_thousand_node_graph_collapses_to_a_small_picture() -> None:
    dag = _fan(100_000 - 2)
    assert len(dag) == 100_000
    mermaid = to_mermaid(dag, collapse=True)
    assert mermaid == (
        "flowchart LR\n"
        '    n0["split"]\n'
        '    n1["work #215;99998"]\n'
        '    n2["join"]\n'
        "    n0 -- 99998 --> n1\n"
        "    n1 -- 99998 --> n2\n"
        "    classDef critical stroke:#c62828,stroke-width:3px\n"
        "    class n0,n1,n2 critical\n"
        "    linkStyle 0,1 stroke:#c62828,stroke-width:3px\n"
    )
    dot = to_dot(dag, collapse=True)
    assert len(dot) < 600 and 'label="work \u00d799998"' in dot and 'label="99998"' in dot
    data = to_json(dag, collapse=True)
    assert (data["node_count"], data["edge_count"], data["collapsed"]) == (100_000, 199_996, True)
    assert [(n["name"], n["count"], n["level"]) for n in data["nodes"]] == [
        ("split", 1, 0),
        ("work", 99_998, 1),
        ("join", 1, 2),
    ]
    assert len(json.dumps(data)) < 1000
    assert describe(dag) == (
        "<DAG 100000 tasks, 199996 edges, 3 levels, critical path: split -> work -> join>"
    )


def test_collapse_by_any_key() -> None:
    dag = _fan(10)

    def key(node: Any) -> str:
        return "edge" if node.name in ("split", "join") else f"bucket{int(node.output[1:]) % 2}"

    lay = layout(dag, collapse=key)
    assert lay.names == ["edge", "bucket0", "bucket1"]
    assert lay.counts == [2, 5, 5]
    assert sorted(lay.edges) == [(0, 1, 5), (0, 2, 5), (1, 0, 5), (2, 0, 5)]
    with pytest.raises(ValueError, match="weights has 1 values for 12 nodes"):
        layout(dag, weights=[1])
