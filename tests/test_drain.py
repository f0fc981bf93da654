"""Workers drain: a stopping `taskiq-flow worker` takes no new message, lets what it runs finish
for up to its drain timeout, cancels what still runs then, and gives back at once everything it
holds, so that another worker takes it immediately. Real redis-server, real worker processes
(tests/drain_app.py, whose broker reads 100 messages at a time as taskiq-redis does), a lease of
30 s: anything left to the lease would come back far later than these tests wait."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis

from taskiq_flow import MapReduce
from taskiq_flow.exceptions import InvalidValueError

TESTS = Path(__file__).resolve().parent


class Workers:
    """`taskiq-flow worker` processes on one queue, started and stopped one by one."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.queue = f"q-{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "TASKIQ_FLOW_TEST_REDIS": redis_url,
            "TASKIQ_FLOW_TEST_QUEUE": self.queue,
            "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, drain: float, *taskiq_options: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "taskiq_flow.cli", "worker", "drain_app:broker"]
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    *command,
                    "--name",
                    name,
                    "--drain-timeout",
                    str(drain),
                    "--",
                    "--log-level",
                    "WARNING",
                    *taskiq_options,
                ],
                cwd=TESTS,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    async def up(self, redis: Redis, name: str) -> None:
        """Waits for a worker's advert (it consumes its queue from then on)."""
        proc = self.procs[name]

        async def advertised() -> bool:
            assert proc.poll() is None, f"worker {name} ended: {self.log(name)}"
            return bool(await redis.exists(f"taskiq_flow:worker:{name}"))

        await until(advertised, 60, f"worker {name} to advertise itself")

    async def stopped(self, name: str, timeout: float) -> int:
        """Waits for a worker (signalled) to exit; its exit status."""
        proc = self.procs[name]
        await until(lambda: proc.poll() is not None, timeout, f"worker {name} to exit")
        return proc.returncode

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(redis_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


@asynccontextmanager
async def started_app(workers: Workers) -> AsyncIterator[Any]:
    """tests/drain_app.py imported here, as an orchestrator would, once a worker answers."""
    os.environ.update(
        {k: workers.env[k] for k in ("TASKIQ_FLOW_TEST_REDIS", "TASKIQ_FLOW_TEST_QUEUE")}
    )
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("drain_app", None)
    import drain_app

    from taskiq_flow.run.runner import run_single

    async def answered() -> bool:
        try:
            await run_single(drain_app.broker, drain_app.ping.task_name, (), {}, timeout=2)
        except Exception:
            return False  # sent before the consumer group existed
        return True

    await drain_app.broker.startup()
    try:
        await until(answered, 60, "a worker to answer a ping")
        yield drain_app
    finally:
        await drain_app.broker.shutdown()
        sys.path.remove(str(TESTS))


async def held_by(redis: Redis, queue: str, name: str) -> int:
    """How many messages of ``queue`` the processes of worker ``name`` hold (taken, not
    acknowledged)."""
    try:
        consumers = await redis.xinfo_consumers(queue, "taskiq")
    except Exception:
        return 0
    return sum(
        int(c["pending"]) for c in consumers if str(c["name"], "utf-8").startswith(f"{name}.")
    )


async def counts(redis: Redis, key: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in (await redis.hgetall(key)).items()}


async def ran_in(redis: Redis, item: int) -> list[int]:
    return [int(p) for p in await redis.lrange(f"drain:ran:{item}", 0, -1)]


# -- a slow task finishes; what was not started is given back --------------------------------------


async def test_a_draining_worker_finishes_its_running_task_and_gives_back_the_rest_at_once(
    redis: Redis, workers: Workers
) -> None:
    # Worker a runs two tasks at a time and reads up to 100 messages at once: it holds most of
    # the map, not yet started, when it is stopped.
    workers.start("a", 30, "--max-async-tasks", "2")
    await workers.up(redis, "a")
    async with started_app(workers) as app:
        items = list(range(21))
        run = asyncio.ensure_future(
            MapReduce.map(
                app.broker,
                app.counted,
                items,
                21,
                kwargs={"seconds": 0.5, "hold": [0], "hold_seconds": 4},
            )
        )
        await until(lambda: held_by(redis, workers.queue, "a"), 30, "worker a to take messages")

        async def holding_a_batch() -> bool:
            started = await counts(redis, "drain:started")
            return started.get(0) == 1 and await held_by(redis, workers.queue, "a") >= 10

        await until(holding_a_batch, 30, "the slow task to run while a holds 10+ messages")
        [a_pid] = await ran_in(redis, 0)
        workers.start("b", 30)
        await workers.up(redis, "b")
        workers.procs["a"].send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await asyncio.wait_for(run, 60) == items
        took = time.monotonic() - stopped_at
        assert await workers.stopped("a", 30) == 0, workers.log("a")
        print(f"\nthe map ended {took:.2f}s after its worker was stopped (lease 30 s)")
        # The slow task finished where it ran, once, uncut; nothing ran twice; a holds nothing.
        assert await ran_in(redis, 0) == [a_pid]
        assert await counts(redis, "drain:done") == dict.fromkeys(items, 1)
        assert await counts(redis, "drain:started") == dict.fromkeys(items, 1)
        assert await counts(redis, "drain:cut") == {}
        assert await held_by(redis, workers.queue, "a") == 0
        # What a had not started ran on b at once, not after the 30 s lease.
        assert took < 20


# -- a task still running at the drain timeout is cut and runs elsewhere at once -------------------


async def test_a_task_cut_at_the_drain_timeout_runs_again_on_another_worker_at_once(
    redis: Redis, workers: Workers
) -> None:
    workers.start("a", 1)
    await workers.up(redis, "a")
    async with started_app(workers) as app:
        run = asyncio.ensure_future(
            MapReduce.map(app.broker, app.counted, [7], kwargs={"hold": [7], "hold_seconds": 600})
        )
        await until(lambda: ran_in(redis, 7), 30, "the long task to start")
        [a_pid] = await ran_in(redis, 7)
        workers.start("b", 1)
        await workers.up(redis, "b")
        workers.procs["a"].send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await asyncio.wait_for(run, 60) == [7]
        took = time.monotonic() - stopped_at
        assert await workers.stopped("a", 30) == 0, workers.log("a")
        print(f"\nthe cut task ran again and ended {took:.2f}s after the SIGTERM (drain 1 s)")
        ran = await ran_in(redis, 7)
        assert len(ran) == 2 and ran[0] == a_pid and ran[1] != a_pid
        assert await counts(redis, "drain:cut") == {7: 1}  # it saw CancelledError
        assert await counts(redis, "drain:done") == {7: 1}  # one body completed: on b
        assert await held_by(redis, workers.queue, "a") == 0
        # Back at once: the drain timeout, the cut and the give-back, not the 30 s lease.
        assert took < 15


# -- a rolling restart under a 2,000-task map ---------------------------------------------------


async def test_a_rolling_restart_under_a_2000_task_map_loses_and_repeats_nothing(
    redis: Redis, workers: Workers
) -> None:
    workers.start("w1", 5)
    workers.start("w2", 5)
    await workers.up(redis, "w1")
    await workers.up(redis, "w2")
    items = list(range(2000))
    async with started_app(workers) as app:
        run = asyncio.ensure_future(
            MapReduce.map(app.broker, app.counted, items, 200, kwargs={"seconds": 0.05})
        )
        # Each worker in turn is stopped and replaced by a new process (a new name, as a
        # deploy's new pod has), while the map runs.
        for old, new, after in (("w1", "w1b", 300), ("w2", "w2b", 1000)):

            async def done_at_least(n: int = after) -> bool:
                return bool(await redis.hlen("drain:done") >= n)

            await until(done_at_least, 120, f"{after} items done")
            workers.procs[old].send_signal(signal.SIGTERM)
            workers.start(new, 5)
            assert await workers.stopped(old, 60) == 0, workers.log(old)
            # It gave back everything it held: nothing waits for its lease.
            assert await held_by(redis, workers.queue, old) == 0
            await workers.up(redis, new)
        assert await asyncio.wait_for(run, 120) == items
    done = await counts(redis, "drain:done")
    assert done == dict.fromkeys(items, 1)  # every body completed once: none lost, none twice
    started = await counts(redis, "drain:started")
    cut = await counts(redis, "drain:cut")
    assert all(started[i] == 1 + cut.get(i, 0) for i in items)  # a re-run only after a cut


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "86401", ""])
def test_a_bad_drain_timeout_is_refused_before_anything_starts(redis_url: str, value: str) -> None:
    env = {
        **os.environ,
        "TASKIQ_FLOW_TEST_REDIS": redis_url,
        "TASKIQ_FLOW_TEST_QUEUE": "q-refused",
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [sys.executable, "-m", "taskiq_flow.cli", "worker", "drain_app:broker"]
    done = subprocess.run(
        [*command, "--name", "w", "--drain-timeout", value],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert (
        f"--drain-timeout must be a number of seconds within [0, 86400], got {value!r}"
        in (lines[0])
    )


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 86_401, True, None])
def test_a_bad_drain_timeout_is_refused_by_the_broker(value: object) -> None:
    from taskiq_flow.distributed import reliable_stream_broker

    with pytest.raises(InvalidValueError, match=r"drain_timeout must be a number of seconds"):
        reliable_stream_broker("redis://127.0.0.1:1", drain_timeout=value)  # type: ignore[arg-type]
