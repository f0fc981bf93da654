"""Dead letters kept in Redis: written by a run, listed and replayed by ``taskiq-flow runs`` in
other processes, through real `taskiq worker` processes. Every test talks to a real
redis-server."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    DeadLetter,
    DeadLetterQueue,
    PipelineTrackingManager,
    StepFailedError,
    pipeline_task,
)
from taskiq_flow.cli.runs import add_runs_commands, main_runs
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.distributed.deadletters import RedisDeadLetterQueue
from taskiq_flow.exceptions import CorruptRecordError, UnknownIdError
from taskiq_flow.retry import default_dead_letters, list_dead_letters, replay_dead_letter
from taskiq_flow.run.failures import dead_letters_for
from taskiq_flow.run.settings import Settings
from tests.test_distributed import TESTS, app_module, supervised_workers

#: What ``--broker test_dead_letters_redis:BROKER`` imports: it knows ``double`` only.
BROKER = InMemoryBroker()


@BROKER.task
async def double(x: int) -> int:
    return 2 * x


def letter(run: str, step: str = "charge", *args: Any, **kwargs: Any) -> DeadLetter:
    return DeadLetter(
        pipeline_id=run,
        step=step,
        task_name=f"app:{step}",
        args=args,
        kwargs=kwargs,
        error="RuntimeError: payment service unavailable",
        error_type="RuntimeError",
        attempts=3,
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="taskiq-flow")
    add_runs_commands(parser.add_subparsers(dest="command", required=True), redis_required=False)
    return parser.parse_args(["runs", *argv])


async def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await main_runs(parse(*argv), None, out)
    return code, out.getvalue()


async def cli_process(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """``taskiq-flow ARGV`` in a process of its own (in tests/, with the workers' environment)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskiq_flow.cli",
        *argv,
        cwd=TESTS,
        env=env or dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- the store ------------------------------------------------------------------------------------


async def test_records_round_trip_as_json_with_a_ttl_and_go_with_their_run(redis: Redis) -> None:
    store = RedisDeadLetterQueue(redis, prefix="dltest", ttl_seconds=600)
    first = letter("run-1", "charge", 7, (1, [2, "é"]), note={"lines": [1, 2]}, flag=None)
    second = letter("run-1", "ship", 8)
    other = letter("run-2", "charge", 9)
    for record in (first, second, other):
        store.add(record)
    await store.flush()
    assert store.unsaved == []
    keys = sorted(k.decode() for k in await redis.keys("dltest:*"))
    assert keys == sorted(
        [f"dltest:deadletter:{r.id}" for r in (first, second, other)]
        + ["dltest:run:run-1:deadletters", "dltest:run:run-2:deadletters"]
    )
    for key in keys:
        assert 0 < await redis.ttl(key) <= 600

    reader = RedisDeadLetterQueue(redis, prefix="dltest")  # another process's view
    assert [r.id for r in await reader.alist("run-1")] == [first.id, second.id]
    assert [r.id for r in await reader.alist()] == [first.id, second.id, other.id]
    got = await reader.aget(first.id)
    # Exactly what JSON carries: the tuple inside the arguments arrives as a list.
    assert got.args == (7, [1, [2, "é"]])
    assert got.kwargs == {"note": {"lines": [1, 2]}, "flag": None}
    assert (got.step, got.task_name, got.attempts, got.error) == (
        "charge",
        "app:charge",
        3,
        "RuntimeError: payment service unavailable",
    )
    assert got.failed_at == first.failed_at
    records, problems = await list_dead_letters(reader, "run-2")
    assert problems == [] and records == [other.to_json()]
    json.dumps(records)  # JSON-able as they are

    assert (await reader.aremove(second.id)).id == second.id
    with pytest.raises(UnknownIdError, match=second.id):
        await reader.aget(second.id)
    with pytest.raises(UnknownIdError):
        await reader.aremove(second.id)
    assert await redis.smembers("dltest:run:run-1:deadletters") == {first.id.encode()}
    assert await reader.delete_run("run-1") == 1
    assert sorted(k.decode() for k in await redis.keys("dltest:*")) == [
        f"dltest:deadletter:{other.id}",
        "dltest:run:run-2:deadletters",
    ]


async def test_deleting_a_run_from_tracking_deletes_its_dead_letters(redis: Redis) -> None:
    store = RedisDeadLetterQueue(redis, prefix="dldel")
    mine, other = letter("run-1"), letter("run-2")
    store.add(mine)
    store.add(other)
    await store.flush()
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="dldel"))
    # The run has no tracking record here, only dead letters: they still count as deleted.
    assert await tracking.delete_pipeline("run-1")
    assert [r.id for r in await store.alist()] == [other.id]
    assert not await tracking.delete_pipeline("run-1")


