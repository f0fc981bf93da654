"""Bulk dataflows (taskiq_flow.bulk) on the real InMemoryBroker: the same values as a
DataflowPipeline of the same graph, caps, retries, tracking, explanations, names, and every bad
declaration refused before anything is sent."""

from __future__ import annotations

import asyncio
import math
import random
from array import array
from typing import Any

import pytest
from conftest import Gauge
from hypothesis import given, settings
from hypothesis import strategies as st
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware

from taskiq_flow import (
    CycleError,
    DataflowError,
    DataflowPipeline,
    DuplicateOutputError,
    InvalidValueError,
    MissingInputError,
    NotATaskError,
    PipelineTrackingManager,
    StateError,
    StepFailedError,
    UnknownIdError,
    UnserializableError,
)
from taskiq_flow.bulk import BulkDataflow, BulkResults

pytestmark = pytest.mark.usefixtures("lane")


class Sends(TaskiqMiddleware):
    """Counts the messages the broker sends."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        self.count += 1
        return message


def make_broker() -> tuple[InMemoryBroker, Any, Any, Sends]:
    broker = InMemoryBroker()
    sends = Sends()
    broker.add_middlewares(sends)

    @broker.task(task_name="bulk_seed")
    async def seed(seed: int, k: int = 0) -> int:
        return seed * 10 + k

    @broker.task(task_name="bulk_combine")
    async def combine(a: int, b: int = 0, c: int = 0, d: int = 0) -> int:
        return (a * 3 + b * 5 + c * 7 + d * 11) % 1_000_003

    return broker, seed, combine, sends


def layered(layers: int, width: int, parents: int, rnd: random.Random) -> list[list[int]]:
    """For each node past the first layer, its distinct parents (up to 4) in the layer before."""
    wiring: list[list[int]] = [[] for _ in range(width)]
    for layer in range(1, layers):
        start = (layer - 1) * width
        for _ in range(width):
            k = rnd.randint(1, min(parents, width))
            wiring.append(rnd.sample(range(start, start + width), k))
    return wiring


def declare(
    broker: Any, seed: Any, combine: Any, width: int, wiring: list[list[int]], **kw: Any
) -> BulkDataflow:
    flow = BulkDataflow(broker, [seed, combine], **kw)
    first = flow.add_nodes(width, task=0, output="v")
    flow.add_nodes(len(wiring) - width, task=1, output="w")
    flow.feed("seed", first)
    for j, param in enumerate("abcd"):
        edges = [(ps[j], v) for v, ps in enumerate(wiring) if len(ps) > j]
        flow.connect([s for s, _ in edges], [t for _, t in edges], param)
    return flow


def name(v: int, width: int) -> str:
    return f"v{v}" if v < width else f"w{v - width}"


async def test_values_equal_the_same_graph_as_a_dataflow_pipeline() -> None:
    broker, seed, combine, _ = make_broker()
    await broker.startup()
    width, rnd = 6, random.Random(3)
    wiring = layered(5, width, 4, rnd)
    flow = declare(broker, seed, combine, width, wiring, max_parallel=4)
    out = await flow.kiq_dataflow(seed=2)

    pipeline = DataflowPipeline(broker, max_parallel=4)
    for v, ps in enumerate(wiring):
        if v < width:
            pipeline.add_dataflow_task(seed, output=name(v, width), inputs={"seed": "seed"})
        else:
            inputs = {p: name(s, width) for p, s in zip("abcd", ps)}
            pipeline.add_dataflow_task(combine, output=name(v, width), inputs=inputs)
    expected = await pipeline.kiq_dataflow(seed=2)
    await broker.shutdown()
    assert dict(out) == expected
    assert len(out) == len(wiring) == flow.node_count
    assert out["w3"] == out.at(width + 3) == expected["w3"]
    assert out.by_node[0] == 20


def evaluate(width: int, wiring: list[list[int]], seed: int) -> list[int]:
    """The oracle: each node's value computed in plain Python."""
    values: list[int] = []
    for v, ps in enumerate(wiring):
        if v < width:
            values.append(seed * 10)
        else:
            a, b, c, d = ([values[p] for p in ps] + [0, 0, 0])[:4]
            values.append((a * 3 + b * 5 + c * 7 + d * 11) % 1_000_003)
    return values


