"""One run per key (taskiq_flow.once): in one process, and across processes on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    InvalidValueError,
    MapReduce,
    Pipeline,
    StepFailedError,
    pipeline_task,
)
from taskiq_flow.exceptions import PayloadTooLargeError, RemoteTaskError
from taskiq_flow.once import IdempotencyKey, InMemoryKeyStore, RedisKeyStore

TESTS = Path(__file__).resolve().parent


class Counting:
    """A broker's sends, counted (what "nothing sent" is checked against)."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.sent = 0
        original = broker.kick

        async def kick(message: Any) -> None:
            self.sent += 1
            await original(message)

        broker.kick = kick  # type: ignore[method-assign]


def gated_pipeline(broker: InMemoryBroker, gate: asyncio.Event, calls: list[int]) -> Any:
    @broker.task
    @pipeline_task(output="total")
    async def total(x: int) -> int:
        calls.append(x)
        await gate.wait()
        return x * 10

    return DataflowPipeline.from_tasks(broker, [total])


async def test_concurrent_triggers_of_one_key_make_one_run_and_share_its_result(
    broker: InMemoryBroker,
) -> None:
    gate, calls = asyncio.Event(), []
    pipeline = gated_pipeline(broker, gate, calls)
    store = InMemoryKeyStore()
    keyed = [pipeline.with_idempotency_key("order-1", store=store) for _ in range(50)]
    triggers = [asyncio.ensure_future(p.kiq_dataflow(x=4)) for p in keyed]
    await until(lambda: calls, 10, "the run to start")
    await until(lambda: all(p.pipeline_id for p in keyed), 10, "every trigger to attach")
    assert not any(t.done() for t in triggers)  # attached to the live run, not answered early
    gate.set()
    results = await asyncio.gather(*triggers)
    assert results == [{"total": 40}] * 50
    assert calls == [4]  # one run
    assert len({p.pipeline_id for p in keyed}) == 1  # same run id for every trigger
    assert pipeline.idempotency_key is None  # the pipeline itself is not keyed


async def test_a_finished_keys_result_is_returned_without_sending_anything(
    broker: InMemoryBroker,
) -> None:
    gate, calls = asyncio.Event(), []
    gate.set()
    pipeline = gated_pipeline(broker, gate, calls)
    counting = Counting(broker)
    store = InMemoryKeyStore()
    first = pipeline.with_idempotency_key("k", store=store)
    assert await first.kiq_dataflow(x=2) == {"total": 20}
    sent = counting.sent
    again = pipeline.with_idempotency_key("k", store=store)
    # Other inputs: the key names the run, the inputs do not make another one.
    assert await again.kiq_dataflow(x=3) == {"total": 20}
    assert counting.sent == sent == 1
    assert calls == [2]
    assert again.pipeline_id == first.pipeline_id
    # Another key, another pipeline name: other runs.
    assert await pipeline.with_idempotency_key("k2", store=store).kiq_dataflow(x=3) == {"total": 30}


async def test_different_keys_on_one_pipeline_run_concurrently(broker: InMemoryBroker) -> None:
    gate, calls = asyncio.Event(), []
    gate.set()
    pipeline = gated_pipeline(broker, gate, calls)
    store = InMemoryKeyStore()
    results = await asyncio.gather(
        *(pipeline.with_idempotency_key(f"k{i}", store=store).kiq_dataflow(x=i) for i in range(5))
    )
    assert results == [{"total": i * 10} for i in range(5)]
    assert sorted(calls) == list(range(5))


