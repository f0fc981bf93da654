"""Redis mode: durable tracking, completions through Redis streams, JSON only, and a pipeline run
by real `taskiq worker` processes. Every test talks to a real redis-server."""

from __future__ import annotations

import asyncio
import importlib
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import TaskiqMessage

from taskiq_flow import (
    AbortPipeline,
    InvalidValueError,
    PipelineTrackingManager,
)
from taskiq_flow.distributed import (
    RedisCompletionChannel,
    RedisPipelineStorage,
    RemoteTaskError,
    json_result_backend,
)
from taskiq_flow.events import Completion
from taskiq_flow.tracking import StepStatus

TESTS = Path(__file__).resolve().parent


async def test_tracking_records_all_carry_the_ttl_and_delete_removes_them(redis: Redis) -> None:
    storage = RedisPipelineStorage(redis, ttl_seconds=3600, prefix="flowtest")
    tracking = PipelineTrackingManager(storage)
    await tracking.begin("run-1", "etl", [("load", 1), ("map(clean)", 3)])
    live = tracking.live("run-1")
    assert live is not None
    live.steps[0].status = "done"
    live.steps[0].duration_ms = 12.5
    await tracking.save_steps("run-1", {0})
    await tracking.end("run-1", "done")
    status = await PipelineTrackingManager(storage).get_status("run-1")
    assert status.status == "done"
    assert (status.steps[0].status, status.steps[0].duration_ms) == ("done", 12.5)
    assert [s.name for s in status.steps] == ["load", "map(clean)"]
    keys = [k async for k in redis.scan_iter(match="*")]
    assert sorted(keys) == [
        b"flowtest:run:run-1",
        b"flowtest:run:run-1:changes",
        b"flowtest:run:run-1:steps",
    ]
    for key in keys:
        assert 0 < await redis.ttl(key) <= 3600
    assert await tracking.list_pipelines() == [status]
    assert await tracking.delete_pipeline("run-1")
    assert [k async for k in redis.scan_iter(match="*")] == []


async def test_concurrent_step_writes_never_overwrite_each_other(redis: Redis) -> None:
    storage = RedisPipelineStorage(redis, ttl_seconds=60)
    await PipelineTrackingManager(storage).begin("run-2", "fan", [(f"s{i}", 1) for i in range(50)])

    async def write(i: int) -> None:
        await storage.save_steps("run-2", {i: StepStatus(f"s{i}", "done", duration_ms=float(i))})

    await asyncio.gather(*(write(i) for i in range(50)))
    loaded = await storage.load("run-2")
    assert loaded is not None
    assert [s.duration_ms for s in loaded.steps] == [float(i) for i in range(50)]


@pytest.mark.parametrize("bad", ["", "a:b", "run*", "../x", "a b", "x" * 129, "[ab]"])
async def test_ids_and_prefixes_that_could_escape_are_refused(redis: Redis, bad: str) -> None:
    storage = RedisPipelineStorage(redis, ttl_seconds=60)
    with pytest.raises(InvalidValueError):
        await storage.load(bad)
    with pytest.raises(InvalidValueError):
        RedisPipelineStorage(redis, prefix=bad)
    with pytest.raises(InvalidValueError):
        RedisCompletionChannel(redis, prefix=bad)
    with pytest.raises(InvalidValueError):
        RedisPipelineStorage(redis, ttl_seconds=0)


