"""The demo: a dataflow on the embedded broker, a progress bar, and the step timing table."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from taskiq_flow.cli import main as cli_main
from taskiq_flow.demo import run_demo


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
