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

from taskiq_flow import DataflowPipeline, PipelineTrackingManager
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
        (["--redis", "redis://127.0.0.1:1", "--broker", "no-colon"], "--broker must look like"),
        (["--redis", "redis://127.0.0.1:1", "--broker", "json:dumps"], "not a taskiq broker"),
        (["--redis", "redis://127.0.0.1:1", "--broker", "no_such_module_x:b"], "cannot import"),
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


async def test_over_redis_the_dag_comes_from_the_record_and_any_step_is_explained_on_a_click(
    dashboard_process: tuple[str, str], redis: Any, broker: InMemoryBroker, tmp_path: Path
) -> None:
    """A run in this process, its dashboard in another (no ``--dag``): the graph is drawn from
    the run's record, and a step far past those the run explains by itself (its first 200
    unfinished) is explained by the run's orchestrator when clicked."""
    base, _ = dashboard_process
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="dash"))
    pipeline = DataflowPipeline(broker, name="wide", max_parallel=2).with_tracking(tracking)
    release, held, rest = asyncio.Event(), asyncio.Event(), asyncio.Event()
    for i in range(300):

        async def work(x: int, i: int = i) -> int:
            held.set()
            await (release if i < 2 else rest).wait()
            return x + 1

        work.__name__ = f"work{i}"
        task = broker.task(task_name=f"work{i}")(work)
        # work0 feeds the even steps, work1 the odd ones: 300 nodes, 298 edges.
        inputs = {"x": "raw"} if i < 2 else {"x": f"w{i % 2}"}
        pipeline.add_dataflow_task(task, output=f"w{i}", inputs=inputs)
    run = asyncio.create_task(pipeline.kiq_dataflow(raw=0))
    try:
        await asyncio.wait_for(held.wait(), 30)
        run_id = pipeline.pipeline_id
        async with headless_page(tmp_path / "profile") as page:
            load = await page.open(f"{base}/runs/{run_id}")
            await until_js(page, "document.body.dataset.ready === '1'", timeout=20)
            assert await page.evaluate("document.getElementById('no-dag') === null")
            edges = await page.evaluate("document.querySelectorAll('#dag-box .edge').length")
            assert edges > 0
            assert len((await tracking.get_status(run_id)).edges or []) == 298
            # Steps wait for inputs until work0/work1 finish: release them, then two others
            # run and the rest wait for the run's cap. Step 250 is past the 200 the run
            # explains by itself.
            release.set()
            await until_js(
                page,
                "document.querySelector('#steps-rows .tr[data-step=\"1\"] .badge')"
                ".textContent === 'done'",
                timeout=20,
            )
            row = '#steps-rows .tr[data-step="250"]'
            await page.evaluate(
                "(() => { const box = document.getElementById('steps');"
                " box.scrollTop = 22 * 245; box.dispatchEvent(new Event('scroll')); })()"
            )
            await until_js(page, f"document.querySelector('{row}')")
            await page.evaluate(
                f"document.querySelector('{row}').dispatchEvent(new MouseEvent('click', "
                "{bubbles: true}))"
            )
            shown = await until_js(
                page,
                "(() => { const e = document.getElementById('explain-text'); "
                "return e && e.dataset.source === 'stored' && "
                "e.textContent.startsWith('waiting') && e.textContent; })()",
                timeout=20,
            )
            said = pipeline.explain("work250")
            stored = (await tracking.get_status(run_id)).steps[250].waiting
            assert stored is not None
            strip = re.compile(r" \(for [^)]*\)")
            assert strip.sub("", shown) == strip.sub("", stored) == strip.sub("", said)
            assert load.problems == []
            only_own_requests(load, base)
    finally:
        release.set()
        rest.set()
        await asyncio.wait_for(run, 60)