async def test_completions_travel_as_json(redis: Redis) -> None:
    channel = RedisCompletionChannel(redis, prefix="flowtest")
    inbox = channel.open("run-3")
    now = time.time()
    await channel.publish(Completion("run-3", 0, 1, True, {"rows": [1, 2]}, None, 3.5, now))
    await channel.publish(Completion("run-3", 1, 2, False, None, ValueError("bad"), 1.0, now))
    await channel.publish(Completion("run-3", 2, 1, False, None, AbortPipeline("halt"), 1.0, now))
    got: list[Completion] = []
    while len(got) < 3:
        await asyncio.wait_for(inbox.wait(), 5)
        got += inbox.drain()
    assert got[0].value == {"rows": [1, 2]} and got[0].ok and got[0].duration_ms == 3.5
    assert isinstance(got[1].error, RemoteTaskError) and str(got[1].error) == "ValueError: bad"
    assert isinstance(got[2].error, AbortPipeline) and got[2].error.reason == "halt"
    assert 0 < await redis.ttl("flowtest:done:run-3") <= 86400
    channel.close("run-3")  # deletes the stream in the background

    async def deleted() -> bool:
        return await redis.exists("flowtest:done:run-3") == 0

    await until(deleted, 10, "the closed run's stream to be deleted")


