"""The HTML run report: built from real runs, opened in a real headless browser (chromium)."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from headless import headless_page, png_pixels
from taskiq import InMemoryBroker

from taskiq_flow import (
    DataflowPipeline,
    MapReduce,
    Pipeline,
    PipelineTrackingManager,
    RetryPolicy,
    StepFailedError,
    pipeline_task,
)
from taskiq_flow.cli.demo import run_demo
from taskiq_flow.pictures import SimpleGraph
from taskiq_flow.report import (
    CRITICAL_COLOUR,
    STATUS_COLOURS,
    default_segments,
    render_report,
    write_report,
)
from taskiq_flow.tracking import PipelineStatus, StepStatus

HOSTILE_ERROR = '<img src=x onerror="window.pwned=1"> </pre></td><script>window.pwned=2</script>'


async def etl_run(broker: InMemoryBroker) -> tuple[PipelineStatus, DataflowPipeline]:
    """A real run: clean -> (total, count) -> summary, plus audit (fails for good, with hostile
    text in its error) -> publish (skipped); count fails once and is retried."""
    tries = {"count": 0}

    @broker.task
    @pipeline_task(output="clean")
    async def clean(raw: list[int]) -> list[int]:
        return sorted(raw)

    @broker.task
    @pipeline_task(output="total")
    async def total(clean: list[int]) -> int:
        return sum(clean)

    @broker.task
    @pipeline_task(output="count", retry=RetryPolicy(max_attempts=3, delay=0.001, jitter=0.0))
    async def count(clean: list[int]) -> int:
        tries["count"] += 1
        if tries["count"] == 1:
            raise ConnectionError("flaky once")
        return len(clean)

    @broker.task
    @pipeline_task(output="summary")
    async def summary(total: int, count: int) -> str:
        return f"{total}/{count}"

    @broker.task
    @pipeline_task(output="audit", retry=RetryPolicy(max_attempts=1))
    async def audit(raw: list[int]) -> int:
        raise ValueError(HOSTILE_ERROR)

    @broker.task
    @pipeline_task(output="publish")
    async def publish(audit: int, summary: str) -> str:
        return summary

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(
        broker, [clean, total, count, summary, audit, publish], on_error="continue", name="etl"
    ).with_tracking(tracking)
    with pytest.raises(StepFailedError):
        await pipeline.kiq_dataflow(raw=[3, 1, 2])
    return await tracking.get_status(pipeline.pipeline_id or ""), pipeline


class _Svg(HTMLParser):
    """Collects the timeline's scale and its rows' segments from a report."""

    def __init__(self) -> None:
        super().__init__()
        self.scale: dict[str, float] = {}
        self.rows: dict[int, list[dict[str, str]]] = {}
        self.scripts = 0
        self._row: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "div" and a.get("id") == "timeline":
            self.scale = {k: float(a[f"data-{k}"]) for k in ("t0", "x0", "px-per-ms")}
        if tag == "g" and "row" in a.get("class", "").split():
            self._row = int(a["data-step"])
            self.rows[self._row] = []
        if tag == "rect" and self._row is not None and "seg" in a.get("class", ""):
            self.rows[self._row].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "g":
            self._row = None


def timeline_of(page: str) -> _Svg:
    parser = _Svg()
    parser.feed(page)
    return parser


def check_bars_against_tracking(status: PipelineStatus, page: str) -> int:
    """Every running bar is as wide as the step's duration_ms and starts where the step did (to
    the 0.001 px the page is written with); returns how many bars were checked."""
    svg = timeline_of(page)
    t0, x0, scale = svg.scale["t0"], svg.scale["x0"], svg.scale["px-per-ms"]
    checked = 0
    for index, step in enumerate(status.steps):
        running = [r for r in svg.rows[index] if r["data-kind"] == "running"]
        if step.started_at is None or step.finished_at is None:
            assert running == []
            continue
        assert step.duration_ms is not None
        [bar] = running
        width, x = float(bar["width"]), float(bar["x"])
        assert width == pytest.approx(step.duration_ms * scale, abs=0.002)
        start = step.finished_at - step.duration_ms / 1000.0
        assert x == pytest.approx(x0 + (start - t0) * 1000.0 * scale, abs=0.002)
        # Epoch floats are good to ~0.24 us: the bar ends at finished_at and, for a step tried
        # once, starts at started_at, to within a microsecond.
        micro = 0.001 * scale + 0.001  # and 0.0005 px of rounding on each of x and width
        assert x + width == pytest.approx(x0 + (step.finished_at - t0) * 1000 * scale, abs=micro)
        if step.attempts == step.tasks:
            assert x == pytest.approx(x0 + (step.started_at - t0) * 1000.0 * scale, abs=micro)
        checked += 1
    return checked


async def test_a_real_run_opens_in_a_browser_without_errors(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    status, pipeline = await etl_run(broker)
    steps = {s.name: s for s in status.steps}
    assert (steps["count"].attempts, steps["audit"].status, steps["publish"].status) == (
        2,
        "failed",
        "skipped",
    )
    report = write_report(tmp_path / "run.html", status, dag=pipeline.dag)
    page_text = report.read_text(encoding="utf-8")
    assert check_bars_against_tracking(status, page_text) == 5
    assert timeline_of(page_text).scripts == 1
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri())
        assert load.problems == []
        assert load.requests == [report.as_uri()]  # nothing fetched from anywhere
        assert await page.evaluate("document.body.dataset.ready") == "1"
        text = await page.evaluate("document.body.innerText")
        for name in steps:
            assert name in text
        # The hostile error is shown as text, and nothing it contains ran or became an element.
        problems = await page.evaluate("document.getElementById('problems').innerText")
        assert HOSTILE_ERROR in problems and "flaky once" in problems
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert await page.evaluate("document.querySelectorAll('script, img').length") == 1
        # DAG nodes are coloured by outcome; the critical path is outlined.
        fills = await page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#dag g.node')].map("
            "g => [g.querySelector('title').textContent.split(':')[0], "
            "g.querySelector('rect').getAttribute('fill')]))"
        )
        assert fills == {
            "clean": STATUS_COLOURS["done"],
            "total": STATUS_COLOURS["done"],
            "count": STATUS_COLOURS["done"],
            "summary": STATUS_COLOURS["done"],
            "audit": STATUS_COLOURS["failed"],
            "publish": STATUS_COLOURS["skipped"],
        }
        # The retried step's row shows its earlier attempt before its last one.
        kinds = await page.evaluate(
            "[...document.querySelectorAll('#timeline g.row')].filter("
            "g => g.querySelector('title').textContent.startsWith('count:')).map("
            "g => [...g.querySelectorAll('rect')].map(r => r.dataset.kind))"
        )
        # Before them, what its first attempt did between ready and started (sent, queued).
        [row] = kinds
        assert row[-2:] == ["retrying", "running"] and set(row[:-2]) <= {"ready", "queued"}
        # Clicking a bar highlights the same step in the DAG, the timeline and the tables.
        lit = await page.evaluate(
            "(() => { const g = document.querySelector('#timeline g.row[data-step=\"1\"] rect');"
            "g.dispatchEvent(new MouseEvent('click', {bubbles: true}));"
            "return document.querySelectorAll('.hl').length; })()"
        )
        assert lit == 3  # its DAG node, timeline row and steps-table row


async def test_the_browser_check_sees_errors_and_requests(tmp_path: Path) -> None:
    """The harness itself: a page that logs, throws and fetches is caught on each count."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>x</p>"
        '<script src="http://127.0.0.1:9/missing.js"></script>'
        "<script>console.error('boom'); null.f();</script></body></html>",
        encoding="utf-8",
    )
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(bad.as_uri())
    assert ("error", "boom") in load.console
    assert any("Cannot read properties of null" in e for e in load.exceptions)
    assert "http://127.0.0.1:9/missing.js" in load.requests
    assert load.log_errors  # the failed load is logged as an error


