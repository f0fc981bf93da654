"""taskiq_flow.TopologicalSorter against graphlib.TopologicalSorter as the oracle."""

from __future__ import annotations

import graphlib
import itertools
import random
from typing import Any

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
    except graphlib.CycleError as theirs:
        with pytest.raises(graphlib.CycleError) as info:
            list(TopologicalSorter(graph).static_order())
        assert info.value.args[0] == "nodes are in a cycle"
        assert_valid_cycle(graph, info.value.args[1])
        # CPython's own search: the same cycle, starting at the same node.
        assert info.value.args == theirs.args
    else:
        assert list(TopologicalSorter(graph).static_order()) == expected


@given(graphs(acyclic=False))
def test_after_a_cycle_the_acyclic_part_runs_like_graphlib(graph: Graph) -> None:
    ours, theirs = TopologicalSorter(graph), graphlib.TopologicalSorter(graph)
    outcomes = []
    for ts in (ours, theirs):
        try:
            ts.prepare()
            outcomes.append(None)
        except graphlib.CycleError as err:
            outcomes.append(err.args)
    assert outcomes[0] == outcomes[1]
    while theirs.is_active():
        ready = theirs.get_ready()
        assert ours.get_ready() == ready
        theirs.done(*ready)
        ours.done(*ready)
    assert not ours.is_active()


def test_self_loop_two_cycle_and_long_cycle() -> None:
    with pytest.raises(CycleError) as info:
        TopologicalSorter({"a": ["a"]}).prepare()
    assert info.value.cycle == ["a", "a"]
    with pytest.raises(graphlib.CycleError) as info2:
        TopologicalSorter({1: [2], 2: [1]}).prepare()
    # Where graphlib starts the cycle, too (the core's own id-order search said [2, 1, 2]).
    assert info2.value.args[1] == [1, 2, 1]
    with pytest.raises(graphlib.CycleError) as info2:
        TopologicalSorter({1: {2}, 2: {1}}).prepare()
    assert info2.value.args[1] == [1, 2, 1]
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