class Planted:
    """Unpickling this creates a file: proof that a reader executed a planted value."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).touch, ())


async def test_planted_pickles_are_never_loaded(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    payload = pickle.dumps(Planted(str(marker)))
    # In the result backend:
    backend = json_result_backend(redis_url)
    await redis.set("planted-task", payload)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing runs
        await backend.get_result("planted-task")
    await backend.shutdown()
    # In a completion stream, before a genuine completion:
    channel = RedisCompletionChannel(redis)
    inbox = channel.open("run-4")
    await redis.xadd("taskiq_flow:done:run-4", {"c": payload})
    await channel.publish(Completion("run-4", 0, 1, True, 7, None, 1.0, time.time()))
    await asyncio.wait_for(inbox.wait(), 5)
    [completion] = inbox.drain()
    assert completion.value == 7
    channel.close("run-4")
    assert not marker.exists()


@contextmanager
def worker_processes(redis_url: str, *options: str) -> Iterator[dict[str, str]]:
    """`taskiq worker` processes on a queue of their own, consuming tests/redis_app.py."""
    with supervised_workers(redis_url, *options) as (env, _):
        yield env


@contextmanager
def supervised_workers(
    redis_url: str,
    *options: str,
    extra_env: dict[str, str] | None = None,
    app: str = "redis_app:broker",
) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """A `taskiq worker` supervisor (and its children) consuming tests/redis_app.py (or the
    broker ``app`` names)."""
    env = {
        **os.environ,
        "TASKIQ_FLOW_TEST_REDIS": redis_url,
        "TASKIQ_FLOW_TEST_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(extra_env or {}),
    }
    log = open(os.environ.get("TASKIQ_FLOW_TEST_WORKER_LOG", os.devnull), "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            app,
            "--log-level",
            "WARNING",
            "--shutdown-timeout",
            "2",
            *options,
        ],
        cwd=TESTS,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield env, proc
    finally:
        # SIGTERM stops the workers gracefully (the reliable broker's reads end on
        # cancellation); the group is killed if that takes longer than a grace period.
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def workers(redis_url: str) -> Iterator[dict[str, str]]:
    """Two worker processes."""
    with worker_processes(redis_url, "--workers", "2") as env:
        yield env


@asynccontextmanager
async def started_app(workers: dict[str, str]) -> AsyncIterator[Any]:
    """tests/redis_app.py imported here, as an orchestrator would, its broker started, once a
    worker has answered a ping (the workers' consumer group sees only messages sent after it
    exists)."""
    os.environ.update({k: workers[k] for k in ("TASKIQ_FLOW_TEST_REDIS", "TASKIQ_FLOW_TEST_QUEUE")})
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("redis_app", None)
    import redis_app

    from taskiq_flow.run.runner import run_single

    async def answered() -> bool:
        try:
            await run_single(redis_app.broker, redis_app.ping.task_name, (), {}, timeout=2)
        except Exception:
            return False  # sent before the consumer group existed, or no worker up yet
        return True

    await redis_app.broker.startup()
    try:
        await until(answered, 60, "a worker to answer a ping")
        yield redis_app
    finally:
        await redis_app.broker.shutdown()
        sys.path.remove(str(TESTS))


@asynccontextmanager
async def app_module(workers: dict[str, str], module: str) -> AsyncIterator[Any]:
    """A test app built on tests/redis_app.py (``growth_app``, ``cancel_app``) imported as an
    orchestrator would, once its workers answer."""
    async with started_app(workers):
        sys.modules.pop(module, None)
        yield importlib.import_module(module)


@pytest.fixture
async def app(workers: dict[str, str]) -> AsyncIterator[Any]:
    async with started_app(workers) as module:
        yield module


async def test_pipelines_run_on_worker_processes(app: Any) -> None:
    from taskiq_flow import DataflowPipeline, MapReduce, StepFailedError

    broker = app.broker
    pipeline = DataflowPipeline.from_tasks(broker, [app.numbers, app.total, app.where], 4)
    out = await pipeline.kiq_dataflow(n=10)
    assert out["total"] == 45 and out["numbers"] == list(range(10))
    assert out["where"] != os.getpid()

    results = await MapReduce.map(broker, app.square_with_pid, range(200), 20)
    assert [r[0] for r in results] == [x * x for x in range(200)]
    assert len({r[1] for r in results}) == 2  # both worker processes took a share

    with pytest.raises(StepFailedError, match="ValueError: bad input 3"):
        await MapReduce.map(broker, app.explode, [3])


async def test_a_worker_killed_mid_step_is_replaced_and_the_run_completes(
    redis: Redis, app: Any
) -> None:
    from taskiq_flow import MapReduce

    results = await asyncio.wait_for(MapReduce.map(app.broker, app.fragile, [1, 2, 3]), 60)
    assert results == [10, 20, 30]
    runs = [int(await redis.get(f"fragile:{x}:runs")) for x in (1, 2, 3)]
    # Each step killed its worker once and ran again; a kill also takes down whatever else that
    # worker had in flight, so a step may run once more. Never beyond max_deliveries (3).
    assert all(2 <= r <= 3 for r in runs), runs


async def test_a_step_that_keeps_killing_workers_is_a_dead_letter(redis: Redis, app: Any) -> None:
    from taskiq_flow import DataflowPipeline, DeadLetterQueue, StepFailedError

    dead = DeadLetterQueue()
    pipeline = DataflowPipeline(app.broker).add_dataflow_task(app.poison).with_dead_letters(dead)
    pipeline.with_retry(max_attempts=5, delay=0.01)  # poison is never retried
    with pytest.raises(StepFailedError, match="step 'poison' failed: PoisonMessageError"):
        await asyncio.wait_for(pipeline.kiq_dataflow(x=7), 60)
    [letter] = dead.list()
    assert (letter.step, letter.kwargs, letter.error_type) == (
        "poison",
        {"x": 7},
        "PoisonMessageError",
    )
    assert int(await redis.get("poison:7:runs")) == 3  # max_deliveries, then out


async def test_shared_cap_blocks_across_holders_and_leases_expire(redis: Redis) -> None:
    from taskiq_flow.distributed import RedisCapacityLimiter

    first = RedisCapacityLimiter(redis, "caps", 2, lease_seconds=0.3)
    second = RedisCapacityLimiter(redis, "caps", 2, lease_seconds=0.3)
    await first.acquire()
    await first.acquire()
    tries = 0
    script = second._acquire

    async def counted(**kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        return await script(**kwargs)

    second._acquire = counted  # type: ignore[assignment]
    waiter = asyncio.ensure_future(second.acquire())
    await until(lambda: tries >= 2, 10, "the waiter to be refused once and try again")
    assert not waiter.done()
    first.release()
    await asyncio.wait_for(waiter, 2)
    assert (first.borrowed_tokens, second.borrowed_tokens) == (1, 1)
    # `first` dies holding a slot: it stops renewing, and the lease runs out.
    assert first._renewer is not None
    first._renewer.cancel()
    start = time.monotonic()
    await asyncio.wait_for(second.acquire(), 3)
    assert 0.1 < time.monotonic() - start < 2
    await second.aclose()
    with pytest.raises(InvalidValueError):
        RedisCapacityLimiter(redis, "caps", 0)
    with pytest.raises(InvalidValueError):
        RedisCapacityLimiter(redis, "a*b", 2)


async def test_global_cap_holds_across_two_orchestrator_processes(
    redis: Redis, workers: dict[str, str]
) -> None:
    env = {**workers, "TASKIQ_FLOW_TEST_LIMIT": f"cap-{uuid.uuid4().hex[:8]}"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(TESTS / "redis_orchestrator.py"),
            "15",
            "3",
            "--close",
            cwd=TESTS,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await finish(procs, 80)
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().split() == ["ready", "15"]
    assert int(await redis.get("held:peak")) == 3  # sampled inside the tasks: reached, never more


async def finish(
    procs: list[asyncio.subprocess.Process], timeout: float
) -> list[tuple[bytes, bytes]]:
    """Waits for the orchestrators to end; past ``timeout``, fails with every asyncio task's
    stack of each (they print them on SIGUSR1) and what they wrote."""
    talks = [asyncio.ensure_future(p.communicate()) for p in procs]
    done, _ = await asyncio.wait(talks, timeout=timeout)
    if len(done) == len(talks):
        return [t.result() for t in talks]
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGUSR1)  # it prints its tasks' stacks, then exits
    await asyncio.wait(talks, timeout=30)
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
    said = await asyncio.gather(*talks)
    pytest.fail(
        f"orchestrators still running after {timeout} s:\n"
        + "\n".join(
            f"[{i}] {out.decode()}\n{err.decode()[-6000:]}" for i, (out, err) in enumerate(said)
        )
    )


async def orchestrate(
    env: dict[str, str], *args: str
) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader]:
    """Starts tests/redis_orchestrator.py; returns it once it printed ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "redis_orchestrator.py"),
        *args,
        cwd=TESTS,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    return proc, proc.stdout


