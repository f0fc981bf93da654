"""Resource profiles, the worker pool, and pipelines admitted by worker capacity."""

from __future__ import annotations

import asyncio
import gc
import math
import re
import weakref
from typing import Any

import pytest
from conftest import Gauge, until
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware

from taskiq_flow import (
    CPUProfile,
    DataflowPipeline,
    InvalidValueError,
    MapReduce,
    Pipeline,
    RAMProfile,
    ResourceAwareWorkerPool,
    ResourceProfile,
    StateError,
    TaskResources,
    UnknownIdError,
    UnschedulableError,
    pipeline_task,
)
from taskiq_flow.resources import WORKER_LABEL, resources_of

pytestmark = pytest.mark.usefixtures("lane")

GUIDE_WORKERS = [
    {"cpu_cores": 8, "ram_gb": 32, "gpu": 1, "labels": {"gpu": True}},
    {"cpu_cores": 4, "ram_gb": 16, "labels": {"gpu": False}},
]


async def test_profiles_stack_in_either_order(broker: InMemoryBroker) -> None:
    @broker.task
    @CPUProfile(cpu_units=2)
    @RAMProfile(ram_mb=4096)
    def below(data: int) -> int:
        return data

    @RAMProfile(ram_mb=512)
    @CPUProfile(cpu_units=0.5)
    @broker.task
    def above(data: int) -> int:
        return data

    @ResourceProfile(gpu=1, labels={"gpu": True})
    @CPUProfile(cpu_units=1)
    @broker.task
    async def mixed() -> None:
        return None

    assert resources_of(below) == TaskResources(cpu_milli=2000, ram_mb=4096)
    assert resources_of(above) == TaskResources(cpu_milli=500, ram_mb=512)
    assert resources_of(mixed) == TaskResources(1000, 0, {"gpu": 1}, {"gpu": True})
    assert below(3) == 3  # still callable as a plain function


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "2", True])
def test_bad_amounts_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidValueError):
        CPUProfile(cpu_units=bad)
    with pytest.raises(InvalidValueError):
        RAMProfile(ram_mb=bad)
    with pytest.raises(InvalidValueError):
        ResourceProfile(gpu=bad)


@pytest.mark.parametrize(
    ("workers", "match"),
    [
        ([], "at least one worker"),
        ([{"cpu_cores": 0, "ram_gb": 0}], "zero of every resource"),
        ([{"cpu_cores": -2}], "cpu_cores of worker-0 must be a finite number >= 0"),
        ([{"cpu_cores": 1, "ram_gb": 1, "ram_mb": 5}], "both ram_gb and ram_mb"),
        ([{"cpu_cores": 1, "name": "a"}, {"cpu_cores": 1, "name": "a"}], "unique"),
        ([{"cpu_cores": 1, "labels": ["gpu"]}], "must be a mapping"),
    ],
)
def test_bad_workers_are_refused(workers: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        ResourceAwareWorkerPool(workers=workers)


async def test_routing_explain_and_unschedulable(broker: InMemoryBroker) -> None:
    @broker.task
    @CPUProfile(cpu_units=2)
    @RAMProfile(ram_mb=4096)
    def heavy(data: int) -> int:
        return data

    @ResourceProfile(gpu=1, labels={"gpu": True})
    @broker.task
    async def render() -> None:
        return None

    pool = ResourceAwareWorkerPool(workers=GUIDE_WORKERS)
    assert pool.place(heavy, 1) == "worker-1"  # best fit: the smaller worker
    assert pool.place(render, 2) == "worker-0"  # the only GPU
    assert pool.place(render, 3) is None
    assert pool.explain(render) == {
        "worker-0": ["gpu: needs 1, 0 free of 1 (short by 1)"],
        "worker-1": ["gpu: needs 1, 0 free of 0 (short by 1)", "missing label gpu=true"],
    }
    assert pool.free("worker-1") == {"cpu_milli": 2000, "ram_mb": 12288, "gpu": 0}
    assert pool.release(2) == "worker-0"
    with pytest.raises(UnknownIdError):
        pool.release(2)
    with pytest.raises(UnschedulableError, match="needs ram_mb=65536 but the largest ram_mb"):
        pool.check(TaskResources(ram_mb=65536))
    with pytest.raises(UnschedulableError, match="no worker has label ssd=true"):
        pool.check(TaskResources(labels={"ssd": True}))
    with pytest.raises(UnschedulableError, match="needs tpu=1 but no worker offers tpu"):
        pool.check(TaskResources(extra={"tpu": 1}))


@pytest.mark.parametrize("bad", [-1, 2**32, True, 1.0, "1", None])
def test_pool_refuses_a_bad_task_id_and_keeps_its_placements(bad: Any) -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 1}])
    one = TaskResources(cpu_milli=1000)
    assert pool.place(one, 7) == "worker-0"
    expected = "an integer" + (" from 0 to 4294967295" if type(bad) is int else "")
    message = f"task_id must be {expected}, got {bad!r}"
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        pool.place(one, bad)
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        pool.release(bad)
    assert pool.placed_count == 1
    assert pool.release(7) == "worker-0"


