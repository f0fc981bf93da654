"""taskiq_flow.TopologicalSorter against graphlib.TopologicalSorter as the oracle."""

from __future__ import annotations

import graphlib
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import taskiq_flow
from taskiq_flow import CycleError, TopologicalSorter

Graph = dict[int, list[int]]


@st.composite
def graphs(draw: st.DrawFn, acyclic: bool = True) -> Graph:
    n = draw(st.integers(min_value=0, max_value=40))
    # Random labels so that insertion order is not id order.
    labels = draw(st.permutations(list(range(n))))
    graph: Graph = {}
    for i in range(n):
        upper = i if acyclic else n
        preds = draw(st.lists(st.integers(0, max(upper - 1, 0)), max_size=4)) if upper else []
        graph[labels[i]] = [labels[p] for p in preds]
    return graph


def assert_valid_cycle(graph: Graph, cycle: list[int]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    for a, b in itertools.pairwise(cycle):
        assert a in graph.get(b, []), f"{a} is not a predecessor of {b}"


@given(graphs(), st.randoms(use_true_random=False))
def test_same_ready_batches_as_graphlib(graph: Graph, rnd: random.Random) -> None:
    ours, theirs = TopologicalSorter(graph), graphlib.TopologicalSorter(graph)
    ours.prepare()
    theirs.prepare()
    out: list[int] = []
    while theirs.is_active():
        assert ours.is_active() and bool(ours)
        ready = theirs.get_ready()
        assert ours.get_ready() == ready
        out.extend(ready)
        # Finish some of what is out, in random order, one call per random-sized chunk.
        rnd.shuffle(out)
        k = rnd.randint(1, len(out)) if out else 0
        chunk, out = out[:k], out[k:]
        theirs.done(*chunk)
        ours.done(*chunk)
    assert not ours.is_active()
    assert ours.get_ready() == ()


@given(graphs())
def test_static_order_waves_match_graphlib(graph: Graph) -> None:
    ours = list(TopologicalSorter(graph).static_order())
    theirs = list(graphlib.TopologicalSorter(graph).static_order())
    assert ours == theirs


@given(graphs(acyclic=False))
def test_cycles_are_found_like_graphlib(graph: Graph) -> None:
    try:
        expected = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        with pytest.raises(graphlib.CycleError) as info:
            list(TopologicalSorter(graph).static_order())
        assert info.value.args[0] == "nodes are in a cycle"
        assert_valid_cycle(graph, info.value.args[1])
    else:
        assert list(TopologicalSorter(graph).static_order()) == expected


def test_self_loop_two_cycle_and_long_cycle() -> None:
    with pytest.raises(CycleError) as info:
        TopologicalSorter({"a": ["a"]}).prepare()
    assert info.value.cycle == ["a", "a"]
    with pytest.raises(graphlib.CycleError) as info2:
        TopologicalSorter({1: [2], 2: [1]}).prepare()
    assert sorted(info2.value.args[1][:2]) == [1, 2]
    n = 100_000
    big = {i: [(i + 1) % n] for i in range(n)}
    with pytest.raises(CycleError) as info3:
        TopologicalSorter(big).prepare()
    assert len(info3.value.cycle) == n + 1
    assert_valid_cycle(big, info3.value.cycle)


def test_cycle_leaves_the_acyclic_part_runnable() -> None:
    ts = TopologicalSorter({"b": ["a"], "c": ["b", "d"], "d": ["c"]})
    with pytest.raises(CycleError):
        ts.prepare()
    assert ts.get_ready() == ("a",)
    ts.done("a")
    assert ts.get_ready() == ("b",)
    ts.done("b")
    assert ts.get_ready() == ()
    assert not ts.is_active()


@pytest.mark.parametrize("cls", [TopologicalSorter, graphlib.TopologicalSorter])
def test_errors_have_graphlib_messages(cls: type) -> None:
    ts = cls({"b": ["a"]})
    for call in (ts.get_ready, ts.is_active, lambda: ts.done("a")):
        with pytest.raises(ValueError, match=r"^prepare\(\) must be called first$"):
            call()
    ts.prepare()
    with pytest.raises(ValueError, match=r"^cannot prepare\(\) more than once$"):
        ts.prepare()
    with pytest.raises(ValueError, match=r"^Nodes cannot be added after a call to prepare\(\)$"):
        ts.add("z")
    with pytest.raises(ValueError, match=r"^node 'zz' was not added using add\(\)$"):
        ts.done("zz")
    with pytest.raises(ValueError, match=r"^node 'b' was not passed out \(still not ready\)$"):
        ts.done("b")
    assert ts.get_ready() == ("a",)
    ts.done("a")
    with pytest.raises(ValueError, match=r"^node 'a' was already marked done$"):
        ts.done("a")
    with pytest.raises(ValueError, match=r"^cannot prepare\(\) more than once$"):
        list(ts.static_order())


def test_done_is_all_or_nothing() -> None:
    ts = TopologicalSorter({"c": ["a", "b"]})
    ts.prepare()
    assert ts.get_ready() == ("a", "b")
    with pytest.raises(ValueError, match="already marked done"):
        ts.done("a", "a")
    with pytest.raises(ValueError, match="was not added"):
        ts.done("a", "nope")
    ts.done("a", "b")  # nothing above was applied
    assert ts.get_ready() == ("c",)


def test_any_hashable_nodes_and_generic_alias() -> None:
    nodes: list[object] = [("t", 1), frozenset({1}), None, 3.5, "s"]
    graph = {nodes[i]: [nodes[i - 1]] for i in range(1, len(nodes))}
    assert list(TopologicalSorter(graph).static_order()) == nodes
    assert TopologicalSorter[str] is not None
    with pytest.raises(TypeError):
        TopologicalSorter().add([1])  # type: ignore[arg-type]


def test_is_exported_as_drop_in() -> None:
    assert taskiq_flow.TopologicalSorter is TopologicalSorter
    assert issubclass(CycleError, graphlib.CycleError)
    assert issubclass(CycleError, taskiq_flow.TaskiqFlowError)