async def test_a_corrupt_record_is_named_and_the_others_still_listed(
    redis: Redis, redis_url: str
) -> None:
    store = RedisDeadLetterQueue(redis, prefix="dltest")
    good = letter("run-1", "charge", 1)
    store.add(good)
    await store.flush()
    await redis.set("dltest:deadletter:broken", b"{not json")
    await redis.sadd("dltest:run:run-1:deadletters", "broken")
    await redis.set("dltest:deadletter:half", json.dumps({"id": "half", "step": "x"}))
    await redis.sadd("dltest:run:run-1:deadletters", "half")

    corrupt: list[CorruptRecordError] = []
    assert [r.id for r in await store.alist("run-1", corrupt=corrupt)] == [good.id]
    assert sorted(str(e).split(" ")[4] for e in corrupt) == [
        "dltest:deadletter:broken",
        "dltest:deadletter:half",
    ]
    with pytest.raises(CorruptRecordError, match="dltest:deadletter:broken"):
        await store.aget("broken")

    where = ("--redis", redis_url, "--prefix", "dltest")
    code, out = await run_cli("dead-letters", "run-1", *where)
    assert code == 1 and good.id in out and "1 dead letter" in out
    code, out = await run_cli("dead-letters", *where, "--json")
    assert code == 1 and [r["id"] for r in json.loads(out)] == [good.id]
    code, _ = await run_cli(
        "replay", "broken", *where, "--broker", "test_dead_letters_redis:BROKER"
    )
    assert code == 1  # nothing sent: it cannot be read


async def test_one_run_keeps_at_most_max_per_run_records(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisDeadLetterQueue(redis, prefix="dltest", max_per_run=2)
    records = [letter("run-1", "charge", i) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="taskiq_flow"):
        for record in records:
            store.add(record)
        await store.flush()
    assert [r.id for r in await store.alist("run-1")] == [r.id for r in records[:2]]
    capped = [m for m in caplog.messages if "max_per_run" in m]
    assert len(capped) == 1 and "run-1 has 2 dead letters" in capped[0]
    store.add(letter("run-2", "charge", 9))  # another run has its own cap
    await store.flush()
    assert len(await store.alist("run-2")) == 1


async def test_what_redis_does_not_take_is_kept_in_the_process_and_logged(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gone = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=2)
    store = RedisDeadLetterQueue(gone, prefix="dltest")
    record = letter("run-1", "charge", 1)
    with caplog.at_level(logging.WARNING, logger="taskiq_flow"):
        store.add(record)
        await store.flush()  # never raises
    assert store.unsaved == [record]
    assert await store.aget(record.id) is record
    assert any("could not write 1 dead letter(s) to Redis" in m for m in caplog.messages)
    await gone.aclose()

    # Arguments JSON would change (a dict key that is not a str) are not stored, not altered.
    store = RedisDeadLetterQueue(redis, prefix="dltest")
    odd = letter("run-1", "charge", {1: "a"})
    store.add(odd)
    await store.flush()
    assert store.unsaved == [odd] and await redis.keys("dltest:*") == []
    assert (await store.alist("run-1"))[0].args == ({1: "a"},)


async def test_the_default_store_follows_the_runs_tracking(redis: Redis) -> None:
    storage = RedisPipelineStorage(redis, prefix="dltest", ttl_seconds=900)
    chosen = dead_letters_for(Settings.build(tracking=PipelineTrackingManager(storage)))
    assert isinstance(chosen, RedisDeadLetterQueue)
    assert (chosen.prefix, chosen.ttl_seconds, chosen.redis) == ("dltest", 900, redis)
    assert dead_letters_for(Settings.build(tracking=PipelineTrackingManager())) is (
        default_dead_letters()
    )
    assert dead_letters_for(Settings.build()) is default_dead_letters()
    given = DeadLetterQueue()
    assert dead_letters_for(Settings.build(dead_letters=given)) is given
    given_with_redis = Settings.build(dead_letters=given, tracking=PipelineTrackingManager(storage))
    assert dead_letters_for(given_with_redis) is given


def test_the_table_keeps_each_id_whole_and_shows_text_not_markup() -> None:
    from rich.console import Console

    from taskiq_flow.cli.runs import dead_letters_table

    records = [letter("run-" + "9" * 40, "s" * 30, 1), letter("run-1", "[bold]x[/bold]", 2)]
    records[1].error = "RuntimeError: [red]not markup[/red]\nsecond line"
    for width in (40, 60, 80, 120, 250):
        out = io.StringIO()
        Console(file=out, width=width, soft_wrap=False).print(dead_letters_table(records, width))
        lines = out.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width
        for record in records:
            assert any(line.startswith(record.id) for line in lines), (width, lines)
        assert "second line" not in out.getvalue()
        if width >= 250:
            assert "[bold]x[/bold]" in out.getvalue() and "[red]not" in out.getvalue()


# -- the command line: bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("replay", "a:b", "--broker", "m:b"), "dead letter id may hold only"),
        (("replay", "abc", "--broker", "not a path"), "--broker must look like"),
        (("replay", "abc", "--broker", "json:dumps"), "a function, not a taskiq broker"),
        (("replay", "abc", "--broker", "no_such_module_x:b"), "cannot import"),
        (("dead-letters", "r*"), "pipeline id must be"),
    ],
)
async def test_bad_input_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    gone = f"redis://127.0.0.1:{closed_port()}/0"
    assert (await run_cli(*argv, "--redis", gone))[0] == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "cannot reach" not in err


