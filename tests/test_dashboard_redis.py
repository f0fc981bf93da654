"""``taskiq-flow dashboard --redis``: a real process serving runs tracked in a real Redis."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from headless import headless_page
from taskiq import InMemoryBroker
from test_dashboard import Gates, gated_pipeline, only_own_requests, until_js

from taskiq_flow import PipelineTrackingManager
from taskiq_flow.cli.dashboard import main
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.exceptions import UnknownIdError

CLI = "from taskiq_flow.cli.dashboard import main; raise SystemExit(main())"


@pytest.fixture
async def dashboard_process(redis_url: str, redis: Any) -> AsyncIterator[tuple[str, str]]:
    """``taskiq-flow dashboard`` over the test's Redis: (base URL, token)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        "--redis",
        redis_url,
        "--prefix",
        "dash",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        second = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        base = re.search(r"serving (http://\S+)", first)
        token = re.search(r"\?token=(\S+)", second)
        assert base and token, (first, second)
        yield base.group(1), token.group(1)
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), 30)
        assert process.stderr is not None
        err = (await process.stderr.read()).decode()
        assert code == 0, err
        assert "Traceback" not in err, err


async def test_the_cli_serves_runs_tracked_in_redis_and_deletes_with_the_token(
    dashboard_process: tuple[str, str], redis: Any, broker: InMemoryBroker, tmp_path: Path
) -> None:
    base, token = dashboard_process
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="dash"))
    gates = Gates("extract", "transform", "audit", "load")
    pipeline = gated_pipeline(broker, gates, tracking)
    run = asyncio.create_task(pipeline.kiq_dataflow(seed=1))
    await asyncio.wait_for(gates.started["extract"].wait(), 10)
    run_id = pipeline.pipeline_id
    try:
        async with headless_page(tmp_path / "profile") as page:
            load = await page.open(f"{base}/runs/{run_id}")
            await until_js(page, "document.body.dataset.ready === '1'")
            cells = "Array.from(document.querySelectorAll('#steps-rows .tr .name'))"
            names = await page.evaluate(f"{cells}.map(e => e.textContent)")
            assert names == ["extract", "transform", "audit", "load"]
            # Written to Redis by this process, read by the dashboard's: a step ends, it shows.
            gates.open["extract"].set()
            await until_js(
                page,
                "document.querySelector('#steps-rows .tr[data-step=\"0\"] .badge')"
                ".textContent === 'done'",
                timeout=20,
            )
            for name in ("transform", "audit", "load"):
                gates.open[name].set()
            await asyncio.wait_for(run, 20)
            await until_js(
                page, "document.querySelector('#run-status .badge').textContent === 'done'", 20
            )
            assert load.problems == []
            only_own_requests(load, base)
        url = f"{base}/api/runs/{run_id}/delete"
        async with aiohttp.ClientSession() as session:
            async with session.post(url) as r:
                assert r.status == 401
            assert (await tracking.get_status(run_id)).status == "done"
            async with session.post(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        with pytest.raises(UnknownIdError):
            await tracking.get_status(run_id)
    finally:
        for event in gates.open.values():
            event.set()
        await asyncio.wait_for(run, 20)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis", "http://x"], "--redis must be a redis://"),
        (["--redis", "redis://127.0.0.1:1", "--prefix", "a b"], "--prefix may hold only"),
        (["--redis", "redis://127.0.0.1:1", "--token", "short"], "--token must be 16"),
        (["--redis", "redis://127.0.0.1:1", "--dag", "no-colon"], "--dag"),
        (["--redis", "redis://127.0.0.1:1", "--origin", "ops.example.com"], "--origin must"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("taskiq-flow dashboard: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_listening_beyond_this_machine_is_warned_about(redis_url: str) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLI,
            "--redis",
            redis_url,
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--token",
            "a-token-of-sixteen-chars",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "serving http://0.0.0.0:" in first
        second = process.stdout.readline()
        assert "?token=a-token-of-sixteen-chars" in second and "new token" not in second
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0, not only on this machine" in err
    assert process.returncode == 0


def test_an_unreachable_redis_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--redis", f"redis://127.0.0.1:{port}", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("taskiq-flow dashboard: cannot reach redis://127.0.0.1:")
