"""Arguments reach the task as they were given, or are refused before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    MapReduce,
    Pipeline,
    UnserializableError,
    pipeline_task,
)

pytestmark = pytest.mark.usefixtures("lane")


def recorder(broker: InMemoryBroker, seen: list[Any]) -> Any:
    @broker.task
    async def record(item: Any, **_extra: Any) -> int:  # extra: a keyword a test sends
        seen.append(item)
        return 1

    return record


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (object(), "cannot be serialized by the broker"),
        ({1: "a"}, "cannot carry {1: 'a'}"),
        (float("nan"), "would arrive changed: the broker's JSON serializer cannot carry nan"),
        ({"deep": [{2: 3}]}, "would arrive changed"),
    ],
)
async def test_a_bad_item_is_refused_by_name_before_anything_is_sent(
    broker: InMemoryBroker, bad: Any, shown: str
) -> None:
    seen: list[Any] = []
    record = recorder(broker, seen)
    items = [1, 2, bad, 4]
    with pytest.raises(UnserializableError, match="step 'record', item 2") as error:
        await MapReduce.map(broker, record, items)
    assert shown in str(error.value)
    with pytest.raises(UnserializableError, match=r"step 'map\(record\)', item 2"):
        await Pipeline(broker).map(record, items).kiq()
    with pytest.raises(UnserializableError, match="item 2"):
        await MapReduce.map_reduce(broker, record, record, items)
    assert seen == []  # not one good item went out before the bad one was found


async def test_a_generator_is_sent_whole(broker: InMemoryBroker) -> None:
    seen: list[Any] = []
    record = recorder(broker, seen)
    assert await MapReduce.map(broker, record, (x * 2 for x in range(5))) == [1] * 5
    assert sorted(seen) == [0, 2, 4, 6, 8]
    seen.clear()
    result = await (await Pipeline(broker).map(record, (x for x in "abc")).kiq()).wait_result()
    assert result.return_value == [1, 1, 1] and sorted(seen) == ["a", "b", "c"]


async def test_values_the_serializer_keeps_go_through(broker: InMemoryBroker) -> None:
    seen: list[Any] = []
    record = recorder(broker, seen)
    items = [(1, 2), {"a": [1.5, None, True]}, "text", 3]  # a tuple arrives as a list
    assert await MapReduce.map(broker, record, items) == [1] * 4
    assert sorted(map(repr, seen)) == sorted(
        map(repr, [[1, 2], {"a": [1.5, None, True]}, "text", 3])
    )


def _pair() -> Any:
    yield 1
    yield 2


async def test_a_generator_is_refused_by_name_in_every_shape_and_never_sent_empty(
    broker: InMemoryBroker,
) -> None:
    """A generator read by the check would reach the task as ``[]``: every shape refuses it,
    naming the step, the item and the argument, before anything is sent."""
    seen: list[Any] = []
    record = recorder(broker, seen)

    @broker.task
    @pipeline_task(output="y")
    async def takes(x: Any) -> int:
        seen.append(x)
        return 1

    with pytest.raises(UnserializableError, match=r"argument 0 .*step 'record', item 1.*one-shot"):
        await MapReduce.map(broker, record, [1, _pair()])
    with pytest.raises(UnserializableError, match=r"argument 'x' .*step 'takes'.*generator"):
        await DataflowPipeline.from_tasks(broker, [takes]).kiq_dataflow(x=_pair())
    with pytest.raises(UnserializableError, match=r"argument 0 .*step 'record'.*one-shot"):
        await Pipeline(broker, record).kiq(_pair())
    with pytest.raises(UnserializableError, match=r"one-shot iterator \(list_iterator\)"):
        await MapReduce.map(broker, record, [{"nested": [iter([1, 2])]}])
    assert seen == []
    # The items themselves may be any iterable, a generator included: they are the map's input.
    assert await MapReduce.map(broker, record, (x for x in range(3))) == [1, 1, 1]
    assert seen == [0, 1, 2]


async def test_an_int_too_long_for_json_text_is_refused_before_sending(
    broker: InMemoryBroker,
) -> None:
    seen: list[Any] = []
    record = recorder(broker, seen)
    with pytest.raises(UnserializableError, match=r"step 'record', item 1\).*digits"):
        await MapReduce.map(broker, record, [1, 10**5000])
    with pytest.raises(UnserializableError, match=r"step 'map\(record\)', item 0"):
        await Pipeline(broker).map(record, [10**5000]).kiq()
    assert seen == []
    big = 10**4000  # within CPython's limit: sent and received whole
    assert await MapReduce.map(broker, record, [big]) == [1]
    assert seen == [big]


async def test_a_later_steps_own_items_are_checked_before_the_first_step_is_sent(
    broker: InMemoryBroker,
) -> None:
    seen: list[Any] = []
    record = recorder(broker, seen)
    pipeline = Pipeline(broker, record).map(record, [1, lambda: 1])
    with pytest.raises(UnserializableError, match=r"step 'map\(record\)', item 1"):
        await pipeline.kiq(0)
    extra = Pipeline(broker, record).call_next(record, param_name="item", extra=float("nan"))
    with pytest.raises(UnserializableError, match=r"argument 'extra'"):
        await extra.kiq(0)
    assert seen == []