class Key:
    """A node with a hand-written hash that collides often and an equality on its value."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return self.value % 3

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.value == self.value

    def __repr__(self) -> str:
        return f"Key({self.value})"


def _label(kind: str, i: int, fresh: bool) -> object:
    """Label number ``i`` as a node of ``kind``; ``fresh`` builds an equal but distinct object."""
    if kind == "int":
        return i
    if kind == "big":
        # Around and beyond i64 and the 2**61 - 1 hash modulus, both signs.
        return (-1) ** i * (2**61 - 1 + i * 2**40) * (2**10 if i % 4 == 0 else 1)
    if kind == "str":
        return "".join(["node-", str(i)]) if fresh else f"node-{i}"
    if kind == "tuple":
        return ("t", i, (i % 2,))
    if kind == "key":
        return Key(i)
    raise AssertionError(kind)


@given(
    graphs(),
    st.lists(st.sampled_from(["int", "big", "str", "tuple", "key"]), min_size=1, max_size=3),
    st.randoms(use_true_random=False),
)
def test_any_hashable_nodes_behave_as_in_graphlib(
    graph: Graph, kinds: list[str], rnd: random.Random
) -> None:
    def node(i: int, fresh: bool = False) -> object:
        return _label(kinds[i % len(kinds)], i, fresh)

    # Predecessors are new, equal objects: nodes are found by equality, not identity.
    relabelled = {node(v): [node(p, fresh=True) for p in ps] for v, ps in graph.items()}
    ours, theirs = TopologicalSorter(relabelled), graphlib.TopologicalSorter(relabelled)
    ours.prepare()
    theirs.prepare()
    out: list[object] = []
    while theirs.is_active():
        ready = theirs.get_ready()
        assert ours.get_ready() == ready
        out.extend(ready)
        rnd.shuffle(out)
        k = rnd.randint(1, len(out)) if out else 0
        chunk, out = out[:k], out[k:]
        theirs.done(*chunk)
        ours.done(*[copy_equal(x) for x in chunk])
    assert not ours.is_active()


def copy_equal(node: object) -> object:
    """An equal object that is not ``node`` itself, where the type allows one."""
    if isinstance(node, Key):
        return Key(node.value)
    if isinstance(node, str):
        return "".join(list(node))
    return node


def test_equal_objects_are_one_node_as_in_a_dict() -> None:
    calls: list[tuple[object, ...]] = [
        (1,),
        (1.0, 2),
        (True, 3),
        (2**64,),
        (float(2**64), 4),
        (0, 2**61 - 1),  # equal Python hashes, different nodes
        (-1, -2),
    ]
    ours, theirs = TopologicalSorter[object](), graphlib.TopologicalSorter[object]()
    for call in calls:
        ours.add(*call)
        theirs.add(*call)
    assert list(ours.static_order()) == list(theirs.static_order())
    ts = TopologicalSorter({"a": [1]})
    ts.prepare()
    assert ts.get_ready() == (1,)
    ts.done(1.0)  # equal to 1: the same node
    assert ts.get_ready() == ("a",)


def _run(ts: Any) -> list[tuple[object, ...]]:
    ts.prepare()
    batches = []
    while ts.is_active():
        batches.append(ts.get_ready())
        ts.done(*batches[-1])
    return batches


def test_a_failing_add_changes_nothing() -> None:
    ts = TopologicalSorter({"b": ["a"]})
    with pytest.raises(TypeError, match="unhashable"):
        ts.add("c", "new", ["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        ts.add({}, "a")  # type: ignore[arg-type]

    class Exploding:
        def __hash__(self) -> int:
            return hash("a")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing me")

    with pytest.raises(RuntimeError, match="no comparing me"):
        ts.add("d", "fresh", Exploding())
    assert _run(ts) == [("a",), ("b",)]  # neither c, new, d nor fresh were added


def test_bad_done_calls_raise_graphlibs_errors_and_change_nothing() -> None:
    graph = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}
    ours, theirs = TopologicalSorter(graph), graphlib.TopologicalSorter(graph)
    for ts in (ours, theirs):
        ts.prepare()
        assert ts.get_ready() == ("a",)
    bad_calls: list[tuple[object, ...]] = [("zz",), ("b",), ("b", "zz"), ("zz", "b")]
    for args in bad_calls:
        with pytest.raises(ValueError) as mine:
            ours.done(*args)
        with pytest.raises(ValueError) as reference:
            theirs.done(*args)
        assert str(mine.value) == str(reference.value)
    with pytest.raises(TypeError):
        ours.done(["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^node 'b' was not passed out"):
        ours.done("a", "b")  # graphlib would have marked "a" done here; we do not
    ours.done()  # no nodes: nothing to do, as in graphlib
    ours.done("a")
    theirs.done("a")
    with pytest.raises(ValueError, match=r"^node 'a' was already marked done$"):
        ours.done("a")
    with pytest.raises(ValueError, match=r"^node 'a' was already marked done$"):
        ours.done("a", "zz")  # the first bad node is the one reported
    assert _run_rest(ours) == _run_rest(theirs)


def _run_rest(ts: Any) -> list[tuple[object, ...]]:
    batches = []
    while ts.is_active():
        batches.append(ts.get_ready())
        ts.done(*batches[-1])
    return batches


def test_static_order_is_lazy_and_once() -> None:
    ts = TopologicalSorter({"b": ["a"]})
    order = ts.static_order()
    ts.add("c", "b")  # static_order() itself did not prepare: still adding
    assert iter(order) is order
    assert list(order) == ["a", "b", "c"]
    assert list(order) == []
    with pytest.raises(ValueError, match="more than once"):
        next(iter(ts.static_order()))
    cyclic = TopologicalSorter({1: [2], 2: [1]}).static_order()
    with pytest.raises(CycleError):
        next(cyclic)
    assert list(cyclic) == []  # as a generator that raised: exhausted


def test_sorter_and_nodes_that_reference_it_are_collected() -> None:
    import gc
    import weakref

    class Task:
        def __init__(self) -> None:
            self.sorter: object = None

    task = Task()
    ts = TopologicalSorter({task: []})
    task.sorter = ts
    ref = weakref.ref(ts)
    del ts, task
    gc.collect()
    assert ref() is None


def test_generic_alias_and_subclass() -> None:
    import types

    alias = TopologicalSorter[int]
    assert isinstance(alias, types.GenericAlias)
    assert alias.__origin__ is TopologicalSorter

    class Named(TopologicalSorter[str]):
        pass

    assert list(Named({"b": ["a"]}).static_order()) == ["a", "b"]


@pytest.mark.parametrize("base", [TopologicalSorter, graphlib.TopologicalSorter])
def test_subclasses_behave_as_graphlibs(base: Any) -> None:
    class Logged(base):  # type: ignore[misc,valid-type]
        """Takes an extra argument and sees every add, as a subclass of graphlib's would."""

        def __init__(self, graph: dict[str, list[str]], prefix: str) -> None:
            self.log: list[str] = []
            self.prefix = prefix
            super().__init__(graph)

        def add(self, node: str, *predecessors: str) -> None:
            self.log.append(self.prefix + node)
            super().add(node, *predecessors)

    ts = Logged({"b": ["a"], "c": ["b"]}, prefix="+")
    assert ts.log == ["+b", "+c"]
    assert list(ts.static_order()) == ["a", "b", "c"]


def test_constructor_arguments_and_reinit_as_graphlib() -> None:
    for cls in (TopologicalSorter, graphlib.TopologicalSorter):
        with pytest.raises(TypeError):
            cls({}, {})  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            cls(nope={})  # type: ignore[call-arg]
        ts = cls({"b": ["a"]})
        ts.__init__({"y": ["x"]})  # type: ignore[misc]  # starts over, as graphlib does
        assert list(ts.static_order()) == ["x", "y"]