async def test_a_shared_cap_is_given_back_when_the_orchestrator_just_exits(
    redis: Redis, workers: dict[str, str]
) -> None:
    """The user's script: set a cap shared through Redis, run a map, let asyncio.run return.
    Nothing stays held, and the next orchestrator gets every slot."""
    name = f"cap-{uuid.uuid4().hex[:8]}"
    env = {**workers, "TASKIQ_FLOW_TEST_LIMIT": name}
    first, _ = await orchestrate(env, "15", "3")
    ((out, err),) = await finish([first], 60)
    assert first.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["15"]
    for noise in ("Task was destroyed", "RuntimeError", "Traceback"):
        assert noise not in err.decode(), err.decode()[-2000:]
    assert await redis.zcard(f"taskiq_flow:limit:{name}") == 0  # nothing held after the exit
    await redis.delete("held:peak")
    second, _ = await orchestrate(env, "15", "3", "--seconds", "0.2")
    ((out, err),) = await finish([second], 60)
    assert second.returncode == 0, err.decode()[-2000:]
    assert int(await redis.get("held:peak")) == 3  # all three slots, measured inside the tasks


async def test_a_killed_holders_slots_come_back_within_the_lease(
    redis: Redis, workers: dict[str, str]
) -> None:
    """An orchestrator holding every slot is killed: the one waiting gets them within the
    lease (2 s here) plus the documented slack of its retries, not seconds later."""
    name = f"cap-{uuid.uuid4().hex[:8]}"
    key = f"taskiq_flow:limit:{name}"
    env = {**workers, "TASKIQ_FLOW_TEST_LIMIT": name}
    holder, _ = await orchestrate(env, "200", "3", "--lease", "2", "--seconds", "0.3")

    async def all_taken() -> bool:
        return bool(await redis.zcard(key) >= 3)

    await until(all_taken, 30, "the holder to take every slot")
    waiter, _ = await orchestrate(env, "12", "3", "--lease", "2", "--seconds", "0.3")

    async def waiter_refused() -> bool:  # its cap's client ran the acquire script: refused
        clients = await redis.client_list()
        name = f"orchestrator-{waiter.pid}"
        return any(c["name"] == name and c["cmd"].startswith("eval") for c in clients)

    await until(waiter_refused, 30, "the waiter to ask for a slot")
    held = set(await redis.zrange(key, 0, -1))
    holder.kill()
    killed_at = time.monotonic()
    await holder.wait()

    async def handed_over() -> bool:
        now = set(await redis.zrange(key, 0, -1))
        return not held & now and len(now) >= 3

    await until(handed_over, 10, "the killed holder's slots to come back to the waiter")
    back_after = time.monotonic() - killed_at
    try:
        ((_, err),) = await finish([waiter], 60)
    except TimeoutError:
        waiter.kill()
        _, err = await waiter.communicate()
    assert waiter.returncode == 0, err.decode()[-3000:]
    assert back_after <= 2.0 + 0.5, f"slots came back {back_after:.2f} s after the kill"


