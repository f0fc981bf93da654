"""The lean connection the Redis hot paths use (distributed/resp.py), and what the broker writes
through it. Real redis-server; stalls, restarts and ACL users done for real."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_flow.distributed import reliable_stream_broker
from taskiq_flow.distributed.resp import LeanConnection, stream_entries
from taskiq_flow.testing import RedisProcess


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own, that the test may stall or restart."""
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.close()


def lean_of(url: str, **kwargs: Any) -> LeanConnection:
    lean = LeanConnection.from_pool(Redis.from_url(url, **kwargs).connection_pool)
    assert lean is not None
    return lean


async def _blocked_clients(redis: Redis) -> int:
    info = await redis.info("clients")
    return int(info["blocked_clients"])


async def test_a_batch_goes_out_at_once_and_each_reply_comes_back_in_its_place(
    redis: Redis, redis_url: str
) -> None:
    lean = lean_of(redis_url)
    try:
        replies = await lean.execute(
            [
                ("SET", "k", "v"),
                ("GET", "k"),
                ("XACK", "no-stream", "no-group", "1-1"),
                ("INCR", "k"),
            ]
        )
        assert replies[:3] == [b"OK", b"v", 0]
        assert isinstance(replies[3], ResponseError)  # INCR of "v": its error, in its place
        assert await lean.execute([("PING",)]) == [b"PONG"]  # the connection goes on
    finally:
        await lean.aclose()


async def test_a_caller_cancelled_while_it_waits_never_gets_its_reply_read_by_the_next(
    redis: Redis, redis_url: str
) -> None:
    lean = lean_of(redis_url)
    try:
        read = asyncio.ensure_future(
            lean.execute([("XREAD", "BLOCK", 10_000, "STREAMS", "s", "$")], block=10)
        )
        await until(lambda: _blocked_clients(redis), 10, "the read to block")
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        # Its reply (this entry) comes now, and must be dropped, not taken as GET's.
        await redis.xadd("s", {"f": "entry"})
        await redis.set("k", "mine")
        assert await lean.execute([("GET", "k")]) == [b"mine"]
    finally:
        await lean.aclose()


async def test_a_stalled_redis_times_the_call_out_and_the_next_call_reconnects(
    own_redis: RedisProcess,
) -> None:
    admin = Redis.from_url(own_redis.url)
    lean = lean_of(own_redis.url, socket_timeout=0.3)
    try:
        assert await lean.execute([("PING",)]) == [b"PONG"]
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(RedisTimeoutError):
            await lean.execute([("SET", "k", "stalled")])
        await until(lambda: _unpaused(admin), 10, "the pause to end")
        assert await lean.execute([("GET", "k")]) in ([b"stalled"], [None])
        assert await lean.execute([("PING",)]) == [b"PONG"]
    finally:
        await lean.aclose()
        await admin.aclose()


async def _unpaused(admin: Redis) -> bool:
    return bool(await admin.ping())


async def test_a_restart_fails_the_waiting_caller_and_the_connection_comes_back(
    own_redis: RedisProcess,
) -> None:
    lean = lean_of(own_redis.url)
    try:
        read = asyncio.ensure_future(
            lean.execute([("XREAD", "BLOCK", 10_000, "STREAMS", "s", "$")], block=10)
        )
        admin = Redis.from_url(own_redis.url)
        await until(lambda: _blocked_clients(admin), 10, "the read to block")
        await admin.aclose()
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(read, 10)
        with pytest.raises(RedisConnectionError):
            await lean.execute([("PING",)])
        own_redis.start()
        assert await lean.execute([("PING",)]) == [b"PONG"]
    finally:
        await lean.aclose()


async def test_an_acl_user_and_a_database_from_the_url_are_honoured(
    own_redis: RedisProcess,
) -> None:
    admin = Redis.from_url(own_redis.url)
    await admin.execute_command("ACL", "SETUSER", "flow", "on", ">secret", "~*", "+@all")
    host = own_redis.url.removeprefix("redis://")
    lean = lean_of(f"redis://flow:secret@{host}/3")
    wrong = lean_of(f"redis://flow:wrong@{host}/3")
    try:
        assert await lean.execute([("SET", "k", "in db 3")]) == [b"OK"]
        db3 = Redis.from_url(f"{own_redis.url}/3")
        assert await db3.get("k") == b"in db 3"
        assert await admin.get("k") is None
        await db3.aclose()
        with pytest.raises(AuthenticationError):
            await wrong.execute([("PING",)])
    finally:
        await lean.aclose()
        await wrong.aclose()
        await admin.aclose()


def test_settings_a_lean_connection_does_not_speak_stay_on_redis_py() -> None:
    assert LeanConnection.from_pool(Redis.from_url("redis://127.0.0.1:1/0").connection_pool)
    assert LeanConnection.from_pool(Redis.from_url("unix:///tmp/r.sock?db=2").connection_pool)
    for client in (
        Redis.from_url("rediss://127.0.0.1:1/0"),
        Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True),
        Redis.from_url("redis://127.0.0.1:1/0", protocol=3),
        Redis.from_url("redis://127.0.0.1:1/0", client_name="mine"),
    ):
        assert LeanConnection.from_pool(client.connection_pool) is None


def test_stream_replies_read_as_redis_py_gives_them() -> None:
    reply = [[b"s", [[b"1-0", [b"data", b"x", b"more", b"y"]], [b"2-0", None]]]]
    assert stream_entries(reply) == [
        (b"s", [(b"1-0", {b"data": b"x", b"more": b"y"}), (b"2-0", None)])
    ]
    assert stream_entries(None) == []
    with pytest.raises(ResponseError, match="NOGROUP"):
        stream_entries(ResponseError("NOGROUP no such group"))


