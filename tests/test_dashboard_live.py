"""What the dashboard shows live from tracking: bars that grow by the core's reasons, the reason
of any step on a click, and the DAG from the run's own record (real headless chromium)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from headless import headless_page
from taskiq import InMemoryBroker
from test_dashboard import Gates, gated_pipeline, only_own_requests, until_js

from taskiq_flow import DataflowPipeline, PipelineTrackingManager
from taskiq_flow.dashboard import create_app, serve
from taskiq_flow.tracking import StepStatus


def bare(sentence: str) -> str:
    """A sentence without its "(for 2.0 s)" (the time goes on between two askings)."""
    return re.sub(r" \(for [^)]*\)", "", sentence)


async def bars(page: Any) -> dict[str, list[list[Any]]]:
    """What the timeline drew last, by row: ``[[start_ms, end_ms, kind]]``."""
    text = await page.evaluate(
        "document.getElementById('timeline-canvas').getAttribute('data-bars')"
    )
    drawn: dict[str, list[list[Any]]] = json.loads(text or "{}")
    return drawn


async def test_a_running_steps_bar_grows_and_a_waiting_one_shows_its_reason(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gates = Gates("extract", "transform", "audit", "load")
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking)
    pipeline.with_max_parallel(1)  # transform and audit: one runs, the other waits (run cap)
    run = asyncio.create_task(pipeline.kiq_dataflow(seed=1))
    await asyncio.wait_for(gates.started["extract"].wait(), 10)
    run_id = pipeline.pipeline_id
    try:
        async with await serve(tracking) as server, headless_page(tmp_path / "p") as page:
            load = await page.open(f"{server.base_url}/runs/{run_id}")
            await until_js(page, "document.body.dataset.ready === '1'")
            # extract runs: its bar is one open "running" segment, drawn up to now.
            live = tracking.live(run_id)
            assert live is not None
            [[start, end, kind]] = live.steps[0].segments
            assert (end, kind) == (None, "running") and start >= live.started_at - 0.001
            first = (await bars(page))["0"]
            assert [k for _, _, k in first] == ["running"]
            # It grows while the step runs, with no new record from the run (the page draws
            # the open segment up to the server's now).
            grown = await until_js(
                page,
                "(() => { const b = JSON.parse(document.getElementById('timeline-canvas')"
                ".getAttribute('data-bars'))['0'];"
                f" return b[0][1] > {first[0][1]} + 300 && b; }})()",
            )
            assert grown[0][0] == first[0][0] and grown[0][2] == "running"
            assert live.steps[0].segments[0][1] is None  # still open in the record
            # extract ends; one of transform/audit runs, the other waits for the run's cap.
            gates.open["extract"].set()
            await asyncio.wait_for(gates.started["transform"].wait(), 10)
            waiting = "waiting:run cap"
            drawn = await until_js(
                page,
                "(() => { const b = JSON.parse(document.getElementById('timeline-canvas')"
                f".getAttribute('data-bars')); return b['2'] && b['2'].length && "
                f"b['2'][b['2'].length - 1][2] === {json.dumps(waiting)} && b; }})()",
            )
            assert drawn["1"][-1][2] == "running"
            assert [s[2] for s in live.steps[2].segments] == ["run_cap"]
            assert "waiting: the pipeline's cap is full (1/1" in pipeline.explain("audit")
            # transform ends: audit's wait closes where its run starts, no gap.
            gates.open["transform"].set()
            await asyncio.wait_for(gates.started["audit"].wait(), 10)
            drawn = await until_js(
                page,
                "(() => { const b = JSON.parse(document.getElementById('timeline-canvas')"
                ".getAttribute('data-bars'))['2']; return b.length === 2 && b; })()",
            )
            [(w0, w1, wk), (r0, _, rk)] = drawn
            assert (wk, rk) == (waiting, "running") and w1 == r0 and w1 > w0
            for name in ("audit", "load"):
                gates.open[name].set()
            await asyncio.wait_for(run, 10)
            await until_js(
                page, "document.querySelector('#run-status .badge').textContent === 'done'"
            )
            assert load.problems == []
            only_own_requests(load, server.base_url)
    finally:
        for event in gates.open.values():
            event.set()
        await asyncio.wait_for(run, 10)
    # Kept with the run: every segment closed, the wait then the run for audit.
    status = await tracking.get_status(run_id)
    assert all(seg[1] is not None for step in status.steps for seg in step.segments)
    assert [seg[2] for seg in status.steps[2].segments] == ["run_cap", "running"]


def test_a_steps_segments_stay_bounded_and_keep_their_span() -> None:
    from taskiq_flow.tracking import MAX_SEGMENTS

    step = StepStatus("flappy")
    for k in range(1_000):  # a step that runs, then waits for a rate token, a thousand times
        step.mark("running" if k % 2 == 0 else "rate", 10.0 + k)
    step.close_segments(1_010.0)
    assert len(step.segments) <= MAX_SEGMENTS
    assert step.segments[0][0] == 10.0 and step.segments[-1][1] == 1_010.0
    for a, b in zip(step.segments, step.segments[1:]):
        assert a[1] == b[0]  # no gap, no overlap
    # A segment of no length is not kept; the same kind goes on in one segment.
    step = StepStatus("s")
    step.mark("ready", 1.0)
    step.mark("running", 1.0)
    step.mark("running", 2.0)
    step.mark("backoff", 3.0)
    step.mark("running", 4.0)
    step.close_segments(5.0)
    assert step.segments == [[1.0, 3.0, "running"], [3.0, 4.0, "backoff"], [4.0, 5.0, "running"]]


async def test_the_reason_of_step_5000_of_10000_is_the_runs_own(
    broker: InMemoryBroker, tmp_path: Path, record_property: Any
) -> None:
    """Far past the steps a run explains by itself (its first 200 unfinished), a click gets
    the run's own answer, the one ``explain`` gives."""
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker, name="wide", max_parallel=2).with_tracking(tracking)
    release, held = asyncio.Event(), asyncio.Event()
    for i in range(10_000):

        async def work(x: int, i: int = i) -> int:
            if i < 2:
                held.set()
                await release.wait()
            return x + 1

        work.__name__ = f"work{i}"
        task = broker.task(task_name=f"work{i}")(work)
        pipeline.add_dataflow_task(task, output=f"w{i}", inputs={"x": "raw"})
    run = asyncio.create_task(pipeline.kiq_dataflow(raw=0))
    try:
        await asyncio.wait_for(held.wait(), 60)
        run_id = pipeline.pipeline_id
        live = tracking.live(run_id)
        assert live is not None and live.steps[5000].waiting is None  # not explained by itself
        server = await serve(tracking)
        async with server, headless_page(tmp_path / "profile") as page:
            load = await page.open(f"{server.base_url}/runs/{run_id}")
            ready_ms = await until_js(
                page, "document.body.dataset.ready === '1' && performance.now()"
            )
            record_property("interactive_ms", ready_ms)
            await page.evaluate(
                "(() => { const box = document.getElementById('steps');"
                " box.scrollTop = 22 * 4995; box.dispatchEvent(new Event('scroll')); })()"
            )
            row = '#steps-rows .tr[data-step="5000"]'
            await until_js(page, f"document.querySelector('{row}')")
            await page.evaluate(
                f"document.querySelector('{row}').dispatchEvent(new MouseEvent('click', "
                "{bubbles: true}))"
            )
            shown = await until_js(
                page,
                "(() => { const e = document.getElementById('explain-text'); "
                "return e && e.dataset.source === 'run' && e.textContent; })()",
            )
            assert await page.evaluate("document.querySelector('#explain h3').textContent") == (
                "work5000"
            )
            said = pipeline.explain("work5000")
            assert said.startswith("waiting: the pipeline's cap is full (2/2 in flight)")
            assert bare(shown) == bare(said)
            assert ready_ms < 2000, f"interactive after {ready_ms:.0f} ms"
            assert load.problems == []
            only_own_requests(load, server.base_url)
    finally:
        release.set()
        await asyncio.wait_for(run, 120)


