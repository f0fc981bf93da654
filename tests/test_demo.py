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
