"""Cancel from the dashboard, in a real headless chromium over real pipeline runs: with the token
the page's Cancel cuts a running run (in this process over in-memory tracking, and in worker
processes over Redis); without it, or from another site, it is refused and the run goes on."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from headless import Page, headless_page
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    PipelineCancelledError,
    PipelineTrackingManager,
    pipeline_task,
)
from taskiq_flow.dashboard import serve
from taskiq_flow.distributed import RedisPipelineStorage
from tests.conftest import until
from tests.test_cancel_redis import _count, app, cancel_workers
from tests.test_dashboard import _answer_dialog, _evil_site, _wait_event, until_js
from tests.test_distributed import TESTS

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["app", "cancel_workers"]  # fixtures of the Redis test, used here

STATUS = "document.getElementById('run-status').textContent"


class Held:
    """Two steps that hold until released, noting their start and the CancelledError they see."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = {n: asyncio.Event() for n in ("left", "right")}
        self.cut = {n: asyncio.Event() for n in ("left", "right")}

    async def hold(self, name: str) -> None:
        self.started[name].set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cut[name].set()
            raise


def held_pipeline(
    broker: InMemoryBroker, held: Held, tracking: PipelineTrackingManager
) -> DataflowPipeline:
    """Two steps running side by side, each holding until released."""

    @broker.task
    @pipeline_task(output="l")
    async def left(x: int) -> int:
        await held.hold("left")
        return x

    @broker.task
    @pipeline_task(output="r")
    async def right(x: int) -> int:
        await held.hold("right")
        return x

    return DataflowPipeline.from_tasks(broker, [left, right], name="held").with_tracking(tracking)


@pytest.fixture
async def running(broker: InMemoryBroker) -> AsyncIterator[tuple[Held, Any, asyncio.Task[Any]]]:
    """A run of :func:`held_pipeline` with both steps running, served by a dashboard."""
    held = Held()
    tracking = PipelineTrackingManager()
    pipeline = held_pipeline(broker, held, tracking)
    run = asyncio.create_task(pipeline.kiq_dataflow(x=1))
    for event in held.started.values():
        await asyncio.wait_for(event.wait(), 10)
    server = await serve(tracking)
    try:
        yield held, server, run
    finally:
        held.release.set()
        await asyncio.gather(run, return_exceptions=True)
        await server.close()