async def test_screenshot_is_a_picture_of_the_report(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    status, pipeline = await etl_run(broker)
    report = write_report(tmp_path / "run.html", status, dag=pipeline.dag)
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri(), width=900, height=600)
        assert load.problems == []
        png = await page.screenshot()
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (900, 600)
    colours = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    assert bytes.fromhex(STATUS_COLOURS["done"][1:]) in colours  # the run's badge and nodes
    assert bytes.fromhex(STATUS_COLOURS["failed"][1:]) in colours


async def test_a_ten_thousand_step_run_renders_and_agrees_with_tracking(
    broker: InMemoryBroker, tmp_path: Path, record_property: Any
) -> None:
    # A step is a task (the nodes calling one task track as one step of many tasks), so 10^4
    # steps are 10^4 tasks.
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker, name="big").with_tracking(tracking)
    for i in range(10_000):  # a binary tree: 14 levels

        async def work(x: int) -> int:
            return x + 1

        work.__name__ = f"work{i}"
        task = broker.task(task_name=f"work{i}")(work)
        pipeline.add_dataflow_task(
            task, output=f"w{i}", inputs={"x": "raw" if i == 0 else f"w{(i - 1) // 2}"}
        )
    await pipeline.kiq_dataflow(raw=0)
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert len(status.steps) == 10_000 and status.status == "done"
    report = write_report(tmp_path / "big.html", status, dag=pipeline.dag)
    page_text = report.read_text(encoding="utf-8")
    assert check_bars_against_tracking(status, page_text) == 10_000
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri())
        assert load.problems == []
        record_property("rendered_ms", load.rendered_ms)
        record_property("bytes", len(page_text))
        assert await page.evaluate("document.querySelectorAll('#timeline g.row').length") == 10_000
        # 10^4 distinct names are more than a picture can show: said, not drawn.
        assert "10000 nodes, 10000 distinct names: too many to draw" in page_text
        # What the browser laid out agrees with the tracking record, bar by bar.
        drawn = await page.evaluate(
            "(() => { const tl = document.getElementById('timeline');"
            "const k = parseFloat(tl.dataset.pxPerMs), x0 = parseFloat(tl.dataset.x0);"
            "let worst = 0, total = 0, expected = 0, n = 0;"
            "for (const r of tl.querySelectorAll('rect.seg')) {"
            "  const b = r.getBBox(), start = parseFloat(r.dataset.startMs);"
            "  const ms = parseFloat(r.dataset.endMs) - start;"
            "  worst = Math.max(worst, Math.abs(b.width - ms * k), Math.abs(b.x - x0 - start * k));"
            "  total += b.width; expected += ms * k; n += 1; }"
            "return [n, worst, total, expected]; })()"
        )
        n, worst, total_px, expected_px = drawn
        running = page_text.count('data-kind="running"')
        assert running == 10_000 and n >= running and worst < 0.01
        # Laid out, not skipped: the widths add up (each is written to 0.0005 px).
        assert total_px == pytest.approx(expected_px, abs=0.0005 * n) and total_px > expected_px / 2


