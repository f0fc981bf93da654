"""One meaning per word: every cell of the README's table, measured from inside the tasks.

| word                      | on                        | bounds                                  |
|---------------------------|---------------------------|-----------------------------------------|
| ``max_parallel``          | a pipeline                | its tasks in flight, all steps together |
| ``max_parallel``          | a step                    | that step's tasks in flight             |
| ``set_max_parallel_tasks`` | the process              | every pipeline's tasks in flight        |
| ``timeout``               | a run                     | the whole run                           |
| ``timeout``               | a task                    | one attempt of it                       |
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from conftest import Gauge, until
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    ExecutionEngine,
    InvalidValueError,
    MapReduce,
    Pipeline,
    PipelineTimeoutError,
    ResourceAwareWorkerPool,
    RetryPolicy,
    StepFailedError,
    TaskTimeoutError,
    pipeline_task,
)
from taskiq_flow.optimization.parallel import global_cap, set_max_parallel_tasks
from taskiq_flow.resources import CPUProfile


def held(broker: InMemoryBroker, gauge: Gauge, delay: float = 0.01, name: str = "held") -> Any:
    async def task(x: int) -> int:
        gauge.enter(name)
        await asyncio.sleep(delay)  # runs a while: tasks overlap up to the cap
        gauge.leave()
        return x

    task.__name__ = name
    return broker.task(task_name=name)(task)


# -- max_parallel of a pipeline: all its steps together ---------------------------------------


async def test_map_reduce_max_parallel_bounds_map_and_reduce_together(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    square = held(broker, gauge, 0.005, "square")

    @broker.task
    async def add(a: int, b: int) -> int:
        gauge.enter("add")
        await asyncio.sleep(0.005)  # overlaps the map's tasks
        gauge.leave()
        return a + b

    total = await MapReduce.map_reduce(broker, square, add, range(40), max_parallel=2)
    assert total == sum(range(40))
    assert gauge.peak == 2
    assert "add" in gauge.started[: len(gauge.started) - 1]  # reduce overlapped the map


async def test_pipeline_max_parallel_bounds_every_step(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    task = held(broker, gauge)
    pipeline = Pipeline(broker, max_parallel=3).map(task, range(12)).map(task)
    result = await (await pipeline.kiq()).wait_result(timeout=10)
    assert result.return_value == list(range(12))
    assert gauge.peak == 3


async def test_dataflow_max_parallel_bounds_the_run(broker: InMemoryBroker, gauge: Gauge) -> None:
    tasks = []
    for i in range(8):

        async def node(x: int) -> int:
            gauge.enter()
            await asyncio.sleep(0.01)  # runs a while: tasks overlap up to the cap
            gauge.leave()
            return x

        node.__name__ = f"node{i}"
        tasks.append(broker.task(task_name=f"node{i}")(pipeline_task(output=f"out{i}")(node)))
    outputs = await DataflowPipeline.from_tasks(broker, tasks, max_parallel=3).kiq_dataflow(x=1)
    assert outputs == {f"out{i}": 1 for i in range(8)}
    assert gauge.peak == 3


async def test_stream_max_parallel_bounds_the_window(broker: InMemoryBroker, gauge: Gauge) -> None:
    task = held(broker, gauge, 0.002)
    seen = [v async for v in MapReduce.stream(broker, task, range(50), max_parallel=4)]
    assert sorted(seen) == list(range(50))
    assert gauge.peak == 4


# -- max_parallel of a step ---------------------------------------------------------------------


@pytest.mark.parametrize(("run_cap", "step_cap", "peak"), [(None, 2, 2), (5, 2, 2), (2, 5, 2)])
async def test_step_max_parallel_bounds_the_step(
    broker: InMemoryBroker, gauge: Gauge, run_cap: int | None, step_cap: int, peak: int
) -> None:
    task = held(broker, gauge)
    pipeline = Pipeline(broker, max_parallel=run_cap).map(task, range(12), max_parallel=step_cap)
    result = await (await pipeline.kiq()).wait_result(timeout=10)
    assert result.return_value == list(range(12))
    assert gauge.peak == peak


# -- set_max_parallel_tasks: the process, every run together -----------------------------------


async def test_two_runs_share_the_process_cap_fairly(broker: InMemoryBroker, gauge: Gauge) -> None:
    set_max_parallel_tasks(4)
    finished: list[str] = []

    def task(name: str) -> Any:
        async def run(x: int) -> int:
            gauge.enter(name)
            await asyncio.sleep(0.005)  # runs a while: the runs share the cap
            gauge.leave()
            finished.append(name)
            return x

        run.__name__ = name
        return broker.task(task_name=name)(run)

    first, second = task("first"), task("second")
    a = asyncio.ensure_future(MapReduce.map(broker, first, range(40), max_parallel=8))
    await until(lambda: gauge.running == 4)  # the first run holds every slot before the second asks
    b = asyncio.ensure_future(MapReduce.map(broker, second, range(40), max_parallel=8))
    assert await asyncio.wait_for(asyncio.gather(a, b), 20) == [list(range(40))] * 2
    assert gauge.peak == 4  # across both runs: reached, never more
    # Round-robin between runs: once the second run waits, freed slots alternate, so it does
    # not wait for the first to drain (which would put all 40 "first" before any "second").
    first_second = finished.index("second")
    assert first_second < 12, finished
    assert global_cap().cap.in_use == 0


# -- timeout of a run and of a task -------------------------------------------------------------


async def test_pipeline_timeout_bounds_the_whole_run(broker: InMemoryBroker) -> None:
    @broker.task
    async def step(x: int) -> int:
        await asyncio.sleep(0.3)  # three of them outlast the run's timeout
        return x

    pipeline = Pipeline(broker, step).call_next(step).call_next(step).with_run_timeout(0.5)
    started = time.monotonic()
    result = await (await pipeline.kiq(1)).wait_result(timeout=10)
    assert result.is_err and isinstance(result.error, PipelineTimeoutError)
    assert str(result.error) == "pipeline 'pipeline' timed out after 0.5 s; cut: 'step'"
    assert time.monotonic() - started < 0.9  # not each step's 0.3 s three times


async def test_task_timeout_bounds_one_attempt_and_names_it(broker: InMemoryBroker) -> None:
    attempts: list[int] = []
    slow_attempts = {1}

    @broker.task
    @pipeline_task(output="y", timeout=0.05)
    async def stuck(x: int) -> int:
        attempts.append(x)
        await asyncio.sleep(0.3 if len(attempts) in slow_attempts else 0)  # a stall, cut at 0.05 s
        return x

    # Each attempt is bounded, not the run: the retry (fast) succeeds.
    pipeline = DataflowPipeline(broker, run_timeout=5).add_dataflow_task(stuck)
    outputs = await pipeline.with_retry(max_attempts=2, delay=0).kiq_dataflow(x=1)
    assert outputs == {"y": 1} and len(attempts) == 2

    slow_attempts.add(3)
    with pytest.raises(StepFailedError) as failed:
        await DataflowPipeline(broker).add_dataflow_task(stuck).kiq_dataflow(x=1)
    assert isinstance(failed.value.error, TaskTimeoutError)
    assert "step 'stuck' timed out after 0.05 s" in str(failed.value)


# -- one rule, one message, wherever a value comes in ------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2**40, 2.5, True, "3"])
async def test_a_bad_max_parallel_gets_one_message_from_every_api(
    broker: InMemoryBroker, bad: Any
) -> None:
    sent: list[int] = []

    @broker.task
    @pipeline_task(output="y")
    async def task(x: int) -> int:
        sent.append(x)
        return x

    dag = DataflowPipeline(broker).add_dataflow_task(task).dag
    attempts = [
        lambda: DataflowPipeline(broker, max_parallel=bad),
        lambda: DataflowPipeline(broker).with_max_parallel(bad),
        lambda: ExecutionEngine(broker, dag, max_parallel=bad),
        lambda: Pipeline(broker, max_parallel=bad),
        lambda: Pipeline(broker).map(task, [1], max_parallel=bad),
        lambda: set_max_parallel_tasks(bad),
    ]
    messages = set()
    for attempt in attempts:
        with pytest.raises(InvalidValueError) as error:
            attempt()
        messages.add(str(error.value))
    for coroutine in (
        lambda: MapReduce.map(broker, task, [1, 2], max_parallel=bad),
        lambda: MapReduce.map_reduce(broker, task, task, [1, 2], max_parallel=bad),
        lambda: anext(MapReduce.stream(broker, task, [1, 2], max_parallel=bad)),
    ):
        with pytest.raises(InvalidValueError) as error:
            await coroutine()
        messages.add(str(error.value))
    assert len(messages) == 1, messages
    assert messages.pop().startswith("max_parallel must be an integer")
    assert sent == []


# -- placement: a big task never blocks small ones, and is never starved ------------------------


async def test_big_task_waits_without_blocking_small_ones_and_still_runs(
    broker: InMemoryBroker,
) -> None:
    pool = ResourceAwareWorkerPool([{"cpu_cores": 4}], max_bypass=3)
    log: list[str] = []
    first_running = asyncio.Event()
    third_passed = asyncio.Event()

    @broker.task
    @CPUProfile(cpu_units=2)
    async def small(x: int) -> int:
        log.append(f"small{x}")
        if x < 0:
            first_running.set()
            await third_passed.wait()  # holds 2 cores until three small tasks passed the big one
        elif x == 2:
            third_passed.set()
        return x

    @broker.task
    @CPUProfile(cpu_units=4)
    async def big(x: int) -> int:
        log.append("big")
        return x

    holder = asyncio.ensure_future(MapReduce.map(broker, small, [-1], worker_pool=pool))
    await asyncio.wait_for(first_running.wait(), 5)  # 2 of the 4 cores are taken
    waiting = asyncio.ensure_future(MapReduce.map(broker, big, [7], worker_pool=pool))
    await until(lambda: pool.waiting_count == 1)  # the big task is queued: it does not fit now
    smalls = asyncio.ensure_future(MapReduce.map(broker, small, range(8), worker_pool=pool))
    results = await asyncio.wait_for(asyncio.gather(holder, waiting, smalls), 20)
    assert results == [[-1], [7], list(range(8))]
    big_at = log.index("big")
    # Small tasks ran beside the holder while the big one waited (three passed it: max_bypass),
    assert log[1:big_at] == ["small0", "small1", "small2"], log
    # then it blocked the queue until the worker drained for it, and ran before the rest.
    assert log[big_at + 1 :] == [f"small{x}" for x in range(3, 8)], log
    assert pool.placed_count == 0 and pool.waiting_count == 0


async def test_sending_leaves_the_tasks_own_labels_alone(broker: InMemoryBroker) -> None:
    @broker.task(priority="low")
    @pipeline_task(output="y", timeout=5)
    async def labelled(x: int) -> int:
        return x

    before = dict(labelled.labels)
    assert await DataflowPipeline(broker).add_dataflow_task(labelled).kiq_dataflow(x=1) == {"y": 1}
    assert await MapReduce.map(broker, labelled, [1, 2]) == [1, 2]
    assert labelled.labels == before  # no run's label or timeout left behind on the task


class LosingBroker(InMemoryBroker):
    """An in-memory broker that loses the first message it is given, as a broker without
    acknowledgements loses the message of a worker killed mid-task."""

    lost = 0

    async def kick(self, message: Any) -> None:
        if self.lost == 0:
            self.lost += 1
            return
        await super().kick(message)


async def test_an_attempt_that_never_reports_back_times_out_on_this_side() -> None:
    broker = LosingBroker()
    await broker.startup()
    try:

        @broker.task
        @pipeline_task(output="y", timeout=0.2, retry=RetryPolicy(max_attempts=2, delay=0))
        async def step(x: int) -> int:
            return x

        started = time.monotonic()
        outputs = await DataflowPipeline(broker).add_dataflow_task(step).kiq_dataflow(x=3)
        assert outputs == {"y": 3} and broker.lost == 1  # the lost attempt failed, the retry ran
        assert time.monotonic() - started < 10

        @broker.task
        @pipeline_task(output="z", timeout=0.2)
        async def once(x: int) -> int:
            return x

        broker.lost = 0
        with pytest.raises(StepFailedError) as failed:
            await DataflowPipeline(broker).add_dataflow_task(once).kiq_dataflow(x=3)
        assert isinstance(failed.value.error, TaskTimeoutError)
        assert "step 'once' timed out after 0.2 s: no completion came back" in str(failed.value)
    finally:
        await broker.shutdown()


async def test_progress_from_every_shape(broker: InMemoryBroker, gauge: Gauge) -> None:
    task = held(broker, gauge, 0.001)
    seen: list[tuple[int, int]] = []
    assert await MapReduce.map(
        broker, task, range(20), on_progress=lambda *p: seen.append(p)
    ) == list(range(20))
    assert seen[-1] == (20, 20) and all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    seen.clear()
    handle = (
        await Pipeline(broker).map(task, range(5)).with_progress(lambda *p: seen.append(p)).kiq()
    )
    await handle.wait_result(timeout=10)
    assert seen[-1] == (5, 5)
    seen.clear()
    total = await MapReduce.map_reduce(
        broker, task, task, [1], on_progress=lambda *p: seen.append(p)
    )
    assert total == 1 and seen[-1] == (1, 1)


async def test_a_stream_reports_its_progress(broker: InMemoryBroker, gauge: Gauge) -> None:
    task = held(broker, gauge, 0.001)
    seen: list[tuple[int, int]] = []
    stream = MapReduce.stream(
        broker, task, range(30), max_parallel=4, on_progress=lambda *p: seen.append(p)
    )
    assert sorted([v async for v in stream]) == list(range(30))
    assert seen[-1] == (30, 30)
    assert all(done <= pulled <= done + 4 for done, pulled in seen)  # never a window ahead
