"""Options as values: every run option on every shape, one rule and one message each; a run's
timeout (``run_timeout``) and one attempt's (the task's ``timeout``) under different names, each
bounding what it says."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    ExecutionEngine,
    InvalidValueError,
    MapReduce,
    Pipeline,
    PipelineTimeoutError,
    RetryPolicy,
    StepFailedError,
    TaskTimeoutError,
    pipeline_task,
)
from taskiq_flow.run.settings import RunOptionValues, Settings

#: One bad value of each run option, and the one message its rule gives.
BAD = {
    "max_parallel": (0, "max_parallel must be an integer from 1 to 4294967295, got 0"),
    "run_timeout": (-1, "run_timeout must be a finite number of seconds > 0, got -1"),
    "on_error": ("ignore", "on_error must be 'fail' or 'continue', got 'ignore'"),
    "retry": (3, "retry must be a RetryPolicy or None, got 3"),
    "tracking": ("memory", "tracking must be a PipelineTrackingManager or None, got str"),
    "dead_letters": ([], "dead_letters must be a DeadLetterStore or None, got list"),
    "worker_pool": ({}, "worker_pool must be a ResourceAwareWorkerPool or None, got dict"),
    "on_progress": (5, "on_progress must be callable or None, got 5"),
    "name": ("", "name must be a non-empty str, got ''"),
}

#: The ``with_*`` method of each option (``with_retry`` builds the policy from its fields).
BUILDER = {
    "max_parallel": "with_max_parallel",
    "run_timeout": "with_run_timeout",
    "on_error": "with_on_error",
    "tracking": "with_tracking",
    "dead_letters": "with_dead_letters",
    "worker_pool": "with_worker_pool",
    "on_progress": "with_progress",
    "name": "with_name",
}

Shape = Callable[[InMemoryBroker, Any, dict[str, Any]], Awaitable[Any]]


def _tasks(broker: InMemoryBroker) -> tuple[Any, Any]:
    @broker.task
    @pipeline_task(output="y")
    async def double(x: int) -> int:
        return 2 * x

    @broker.task
    async def add(a: int, b: int) -> int:
        return a + b

    return double, add


async def _pipeline(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    return await (await Pipeline(broker, task, **options).kiq(1)).wait_result(timeout=10)


async def _dataflow(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    pipeline = DataflowPipeline(broker, **options).add_dataflow_task(task)
    return await pipeline.kiq_dataflow(x=1)


async def _from_tasks(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    return await DataflowPipeline.from_tasks(broker, [task], **options).kiq_dataflow(x=1)


async def _engine(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    dag = DataflowPipeline(broker).add_dataflow_task(task).dag
    return await ExecutionEngine(broker, dag, **options).execute({"x": 1})


async def _map(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    return await MapReduce.map(broker, task, [1, 2], **options)


async def _reduce(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    _double, add = _tasks(broker)
    return await MapReduce.reduce(broker, add, [1, 2], **options)


async def _map_reduce(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    _double, add = _tasks(broker)
    return await MapReduce.map_reduce(broker, task, add, [1, 2], **options)


async def _stream(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
    return [v async for v in MapReduce.stream(broker, task, [1, 2], **options)]


SHAPES: dict[str, Shape] = {
    "Pipeline()": _pipeline,
    "DataflowPipeline()": _dataflow,
    "DataflowPipeline.from_tasks()": _from_tasks,
    "ExecutionEngine()": _engine,
    "MapReduce.map()": _map,
    "MapReduce.reduce()": _reduce,
    "MapReduce.map_reduce()": _map_reduce,
    "MapReduce.stream()": _stream,
}


def test_the_keyword_options_are_the_settings_options() -> None:
    """Every option of a run is a keyword of every shape (max_parallel is each shape's own
    parameter; ``timeout`` is the former name of ``run_timeout``)."""
    fields = {f for f in Settings.__dataclass_fields__ if f != "max_parallel"}
    assert set(RunOptionValues.__annotations__) == fields | {"timeout"}
    assert set(BAD) == set(Settings.__dataclass_fields__)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", BAD)
async def test_a_bad_value_of_any_option_on_any_shape_gets_its_one_message(
    broker: InMemoryBroker, shape: str, option: str
) -> None:
    sent: list[int] = []

    @broker.task
    @pipeline_task(output="y")
    async def record(x: int) -> int:
        sent.append(x)
        return x

    bad, message = BAD[option]
    with pytest.raises(InvalidValueError, match=f"^{re.escape(message)}$"):
        await SHAPES[shape](broker, record, {option: bad})
    assert sent == []  # refused before anything was sent


@pytest.mark.parametrize("pipeline_class", [Pipeline, DataflowPipeline])
@pytest.mark.parametrize("option", BUILDER)
async def test_a_bad_value_through_a_with_method_gets_the_same_message(
    broker: InMemoryBroker, pipeline_class: type[Pipeline | DataflowPipeline], option: str
) -> None:
    pipeline = pipeline_class(broker)
    bad, message = BAD[option]
    with pytest.raises(InvalidValueError, match=f"^{re.escape(message)}$"):
        getattr(pipeline, BUILDER[option])(bad)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_misspelled_option_on_any_shape_is_a_type_error_naming_the_closest(
    broker: InMemoryBroker, shape: str
) -> None:
    double, _add = _tasks(broker)
    for typo, meant in [("max_paralel", "max_parallel"), ("run_timout", "run_timeout")]:
        with pytest.raises(TypeError, match=rf"'{typo}'.*did you mean (the option )?'{meant}'"):
            await SHAPES[shape](broker, double, {typo: 1})


async def test_a_misspelled_step_option_of_a_pipeline_is_a_type_error(
    broker: InMemoryBroker,
) -> None:
    double, _add = _tasks(broker)
    with pytest.raises(TypeError, match=r"Pipeline.map\(\).*'max_paralel'.*'max_parallel'"):
        Pipeline(broker).map(double, [1], max_paralel=2)
    with pytest.raises(TypeError, match=r"Pipeline.call_next\(\).*'skip_error'.*'skip_errors'"):
        Pipeline(broker, double).call_next(double, skip_error=True)

    @broker.task
    async def scaled(x: int, factor: int = 1) -> int:
        return x * factor

    # A keyword the task has is its argument, as in taskiq-pipelines.
    pipeline = Pipeline(broker).map(scaled, [1, 2], factor=5)
    result = await (await pipeline.kiq()).wait_result(timeout=10)
    assert result.return_value == [5, 10]


# -- the former name ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_timeout_still_bounds_the_run_and_warns_naming_run_timeout(
    broker: InMemoryBroker, shape: str
) -> None:
    double, _add = _tasks(broker)
    with pytest.warns(DeprecationWarning, match=r"'timeout' is deprecated, use 'run_timeout'"):
        await SHAPES[shape](broker, double, {"timeout": 30})
    with (
        pytest.warns(DeprecationWarning, match="'run_timeout'"),
        pytest.raises(InvalidValueError, match=re.escape(BAD["run_timeout"][1])),
    ):
        await SHAPES[shape](broker, double, {"timeout": -1})


async def test_the_former_names_warn_at_the_users_line_and_keep_their_meaning(
    broker: InMemoryBroker,
) -> None:
    double, _add = _tasks(broker)
    with pytest.warns(DeprecationWarning, match="use 'run_timeout'") as caught:
        made = [
            DataflowPipeline(broker, timeout=7),
            DataflowPipeline.from_tasks(broker, [double], timeout=7),
            Pipeline(broker, timeout=7),
            Pipeline(broker).with_timeout(7),
            DataflowPipeline(broker).with_timeout(7),
        ]
    assert [w.filename for w in caught] == [__file__] * 5
    assert [p.run_timeout for p in made] == [7.0] * 5
    assert all(p.settings.run_timeout == 7.0 for p in made)
    with pytest.warns(DeprecationWarning, match=r"Pipeline.timeout.*'run_timeout'") as caught:
        assert made[2].timeout == 7.0
    assert caught[0].filename == __file__
    with pytest.raises(TypeError, match="both 'timeout' and 'run_timeout'"):
        DataflowPipeline(broker, timeout=1, run_timeout=2)  # type: ignore[call-arg]


async def test_mapreduce_warns_at_the_users_line(broker: InMemoryBroker) -> None:
    double, _add = _tasks(broker)
    with pytest.warns(DeprecationWarning, match="use 'run_timeout'") as caught:
        assert await MapReduce.map(broker, double, [1], timeout=5) == [2]
    assert caught[0].filename == __file__


async def test_the_new_names_do_not_warn(broker: InMemoryBroker) -> None:
    double, _add = _tasks(broker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = Pipeline(broker, double, run_timeout=3).with_run_timeout(4)
        assert pipeline.run_timeout == 4.0
        assert DataflowPipeline(broker, run_timeout=3).with_on_error("continue").run_timeout == 3
    with pytest.raises(TypeError, match="did you mean 'run_timeout'"):
        Settings.build(timeout=2)  # the field's former name is gone from the internal API


# -- a run's timeout and an attempt's ----------------------------------------------------------


def _run_of(shape: str) -> Callable[[InMemoryBroker, Any, dict[str, Any]], Awaitable[Any]]:
    """A shape that raises what failed the run (a Pipeline's result carries it)."""
    if shape != "Pipeline()":
        return SHAPES[shape]

    async def run(broker: InMemoryBroker, task: Any, options: dict[str, Any]) -> Any:
        result = await _pipeline(broker, task, options)
        if result.is_err:
            raise result.error
        return result.return_value

    return run


RUN_SHAPES = ["Pipeline()", "DataflowPipeline()", "MapReduce.map()", "MapReduce.stream()"]


@pytest.mark.parametrize("shape", RUN_SHAPES)
async def test_run_timeout_bounds_the_run_not_an_attempt(
    broker: InMemoryBroker, shape: str
) -> None:
    """The attempt may take 60 s; the run may take 0.2 s: the run fails, at its own bound."""
    started = asyncio.Event()
    release = asyncio.Event()

    @broker.task(timeout=60)
    @pipeline_task(output="y")
    async def stuck(x: int) -> int:
        started.set()
        await release.wait()
        return x

    try:
        with anyio.fail_after(10), pytest.raises(PipelineTimeoutError, match="timed out"):
            await _run_of(shape)(broker, stuck, {"run_timeout": 0.2})
        assert started.is_set()
    finally:
        release.set()


async def test_run_timeout_bounds_all_attempts_together(broker: InMemoryBroker) -> None:
    """Each attempt is cut at 0.05 s and retried, up to 1000 times: the run's 0.5 s ends it."""
    attempts: list[int] = []
    release = asyncio.Event()

    @broker.task(timeout=0.05)
    async def never(x: int) -> int:
        attempts.append(x)
        await release.wait()
        return x

    retry = RetryPolicy(max_attempts=1000, delay=0, jitter=0)
    try:
        with anyio.fail_after(10), pytest.raises(PipelineTimeoutError):
            await MapReduce.map(broker, never, [1], run_timeout=0.5, retry=retry)
        assert 1 < len(attempts) < 1000  # retried, then stopped by the run's bound
    finally:
        release.set()


@pytest.mark.parametrize(
    ("shape", "declared"),
    [(shape, "label") for shape in RUN_SHAPES] + [("DataflowPipeline()", "pipeline_task")],
)
async def test_a_tasks_timeout_bounds_one_attempt_on_every_shape(
    broker: InMemoryBroker, shape: str, declared: str
) -> None:
    """The first attempt hangs and is cut at the task's 0.2 s; the retry returns: the run (with
    no bound of its own) succeeds. Without a retry the run fails naming the step and the limit."""
    attempts: list[int] = []
    release = asyncio.Event()

    async def hang_first(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            await release.wait()
        return x

    if declared == "label":
        flaky = broker.task(timeout=0.2)(pipeline_task(output="y")(hang_first))
    else:
        flaky = broker.task(pipeline_task(output="y", timeout=0.2)(hang_first))
    retry = RetryPolicy(max_attempts=2, delay=0, jitter=0)
    try:
        with anyio.fail_after(10):
            done = await _run_of(shape)(broker, flaky, {"retry": retry, "max_parallel": 1})
        assert done and len(attempts) in (2, 3)  # the hung attempt, its retry (and item 2)
        attempts.clear()
        with anyio.fail_after(10), pytest.raises(StepFailedError) as failed:
            await _run_of(shape)(broker, flaky, {"max_parallel": 1})
        assert isinstance(failed.value.error, TaskTimeoutError)
        assert "timed out after 0.2 s" in str(failed.value)
    finally:
        release.set()


async def test_a_bad_timeout_label_is_refused_when_the_task_is_added(
    broker: InMemoryBroker,
) -> None:
    @broker.task(timeout=-3)
    async def bad(x: int) -> int:
        return x

    message = "the timeout label of task 'bad' must be a finite number of seconds > 0, got -3"
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        Pipeline(broker, bad)
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        DataflowPipeline(broker).add_dataflow_task(bad)