async def test_redis_going_away_fails_the_run_instead_of_hanging() -> None:
    from taskiq_flow.distributed import ChannelLostError
    from taskiq_flow.testing import redis_server

    with redis_server() as url:
        client = Redis.from_url(url)
        channel = RedisCompletionChannel(client, give_up_seconds=1.0, block_ms=100)
        inbox = channel.open("run-lost")
        await channel.opened("run-lost")  # as a run does before it sends

        async def reading() -> bool:  # the channel's reader is blocked in XREAD
            return any(c["cmd"] == "xread" for c in await client.client_list())

        await until(reading, 10, "the channel to read its stream")
        await client.shutdown(nosave=True)
        start = time.monotonic()
        with pytest.raises(ChannelLostError, match="cannot be read from Redis"):
            await asyncio.wait_for(inbox.wait(), 10)
        assert time.monotonic() - start < 5
        channel.close("run-lost")
        await client.aclose()


def test_redis_bench_runs_against_real_workers() -> None:
    from taskiq_flow.bench.redis import report, run_redis_bench

    results = run_redis_bench(tasks=50, repeats=1)
    assert isinstance(results, dict), results
    for workers in ("1 worker(s)", "2 worker(s)"):
        assert set(results[workers]) == {"raw_taskiq_redis", "cheapest_raw", "MapReduce.map"}
        assert all(v > 0 for v in results[workers].values())
    assert "best-fit placement among 1,000 workers" in report(results)


@pytest.fixture
def one_slot_worker(redis_url: str) -> Iterator[dict[str, str]]:
    """One worker process that runs one task at a time and holds no prefetched message."""
    with worker_processes(redis_url, "--workers", "1", "--max-async-tasks", "1") as env:
        yield env


@pytest.fixture
async def one_slot_app(one_slot_worker: dict[str, str]) -> AsyncIterator[Any]:
    async with started_app(one_slot_worker) as module:
        yield module


async def test_a_worker_drains_higher_priority_queues_first(
    redis: Redis, one_slot_app: Any
) -> None:
    app_ = one_slot_app
    await app_.gate.kiq()
    # The only slot is busy with the gate while both queues fill; then the gate opens.
    assert await redis.blpop(["gate:started"], timeout=30) is not None, "the gate never ran"
    for i in range(4):
        await app_.routine.kiq(i)
    for i in range(3):
        await app_.urgent.kiq(i)
    await redis.rpush("gate:open", 1)

    async def all_ran() -> bool:  # the order lives in Redis, written by the worker process
        return bool(await redis.llen("order") >= 7)

    await until(all_ran, 30, "the 7 queued tasks to run")
    order = [entry.decode() for entry in await redis.lrange("order", 0, -1)]
    assert order == [*(f"urgent-{i}" for i in range(3)), *(f"routine-{i}" for i in range(4))]


