"""The live dashboard in a real headless chromium, over a real pipeline run in this process."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from headless import Page, PageLoad, headless_page
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, PipelineTrackingManager, pipeline_task
from taskiq_flow.dashboard import serve
from taskiq_flow.exceptions import UnknownIdError

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def only_own_requests(load: PageLoad, base: str) -> None:
    """Every request the page made went to the dashboard itself."""
    outside = [u for u in load.requests if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert outside == [], outside


async def until_js(page: Page, condition: str, timeout: float = 10.0) -> Any:
    """Waits in the page until ``condition`` (a JS expression) is truthy; returns its value."""
    return await page.evaluate(
        "new Promise((resolve, reject) => { const end = Date.now() + "
        f"{int(timeout * 1000)}; const check = () => {{ let v; try {{ v = ({condition}); }} "
        "catch (e) { v = null; } if (v) resolve(v); else if (Date.now() > end) "
        "reject(new Error('timed out: ' + " + json.dumps(condition) + ")); "
        "else setTimeout(check, 5); }; check(); })"
    )


class Gates:
    """One asyncio.Event per step: a step's task returns once its gate opens."""

    def __init__(self, *names: str) -> None:
        self.open = {n: asyncio.Event() for n in names}
        self.started = {n: asyncio.Event() for n in names}


def gated_pipeline(
    broker: InMemoryBroker, gates: Gates, tracking: PipelineTrackingManager, first: str = "extract"
) -> DataflowPipeline:
    """first -> (transform, audit) -> load: each step waits for its gate."""

    async def gate(name: str) -> None:
        gates.started[name].set()
        await gates.open[name].wait()

    async def extract_body(seed: int) -> int:
        await gate(first)
        return seed

    extract_body.__name__ = first  # the step's name
    extract = broker.task(task_name=first)(pipeline_task(output="raw")(extract_body))

    @broker.task
    @pipeline_task(output="clean")
    async def transform(raw: int) -> int:
        await gate("transform")
        return raw + 1

    @broker.task
    @pipeline_task(output="checked")
    async def audit(raw: int) -> int:
        await gate("audit")
        return raw

    @broker.task
    @pipeline_task(output="stored")
    async def load(clean: int, checked: int) -> int:
        await gate("load")
        return clean + checked

    return DataflowPipeline.from_tasks(
        broker, [extract, transform, audit, load], name="gated"
    ).with_tracking(tracking)


@pytest.fixture
async def started(broker: InMemoryBroker) -> AsyncIterator[tuple[Any, ...]]:
    """A gated run in progress (its first step running) and a dashboard serving it."""
    gates = Gates("extract", "transform", "audit", "load")
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking)
    run = asyncio.create_task(pipeline.kiq_dataflow(seed=1))
    await asyncio.wait_for(gates.started["extract"].wait(), 10)
    server = await serve(tracking, graphs={"gated": pipeline})
    try:
        yield gates, tracking, pipeline, run, server
    finally:
        for event in gates.open.values():
            event.set()
        await asyncio.wait_for(run, 10)
        await server.close()