def test_pool_places_by_task_object_whatever_the_objects() -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 2, "ram_mb": 100, "name": "a"}])
    half = TaskResources(cpu_milli=500)
    assert pool.place(task=half, task_id=0) == "a"
    with pytest.raises(StateError):
        pool.place(half, 0)  # that id holds a placement already
    with pytest.raises(UnknownIdError, match="task 9 holds nothing in this pool"):
        pool.release(9)
    # A new, equal profile object per call (more of them than the pool remembers) places the same.
    for task_id in range(1, 5000):
        fresh = TaskResources(cpu_milli=500, ram_mb=task_id % 2)
        assert pool.place(fresh, task_id) == ("a" if task_id < 4 else None)
        if task_id >= 4:
            assert pool.class_of(fresh) == pool.class_of(TaskResources(500, task_id % 2))
    assert [pool.release(i) for i in range(4)] == ["a"] * 4
    with pytest.raises(UnschedulableError, match="needs tpu=1 but no worker offers tpu"):
        pool.place(TaskResources(extra={"tpu": 1}), 1)
    assert pool.placed_count == 0


def test_pool_names_the_workers_it_learns_of() -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 1, "name": "old"}])
    one = TaskResources(cpu_milli=1000)
    assert pool.place(one, 1) == "old"
    assert pool.place(one, 2) is None
    pool.sync([{"cpu_cores": 1, "name": "old"}, {"cpu_cores": 1, "name": "new"}])
    assert pool.place(one, 2) == "new"
    assert pool.release(2) == "new"


def test_a_subclass_keeps_its_own_place_and_release() -> None:
    seen: list[str] = []

    class Logged(ResourceAwareWorkerPool):
        def place(self, task: object, task_id: int) -> str | None:
            seen.append(f"place {task_id}")
            return super().place(task, task_id)

        def release(self, task_id: int) -> str:
            seen.append(f"release {task_id}")
            return super().release(task_id)

    pool = Logged(workers=[{"cpu_cores": 1}])
    assert pool.place(TaskResources(cpu_milli=10), 1) == "worker-0"
    assert pool.release(1) == "worker-0"
    assert seen == ["place 1", "release 1"]


def test_a_pool_nobody_holds_is_collected() -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 1}])
    assert pool.place(TaskResources(cpu_milli=10), 1) == "worker-0"
    gone = weakref.ref(pool)
    del pool
    gc.collect()
    assert gone() is None


async def test_release_hands_the_capacity_to_a_waiting_acquire() -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 1}])
    one = TaskResources(cpu_milli=1000)
    assert pool.place(one, 1) == "worker-0"
    waiter = asyncio.ensure_future(pool.acquire(one, 2))
    await until(lambda: pool.waiting_count == 1)
    assert pool.release(1) == "worker-0"
    assert await asyncio.wait_for(waiter, 10) == "worker-0"
    assert pool.release(2) == "worker-0"


async def test_acquire_waits_in_order_and_survives_cancellation() -> None:
    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 2}])
    two = TaskResources(cpu_milli=2000)
    assert await pool.acquire(two, 1) == "worker-0"
    order: list[int] = []

    async def wait_for(task_id: int) -> None:
        await pool.acquire(two, task_id)
        order.append(task_id)

    waiter_a = asyncio.ensure_future(wait_for(2))
    waiter_b = asyncio.ensure_future(wait_for(3))
    cancelled = asyncio.ensure_future(wait_for(4))
    await until(lambda: pool.waiting_count == 3, 10, "three acquires in line")
    cancelled.cancel()
    await asyncio.wait([cancelled])
    assert pool.waiting_count == 2  # the cancelled acquire left the line
    pool.release(1)
    await waiter_a
    assert order == [2] and pool.placed_count == 1
    pool.release(2)
    await waiter_b
    assert order == [2, 3]
    pool.release(3)
    assert pool.placed_count == 0


class SeenWorkers(TaskiqMiddleware):
    """Records the worker label of every message the broker executes."""

    def __init__(self) -> None:
        super().__init__()
        self.workers: list[str | None] = []

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self.workers.append(message.labels.get(WORKER_LABEL))
        return message


async def test_pipelines_are_admitted_by_worker_capacity(
    broker: InMemoryBroker, gauge: Gauge
) -> None:
    seen = SeenWorkers()
    broker.add_middlewares(seen)

    @broker.task
    @CPUProfile(cpu_units=3)
    async def crunch(x: int) -> int:
        gauge.enter()
        await asyncio.sleep(0.01)  # runs a while: tasks overlap up to the capacity
        gauge.leave()
        return x

    pool = ResourceAwareWorkerPool(workers=[{"cpu_cores": 8}, {"cpu_cores": 4}])
    # 8 // 3 + 4 // 3 = 3 at once, whatever max_parallel allows.
    out = await MapReduce.map(broker, crunch, range(30), max_parallel=50, worker_pool=pool)
    assert out == list(range(30)) and gauge.peak == 3
    assert set(seen.workers) == {"worker-0", "worker-1"}
    assert pool.placed_count == 0

    gauge.peak = 0
    sequential = Pipeline(broker, crunch).map(crunch, range(12)).with_worker_pool(pool)
    result = await (await sequential.kiq(1)).wait_result()
    assert result.return_value == list(range(12)) and gauge.peak == 3

    @broker.task
    @pipeline_task(output="big")
    @CPUProfile(cpu_units=16)
    async def too_big(x: int) -> int:
        return x

    with pytest.raises(UnschedulableError, match="needs cpu_milli=16000"):
        await (
            DataflowPipeline(broker)
            .add_dataflow_task(too_big)
            .with_worker_pool(pool)
            .kiq_dataflow(x=1)
        )
    assert pool.placed_count == 0