async def test_a_batch_of_acknowledgements_is_one_transaction_with_one_expire_per_stream(
    redis: Redis, redis_url: str
) -> None:
    """Three completions of one run acknowledged together: their three entries, one EXPIRE of
    the run's stream (not three), the messages acknowledged and deleted, all in one
    MULTI/EXEC."""
    broker: Any = reliable_stream_broker(redis_url, queue_name="lean-q")
    await broker.startup()
    try:
        ids = [await redis.xadd("lean-q", {"data": f"m{i}"}) for i in range(3)]
        read = await redis.xreadgroup(broker.consumer_group_name, "c1", {"lean-q": ">"})
        assert [m for m, _ in read[0][1]] == ids
        await redis.config_resetstat()
        batch = [
            ("lean-q", i, ("taskiq_flow:done:r1", f'{{"n": {n}}}', 600)) for n, i in enumerate(ids)
        ]
        assert await broker._ack_batch(batch) == [None, None, None]
        stats = await redis.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        assert calls.get("expire") == 1
        assert calls.get("multi") == 1 and calls.get("exec") == 1
        assert calls.get("xadd") == 3
        assert await redis.xlen("taskiq_flow:done:r1") == 3
        assert 0 < await redis.ttl("taskiq_flow:done:r1") <= 600
        assert await redis.xlen("lean-q") == 0
        pending = await redis.xpending("lean-q", broker.consumer_group_name)
        assert pending["pending"] == 0
    finally:
        await broker.shutdown()


async def test_a_blocking_read_cut_by_the_workers_stop_takes_nothing_more(
    redis: Redis, redis_url: str
) -> None:
    """A worker's blocking read cancelled as it stops drops its connection: Redis ends the read,
    and a message sent afterwards waits for a live worker instead of being taken by this one."""
    broker: Any = reliable_stream_broker(redis_url, queue_name="lean-stop", xread_block=10_000)
    await broker.startup()
    try:
        read = asyncio.ensure_future(broker._next_batch(None))
        await until(lambda: _blocked_clients(redis), 10, "the read to block")
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read

        async def unblocked() -> bool:
            return await _blocked_clients(redis) == 0

        await until(unblocked, 10, "Redis to end the cut read")
        await redis.xadd("lean-stop", {"data": "sent after the stop"})
        pending = await redis.xpending("lean-stop", broker.consumer_group_name)
        assert pending["pending"] == 0
    finally:
        await broker.shutdown()


async def test_a_read_cut_from_inside_is_a_failed_read_and_its_caller_goes_on() -> None:
    """`cancellable`: a read whose own task was cancelled (not its caller) fails as a connection
    error, which the worker's loop retries; a cancelled caller still stops at once."""
    from taskiq_flow.distributed.aio import cancellable

    async def cut_from_inside() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with pytest.raises(RedisConnectionError, match="cancelled"):
        await cancellable(cut_from_inside())
    caller = asyncio.ensure_future(cancellable(asyncio.sleep(30)))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_an_unexpected_error_in_the_workers_read_never_ends_its_listening(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """taskiq ends a worker's process when its broker's `listen` raises: an error that is not
    Redis's (a bug) is logged with its traceback, and the next read takes the message."""
    broker: Any = reliable_stream_broker(redis_url, queue_name="lean-odd", xread_block=100)
    await broker.startup()
    read = broker._next_batch
    failures = [RuntimeError("an unforeseen failure")]

    async def failing_once(conn: Any) -> Any:
        if failures:
            raise failures.pop()
        return await read(conn)

    broker._next_batch = failing_once

    @broker.task
    async def noop() -> None:
        pass

    messages = broker.listen()
    try:
        sent = await noop.kiq()
        message = await asyncio.wait_for(anext(messages), 30)
        assert broker.formatter.loads(message.data).task_id == sent.task_id
        assert not failures
        assert "an unforeseen failure" in caplog.text and "Traceback" in caplog.text
    finally:
        await messages.aclose()
        await broker.shutdown()


@pytest.mark.parametrize("client_name", [None, "named"])
async def test_the_completion_reader_reads_on_the_lean_connection_or_on_redis_py(
    redis_url: str, client_name: str | None
) -> None:
    """A run's completions reach its inbox whichever connection the channel's reader blocks
    on: the lean one by default, redis-py's for a client set up with what the lean one does
    not speak (here a client name)."""
    import time

    from taskiq_flow.distributed import RedisCompletionChannel
    from taskiq_flow.events import Completion

    client = Redis.from_url(redis_url, client_name=client_name)
    channel = RedisCompletionChannel(client, prefix="leanread", block_ms=5_000)
    try:
        inbox = channel.open("r1")
        await channel.opened("r1")
        await until(lambda: _blocked_clients(client), 10, "the reader to block")
        for node in range(3):
            await channel.publish(Completion("r1", node, 1, True, node, None, 0.0, time.time()))
        got: list[Completion] = []
        while len(got) < 3:
            await asyncio.wait_for(inbox.wait(), 10)
            got += inbox.drain()
        assert [c.value for c in got] == [0, 1, 2]
        assert (channel._lean is None) == (client_name is not None)
        channel.close("r1")
    finally:
        await channel.aclose()
        await client.aclose()
