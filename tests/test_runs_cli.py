"""``taskiq-flow runs``: list, show, delete, report, explain over in-memory and Redis tracking."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from redis.asyncio import Redis
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, Pipeline, PipelineTrackingManager, pipeline_task
from taskiq_flow.cli.runs import add_runs_commands, explain_line, main_runs
from taskiq_flow.distributed import RedisPipelineStorage


def parse(*argv: str, top: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="taskiq-flow")
    add_runs_commands(
        parser.add_subparsers(dest="command", required=True), top_level=top, redis_required=False
    )
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
    assert (code, out) == (0, "step 'total' is done (1 done)\n")
    out_top = io.StringIO()
    assert await main_runs(parse("explain", run, "total", top=True), tracking, out_top) == 0
    assert out_top.getvalue() == out

    target = tmp_path / "run.html"
    code, out = await run_cli("report", run, "-o", str(target), "--json", tracking=tracking)
    assert code == 0 and json.loads(out)["path"] == str(target)
    page = target.read_text(encoding="utf-8")
    assert "clean" in page and "total" in page and page.startswith("<!DOCTYPE html>")
    assert '<svg id="dag"' in page  # without --dag: the graph the run's record keeps
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
    assert line.startswith("step 'map(resize)' is done (6 done); its tasks waited")
    assert "for step_cap" in line  # four of the six waited for the step's cap

    tracking = PipelineTrackingManager()
    await tracking.begin("run-1", "etl", [("load", 1), ("map(resize)", 16)])
    status = await tracking.get_status("run-1")
    assert explain_line(status, "map(resize)") == (
        "step 'map(resize)' is pending (16 pending); its run is running, so nothing explains it now"
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
        (("list", "--redis", "redis://h:port"), "--redis redis://h:port: Port could not be cast"),
        (("list", "--redis", "redis://h:99999"), "Port out of range 0-65535"),
        (("show", "r", "--redis", "redis://[::1"), "--redis redis://[::1: Invalid IPv6 URL"),
        (("resume", "r", "--redis", "redis://h:x", "--pipeline", "a:b"), "Port could not be"),
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


def ids_whole_on_a_line(out: str, ids: list[str]) -> bool:
    lines = out.splitlines()
    return all(any(run_id in line for line in lines) for run_id in ids)


async def test_runs_list_keeps_every_run_id_whole_on_one_line_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The id every other command takes is copied from this table: one line, whole."""
    tracking = PipelineTrackingManager()
    ids = [uuid.uuid4().hex for _ in range(3)] + ["nightly-ingest-2026-12-06-" + "k" * 30]
    for i, run_id in enumerate(ids):
        await tracking.begin(run_id, "audio-ingest-" + "x" * i * 20, [("fetch", 1), ("map(x)", 9)])
        if i == 1:
            await tracking.end(run_id, "failed", "ValueError: the manifest of track-001 is empty")
        elif i == 2:
            await tracking.end(run_id, "done")
    for columns in (80, 100, 60):
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out = await run_cli("list", tracking=tracking)
        assert code == 0
        assert ids_whole_on_a_line(out, ids), (columns, out)
        assert max(len(line) for line in out.splitlines()) <= columns, out
        assert len(out.splitlines()) == 3 + len(ids), out  # title, header, rule, a line a run
    monkeypatch.setenv("COLUMNS", "160")  # room for every column: nothing given up
    code, out = await run_cli("list", tracking=tracking)
    for shown in ("run id", "name", "status", "steps", "started UTC", "took", "error"):
        assert shown in out, (shown, out)
    assert "ValueError: the manifest" in out
    monkeypatch.setenv("COLUMNS", "80")
    code, out = await run_cli("list", tracking=tracking)
    assert "run id" in out and "status" in out and "failed" in out


async def test_report_imports_the_dag_from_the_current_directory_like_resume(
    redis: Redis, redis_url: str, tmp_path: Path, broker: InMemoryBroker
) -> None:
    """``taskiq-flow report --dag flows:pipeline`` run where ``flows.py`` is, as ``runs resume
    --pipeline flows:pipeline`` and ``taskiq worker flows:broker`` find it."""
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="dagcwd"))
    run = await record_a_run(broker, tracking)
    (tmp_path / "flows.py").write_text(
        "from taskiq import InMemoryBroker\n"
        "from taskiq_flow import DataflowPipeline, pipeline_task\n"
        "broker = InMemoryBroker()\n"
        "@broker.task\n"
        "@pipeline_task(output='clean')\n"
        "async def clean(raw: list) -> list:\n"
        "    return sorted(raw)\n"
        "@broker.task\n"
        "@pipeline_task(output='total')\n"
        "async def total(clean: list) -> int:\n"
        "    return sum(clean)\n"
        "pipeline = DataflowPipeline.from_tasks(broker, [clean, total])\n"
    )
    command = Path(sys.executable).parent / "taskiq-flow"  # a console script, not python -m
    done = await asyncio.to_thread(
        subprocess.run,
        [command, "report", run, "--redis", redis_url, "--prefix", "dagcwd", "--dag",
         "flows:pipeline", "-o", "run.html"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '<svg id="dag"' in (tmp_path / "run.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--dag", "no_such_module_xyz:pipeline"), "--dag no_such_module_xyz:pipeline: cannot "
         "import 'no_such_module_xyz': ModuleNotFoundError"),
        (("--dag", "test_runs_cli:MISSING"), "'test_runs_cli' has no 'MISSING'"),
        (("--dag", "test_runs_cli:parse"), "a function, neither a pipeline nor a DAG"),
        (("-o", "/no/such/dir/run.html"), "--output /no/such/dir/run.html: no directory"),
        (("-o", "."), "--output .: is a directory"),
    ],
)  # fmt: skip
async def test_report_refuses_what_it_cannot_import_or_write_before_connecting(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    """Port 1 has no Redis: each of these is refused (status 2) before a connection is tried."""
    args = parse("report", "RUN", "--redis", "redis://127.0.0.1:1/0", *argv)
    assert await main_runs(args, None, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


async def test_a_report_that_cannot_be_written_says_so_not_that_redis_is_unreachable(
    broker: InMemoryBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    tracking = PipelineTrackingManager()
    run = await record_a_run(broker, tracking)
    code, out = await run_cli("report", run, "-o", "/dev/full", tracking=tracking)
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        "taskiq-flow runs: --output /dev/full: No space left on device\n"
    )


async def test_a_runs_command_runs_from_a_loop_outside_the_main_thread(
    broker: InMemoryBroker,
) -> None:
    """An embedder calling main_runs on a worker thread's loop (no signal handlers there)."""
    tracking = PipelineTrackingManager()
    run = await record_a_run(broker, tracking)
    out = io.StringIO()

    def in_a_thread() -> int:
        return asyncio.run(main_runs(parse("list", "--json"), tracking, out))

    assert await asyncio.to_thread(in_a_thread) == 0
    assert run in out.getvalue()