@settings(max_examples=30)
@given(
    layers=st.integers(1, 6),
    width=st.integers(1, 7),
    parents=st.integers(1, 4),
    cap=st.one_of(st.none(), st.integers(1, 5)),
    seed=st.integers(0, 1000),
    graph=st.integers(0, 2**32),
)
async def test_random_layered_graphs_give_the_values_plain_python_computes(
    layers: int, width: int, parents: int, cap: int | None, seed: int, graph: int
) -> None:
    broker, seed_task, combine, _ = make_broker()
    await broker.startup()
    wiring = layered(layers, width, parents, random.Random(graph))
    flow = declare(broker, seed_task, combine, width, wiring, max_parallel=cap)
    out = await flow.kiq_dataflow(seed=seed)
    await broker.shutdown()
    assert list(out.by_node) == evaluate(width, wiring, seed)
    assert list(out) == [name(v, width) for v in range(len(wiring))]


async def test_max_parallel_is_reached_and_never_exceeded(gauge: Gauge) -> None:
    broker = InMemoryBroker()
    cap = 7
    full = asyncio.Event()

    @broker.task
    async def work(x: int) -> int:
        gauge.enter()
        if gauge.running >= cap:
            full.set()
        # Held until the cap is full: a cap that let more through would show them all at once.
        await asyncio.wait_for(full.wait(), 30)
        gauge.leave()
        return x

    await broker.startup()
    flow = BulkDataflow(broker, [work], max_parallel=cap)
    nodes = flow.add_nodes(40, output="n")
    flow.feed("x", nodes)
    out = await flow.kiq_dataflow(x=1)
    await broker.shutdown()
    assert len(out) == 40 and set(out.values()) == {1}
    assert gauge.peak == cap


async def test_retries_tracking_and_explain_cover_a_bulk_run(broker: InMemoryBroker) -> None:
    failed: set[int] = set()

    @broker.task
    async def flaky(x: int, i: int) -> int:
        if i % 3 == 0 and i not in failed:
            failed.add(i)
            raise RuntimeError("first attempt fails")
        return x + i

    tracking = PipelineTrackingManager()
    flow = BulkDataflow(broker, [flaky], max_parallel=3).with_tracking(tracking)
    flow.with_retry(max_attempts=2, delay=0.001)
    nodes = flow.add_nodes(9, output="f")
    flow.feed("x", nodes)
    flow.feed("i0", nodes[:1], param="i")  # each node its own i: an input per node
    for i in range(1, 9):
        flow.feed(f"i{i}", nodes[i : i + 1], param="i")
    out = await flow.kiq_dataflow(x=100, **{f"i{i}": i for i in range(9)})
    assert [out[f"f{i}"] for i in range(9)] == [100 + i for i in range(9)]
    assert failed == {0, 3, 6}
    status = await tracking.get_status(flow.pipeline_id or "")
    [step] = status.steps
    assert (step.name, step.status, step.tasks, step.tasks_done) == ("flaky", "done", 9, 9)
    assert flow.explain(4).startswith("done")
    assert flow.explain("flaky").startswith("done")


async def test_a_failed_run_keeps_what_finished(broker: InMemoryBroker) -> None:
    @broker.task
    async def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    flow = BulkDataflow(broker, [maybe], on_error="continue")
    for i in range(4):
        flow.feed(f"x{i}", flow.add_nodes(1, output=[f"m{i}"]), param="x")
    with pytest.raises(StepFailedError) as info:
        await flow.kiq_dataflow(x0=0, x1=1, x2=2, x3=3)
    results = info.value.results
    assert isinstance(results, BulkResults)
    assert dict(results) == {"m0": 0, "m1": 1, "m3": 3}
    with pytest.raises(KeyError):
        results.at(2)


def test_names_are_made_when_asked_and_found_back() -> None:
    broker, seed, combine, _ = make_broker()
    flow = BulkDataflow(broker, [seed, combine])
    a = flow.add_nodes(12, task=0, output="layer")
    b = flow.add_nodes(task=[1, 1], output=["total", "check"])
    c = flow.add_nodes(3, task=1, output="layer_x")
    assert (a, b, c) == (range(0, 12), range(12, 14), range(14, 17))
    assert [flow.name_of(v) for v in (0, 11, 12, 13, 14, 16)] == [
        "layer0", "layer11", "total", "check", "layer_x0", "layer_x2"
    ]  # fmt: skip
    assert [flow.node(n) for n in ("layer0", "layer11", "check", "layer_x2")] == [0, 11, 13, 16]
    for unknown in ("layer12", "layer01", "layer", "layer_x3", "nope", "layer1x"):
        with pytest.raises(KeyError):
            flow.node(unknown)
    with pytest.raises(IndexError):
        flow.name_of(17)
    assert 3 not in BulkResults(flow, list(range(17)))  # a mapping by name: an int is no key
    assert "layer3" in BulkResults(flow, list(range(17)))


