"""Cancel that reaches running work, in process: every running attempt of the run sees
CancelledError where it awaits, nothing new starts, another run goes on; every shape has a
handle (``taskiq_flow.start``) with its run id, ``cancel()`` and ``explain()``."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    MapReduce,
    Pipeline,
    PipelineCancelledError,
    PipelineTimeoutError,
    PipelineTrackingManager,
    StateError,
    pipeline_task,
    start,
)
from tests.conftest import until

pytestmark = pytest.mark.usefixtures("lane")


class Cuts:
    """What the tasks saw: which started, when each was cut."""

    def __init__(self, at: int) -> None:
        self.started: list[int] = []
        self.cut: list[float] = []
        self.enough = asyncio.Event()
        self.at = at

    async def wait(self, x: int) -> int:
        self.started.append(x)
        if len(self.started) == self.at:
            self.enough.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cut.append(time.monotonic())
            raise
        return x


async def test_cancel_cuts_every_running_attempt_and_leaves_another_run_alone(
    broker: InMemoryBroker,
) -> None:
    cuts = Cuts(20)

    @broker.task
    async def slow(x: int) -> int:
        return await cuts.wait(x)

    @broker.task
    async def quick(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    run = start(MapReduce.map, broker, slow, range(100), max_parallel=20)
    other = start(MapReduce.map, broker, quick, range(200), max_parallel=5)
    assert len(await run.started()) == 32
    await cuts.enough.wait()
    cancelled_at = time.monotonic()
    run.cancel()
    with pytest.raises(PipelineCancelledError, match=r"cut: 'slow' \(20 running\)"):
        await run
    await until(lambda: len(cuts.cut) == 20, what="every running attempt to see its cancel")
    assert max(cuts.cut) - cancelled_at < 0.1  # in process: within 100 ms
    assert len(cuts.started) == 20  # nothing new started
    assert await other == list(range(200))


async def test_a_cancelled_pipeline_and_dataflow_cut_their_running_steps(
    broker: InMemoryBroker,
) -> None:
    cuts = Cuts(3)

    @broker.task
    async def slow(x: int) -> int:
        return await cuts.wait(x)

    handle = await Pipeline(broker).map(slow, [1, 2, 3]).kiq()
    await cuts.enough.wait()
    handle.cancel()
    result = await handle.wait_result(timeout=10)
    assert isinstance(result.error, PipelineCancelledError)
    await until(lambda: len(cuts.cut) == 3, what="the pipeline's attempts to be cut")

    @broker.task
    @pipeline_task(output="waited", each={"x": "xs"})
    async def waited(x: int) -> int:
        return await cuts.wait(x)

    cuts.__init__(2)  # type: ignore[misc]
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(broker, [waited]).with_tracking(tracking)
    run = asyncio.ensure_future(pipeline.kiq_dataflow(xs=[1, 2]))
    await cuts.enough.wait()
    pipeline.cancel()
    with pytest.raises(PipelineCancelledError, match=r"cut: 'waited' \(2 running\)"):
        await run
    await until(lambda: len(cuts.cut) == 2, what="the dataflow's attempts to be cut")
    [status] = await tracking.list_pipelines()
    assert status.status == "cancelled"
    assert pipeline.explain("waited").startswith("cancelled: pipeline 'dataflow' was cancelled")


async def test_a_run_timeout_cuts_what_runs(broker: InMemoryBroker) -> None:
    cuts = Cuts(1)

    @broker.task
    @pipeline_task(output="out")
    async def slow(x: int) -> int:
        return await cuts.wait(x)

    pipeline = DataflowPipeline.from_tasks(broker, [slow]).with_run_timeout(0.2)
    with pytest.raises(PipelineTimeoutError, match=r"timed out after 0.2 s; cut: 'slow'"):
        await pipeline.kiq_dataflow(x=1)
    await until(lambda: len(cuts.cut) == 1, what="the attempt to be cut")


async def test_a_thread_task_is_marked_cancelled_and_its_result_discarded(
    broker: InMemoryBroker,
) -> None:
    running = threading.Event()
    release = threading.Event()

    @broker.task
    def blocking(x: int) -> int:
        running.set()
        release.wait(30)
        return x

    run = start(MapReduce.map, broker, blocking, [1])
    await asyncio.to_thread(running.wait, 30)
    run.cancel()
    with pytest.raises(PipelineCancelledError, match="cut: 'blocking'"):
        await run
    release.set()  # the thread ends on its own; its result goes nowhere


async def test_a_handle_before_its_run_and_of_a_call_that_never_runs(
    broker: InMemoryBroker,
) -> None:
    @broker.task
    async def double(x: int) -> int:
        return 2 * x

    run = start(MapReduce.map, broker, double, [1, 2])
    with pytest.raises(StateError, match="has not started yet"):
        run.explain("double")
    assert await run == [2, 4]
    assert run.done() and run.run_id is not None
    assert run.explain("double").startswith("done")
    early = start(MapReduce.map, broker, double, [1, 2])
    early.cancel()  # before the run exists: it is cancelled as it starts
    with pytest.raises(PipelineCancelledError):
        await early
    never = start(MapReduce.reduce, broker, double, [])
    with pytest.raises(StateError, match="the run never started"):
        await never.started()