async def test_unknown_ids_tasks_and_a_silent_redis_are_one_line(
    redis: Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--redis", redis_url, "--prefix", "dltest")
    broker = ("--broker", "test_dead_letters_redis:BROKER")
    assert (await run_cli("replay", "nope", *where, *broker))[0] == 1
    assert capsys.readouterr().err == "taskiq-flow runs: no dead letter with id 'nope'\n"

    store = RedisDeadLetterQueue(redis, prefix="dltest")
    unknown = letter("run-1", "charge", 1)  # its task, app:charge, is not BROKER's
    store.add(unknown)
    await store.flush()
    assert (await run_cli("replay", unknown.id, *where, *broker))[0] == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no task named 'app:charge'" in err
    assert await store.aget(unknown.id)  # kept
    with pytest.raises(UnknownIdError, match="no task named 'app:charge'"):
        await replay_dead_letter(store, unknown.id, BROKER, timeout=5)

    with socket.create_server(("127.0.0.1", 0)) as server:  # a Redis that never answers
        silent = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        for argv in (("dead-letters",), ("replay", unknown.id, *broker)):
            assert (await run_cli(*argv, "--redis", silent, "--timeout", "0.3"))[0] == 1
            assert capsys.readouterr().err == (
                f"taskiq-flow runs: Redis at {silent} did not answer within 0.3 s (--timeout)\n"
            )


async def test_an_in_memory_replay_refuses_a_task_its_broker_does_not_know() -> None:
    queue = DeadLetterQueue()
    record = letter("run-1", "charge", 1)
    queue.add(record)
    with pytest.raises(UnknownIdError, match="no task named 'app:charge'"):
        await queue.replay(record.id, BROKER, timeout=5)
    assert queue.list() == [record]
    ok = DeadLetter("run-1", "double", double.task_name, (21,), {}, "E: x", "E", 1)
    queue.add(ok)
    await BROKER.startup()
    try:
        assert await replay_dead_letter(queue, ok.id, BROKER, timeout=5) == 42
    finally:
        await BROKER.shutdown()
    assert queue.list() == [record]


# -- a run's dead letters, from other processes ---------------------------------------------------


async def test_a_run_tracked_in_redis_leaves_its_dead_letters_in_redis(
    redis: Redis, redis_url: str
) -> None:
    broker = InMemoryBroker()
    service = {"up": False}

    @broker.task
    @pipeline_task(output="receipt")
    async def pay(order: int) -> str:
        if not service["up"]:
            raise RuntimeError(f"payment service unavailable for order {order}")
        return f"paid {order}"

    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="dltest"))
    pipeline = DataflowPipeline.from_tasks(broker, [pay]).with_tracking(tracking)
    pipeline.with_retry(max_attempts=2, delay=0.01)
    await broker.startup()
    try:
        with pytest.raises(StepFailedError):
            await pipeline.kiq_dataflow(order=5)
    finally:
        await broker.shutdown()
    run = pipeline.pipeline_id
    assert run is not None
    # Written before the run returned: no waiting here.
    [member] = await redis.smembers(f"dltest:run:{run}:deadletters")
    assert default_dead_letters().list(run) == []
    code, out, err = await cli_process(
        {}, "runs", "dead-letters", run, "--redis", redis_url, "--prefix", "dltest", "--json"
    )
    assert (code, err) == (0, "")
    [listed] = json.loads(out)
    assert listed["id"] == member.decode()
    assert (listed["pipeline_id"], listed["step"], listed["kwargs"], listed["attempts"]) == (
        run,
        "pay",
        {"order": 5},
        2,
    )
    assert listed["error"] == "RuntimeError: payment service unavailable for order 5"
    # Deleting the run deletes its dead letters.
    code, out, err = await cli_process(
        {}, "runs", "delete", run, "--redis", redis_url, "--prefix", "dltest"
    )
    assert (code, out.strip()) == (0, f"deleted {run}")
    assert await redis.keys("dltest:*") == []


