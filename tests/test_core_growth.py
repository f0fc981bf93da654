"""Runs that grow, on the core's ``DagScheduler`` from Python: expansion, open nodes, skips,
key chains, and bad growth refused with the project's exceptions (never a panic)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskiq_flow import (
    InternalError,
    InvalidValueError,
    StateError,
    TaskiqFlowError,
    UnknownIdError,
)
from taskiq_flow._core import WorkerPool
from taskiq_flow.core import DagScheduler

_STATES = ("waiting", "queued", "running", "done", "failed", "skipped", "cancelled", "open")


def _assert_counts(s: DagScheduler) -> None:
    counts = s.counts()
    assert sum(counts[k] for k in _STATES) == s.node_count
    for state in _STATES:
        assert counts[state] == sum(1 for v in range(s.node_count) if s.state(v) == state)


def test_a_task_that_adds_tasks_gives_its_slot_to_them() -> None:
    # 0 -> 1, one slot: node 0 expands into three children, which then run one at a time.
    s = DagScheduler(2, [0], [1], max_parallel=1)
    assert s.start() == [0]
    assert s.node_count == 2
    assert s.expand(0, 3, now=1.0) == ([2], [], [], [])
    assert s.state(0) == "open"
    why = s.explain(0)
    assert (why["reason"], why["open_children"], why["pending_inputs"]) == ("children", 3, 0)
    assert s.explain(3)["parent"] == 0
    assert s.parent_of(3) == 0 and s.parent_of(0) is None
    assert s.successors(2) == [0]
    _assert_counts(s)
    assert s.complete(2) == [3]
    assert s.complete(3) == [4]
    assert s.take_closed() == []
    # The last child closes the parent, which releases node 1 in the same call.
    assert s.complete(4) == [1]
    assert s.take_closed() == [0]
    assert s.state(0) == "done"
    s.complete(1)
    assert s.is_finished
    assert s.counts()["done"] == 5


def test_recursion_to_any_depth_under_a_cap_of_one() -> None:
    s = DagScheduler(1, [], [], max_parallel=1)
    running = s.start()
    closed: list[int] = []
    # Every node expands into two children until depth 6; 2^7 - 1 nodes in all.
    depth = {0: 0}
    while running:
        node = running.pop()
        if depth[node] < 6:
            first = s.node_count
            admitted, skipped, skipped_by, failed = s.expand(node, 2)
            assert (skipped, skipped_by, failed) == ([], [], [])
            depth.update({first: depth[node] + 1, first + 1: depth[node] + 1})
            running += admitted
        else:
            running += s.complete(node)
        closed += s.take_closed()
        assert s.counts()["running"] <= 1
    assert s.is_finished
    assert s.node_count == 127
    assert sorted(closed) == [v for v in range(127) if depth[v] < 6]
    assert closed[-1] == 0  # children close before their parents


def test_chained_each_steps_run_depth_first_per_item() -> None:
    # list(0) -> fetch(1) -> count(2) -> total(3); fetch (key 1, cap 2) and count are
    # placeholders for their items, grown in one call when list's output arrives.
    s = DagScheduler(4, [0, 1, 2], [1, 2, 3], keys=[0, 1, 2, 0])
    s.set_key_limits(1, max_parallel=2)
    assert s.start() == [0]
    n = 3
    fetch, count = list(range(4, 4 + n)), list(range(4 + n, 4 + 2 * n))
    sources = [0] * n + fetch
    targets = fetch + count
    assert s.grow(2 * n, parents=[1] * n + [2] * n, sources=sources, targets=targets) == (
        [],
        [],
        [],
        [],
    )
    assert s.complete(0) == [4, 5]
    assert (s.state(1), s.state(2)) == ("open", "open")
    # Item 0 reaches count while item 2 is still being fetched.
    assert s.complete(4) == [6, 7]
    assert s.explain(2)["open_children"] == 3 and s.explain(2)["pending_inputs"] == 1
    s.complete_many([5, 6, 7])
    assert s.take_closed() == [1]
    assert s.complete_many([8, 9]) == [3]
    assert s.take_closed() == [2]


def test_skip_runs_optional_consumers_and_skips_required_ones() -> None:
    # 0 -> 1 (required), 0 -> 2 (optional: a default), 1 -> 3 (optional).
    s = DagScheduler(4, [0, 0, 1], [1, 2, 3], optional=[False, True, True])
    assert s.start() == [0]
    admitted, skipped, skipped_by = s.skip(0)
    assert (sorted(admitted), skipped, skipped_by) == ([2, 3], [1], [0])
    assert s.state(0) == "skipped" and s.explain(0)["reason"] == "skipped"
    assert s.explain(1)["reason"] == "skipped"
    s.complete_many([2, 3])
    assert s.is_finished
    assert s.counts()["skipped"] == 2
    # A skipped child is left out of its parent.
    s = DagScheduler(1, [], [])
    s.start()
    s.expand(0, 2)
    s.skip(1)
    s.complete(2)
    assert s.take_closed() == [0]


def test_a_failed_child_fails_its_parent_and_fail_can_say_so() -> None:
    s = DagScheduler(2, [0], [1])
    s.start()
    s.expand(0, 2)
    # Child 2 fails: its parent 0 fails, and 0's successor 1 is skipped because of 0.
    assert s.fail(2, detail=True) == ([], [1], [0], [0])
    assert s.state(0) == "failed"
    s.complete(3)
    assert s.is_finished
    # Without `detail`, fail keeps its two lists.
    s = DagScheduler(2, [0], [1])
    s.start()
    assert s.fail(0) == ([], [1])


def test_a_child_counts_against_every_cap_above_it() -> None:
    s = DagScheduler(1, [], [])
    s.set_key_limits(0, max_parallel=3)
    own = s.add_key(max_parallel=2, parent=0)
    assert s.key_count == 2
    s.start()
    admitted, *_ = s.expand(0, 4, keys=[own] * 4)
    assert admitted == [1, 2]
    why = s.explain(3)
    assert (why["reason"], why["key"], why["limit_key"], why["key_cap"]) == (
        "step_cap",
        own,
        own,
        2,
    )
    with pytest.raises(UnknownIdError):
        s.add_key(max_parallel=1, parent=7)
    with pytest.raises(InvalidValueError):
        s.add_key(max_parallel=0)


def test_cancel_ends_open_nodes_cancelled() -> None:
    s = DagScheduler(2, [], [], max_parallel=2)
    assert s.start() == [0, 1]
    s.expand(0, 2)
    assert s.cancel() == [0, 3]
    assert s.complete(2) == []
    # A running node that expands after the cancel ends cancelled with its children.
    assert s.expand(1, 1) == ([], [], [], [])
    assert (s.state(1), s.state(4)) == ("cancelled", "cancelled")
    assert s.is_finished
    _assert_counts(s)


def test_children_take_their_parents_worker_class() -> None:
    pool = WorkerPool(["cpu"], "first_fit")
    pool.add_worker([2])
    one = pool.add_class([1])
    s = DagScheduler(1, [], [])
    s.attach(pool=pool, classes=[one])
    s.start()
    assert s.expand(0, 3)[0] == [1, 2]
    assert s.placing == 1
    with pytest.raises(InvalidValueError, match="classes"):
        s.grow(1)
    with pytest.raises(UnknownIdError):
        s.grow(1, classes=[5])


def _snapshot(s: DagScheduler) -> tuple[int, dict[str, int], list[str]]:
    return s.node_count, s.counts(), [s.state(v) for v in range(s.node_count)]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.grow(1, sources=[1], targets=[3]), InvalidValueError),  # from waiting
        (lambda s: s.grow(2, sources=[4], targets=[3]), InvalidValueError),  # downwards
        (lambda s: s.grow(1, sources=[0], targets=[1]), InvalidValueError),  # old to old
        (lambda s: s.grow(1, sources=[3], targets=[0]), InvalidValueError),  # into running
        (lambda s: s.grow(1, sources=[0], targets=[9]), UnknownIdError),
        (lambda s: s.grow(1, sources=[0, 0], targets=[3]), InvalidValueError),
        (lambda s: s.grow(1, sources=[0], targets=[3], optional=[1]), InvalidValueError),
        (lambda s: s.grow(1, sources=[0], targets=[3], optional=[True, False]), InvalidValueError),
        (lambda s: s.grow(2, weights=[1]), InvalidValueError),
        (lambda s: s.grow(1, keys=[5]), UnknownIdError),
        (lambda s: s.grow(1, classes=[0]), InvalidValueError),  # no pool
        (lambda s: s.grow(-1), InvalidValueError),
        (lambda s: s.grow(1, parents=[7]), UnknownIdError),
        (lambda s: s.grow(1, parents=["a"]), InvalidValueError),
        (lambda s: s.expand(2, 1, now=float("nan")), InvalidValueError),
        (lambda s: s.expand(-1, 1), UnknownIdError),
        (lambda s: (s.complete(2), s.expand(2, 1)), StateError),  # done
        (lambda s: (s.retry_at(0, 5.0), s.expand(0, 1)), StateError),  # in backoff
        (lambda s: (s.expand(1, 1), s.complete(1)), StateError),  # open
        (lambda s: s.expand(1, 1, sources=[1], targets=[3]), InvalidValueError),
        (lambda s: s.skip(1), StateError),
    ],
)
def test_bad_growth_is_refused_with_the_projects_errors_and_changes_nothing(
    call: Any, error: type[Exception]
) -> None:
    # 0 -> 1; 2 alone; 0 and 2 running.
    s = DagScheduler(3, [0], [1])
    assert s.start() == [0, 2]
    with pytest.raises(error):
        call(s)
    _assert_counts(s)


def test_a_refused_growth_leaves_the_run_as_it_was() -> None:
    s = DagScheduler(3, [0], [1])
    s.start()
    before = _snapshot(s)
    for bad in (
        {"sources": [1], "targets": [3]},
        {"sources": [0, 3], "targets": [3, 2]},
        {"keys": [9]},
        {"parents": [2, 9]},
    ):
        with pytest.raises(TaskiqFlowError):
            s.grow(1, **bad)
        assert _snapshot(s) == before


@st.composite
def _events(draw: st.DrawFn) -> list[tuple[int, ...]]:
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, 9),  # what
                st.integers(-2, 40),  # a node, maybe unknown
                st.integers(0, 4),  # how many
                st.lists(st.integers(-1, 45), max_size=6),  # edge ends, maybe bad
                st.booleans(),
            ),
            max_size=60,
        )
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 8), _events())
def test_random_growth_either_works_or_raises_a_project_error(
    n: int, events: list[tuple[int, ...]]
) -> None:
    s = DagScheduler(n, list(range(n - 1)), list(range(1, n)), max_parallel=3)
    running = s.start()
    for what, node, count, ends, flag in events:
        before = _snapshot(s)
        first = s.node_count
        half = len(ends) // 2
        sources = [e if e >= 0 else first + (-e) for e in ends[:half]]
        targets = [e if e >= 0 else first + (-e) for e in ends[half : 2 * half]]
        try:
            if what < 3 and running:
                target = running.pop(node % len(running))
                running += s.complete(target)
            elif what == 3 and running:
                target = running.pop(node % len(running))
                running += s.skip(target)[0]
            elif what == 4:
                running += s.fail(node)[0]
                if node in running:
                    running.remove(node)
            elif what < 8:
                admitted, *_ = s.expand(node, count, sources=sources, targets=targets)
                running += admitted
                if node in running:
                    running.remove(node)
            else:
                parents = [node if flag else None] * count
                running += s.grow(count, parents=parents, sources=sources, targets=targets)[0]
                if flag and count and node in running:  # no child: no parent opened
                    running.remove(node)
        except InternalError:
            raise
        except TaskiqFlowError:
            assert _snapshot(s) == before
        for v in s.take_closed():
            assert s.state(v) == "done"
        _assert_counts(s)
        assert sorted(running) == [v for v in range(s.node_count) if s.state(v) == "running"]
    # Whatever happened, completing what runs ends the run.
    while running:
        running += s.complete(running.pop())
    assert s.is_finished