@contextmanager
def flow_workers(
    redis_url: str, specs: dict[str, list[str]], extra_env: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, str], dict[str, subprocess.Popen[bytes]]]]:
    """`taskiq-flow worker` processes, one per ``{name: capacity options}``."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TASKIQ_FLOW_TEST_REDIS": redis_url,
        "TASKIQ_FLOW_TEST_QUEUE": queue,
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "taskiq_flow.cli", "worker", "redis_app:broker"]
    procs = {
        name: subprocess.Popen(
            [*command, "--name", name, *options, "--", "--log-level", "WARNING"],
            cwd=TESTS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name, options in specs.items()
    }
    try:
        yield env, procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def live_adverts(redis: Redis, count: int) -> list[dict[str, Any]]:
    from taskiq_flow.distributed import discover_workers

    async def advertised() -> list[dict[str, Any]] | None:
        adverts = await discover_workers(redis)  # they appear in Redis as the workers start
        return adverts if len(adverts) >= count else None

    adverts: list[dict[str, Any]] = await until(advertised, 30, f"{count} worker adverts")
    return adverts


@pytest.fixture
def advertised_workers(redis_url: str) -> Iterator[dict[str, str]]:
    """Two `taskiq-flow worker` processes: `big` (4 cores) and `small` (1 core, label ssd)."""
    specs = {
        "big": ["--cpu-cores", "4", "--ram-gb", "8"],
        "small": ["--cpu-cores", "1", "--ram-gb", "8", "--label", "ssd=true"],
    }
    with flow_workers(redis_url, specs) as (env, _):
        yield env


async def test_placed_tasks_run_on_the_worker_chosen_for_them(
    redis: Redis, advertised_workers: dict[str, str]
) -> None:
    from taskiq_flow import MapReduce, ResourceAwareWorkerPool

    async with started_app(advertised_workers) as app:
        adverts = await live_adverts(redis, 2)
        assert [(a["name"], a["queue"]) for a in adverts] == [
            ("big", f"{advertised_workers['TASKIQ_FLOW_TEST_QUEUE']}.big"),
            ("small", f"{advertised_workers['TASKIQ_FLOW_TEST_QUEUE']}.small"),
        ]
        pool = ResourceAwareWorkerPool(adverts)
        # 2-core tasks fit only on `big`, two at a time.
        where = await MapReduce.map(app.broker, app.crunch, range(8), 10, worker_pool=pool)
        assert where == ["big"] * 8
        assert int(await redis.get("peak:big")) == 2
        # The ssd label is only on `small`.
        assert (
            await MapReduce.map(app.broker, app.needs_ssd, range(3), worker_pool=pool)
            == ["small"] * 3
        )
        assert pool.placed_count == 0


async def test_tasks_of_a_dead_worker_are_placed_again_and_the_run_completes(
    redis: Redis, redis_url: str
) -> None:
    from taskiq_flow import MapReduce, ResourceAwareWorkerPool
    from taskiq_flow.distributed import discover_workers

    specs = {name: ["--cpu-cores", "4", "--ram-gb", "8"] for name in ("first", "second")}
    with flow_workers(redis_url, specs) as (env, procs):
        async with started_app(env) as app:
            pool = ResourceAwareWorkerPool(await live_adverts(redis, 2))
            pool.watch(lambda: discover_workers(redis), interval=0.3)
            run = asyncio.ensure_future(
                MapReduce.map(
                    app.broker, app.crunch, range(8), worker_pool=pool, kwargs={"seconds": 1.0}
                )
            )

            async def both_busy() -> bool:  # two 2-core tasks running on each worker
                counts = await redis.mget(["running:first", "running:second"])
                return all(c is not None and int(c) >= 2 for c in counts)

            await until(both_busy, 30, "two tasks running on each worker")
            os.killpg(procs["first"].pid, signal.SIGKILL)
            where = await asyncio.wait_for(run, 60)
            assert len(where) == 8
            assert where.count("second") >= 6  # everything not finished on `first` before it died
            assert pool.placed_count == 0
            assert [w.name for w in pool.workers] == ["first", "second"]


async def test_a_rate_limit_shared_through_redis_holds_across_limiters(redis: Redis) -> None:
    from taskiq_flow.distributed import RedisRateLimiter

    # Two limiters on one name stand for two orchestrator processes: the state is in Redis.
    first = RedisRateLimiter(redis, "api", rate=40.0, burst=2)
    second = RedisRateLimiter(redis, "api", rate=40.0, burst=2)
    stamps: list[float] = []

    async def caller(limiter: RedisRateLimiter) -> None:
        for _ in range(21):
            async with limiter:
                stamps.append(time.monotonic())

    await asyncio.gather(caller(first), caller(second))
    stamps.sort()
    # 42 acquisitions at 40/s with a burst of 2: the last one no earlier than 40 intervals in.
    assert stamps[-1] - stamps[0] >= 40 / 40.0 - 0.02
    for bad in ({"rate": 0.0}, {"rate": -1.0}, {"burst": 0}):
        with pytest.raises(InvalidValueError):
            RedisRateLimiter(redis, "api", **{"rate": 1.0, **bad})  # type: ignore[arg-type]


async def test_a_restarted_orchestrator_resumes_its_run(
    redis: Redis, workers: dict[str, str]
) -> None:
    from taskiq_flow import DataflowPipeline, PipelineTrackingManager, StateError

    async with started_app(workers) as app:
        await redis.set("second:gate", 1)  # slow_step runs until the orchestrator is killed
        orchestrator = await asyncio.create_subprocess_exec(
            sys.executable,
            str(TESTS / "redis_resume.py"),
            cwd=TESTS,
            env={**workers, "TASKIQ_FLOW_TEST_RUN_LEASE": "1"},
        )
        await until(lambda: redis.get("second:runs"), 30, "slow_step to start")
        tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))
        [live] = await tracking.list_pipelines(status="running")
        with pytest.raises(StateError, match="live in another process"):  # not while it lives
            await tracking.begin(live.pipeline_id, "again", [("first", 1)])
        orchestrator.kill()
        await orchestrator.wait()
        await redis.set("second:go", 1)

        [crashed] = await until(  # its lease (1 s) lapses
            lambda: tracking.list_pipelines(status="abandoned"), 10, "the run to be abandoned"
        )
        pipeline = DataflowPipeline.from_tasks(app.broker, [app.first_step, app.slow_step])
        outputs = await pipeline.with_tracking(tracking).resume(crashed.pipeline_id, x=3)
        assert outputs == {"first": 4, "second": 40}
        assert int(await redis.get("first:runs")) == 1  # finished before the crash: not resent
        # Out when it crashed: sent again. The first copy ran once, never reclaimed while it
        # ran (its worker renews its lease).
        assert int(await redis.get("second:runs")) == 2
        assert (await tracking.get_status(crashed.pipeline_id)).status == "done"


async def test_only_workers_of_this_application_are_discovered_and_placed_on(
    redis: Redis, redis_url: str
) -> None:
    """Two applications (two queues) share one Redis and its default prefix: a pool built for
    this broker never places a task on the other application's worker."""
    from taskiq_flow import MapReduce, ResourceAwareWorkerPool, StepFailedError
    from taskiq_flow.distributed import discover_workers
    from taskiq_flow.exceptions import UndeliverableMessageError

    mine = {"mine": ["--cpu-cores", "2", "--ram-gb", "8"]}
    other = {"other": ["--cpu-cores", "8", "--ram-gb", "8"]}
    with flow_workers(redis_url, mine) as (env, _), flow_workers(redis_url, other):
        await live_adverts(redis, 2)  # both applications' workers advertise
        async with started_app(env) as app:
            adverts = await discover_workers(redis, broker=app.broker)
            assert [(a["name"], a["queue"]) for a in adverts] == [
                ("mine", f"{env['TASKIQ_FLOW_TEST_QUEUE']}.mine")
            ]
            pool = ResourceAwareWorkerPool(adverts)
            pool.watch(lambda: discover_workers(redis, broker=app.broker), interval=0.2)
            where = await MapReduce.map(app.broker, app.crunch, range(4), worker_pool=pool)
            assert where == ["mine"] * 4
            assert int(await redis.get("peak:mine")) == 1  # 2-core tasks on 2 cores: one at once
            # A pool that took every advert puts work on `other`: refused, never sent elsewhere.
            everyone = ResourceAwareWorkerPool(await discover_workers(redis))
            assert [w.name for w in everyone.workers] == ["mine", "other"]
            with pytest.raises(StepFailedError) as refused:
                await MapReduce.map(app.broker, app.crunch, range(4), worker_pool=everyone)
            cause = refused.value.error  # the broker's own reason, not taskiq's SendTaskError
            assert isinstance(cause, UndeliverableMessageError), refused.value
            assert "other" in str(cause) and "broker=broker" in str(cause)


