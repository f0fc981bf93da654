"""Property: an argument reaches its task exactly as given, or is refused before anything is sent.

Generated arguments mix what JSON carries (ints of any size, finite floats, strs, bools, None,
lists, tuples, str-keyed dicts) with what it would alter or cannot carry: NaN and infinities
(sent as ``null``), non-str dict keys (sent as strs), ints too long for CPython's int-to-text
limit, one-shot iterators of any length (a check reads them, leaving the task the rest), and
objects the serializer does not know (one whose ``__repr__`` raises, too). Whatever the mix, the
run either refuses it with :class:`UnserializableError` before the task sees anything, or the task
receives a value equal to what was given (tuples arrive as lists: JSON has no tuple, and an
annotated parameter turns them back), in a map and as a dataflow input alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, MapReduce, UnserializableError, pipeline_task

pytestmark = pytest.mark.usefixtures("lane")


class Opaque:
    """A type the JSON serializer does not know, whose ``repr`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")


def _one_shot(length: int) -> Iterator[int]:
    yield from range(length)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4300, max_value=10**4400),  # past CPython's int-to-text limit
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.integers(min_value=0, max_value=5).map(_one_shot),
    st.integers(min_value=0, max_value=5).map(lambda n: iter(list(range(n)))),
    st.builds(Opaque),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.dictionaries(st.integers(), inner, min_size=1, max_size=2),
    ),
    max_leaves=8,
)


def faithful(value: Any) -> bool:
    """Whether JSON carries ``value`` without altering it (the oracle, apart from the code)."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return len(str(abs(value))) <= 4300 if abs(value) < 10**4300 else False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(faithful(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and faithful(v) for k, v in value.items())
    return False  # iterators, unknown types


def as_json(value: Any) -> Any:
    """What arrives for a faithful value: tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Equal, with types: ``True`` is not ``1``, ``1.0`` is not ``1``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


broker = InMemoryBroker()
seen: list[Any] = []


@broker.task
async def record(item: Any) -> int:
    seen.append(item)
    return 1


@broker.task
@pipeline_task(output="kept")
async def keep(given: Any) -> int:
    seen.append(given)
    return 1


@given(value=values)
async def test_a_map_item_arrives_as_given_or_is_refused_before_sending(value: Any) -> None:
    seen.clear()
    expected_ok = faithful(value)
    try:
        await MapReduce.map(broker, record, [0, value])
    except UnserializableError:
        assert not expected_ok, "refused a value JSON carries faithfully"
        assert seen == [], "something was sent before the refusal"
        return
    assert expected_ok, f"sent a value JSON alters: it arrived as {seen[-1]!r}"
    assert seen[0] == 0 and same(seen[1], as_json(value))


@given(value=values)
async def test_a_dataflow_input_arrives_as_given_or_is_refused_before_sending(value: Any) -> None:
    seen.clear()
    pipeline = DataflowPipeline.from_tasks(broker, [keep])
    try:
        outputs = await pipeline.kiq_dataflow(given=value)
    except UnserializableError:
        assert not faithful(value)
        assert seen == []
        return
    assert faithful(value) and outputs == {"kept": 1}
    assert same(seen[0], as_json(value))
