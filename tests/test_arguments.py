"""Arguments reach the task as they were given, or are refused before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow import MapReduce, Pipeline, UnserializableError


def recorder(broker: InMemoryBroker, seen: list[Any]) -> Any:
    @broker.task
    async def record(item: Any) -> int:
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
