"""Every reason a task waits, explained in one sentence from the core's own record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import until
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    Pipeline,
    PipelineCancelledError,
    ResourceAwareWorkerPool,
    RetryPolicy,
    StepFailedError,
    UnknownIdError,
    pipeline_task,
)
from taskiq_flow.optimization.parallel import set_max_parallel_tasks
from taskiq_flow.resources import CPUProfile, ResourceProfile


def gated(broker: InMemoryBroker, name: str, output: str, gate: asyncio.Event, **meta: Any) -> Any:
    """A task that runs until ``gate`` is set; it takes ``x`` (or ``inputs`` if given)."""

    async def task(x: int = 0, y: int = 0) -> int:
        await gate.wait()
        return x + y

    task.__name__ = name
    return broker.task(task_name=name)(pipeline_task(output=output, **meta)(task))


async def started(run: asyncio.Future[Any], pipeline: Any, step: str, needle: str) -> str:
    """Waits until ``pipeline.explain(step)`` mentions ``needle``, and returns it."""
    await until(lambda: _explained(pipeline, step, needle) or run.done())
    return str(pipeline.explain(step))


def _explained(pipeline: Any, step: str, needle: str) -> bool:
    try:
        return needle in pipeline.explain(step)
    except Exception:
        return False


async def test_waiting_for_inputs(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()
    first = gated(broker, "first", "a", gate)
    second = gated(broker, "second", "b", gate)
    pipeline = DataflowPipeline(broker).add_dataflow_task(first)
    pipeline.add_dataflow_task(second, inputs={"x": "a"})
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    said = await started(run, pipeline, "second", "waiting for")
    assert said.startswith("waiting for 1 input: 'first'"), said
    assert (await started(run, pipeline, "first", "running")).startswith("running")
    gate.set()
    assert await run == {"a": 1, "b": 1}
    assert pipeline.explain("second") == "done: step 'second'"


async def test_waiting_for_a_step_cap(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()

    @broker.task
    async def resize(x: int) -> int:
        await gate.wait()
        return x

    handle = await Pipeline(broker).map(resize, range(5), max_parallel=2).kiq()
    await until(lambda: "step cap" in handle.explain("map(resize)"))
    said = handle.explain("map(resize)")
    assert said.startswith(
        "waiting: step cap 'map(resize)' is full (2/2 in flight); next free slot when any of 2 "
        "finishes"
    ), said
    gate.set()
    assert (await handle.wait_result(timeout=10)).return_value == list(range(5))


async def test_waiting_for_the_pipeline_cap(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()
    tasks = [gated(broker, f"t{i}", f"o{i}", gate) for i in range(3)]
    pipeline = DataflowPipeline.from_tasks(broker, tasks, max_parallel=2)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    said = await started(run, pipeline, "t2", "pipeline's cap")
    assert said.startswith("waiting: the pipeline's cap is full (2/2 in flight)"), said
    gate.set()
    await run


async def test_waiting_for_the_process_cap(broker: InMemoryBroker) -> None:
    set_max_parallel_tasks(1)
    gate = asyncio.Event()
    one = DataflowPipeline.from_tasks(broker, [gated(broker, "one", "a", gate)])
    other = DataflowPipeline.from_tasks(broker, [gated(broker, "other", "b", gate)])
    first = asyncio.ensure_future(one.kiq_dataflow(x=1))
    await started(first, one, "one", "running")
    second = asyncio.ensure_future(other.kiq_dataflow(x=1))
    said = await started(second, other, "other", "process-wide cap")
    assert said.startswith("waiting: the process-wide cap is full (1/1 in flight across runs)")
    gate.set()
    assert await asyncio.gather(first, second) == [{"a": 1}, {"b": 1}]


async def test_waiting_for_a_rate_token(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()
    gate.set()
    task = gated(broker, "limited", "first", gate, rate=0.5)
    pipeline = DataflowPipeline(broker).add_dataflow_task(task)
    pipeline.add_dataflow_task(task, output="second", inputs={"x": "x"})
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    said = await started(run, pipeline, "limited", "rate limit")
    assert said.startswith("waiting: rate limit of 'limited' (0.5/s); next token in 2"), said
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError):
        await run


async def test_waiting_for_a_worker_with_room(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()

    @broker.task
    @CPUProfile(cpu_units=2)
    @pipeline_task(output="a")
    async def heavy(x: int) -> int:
        await gate.wait()
        return x

    pool = ResourceAwareWorkerPool([{"name": "box", "cpu_cores": 3}])
    pipeline = DataflowPipeline(broker).add_dataflow_task(heavy)
    pipeline.add_dataflow_task(heavy, output="b", inputs={"x": "x"}).with_worker_pool(pool)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    said = await started(run, pipeline, "heavy", "no worker")
    assert said.startswith("waiting: no worker has room for it now; on the best candidate box: cpu")
    gate.set()
    assert await run == {"a": 1, "b": 1}


async def test_waiting_for_a_retry(broker: InMemoryBroker) -> None:
    calls: list[int] = []

    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=2, delay=30, jitter=0))
    async def flaky(x: int) -> int:
        calls.append(x)
        raise RuntimeError("boom")

    pipeline = DataflowPipeline(broker).add_dataflow_task(flaky)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    said = await started(run, pipeline, "flaky", "retry")
    assert said.startswith(
        "waiting: retry backoff after attempt 1 failed (RuntimeError: boom); next attempt in"
    ), said
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError):
        await run


async def test_skipped_and_cancelled_say_why(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="a")
    async def broken(x: int) -> int:
        raise ValueError("bad input")

    @broker.task
    @pipeline_task(output="b")
    async def after(a: int) -> int:
        return a

    pipeline = DataflowPipeline.from_tasks(broker, [broken, after], on_error="continue")
    with pytest.raises(StepFailedError):
        await pipeline.kiq_dataflow(x=1)
    assert pipeline.explain("after") == "skipped: step 'broken' failed before it could run"
    assert pipeline.explain("broken") == "failed: ValueError: bad input"

    gate = asyncio.Event()
    slow = gated(broker, "slow", "s", gate)
    later = gated(broker, "later", "l", gate)
    stopped = DataflowPipeline(broker).add_dataflow_task(slow)
    stopped.add_dataflow_task(later, inputs={"x": "s"})
    run = asyncio.ensure_future(stopped.kiq_dataflow(x=1))
    await started(run, stopped, "slow", "running")
    stopped.cancel()
    with pytest.raises(PipelineCancelledError):
        await run
    assert stopped.explain("later") == "cancelled: pipeline 'dataflow' was cancelled; cut: 'slow'"
    gate.set()
    with pytest.raises(UnknownIdError):
        stopped.explain("nope")


async def test_the_library_logs_what_goes_wrong_and_nothing_when_all_goes_well(
    broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="taskiq_flow")

    @broker.task
    @pipeline_task(output="ok")
    async def ok(x: int) -> int:
        return x

    await DataflowPipeline.from_tasks(broker, [ok]).kiq_dataflow(x=1)
    assert [r for r in caplog.records if r.name.startswith("taskiq_flow")] == []

    attempts: list[int] = []

    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=2, delay=0))
    async def flaky(x: int) -> int:
        attempts.append(x)
        raise RuntimeError(f"boom {len(attempts)}")

    with pytest.raises(StepFailedError):
        await DataflowPipeline(broker).add_dataflow_task(flaky).kiq_dataflow(x=1)
    ours = [r for r in caplog.records if r.name.startswith("taskiq_flow")]
    assert [r.levelname for r in ours] == ["INFO", "WARNING"]
    assert "step 'flaky' attempt 1 failed (RuntimeError: boom 1); retrying" in ours[0].getMessage()
    assert "failed for good after 2 attempt(s): RuntimeError: boom 2" in ours[1].getMessage()


async def test_a_lost_worker_and_a_label_no_live_worker_has(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()

    @broker.task
    @ResourceProfile(gpu=1, labels={"gpu": True})
    @pipeline_task(output="vector")
    async def embed(x: int) -> int:
        await gate.wait()
        return x

    adverts = [
        {"name": "gpu-box", "cpu_cores": 4, "gpu": 1, "labels": {"gpu": True}},
        {"name": "cpu-box", "cpu_cores": 4},
    ]

    async def discover() -> list[dict[str, Any]]:
        return list(adverts)

    pool = ResourceAwareWorkerPool(list(adverts)).watch(discover, interval=0.02)
    pipeline = DataflowPipeline(broker).add_dataflow_task(embed).with_worker_pool(pool)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    assert (await started(run, pipeline, "embed", "running")).startswith("running on gpu-box")
    adverts.pop(0)  # the only GPU worker stops advertising
    said = await started(run, pipeline, "embed", "no live worker")
    assert said.startswith(
        "waiting: no worker has room for it now; no live worker has label gpu=true (for "
    ), said
    assert said.endswith("; placed again after losing its worker 1 time(s)"), said
    pipeline.cancel()
    gate.set()
    with pytest.raises(PipelineCancelledError):
        await run