async def test_a_running_dataflow_holds_still(broker: InMemoryBroker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @broker.task
    async def wait(x: int) -> int:
        started.set()
        await asyncio.wait_for(release.wait(), 30)
        return x

    flow = BulkDataflow(broker, [wait])
    flow.feed("x", flow.add_nodes(2, output="w"))
    run = asyncio.ensure_future(flow.kiq_dataflow(x=1))
    await asyncio.wait_for(started.wait(), 30)
    for change in (
        lambda: flow.add_nodes(1, output="more"),
        lambda: flow.connect([0], [1], "x"),
        lambda: flow.feed("y", [0]),
    ):
        with pytest.raises(StateError, match="cannot change while it runs"):
            change()
    release.set()
    assert dict(await run) == {"w0": 1, "w1": 1}
    assert flow.node_count == 2 and flow.edge_count == 0


async def test_ids_may_come_as_arrays_ranges_lists_or_buffers(broker: InMemoryBroker) -> None:
    @broker.task
    async def inc(x: int) -> int:
        return x + 1

    flow = BulkDataflow(broker, [inc])
    nodes = flow.add_nodes(4, output="i")
    flow.feed("x", nodes[:1])
    flow.connect(array("I", [0]), [1], "x")
    flow.connect(range(1, 2), memoryview(array("q", [2])), "x")
    flow.connect((2,), (3,), ["x"])
    out = await flow.kiq_dataflow(x=0)
    assert list(out.by_node) == [1, 2, 3, 4]


# -- bad input: refused with a clear error, nothing sent ------------------------------------------


@pytest.fixture
def parts() -> tuple[InMemoryBroker, Any, Any, Sends]:
    return make_broker()


async def refused(
    flow: BulkDataflow, sends: Sends, error: type[Exception], match: str, **inputs: Any
) -> None:
    await flow.broker.startup()
    try:
        with pytest.raises(error, match=match):
            await flow.kiq_dataflow(**inputs)
    finally:
        await flow.broker.shutdown()
    assert sends.count == 0, "something was sent before the refusal"


def small(parts: tuple[InMemoryBroker, Any, Any, Sends]) -> BulkDataflow:
    broker, seed, combine, _ = parts
    flow = BulkDataflow(broker, [seed, combine])
    flow.feed("seed", flow.add_nodes(2, task=0, output="s"))
    flow.add_nodes(2, task=1, output="c")
    return flow


def test_arrays_of_unequal_length_are_refused(parts: Any) -> None:
    flow = small(parts)
    with pytest.raises(InvalidValueError, match=r"equal lengths, got sources 2, targets 1"):
        flow.connect([0, 1], [2], "a")
    with pytest.raises(InvalidValueError, match=r"sources 1, targets 1, param 2"):
        flow.connect([0], [2], ["a", "b"])
    with pytest.raises(InvalidValueError, match=r"count 3, output 2"):
        flow.add_nodes(3, output=["p", "q"])
    assert flow.edge_count == 0 and flow.node_count == 4


def test_ids_that_are_not_ids_are_refused(parts: Any) -> None:
    flow = small(parts)
    with pytest.raises(InvalidValueError, match=r"targets\[1\] must be an id .* got -1"):
        flow.connect([0, 1], [2, -1], "a")
    with pytest.raises(InvalidValueError, match=r"sources\[0\] must be an id .* got 'x'"):
        flow.connect(["x"], [2], "a")
    with pytest.raises(InvalidValueError, match="task must be an index into the 2 task"):
        flow.add_nodes(1, task=2, output="z")
    with pytest.raises(InvalidValueError, match=r"task\[1\] must be an index into the 2 task"):
        flow.add_nodes(task=[0, 5], output="z")


async def test_a_node_id_out_of_range_is_refused(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0, 1], [2, 9], "a")
    unknown = r"unknown node id 9 \(the graph has 4 nodes\)"
    await refused(flow, parts[3], UnknownIdError, unknown, seed=1)


