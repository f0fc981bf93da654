"""Dataflow pipelines on the real InMemoryBroker: wiring, bounds, failures, retries, tracking."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Gauge, until
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import (
    CycleError,
    DataflowError,
    DataflowPipeline,
    DataflowRegistry,
    DeadLetterQueue,
    DuplicateOutputError,
    ExecutionEngine,
    InvalidValueError,
    MissingInputError,
    NotATaskError,
    PipelineCancelledError,
    PipelineTimeoutError,
    PipelineTrackingManager,
    RetryPolicy,
    StepFailedError,
    TaskNode,
    TaskTimeoutError,
    UnknownIdError,
    UnserializableError,
    pipeline_task,
)
from taskiq_flow.optimization.parallel import set_max_parallel_tasks

pytestmark = pytest.mark.usefixtures("lane")


def etl(broker: InMemoryBroker, calls: list[str]) -> list[Any]:
    """raw -> clean -> (total, count) -> report, plus an independent `ping` component."""

    @broker.task
    @pipeline_task(output="clean")
    async def clean(raw: list[int]) -> list[int]:
        calls.append("clean")
        return sorted(raw)

    @pipeline_task(output="total")  # above @broker.task works too
    @broker.task
    async def total(clean: list[int]) -> int:
        calls.append("total")
        return sum(clean)

    @broker.task
    @pipeline_task(output="count")
    def count(clean: list[int]) -> int:  # a sync task
        calls.append("count")
        return len(clean)

    @broker.task
    @pipeline_task(output="report")
    async def report(total: int, count: int, title: str) -> str:
        calls.append("report")
        return f"{title}: {total}/{count}"

    @broker.task
    @pipeline_task(output="pong")
    async def ping(title: str) -> str:
        calls.append("ping")
        return title.upper()

    return [clean, total, count, report, ping]


async def test_outputs_flow_by_name(broker: InMemoryBroker) -> None:
    calls: list[str] = []
    pipeline = DataflowPipeline.from_tasks(broker, etl(broker, calls), max_parallel=20)
    out = await pipeline.kiq_dataflow(raw=[3, 1, 2], title="sum")
    assert out == {
        "clean": [1, 2, 3],
        "total": 6,
        "count": 3,
        "report": "sum: 6/3",
        "pong": "SUM",
    }
    assert calls.index("clean") < calls.index("total") < calls.index("report")
    assert pipeline.dag.external_inputs == {"raw", "title"}


async def test_single_external_input_can_be_positional(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="doubled")
    async def double(chunk: list[int]) -> list[int]:
        return [2 * x for x in chunk]

    pipeline = DataflowPipeline(broker).add_dataflow_task(double)
    results = [await pipeline.kiq_dataflow(chunk) for chunk in ([1, 2], [3])]
    assert results == [{"doubled": [2, 4]}, {"doubled": [6]}]
    with pytest.raises(DataflowError, match="exactly one external input"):
        await pipeline.kiq_dataflow([1], chunk=[2])


async def test_registry_builds_an_analysable_dag(broker: InMemoryBroker) -> None:
    registry = DataflowRegistry()
    for task in etl(broker, []):
        registry.register_task(task)
    dag = registry.build_dag()
    order = dag.topological_order()
    assert order.index("clean") < order.index("total") < order.index("report")
    assert dag.levels() == [["clean", "ping"], ["total", "count"], ["report"]]
    assert dag.critical_path({"clean": 5, "total": 1, "count": 9, "report": 1}) == (
        15,
        ["clean", "count", "report"],
    )


async def test_the_first_repeated_output_is_named_with_both_producers(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    async def double(x: int) -> int:
        return 2 * x

    registry = DataflowRegistry()
    registry.register_task(double, output="a", inputs={"x": "seed"})
    registry.register_task(double, output="b", inputs={"x": "a"})
    registry.register_task(double, output="a", inputs={"x": "b"})  # one task, the same output
    registry.register_task(double, output="b", inputs={"x": "seed"})
    with pytest.raises(DuplicateOutputError, match=r"^output 'a' is produced by both 'double'"):
        registry.build_dag()
    registry = DataflowRegistry()
    registry.register_task(double, output="a", inputs={"x": "seed"})
    registry.register_task(double, output="b", inputs={"x": "a"})
    dag = registry.build_dag()
    assert dag.feeds == [(None,), (0,)] and dag.producer == {"a": 0, "b": 1}
    assert list(dag.sources) == [0] and list(dag.targets) == [1]
    assert dag.external_inputs == {"seed"}


async def test_bad_pipelines_are_refused_before_anything_is_sent(broker: InMemoryBroker) -> None:
    calls: list[str] = []
    tasks = etl(broker, calls)

    @broker.task
    @pipeline_task(output="a")
    async def make_a(b: int) -> int:
        calls.append("a")
        return b

    @broker.task
    @pipeline_task(output="b")
    async def make_b(a: int) -> int:
        calls.append("b")
        return a

    with pytest.raises(CycleError, match=r"tasks are in a cycle: make_(a|b) -> make_(a|b)") as info:
        await DataflowPipeline.from_tasks(broker, [make_a, make_b]).kiq_dataflow()
    assert set(info.value.cycle) == {"make_a", "make_b"}

    with pytest.raises(MissingInputError, match="'title' \\(needed by report, ping\\)"):
        await DataflowPipeline.from_tasks(broker, tasks).kiq_dataflow(raw=[1])

    with pytest.raises(DuplicateOutputError, match="'clean' is produced by both"):
        pipeline = DataflowPipeline.from_tasks(broker, tasks)
        pipeline.add_dataflow_task(tasks[1], output="clean")
        await pipeline.kiq_dataflow(raw=[1], title="t")

    with pytest.raises(DataflowError, match="unknown inputs 'colour'"):
        await DataflowPipeline.from_tasks(broker, tasks).kiq_dataflow(raw=[1], title="t", colour=1)

    with pytest.raises(UnserializableError, match="cannot be serialized"):
        await DataflowPipeline.from_tasks(broker, tasks).kiq_dataflow(raw=[object()], title="t")

    for bad in (0, -1, 2.5, "3", True, 2**40):
        with pytest.raises(InvalidValueError, match="max_parallel must be an integer"):
            DataflowPipeline(broker, max_parallel=bad)  # type: ignore[arg-type]

    async def plain(x: int) -> int:
        return x

    with pytest.raises(NotATaskError, match="plain is not a taskiq task"):
        DataflowPipeline(broker).add_dataflow_task(plain)
    await broker.wait_all()  # whatever was sent has run
    assert calls == []


def fan_out(broker: InMemoryBroker, gauge: Gauge, width: int, delay: float = 0.01) -> list[Any]:
    tasks = []
    for i in range(width):

        async def work(seed: int) -> int:
            gauge.enter()
            await asyncio.sleep(delay)  # runs a while: tasks overlap up to the cap
            gauge.leave()
            return seed

        work.__name__ = f"work_{i}"
        tasks.append(broker.task(task_name=f"work_{i}")(pipeline_task(output=f"out_{i}")(work)))
    return tasks


async def test_max_parallel_is_reached_and_never_exceeded(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    pipeline = DataflowPipeline.from_tasks(broker, fan_out(broker, gauge, 40), max_parallel=7)
    out = await pipeline.kiq_dataflow(seed=1)
    assert len(out) == 40
    assert gauge.peak == 7


async def test_without_max_parallel_everything_independent_runs_at_once(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    await DataflowPipeline.from_tasks(broker, fan_out(broker, gauge, 25)).kiq_dataflow(seed=1)
    assert gauge.peak == 25


async def test_global_cap_holds_across_two_pipelines(broker: InMemoryBroker, gauge: Gauge) -> None:
    set_max_parallel_tasks(5)
    tasks = fan_out(broker, gauge, 30)
    first = DataflowPipeline.from_tasks(broker, tasks[:15], max_parallel=10)
    second = DataflowPipeline.from_tasks(broker, tasks[15:], max_parallel=10)
    a, b = await asyncio.gather(first.kiq_dataflow(seed=1), second.kiq_dataflow(seed=2))
    assert len(a) == len(b) == 15
    assert gauge.peak == 5
    with pytest.raises(InvalidValueError):
        set_max_parallel_tasks(0)


async def test_fail_fast_names_the_step_keeps_partial_results_and_starts_nothing_new(
    broker: InMemoryBroker,
) -> None:
    started: list[str] = []

    @broker.task
    @pipeline_task(output="a")
    async def first(x: int) -> int:
        started.append("first")
        return x

    @broker.task
    @pipeline_task(output="b")
    async def broken(a: int) -> int:
        started.append("broken")
        raise RuntimeError("disk full")

    @broker.task
    @pipeline_task(output="c")
    async def after(b: int) -> int:
        started.append("after")
        return b

    dead = DeadLetterQueue()
    pipeline = DataflowPipeline.from_tasks(broker, [first, broken, after]).with_dead_letters(dead)
    with pytest.raises(StepFailedError, match="step 'broken' failed: RuntimeError: disk full") as e:
        await pipeline.kiq_dataflow(x=4)
    assert e.value.step == "broken"
    assert e.value.results == {"a": 4}
    await broker.wait_all()  # whatever was sent has run
    assert "after" not in started
    [letter] = dead.list()
    assert (letter.step, letter.kwargs, letter.attempts) == ("broken", {"a": 4}, 1)
    assert letter.error == "RuntimeError: disk full"


async def test_continue_runs_every_branch_that_does_not_depend_on_the_failure(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    @pipeline_task(output="bad")
    async def bad(x: int) -> int:
        raise ValueError("nope")

    @broker.task
    @pipeline_task(output="downstream")
    async def downstream(bad: int) -> int:
        return bad

    @broker.task
    @pipeline_task(output="good")
    async def good(x: int) -> int:
        return x + 1

    @broker.task
    @pipeline_task(output="better")
    async def better(good: int) -> int:
        return good + 1

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(
        broker, [bad, downstream, good, better], on_error="continue"
    ).with_tracking(tracking)
    with pytest.raises(StepFailedError) as info:
        await pipeline.kiq_dataflow(x=1)
    assert info.value.results == {"good": 2, "better": 3}
    assert list(info.value.failures) == ["bad"]
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert {s.name: s.status for s in status.steps} == {
        "bad": "failed",
        "downstream": "skipped",
        "good": "done",
        "better": "done",
    }


async def test_retries_with_backoff_then_success(broker: InMemoryBroker) -> None:
    attempts: list[int] = []

    @broker.task
    @pipeline_task(output="y", retry=RetryPolicy(max_attempts=4, delay=0.01, jitter=0.5))
    async def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x * 10

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker).add_dataflow_task(flaky).with_tracking(tracking)
    assert await pipeline.kiq_dataflow(x=2) == {"y": 20}
    assert len(attempts) == 3
    [step] = (await tracking.get_status(pipeline.pipeline_id or "")).steps
    assert (step.status, step.attempts) == ("done", 3)


async def test_retries_exhausted_go_to_the_dead_letters_and_replay(broker: InMemoryBroker) -> None:
    healthy = False

    @broker.task
    @pipeline_task(output="y")
    async def fragile(x: int) -> int:
        if not healthy:
            raise ConnectionError("service down")
        return x + 100

    dead = DeadLetterQueue()
    pipeline = (
        DataflowPipeline(broker)
        .add_dataflow_task(fragile)
        .with_retry(max_attempts=3, delay=0.001)
        .with_dead_letters(dead)
    )
    with pytest.raises(StepFailedError, match="ConnectionError: service down"):
        await pipeline.kiq_dataflow(x=1)
    [letter] = dead.list(pipeline.pipeline_id)
    assert (letter.attempts, letter.kwargs) == (3, {"x": 1})
    with pytest.raises(StepFailedError):
        await dead.replay(letter.id, broker)
    assert len(dead) == 1
    healthy = True
    assert await dead.replay(letter.id, broker) == 101
    assert len(dead) == 0


def test_retry_policy_backoff_and_bad_values() -> None:
    policy = RetryPolicy(max_attempts=5, delay=0.5, backoff=2.0, max_delay=3.0, jitter=0.0)
    assert [policy.delay_for(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    jittered = RetryPolicy(delay=1.0, jitter=0.2)
    assert all(0.8 <= jittered.delay_for(1) <= 1.2 for _ in range(100))
    assert not RetryPolicy(retry_on=(ValueError,)).should_retry(1, KeyError("k"))
    for bad in (
        {"max_attempts": 0},
        {"delay": -1.0},
        {"backoff": 0.5},
        {"jitter": 2.0},
        {"delay": float("nan")},
    ):
        with pytest.raises(InvalidValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


async def test_task_timeout_and_pipeline_timeout(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="y", timeout=0.05)
    async def stuck(x: int) -> int:
        await asyncio.sleep(5)  # a stall the step's timeout cuts
        return x

    with pytest.raises(StepFailedError) as failed:
        await DataflowPipeline(broker).add_dataflow_task(stuck).kiq_dataflow(x=1)
    assert isinstance(failed.value.error, TaskTimeoutError)
    assert str(failed.value) == (
        "step 'stuck' failed: TaskTimeoutError: step 'stuck' timed out after 0.05 s"
    )

    @broker.task
    @pipeline_task(output="z")
    async def slow(x: int) -> int:
        await asyncio.sleep(5)  # a stall the run's timeout cuts
        return x

    pipeline = DataflowPipeline(broker, run_timeout=0.1).add_dataflow_task(slow)
    with pytest.raises(PipelineTimeoutError, match=r"pipeline 'dataflow' timed out after 0\.1 s"):
        await pipeline.kiq_dataflow(x=1)


async def test_cancel_a_running_pipeline(broker: InMemoryBroker) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()
    finished = asyncio.Event()
    later_started: list[int] = []

    @broker.task
    @pipeline_task(output="y")
    async def slow(x: int) -> int:
        started.set()
        try:
            await finish.wait()
        finally:  # cut by the cancel (it sees CancelledError here), or let through
            finished.set()
        return x

    @broker.task
    @pipeline_task(output="z")
    async def later(y: int) -> int:
        later_started.append(y)  # seen by the test (an assertion here would only fail the task)
        return y

    pipeline = DataflowPipeline.from_tasks(broker, [slow, later])
    before = asyncio.all_tasks()
    run = asyncio.ensure_future(pipeline.kiq_dataflow(x=1))
    await asyncio.wait_for(started.wait(), 10)
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError):
        await run
    # The running task is cut where it awaits (the cancel reaches it); nothing starts after it.
    await asyncio.wait_for(finished.wait(), 10)
    assert not finish.is_set()
    # Every task started since the run began has ended (slow's, its completion's, anything the
    # run left behind): whatever a late completion could have started has started by now.
    await until(lambda: not asyncio.all_tasks() - before, 10, "the run's tasks to end")
    assert later_started == []


async def test_tracking_durations_are_measured_where_tasks_ran(broker: InMemoryBroker) -> None:
    @broker.task
    @pipeline_task(output="a")
    async def short(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    @broker.task
    @pipeline_task(output="b")
    async def long(a: int) -> int:
        await asyncio.sleep(0.12)
        return a

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [short, long]).with_tracking(tracking)
    await pipeline.kiq_dataflow(x=1)
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert status.status == "done"
    by_name = {s.name: s for s in status.steps}
    # Measured around the task where it ran: at least its sleep, and not the orchestrator's
    # round trips on top (a loose upper bound: shared machines stall).
    assert 20 <= (by_name["short"].duration_ms or 0) < 20 + 500
    assert 120 <= (by_name["long"].duration_ms or 0) < 120 + 500
    slowest = status.slowest_step()
    assert slowest is not None and slowest.name == "long"


async def test_custom_engine_routes_by_label(broker: InMemoryBroker) -> None:
    routed: list[str] = []

    @broker.task
    @pipeline_task(output="features", labels={"requires_gpu": True})
    async def embed(text: str) -> list[float]:
        return [float(len(text))]

    @broker.task
    @pipeline_task(output="summary")
    async def summarize(features: list[float]) -> str:
        return f"{features[0]:.0f}"

    class GpuPool:
        async def submit(self, task_node: TaskNode, inputs: dict[str, Any]) -> Any:
            routed.append(task_node.name)
            return [42.0]

    class GPUOptimizedEngine(ExecutionEngine):
        gpu_worker_pool = GpuPool()

        async def schedule_task(self, task_node: TaskNode, inputs: dict[str, Any]) -> Any:
            if task_node.labels.get("requires_gpu"):
                return await self.gpu_worker_pool.submit(task_node, inputs)
            return await super().schedule_task(task_node, inputs)

    dag = DataflowPipeline.from_tasks(broker, [embed, summarize]).dag
    engine = GPUOptimizedEngine(broker, dag)
    assert await engine.execute({"text": "hello"}) == {"features": [42.0], "summary": "42"}
    assert routed == ["embed"]


async def test_ten_thousand_node_dataflow_on_a_default_broker(broker: InMemoryBroker) -> None:
    @broker.task
    async def inc(x: int) -> int:
        return x + 1

    # One task reused 10,000 times, wired by mapping its parameter to other outputs: 100 chains
    # of 100. The default InMemoryBroker keeps only 100 results; the run must not depend on them.
    pipeline = DataflowPipeline(broker, max_parallel=64)
    for i in range(10_000):
        source = f"v{i - 100}" if i >= 100 else "start"
        pipeline.add_dataflow_task(inc, output=f"v{i}", inputs={"x": source})
    out = await pipeline.kiq_dataflow(start=0)
    assert len(out) == 10_000
    assert out["v9999"] == 100 and out["v0"] == 1
    with pytest.raises(DataflowError, match="inc has no parameter 'y'"):
        DataflowPipeline(broker).add_dataflow_task(inc, inputs={"y": "start"})


async def test_resume_does_not_send_again_what_finished(broker: InMemoryBroker) -> None:
    runs: dict[str, int] = {}
    healthy = False

    @broker.task
    @pipeline_task(output="a")
    async def extract(x: int) -> int:
        runs["extract"] = runs.get("extract", 0) + 1
        return x + 1

    @broker.task
    @pipeline_task(output="b")
    async def transform(a: int) -> int:
        runs["transform"] = runs.get("transform", 0) + 1
        if not healthy:
            raise ConnectionError("the orchestrator's run ends here")
        return a * 10

    @broker.task
    @pipeline_task(output="c")
    async def load(b: int, x: int) -> int:
        return b + x

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [extract, transform, load])
    pipeline.with_tracking(tracking)
    with pytest.raises(StepFailedError):
        await pipeline.kiq_dataflow(x=4)
    run_id = pipeline.pipeline_id or ""
    healthy = True
    assert await pipeline.resume(run_id, x=4) == {"a": 5, "b": 50, "c": 54}
    assert runs == {"extract": 1, "transform": 2}
    status = await tracking.get_status(run_id)
    assert status.status == "done" and [s.status for s in status.steps] == ["done"] * 3
    with pytest.raises(DataflowError, match="resume needs the tracking"):
        await DataflowPipeline.from_tasks(broker, [extract]).resume(run_id, x=4)


async def test_a_dag_draws_itself(broker: InMemoryBroker) -> None:
    tasks = etl(broker, [])
    dag = DataflowPipeline.from_tasks(broker, tasks).dag
    assert repr(dag).startswith(f"<DAG {len(tasks)} tasks")
    assert dag.to_mermaid().startswith("flowchart LR")
    assert dag.to_dot().startswith("digraph")
    shown = dag.to_json()
    assert [n["name"] for n in shown["nodes"]] == [n.name for n in dag.nodes]
    assert len(shown["edges"]) == len(dag.sources)


async def test_a_custom_engine_calling_super_finishes_under_a_process_cap(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    """Seed section 11 under ``set_max_parallel_tasks(2)``: each node holds its process slot while
    ``schedule_task`` runs, so the send it makes through ``super()`` must not wait for another."""
    set_max_parallel_tasks(2)
    release = asyncio.Event()

    def independent(output: str) -> Any:
        @broker.task(task_name=f"independent_{output}")
        @pipeline_task(output=output)
        async def work(x: int) -> int:
            gauge.enter(output)
            try:
                if gauge.peak >= 2:
                    release.set()
                await asyncio.wait_for(release.wait(), 10)
                return x
            finally:
                gauge.leave()

        return work

    class Passthrough(ExecutionEngine):
        async def schedule_task(self, task_node: TaskNode, inputs: dict[str, Any]) -> Any:
            return await super().schedule_task(task_node, inputs)

    dag = DataflowPipeline.from_tasks(broker, [independent(o) for o in "abcd"]).dag
    outputs = await asyncio.wait_for(Passthrough(broker, dag).execute({"x": 1}), 20)
    assert outputs == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert gauge.peak == 2  # the cap still holds: the inner send is the node's own


async def test_each_node_of_a_task_is_a_step_of_its_own(broker: InMemoryBroker) -> None:
    """Five nodes of one task are five tracked steps, told apart by their outputs, each timed on
    its own (the slowest can be named); a task wired in once keeps its own name."""
    delays = {"a": 0.0, "b": 0.0, "c": 0.15, "d": 0.0, "e": 0.0}

    @broker.task
    async def render(x: int, delay: float) -> int:
        await asyncio.sleep(delay)  # render[c] is the slowest step
        return x

    @broker.task
    @pipeline_task(output="total")
    async def total(a: int, b: int, c: int, d: int, e: int) -> int:
        return a + b + c + d + e

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker).with_tracking(tracking)
    for out in delays:
        pipeline.add_dataflow_task(render, output=out, inputs={"x": "x", "delay": f"delay_{out}"})
    pipeline.add_dataflow_task(total)
    inputs = {f"delay_{k}": v for k, v in delays.items()}
    assert (await pipeline.kiq_dataflow(x=1, **inputs))["total"] == 5
    status = await tracking.get_status(pipeline.pipeline_id)
    names = [s.name for s in status.steps]
    assert names == [f"render[{o}]" for o in delays] + ["total"]
    assert all(s.attempts == 1 and s.tasks == 1 for s in status.steps)
    slowest = status.slowest_step()
    assert slowest is not None and slowest.name == "render[c]"
    # Asked by the task's name, a run answers for one of its nodes.
    assert pipeline.explain("render").startswith("done: step 'render[")


async def test_refused_at_once_a_foreign_task_no_broker_a_bad_output_a_misspelled_input(
    broker: InMemoryBroker,
) -> None:
    other = InMemoryBroker()

    @other.task
    @pipeline_task(output="y")
    async def elsewhere(x: int) -> int:
        return x

    @broker.task
    @pipeline_task(output="y")
    async def here(x: int) -> int:
        return x

    with pytest.raises(NotATaskError, match="'elsewhere' is registered on another broker"):
        DataflowPipeline(broker).add_dataflow_task(elsewhere)
    with pytest.raises(NotATaskError, match="registered on another broker"):
        ExecutionEngine(broker, DataflowPipeline(other).add_dataflow_task(elsewhere).dag)
    with pytest.raises(InvalidValueError, match=r"broker must be a taskiq broker.*got NoneType"):
        DataflowPipeline(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match=r"output must be a non-empty str.*got 3"):
        pipeline_task(output=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="inputs must be a list of input names"):
        pipeline_task(inputs="x")
    with pytest.raises(MissingInputError, match=r"'x'.*unknown inputs 'xx' \(did you mean 'x'\?\)"):
        await DataflowPipeline.from_tasks(broker, [here]).kiq_dataflow(xx=1)
    with pytest.raises(UnknownIdError, match="did you mean 'here'"):
        pipeline = DataflowPipeline.from_tasks(broker, [here])
        await pipeline.kiq_dataflow(x=1)
        pipeline.explain("hree")