def test_user_text_is_escaped_everywhere() -> None:
    evil = '"><script>alert(1)</script><svg onload=alert(2)>'
    status = PipelineStatus(
        f"id-{evil}",
        f"run {evil}",
        status="failed",
        started_at=100.0,
        finished_at=101.0,
        error=f"run error {evil}",
        steps=[
            StepStatus(
                f"step {evil}",
                "failed",
                duration_ms=500.0,
                attempts=2,
                error=f"err {evil}",
                started_at=100.0,
                finished_at=100.5,
            )
        ],
    )
    page = render_report(
        status,
        dag=SimpleGraph.from_edges([f"step {evil}"], []),
        segments={f"step {evil}": [(100.0, 100.5, f"waiting:{evil}")]},
        title=evil,
    )
    assert page.count("<script") == 1 and "<svg onload" not in page
    assert "alert(1)</script>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    assert timeline_of(page).rows[0][0]["data-kind"] == f"waiting:{evil}"


def test_segments_split_a_bar_by_reason() -> None:
    step = StepStatus(
        "resize", "done", duration_ms=400.0, attempts=1, started_at=10.0, finished_at=11.0
    )
    status = PipelineStatus("r", "p", "done", started_at=10.0, finished_at=11.0, steps=[step])
    parts = [
        (10.0, 10.2, "waiting:inputs"),
        (10.2, 10.5, "waiting:cap"),
        (10.5, 10.6, "queued"),
        (10.6, 11.0, "running"),
    ]
    svg = timeline_of(render_report(status, segments={"resize": parts}))
    scale, x0 = svg.scale["px-per-ms"], svg.scale["x0"]
    assert scale == pytest.approx(860 / 1000) and x0 == 200
    drawn = [(r["data-kind"], float(r["x"]), float(r["width"]), r["fill"]) for r in svg.rows[0]]
    assert drawn == [
        ("waiting:inputs", x0, pytest.approx(200 * scale, abs=1e-3), "#fff59d"),
        (
            "waiting:cap",
            pytest.approx(x0 + 200 * scale, abs=1e-3),
            pytest.approx(300 * scale, abs=1e-3),
            "#ffcc80",
        ),
        (
            "queued",
            pytest.approx(x0 + 500 * scale, abs=1e-3),
            pytest.approx(100 * scale, abs=1e-3),
            "#b39ddb",
        ),
        (
            "running",
            pytest.approx(x0 + 600 * scale, abs=1e-3),
            pytest.approx(400 * scale, abs=1e-3),
            STATUS_COLOURS["done"],
        ),
    ]
    with pytest.raises(ValueError, match="segment of step 'resize' must have finite start <= end"):
        render_report(status, segments={"resize": [(11.0, 10.0, "running")]})


