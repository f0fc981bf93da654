"""Every Python block of README.md is a complete program: each runs as a user runs it (saved to
its own file, run by its own interpreter) and prints what its comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
LOCAL_REDIS = "redis://127.0.0.1:6379"

# What each program prints, found by a line of its code: (marker, lines printed, patterns).
EXPECTED: list[tuple[str, list[str], list[str]]] = [
    (
        'output="largest"',
        ["{'clean': [1, 2, 3], 'total': 6, 'largest': 3}"],
        [r"^total: \d+\.\d\dms$"],
    ),
    ("async def numbers", ["[0, 1, 4, 9, 16]", "True", "328350"], []),
    (
        "async def resize",
        [],
        [r"^waiting: step cap 'map\(resize\)' is full \(16/16 in flight\); next free slot"],
    ),
    ("write_report(", [], [r"^flowchart"]),
    ("async def heavy", ["True"], []),
    ("reliable_stream_broker(URL", [], []),
    ("Placer,  ", [], [r"TopologicalSorter"]),
    ("TopologicalSorter({", ["['load', 'clean', 'enrich', 'report']"], []),
    ("DagGraph(4", ["[0, 1, 2, 3]", "[0, 1, 1, 2]", "(7, [0, 1, 3])", "(0,)", "(1, 2)"], []),
    ("DagScheduler(5", [], []),
    ("RateLimiter(rate=200", ["50"], []),
    ("Placer([", ["0"], [r"needs gpu=2 but the largest gpu any worker offers is 1"]),
]


def test_every_block_is_checked() -> None:
    assert len(SNIPPETS) == len(EXPECTED)
    for code, (marker, _, _) in zip(SNIPPETS, EXPECTED):
        assert marker in code, marker


def test_the_readme_says_how_to_run_them() -> None:
    text = README.read_text()
    assert "is a complete program" in text.split("```python")[0]


@pytest.mark.parametrize("index", range(len(EXPECTED)), ids=lambda i: EXPECTED[i][0])
def test_block_runs_as_a_program(index: int, redis_url: str, tmp_path: Path) -> None:
    code = SNIPPETS[index]
    marker, lines, patterns = EXPECTED[index]
    assert "await" not in code or "asyncio.run(" in code, "top-level await"
    script = tmp_path / "snippet.py"
    script.write_text(code.replace(LOCAL_REDIS, redis_url))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # files a program writes (a run report) land here
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    for line in lines:
        assert line in out, (line, proc.stdout[-2000:])
    for pattern in patterns:
        assert re.search(pattern, proc.stdout, flags=re.M), (pattern, proc.stdout[-2000:])
    if marker == "write_report(":
        assert "<h1>" in (tmp_path / "run.html").read_text()