async def test_a_failed_run_frees_its_key_and_attached_triggers_get_its_failure(
    broker: InMemoryBroker,
) -> None:
    gate = asyncio.Event()
    attempts: list[int] = []

    @broker.task
    @pipeline_task(output="value")
    async def flaky(x: int) -> int:
        attempts.append(x)
        await gate.wait()
        if len(attempts) == 1:
            raise RuntimeError("first time fails")
        return x

    pipeline = DataflowPipeline.from_tasks(broker, [flaky])
    store = InMemoryKeyStore()
    both = [
        asyncio.ensure_future(pipeline.with_idempotency_key("f", store=store).kiq_dataflow(x=1))
        for _ in range(2)
    ]
    await until(lambda: attempts, 10, "the run to start")
    gate.set()
    outcomes = await asyncio.gather(*both, return_exceptions=True)
    assert all(isinstance(o, StepFailedError) for o in outcomes), outcomes
    assert outcomes[0] is outcomes[1]  # the same failure
    assert await pipeline.with_idempotency_key("f", store=store).kiq_dataflow(x=1) == {"value": 1}
    assert attempts == [1, 1]  # the next trigger ran again


async def test_sequential_pipeline_kiq_is_one_run_per_key(broker: InMemoryBroker) -> None:
    gate, calls = asyncio.Event(), []

    @broker.task
    async def double(x: int) -> int:
        calls.append(x)
        await gate.wait()
        return 2 * x

    pipeline = Pipeline(broker, double)
    store = InMemoryKeyStore()
    handles = [await pipeline.with_idempotency_key("p", store=store).kiq(5) for _ in range(10)]
    assert len({h.pipeline_id for h in handles}) == 1
    gate.set()
    results = [await h.wait_result(timeout=10) for h in handles]
    assert [r.return_value for r in results] == [10] * 10 and not any(r.is_err for r in results)
    later = await pipeline.with_idempotency_key("p", store=store).kiq(6)
    assert later.pipeline_id == handles[0].pipeline_id
    assert (await later.wait_result(timeout=10)).return_value == 10
    assert calls == [5]


async def test_mapreduce_calls_take_an_idempotency_key(broker: InMemoryBroker) -> None:
    calls: list[int] = []

    @broker.task
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    @broker.task
    async def add(a: int, b: int) -> int:
        return a + b

    store = InMemoryKeyStore()
    key = IdempotencyKey("batch", store=store)
    results = await asyncio.gather(
        *(MapReduce.map(broker, square, range(4), idempotency_key=key) for _ in range(3))
    )
    assert results == [[0, 1, 4, 9]] * 3
    assert sorted(calls) == [0, 1, 2, 3]
    total = IdempotencyKey("sum", store=store)
    assert await MapReduce.reduce(broker, add, [1, 2, 3], idempotency_key=total) == 6
    assert await MapReduce.reduce(broker, add, [5, 5], idempotency_key=total) == 6
    both = IdempotencyKey("both", store=store)
    assert await MapReduce.map_reduce(broker, square, add, [1, 2], idempotency_key=both) == 5
    assert await MapReduce.map_reduce(broker, square, add, [3], idempotency_key=both) == 5
    # A plain str key: the process's default store.
    assert await MapReduce.map(broker, square, [7], idempotency_key="plain-str-key") == [49]


@pytest.mark.parametrize(
    ("key", "ttl", "store", "message"),
    [
        ("", 10.0, None, "non-empty str"),
        (3, 10.0, None, "non-empty str"),
        (None, 10.0, None, "non-empty str"),
        ("k", 0, None, "ttl"),
        ("k", -1.0, None, "ttl"),
        ("k", float("nan"), None, "ttl"),
        ("k", True, None, "ttl"),
        ("k", 10.0, "redis://x", "KeyStore"),
    ],
)
async def test_bad_keys_are_refused_where_given(
    broker: InMemoryBroker, key: Any, ttl: Any, store: Any, message: str
) -> None:
    counting = Counting(broker)

    @broker.task
    async def one(x: int) -> int:
        return x

    with pytest.raises(InvalidValueError, match=message):
        DataflowPipeline(broker).with_idempotency_key(key, ttl=ttl, store=store)
    with pytest.raises(InvalidValueError, match=message):
        IdempotencyKey(key, ttl, store)
    if store is None and ttl == 10.0 and key is not None:
        with pytest.raises(InvalidValueError, match=message):
            await MapReduce.map(broker, one, [1], idempotency_key=key)
    assert counting.sent == 0


