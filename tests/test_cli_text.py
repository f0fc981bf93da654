"""What the commands print reads as plain text and fits an 80-column terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["demo"],
    ["worker"],
    ["bench"],
    ["runs"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "delete"],
    ["runs", "resume"],
    ["runs", "report"],
    ["runs", "explain"],
    ["report"],
    ["explain"],
]


def taskiq_flow(*args: str, timeout: float = 120) -> str:
    """Runs ``taskiq-flow ARGS`` on an 80-column terminal; returns its standard output."""
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "taskiq_flow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > 80]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "taskiq-flow")
def test_help_is_plain_text_within_80_columns(command: list[str]) -> None:
    text = taskiq_flow(*command, "--help")
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert too_wide(text) == []
    assert text.startswith("usage: taskiq-flow")


@pytest.mark.parametrize("command", [["demo"], ["worker"], ["bench"], ["runs", "list"]])
def test_help_has_examples(command: list[str]) -> None:
    text = taskiq_flow(*command, "--help")
    assert "examples:\n  taskiq-flow " + command[0] in text


def test_worker_help_documents_capacity_and_pass_through() -> None:
    text = taskiq_flow("worker", "--help")
    for option in ("--cpu-cores N", "--ram-gb N", "--ram-mb N", "--resource", "--label"):
        assert option in text, option
    assert "after --, they are passed through" in text
    assert "-- --max-async-tasks 50" in text


def test_every_option_says_its_default() -> None:
    for command in (["demo"], ["bench"], ["worker"], ["runs", "list"], ["report"]):
        text = taskiq_flow(*command, "--help")
        options = text.split("\noptions:\n")[1].split("\n\n")[0]
        # One entry per option: its first line starts with "  -", the rest are indented more.
        entries = re.split(r"\n(?=  -)", options)
        for entry in entries:
            if entry.lstrip().startswith("-h, --help"):
                continue
            flat = " ".join(entry.split())
            assert "default" in flat or "required" in flat, (command, flat)


def test_demo_output_fits_80_columns(tmp_path: object) -> None:
    out = taskiq_flow("demo", "--tracks", "3", "--speed", "0.05", "--report", "/dev/null")
    assert "<- slowest" in out
    assert too_wide(out) == []


def test_bench_output_fits_80_columns() -> None:
    out = taskiq_flow("bench", "--scale", "0.01", "--group", "admission", "--group", "pipelines")
    assert "peer÷ours" in out and "÷ floor" in out
    assert too_wide(out) == []


def test_bench_wide_keeps_every_column() -> None:
    out = taskiq_flow("bench", "--scale", "0.01", "--group", "admission", "--wide")
    assert "peer ÷ ours" in out and "result" in out
    assert too_wide(out) != []


REDIS_COMMANDS = [
    c for c in COMMANDS if c[:1] in (["runs"], ["report"], ["explain"]) and c != ["runs"]
]


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=" ".join)
def test_the_usage_shows_redis_as_required_and_leaving_it_out_is_one_line(
    command: list[str],
) -> None:
    usage = taskiq_flow(*command, "--help").split("\n\n")[0]
    assert " --redis URL" in " ".join(usage.split()) and "[--redis URL]" not in usage, usage
    proc = subprocess.run(
        [sys.executable, "-m", "taskiq_flow.cli", *command, "RUN", "--pipeline", "a:b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "the following arguments are required: --redis" in line, line


def test_a_refused_command_line_is_one_line_naming_the_help() -> None:
    for argv, says in (
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["runs", "list", "--redis", "redis://h", "--limit", "0"], "expected a number >= 1"),
        (["runs", "list", "--redis", "redis://h", "--status", "weird"], "invalid choice"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "taskiq_flow.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and proc.stdout == ""
        [line] = proc.stderr.splitlines()
        assert says in line and line.endswith("--help)"), line