def test_default_segments() -> None:
    plain = StepStatus("a", "done", duration_ms=100.0, started_at=5.0, finished_at=5.1)
    assert default_segments(plain) == [(5.0, 5.1, "running")]
    retried = StepStatus(
        "b", "done", duration_ms=100.0, attempts=3, started_at=5.0, finished_at=6.0
    )
    assert default_segments(retried) == [(5.0, 5.9, "retrying"), (5.9, 6.0, "running")]
    mapped = StepStatus("c", "done", duration_ms=1000.0, tasks=50, started_at=5.0, finished_at=6.0)
    assert default_segments(mapped) == [(5.0, 6.0, "running")]
    assert default_segments(StepStatus("d")) == []


def test_mapped_steps_show_counts_and_problems_are_listed() -> None:
    steps = [
        StepStatus("map(resize)", "done", 900.0, 1003, None, 0.0, 0.9, tasks=1000, tasks_done=1000),
        StepStatus("upload", "failed", 50.0, 1, "OSError: disk full", 0.9, 0.95),
        StepStatus("notify", "skipped"),
    ]
    page = render_report(PipelineStatus("r", "p", "failed", 0.0, 1.0, steps=steps), slowest=1)
    problems = re.search(r'<table id="problems">.*?</table>', page)
    assert problems is not None
    assert "map(resize)" in problems.group(0) and "disk full" in problems.group(0)
    assert "notify" not in problems.group(0)
    assert "1000/1000" in page and "\u00d71000 · #1 slowest · 900.0 ms" in page
    assert '<g class="row slow" data-step="0">' in page
    assert '<g class="row" data-step="1">' in page
    with pytest.raises(ValueError, match="slowest"):
        render_report(PipelineStatus("r", "p"), slowest=-1)


