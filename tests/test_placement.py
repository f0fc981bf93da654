"""Placement from Python: policies, capacity accounting, explanations, bad input, plan quality."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskiq_flow import (
    InvalidValueError,
    StateError,
    UnknownIdError,
    UnschedulableError,
)
from taskiq_flow.bench.peers import (
    BestFitScorer,
    FirstFitScanner,
    NumpyBestFit,
    NumpyFirstFit,
    first_fit_decreasing,
    smallest_first,
)
from taskiq_flow.bench.workloads import make_cluster
from taskiq_flow.core import Placer

RESOURCES = ["cpu", "ram_mb", "gpu"]


def cluster(policy: str = "best_fit") -> Placer:
    p = Placer(RESOURCES, policy)  # type: ignore[arg-type]
    gpu = p.label("gpu=true")
    p.add_worker([8000, 32768, 1], [gpu])
    p.add_worker([4000, 16384, 0])
    return p


def test_best_fit_bin_packs_and_spread_spreads() -> None:
    assert cluster("best_fit").place(1, [1000, 1024, 0]) == 1
    assert cluster("spread").place(1, [1000, 1024, 0]) == 0
    assert cluster("first_fit").place(1, [1000, 1024, 0]) == 0


def test_labels_route_and_capacity_is_held_until_release() -> None:
    p = cluster()
    gpu = p.label("gpu=true")
    assert p.place(1, [2000, 4096, 1], [gpu]) == 0
    assert p.place(2, [2000, 4096, 1], [gpu]) is None  # the only GPU is taken
    assert p.explain([2000, 4096, 1], [gpu]) == [
        (0, ["gpu: needs 1, 0 free of 1 (short by 1)"]),
        (1, ["gpu: needs 1, 0 free of 0 (short by 1)", "missing label gpu=true"]),
    ]
    assert p.free(0) == [6000, 28672, 0]
    assert p.release(1) == 0
    assert p.place(2, [2000, 4096, 1], [gpu]) == 0
    with pytest.raises(StateError, match="task 2 is already registered"):
        p.place(2, [1, 1, 0])
    with pytest.raises(UnknownIdError, match="unknown placed task 99"):
        p.release(99)


def test_unschedulable_is_refused_at_submit_with_the_reason() -> None:
    p = cluster()
    with pytest.raises(
        UnschedulableError, match="needs gpu=2 but the largest gpu any worker offers is 1"
    ):
        p.place(1, [1000, 1024, 2])
    with pytest.raises(UnschedulableError, match="needs ram_mb=65536 but the largest ram_mb"):
        p.check([1000, 65536, 0])
    with pytest.raises(UnschedulableError, match="no worker has label ssd=true"):
        p.place(1, [1, 1, 0], [p.label("ssd=true")])
    with pytest.raises(UnschedulableError, match="no worker is registered"):
        Placer(RESOURCES).place(1, [1, 1, 0])
    assert p.placed_count == 0


@pytest.mark.parametrize(
    ("demand", "error", "match"),
    [
        ([-1, 0, 0], InvalidValueError, "demand must be an integer >= 0, got -1"),
        ([math.nan, 0, 0], InvalidValueError, "demand must be an integer, got nan"),
        ([math.inf, 0, 0], InvalidValueError, "demand must be an integer, got inf"),
        ([1.5, 0, 0], InvalidValueError, "demand must be an integer, got 1.5"),
        ([1, 1], InvalidValueError, "one amount per resource"),
    ],
)
def test_bad_demands_are_refused(demand: list[float], error: type, match: str) -> None:
    p = cluster()
    with pytest.raises(error, match=match):
        p.place(1, demand)  # type: ignore[arg-type]
    assert p.placed_count == 0


def test_bad_workers_are_refused() -> None:
    p = Placer(RESOURCES)
    with pytest.raises(InvalidValueError, match="zero of every resource"):
        p.add_worker([0, 0, 0])
    with pytest.raises(InvalidValueError, match="integer >= 0"):
        p.add_worker([-4, 1, 0])
    with pytest.raises(UnknownIdError, match="unknown label 3"):
        p.add_worker([1, 1, 0], [3])
    with pytest.raises(InvalidValueError, match="policy must be one of"):
        Placer(RESOURCES, "fastest")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="unique"):
        Placer(["cpu", "cpu"])
    assert p.worker_count == 0


def test_place_many_is_all_or_nothing_and_removal_returns_tasks() -> None:
    p = cluster("first_fit")
    with pytest.raises(UnschedulableError):
        p.place_many([(1, [1000, 1, 0], []), (2, [1, 1, 9], [])])
    assert p.placed_count == 0
    assert p.place_many([(1, [1000, 1, 0], []), (2, [1000, 1, 0], [])]) == [0, 0]
    assert p.remove_worker(0) == [1, 2]
    assert p.place(1, [1000, 1, 0]) == 1


workers_st = st.lists(st.tuples(st.integers(1, 100), st.integers(1, 100)), min_size=1, max_size=6)
tasks_st = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=50)


@given(workers_st, tasks_st, st.lists(st.booleans(), min_size=50, max_size=50))
def test_online_placement_never_over_commits(
    workers: list[tuple[int, int]], tasks: list[tuple[int, int]], releases: list[bool]
) -> None:
    p = Placer(["a", "b"])
    for spec in workers:
        p.add_worker(list(spec))
    held: dict[int, tuple[int, tuple[int, int]]] = {}
    for i, t in enumerate(tasks):
        try:
            w = p.place(i, list(t))
        except UnschedulableError:
            assert all(t[0] > c[0] or t[1] > c[1] for c in workers)
            continue
        if w is not None:
            held[i] = (w, t)
        if releases[i] and held:
            p.release(next(iter(held)))
            del held[next(iter(held))]
        for wid, cap in enumerate(workers):
            used = [sum(h[1][r] for h in held.values() if h[0] == wid) for r in range(2)]
            assert all(u <= c for u, c in zip(used, cap))
            assert p.free(wid) == [c - u for c, u in zip(cap, used)]


@given(workers_st, tasks_st)
def test_plan_packs_at_least_as_well_as_ffd_and_smallest_first(
    workers: list[tuple[int, int]], tasks: list[tuple[int, int]]
) -> None:
    tasks = [t for t in tasks if any(t[0] <= c[0] and t[1] <= c[1] for c in workers)]
    p = Placer(["a", "b"])
    for w in workers:
        p.add_worker(list(w))
    assignment, placed, used, _ = p.plan([(list(t), []) for t in tasks])
    for wid, cap in enumerate(workers):
        for r in range(2):
            assert sum(t[r] for t, a in zip(tasks, assignment) if a == wid) <= cap[r]
    assert placed == sum(a is not None for a in assignment)
    for peer in (first_fit_decreasing, smallest_first):
        theirs = peer(workers, tasks)
        their_placed = sum(a is not None for a in theirs)
        their_used = len({a for a in theirs if a is not None})
        assert (placed, -used) >= (their_placed, -their_used)


@given(workers_st, tasks_st)
def test_best_fit_matches_the_python_scorer(
    workers: list[tuple[int, int]], tasks: list[tuple[int, int]]
) -> None:
    p = Placer(["a", "b"])
    for w in workers:
        p.add_worker(list(w))
    scorer = BestFitScorer(workers)
    for i, t in enumerate(tasks):
        if not any(t[0] <= c[0] and t[1] <= c[1] for c in workers):
            continue
        assert p.place(i, list(t)) == scorer.place(t)


def _same_online_choices(policy: str, peers: list[object], workers: int, tasks: int) -> None:
    for shape in ("fitting", "oversubscribed"):
        caps, demands = make_cluster(workers, tasks, shape=shape)
        p = Placer(RESOURCES, policy)  # type: ignore[arg-type]
        for c in caps:
            p.add_worker(c)
        scorers = [make(caps) for make in peers]  # type: ignore[operator]
        for i, d in enumerate(demands):
            ours = p.place(i, d)
            assert [s.place(d) for s in scorers] == [ours] * len(scorers), (shape, i)
            if ours is not None and i % 3 == 0:
                p.release(i)
                for s in scorers:
                    s.release(ours, d)


@pytest.mark.parametrize("workers", [10, 300])
def test_best_fit_peers_choose_what_the_core_chooses(workers: int) -> None:
    """The bench's Python and numpy best fit (with their constant-time skips) place every task
    where the indexed core does, full cluster or not."""
    _same_online_choices("best_fit", [BestFitScorer, NumpyBestFit], workers, 2_000)


@pytest.mark.parametrize("workers", [10, 300])
def test_first_fit_peer_chooses_what_the_core_chooses(workers: int) -> None:
    _same_online_choices("first_fit", [FirstFitScanner, NumpyFirstFit], workers, 2_000)


@given(workers_st, tasks_st, st.lists(st.booleans(), min_size=50, max_size=50))
def test_online_policies_match_the_python_peers_with_releases(
    workers: list[tuple[int, int]], tasks: list[tuple[int, int]], releases: list[bool]
) -> None:
    tasks = [t for t in tasks if any(t[0] <= c[0] and t[1] <= c[1] for c in workers)]
    for policy, peer in (("best_fit", BestFitScorer), ("first_fit", FirstFitScanner)):
        p = Placer(["a", "b"], policy)  # type: ignore[arg-type]
        for w in workers:
            p.add_worker(list(w))
        scorer = peer(workers)
        held: list[tuple[int, int, tuple[int, int]]] = []
        for i, t in enumerate(tasks):
            worker = p.place(i, list(t))
            assert scorer.place(t) == worker
            if worker is not None:
                held.append((i, worker, t))
            if releases[i] and held:
                task, worker, t = held.pop(0)
                assert p.release(task) == worker
                scorer.release(worker, t)