async def _worker_queue(redis: Redis, queue: str) -> bool:
    return bool(await redis.exists(queue))


async def test_a_workers_own_queue_does_not_outlive_it(redis: Redis, redis_url: str) -> None:
    """A worker stopped cleanly takes its empty queue with it; a killed worker's queue expires
    soon if empty, and keeps what was placed on it (for a successor under its name) only for a
    bounded time."""
    from taskiq_flow.distributed.broker import IDLE_WORKER_QUEUE_TTL, WORKER_QUEUE_TTL

    specs = {"tidy": ["--cpu-cores", "1"], "killed": ["--cpu-cores", "1"]}
    with flow_workers(redis_url, specs) as (env, procs):
        await live_adverts(redis, 2)
        queue = env["TASKIQ_FLOW_TEST_QUEUE"]
        assert await _worker_queue(redis, f"{queue}.tidy")
        procs["tidy"].send_signal(signal.SIGTERM)
        assert procs["tidy"].wait(timeout=20) == 0
        assert not await _worker_queue(redis, f"{queue}.tidy")

        async def has_ttl() -> bool:  # its first heartbeat gives it a TTL
            return bool(await redis.pttl(f"{queue}.killed") >= 0)

        await until(has_ttl, 10, "the worker's queue to get a TTL")
        os.killpg(procs["killed"].pid, signal.SIGKILL)
        procs["killed"].wait()
        assert 0 < await redis.pttl(f"{queue}.killed") <= IDLE_WORKER_QUEUE_TTL * 1000

        # A message placed on the dead worker's queue stays there (bounded), never dropped.
        from taskiq_flow.distributed import reliable_stream_broker
        from taskiq_flow.resources import QUEUE_LABEL

        sender = reliable_stream_broker(redis_url, queue_name=queue)
        await sender.startup()
        try:
            message = sender.formatter.dumps(
                TaskiqMessage(
                    task_id="placed",
                    task_name="redis_app:crunch",
                    labels={QUEUE_LABEL: f"{queue}.killed"},
                    labels_types={},
                    args=[1],
                    kwargs={},
                )
            )
            await sender.kick(message)
        finally:
            await sender.shutdown()
        assert await redis.xlen(f"{queue}.killed") == 1
        assert await redis.pttl(f"{queue}.killed") > IDLE_WORKER_QUEUE_TTL * 1000
        assert await redis.pttl(f"{queue}.killed") <= WORKER_QUEUE_TTL * 1000