async def _post(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


async def _fetch_status(page: Page, url: str) -> int:
    status: int = await page.evaluate(f"fetch('{url}', {{method: 'POST'}}).then(r => r.status)")
    return status


async def _click_cancel(page: Page) -> None:
    """Clicks the page's Cancel (there is one, enabled) and accepts its confirmation."""
    assert await page.evaluate(
        "(b => b !== null && !b.disabled && !b.hidden)(document.getElementById('cancel-run'))"
    )
    clicked = asyncio.create_task(page.evaluate("document.getElementById('cancel-run').click()"))
    await _answer_dialog(page)
    await clicked


async def test_cancel_with_the_token_cuts_the_running_run(
    running: tuple[Held, Any, asyncio.Task[Any]], tmp_path: Path
) -> None:
    held, server, run = running
    tracking = server.app.state.dashboard.tracking
    [live] = await tracking.list_pipelines(status="running")
    run_id = live.pipeline_id
    base = server.base_url
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(f"{base}/runs/{run_id}?token={server.token}")
        await until_js(page, "document.body.dataset.ready === '1'")
        assert await until_js(page, f"{STATUS} === 'running'")
        await _click_cancel(page)
        # The page shows it cancelled, from its live feed; the running tasks were cut.
        await until_js(page, f"{STATUS} === 'cancelled'")
        note = await page.evaluate("document.getElementById('action-note').textContent")
        assert note == f"cancel sent for {run_id}"
        for event in held.cut.values():
            await asyncio.wait_for(event.wait(), 10)
        with pytest.raises(PipelineCancelledError, match="was cancelled"):
            await run
        assert not held.release.is_set()
        assert (await tracking.get_status(run_id)).status == "cancelled"
        await until_js(page, "document.getElementById('cancel-run').hidden")
        assert load.problems == []
    bearer = {"Authorization": f"Bearer {server.token}"}
    # Not running any more: 409; an unknown run: 404.
    status, body = await _post(f"{base}/api/runs/{run_id}/cancel", bearer)
    assert (status, body["status"]) == (409, "cancelled")
    assert (await _post(f"{base}/api/runs/no-such-run/cancel", bearer))[0] == 404


async def test_cancel_is_refused_without_the_token_and_from_another_site(
    running: tuple[Held, Any, asyncio.Task[Any]], tmp_path: Path
) -> None:
    held, server, run = running
    tracking = server.app.state.dashboard.tracking
    [live] = await tracking.list_pipelines(status="running")
    run_id = live.pipeline_id
    base = server.base_url
    target = f"{base}/api/runs/{run_id}/cancel"
    evil = await _evil_site(target)
    try:
        # No token, a wrong bearer token: refused by the check every action goes through.
        assert (await _post(target))[0] == 401
        assert (await _post(target, {"Authorization": "Bearer wrong"}))[0] == 401
        async with headless_page(tmp_path / "profile") as page:
            # Read-only without the token: no Cancel button, and a fetch from the page fails.
            await page.open(f"{base}/runs/{run_id}")
            await until_js(page, "document.body.dataset.ready === '1'")
            assert await until_js(page, f"{STATUS} === 'running'")
            assert await page.evaluate("document.getElementById('cancel-run') === null")
            assert await _fetch_status(page, f"/api/runs/{run_id}/cancel") == 401
            # With the session cookie but no CSRF header (any script could do that): refused.
            await page.open(f"{base}/runs/{run_id}?token={server.token}")
            await until_js(page, "document.body.dataset.ready === '1'")
            assert await page.evaluate("document.getElementById('cancel-run') !== null")
            assert await _fetch_status(page, f"/api/runs/{run_id}/cancel") == 403
            # A form on another site (same host, another port: the cookie is sent): refused.
            await page.open(evil.url)
            await page.evaluate("document.forms[0].submit()")
            await _wait_event(page, "Page.loadEventFired")
            assert "refused" in await page.evaluate("document.body.innerText")
        # The run went on: nothing was cut, and it finishes once released.
        assert (await tracking.get_status(run_id)).status == "running"
        assert not any(event.is_set() for event in held.cut.values())
        held.release.set()
        assert await asyncio.wait_for(run, 10) == {"l": 1, "r": 1}
        assert (await tracking.get_status(run_id)).status == "done"
    finally:
        await evil.close()


async def test_cancel_over_redis_reaches_the_orchestrator_and_its_workers(
    redis: Redis, app: Any, cancel_workers: dict[str, str], tmp_path: Path
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
    server = await serve(tracking)
    try:
        async with headless_page(tmp_path / "profile") as page:
            await page.open(f"{server.base_url}/runs/{live.pipeline_id}?token={server.token}")
            await until_js(page, "document.body.dataset.ready === '1'")
            assert await until_js(page, f"{STATUS} === 'running'")
            await _click_cancel(page)
            await until_js(page, f"{STATUS} === 'cancelled'", timeout=30)
        out, _ = await asyncio.wait_for(orchestrator.communicate(), 30)
        assert orchestrator.returncode == 3
        said = out.decode()
        assert said.startswith("PipelineCancelledError"), said
        assert "cut: 'waited' (6 running)" in said
        await until(lambda: _count(redis, "cli:cut", 6), 30, "the attempts to be cut in workers")
        assert (await tracking.get_status(live.pipeline_id)).status == "cancelled"
    finally:
        if orchestrator.returncode is None:
            orchestrator.kill()
            await orchestrator.wait()
        await server.close()
