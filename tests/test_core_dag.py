"""The core's DAG classes from Python: analysis, the ranked scheduler, and bad input."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskiq_flow import (
    CycleError,
    InvalidValueError,
    StateError,
    UnknownIdError,
)
from taskiq_flow.core import DagGraph, DagScheduler, DagSorter


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    n = draw(st.integers(1, 50))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=120))
    edges = [(min(a, b), max(a, b)) for a, b in pairs if a != b]
    return n, [a for a, _ in edges], [b for _, b in edges]


@given(dags(), st.data())
def test_analysis_matches_networkx(
    dag: tuple[int, list[int], list[int]], data: st.DataObject
) -> None:
    n, src, dst = dag
    weights = data.draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    g = DagGraph(n, src, dst)
    ref = nx.DiGraph()
    ref.add_nodes_from(range(n))
    ref.add_edges_from(zip(src, dst))
    position = {v: i for i, v in enumerate(g.topological_order())}
    assert all(position[a] < position[b] for a, b in zip(src, dst))
    levels = g.levels()
    for v in range(n):
        preds = list(ref.predecessors(v))
        assert levels[v] == (max(levels[p] for p in preds) + 1 if preds else 0)
    for v, w in enumerate(weights):
        ref.nodes[v]["w"] = w
    length, path = g.critical_path(weights)
    assert length == sum(weights[v] for v in path)
    assert all(ref.has_edge(a, b) for a, b in itertools.pairwise(path))
    best = (
        max(
            sum(weights[v] for v in p)
            for s in range(n)
            for p in ([[s]] + [q for t in range(n) for q in nx.all_simple_paths(ref, s, t)])
        )
        if n <= 12
        else length
    )
    assert length == best


def test_cycle_error_carries_ids() -> None:
    with pytest.raises(CycleError) as info:
        DagGraph(3, [0, 1, 2], [1, 2, 1]).topological_order()
    assert info.value.cycle in ([1, 2, 1], [2, 1, 2])
    assert DagGraph(3, [0, 1, 2], [1, 2, 1]).find_cycle() is not None
    assert DagGraph(2, [0], [1]).find_cycle() is None


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((3, [0, 5], [1, 2]), UnknownIdError, "unknown node id 5"),
        ((3, [0, -1], [1, 2]), InvalidValueError, "sources must be"),
        ((3, [0, 1], [1]), InvalidValueError, "equal length"),
        ((-1, [], []), InvalidValueError, "node_count must be"),
        ((2.5, [], []), InvalidValueError, "node_count must be an integer"),
        ((3, [0.5], [1]), InvalidValueError, "sources must be an integer"),
        ((3, "01", "12"), TypeError, "not str"),
    ],
)
def test_bad_graphs_are_refused(args: tuple[object, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DagGraph(*args)  # type: ignore[arg-type]


def test_sorter_on_ids_and_its_errors() -> None:
    s = DagSorter(3)
    s.add_edges([0, 0], [1, 2])
    with pytest.raises(StateError, match="prepare"):
        s.get_ready()
    s.prepare()
    with pytest.raises(StateError, match="cannot change"):
        s.add_edges([1], [2])
    with pytest.raises(StateError, match="cannot change"):
        s.add_nodes(1)
    assert s.get_ready() == (0,)
    with pytest.raises(UnknownIdError):
        s.complete(-4)
    assert s.complete(0) == (1, 2)
    with pytest.raises(StateError, match="already marked done"):
        s.done(0)
    s.done(1, 2)
    assert not s and s.finished == 3 and s.in_flight == 0


def test_scheduler_orders_by_priority_then_remaining_path() -> None:
    # 0 -> 1 -> 2 -> 3 is long; 4 and 5 are alone; 5 has the highest priority.
    s = DagScheduler(6, [0, 1, 2], [1, 2, 3], priorities=[0, 0, 0, 0, 0, 9], max_parallel=2)
    assert s.start() == [5, 0]
    assert s.complete(5) == [4]
    assert s.complete(0) == [1]
    assert s.state(2) == "waiting" and s.state(1) == "running"


def test_scheduler_key_caps_failure_and_cancel() -> None:
    s = DagScheduler(5, [0, 1], [1, 2], keys=[0, 0, 0, 1, 1])
    s.set_key_limits(1, max_parallel=1)
    assert s.start() == [0, 3]
    admitted, skipped = s.fail(0)
    assert (admitted, skipped) == ([], [1, 2])
    assert s.counts()["skipped"] == 2
    assert s.complete(3) == [4]
    assert s.cancel() == []
    s.complete(4)
    assert s.is_finished


def test_scheduler_rate_limit_wakeups() -> None:
    s = DagScheduler(3, [], [])
    s.set_key_limits(0, rate=10.0, burst=1)
    assert s.start(now=100.0) == [0]
    assert s.next_wakeup() == pytest.approx(100.1)
    assert s.poll(100.05) == []
    assert s.poll(100.1) == [1]
    assert s.poll(100.2) == [2]
    assert s.next_wakeup() is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_parallel": 0}, "max_parallel must be an integer from 1"),
        ({"max_parallel": -3}, "max_parallel must be an integer from 1"),
        ({"max_parallel": 2.5}, "max_parallel must be an integer"),
        ({"max_parallel": math.nan}, "max_parallel must be an integer"),
        ({"max_parallel": True}, "max_parallel must be an integer"),
        ({"rate": 0.0}, "rate must be a finite number > 0"),
        ({"rate": -1.0}, "rate must be a finite number > 0"),
        ({"rate": math.nan}, "rate must be a finite number > 0"),
        ({"rate": math.inf}, "rate must be a finite number > 0"),
        ({"rate": 5.0, "burst": 0}, "burst must be an integer from 1"),
    ],
)
def test_bad_limits_change_nothing(kwargs: dict[str, object], match: str) -> None:
    s = DagScheduler(3, [], [])
    s.set_key_limits(0, max_parallel=1)
    with pytest.raises(InvalidValueError, match=match):
        s.set_key_limits(0, **kwargs)  # type: ignore[arg-type]
    assert s.start() == [0]  # the old cap of 1 still holds


def test_scheduler_bad_events_change_nothing() -> None:
    with pytest.raises(CycleError):
        DagScheduler(2, [0, 1], [1, 0])
    with pytest.raises(InvalidValueError, match="one per node"):
        DagScheduler(2, [], [], keys=[0])
    s = DagScheduler(3, [0], [1])
    with pytest.raises(StateError, match="prepare"):
        s.complete(0)
    assert s.start() == [0, 2]
    with pytest.raises(StateError, match="more than once"):
        s.start()
    with pytest.raises(StateError, match="not passed out"):
        s.complete_many([0, 1])
    with pytest.raises(StateError, match="already marked done"):
        s.complete_many([0, 0])
    with pytest.raises(InvalidValueError, match="now must be a finite time"):
        s.complete(0, math.nan)
    with pytest.raises(UnknownIdError):
        s.complete(7)
    assert s.state(0) == "running"
    assert s.complete(0) == [1]


def test_million_node_chain_does_not_overflow_the_stack() -> None:
    n = 1_000_000
    s = DagSorter(n)
    s.add_edges(range(n - 1), range(1, n))
    order = s.static_order()
    assert order[:3] == [0, 1, 2] and len(order) == n
    assert DagGraph(n, list(range(n - 1)), list(range(1, n))).critical_path()[0] == n


def test_a_finished_node_cannot_complete_or_fail_again() -> None:
    scheduler = DagScheduler(2, [0], [1])
    assert scheduler.start() == [0]
    scheduler.fail(0)
    for call in (scheduler.complete, scheduler.fail):
        with pytest.raises(StateError, match="node 0 is not running \\(it failed, was skipped"):
            call(0)
    with pytest.raises(StateError, match="node 1 is not running"):
        scheduler.complete(1)
