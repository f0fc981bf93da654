"""Sequential pipelines: the taskiq-pipelines API (checked against taskiq-pipelines itself),
the guide's map form, bounds, errors, cancellation and tracking."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import taskiq_pipelines
from conftest import Gauge
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import (
    AbortPipeline,
    DataflowError,
    InvalidValueError,
    NotATaskError,
    Pipeline,
    PipelineCancelledError,
    PipelineMiddleware,
    PipelineTrackingManager,
    StepFailedError,
    UnknownIdError,
    UnserializableError,
)

pytestmark = pytest.mark.usefixtures("lane")


def toolkit(broker: InMemoryBroker, gauge: Gauge | None = None) -> dict[str, Any]:
    @broker.task
    async def numbers(n: int) -> list[int]:
        return list(range(n))

    @broker.task
    async def square(x: int) -> int:
        if gauge is not None:
            gauge.enter()
            await asyncio.sleep(0.005)  # runs a while: tasks overlap up to the cap
            gauge.leave()
        return x * x

    @broker.task
    async def is_even(x: int) -> bool:
        return x % 2 == 0

    @broker.task
    async def total(xs: list[int], offset: int = 0) -> int:
        return sum(xs) + offset

    @broker.task
    async def describe(value: Any = None, label: str = "v") -> str:
        return f"{label}={value}"

    @broker.task
    async def fail(x: Any) -> Any:
        raise RuntimeError("bad item")

    @broker.task
    async def abort(x: Any) -> Any:
        raise AbortPipeline(reason="stop here")

    return locals()


def build(cls: Any, broker: InMemoryBroker, t: dict[str, Any]) -> Any:
    return (
        cls(broker, t["numbers"])
        .map(t["square"])
        .filter(t["is_even"])
        .call_next(t["total"], offset=1)
        .call_next(t["describe"], param_name="value", label="sum")
    )


async def test_same_results_as_taskiq_pipelines() -> None:
    theirs_broker = InMemoryBroker().with_middlewares(taskiq_pipelines.PipelineMiddleware())
    ours_broker = InMemoryBroker().with_middlewares(PipelineMiddleware())
    theirs = build(taskiq_pipelines.Pipeline, theirs_broker, toolkit(theirs_broker))
    ours = build(Pipeline, ours_broker, toolkit(ours_broker))
    for n in (0, 1, 7):
        expected = await (await theirs.kiq(n)).wait_result(check_interval=0.01, timeout=5)
        got = await (await ours.kiq(n)).wait_result(check_interval=0.01, timeout=5)
        assert not got.is_err and not expected.is_err
        assert got.return_value == expected.return_value


async def test_call_after_group_and_explicit_map_items(broker: InMemoryBroker) -> None:
    t = toolkit(broker)
    pipeline = (
        Pipeline(broker, t["numbers"])
        .call_after(t["describe"])
        .group([t["describe"], t["describe"]], param_name="value")
        .map(t["square"], [1, 2, 3], max_parallel=2)
        .call_next(t["total"], "xs")
    )
    result = await (await pipeline.kiq(3)).wait_result()
    assert (result.is_err, result.return_value) == (False, 14)


async def test_map_bound_and_order(broker: InMemoryBroker, gauge: Gauge) -> None:
    t = toolkit(broker, gauge)
    items = list(range(60))
    pipeline = Pipeline(broker, t["numbers"]).map(t["square"], items, max_parallel=10)
    result = await (await pipeline.kiq(0)).wait_result()
    assert result.return_value == [x * x for x in items]
    assert gauge.peak == 10


async def test_large_map_on_a_default_in_memory_broker(broker: InMemoryBroker) -> None:
    t = toolkit(broker)
    pipeline = (
        Pipeline(broker, t["numbers"]).map(t["square"], max_parallel=50).call_next(t["total"])
    )
    result = await (await pipeline.kiq(10_000)).wait_result(timeout=60)
    assert result.return_value == sum(x * x for x in range(10_000))


async def test_failures_are_error_results(broker: InMemoryBroker) -> None:
    t = toolkit(broker)
    failed = await (await Pipeline(broker, t["numbers"]).map(t["fail"]).kiq(3)).wait_result()
    assert failed.is_err and isinstance(failed.error, StepFailedError)
    assert "map(fail)" in str(failed.error) and "bad item" in str(failed.error)
    skipped = await (
        await Pipeline(broker, t["numbers"]).map(t["fail"], skip_errors=True).kiq(3)
    ).wait_result()
    assert (skipped.is_err, skipped.return_value) == (False, [])
    aborted = await (
        await Pipeline(broker, t["numbers"]).call_next(t["abort"]).kiq(3)
    ).wait_result()
    assert aborted.is_err and isinstance(aborted.error, AbortPipeline)
    assert aborted.error.reason == "stop here"


async def test_bad_pipelines_are_refused_before_sending(broker: InMemoryBroker) -> None:
    t = toolkit(broker)
    with pytest.raises(DataflowError, match="Pipeline is empty"):
        await Pipeline(broker).kiq()
    with pytest.raises(DataflowError, match="needs items: give them as map"):
        await Pipeline(broker).map(t["square"]).kiq()
    with pytest.raises(DataflowError, match="has its own items; kiq\\(\\) takes no arguments"):
        await Pipeline(broker).map(t["square"], [1, 2]).kiq(5)
    with pytest.raises(DataflowError, match="needs an iterable of items, got int"):
        await Pipeline(broker).map(t["square"]).kiq(5)
    with pytest.raises(NotATaskError):
        Pipeline(broker, lambda x: x)
    with pytest.raises(UnserializableError):
        await Pipeline(broker, t["numbers"]).kiq(object())


async def test_cancel_and_tracking(broker: InMemoryBroker) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @broker.task
    async def slow(x: int) -> int:
        started.set()
        if x == 1:
            await release.wait()  # runs until the test has cancelled its run
        else:
            await asyncio.sleep(0.05)  # a duration for tracking to measure
        return x

    t = toolkit(broker)
    tracking = PipelineTrackingManager()
    pipeline = Pipeline(broker, slow).call_next(t["numbers"]).with_tracking(tracking)
    handle = await pipeline.kiq(1)
    await asyncio.wait_for(started.wait(), 10)
    handle.cancel()
    result = await handle.wait_result(timeout=5)
    assert result.is_err and isinstance(result.error, PipelineCancelledError)
    status = await tracking.get_status(handle.pipeline_id)
    assert status.status == "cancelled"
    release.set()
    await broker.wait_all()  # the cancelled run's task ends before the next run starts

    done = await (await pipeline.kiq(3)).wait_result()
    assert done.return_value == [0, 1, 2]
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert [(s.name, s.status) for s in status.steps] == [("slow", "done"), ("numbers", "done")]
    assert (status.steps[0].duration_ms or 0) >= 50


async def test_resume_skips_the_steps_that_finished(broker: InMemoryBroker) -> None:
    calls: list[str] = []
    healthy = False

    @broker.task
    async def fetch(n: int) -> list[int]:
        calls.append("fetch")
        return list(range(n))

    @broker.task
    async def flaky_total(xs: list[int]) -> int:
        calls.append("total")
        if not healthy:
            raise ConnectionError("down")
        return sum(xs)

    @broker.task
    async def describe(total: int) -> str:
        return f"total={total}"

    tracking = PipelineTrackingManager()
    pipeline = Pipeline(broker, fetch).call_next(flaky_total).call_next(describe)
    pipeline.with_tracking(tracking)
    failed = await (await pipeline.kiq(4)).wait_result()
    assert failed.is_err
    healthy = True
    resumed = await (
        await pipeline.resume(failed_id := pipeline.pipeline_id or "", 4)
    ).wait_result()
    assert (resumed.is_err, resumed.return_value) == (False, "total=6")
    assert calls == ["fetch", "total", "total"]  # fetch finished before: not sent again
    status = await tracking.get_status(failed_id)
    assert status.status == "done"


async def test_a_failed_map_step_keeps_what_finished_and_what_came_before(
    broker: InMemoryBroker,
) -> None:
    tools = toolkit(broker)

    @broker.task
    async def item(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x * 10

    handle = await Pipeline(broker, tools["numbers"]).map(item, max_parallel=4).kiq(20)
    result = await handle.wait_result(timeout=10)
    assert result.is_err and isinstance(result.error, StepFailedError)
    results = result.error.results
    assert results["numbers"] == list(range(20))
    partial = results["map(item)"]
    assert partial and 7 not in partial
    assert all(partial[i] == i * 10 for i in partial)


async def test_refused_at_once_no_broker_a_foreign_task_an_unknown_step(
    broker: InMemoryBroker,
) -> None:
    tools = toolkit(broker)
    other = InMemoryBroker()

    @other.task
    async def elsewhere(x: int) -> int:
        return x

    with pytest.raises(InvalidValueError, match=r"broker must be a taskiq broker.*NoneType"):
        Pipeline(None, tools["numbers"])  # type: ignore[arg-type]
    with pytest.raises(NotATaskError, match="'elsewhere' is registered on another broker"):
        Pipeline(broker, tools["numbers"]).map(elsewhere)
    handle = await Pipeline(broker, tools["numbers"]).map(tools["square"]).kiq(3)
    with pytest.raises(UnknownIdError, match=r"did you mean 'map\(square\)'"):
        handle.explain("map(sqaure)")
    assert (await handle.wait_result(timeout=10)).return_value == [0, 1, 4]