def test_a_dag_too_big_to_draw_says_so() -> None:
    names = [f"n{i}" for i in range(30)]
    graph = SimpleGraph.from_edges(names, [(i, i + 1) for i in range(29)])
    page = render_report(PipelineStatus("r", "p"), dag=graph, max_dag_nodes=10)
    assert "30 nodes, 30 distinct names: too many to draw (limit 10)" in page
    assert '<svg id="dag"' not in page
    collapsed = render_report(PipelineStatus("r", "p"), dag=_fan(40), max_dag_nodes=10)
    assert "42 nodes drawn as 3" in collapsed
    dense = SimpleGraph.from_edges(
        [f"a{i}" for i in range(150)] + [f"b{i}" for i in range(150)],
        [(i, 150 + j) for i in range(150) for j in range(150)],
    )
    page = render_report(PipelineStatus("r", "p"), dag=dense)
    assert "The first 20000 of 22500 edges are drawn." in page
    assert page.count('<path class="edge') == 20_000


def test_very_big_runs_get_one_timeline_row_per_step_name() -> None:
    steps = [
        StepStatus(f"task-{i % 3}", "failed" if i == 4 else "done", 10.0, 1, None, i, i + 0.01)
        for i in range(30)
    ]
    status = PipelineStatus("r", "p", "failed", 0.0, 30.0, steps=steps)
    page = render_report(status, max_timeline_rows=10)
    svg = timeline_of(page)
    assert sorted(svg.rows) == [0, 1, 2]  # each row is named by its first step's index
    assert "30 steps drawn as 3 rows" in page
    spans = {
        i: (float(r[0]["data-start-ms"]), float(r[0]["data-end-ms"])) for i, r in svg.rows.items()
    }
    assert spans[0] == pytest.approx((0.0, 27_010.0))
    assert spans[1] == pytest.approx((1_000.0, 28_010.0))
    assert svg.rows[1][0]["fill"] == STATUS_COLOURS["failed"]  # its worst step
    assert "10 steps, 10 tasks" in page
    assert page.count('role="row" data-step=') == 30  # the steps table keeps every step
    assert len(timeline_of(render_report(status)).rows) == 30


def _fan(width: int) -> SimpleGraph:
    names = ["split", *(["work"] * width), "join"]
    edges = [(0, i) for i in range(1, width + 1)] + [(i, width + 1) for i in range(1, width + 1)]
    return SimpleGraph.from_edges(names, edges)


async def test_reports_are_written_while_runs_go_on(broker: InMemoryBroker, tmp_path: Path) -> None:
    """A report of a run in progress (steps pending, no end time) renders too."""
    gate = asyncio.Event()
    started = asyncio.Event()

    @broker.task
    @pipeline_task(output="slow")
    async def slow(x: int) -> int:
        started.set()
        await gate.wait()
        return x

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker).add_dataflow_task(slow).with_tracking(tracking)
    run = asyncio.create_task(pipeline.kiq_dataflow(x=1))
    await started.wait()
    live = await tracking.get_status(pipeline.pipeline_id or "")
    page = render_report(live)
    assert live.status == "running" and "slow" in page and "<svg" in page
    gate.set()
    assert await run == {"slow": 1}


async def test_only_the_pages_own_script_may_run(tmp_path: Path) -> None:
    """Defense in depth: were some text ever left unescaped, the page's policy (its own script,
    by hash) would still keep an injected script or handler from running."""
    status = PipelineStatus("r", "p", "done", 0.0, 1.0, steps=[StepStatus("a", "done", 1.0)])
    page_text = render_report(status).replace(
        "<h2>Slowest steps</h2>",
        "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
        "<h2>Slowest steps</h2>",
    )
    target = tmp_path / "tampered.html"
    target.write_text(page_text, encoding="utf-8")
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(target.as_uri())
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert await page.evaluate("document.body.dataset.ready") == "1"  # ours ran
    assert any("Content Security Policy" in p for p in load.problems)