async def test_the_dag_is_drawn_from_the_runs_record_without_a_graph(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    gates = Gates("extract", "transform", "audit", "load")
    tracking = PipelineTrackingManager()
    pipeline = gated_pipeline(broker, gates, tracking)
    run = asyncio.create_task(pipeline.kiq_dataflow(seed=1))
    await asyncio.wait_for(gates.started["extract"].wait(), 10)
    run_id = pipeline.pipeline_id
    try:
        live = tracking.live(run_id)
        assert live is not None
        assert sorted(map(tuple, live.edges or [])) == [(0, 1), (0, 2), (1, 3), (2, 3)]
        async with await serve(tracking) as server, headless_page(tmp_path / "p") as page:
            load = await page.open(f"{server.base_url}/runs/{run_id}")  # no graphs given
            await until_js(page, "document.body.dataset.ready === '1'")
            assert await page.evaluate("document.getElementById('no-dag') === null")
            assert await page.evaluate("document.querySelectorAll('#dag-box g.node').length") == 4
            assert await page.evaluate("document.querySelectorAll('#dag-box .edge').length") == 4
            state = "document.querySelector('#dag-box g.node[data-step=\"0\"]').dataset.state"
            assert await until_js(page, f"{state} === 'running' && {state}") == "running"
            assert load.problems == []
    finally:
        for event in gates.open.values():
            event.set()
        await asyncio.wait_for(run, 10)


async def test_an_action_given_to_the_app_is_behind_the_token(tmp_path: Path) -> None:
    """The seam for more buttons: an action given to the app is served behind the same checks
    as cancel and delete (and may not take a path of the dashboard's own)."""
    import aiohttp
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    done: list[str] = []

    async def pin(request: Request) -> Response:
        done.append(request.path_params["note"])
        return JSONResponse({"pinned": request.path_params["note"]})

    tracking = PipelineTrackingManager()
    for own in ("runs/{run_id}/cancel", "runs/{run_id}/dead-letters/{letter}/replay"):
        with pytest.raises(ValueError, match="is the dashboard's own"):
            create_app(tracking, token="t" * 16, actions={own: pin})
    actions = {"runs/{run_id}/notes/{note}/pin": pin}
    async with await serve(tracking, actions=actions) as server:
        url = f"{server.base_url}/api/runs/r1/notes/7/pin"
        async with aiohttp.ClientSession() as session:
            async with session.post(url) as r:
                assert r.status == 401
            async with session.post(url, headers={"Origin": "http://evil.example"}) as r:
                assert r.status == 401
            bearer = {"Authorization": f"Bearer {server.token}"}
            async with session.post(url, headers=bearer) as r:
                assert r.status == 200 and await r.json() == {"pinned": "7"}
            async with session.get(url, headers=bearer) as r:
                assert r.status == 405  # an action is a POST
    assert done == ["7"]
