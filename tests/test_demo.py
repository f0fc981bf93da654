"""The demo: a dataflow on the embedded broker, a progress bar, and the step timing table."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from taskiq_flow.cli import main as cli_main
from taskiq_flow.cli.demo import run_demo


async def test_demo_runs_every_task_and_marks_the_slowest_step() -> None:
    out = io.StringIO()
    statuses = await run_demo(tracks=3, speed=1.0, stream=out)
    assert len(statuses) == 3
    assert all(s.status == "done" and len(s.steps) == 8 for s in statuses)
    text = out.getvalue()
    assert "24/24" in text  # the progress bar's end
    steps = {
        "fetch_manifest",
        "download",
        "decode",
        "loudness",
        "fingerprint",
        "transcribe",
        "tag",
        "publish",
    }
    rows = [r for r in map(str.split, text.splitlines()) if r and r[0] in steps and r[1].isdigit()]
    table = {row[0]: float(row[2]) for row in rows}
    assert set(table) == steps
    assert table["transcribe"] >= 150  # its simulated wait, measured where it ran
    slowest = [line.split()[0] for line in text.splitlines() if "<- slowest" in line]
    assert slowest == [max(table, key=lambda name: table[name])]


def test_demo_command_ends_by_pointing_at_its_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = tmp_path / "demo.html"
    assert cli_main(["demo", "--tracks", "2", "--speed", "0.1", "--report", str(report)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == ["report of the slowest run (DAG, timeline, steps):", f"  {report}"]
    page = report.read_text()
    assert "transcribe" in page and "<svg" in page


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--speed", "-1"], "argument --speed: expected a number from 0 to 100, got -1"),
        (["--speed", "nan"], "argument --speed: expected a number from 0 to 100, got nan"),
        (["--speed", "inf"], "argument --speed: expected a number from 0 to 100, got inf"),
        (["--speed", "fast"], "argument --speed: expected a number, got 'fast'"),
        (["--tracks", "0"], "argument --tracks: expected a number >= 1, got 0"),
        (["--tracks", "2.5"], "argument --tracks: expected a whole number, got '2.5'"),
        (["--tracks", "10000000"], "argument --tracks: expected a number <= 1000"),
        (["--report", "/no/such/dir/demo.html"], "--report /no/such/dir/demo.html: no directory"),
        (["--report", "."], "--report .: is a directory"),
        (["--dashboard-port", "70000"], "argument --dashboard-port: expected a number <= 65535"),
    ],
)
def test_the_demo_refuses_bad_flags_in_one_line_before_it_starts(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--tracks", "1", "--speed", "0", *argv])
    assert exit_info.value.code == 2  # argparse's status for a bad command line
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing started: no banner, no progress bar
    [line] = captured.err.splitlines()
    assert line.startswith("taskiq-flow demo: ") and says in line, line


def test_a_demo_report_that_cannot_be_written_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["demo", "--tracks", "1", "--speed", "0", "--report", "/dev/full"]) == 1
    assert capsys.readouterr().err == (
        "taskiq-flow demo: cannot write --report /dev/full: No space left on device\n"
    )


async def _read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> str:
    """Lines of the demo's output up to the one holding ``marker`` (that line)."""
    while True:
        line = (await asyncio.wait_for(stream.readline(), 120)).decode()
        assert line, f"the demo ended before printing {marker!r}: {seen}"
        seen.append(line)
        if marker in line:
            return line


async def test_demo_dashboard_serves_the_page_and_its_feed_until_ctrl_c(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskiq_flow.cli",
        "demo",
        "--tracks",
        "2",
        "--speed",
        "0",
        "--report",
        str(tmp_path / "demo.html"),
        "--dashboard",
        "--dashboard-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    seen: list[str] = []
    try:
        first = await _read_until(process.stdout, "dashboard: ", seen)
        found = re.fullmatch(r"dashboard: (http://127\.0\.0\.1:\d+)  token: (\S+)\n", first)
        assert found, first
        base, token = found.groups()
        assert f"open {base}/?token={token}" in await _read_until(process.stdout, "open ", seen)
        await _read_until(process.stdout, "goes on serving", seen)  # the demo finished
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as r:
                assert r.status == 200 and "taskiq-flow runs" in await r.text()
            async with session.get(base + "/events", timeout=aiohttp.ClientTimeout(30)) as r:
                assert r.status == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                data = None
                async for raw in r.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        data = json.loads(line[len("data: ") :])
                        break
            assert data is not None and data["total"] == 2
            rows = list(data["rows"].values())
            assert {row["status"] for row in rows} == {"done"}
            assert {row["name"] for row in rows} == {"audio-ingest"}
            async with session.get(f"{base}/runs/{rows[0]['id']}") as r:
                page = await r.text()
                assert r.status == 200 and 'id="dag-box"' in page  # drawn from the record
            async with session.post(
                f"{base}/api/runs/{rows[0]['id']}/delete",
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 200
        process.send_signal(signal.SIGINT)  # Ctrl-C
        code = await asyncio.wait_for(process.wait(), 30)
        err = (await process.stderr.read()).decode()
        assert code == 0, err
        assert err.strip().splitlines() == ["taskiq-flow demo: dashboard stopped by SIGINT"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_ctrl_c_during_the_demo_with_its_dashboard_is_130() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskiq_flow.cli",
            "demo",
            "--tracks",
            "500",
            "--dashboard",
            "--dashboard-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("dashboard: http://127.0.0.1:")
    proc.stdout.readline()  # open ...
    proc.stdout.readline()  # the demo started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["taskiq-flow demo: stopped by SIGINT"]


def test_a_dashboard_port_taken_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["demo", "--tracks", "1", "--speed", "0", "--dashboard", "--dashboard-port"]
        assert cli_main([*argv, str(port)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"taskiq-flow demo: cannot listen on 127.0.0.1:{port}: ")
    assert "--dashboard-port" in line