async def test_a_finished_step_shows_within_a_second_and_its_wait_matches_explain(
    started: tuple[Any, ...], tmp_path: Path, record_property: Any
) -> None:
    gates, tracking, pipeline, run, server = started
    run_id = pipeline.pipeline_id
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(f"{server.base_url}/runs/{run_id}")
        await until_js(page, "document.body.dataset.ready === '1'")
        # The DAG is drawn with the run's four steps; extract runs.
        assert await page.evaluate("document.querySelectorAll('#dag-box g.node').length") == 4
        state = "document.querySelector('#dag-box g.node[data-step=\"0\"]').dataset.state"
        assert await until_js(page, f"{state} === 'running' && {state}") == "running"
        # The step that waits says why: the sentence tracking stored, and explain's own one.
        await page.evaluate(
            "document.querySelector('#dag-box g.node[data-step=\"3\"]')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
        )
        shown = await until_js(page, "document.getElementById('explain-text').textContent")
        stored = (await tracking.get_status(run_id)).steps[3].waiting
        assert stored is not None and shown.startswith("waiting for 2 inputs")

        def bare(sentence: str) -> str:  # the run refreshes "(for 2.0 s)" once a second
            return re.sub(r" \(for [^)]*\)$", "", sentence)

        assert bare(shown) == bare(stored) == bare(pipeline.explain("load"))
        assert re.fullmatch(re.escape(bare(stored)) + r" \(for [^)]*\)", shown)
        # extract finishes: its node turns done within a second of its record saying so.
        gates.open["extract"].set()
        await asyncio.wait_for(gates.started["transform"].wait(), 10)
        shown_at = await until_js(page, f"{state} === 'done' && Date.now()") / 1000.0
        finished_at = (await tracking.get_status(run_id)).steps[0].finished_at
        assert finished_at is not None
        record_property("shown_after_s", shown_at - finished_at)
        assert shown_at - finished_at < 1.0
        # And then the rest, to the end of the run.
        for name in ("transform", "audit", "load"):
            gates.open[name].set()
        assert await run == {"raw": 1, "clean": 2, "checked": 1, "stored": 3}
        await until_js(page, "document.querySelector('#run-status .badge').textContent === 'done'")
        load.requests += []  # the load's own requests, then the feed's
        assert load.problems == []
        only_own_requests(load, server.base_url)


async def test_a_step_name_holding_script_renders_as_text(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gates = Gates(HOSTILE, "transform", "audit", "load")
    for event in gates.open.values():
        event.set()
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking, first=HOSTILE)
    await pipeline.kiq_dataflow(seed=1)
    run_id = pipeline.pipeline_id
    assert (await tracking.get_status(run_id)).steps[0].name.startswith(HOSTILE)
    server = await serve(tracking, graphs={"gated": pipeline})
    async with server, headless_page(tmp_path / "profile") as page:
        load = await page.open(server.url)  # the runs list, with the token
        await until_js(page, "document.body.dataset.ready === '1'")
        load2 = await page.open(f"{server.base_url}/runs/{run_id}")
        await until_js(page, "document.body.dataset.ready === '1'")
        names = await page.evaluate(
            "Array.from(document.querySelectorAll('#steps-rows .name')).map(e => e.textContent)"
        )
        assert names[0].startswith(HOSTILE)
        assert await page.evaluate("window.pwned === undefined")
        assert await page.evaluate("document.querySelectorAll('img').length") == 0
        # Only the page's own script element and two JSON data blocks.
        scripts = await page.evaluate(
            "Array.from(document.scripts).map(s => s.type || s.src.replace(/^.*\\//, ''))"
        )
        assert scripts == ["application/json", "application/json", "dashboard.js"]
        for pl in (load, load2):
            assert pl.problems == []
            only_own_requests(pl, server.base_url)


