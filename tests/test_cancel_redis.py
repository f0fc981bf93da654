"""Cancel that reaches running work over Redis, with real `taskiq worker` processes: a cancelled
run's running attempts are cut where they run within a second, nothing new starts, another run
on the same workers finishes; ``taskiq-flow runs cancel`` does it from another process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from taskiq_flow import MapReduce, PipelineCancelledError, PipelineTrackingManager, start
from taskiq_flow.distributed import RedisPipelineStorage
from tests.conftest import until
from tests.test_distributed import TESTS, app_module, supervised_workers

if TYPE_CHECKING:
    from redis.asyncio import Redis


@pytest.fixture
def cancel_workers(redis_url: str) -> Iterator[dict[str, str]]:
    """Two worker processes consuming tests/cancel_app.py."""
    with supervised_workers(redis_url, "--workers", "2", app="cancel_app:broker") as (env, _):
        yield env


@pytest.fixture
async def app(cancel_workers: dict[str, str]) -> AsyncIterator[Any]:
    async with app_module(cancel_workers, "cancel_app") as module:
        yield module


async def test_cancel_cuts_running_attempts_in_workers_within_a_second(
    redis: Redis, app: Any
) -> None:
    run = start(
        MapReduce.map,
        app.broker,
        app.wait_to_be_cut,
        range(100),
        max_parallel=20,
        kwargs={"tag": "t"},
    )
    other = start(MapReduce.map, app.broker, app.quick, range(60), max_parallel=4)
    await until(lambda: _count(redis, "t:started", 20), 60, "20 attempts to be running")
    cancelled_at = time.time()
    run.cancel()
    with pytest.raises(PipelineCancelledError, match=r"cut: 'wait_to_be_cut' \(20 running\)"):
        await run
    await until(lambda: _count(redis, "t:cut", 20), 30, "every running attempt to be cut")
    cuts = [float(t) for t in await redis.lrange("t:cut", 0, -1)]
    assert max(cuts) - cancelled_at < 1.0  # over Redis: within a second
    assert await other == list(range(60))  # the other run on the same workers went on
    assert await redis.llen("t:started") == 20  # nothing new was sent


async def _count(redis: Redis, key: str, wanted: int) -> bool:
    return int(await redis.llen(key)) >= wanted


async def test_runs_cancel_from_another_process_cuts_the_run(
    redis: Redis, app: Any, cancel_workers: dict[str, str]
) -> None:
    orchestrator = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "cancel_orchestrator.py"),
        cwd=TESTS,
        env=cancel_workers,
        stdout=asyncio.subprocess.PIPE,
    )
    await until(lambda: _count(redis, "cli:started", 6), 60, "the run's 6 attempts to run")
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis))
    [live] = await tracking.list_pipelines(status="running")
    url = cancel_workers["TASKIQ_FLOW_TEST_REDIS"]
    command = [sys.executable, "-m", "taskiq_flow.cli", "runs", "cancel", live.pipeline_id]
    done = await asyncio.to_thread(
        subprocess.run, [*command, "--redis", url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())  # the console wraps at its width
    assert said.startswith(f"cancelled {live.pipeline_id}: pipeline 'dataflow' was cancelled")
    assert "cut: 'waited' (6 running)" in said
    out, _ = await asyncio.wait_for(orchestrator.communicate(), 30)
    assert orchestrator.returncode == 3
    assert out.decode().startswith("PipelineCancelledError")
    await until(lambda: _count(redis, "cli:cut", 6), 30, "the attempts to be cut in workers")
    assert (await tracking.get_status(live.pipeline_id)).status == "cancelled"
    again = await asyncio.to_thread(
        subprocess.run, [*command, "--redis", url], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1
    assert "already ended (cancelled): nothing to cancel" in " ".join(again.stdout.split())