def test_nodes_of_one_name_keep_their_own_steps() -> None:
    """A dataflow run tracks one step per node, in node order: the critical path follows the
    tracked durations node by node, and each node shows its own outcome, even when names
    repeat."""
    graph = SimpleGraph.from_edges(["a", "b", "b", "c"], [(0, 1), (0, 2), (1, 3), (2, 3)])
    steps = [
        StepStatus("a", "done", 5.0, 1, None, 0.0, 0.005),
        StepStatus("b", "failed", 10.0, 1, "boom", 0.005, 0.015),
        StepStatus("b", "done", 500.0, 1, None, 0.005, 0.505),
        StepStatus("c", "skipped"),
    ]
    page = render_report(PipelineStatus("r", "p", "failed", 0.0, 1.0, steps=steps), dag=graph)
    crit = re.findall(r'<g class="row crit[^"]*" data-step="(\d+)"', page)
    assert sorted(map(int, crit)) == [0, 2, 3]  # the slower b, by its own tracked duration
    assert "<b>Critical path:</b> a → b → c</p>" in page
    fills = dict(re.findall(r'<g class="node[^"]*" data-step="(\d+)">.*?fill="(#\w+)"', page))
    assert fills == {
        "0": STATUS_COLOURS["done"],
        "1": STATUS_COLOURS["failed"],
        "2": STATUS_COLOURS["done"],
        "3": STATUS_COLOURS["skipped"],
    }
    chain = SimpleGraph.chain([f"s{i}" for i in range(30)])
    long = render_report(PipelineStatus("r", "p"), dag=chain)
    assert "s4 → s5 → … (19 more) … → s25 →" in long


async def test_the_timeline_shows_what_each_step_waited_for(broker: InMemoryBroker) -> None:
    @broker.task
    async def resize(x: int) -> int:
        await asyncio.sleep(0.02)  # the four behind the cap wait at least this
        return x

    tracking = PipelineTrackingManager()
    handle = (
        await Pipeline(broker).map(resize, range(6), max_parallel=2).with_tracking(tracking).kiq()
    )
    await handle.wait_result(timeout=10)
    status = await tracking.get_status(handle.pipeline_id)
    [step] = status.steps
    assert step.waited["step_cap"] > 0.02  # four tasks waited for the step's cap
    page = render_report(status)
    # The first two ran at once; what the others waited for is in the row's title, summed.
    assert re.search(r"waited for the step&#x27;s cap [0-9.]+ ms \(its 6 tasks together\)", page)


async def _rows_in_browser(page: Any) -> dict[str, list[dict[str, Any]]]:
    """Each timeline row's segments as the browser laid them out: name -> [{kind, x, width,
    start_ms, end_ms}]."""
    rows: dict[str, list[dict[str, Any]]] = await page.evaluate(
        "(() => { const out = {};"
        "for (const g of document.querySelectorAll('#timeline g.row')) {"
        "  const name = g.querySelector('title').textContent.split(':')[0];"
        "  out[name] = [...g.querySelectorAll('rect.seg')].map(r => { const b = r.getBBox();"
        "    return {kind: r.dataset.kind, x: b.x, width: b.width,"
        "            start_ms: parseFloat(r.dataset.startMs), end_ms: parseFloat(r.dataset.endMs)};"
        "  }); }"
        "return out; })()"
    )
    return rows