async def test_a_cycle_is_refused_naming_its_nodes(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0, 1, 2, 3], [2, 3, 3, 2], ["a", "a", "b", "b"])
    with pytest.raises(CycleError) as info:
        flow.build()
    assert set(info.value.cycle) == {"c0", "c1"}
    assert "nodes are in a cycle: c" in str(info.value)
    await refused(flow, parts[3], CycleError, "c0 -> c1 -> c0|c1 -> c0 -> c1", seed=1)


async def test_a_required_parameter_nothing_gives_is_refused(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0], [2], "a")  # c1 gets no `a`
    await refused(
        flow, parts[3], MissingInputError,
        r"node 'c1' \(task 'combine'\) is not given its parameter 'a'", seed=1,
    )  # fmt: skip
    broker, _, combine, sends = make_broker()
    lonely = BulkDataflow(broker, [combine])
    lonely.add_nodes(1, output="x")  # no node of `combine` is given `a` at all
    await refused(lonely, sends, MissingInputError, r"node 'x0' .* parameter 'a'")


async def test_an_external_input_not_given_is_refused(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0, 1], [2, 3], "a")
    missing = r"needs the external inputs 'seed'; also given unknown inputs 'sed' \(did you mean"
    await refused(flow, parts[3], MissingInputError, missing, sed=1)
    await refused(flow, parts[3], DataflowError, "unknown inputs 'other'", seed=1, other=2)


async def test_a_parameter_given_twice_or_not_taken_is_refused(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0, 1, 1], [2, 3, 3], "a")
    twice = "node 'c1' .* given parameter 'a' more than once"
    await refused(flow, parts[3], DataflowError, twice, seed=1)
    flow = small(parts)
    flow.connect([0, 1], [2, 3], ["a", "bb"])
    unknown = "'bb', which its task 'combine' does not take; did you mean 'b'"
    await refused(flow, parts[3], DataflowError, unknown, seed=1)


async def test_two_nodes_of_one_name_are_refused(parts: Any) -> None:
    broker, seed, _, sends = parts
    flow = BulkDataflow(broker, [seed])
    flow.feed("seed", flow.add_nodes(12, output="v"))
    flow.feed("seed", flow.add_nodes(3, output="v1"))  # v10, v11 twice
    await refused(
        flow, sends, DuplicateOutputError, "output 'v10' is the name of two nodes", seed=1
    )
    flow = BulkDataflow(broker, [seed])
    flow.feed("seed", flow.add_nodes(3, output="v"))
    flow.feed("seed", flow.add_nodes(task=[0], output=["v2"]))
    both = "output 'v2' is the name of two nodes: 3 and 2"
    await refused(flow, sends, DuplicateOutputError, both, seed=1)
    flow = BulkDataflow(broker, [seed])
    flow.feed("seed", flow.add_nodes(3, output="v"))
    flow.feed("seed", flow.add_nodes(3, output="v1"))  # v10.. never meet v0..v2: fine
    assert flow.build().node_count == 6


async def test_unserializable_inputs_are_refused(parts: Any) -> None:
    flow = small(parts)
    flow.connect([0, 1], [2, 3], "a")
    await refused(flow, parts[3], UnserializableError, "input 'seed'", seed=math.nan)


def test_what_is_not_a_task_of_the_broker_is_refused() -> None:
    broker, seed, _, _ = make_broker()
    other = InMemoryBroker()

    @other.task
    async def elsewhere(x: int) -> int:
        return x

    async def plain(x: int) -> int:
        return x

    with pytest.raises(NotATaskError, match="plain is not a taskiq task"):
        BulkDataflow(broker, [seed, plain])
    with pytest.raises(NotATaskError, match="'elsewhere' is registered on another broker"):
        BulkDataflow(broker, [elsewhere])
    with pytest.raises(InvalidValueError, match="listed twice"):
        BulkDataflow(broker, [seed, seed])
    with pytest.raises(InvalidValueError, match="at least one task"):
        BulkDataflow(broker, [])


def test_the_scale_bench_declares_runs_and_measures_a_bulk_dataflow() -> None:
    from taskiq_flow.bench.workloads import bulk_dataflow_scale

    figures = bulk_dataflow_scale(2_000)
    assert figures["nodes"] == 2_000
    for key in ("build_us_per_node", "build_cpu_us_per_node", "run_us_per_node"):
        assert figures[key] > 0, key
    assert 0 < figures["peak_rss_over_import_mib"] < figures["peak_rss_mib"]
