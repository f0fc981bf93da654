"""What production does to the Redis mode, done for real: worker children SIGKILLed, steps longer
than any idle guess, stale reclaim locks, messages no worker can run, Redis stalled and restarted
with its data lost, orchestrators killed mid-run, huge and deep values. Every test runs a real
redis-server and real `taskiq worker` processes; waits are for events, bounded by timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Gauge, until
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from taskiq import InMemoryBroker
from test_distributed import TESTS, flow_workers, started_app, supervised_workers

from taskiq_flow import MapReduce, PipelineTrackingManager, RetryPolicy, StepFailedError
from taskiq_flow.distributed import RedisPipelineStorage, json_result_backend
from taskiq_flow.exceptions import (
    CorruptRecordError,
    PipelineError,
    RunStateLostError,
    UndeliverableMessageError,
)
from taskiq_flow.optimization.parallel import global_cap, set_max_parallel_tasks
from taskiq_flow.testing import RedisProcess


def children(pid: int) -> set[int]:
    """The child processes of ``pid`` (a taskiq supervisor's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


async def starts(redis: Redis) -> list[tuple[int, float, int]]:
    """Every start of a `tracked` task so far: (item, time, pid)."""
    return [tuple(json.loads(raw)) for raw in await redis.lrange("tracked:starts", 0, -1)]


def rerun_delay(history: list[tuple[int, float, int]], dead: int, killed_at: float) -> float:
    """Seconds from the kill to the first start, elsewhere, of an item the dead process held."""
    held = {i for i, _, p in history if p == dead}
    again = [t for i, t, p in history if p != dead and i in held and t >= killed_at]
    assert again, "no item of the killed process ran again"
    return min(again) - killed_at


# -- leases --------------------------------------------------------------------------------------


async def test_a_killed_worker_child_is_taken_over_by_its_successor_at_once(
    redis: Redis, redis_url: str
) -> None:
    # A 30 s lease: only the boot-id take-over can bring the steps back this fast.
    specs = {"solo": ["--cpu-cores", "4"]}
    with flow_workers(redis_url, specs, {"TASKIQ_FLOW_TEST_LEASE": "30"}) as (env, _):
        async with started_app(env) as app:
            run = asyncio.ensure_future(
                MapReduce.map(app.broker, app.tracked, range(60), 10, kwargs={"seconds": 0.3})
            )
            await until(lambda: _at_least(redis, 15), 30, "15 starts")
            [child] = [int(p) for p in await redis.smembers("tracked:pids")]
            os.kill(child, signal.SIGKILL)
            killed_at = time.time()
            assert await asyncio.wait_for(run, 60) == list(range(60))
            delay = rerun_delay(await starts(redis), child, killed_at)
            print(f"\nsteps of the SIGKILLed child ran again after {delay:.2f}s (lease 30 s)")
            assert delay < 15


async def _at_least(redis: Redis, count: int) -> bool:
    return bool(await redis.llen("tracked:starts") >= count)


async def test_a_killed_plain_worker_child_is_reclaimed_after_the_default_lease(
    redis: Redis, redis_url: str
) -> None:
    # A plain `taskiq worker` (no advert, no name): its steps come back when the lease (the
    # default, 10 s) lapses, even though a taskiq-redis worker left its reclaim lock without TTL.
    extra = {"TASKIQ_FLOW_TEST_LEASE": "default"}
    with supervised_workers(redis_url, "--workers", "2", extra_env=extra) as (env, proc):
        async with started_app(env) as app:
            queue = env["TASKIQ_FLOW_TEST_QUEUE"]
            await redis.set(f"autoclaim:taskiq:{queue}", "left by a dead taskiq-redis worker")
            run = asyncio.ensure_future(
                MapReduce.map(app.broker, app.tracked, range(40), 6, kwargs={"seconds": 0.3})
            )
            await until(lambda: _at_least(redis, 10), 30, "10 starts")
            victim = int(json.loads((await redis.lrange("tracked:starts", -1, -1))[0])[2])
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            assert await asyncio.wait_for(run, 90) == list(range(40))
            delay = rerun_delay(await starts(redis), victim, killed_at)
            print(f"\nsteps of the SIGKILLed child ran again after {delay:.2f}s (lease 10 s)")
            assert delay < 10 + 6
            assert await redis.ttl(f"autoclaim:taskiq:{queue}") != -1  # expiring, or gone
            assert victim not in children(proc.pid)


async def test_a_healthy_step_longer_than_the_lease_runs_once(redis: Redis, redis_url: str) -> None:
    extra = {"TASKIQ_FLOW_TEST_LEASE": "1", "TASKIQ_FLOW_TEST_MAX_DELIVERIES": "1"}
    with supervised_workers(redis_url, "--workers", "2", extra_env=extra) as (env, _):
        async with started_app(env) as app:
            assert await asyncio.wait_for(
                MapReduce.map(app.broker, app.slow, [5], kwargs={"seconds": 4.0}), 60
            ) == [5]
            assert int(await redis.get("slow:5:runs")) == 1


# -- messages that cannot run --------------------------------------------------------------------


async def test_messages_no_worker_can_run_fail_their_step_and_the_worker_lives_on(
    redis: Redis, redis_url: str
) -> None:
    from taskiq_flow.run.runner import run_single

    with supervised_workers(redis_url, "--workers", "1") as (env, proc):
        async with started_app(env) as app:
            queue = env["TASKIQ_FLOW_TEST_QUEUE"]
            before = children(proc.pid)

            async def not_on_workers(x: int) -> int:
                return x

            task = app.broker.register_task(not_on_workers, task_name="redis_app:elsewhere")
            with pytest.raises(StepFailedError, match=r"UndeliverableMessageError.*elsewhere"):
                await asyncio.wait_for(MapReduce.map(app.broker, task, [1]), 30)

            # A stream entry without `data`, and a message taskiq cannot decode that still names
            # its run: the second fails its step.
            channel = app.broker.middlewares[-1].channel
            inbox = channel.open("broken-run")
            await redis.xadd(queue, {"foo": "bar"})
            bad = {"task_name": 5, "labels": {"taskiq_flow": "broken-run:0:1"}}
            await redis.xadd(queue, {"data": json.dumps(bad)})
            await asyncio.wait_for(inbox.wait(), 30)
            [failed] = inbox.drain()
            channel.close("broken-run")
            assert isinstance(failed.error, UndeliverableMessageError)
            assert "cannot be decoded" in str(failed.error)
            # A malformed flow label.
            await app.pid.kicker().with_labels(taskiq_flow="no-node-here").kiq()

            letters = await until(lambda: _dead_letters(redis, queue, 4), 30, "4 dead letters")
            reasons = [fields[b"reason"].decode() for _, fields in letters]
            assert "not registered" in reasons[0]
            assert "without a 'data' field" in reasons[1]
            assert "cannot be decoded" in reasons[2]
            assert "malformed taskiq_flow label" in reasons[3]
            # The same worker process answers: no crash, no restart.
            assert await run_single(app.broker, app.pid.task_name, (), {}, timeout=20) in before
            assert children(proc.pid) == before


async def _dead_letters(redis: Redis, queue: str, count: int) -> Any:
    letters = await redis.xrange(f"taskiq_flow:dead:{queue}")
    return letters if len(letters) >= count else None


# -- Redis stalls and restarts -------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own, with DEBUG allowed, that the test may restart."""
    server = RedisProcess(debug=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_a_redis_stall_never_ends_a_worker(own_redis: RedisProcess) -> None:
    redis = Redis.from_url(own_redis.url)
    try:
        with supervised_workers(own_redis.url, "--workers", "2") as (env, proc):
            async with started_app(env) as app:
                before = children(proc.pid)
                # A task whose own Redis write lands in the stall fails (its client times out
                # after 5 s): that is the task's failure, retried; the workers must live on.
                retry = RetryPolicy(max_attempts=3, delay=0.1)
                run = asyncio.ensure_future(
                    MapReduce.map(
                        app.broker, app.tracked, range(30), 4, kwargs={"seconds": 0.2}, retry=retry
                    )
                )
                await until(lambda: _at_least(redis, 5), 30, "5 starts")
                stall = SyncRedis.from_url(own_redis.url, socket_timeout=30)
                await asyncio.to_thread(stall.execute_command, "DEBUG", "SLEEP", "6")
                stall.close()
                assert await asyncio.wait_for(run, 90) == list(range(30))
                more = await asyncio.wait_for(
                    MapReduce.map(app.broker, app.tracked, range(10), 4, kwargs={"seconds": 0.0}),
                    60,
                )
                assert more == list(range(10))
                assert children(proc.pid) == before  # the same worker processes, none died
    finally:
        await redis.aclose()


async def test_a_cap_shared_through_redis_waits_out_a_redis_restart(
    own_redis: RedisProcess, broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis goes away while runs wait for a slot of the shared cap: they wait on and finish once
    it is back (the lease feeder retries; it used to stop for good and leave them waiting)."""
    gauge = Gauge()

    @broker.task
    async def step(x: int) -> int:
        gauge.enter()
        await asyncio.sleep(0.01)  # runs a while: tasks overlap up to the cap
        gauge.leave()
        return x

    redis = Redis.from_url(own_redis.url)
    try:
        set_max_parallel_tasks(2, redis=redis, name="restart")
        own_redis.stop()
        run = asyncio.ensure_future(MapReduce.map(broker, step, range(20)))

        async def feeder_failed() -> bool:
            return "could not reach Redis" in caplog.text

        await until(feeder_failed, 30, "the feeder to fail")
        assert not run.done() and gauge.peak == 0
        own_redis.start()
        assert await asyncio.wait_for(run, 60) == list(range(20))
        assert gauge.peak == 2
        await global_cap().aclose()
        assert await redis.zcard("taskiq_flow:limit:restart") == 0
    finally:
        set_max_parallel_tasks(None)
        await redis.aclose()


async def test_a_run_whose_state_vanished_fails_clearly_and_workers_reconnect(
    own_redis: RedisProcess,
) -> None:
    redis = Redis.from_url(own_redis.url)
    try:
        with supervised_workers(own_redis.url, "--workers", "1") as (env, proc):
            async with started_app(env) as app:
                before = children(proc.pid)
                run = asyncio.ensure_future(
                    MapReduce.map(app.broker, app.slow, [1], kwargs={"seconds": 30})
                )
                await until(lambda: redis.get("slow:1:runs"), 30, "the step to start")
                own_redis.stop()  # SHUTDOWN NOSAVE: the data is lost
                own_redis.start()
                restarted = time.monotonic()
                with pytest.raises((RunStateLostError, PipelineError), match="vanished"):
                    await asyncio.wait_for(run, 40)
                give_up = app.broker.middlewares[-1].channel.give_up_seconds
                assert time.monotonic() - restarted < give_up
                # The workers reconnected: new work runs on the same processes.
                more = await asyncio.wait_for(
                    MapReduce.map(app.broker, app.tracked, range(5), kwargs={"seconds": 0.0}), 60
                )
                assert more == list(range(5))
                assert children(proc.pid) == before
    finally:
        await redis.aclose()


async def test_a_run_sends_nothing_before_its_marker_is_in_redis(
    redis: Redis, redis_url: str
) -> None:
    """The marker by which a run's reader tells that its state vanished is in Redis before the
    run's first message. It used to be set by the reader once its blocking read ended: a Redis
    restarted without its data in between got the marker again, from the reader, and the run,
    its messages lost, waited out its step (1 in 3 runs of the test above)."""
    from taskiq import TaskiqMessage, TaskiqMiddleware

    from taskiq_flow import FlowMiddleware
    from taskiq_flow.distributed import RedisCompletionChannel, reliable_stream_broker

    markers_at_send: list[int] = []

    class Probe(TaskiqMiddleware):
        async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
            markers_at_send.append(len(await redis.keys("marked:open:*")))
            return message

    channel = RedisCompletionChannel(redis_url, prefix="marked", block_ms=30_000)
    broker = reliable_stream_broker(redis_url, queue_name="marked-queue").with_middlewares(
        FlowMiddleware(channel), Probe()
    )
    step = broker.register_task(_identity, task_name="marked:identity")
    await broker.startup()
    try:
        # Another run keeps the reader in a long blocking read, as a busy orchestrator's is.
        channel.open("other")
        await until(lambda: _blocked_in_xread(redis), 10, "the reader to block")
        run = asyncio.ensure_future(MapReduce.map(broker, step, [1]))
        await until(lambda: markers_at_send, 10, "the run's first message")
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
        assert markers_at_send[0] == 2  # the other run's and its own
        channel.close("other")
    finally:
        await channel.aclose()
        await broker.shutdown()


async def test_a_run_started_while_redis_is_down_fails_clearly_and_sends_nothing(
    own_redis: RedisProcess,
) -> None:
    from taskiq import TaskiqMessage, TaskiqMiddleware

    from taskiq_flow import FlowMiddleware
    from taskiq_flow.distributed import (
        ChannelLostError,
        RedisCompletionChannel,
        reliable_stream_broker,
    )

    sent: list[str] = []

    class Probe(TaskiqMiddleware):
        def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
            sent.append(message.task_name)
            return message

    channel = RedisCompletionChannel(own_redis.url, give_up_seconds=1.0)
    broker = reliable_stream_broker(own_redis.url, queue_name="down").with_middlewares(
        FlowMiddleware(channel), Probe()
    )
    step = broker.register_task(_identity, task_name="down:identity")
    await broker.startup()
    try:
        own_redis.stop()
        with pytest.raises(ChannelLostError, match="cannot be opened: Redis unreachable"):
            await asyncio.wait_for(MapReduce.map(broker, step, [1, 2]), 30)
        assert sent == []
    finally:
        own_redis.start()
        await channel.aclose()
        await broker.shutdown()


async def _identity(x: int) -> int:
    return x


async def _blocked_in_xread(redis: Redis) -> bool:
    return any(c["cmd"] == "xread" for c in await redis.client_list())


# -- runs whose orchestrator died ----------------------------------------------------------------


async def test_a_run_whose_orchestrator_died_shows_as_abandoned(
    redis: Redis, redis_url: str
) -> None:
    extra = {"TASKIQ_FLOW_TEST_RUN_LEASE": "1"}
    with supervised_workers(redis_url, "--workers", "1", extra_env=extra) as (env, _):
        async with started_app(env):
            await redis.set("second:gate", 1)  # slow_step runs until the orchestrator is killed
            orchestrator = await asyncio.create_subprocess_exec(
                sys.executable, str(TESTS / "redis_resume.py"), cwd=TESTS, env=env
            )
            await until(lambda: redis.get("second:runs"), 30, "slow_step to start")
            tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))
            [live] = await tracking.list_pipelines()
            assert live.status == "running"
            orchestrator.kill()
            await orchestrator.wait()
            await redis.set("second:go", 1)
            killed = time.monotonic()
            await until(
                lambda: tracking.list_pipelines(status="abandoned"), 10, "the run to be abandoned"
            )
            assert time.monotonic() - killed < 1 + 3


# -- bounded storage -----------------------------------------------------------------------------


async def test_results_expire_and_acknowledged_messages_leave_the_stream(
    redis: Redis, redis_url: str
) -> None:
    with supervised_workers(redis_url, "--workers", "1") as (env, _):
        async with started_app(env) as app:
            queue = env["TASKIQ_FLOW_TEST_QUEUE"]
            out = await asyncio.wait_for(
                MapReduce.map(app.broker, app.tracked, range(200), 20, kwargs={"seconds": 0.0}), 60
            )
            assert out == list(range(200))
            await until(lambda: _stream_empty(redis, queue), 10, "the queue to be trimmed")
            # A pipeline task's value travels in its completion: no result key is left behind.
            assert [k async for k in redis.scan_iter(match="taskiq_flow_test_results:*")] == []
            # A plain task's result, in json_result_backend, expires (one hour by default).
            handle = await app.pid.kiq()
            await handle.wait_result(timeout=30)
            [key] = [k async for k in redis.scan_iter(match="taskiq_flow_test_results:*")]
            assert 0 < await redis.ttl(key) <= 3600
            # Every key taskiq-flow and the result backend left has a TTL (the queues are
            # streams that stay, emptied as messages are acknowledged).
            async for key in redis.scan_iter(match="taskiq_flow*"):
                assert await redis.ttl(key) > 0, key
    backend = json_result_backend(redis_url)
    assert backend.result_ex_time == 3600
    await backend.shutdown()


async def _stream_empty(redis: Redis, queue: str) -> bool:
    return bool(await redis.xlen(queue) == 0)


async def test_a_huge_result_fails_its_step_by_name_and_is_not_stored(
    redis: Redis, redis_url: str
) -> None:
    with supervised_workers(redis_url, "--workers", "1") as (env, _):
        async with started_app(env) as app:
            with pytest.raises(StepFailedError, match=r"PayloadTooLargeError.*'redis_app:big'"):
                await asyncio.wait_for(MapReduce.map(app.broker, app.big, [20 * 2**20]), 60)
            async for key in redis.scan_iter(match="*"):
                assert (await redis.memory_usage(key) or 0) < 2**20, key


async def test_readers_never_crash_on_a_bad_record(redis: Redis) -> None:
    storage = RedisPipelineStorage(redis, ttl_seconds=600)
    tracking = PipelineTrackingManager(storage)
    await tracking.begin("good", "etl", [("load", 1)])
    await tracking.end("good", "done")
    await redis.set("taskiq_flow:run:deep", "[" * 100_000 + "]" * 100_000)
    await redis.set("taskiq_flow:run:huge", json.dumps({"steps": 0, "name": "x" * 3_000_000}))
    await redis.set("taskiq_flow:run:junk", b"\x80\x04not json")
    await redis.set("taskiq_flow:run:shape", json.dumps([1, 2]))
    for bad in ("deep", "huge", "junk", "shape"):
        with pytest.raises(CorruptRecordError):
            await tracking.get_status(bad)
    assert [r.pipeline_id for r in await tracking.list_pipelines()] == ["good"]
    # Writers refuse what readers would refuse, naming it.
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(Exception, match="node 3 of run good nests deeper"):
        await storage.save_results("good", {3: deep})


async def test_a_live_runs_records_outlive_a_shorter_ttl(redis: Redis, redis_url: str) -> None:
    from taskiq_flow import DataflowPipeline

    storage = RedisPipelineStorage(redis, ttl_seconds=1, lease_seconds=0.6)
    with supervised_workers(redis_url, "--workers", "1") as (env, _):
        async with started_app(env) as app:
            pipeline = DataflowPipeline.from_tasks(app.broker, [app.slow]).with_tracking(
                PipelineTrackingManager(storage)
            )
            run = asyncio.ensure_future(pipeline.kiq_dataflow(x=9))
            await until(lambda: redis.get("slow:9:runs"), 30, "the step to start")
            # Time itself is the event here: the TTL (1 s) passes twice while the 4 s step runs.
            await asyncio.sleep(2.5)
            reader = PipelineTrackingManager(storage)
            [status] = await reader.list_pipelines()
            assert status.status == "running"
            assert await asyncio.wait_for(run, 30) == {"slow": 9}
            assert (await reader.get_status(status.pipeline_id)).status == "done"


# -- least privilege -----------------------------------------------------------------------------

#: The README's ACL, for this test's queue and result prefix.
FLOW_ACL = (
    "on >flow-secret resetkeys ~taskiq_flow:* ~taskiq_flow_test_results:* ~{queue} ~{queue}.* "
    "~autoclaim:* resetchannels &taskiq_flow:cancel -@all +@connection +@stream +@hash "
    "+@string +@sortedset +@keyspace +@scripting +@transaction +@pubsub -@dangerous"
)
#: What the test app's own tasks use besides (their own keys, lists and sets), and the app's
#: priority queue.
APP_ACL = "~high_priority ~tracked:* ~slow:* +@list +@set"


async def test_the_redis_mode_runs_under_the_documented_acl_with_the_default_user_off(
    own_redis: RedisProcess,
) -> None:
    from taskiq_flow import DataflowPipeline

    admin = Redis.from_url(own_redis.url)
    queue = f"q-acl{os.getpid()}"
    await admin.execute_command(
        "ACL", "SETUSER", "admin", "on", ">admin-secret", "~*", "&*", "+@all"
    )
    await admin.execute_command(
        "ACL", "SETUSER", "flow", *FLOW_ACL.format(queue=queue).split(), *APP_ACL.split()
    )
    await admin.execute_command("ACL", "SETUSER", "default", "off")
    await admin.aclose()
    host = own_redis.url.removeprefix("redis://")
    url = f"redis://flow:flow-secret@{host}"
    redis = Redis.from_url(f"redis://admin:admin-secret@{host}")
    try:
        assert not await _answers_anonymously(own_redis.url)
        extra = {"TASKIQ_FLOW_TEST_QUEUE": queue}
        with supervised_workers(url, "--workers", "1", extra_env=extra) as (env, _):
            async with started_app(env) as app:
                out = await asyncio.wait_for(
                    MapReduce.map(app.broker, app.tracked, range(20), 5, kwargs={"seconds": 0.0}),
                    60,
                )
                assert out == list(range(20))
                storage = RedisPipelineStorage(Redis.from_url(url), ttl_seconds=600)
                tracking = PipelineTrackingManager(storage)
                pipeline = DataflowPipeline.from_tasks(app.broker, [app.slow]).with_tracking(
                    tracking
                )
                done = await asyncio.wait_for(pipeline.kiq_dataflow(x=2, seconds=0.1), 60)
                assert done == {"slow": 2}
                [status] = await tracking.list_pipelines()
                assert status.status == "done"
                await storage.redis.aclose()
        denied = await redis.execute_command("ACL", "LOG")
        assert denied == [], denied
    finally:
        await redis.aclose()


async def _answers_anonymously(url: str) -> bool:
    client = Redis.from_url(url)
    try:
        await client.get("x")
        return True
    except Exception:
        return False
    finally:
        await client.aclose()


@pytest.mark.parametrize("label", ["garbage", "run:x:1", "run:1", 7, ":1:1"])
def test_flow_middleware_skips_a_malformed_label_without_raising(label: object) -> None:
    from taskiq import TaskiqMessage, TaskiqResult

    from taskiq_flow.events import FlowMiddleware, InProcessChannel

    middleware = FlowMiddleware(InProcessChannel())
    message = TaskiqMessage(
        task_id="t", task_name="x", labels={"taskiq_flow": label}, args=[], kwargs={}
    )
    middleware.pre_execute(message)
    result: TaskiqResult[int] = TaskiqResult(is_err=False, return_value=1, execution_time=0.1)
    assert middleware.post_execute(message, result) is None


# -- TLS -----------------------------------------------------------------------------------------


def make_certificates(where: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate it signs for 127.0.0.1, and an unrelated CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        subject = ["-subj", f"/CN={ca}", "-days", "1"]
        openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", *subject)
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sign = ["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    openssl("x509", "-req", "-in", "server.csr", "-out", "server.crt", "-days", "1", *sign)
    names = ("ca.crt", "other-ca.crt", "server.crt", "server.key")
    return {name: str(where / name) for name in names}


async def test_the_redis_mode_runs_over_tls_and_a_wrong_ca_fails_clearly(tmp_path: Path) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from taskiq_flow.testing import free_port

    certs = make_certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", certs["server.crt"]]
    tls += ["--tls-key-file", certs["server.key"], "--tls-ca-cert-file", certs["ca.crt"]]
    tls += ["--tls-auth-clients", "no"]
    server = RedisProcess(extra=tls)
    server.start()
    url = f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={certs['ca.crt']}"
    try:
        with supervised_workers(url, "--workers", "1") as (env, _):
            async with started_app(env) as app:
                out = await asyncio.wait_for(
                    MapReduce.map(app.broker, app.tracked, range(20), 5, kwargs={"seconds": 0.0}),
                    60,
                )
                assert out == list(range(20))
        other = certs["other-ca.crt"]
        wrong = Redis.from_url(f"rediss://127.0.0.1:{tls_port}?ssl_ca_certs={other}")
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await wrong.ping()
        await wrong.aclose()
    finally:
        server.close()


async def test_an_abandoned_run_is_listed_and_resumed_by_the_runs_command(
    redis: Redis, redis_url: str
) -> None:
    extra = {"TASKIQ_FLOW_TEST_RUN_LEASE": "1"}
    with supervised_workers(redis_url, "--workers", "1", extra_env=extra) as (env, _):
        async with started_app(env):
            # slow_step runs until the live check below is done, however slow the CLI starts.
            await redis.set("second:gate", 1)
            orchestrator = await asyncio.create_subprocess_exec(
                sys.executable, str(TESTS / "redis_resume.py"), cwd=TESTS, env=env
            )
            await until(lambda: redis.get("second:runs"), 30, "slow_step to start")
            tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))
            [live] = await tracking.list_pipelines()

            async def runs(*args: str) -> subprocess.CompletedProcess[str]:
                command = [sys.executable, "-m", "taskiq_flow.cli", "runs", *args]
                return await asyncio.to_thread(
                    subprocess.run, command, cwd=TESTS, env=env, capture_output=True, text=True
                )

            refused = await runs(
                "resume", live.pipeline_id, "--redis", redis_url,
                "--pipeline", "redis_app:resume_pipeline", "--input", "x=3",
            )  # fmt: skip
            assert refused.returncode == 1 and "live in another process" in refused.stderr
            orchestrator.kill()
            await orchestrator.wait()
            await redis.set("second:go", 1)
            await until(
                lambda: tracking.list_pipelines(status="abandoned"), 10, "the run to be abandoned"
            )
            listed = await runs("list", "--redis", redis_url, "--status", "abandoned", "--json")
            [shown] = json.loads(listed.stdout)
            assert (shown["pipeline_id"], shown["status"]) == (live.pipeline_id, "abandoned")
            resumed = await runs(
                "resume", live.pipeline_id, "--redis", redis_url,
                "--pipeline", "redis_app:resume_pipeline", "--input", "x=3",
            )  # fmt: skip
            assert resumed.returncode == 0, resumed.stderr
            assert json.loads(resumed.stdout) == {"first": 4, "second": 40}
            assert (await tracking.get_status(live.pipeline_id)).status == "done"
            assert int(await redis.get("first:runs")) == 1  # done before the crash: not resent
