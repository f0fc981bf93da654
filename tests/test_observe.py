"""Metrics and traces, read back from the real Prometheus client and OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from conftest import until
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    MapReduce,
    RetryPolicy,
    StepFailedError,
    observe,
    pipeline_task,
)


@pytest.fixture(autouse=True)
def no_observers() -> Iterator[None]:
    observe.disable()
    yield
    observe.disable()


async def test_prometheus_counts_what_runs_do(broker: InMemoryBroker) -> None:
    registry = CollectorRegistry()
    observe.enable_prometheus(registry)
    gate = asyncio.Event()

    @broker.task
    async def work(x: int) -> int:
        await gate.wait()
        return x

    run = asyncio.ensure_future(MapReduce.map(broker, work, range(10), max_parallel=4))
    await until(
        lambda: registry.get_sample_value("taskiq_flow_tasks_in_flight", {"step": "work"}) == 4
    )
    gate.set()
    assert await run == list(range(10))
    assert registry.get_sample_value("taskiq_flow_tasks_in_flight", {"step": "work"}) == 0
    durations = registry.get_sample_value(
        "taskiq_flow_step_duration_seconds_count", {"step": "work"}
    )
    assert durations == 10
    # A map's max_parallel is its run's cap: the four sent at once were "ready" (sent in the round
    # they became ready); the six held back were held by the run's own cap, not a step's or the
    # process's.
    assert registry.get_sample_value("taskiq_flow_wait_seconds_count", {"reason": "ready"}) == 4
    assert registry.get_sample_value("taskiq_flow_wait_seconds_count", {"reason": "run_cap"}) == 6

    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=2, delay=0))
    async def flaky(x: int) -> int:
        raise RuntimeError("no")

    with pytest.raises(StepFailedError):
        await DataflowPipeline(broker).add_dataflow_task(flaky).kiq_dataflow(x=1)
    assert registry.get_sample_value("taskiq_flow_retries_total", {"step": "flaky"}) == 1
    assert registry.get_sample_value("taskiq_flow_dead_letters_total", {"step": "flaky"}) == 1


async def test_one_trace_per_run_one_span_per_attempt_fan_in_linked(
    broker: InMemoryBroker,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observe.enable_opentelemetry(provider)

    @broker.task
    @pipeline_task(output="a")
    async def left(x: int) -> int:
        return x

    @broker.task
    @pipeline_task(output="b")
    async def right(x: int) -> int:
        return x

    @broker.task
    @pipeline_task(output="c")
    async def join(a: int, b: int) -> int:
        return a + b

    pipeline = DataflowPipeline.from_tasks(broker, [left, right, join], name="fan-in")
    assert await pipeline.kiq_dataflow(x=2) == {"a": 2, "b": 2, "c": 4}
    spans = exporter.get_finished_spans()
    [run] = [s for s in spans if s.name == "taskiq_flow.run"]
    attempts = {
        s.attributes["taskiq_flow.step"]: s for s in spans if s.name == "taskiq_flow.attempt"
    }
    assert set(attempts) == {"left", "right", "join"}
    assert run.attributes["taskiq_flow.pipeline"] == "fan-in"
    assert run.attributes["taskiq_flow.state"] == "done"
    for span in attempts.values():
        assert span.context.trace_id == run.context.trace_id
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.attributes["taskiq_flow.wait_reason"] == "ready"
    linked = {link.context.span_id for link in attempts["join"].links}
    assert linked == {attempts["left"].context.span_id, attempts["right"].context.span_id}

    @broker.task
    @pipeline_task(output="z")
    async def broken(x: int) -> int:
        raise ValueError("bad")

    exporter.clear()
    with pytest.raises(StepFailedError):
        await DataflowPipeline(broker).add_dataflow_task(broken).kiq_dataflow(x=1)
    [failed] = [s for s in exporter.get_finished_spans() if s.name == "taskiq_flow.attempt"]
    assert failed.status.status_code is StatusCode.ERROR
    assert "ValueError: bad" in (failed.status.description or "")


async def test_a_progress_bar_for_any_run(broker: InMemoryBroker) -> None:
    import io

    from rich.console import Console

    from taskiq_flow.progress import progress_bar

    @broker.task
    async def work(x: int) -> int:
        return x

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    with progress_bar("work", console=console) as bar:
        assert await MapReduce.map(broker, work, range(25), on_progress=bar) == list(range(25))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines[-1].startswith("work") and "25/25" in lines[-1]
    assert all(len(line) <= 80 for line in lines)