async def _post(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as r:
        return r.status


async def test_delete_needs_the_token_and_refuses_other_sites(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gates = Gates("extract", "transform", "audit", "load")
    for event in gates.open.values():
        event.set()
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking)
    ids = []
    for _ in range(3):
        await pipeline.kiq_dataflow(seed=1)
        ids.append(pipeline.pipeline_id)
    server = await serve(tracking, graphs={"gated": pipeline})
    evil = await _evil_site(f"{server.base_url}/api/runs/{ids[0]}/delete")
    try:
        base = server.base_url
        # No token: refused, nothing deleted; a wrong bearer token too.
        assert await _post(f"{base}/api/runs/{ids[0]}/delete") == 401
        assert await _post(f"{base}/api/runs/{ids[0]}/delete", {"Authorization": "Bearer x"}) == 401
        # The token as a bearer: deleted.
        bearer = {"Authorization": f"Bearer {server.token}"}
        assert await _post(f"{base}/api/runs/{ids[2]}/delete", bearer) == 200
        with pytest.raises(UnknownIdError):
            await tracking.get_status(ids[2])
        async with headless_page(tmp_path / "profile") as page:
            # Read-only without the token: no delete button, and a fetch from the page fails.
            await page.open(f"{base}/runs/{ids[1]}")
            await until_js(page, "document.body.dataset.ready === '1'")
            assert await page.evaluate("document.getElementById('delete-run') === null")
            assert (
                await page.evaluate(
                    f"fetch('/api/runs/{ids[1]}/delete', {{method: 'POST'}}).then(r => r.status)"
                )
                == 401
            )
            # With the token (once, in the address): the button, which deletes.
            await page.open(f"{base}/runs/{ids[1]}?token={server.token}")
            assert await page.evaluate("location.search") == ""  # the token left the address
            await until_js(page, "document.body.dataset.ready === '1'")
            assert server.token not in await page.evaluate("document.documentElement.outerHTML")
            # The session cookie alone (no CSRF header) is refused, as from any script.
            assert (
                await page.evaluate(
                    f"fetch('/api/runs/{ids[1]}/delete', {{method: 'POST'}}).then(r => r.status)"
                )
                == 403
            )
            clicked = asyncio.create_task(
                page.evaluate("document.getElementById('delete-run').click()")
            )
            await _answer_dialog(page)
            await clicked
            await _wait_event(page, "Page.loadEventFired")  # back to the runs list
            with pytest.raises(UnknownIdError):
                await tracking.get_status(ids[1])
            # A form on another site (same host, another port: the cookie is sent) is refused.
            await page.open(evil.url)
            await page.evaluate("document.forms[0].submit()")
            await _wait_event(page, "Page.loadEventFired")
            text = await page.evaluate("document.body.innerText")
            assert "refused" in text
            assert (await tracking.get_status(ids[0])).status == "done"
    finally:
        await evil.close()
        await server.close()


class _Evil:
    def __init__(self, runner: Any, url: str) -> None:
        self.runner, self.url = runner, url

    async def close(self) -> None:
        await self.runner.cleanup()


async def _evil_site(target: str) -> _Evil:
    """Another origin (127.0.0.1, another port) serving a form that posts to ``target``."""
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=f'<form method="post" action="{target}"><button>win</button></form>',
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return _Evil(runner, f"http://127.0.0.1:{port}/")


async def _wait_event(page: Page, method: str) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(page._events.get(), 30)
        if event.get("method") == method:
            return event


async def _answer_dialog(page: Page) -> None:
    await _wait_event(page, "Page.javascriptDialogOpening")
    await page.call("Page.handleJavaScriptDialog", {"accept": True})


async def test_a_ten_thousand_step_run_is_interactive_within_two_seconds(
    broker: InMemoryBroker, tmp_path: Path, record_property: Any
) -> None:
    # Watched live, as a dashboard is: the run's last step holds it open until the end.
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker, name="big").with_tracking(tracking)
    last, held = asyncio.Event(), asyncio.Event()
    for i in range(10_000):  # a binary tree: 14 levels

        async def work(x: int, i: int = i) -> int:
            if i == 9_999:
                held.set()
                await last.wait()
            return x + 1

        work.__name__ = f"work{i}"
        task = broker.task(task_name=f"work{i}")(work)
        pipeline.add_dataflow_task(
            task, output=f"w{i}", inputs={"x": "raw" if i == 0 else f"w{(i - 1) // 2}"}
        )
    run = asyncio.create_task(pipeline.kiq_dataflow(raw=0))
    await asyncio.wait_for(held.wait(), 60)
    run_id = pipeline.pipeline_id
    server = await serve(tracking, graphs={"big": pipeline})
    async with server, headless_page(tmp_path / "profile") as page:
        load = await page.open(f"{server.base_url}/runs/{run_id}")
        ready_ms = await until_js(page, "document.body.dataset.ready === '1' && performance.now()")
        record_property("interactive_ms", ready_ms)
        # A click on a step deep in the list explains it at once.
        await page.evaluate(
            "(() => { const box = document.getElementById('steps');"
            " box.scrollTop = 22 * 9000; box.dispatchEvent(new Event('scroll')); })()"
        )
        await until_js(page, "document.querySelector('#steps-rows .tr[data-step=\"9005\"]')")
        clicked_at = await page.evaluate(
            "(() => { const t = performance.now(); document.querySelector("
            "'#steps-rows .tr[data-step=\"9005\"]').dispatchEvent(new MouseEvent('click', "
            "{bubbles: true})); return t; })()"
        )
        text = await until_js(page, "document.querySelector('#explain h3').textContent")
        answered = await page.evaluate("performance.now()")
        record_property("click_to_explain_ms", answered - clicked_at)
        assert text == "work9005"
        assert ready_ms < 2000, f"interactive after {ready_ms:.0f} ms"
        assert load.problems == []
        only_own_requests(load, server.base_url)
        # 10^4 distinct names are too many to draw as a DAG: the page says so.
        assert "too many to draw" in await page.evaluate("document.body.innerText")
        last.set()
        await asyncio.wait_for(run, 60)
        await until_js(page, "document.querySelector('#run-status .badge').textContent === 'done'")


