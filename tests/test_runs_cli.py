"""``taskiq-flow runs``: list, show, delete, report, explain over in-memory and Redis tracking."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, Pipeline, PipelineTrackingManager, pipeline_task
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.runs_cli import add_runs_commands, explain_line, main_runs


def parse(*argv: str, top: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="taskiq-flow")
    add_runs_commands(parser.add_subparsers(dest="command", required=True), top_level=top)
    return parser.parse_args(list(argv) if top else ["runs", *argv])


async def run_cli(*argv: str, tracking: PipelineTrackingManager | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = await main_runs(parse(*argv), tracking, out)
    return code, out.getvalue()


def etl(broker: InMemoryBroker) -> DataflowPipeline:
    @broker.task
    @pipeline_task(output="clean")
    async def clean(raw: list[int]) -> list[int]:
        return sorted(raw)

    @broker.task
    @pipeline_task(output="total")
    async def total(clean: list[int]) -> int:
        return sum(clean)

    return DataflowPipeline.from_tasks(broker, [clean, total], name="etl")


#: What ``--dag test_runs_cli:PIPELINE`` imports.
PIPELINE = etl(InMemoryBroker())


async def record_a_run(broker: InMemoryBroker, tracking: PipelineTrackingManager) -> str:
    pipeline = etl(broker).with_tracking(tracking)
    assert await pipeline.kiq_dataflow(raw=[2, 1]) == {"clean": [1, 2], "total": 3}
    assert pipeline.pipeline_id is not None
    return pipeline.pipeline_id


async def test_every_action_on_in_memory_tracking(broker: InMemoryBroker, tmp_path: Path) -> None:
    tracking = PipelineTrackingManager()
    run = await record_a_run(broker, tracking)

    code, out = await run_cli("list", tracking=tracking)
    assert code == 0 and run[:8] in out and "etl" in out and "2/2" in out
    code, out = await run_cli("list", "--json", tracking=tracking)
    [listed] = json.loads(out)
    assert (listed["pipeline_id"], listed["status"], listed["steps"]) == (run, "done", 2)
    code, out = await run_cli("list", "--json", "--status", "failed", tracking=tracking)
    assert json.loads(out) == []

    code, out = await run_cli("show", run, "--json", tracking=tracking)
    shown = json.loads(out)
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [
        ("clean", "done"),
        ("total", "done"),
    ]
    assert shown["duration_ms"] > 0
    code, out = await run_cli("show", run, tracking=tracking)
    assert code == 0 and "clean" in out and "total" in out

    code, out = await run_cli("explain", run, "total", tracking=tracking)
    assert (code, out) == (0, "step 'total' is done (1/1 tasks done)\n")
    out_top = io.StringIO()
    assert await main_runs(parse("explain", run, "total", top=True), tracking, out_top) == 0
    assert out_top.getvalue() == out

    target = tmp_path / "run.html"
    code, out = await run_cli("report", run, "-o", str(target), "--json", tracking=tracking)
    assert code == 0 and json.loads(out)["path"] == str(target)
    page = target.read_text(encoding="utf-8")
    assert "clean" in page and "total" in page and page.startswith("<!DOCTYPE html>")
    assert '<svg id="dag"' not in page  # no graph without --dag
    code, out = await run_cli(
        "report", run, "-o", str(target), "--dag", "test_runs_cli:PIPELINE", tracking=tracking
    )
    assert code == 0 and '<svg id="dag"' in target.read_text(encoding="utf-8")
    for bad in ("no_such_module_xyz:PIPELINE", "test_runs_cli:MISSING", "test_runs_cli:parse"):
        code, out = await run_cli("report", run, "-o", str(target), "--dag", bad, tracking=tracking)
        assert (code, out) == (2, "")

    code, out = await run_cli("delete", run, "nope", "--json", tracking=tracking)
    assert (code, json.loads(out)) == (1, {"deleted": [run], "missing": ["nope"]})
    code, out = await run_cli("list", "--json", tracking=tracking)
    assert json.loads(out) == []


async def test_explain_reads_the_reasons_a_live_run_recorded(broker: InMemoryBroker) -> None:
    gate = asyncio.Event()

    @broker.task
    async def resize(x: int) -> int:
        await gate.wait()
        return x

    tracking = PipelineTrackingManager()
    handle = await (
        Pipeline(broker).map(resize, range(6), max_parallel=2).with_tracking(tracking).kiq()
    )
    await until(lambda: tracking.live(handle.pipeline_id) is not None)
    live = tracking.live(handle.pipeline_id)
    assert live is not None
    await until(lambda: live.steps[0].waiting is not None)
    said = explain_line(await tracking.get_status(handle.pipeline_id), "map(resize)")
    assert said.startswith(
        "step 'map(resize)': waiting: step cap 'map(resize)' is full (2/2 in flight)"
    ), said
    code, out = await run_cli("explain", handle.pipeline_id, "map(resize)", tracking=tracking)
    assert code == 0 and "step cap 'map(resize)' is full" in out
    gate.set()
    await handle.wait_result(timeout=10)
    done = await tracking.get_status(handle.pipeline_id)
    assert done.steps[0].waiting is None
    line = explain_line(done, "map(resize)")
    assert line.startswith("step 'map(resize)' is done (6/6 tasks done); its tasks waited")
    assert "for step_cap" in line  # four of the six waited for the step's cap

    tracking = PipelineTrackingManager()
    await tracking.begin("run-1", "etl", [("load", 1), ("map(resize)", 16)])
    status = await tracking.get_status("run-1")
    assert explain_line(status, "map(resize)") == (
        "step 'map(resize)' is pending (0/16 tasks done); its run is running, so nothing "
        "explains it now"
    )
    assert explain_line(status) == "run 'run-1' is running with 2 unfinished step(s)"
    code, out = await run_cli("explain", "run-1", "nope", tracking=tracking)
    assert (code, out) == (1, "")
    await tracking.end("run-1", "failed", "boom")
    assert (
        explain_line(await tracking.get_status("run-1")) == "run 'run-1' is failed; nothing waits"
    )


async def test_names_are_text_not_markup_and_tables_fit_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    tracking = PipelineTrackingManager()
    name = "[bold red]etl[/bold red] " + "x" * 100
    steps = [("[link=http://evil]s[/link]", 1), ("long " + "y" * 120, 1)]
    await tracking.begin("run-1", name, steps)
    await tracking.end("run-1", "failed", "[blink]boom[/blink]")
    for action in (("list",), ("show", "run-1")):
        code, out = await run_cli(*action, tracking=tracking)
        assert code == 0
        assert max(len(line) for line in out.splitlines()) <= 60, out
        assert "\x1b" not in out
    monkeypatch.setenv("COLUMNS", "200")
    code, out = await run_cli("show", "run-1", tracking=tracking)
    assert "[link=http://evil]s[/link]" in out and "[blink]boom[/blink]" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("list",), "give --redis URL"),
        (("list", "--redis", "http://x"), "--redis must be a redis://"),
        (("list", "--redis", "redis://localhost", "--prefix", "a:b"), "--prefix may hold only"),
        (("report", "r", "--redis", "redis://localhost", "--dag", "x y"), "--dag must look"),
    ],
)
async def test_bad_input_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    assert await main_runs(parse(*argv), None, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_argparse_refuses_bad_limits_and_states(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (("list", "--limit", "0"), ("list", "--status", "weird"), ("frobnicate",)):
        with pytest.raises(SystemExit) as info:
            parse(*argv)
        assert info.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err


async def test_unreachable_redis_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert await main_runs(parse("list", "--redis", "redis://127.0.0.1:1/0"), None) == 1
    err = capsys.readouterr().err
    assert err.startswith("taskiq-flow runs: ") and err.count("\n") == 1


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_runs_recorded_in_redis_are_read_by_the_cli(
    broker: InMemoryBroker, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="clitest"))
    run = await record_a_run(broker, tracking)
    where: tuple[str, ...] = ("--redis", redis_url, "--prefix", "clitest")

    code, out = await run_cli("list", "--json", *where)
    assert code == 0 and [r["pipeline_id"] for r in json.loads(out)] == [run]
    code, out = await run_cli("list", "--json", "--redis", redis_url, "--prefix", "other")
    assert json.loads(out) == []
    code, out = await run_cli("show", run, "--json", *where)
    steps: list[dict[str, Any]] = json.loads(out)["steps"]
    assert [s["name"] for s in steps] == ["clean", "total"]
    assert all(s["duration_ms"] > 0 for s in steps)
    target = tmp_path / "run.html"
    code, out = await run_cli("report", run, "-o", str(target), *where)
    assert code == 0 and f"wrote {target}" in out and "total" in target.read_text("utf-8")
    assert (await run_cli("show", "not:valid", *where))[0] == 2  # refused as a key part
    code, out = await run_cli("delete", run, *where)
    assert (code, out) == (0, f"deleted {run}\n")
    assert await redis.keys("clitest:*") == []
    assert (await run_cli("show", run, *where))[0] == 1