@pytest.mark.parametrize("shape", ["map step", "map run"])
async def test_the_timeline_of_a_run_with_a_map_starts_and_ends_with_the_run(
    broker: InMemoryBroker, tmp_path: Path, shape: str
) -> None:
    """No bar before the run's start or after its end: a map's waits (for its step's cap, or
    for its run's) are not drawn before its first task started."""

    @broker.task
    async def resize(x: int) -> int:
        await asyncio.sleep(0.002)  # each bar has a width
        return x

    tracking = PipelineTrackingManager()
    if shape == "map step":
        pipeline = Pipeline(broker).map(resize, range(200), max_parallel=8)
        handle = await pipeline.with_tracking(tracking).kiq()
        await handle.wait_result(timeout=60)
    else:
        await MapReduce.map(broker, resize, range(200), max_parallel=8, tracking=tracking)
    [status] = await tracking.list_pipelines()
    [step] = status.steps
    assert status.finished_at is not None
    assert step.waited["step_cap" if shape == "map step" else "run_cap"] > 0
    report = write_report(tmp_path / "map.html", status)
    svg = timeline_of(report.read_text(encoding="utf-8"))
    assert svg.scale["t0"] == status.started_at  # the axis starts with the run
    run_ms = (status.finished_at - status.started_at) * 1000.0
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri(), width=1400)
        assert load.problems == []
        rows = await _rows_in_browser(page)
        x0 = float(await page.evaluate("document.getElementById('timeline').dataset.x0"))
        scale = float(await page.evaluate("document.getElementById('timeline').dataset.pxPerMs"))
    [segments] = rows.values()
    assert segments[-1]["kind"] == "running"
    for seg in segments:
        assert 0.0 <= seg["start_ms"] <= seg["end_ms"] <= run_ms + 1e-3, seg
        assert x0 - 0.01 <= seg["x"] and seg["x"] + seg["width"] <= x0 + run_ms * scale + 0.01


async def test_every_moment_from_ready_to_running_has_the_reason_the_core_recorded(
    broker: InMemoryBroker, tmp_path: Path
) -> None:
    """``decode`` feeds three analyses under the run's cap of 2: the third waits for the run's
    own cap, and its bar says so from the moment it was ready; then it is queued (sent, not
    started), then running, with no gap."""

    @broker.task
    @pipeline_task(output="pcm")
    async def decode(audio: int) -> int:
        await asyncio.sleep(0.02)  # a bar of its own before the analyses
        return audio

    analyses = []
    for name in ("loudness", "fingerprint", "transcribe"):

        async def analysis(pcm: int) -> int:
            await asyncio.sleep(0.05)  # the third waits about this long for the cap
            return pcm

        analysis.__name__ = name
        analyses.append(broker.task(task_name=name)(pipeline_task(output=name)(analysis)))
    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline.from_tasks(
        broker, [decode, *analyses], max_parallel=2, name="audio"
    ).with_tracking(tracking)
    await pipeline.kiq_dataflow(audio=1)
    status = await tracking.get_status(pipeline.pipeline_id or "")
    steps = {s.name: s for s in status.steps}
    held = [s for s in steps.values() if s.first_wait == "run_cap"]
    assert len(held) == 1, [(s.name, s.waited) for s in status.steps]
    [third] = held
    assert third.waited["run_cap"] > 0.02  # about one analysis long
    decoded = steps["decode"].finished_at
    assert decoded is not None
    report = write_report(tmp_path / "audio.html", status, dag=pipeline.dag)
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri(), width=1400)
        assert load.problems == []
        rows = await _rows_in_browser(page)
        t0 = float(await page.evaluate("document.getElementById('timeline').dataset.t0"))
    for step in status.steps:
        segments = rows[step.name]
        kinds = [seg["kind"] for seg in segments]
        assert kinds[-1] == "running" and set(kinds[:-1]) <= {
            "waiting:run cap", "ready", "queued",
        }, kinds  # fmt: skip
        # From ready to the end of its run, one piece after another, no gap.
        for a, b in itertools.pairwise(segments):
            assert b["start_ms"] == pytest.approx(a["end_ms"], abs=1e-6)
            assert b["x"] == pytest.approx(a["x"] + a["width"], abs=0.01)
        assert step.ready_at is not None and step.sent_at is not None
        assert segments[0]["start_ms"] == pytest.approx((step.ready_at - t0) * 1000.0, abs=1e-6)
        if step.name != "decode":  # ready once decode's value came back
            assert step.ready_at >= decoded - 0.001
    first = rows[third.name][0]
    assert first["kind"] == "waiting:run cap"
    waited_ms = first["end_ms"] - first["start_ms"]
    assert waited_ms == pytest.approx(third.waited["run_cap"] * 1000.0, abs=1e-3)


