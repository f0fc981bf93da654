"""Runs that grow, in process: a dataflow step mapped over another's output item by item, tasks
that add tasks (``Expand``), steps that skip (``Skip``) — each on the one runner, its caps exact."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowError,
    DataflowPipeline,
    Expand,
    InvalidValueError,
    PipelineTrackingManager,
    Skip,
    StepFailedError,
    pipeline_task,
)
from tests.conftest import Gauge, until

pytestmark = pytest.mark.usefixtures("lane")


def _crawl_tree(pages: int, fanout: int) -> dict[int, list[int]]:
    """A tree of ``pages`` pages: page ``i`` links to ``fanout * i + 1`` ... (breadth first)."""
    return {
        i: [c for c in range(fanout * i + 1, fanout * i + fanout + 1) if c < pages]
        for i in range(pages)
    }


async def test_each_maps_item_by_item_with_no_barrier_and_an_exact_step_cap(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    counted_first = asyncio.Event()
    fetched: list[str] = []

    @broker.task
    @pipeline_task(output="pages")
    async def list_pages(site: str) -> list[str]:
        return [f"{site}/{i}" for i in range(40)]

    @broker.task
    @pipeline_task(output="html", each={"url": "pages"}, max_parallel=4)
    async def fetch(url: str) -> str:
        gauge.enter(url)
        try:
            if url == "s/39":  # the last fetch waits for item 0 to have been counted
                await counted_first.wait()
            await asyncio.sleep(0)
            fetched.append(url)
            return url.upper()
        finally:
            gauge.leave()

    @broker.task
    @pipeline_task(output="words", each={"page": "html"})
    async def count(page: str) -> int:
        if page == "S/0":
            counted_first.set()
        return len(page)

    @broker.task
    @pipeline_task(output="total")
    async def total(words: list[int]) -> int:
        return sum(words)

    pipeline = DataflowPipeline.from_tasks(broker, [list_pages, fetch, count, total])
    with anyio.fail_after(30):  # a barrier between fetch and count would never end
        outputs = await pipeline.kiq_dataflow(site="s")
    assert outputs["html"] == [f"S/{i}" for i in range(40)]
    assert outputs["words"] == [len(f"S/{i}") for i in range(40)]
    assert outputs["total"] == sum(len(f"S/{i}") for i in range(40))
    assert gauge.peak == 4
    assert fetched[-1] == "s/39"


async def test_an_empty_list_gives_empty_lists_downstream(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="pages")
    async def list_pages(site: str) -> list[str]:
        return []

    @broker.task
    @pipeline_task(output="html", each={"url": "pages"})
    async def fetch(url: str) -> str:
        raise AssertionError("no item: never called")

    @broker.task
    @pipeline_task(output="words", each={"page": "html"})
    async def count(page: str) -> int:
        raise AssertionError("no item: never called")

    @broker.task
    @pipeline_task(output="total")
    async def total(words: list[int]) -> int:
        return sum(words)

    pipeline = DataflowPipeline.from_tasks(broker, [list_pages, fetch, count, total])
    with anyio.fail_after(10):
        assert await pipeline.kiq_dataflow(site="s") == {
            "pages": [],
            "html": [],
            "words": [],
            "total": 0,
        }


async def test_each_zips_parameters_and_takes_external_lists(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="pairs", each={"a": "xs", "b": "ys"})
    async def pair(a: int, b: str, sep: str = "-") -> str:
        return f"{a}{sep}{b}"

    pipeline = DataflowPipeline.from_tasks(broker, [pair])
    assert await pipeline.kiq_dataflow(xs=[1, 2], ys=["a", "b"]) == {"pairs": ["1-a", "2-b"]}
    with pytest.raises(StepFailedError, match=r"as long as each other: 'a' has 2, 'b' has 3"):
        await pipeline.kiq_dataflow(xs=[1, 2], ys=["a", "b", "c"])
    with pytest.raises(StepFailedError, match=r"maps over 'a' item by item, which must be a list"):
        await pipeline.kiq_dataflow(xs=5, ys=["a"])


async def test_add_dataflow_task_takes_each_and_bad_each_is_refused(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    async def double(x: int) -> int:
        return 2 * x

    pipeline = DataflowPipeline(broker).add_dataflow_task(
        double, output="doubled", each={"x": "numbers"}
    )
    assert await pipeline.kiq_dataflow(numbers=[1, 2, 3]) == {"doubled": [2, 4, 6]}
    for bad in ("numbers", {}, {"x": ""}, {1: "numbers"}):
        with pytest.raises(InvalidValueError, match="each must map parameter names"):
            pipeline_task(each=bad)  # type: ignore[arg-type]
    with pytest.raises(DataflowError, match="has no parameter 'y'"):
        DataflowPipeline(broker).add_dataflow_task(double, each={"y": "numbers"})
    with pytest.raises(InvalidValueError, match="pipeline_task max_parallel"):
        pipeline_task(max_parallel=0)


async def test_skip_gives_defaults_skips_the_rest_and_the_run_ends_done(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    @pipeline_task(output="fresh")
    async def check(since: int) -> list[int]:
        raise Skip("nothing new since the last run")

    @broker.task
    @pipeline_task(output="report")
    async def report(fresh: list[int] | None = None) -> str:
        return "empty" if fresh is None else f"{len(fresh)} new"

    @broker.task
    @pipeline_task(output="stored")
    async def store(fresh: list[int]) -> int:
        raise AssertionError("its input was skipped: never called")

    @broker.task
    @pipeline_task(output="indexed")
    async def index(stored: int) -> int:
        raise AssertionError("skipped too: never called")

    pipeline = DataflowPipeline.from_tasks(broker, [check, report, store, index])
    assert await pipeline.kiq_dataflow(since=3) == {"report": "empty"}
    assert pipeline.skipped == {
        "check": "nothing new since the last run",
        "store": "'check' skipped: nothing new since the last run",
        "index": "'check' skipped: nothing new since the last run",
    }


async def test_a_skipped_item_is_left_out_of_an_each_step(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="evens", each={"n": "numbers"})
    async def keep_even(n: int) -> int:
        if n % 2:
            raise Skip("odd")
        return n

    @broker.task
    @pipeline_task(output="halves", each={"n": "evens"})
    async def halve(n: int) -> int:
        return n // 2

    pipeline = DataflowPipeline.from_tasks(broker, [keep_even, halve])
    assert await pipeline.kiq_dataflow(numbers=list(range(10))) == {
        "evens": [0, 2, 4, 6, 8],
        "halves": [0, 1, 2, 3, 4],
    }
    assert pipeline.skipped == {}


async def test_a_recursive_crawl_of_ten_thousand_pages_never_exceeds_its_cap(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    tree = _crawl_tree(10_000, 7)

    @broker.task
    async def crawl(page: int) -> Any:
        gauge.enter()
        try:
            await asyncio.sleep(0)
            links = tree[page]
            return Expand(crawl, links, max_parallel=32) if links else page
        finally:
            gauge.leave()

    @broker.task
    @pipeline_task(output="site")
    async def start(root: int) -> Any:
        return Expand(crawl, [root], max_parallel=32)

    def flatten(value: Any) -> list[int]:
        return [value] if isinstance(value, int) else [p for v in value for p in flatten(v)]

    pipeline = DataflowPipeline.from_tasks(broker, [start])
    with anyio.fail_after(120):
        outputs = await pipeline.kiq_dataflow(root=0)
    leaves = sorted(flatten(outputs["site"]))
    assert leaves == sorted(p for p, links in tree.items() if not links)
    assert 1 < gauge.peak <= 32
    assert len(gauge.started) == 10_000


async def test_expand_then_reduces_and_the_pipeline_cap_bounds_every_descendant(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    @broker.task
    async def square(x: int) -> int:
        gauge.enter()
        try:
            await asyncio.sleep(0)
            return x * x
        finally:
            gauge.leave()

    @broker.task
    async def add(values: list[int]) -> int:
        return sum(values)

    @broker.task
    @pipeline_task(output="total")
    async def fan(n: int) -> Expand:
        return Expand(square, list(range(n)), then=add)

    pipeline = DataflowPipeline.from_tasks(broker, [fan], max_parallel=3)
    assert await pipeline.kiq_dataflow(n=50) == {"total": sum(x * x for x in range(50))}
    assert gauge.peak == 3


async def test_an_expansion_naming_an_unknown_task_fails_its_step_clearly(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    @pipeline_task(output="out")
    async def fan(n: int) -> Expand:
        return Expand("no.such:task", [1, 2])

    @broker.task
    @pipeline_task(output="bad")
    async def bad_items(n: int) -> Expand:
        return Expand(fan, {1, 2})  # type: ignore[arg-type]

    with pytest.raises(StepFailedError, match=r"no\.such:task.*does not know"):
        await DataflowPipeline.from_tasks(broker, [fan]).kiq_dataflow(n=1)
    with pytest.raises(StepFailedError, match="Expand items must be a list or a tuple"):
        await DataflowPipeline.from_tasks(broker, [bad_items]).kiq_dataflow(n=1)


async def test_a_failed_child_fails_its_step_and_explain_names_a_childs_step(
    broker: InMemoryBroker,
) -> None:
    release = asyncio.Event()

    @broker.task
    async def part(x: int) -> int:
        if x == 3:
            await release.wait()
            raise ValueError("part 3 is broken")
        return x

    @broker.task
    @pipeline_task(output="parts")
    async def split(n: int) -> Expand:
        return Expand(part, list(range(n)))

    pipeline = DataflowPipeline.from_tasks(broker, [split])
    run = asyncio.ensure_future(pipeline.kiq_dataflow(n=5))
    engine = await until(lambda: pipeline._last_engine, what="the run to start")
    runner = await until(lambda: engine.last_run, what="the runner")
    await until(lambda: runner.plan.node_count == 6, what="the children")
    assert "running" in pipeline.explain("split/part")
    release.set()
    with pytest.raises(StepFailedError, match="part 3 is broken") as failed:
        await run
    assert set(failed.value.failures) == {"split/part"}
    # Going on after a failure: the step that added the failed task fails too.
    release.set()
    with pytest.raises(StepFailedError, match="part 3 is broken") as failed:
        await pipeline.with_on_error("continue").kiq_dataflow(n=5)
    assert set(failed.value.failures) == {"split/part", "split"}


async def test_tracking_counts_the_tasks_a_run_grew(broker: InMemoryBroker) -> None:
    @broker.task
    async def part(x: int) -> int:
        return x

    @broker.task
    @pipeline_task(output="parts")
    async def split(n: int) -> Expand:
        return Expand(part, list(range(n)))

    @broker.task
    @pipeline_task(output="doubled", each={"x": "parts"})
    async def double(x: int) -> int:
        return 2 * x

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [split, double]).with_tracking(tracking)
    assert await pipeline.kiq_dataflow(n=6) == {
        "parts": [0, 1, 2, 3, 4, 5],
        "doubled": [0, 2, 4, 6, 8, 10],
    }
    [status] = await tracking.list_pipelines()
    steps = {s.name: (s.tasks, s.tasks_done, s.status) for s in status.steps}
    assert steps == {
        "split": (1, 1, "done"),
        "double": (6, 6, "done"),
        "split/part": (6, 6, "done"),
    }
    assert status.status == "done"


async def test_skip_in_a_sequential_pipeline_skips_the_rest_and_says_so(
    broker: InMemoryBroker,
) -> None:
    from taskiq_flow import Pipeline

    @broker.task
    async def fetch(day: str) -> list[int]:
        if day == "sunday":
            raise Skip("no data on sundays")
        return [1, 2, 3]

    @broker.task
    async def double(x: int) -> int:
        if x == 2:
            raise Skip("two is not wanted")
        return 2 * x

    @broker.task
    async def total(values: list[int]) -> int:
        return sum(values)

    pipeline = Pipeline(broker, fetch).map(double).call_next(total)
    result = await (await pipeline.kiq("monday")).wait_result(timeout=10)
    assert (result.is_err, result.return_value, result.labels) == (False, 8, {})
    result = await (await pipeline.kiq("sunday")).wait_result(timeout=10)
    assert (result.is_err, result.return_value) == (False, None)
    assert result.labels["skipped"] == {
        "fetch": "no data on sundays",
        "map(double)": "'fetch' skipped: no data on sundays",
        "total": "'fetch' skipped: no data on sundays",
    }


async def test_mapreduce_leaves_skipped_items_out(broker: InMemoryBroker) -> None:
    from taskiq_flow import MapReduce

    @broker.task
    async def odd_only(x: int) -> int:
        if x % 2 == 0:
            raise Skip("even")
        return x

    @broker.task
    async def add(a: int, b: int) -> int:
        return a + b

    assert await MapReduce.map(broker, odd_only, range(10)) == [1, 3, 5, 7, 9]
    assert await MapReduce.map_reduce(broker, odd_only, add, range(10)) == 25
    assert await MapReduce.map_reduce(broker, odd_only, add, [2, 3, 4, 6]) == 3
    with pytest.raises(DataflowError, match="every item was skipped"):
        await MapReduce.map_reduce(broker, odd_only, add, [2, 4])
    seen = [v async for v in MapReduce.stream(broker, odd_only, range(10), max_parallel=3)]
    assert sorted(seen) == [1, 3, 5, 7, 9]


async def test_a_pipeline_is_one_run_with_one_cap_record_and_resume(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    from taskiq_flow import Pipeline

    failing = {"on": True}

    @broker.task
    async def numbers(n: int) -> list[int]:
        return list(range(n))

    @broker.task
    async def slow_square(x: int) -> int:
        gauge.enter(str(x))
        try:
            await asyncio.sleep(0)
            if failing["on"] and x == 7:
                raise ValueError("seven")
            return x * x
        finally:
            gauge.leave()

    @broker.task
    async def total(values: list[int]) -> int:
        return sum(values)

    tracking = PipelineTrackingManager()
    pipeline = (
        Pipeline(broker, numbers, max_parallel=3)
        .map(slow_square, max_parallel=5)
        .call_next(total)
        .with_tracking(tracking)
    )
    handle = await pipeline.kiq(10)
    failed = await handle.wait_result(timeout=10)
    assert failed.is_err and "seven" in str(failed.error)
    assert gauge.peak == 3  # the pipeline's cap bounds the map's items too: one run
    [status] = await tracking.list_pipelines()
    assert [(s.name, s.tasks) for s in status.steps] == [
        ("numbers", 1),
        ("map(slow_square)", 10),
        ("total", 1),
    ]
    ran = len(gauge.started)
    failing["on"] = False
    resumed = await (await pipeline.resume(handle.pipeline_id, 10)).wait_result(timeout=10)
    assert (resumed.is_err, resumed.return_value) == (False, sum(x * x for x in range(10)))
    # Only what had not finished ran again: the failed item, and what never started.
    again = gauge.started[ran:]
    assert "7" in again and len(again) < 10
    assert (await tracking.get_status(handle.pipeline_id)).status == "done"


async def test_explain_says_what_an_open_step_and_a_capped_expansion_wait_for(
    broker: InMemoryBroker,
) -> None:
    release = asyncio.Event()

    @broker.task
    async def part(x: int) -> int:
        await release.wait()
        return x

    @broker.task
    @pipeline_task(output="parts")
    async def split(n: int) -> Expand:
        return Expand(part, list(range(n)), max_parallel=1)

    @broker.task
    @pipeline_task(output="maybe")
    async def gate(parts: list[int]) -> int:
        raise Skip("nothing to gate")

    @broker.task
    @pipeline_task(output="after")
    async def after(maybe: int) -> int:
        return maybe

    pipeline = DataflowPipeline.from_tasks(broker, [split, gate, after])
    run = asyncio.ensure_future(pipeline.kiq_dataflow(n=3))
    engine = await until(lambda: pipeline._last_engine, what="the run to start")
    runner = await until(lambda: engine.last_run, what="the runner")
    await until(lambda: runner.plan.node_count == 6, what="the children")
    assert pipeline.explain("split").startswith("open: waiting for 3 tasks it added")
    waiting = runner.explain(4)
    assert waiting.startswith("waiting: the cap of an expansion by step 'split' is full (1/1")
    assert waiting.endswith("a task of step 'split/part' added by node 0")
    release.set()
    assert await run == {"parts": [0, 1, 2]}
    assert pipeline.explain("gate") == "skipped: nothing to gate"
    assert pipeline.explain("after") == "skipped: step 'gate' skipped (nothing to gate)"


async def test_the_grown_shape_is_drawn_collapsed_and_in_the_report(
    broker: InMemoryBroker,
) -> None:
    from taskiq_flow.pictures import to_mermaid
    from taskiq_flow.report import render_report

    @broker.task
    async def part(x: int) -> int:
        return x

    @broker.task
    @pipeline_task(output="parts")
    async def split(n: int) -> Expand:
        return Expand(part, list(range(n)))

    @broker.task
    @pipeline_task(output="doubled", each={"x": "parts"})
    async def double(x: int) -> int:
        return 2 * x

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [split, double]).with_tracking(tracking)
    await pipeline.kiq_dataflow(n=500)
    graph = pipeline.run_graph()
    assert len(graph.nodes) == 2 + 500 + 500
    drawn = to_mermaid(graph, collapse=True)
    assert "split/part" in drawn and "500" in drawn
    [status] = await tracking.list_pipelines()
    page = render_report(status, graph)
    assert "split/part" in page and "double" in page


async def test_a_declared_step_cap_holds_in_every_shape(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    from taskiq_flow import MapReduce, Pipeline

    @broker.task
    @pipeline_task(max_parallel=2)
    async def work(x: int) -> int:
        gauge.enter()
        try:
            await asyncio.sleep(0)
            return x
        finally:
            gauge.leave()

    assert await MapReduce.map(broker, work, range(20)) == list(range(20))
    assert gauge.peak == 2
    gauge.peak = 0
    result = await (await Pipeline(broker).map(work, range(20)).kiq()).wait_result(timeout=10)
    assert result.return_value == list(range(20))
    assert gauge.peak == 2
    gauge.peak = 0
    assert await DataflowPipeline(broker).add_dataflow_task(
        work, output="out", each={"x": "xs"}
    ).kiq_dataflow(xs=list(range(20))) == {"out": list(range(20))}
    assert gauge.peak == 2


async def test_a_resumed_run_grows_again_and_runs_only_what_had_not_finished(
    broker: InMemoryBroker,
) -> None:
    down = {3}
    ran: list[int] = []

    @broker.task
    async def part(x: int) -> int:
        ran.append(x)
        if x in down:
            raise ConnectionError("down")
        return x

    @broker.task
    @pipeline_task(output="parts")
    async def split(n: int) -> Expand:
        return Expand(part, list(range(n)))

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [split]).with_tracking(tracking)
    with pytest.raises(StepFailedError, match="down"):
        await pipeline.with_on_error("continue").kiq_dataflow(n=5)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    down.clear()
    ran.clear()
    assert await pipeline.resume(pipeline.pipeline_id or "", n=5) == {"parts": [0, 1, 2, 3, 4]}
    assert ran == [3]  # the children that finished are not run again
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert status.status == "done"
    assert {s.name: (s.tasks, s.tasks_done, s.status) for s in status.steps} == {
        "split": (1, 1, "done"),
        "split/part": (5, 5, "done"),
    }


async def test_hostile_expansions_and_skips_end_clearly(broker: InMemoryBroker) -> None:
    class Unshowable:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        __repr__ = __str__

    @broker.task
    async def child(x: Any) -> Any:
        raise AssertionError("never sent")

    @broker.task
    @pipeline_task(output="a")
    async def generator_item(n: int) -> Expand:
        return Expand(child, [(i for i in range(3))])

    @broker.task
    @pipeline_task(output="b")
    async def unsendable_item(n: int) -> Expand:
        return Expand(child, [1, Unshowable()])

    @broker.task
    @pipeline_task(output="c")
    async def odd_skip(n: int) -> int:
        raise Skip(Unshowable())  # type: ignore[arg-type]

    with pytest.raises(StepFailedError, match=r"item 0\) cannot be sent: it is a one-shot"):
        await DataflowPipeline.from_tasks(broker, [generator_item]).kiq_dataflow(n=1)
    with pytest.raises(StepFailedError, match=r"\(step 'unsendable_item', item 1\)"):
        await DataflowPipeline.from_tasks(broker, [unsendable_item]).kiq_dataflow(n=1)
    skipping = DataflowPipeline.from_tasks(broker, [odd_skip])
    assert await skipping.kiq_dataflow(n=1) == {}
    assert skipping.skipped == {"odd_skip": "<its str() raised RuntimeError>"}