@pytest.fixture
def dl_workers(redis_url: str) -> Iterator[dict[str, str]]:
    """One worker process consuming tests/dead_letters_app.py."""
    with supervised_workers(redis_url, "--workers", "1", app="dead_letters_app:broker") as found:
        yield found[0]


@pytest.fixture
async def dl_app(dl_workers: dict[str, str]) -> AsyncIterator[Any]:
    async with app_module(dl_workers, "dead_letters_app") as module:
        yield module


async def test_a_dead_letter_is_listed_and_replayed_from_another_process_through_workers(
    redis: Redis, redis_url: str, dl_workers: dict[str, str], dl_app: Any
) -> None:
    """A step fails for good on a worker; the CLI, in other processes, lists it, replays it
    (failing again: kept), and once the cause is fixed replays it through the workers: the
    value is printed and the record gone."""
    storage = RedisPipelineStorage(redis, prefix="dltest")
    pipeline = DataflowPipeline.from_tasks(dl_app.broker, [dl_app.charge])
    pipeline.with_tracking(PipelineTrackingManager(storage)).with_retry(max_attempts=2, delay=0.01)
    kept = DeadLetterQueue()
    pipeline.with_dead_letters(kept)
    with pytest.raises(StepFailedError, match="payment service unavailable for order 7"):
        await asyncio.wait_for(pipeline.kiq_dataflow(order=7, note={"lines": [1, 2]}), 60)
    run = pipeline.pipeline_id
    assert run is not None
    store = RedisDeadLetterQueue.for_storage(storage)
    for record in kept.list(run):  # what a run tracked in Redis does by itself
        store.add(record)
    await store.flush()

    where = ("--redis", redis_url, "--prefix", "dltest")
    code, out, err = await cli_process(dl_workers, "runs", "dead-letters", run, *where, "--json")
    assert (code, err) == (0, "")
    [listed] = json.loads(out)
    record_id = listed["id"]
    assert (listed["step"], listed["task_name"], listed["attempts"]) == (
        "charge",
        dl_app.charge.task_name,
        2,
    )
    assert listed["kwargs"] == {"order": 7, "note": {"lines": [1, 2]}}
    wide = {**dl_workers, "COLUMNS": "300"}
    code, out, err = await cli_process(wide, "runs", "dead-letters", *where)
    [row] = [line for line in out.splitlines() if record_id in line]
    assert code == 0 and run in row and "RuntimeError: payment service unavailable" in row
    assert "charge" in row and dl_app.charge.task_name in row
    code, out, err = await cli_process(dl_workers, "runs", "dead-letters", *where)  # 80 columns
    assert code == 0 and any(line.startswith(record_id) for line in out.splitlines()), out
    assert max(len(line) for line in out.splitlines()) <= 80

    replay = ("runs", "replay", record_id, *where, "--broker", "dead_letters_app:broker")
    code, out, err = await cli_process(dl_workers, *replay, "--run-timeout", "60")
    assert (code, out, err.count("\n")) == (1, "", 1), err
    assert "failed again, the record is kept" in err and "payment service unavailable" in err
    assert await redis.exists(f"dltest:deadletter:{record_id}")

    await redis.set("payments:up", 1)  # the cause, fixed
    code, out, err = await cli_process(dl_workers, *replay, "--run-timeout", "60")
    assert (code, err) == (0, ""), err
    assert json.loads(out) == {"order": 7, "note": {"lines": [1, 2]}, "charged": True}
    assert not await redis.exists(f"dltest:deadletter:{record_id}")
    assert await redis.smembers(f"dltest:run:{run}:deadletters") == set()
    assert int(await redis.get("charge:7:calls")) == 4  # 2 attempts, 2 replays
    code, out, err = await cli_process(dl_workers, "runs", "dead-letters", run, *where, "--json")
    assert (code, json.loads(out)) == (0, [])
