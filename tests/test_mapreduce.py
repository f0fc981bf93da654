"""MapReduce: ordered maps, tree reductions, one-DAG map-reduce, and bounded streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import Gauge, until
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowError,
    InvalidValueError,
    MapReduce,
    NotATaskError,
    RetryPolicy,
    StepFailedError,
)
from taskiq_flow.optimization.parallel import global_cap


@pytest.fixture
def tasks(broker: InMemoryBroker, gauge: Gauge) -> dict[str, object]:
    @broker.task
    async def square(x: int) -> int:
        gauge.enter()
        await asyncio.sleep(0.001 * (x % 3))  # finish out of order
        gauge.leave()
        return x * x

    @broker.task
    async def add(a: int, b: int) -> int:
        return a + b

    @broker.task
    async def concat(a: str, b: str) -> str:
        return a + b

    @broker.task
    async def scaled(x: int, factor: int = 1) -> int:
        return x * factor

    return {"square": square, "add": add, "concat": concat, "scaled": scaled}


async def test_map_keeps_order_and_bound(
    broker: InMemoryBroker, tasks: dict[str, object], gauge: Gauge
) -> None:
    out = await MapReduce.map(broker, tasks["square"], range(500), max_parallel=15)
    assert out == [x * x for x in range(500)]
    assert gauge.peak == 15
    by_name = await MapReduce.map(
        broker, tasks["scaled"], [1, 2], param_name="x", kwargs={"factor": 3}
    )
    assert by_name == [3, 6]


async def test_reduce_is_a_balanced_tree_in_order(
    broker: InMemoryBroker, tasks: dict[str, object]
) -> None:
    letters = [chr(ord("a") + i) for i in range(13)]
    # concat is associative but not commutative: the tree must keep the order.
    assert await MapReduce.reduce(broker, tasks["concat"], letters) == "abcdefghijklm"
    assert await MapReduce.reduce(broker, tasks["add"], range(1001), max_parallel=4) == 500500
    assert await MapReduce.reduce(broker, tasks["add"], [5]) == 5
    assert await MapReduce.reduce(broker, tasks["add"], [], initial=0) == 0
    with pytest.raises(DataflowError, match="initial value"):
        await MapReduce.reduce(broker, tasks["add"], [])


async def test_map_reduce_in_one_run(broker: InMemoryBroker, tasks: dict[str, object]) -> None:
    got = await MapReduce.map_reduce(broker, tasks["square"], tasks["add"], range(300), 20)
    assert got == sum(x * x for x in range(300))
    assert await MapReduce.map_reduce(broker, tasks["square"], tasks["add"], [7]) == 49


async def test_stream_is_lazy_bounded_and_complete(
    broker: InMemoryBroker, tasks: dict[str, object], gauge: Gauge
) -> None:
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(3_000):
            pulled += 1
            yield i

    seen = []
    async for value in MapReduce.stream(broker, tasks["square"], items(), max_parallel=32):
        # never more pulled from the source than finished plus what is in flight
        assert pulled - len(seen) <= 32
        seen.append(value)
    assert sorted(seen) == [x * x for x in range(3_000)]
    assert gauge.peak <= 32


async def test_stream_ordered_from_an_async_iterable(
    broker: InMemoryBroker, tasks: dict[str, object]
) -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(200):
            yield i

    got = [v async for v in MapReduce.stream(broker, tasks["square"], items(), 8, ordered=True)]
    assert got == [x * x for x in range(200)]
    with pytest.raises(InvalidValueError):
        [v async for v in MapReduce.stream(broker, tasks["square"], [1], max_parallel=0)]


async def test_failures_retries_and_skips(broker: InMemoryBroker) -> None:
    seen: dict[int, int] = {}

    @broker.task
    async def shaky(x: int) -> int:
        seen[x] = seen.get(x, 0) + 1
        if x == 3 and seen[x] < 2:
            raise ConnectionError("blip")
        if x == 5:
            raise ValueError("always")
        return x

    with pytest.raises(StepFailedError, match="ValueError: always"):
        await MapReduce.map(broker, shaky, range(8), retry=RetryPolicy(delay=0.001))
    assert seen[3] == 2
    seen.clear()
    with pytest.raises(StepFailedError) as info:
        await MapReduce.map(broker, shaky, range(8), on_error="continue")
    assert info.value.step == "shaky"
    assert sorted(seen) == list(range(8))  # every other item still ran
    with pytest.raises(StepFailedError):
        [v async for v in MapReduce.stream(broker, shaky, range(8), max_parallel=2)]


async def test_abandoned_stream_keeps_slots_until_its_calls_finish(broker: InMemoryBroker) -> None:
    release = asyncio.Event()

    @broker.task
    async def slow(x: int) -> int:
        if x:
            await release.wait()  # still running when the stream is closed
        return x

    cap = global_cap().cap
    before = cap.in_use
    stream = MapReduce.stream(broker, slow, range(10), max_parallel=4)
    assert await anext(stream) == 0
    await stream.aclose()  # stop after the first result, with calls still running
    assert 3 <= cap.in_use - before <= 4  # the window, less the one that finished
    release.set()
    await broker.wait_all()
    await until(lambda: cap.in_use == before, 10, "the finished calls to give their slots back")


async def test_rate_limited_steps_start_no_faster_than_their_rate(broker: InMemoryBroker) -> None:
    from taskiq_flow import DataflowPipeline, InvalidValueError, Pipeline, pipeline_task

    starts: list[float] = []

    @broker.task
    async def call_api(x: int) -> int:
        starts.append(asyncio.get_running_loop().time())
        return x

    await MapReduce.map(broker, call_api, range(11), rate=50.0)
    # 11 starts at 50/s with a burst of 1: the last no sooner than 10 intervals after the first.
    assert starts[-1] - starts[0] >= 10 / 50 - 0.005

    starts.clear()
    pipeline = Pipeline(broker, call_api).map(call_api, range(6), rate=100.0, burst=2)
    assert (await (await pipeline.kiq(0)).wait_result()).return_value == list(range(6))
    assert (
        starts[-1] - starts[1] >= 4 / 100 - 0.005
    )  # after the first task, 2 at once, then 1/10 ms

    starts.clear()
    limited = pipeline_task(rate=40.0)(call_api)  # one bucket for every node calling the task
    dataflow = DataflowPipeline(broker)
    for i in range(5):
        dataflow.add_dataflow_task(limited, output=f"v{i}", inputs={"x": "seed"})
    await dataflow.kiq_dataflow(seed=1)
    assert starts[-1] - starts[0] >= 4 / 40 - 0.005
    for bad in ({"rate": 0.0}, {"rate": -1.0}, {"rate": 5.0, "burst": 0}):
        with pytest.raises(InvalidValueError):
            await MapReduce.map(broker, call_api, [1], **bad)  # type: ignore[arg-type]


async def test_a_failed_map_keeps_every_result_that_finished(broker: InMemoryBroker) -> None:
    """``on_error="continue"``: every other item runs, and the error carries their results."""

    @broker.task
    async def item(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x * 10

    with pytest.raises(StepFailedError, match="seven") as failed:
        await MapReduce.map(broker, item, range(20), max_parallel=4, on_error="continue")
    assert failed.value.results == {i: i * 10 for i in range(20) if i != 7}
    with pytest.raises(StepFailedError) as fast:  # fail fast: what finished before the failure
        await MapReduce.map(broker, item, range(20), max_parallel=4)
    assert fast.value.results
    assert all(fast.value.results[i] == i * 10 for i in fast.value.results)


async def test_every_call_refuses_no_broker_and_a_task_of_another_broker(
    broker: InMemoryBroker,
) -> None:
    other = InMemoryBroker()

    @other.task
    async def elsewhere(x: int) -> int:
        return x

    with pytest.raises(NotATaskError, match="'elsewhere' is registered on another broker"):
        await MapReduce.map(broker, elsewhere, [1])
    with pytest.raises(NotATaskError, match="registered on another broker"):
        await MapReduce.reduce(broker, elsewhere, [1, 2])
    with pytest.raises(InvalidValueError, match="broker must be a taskiq broker"):
        await MapReduce.map(None, elsewhere, [1])  # type: ignore[arg-type]


async def test_every_call_takes_the_same_options_and_a_misspelled_one_is_an_error(
    broker: InMemoryBroker, tasks: dict[str, object]
) -> None:
    from taskiq_flow import DeadLetterQueue

    options = {
        "on_error": "fail",
        "retry": None,
        "run_timeout": 30.0,
        "dead_letters": DeadLetterQueue(),
    }
    options |= {"rate": 1000.0, "burst": 10, "on_progress": lambda done, total: None}
    assert await MapReduce.map(broker, tasks["square"], [2], **options) == [4]  # type: ignore[arg-type]
    assert await MapReduce.reduce(broker, tasks["add"], [1, 2], **options) == 3  # type: ignore[arg-type]
    assert (
        await MapReduce.map_reduce(broker, tasks["square"], tasks["add"], [1, 2], **options)  # type: ignore[arg-type]
        == 5
    )
    streamed = MapReduce.stream(broker, tasks["square"], [3], **options)  # type: ignore[arg-type]
    assert [v async for v in streamed] == [9]
    with pytest.raises(TypeError, match=r"unknown keyword 'max_paralel'.*'max_parallel'"):
        await MapReduce.map(broker, tasks["square"], [1], max_paralel=2)
    with pytest.warns(DeprecationWarning, match=r"kwargs=\{\.\.\.\}"):
        assert await MapReduce.map(broker, tasks["scaled"], [1], param_name="x", factor=2) == [2]