async def test_the_demo_report_fits_1400_px_and_outlines_the_critical_path_apart_from_failures(
    tmp_path: Path,
) -> None:
    report = tmp_path / "demo.html"
    await run_demo(tracks=4, speed=0.2, stream=io.StringIO(), report=report)
    async with headless_page(tmp_path / "profile") as page:
        load = await page.open(report.as_uri(), width=1400, height=900)
        assert load.problems == []
        # Nothing scrolls sideways: not the page, not the DAG's or the timeline's box.
        widths = await page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth, "
            "...[...document.querySelectorAll('.scroll')].map(e => e.scrollWidth - e.clientWidth)]"
        )
        page_width, window_width, *overflow = widths
        assert page_width <= window_width == 1400 and overflow and max(overflow) <= 0, widths
        # The critical path's outline is its own colour, dashed: not the red of "failed".
        strokes = await page.evaluate(
            "[...document.querySelectorAll('#dag .node.crit rect, #dag .edge.crit')].map(e => {"
            "const s = getComputedStyle(e); return [s.stroke, s.strokeDasharray]; })"
        )
    assert len(strokes) >= 2 * 6 - 1  # the demo's path: six nodes, five edges
    red, green, blue = (int(CRITICAL_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    for stroke, dashes in strokes:
        assert stroke == f"rgb({red}, {green}, {blue})" and dashes not in ("", "none")
    failed = STATUS_COLOURS["failed"]
    distance = sum(
        abs(int(CRITICAL_COLOUR[i : i + 2], 16) - int(failed[i : i + 2], 16)) for i in (1, 3, 5)
    )
    assert CRITICAL_COLOUR not in STATUS_COLOURS.values() and distance > 150


def test_a_bar_shows_each_reason_the_step_waited_for_in_turn() -> None:
    """A step held by its cap, then by a rate token, then run: the report draws both waits from
    its recorded segments (then queued and running from its task's own times); a step still
    running is drawn as recorded, its open segment up to now."""
    from taskiq_flow.report import step_segments

    t0 = 1_000.0
    done = StepStatus(
        "resize",
        status="done",
        tasks_done=1,
        ready_at=t0 + 1.0,
        sent_at=t0 + 4.0,
        first_wait="rate",
        started_at=t0 + 4.5,
        finished_at=t0 + 6.0,
        duration_ms=1500.0,
        segments=[[t0 + 1.0, t0 + 3.0, "step_cap"], [t0 + 3.0, t0 + 4.0, "rate"],
                  [t0 + 4.0, t0 + 6.0, "running"]],
    )  # fmt: skip
    assert step_segments(done, t0) == [
        (t0 + 1.0, t0 + 3.0, "waiting:cap"),
        (t0 + 3.0, t0 + 4.0, "waiting:rate"),
        (t0 + 4.0, t0 + 4.5, "queued"),
        (t0 + 4.5, t0 + 6.0, "running"),
    ]
    live = StepStatus(
        "upload",
        status="running",
        tasks_running=1,
        segments=[[t0 + 2.0, t0 + 2.5, "run_cap"], [t0 + 2.5, None, "running"]],
    )
    assert step_segments(live, t0, now=t0 + 9.0) == [
        (t0 + 2.0, t0 + 2.5, "waiting:run cap"),
        (t0 + 2.5, t0 + 9.0, "running"),
    ]
    status = PipelineStatus("r", "p", started_at=t0, finished_at=t0 + 6.0, steps=[done])
    bars = timeline_of(render_report(status))
    assert [bar["data-kind"] for bar in bars.rows[0]] == [
        "waiting:cap",
        "waiting:rate",
        "queued",
        "running",
    ]
