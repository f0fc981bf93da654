"""Tasks that return what a recipe describes, hostile values included, for the result-fidelity
tests: imported by the test (in process, and as the orchestrator) and by real `taskiq worker`
processes (over Redis, when TASKIQ_FLOW_FIDELITY_REDIS is set).

A recipe is plain JSON (lists, strs, ints), so that sending it as an argument changes nothing:
the value is built where the task runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, field_serializer
from taskiq import AsyncBroker, InMemoryBroker

from taskiq_flow import FlowMiddleware


class BadRepr:
    """An object whose ``__repr__`` and ``__str__`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


class BadEncoder(BaseModel):
    """A model whose custom serializer raises."""

    x: int = 1

    @field_serializer("x")
    def _x(self, value: int) -> int:
        raise RuntimeError("this encoder refuses")


class BadStrError(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


def _generate(items: list[Any]) -> Iterator[Any]:
    yield from items


def _generate_then_fail(items: list[Any]) -> Iterator[Any]:
    yield from items
    raise KeyError("the generator broke")


def build(recipe: list[Any]) -> Any:
    """The value a recipe describes (see tests/test_result_fidelity.py for the kinds)."""
    kind, *rest = recipe
    if kind == "none":
        return None
    if kind == "bool":
        return bool(rest[0])
    if kind == "int":
        return int(rest[0])
    if kind == "bigint":
        return 10 ** int(rest[0]) + 7
    if kind == "float":
        return float(rest[0])
    if kind == "str":
        return str(rest[0])
    if kind == "list":
        return [build(r) for r in rest[0]]
    if kind == "tuple":
        return tuple(build(r) for r in rest[0])
    if kind == "dict":
        return {build(k): build(v) for k, v in rest[0]}
    if kind == "gen":
        return _generate([build(r) for r in rest[0]])
    if kind == "iter":
        return iter([build(r) for r in rest[0]])
    if kind == "count":
        return iter(range(int(rest[0])))
    if kind == "badgen":
        return _generate_then_fail([build(r) for r in rest[0]])
    if kind == "selfref":
        value = [build(r) for r in rest[0]]
        value.append(value)
        return value
    if kind == "badrepr":
        return BadRepr()
    if kind == "badencoder":
        return BadEncoder()
    raise ValueError(f"unknown recipe {kind!r}")


def _make_broker() -> AsyncBroker:
    url = os.environ.get("TASKIQ_FLOW_FIDELITY_REDIS")
    if url is None:
        return InMemoryBroker()
    from taskiq_flow.distributed import (
        RedisCompletionChannel,
        json_result_backend,
        reliable_stream_broker,
    )

    return (
        reliable_stream_broker(
            url,
            queue_name=os.environ["TASKIQ_FLOW_FIDELITY_QUEUE"],
            xread_block=300,
            lease_seconds=5,
        )
        .with_result_backend(json_result_backend(url, prefix_str="fidelity_results"))
        .with_middlewares(FlowMiddleware(RedisCompletionChannel(url)))
    )


broker = _make_broker()


@broker.task
async def produce(recipe: list[Any]) -> Any:
    """Returns what ``recipe`` describes; ``["raise"]`` raises an exception that cannot be
    shown."""
    if recipe[0] == "raise":
        raise BadStrError()
    return build(recipe)


@broker.task
async def ping() -> int:
    return os.getpid()