# -- across processes, on a real Redis ----------------------------------------------------------


async def test_two_stores_on_one_redis_make_one_run(broker: InMemoryBroker, redis: Redis) -> None:
    """Two stores stand for two processes (no flight is shared between them): one claim wins,
    the other attaches through Redis and gets the same run id and result."""
    gate, calls = asyncio.Event(), []
    pipeline = gated_pipeline(broker, gate, calls)
    one = pipeline.with_idempotency_key("r", store=RedisKeyStore(redis))
    two = pipeline.with_idempotency_key("r", store=RedisKeyStore(redis))
    first = asyncio.ensure_future(one.kiq_dataflow(x=1))
    await until(lambda: calls, 10, "the run to start")
    second = asyncio.ensure_future(two.kiq_dataflow(x=1))
    await until(lambda: two.pipeline_id, 10, "the second trigger to attach")
    assert two.pipeline_id == one.pipeline_id
    gate.set()
    assert await first == await second == {"total": 10}
    assert calls == [1]
    [record] = [k async for k in redis.scan_iter("taskiq_flow:once:*")]
    ttl = await redis.pttl(record)
    assert 86_390_000 < ttl <= 86_400_000  # kept for the default TTL
    stored = json.loads(await redis.get(record))
    assert stored["state"] == "done" and stored["result"] == {"total": 10}
    third = pipeline.with_idempotency_key("r", store=RedisKeyStore(redis), ttl=30)
    assert await third.kiq_dataflow(x=9) == {"total": 10}  # stored: nothing sent
    assert calls == [1]


async def test_a_failure_over_redis_frees_the_key(broker: InMemoryBroker, redis: Redis) -> None:
    gate, attempts = asyncio.Event(), []

    @broker.task
    @pipeline_task(output="value")
    async def flaky(x: int) -> int:
        attempts.append(x)
        await gate.wait()
        if len(attempts) == 1:
            raise RuntimeError("boom")
        return x

    pipeline = DataflowPipeline.from_tasks(broker, [flaky])
    mine = asyncio.ensure_future(
        pipeline.with_idempotency_key("f", store=RedisKeyStore(redis)).kiq_dataflow(x=2)
    )
    await until(lambda: attempts, 10, "the run to start")
    other = pipeline.with_idempotency_key("f", store=RedisKeyStore(redis))
    theirs = asyncio.ensure_future(other.kiq_dataflow(x=2))
    await until(lambda: other.pipeline_id, 10, "the other trigger to attach")
    gate.set()
    with pytest.raises(StepFailedError):
        await mine
    with pytest.raises(RemoteTaskError, match="boom"):
        await theirs
    again = pipeline.with_idempotency_key("f", store=RedisKeyStore(redis))
    assert await again.kiq_dataflow(x=2) == {"value": 2}
    assert attempts == [2, 2]


async def test_a_result_json_would_change_is_refused_clearly(
    broker: InMemoryBroker, redis: Redis
) -> None:
    from taskiq_flow.once import run_keyed

    runs: list[str] = []

    async def start(pipeline_id: str, resuming: bool) -> Any:
        runs.append(pipeline_id)
        return (1, 2)  # what a broker with a pickle serializer could hand back

    key = IdempotencyKey("t", store=RedisKeyStore(redis))
    assert await run_keyed(key, "p", start, resumable=False) == (1, 2)  # the caller gets it
    [record] = [k async for k in redis.scan_iter("taskiq_flow:once:*")]
    stored = json.loads(await redis.get(record))
    assert stored["state"] == "failed" and "different value" in stored["error"]
    assert await redis.pttl(record) <= 60_000  # kept only for attached callers: the key is free
    assert await run_keyed(key, "p", start, resumable=False) == (1, 2)
    assert len(set(runs)) == 2  # the next trigger ran again
    store = RedisKeyStore(redis)
    with pytest.raises(PayloadTooLargeError, match="different value"):
        await store.finish("x", "run", "me", (1, 2), 10)  # refused before any write
    assert await store.claim("y", "run", "me", 10) is None
    with pytest.raises(PayloadTooLargeError, match="not a str"):
        await store.finish("y", "run", "me", {1: "a"}, 10)


