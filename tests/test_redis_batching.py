"""The Redis path in batches: one completion reader per channel, sends coalesced into one
pipelined write, workers acknowledging together. Real redis-server, real `taskiq worker`
processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from test_distributed import started_app, worker_processes

from taskiq_flow.distributed import RedisCompletionChannel
from taskiq_flow.events import Completion


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[Any]:
    with worker_processes(redis_url, "--workers", "2") as env:
        async with started_app(env) as module:
            yield module


async def test_hundreds_of_short_runs_back_to_back_share_one_reader(app: Any) -> None:
    """A finished run's reader must not keep a pooled connection: 300 runs back to back on one
    channel (redis-py's pool holds 100) all finish, and the channel keeps one blocking read."""
    from taskiq_flow.run.runner import run_single

    broker = app.broker
    for i in range(300):
        assert await run_single(broker, app.ping.task_name, (), {}, timeout=30) > 0, i
    channel = next(m.channel for m in broker.middlewares if hasattr(m, "channel"))
    client = channel._redis()
    assert len(client.connection_pool._in_use_connections) <= 3


async def test_one_reader_serves_many_open_runs_and_a_late_one_at_once(redis: Redis) -> None:
    """Completions of many runs open at once reach their own inbox; a run opened while the
    shared read blocks is read at once, not at the end of the block."""
    channel = RedisCompletionChannel(redis, block_ms=30_000)
    inboxes = {f"run-{i}": channel.open(f"run-{i}") for i in range(50)}
    for run_id in inboxes:
        await channel.publish(Completion(run_id, 1, 1, True, run_id, None, 0.0, 0.0))
    for run_id, inbox in inboxes.items():
        await asyncio.wait_for(inbox.wait(), 10)
        [completion] = inbox.drain()
        assert completion.value == run_id

    async def reads() -> int:  # connections blocked in XREAD
        return sum(c["cmd"] == "xread" for c in await redis.client_list())

    await until(reads, 10, "the shared reader to block")
    assert await reads() == 1  # one read for 50 open runs, not one each
    late = channel.open("late")
    await channel.publish(Completion("late", 3, 1, True, "here", None, 0.0, 0.0))
    await asyncio.wait_for(late.wait(), 5)  # not 30 s: the block was woken
    assert [c.value for c in late.drain()] == ["here"]
    for run_id in [*inboxes, "late"]:
        channel.close(run_id)
    await channel.aclose()


# -- the JSON codec: orjson where it means the same, json where it would not ---------------------

EDGES: list[Any] = [
    0,
    -(2**63),
    2**63,
    10**30,
    -(10**25),
    1.5,
    0.1 + 0.2,
    1e16,
    -0.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    "é ü 汉 🎉",
    "\ud800 lone",
    "null",
    None,
    [1, "two", 3.0, None, True, False],
    {"a": {"b": [1, {"c": 12345678901234567890}]}},
    {"x": float("nan")},
    "1234567890123456789012345",
]


@pytest.mark.parametrize("value", EDGES, ids=range(len(EDGES)))
def test_the_fast_codec_reads_and_writes_what_json_does(value: Any) -> None:
    import json
    import math

    from taskiq_flow.distributed.payload import dumps, loads

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    reference = json.loads(json.dumps(value))
    assert same(loads(dumps(value)), reference)
    assert same(loads(json.dumps(value)), reference)  # what json wrote reads the same
    assert same(json.loads(dumps(value)), reference)  # what we write, json reads the same


def test_the_fast_codec_refuses_by_size_exactly_as_json_would() -> None:
    import json

    from taskiq_flow.distributed.payload import encode
    from taskiq_flow.exceptions import PayloadTooLargeError

    value = {"k": list(range(300))}
    size = len(json.dumps(value))  # orjson's compact text is shorter
    assert len(encode(value, "v", size, 10)) <= size
    with pytest.raises(PayloadTooLargeError, match=f"is {size:,} bytes as JSON"):
        encode(value, "v", size - 1, 10)


async def test_completions_carry_edge_values_as_json_would(redis: Redis) -> None:
    import json
    import math

    channel = RedisCompletionChannel(redis)
    inbox = channel.open("edges")
    for node, value in enumerate(EDGES):
        await channel.publish(Completion("edges", node, 1, True, value, None, 0.5, 1.0))
    got: dict[int, Any] = {}
    while len(got) < len(EDGES):
        await asyncio.wait_for(inbox.wait(), 10)
        got.update({c.node: c.value for c in inbox.drain()})
    for node, value in enumerate(EDGES):
        reference = json.loads(json.dumps(value))
        if isinstance(reference, float) and math.isnan(reference):
            assert math.isnan(got[node])
        elif node != 18:  # {"x": nan}: nan != nan
            assert got[node] == reference and type(got[node]) is type(reference), node
    channel.close("edges")
    await channel.aclose()


# -- group commit: written at once when idle, together while a write is on its way ---------------


async def test_writes_made_while_one_is_on_its_way_go_out_together_each_told_its_own() -> None:
    from taskiq_flow.distributed.broker import GroupWriter

    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: list[int]) -> list[BaseException | None]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()  # the first write is on its way while the others come
        return [ValueError(f"refused {i}") if i % 5 == 0 else None for i in items]

    writer: GroupWriter[int] = GroupWriter(write)
    puts = [asyncio.ensure_future(writer.put(i)) for i in range(1, 12)]
    await until(lambda: batches, 5, "the first write")
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*puts, return_exceptions=True)
    assert batches == [[1], list(range(2, 12))]  # alone at once, then the rest together
    for i, outcome in zip(range(1, 12), outcomes):
        assert (str(outcome) == f"refused {i}") if i % 5 == 0 else outcome is None


async def test_a_caller_cancelled_as_it_was_to_write_the_next_batch_passes_it_on() -> None:
    from taskiq_flow.distributed.broker import GroupWriter

    batches: list[list[int]] = []
    gate = asyncio.Event()
    waiting: list[asyncio.Future[None]] = []

    async def write(items: list[int]) -> list[BaseException | None]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()
            # Cancelled just as this write hands it the next batch (before it runs again).
            asyncio.get_running_loop().call_soon(waiting[0].cancel)
        return [None] * len(items)

    writer: GroupWriter[int] = GroupWriter(write)
    first = asyncio.ensure_future(writer.put(1))
    await until(lambda: batches, 5, "the first write")
    waiting.append(asyncio.ensure_future(writer.put(2)))
    third = asyncio.ensure_future(writer.put(3))
    await asyncio.sleep(0)
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    await asyncio.wait_for(third, 5)  # written all the same, not stuck
    assert batches[0] == [1] and 3 in batches[-1]
    await asyncio.wait_for(writer.flushed(), 5)