async def test_the_runs_list_filters_pages_and_shows_waits(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gates = Gates("extract", "transform", "audit", "load")
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking)
    for name in ("extract", "transform", "audit", "load"):
        gates.open[name].set()
    for _ in range(2):
        await pipeline.kiq_dataflow(seed=1)
    for name in gates.open:
        gates.open[name] = asyncio.Event()
        gates.started[name] = asyncio.Event()
    live = asyncio.create_task(pipeline.kiq_dataflow(seed=2))
    await asyncio.wait_for(gates.started["extract"].wait(), 10)
    try:
        async with await serve(tracking) as server, headless_page(tmp_path / "p") as page:
            load = await page.open(server.base_url + "/")
            await until_js(page, "document.querySelectorAll('#runs-body tr').length === 3")
            first = await page.evaluate(
                "Array.from(document.querySelectorAll('#runs-body tr')[0].cells)"
                ".map(c => c.textContent)"
            )
            # Newest first: the live run, its steps done of all, and what waits on what.
            assert first[0] == pipeline.pipeline_id and first[2] == "running"
            assert first[5] == "0/4"
            assert "tasks waiting" in first[6] and "waiting for" in first[6]
            await page.evaluate(
                "(() => { const s = document.getElementById('f-status'); s.value = 'done';"
                " s.dispatchEvent(new Event('change')); })()"
            )
            await until_js(
                page,
                "document.querySelectorAll('#runs-body tr').length === 2 && "
                "Array.from(document.querySelectorAll('#runs-body tr'))"
                ".every(r => r.cells[2].textContent === 'done')",
            )
            await page.evaluate(
                "(() => { const s = document.getElementById('f-name'); s.value = 'nothing-such';"
                " s.dispatchEvent(new Event('input')); })()"
            )
            await until_js(
                page, "document.getElementById('pager').textContent.startsWith('0 runs')"
            )
            assert load.problems == []
            only_own_requests(load, server.base_url)
    finally:
        for name in gates.open:
            gates.open[name].set()
        await asyncio.wait_for(live, 10)


async def test_every_answer_carries_the_policy_and_a_foreign_host_is_refused(
    tmp_path: Path,
) -> None:
    tracking = PipelineTrackingManager()
    async with await serve(tracking) as server, aiohttp.ClientSession() as session:
        for path in ("/", "/runs/nope", "/static/dashboard.js"):
            async with session.get(server.base_url + path) as r:
                policy = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in policy and "script-src 'self'" in policy
                assert "unsafe-inline" not in policy
        # A page of another site that rebinds its name to 127.0.0.1 asks with its own Host.
        async with session.get(server.base_url + "/", headers={"Host": "evil.example"}) as r:
            assert r.status == 400
        async with session.get(server.base_url + "/?token=wrong") as r:
            assert r.status == 403
    assert time.time() > 0
