"""A run resumed after its orchestrator was killed keeps its history and its inputs: on a real
redis-server, with real `taskiq worker` processes and a real orchestrator process killed with
SIGKILL mid-run; resumed by the `taskiq-flow runs resume` command a user runs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys

import pytest
from conftest import until
from redis.asyncio import Redis
from test_distributed import TESTS, started_app, supervised_workers

from taskiq_flow import InvalidValueError, PipelineTrackingManager, StateError
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.report import render_report


async def runs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskiq-flow runs ARGS`` in its own process, as a user runs it."""
    command = [sys.executable, "-m", "taskiq_flow.cli", "runs", *args]
    return await asyncio.to_thread(
        subprocess.run, command, cwd=TESTS, env=env, capture_output=True, text=True
    )


async def test_a_resumed_run_keeps_its_history_and_runs_with_its_stored_inputs(
    redis: Redis, redis_url: str
) -> None:
    extra = {"TASKIQ_FLOW_TEST_RUN_LEASE": "1", "TASKIQ_FLOW_TEST_RESUME": "slow"}
    with supervised_workers(redis_url, "--workers", "1", extra_env=extra) as (env, _):
        async with started_app(env):
            orchestrator = await asyncio.create_subprocess_exec(
                sys.executable, str(TESTS / "redis_resume.py"), cwd=TESTS, env=env
            )
            # first_step is done, slow runs (for four seconds): the orchestrator dies, and
            # slow's completion arrives while nobody listens.
            await until(lambda: redis.get("slow:3:runs"), 30, "slow to start")
            tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))
            [live] = await tracking.list_pipelines()

            async def first_step_recorded() -> bool:
                status = await tracking.get_status(live.pipeline_id)
                return status.steps[0].status == "done"

            await until(first_step_recorded, 30, "first_step's completion to be recorded")
            before = await tracking.get_status(live.pipeline_id)
            orchestrator.send_signal(signal.SIGKILL)
            await orchestrator.wait()
            await until(
                lambda: tracking.list_pipelines(status="abandoned"), 10, "the run to be abandoned"
            )
            url = ["--redis", redis_url, "--pipeline", "redis_resume:slow_pipeline"]

            # Other inputs than the run's: refused, before anything is sent.
            refused = await runs(env, "resume", live.pipeline_id, *url, "--input", "x=4")
            assert refused.returncode == 1, refused.stderr
            [line] = refused.stderr.splitlines()
            assert "ran with other inputs (x: stored 3, given 4)" in line, line
            assert "--inputs-changed-ok" in line
            assert (await tracking.get_status(live.pipeline_id)).status == "abandoned"
            assert int(await redis.get("first:runs")) == 1

            # No inputs given: the stored ones.
            resumed = await runs(env, "resume", live.pipeline_id, *url)
            assert resumed.returncode == 0, resumed.stderr
            assert json.loads(resumed.stdout) == {"first": 4, "slow": 3}

            after = await tracking.get_status(live.pipeline_id)
            first, second = after.steps
            assert after.status == "done" and len(after.resumes) == 1
            assert after.started_at == before.started_at < after.resumes[0]
            # The step that finished before the crash keeps its try and its time.
            assert (first.status, first.attempts, first.tasks_done) == ("done", 1, 1)
            assert first.duration_ms == before.steps[0].duration_ms is not None
            assert first.started_at == before.steps[0].started_at
            # The step out when it crashed ran twice: both attempts are in its history.
            assert (second.status, second.attempts, second.tasks_done) == ("done", 2, 1)
            assert int(await redis.get("first:runs")) == 1
            assert int(await redis.get("slow:3:runs")) == 2

            # What users read says so: `runs show` and the report.
            shown = await runs(env, "show", live.pipeline_id, "--redis", redis_url, "--json")
            data = json.loads(shown.stdout)
            assert [s["attempts"] for s in data["steps"]] == [1, 2]
            assert data["resumes"] == after.resumes
            page = render_report(after)
            assert "every task ran once" not in page
            assert 'id="resumed"' in page and 'class="mark resume"' in page
            assert '<td class="num">2</td><td class="num">1</td>' in page  # slow: 2 tries


async def test_inputs_too_large_to_store_are_said_and_must_be_given(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RedisPipelineStorage(redis, ttl_seconds=60, max_record_bytes=1_000)
    tracking = PipelineTrackingManager(storage)
    big = {"x": "y" * 5_000}
    with caplog.at_level(logging.WARNING, logger="taskiq_flow"):
        await tracking.begin("big", "etl", [("load", 1)], inputs=big)
    [warning] = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    said = "the inputs record of run big is 5,021 bytes as JSON; the limit is 1,000 bytes"
    assert said in warning
    assert "resuming it needs them given again" in warning
    await tracking.end("big", "failed", "boom")
    with pytest.raises(StateError, match=r"its inputs were not stored .*1,000 bytes.*give them"):
        await tracking.resume_inputs("big", None)
    assert await tracking.resume_inputs("big", big) == big  # given: nothing to compare with
    assert 0 < await redis.ttl(storage.inputs_key("big")) <= 60
    # Inputs JSON cannot carry are refused too, never stored as their repr.
    await tracking.begin("odd", "etl", [("load", 1)], inputs={"x": object()})
    with pytest.raises(StateError, match="are not JSON"):
        await tracking.load_inputs("odd")
    assert await tracking.delete_pipeline("odd")
    assert await redis.exists(storage.inputs_key("odd")) == 0


async def test_stored_inputs_are_the_default_and_a_change_is_refused_unless_allowed(
    redis: Redis,
) -> None:
    for storage in (None, RedisPipelineStorage(redis, ttl_seconds=60)):
        tracking = PipelineTrackingManager(storage)
        inputs = {"folder": "/data", "sizes": (1, 2)}
        await tracking.begin("r", "etl", [("load", 1)], inputs=inputs)
        await tracking.end("r", "failed", "boom")
        # In memory: a copy of what was given; in Redis: its JSON (a tuple reads back a list).
        stored = inputs if storage is None else {"folder": "/data", "sizes": [1, 2]}
        assert await tracking.resume_inputs("r", None) == stored
        # The same inputs as a task receives them (a tuple arrives as a list): accepted.
        assert await tracking.resume_inputs("r", {"folder": "/data", "sizes": [1, 2]})
        with pytest.raises(InvalidValueError, match=r"other inputs .*folder: stored '/data'"):
            await tracking.resume_inputs("r", {"folder": "/tmp", "sizes": [1, 2]})
        with pytest.raises(InvalidValueError, match=r"sizes: stored .*, given nothing"):
            await tracking.resume_inputs("r", {"folder": "/data"})
        changed = {"folder": "/tmp", "sizes": [3]}
        assert await tracking.resume_inputs("r", changed, inputs_changed_ok=True) == changed
        # The resumed run begins with the new inputs: they are the stored ones from then on.
        await tracking.begin("r", "etl", [("load", 1)], inputs=changed)
        assert await tracking.load_inputs("r") == changed
        assert len((await tracking.get_status("r")).resumes) == 1
        await tracking.end("r", "done")
        with pytest.raises(StateError, match="no inputs are stored"):
            await tracking.load_inputs("never-run")


def test_an_input_that_is_not_json_says_strings_need_quotes() -> None:
    command = [
        sys.executable, "-m", "taskiq_flow.cli", "runs", "resume", "RUN",
        "--redis", "redis://127.0.0.1:1", "--pipeline", "app:pipeline", "--input", "folder=/x",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "taskiq-flow runs: --input folder: '/x' is not JSON; a string needs JSON quotes: "
        "--input folder='\"/x\"'\n"
    )