ORCHESTRATOR = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from redis.asyncio import Redis
    from taskiq import InMemoryBroker
    from taskiq_flow import DataflowPipeline, pipeline_task
    from taskiq_flow.once import RedisKeyStore

    URL = os.environ["ONCE_REDIS"]
    broker = InMemoryBroker()

    @broker.task
    @pipeline_task(output="total")
    async def total(x: int) -> int:
        redis = Redis.from_url(URL)
        await redis.incr("once:runs")
        await redis.blpop(["once:release"], 60)  # live until the test lets it finish
        await redis.aclose()
        return x * 10

    async def main() -> None:
        await broker.startup()
        redis = Redis.from_url(URL)
        store = RedisKeyStore(redis)
        pipeline = DataflowPipeline.from_tasks(broker, [total])
        keyed = [pipeline.with_idempotency_key("one-key", store=store) for _ in range(500)]
        triggers = [asyncio.ensure_future(p.kiq_dataflow(x=7)) for p in keyed]
        while not all(p.pipeline_id for p in keyed):  # every trigger attached or owns the run
            await asyncio.sleep(0.005)
        print("ready", flush=True)
        results = await asyncio.gather(*triggers)
        print(json.dumps({"results": results, "ids": sorted({p.pipeline_id for p in keyed})}))
        await redis.aclose()

    asyncio.run(main())
    """
)


async def test_two_orchestrator_processes_500_triggers_each_one_run(
    redis: Redis, redis_url: str
) -> None:
    env = {**os.environ, "ONCE_REDIS": redis_url}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", ORCHESTRATOR, env=env, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready", line
        await redis.lpush("once:release", 1)
        outs = [json.loads(await asyncio.wait_for(p.stdout.read(), 60)) for p in procs]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    assert int(await redis.get("once:runs")) == 1  # exactly one run
    assert all(out["results"] == [{"total": 70}] * 500 for out in outs)  # every caller's result
    assert outs[0]["ids"] == outs[1]["ids"] and len(outs[0]["ids"]) == 1  # one run id


async def test_a_key_whose_orchestrator_died_is_taken_over(
    broker: InMemoryBroker, redis: Redis
) -> None:
    """A running claim whose owner's lease is gone (its orchestrator died): the next trigger
    takes it over; without tracking that keeps leases it runs it again under a new id."""
    gate, calls = asyncio.Event(), []
    gate.set()
    pipeline = gated_pipeline(broker, gate, calls)
    dead = RedisKeyStore(redis)
    assert await dead.claim(f"{pipeline.name}\x1fk", "deadrun", "dead-owner", 600) is None
    record, lease = dead.keys_of(f"{pipeline.name}\x1fk")
    live = pipeline.with_idempotency_key("k", store=RedisKeyStore(redis))
    waiting = asyncio.ensure_future(live.kiq_dataflow(x=5))
    await until(lambda: live.pipeline_id == "deadrun", 10, "the trigger to attach")
    assert not waiting.done() and not calls  # the owner's lease holds: it waits
    await redis.delete(lease)  # the dead owner's lease lapses
    assert await waiting == {"total": 50}
    assert calls == [5] and live.pipeline_id not in ("deadrun", "")
    stored = json.loads(await redis.get(record))
    assert stored["state"] == "done" and stored["run"] == live.pipeline_id


def test_a_key_store_that_implements_nothing_cannot_be_made() -> None:
    from taskiq_flow import KeyStore

    class Half(KeyStore):
        pass

    with pytest.raises(TypeError, match="abstract methods claim, fail, finish, read, take_over"):
        Half()  # type: ignore[abstract]
