"""Every example script runs to completion (each asserts what its docs section promises) and
points to that section."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECTED = {
    "landscape.py": "workers: 3 cores for 1-core tasks",
    "parallelism.py": "under a global cap of 8: peak in flight 8",
    "memory.py": "measured 500 items in chunks of 100",
    "profiling.py": "Peak:",
    "external_services.py": "peak connections 5",
    "scaling_out.py": "ran on: {'w1': 4, 'w2': 4}",
    "benchmarking.py": "P95",
    "production.py": "dead letters left: 0",
    "troubleshooting.py": "Slowest step: analyze",
    "custom_executor.py": "sent to the GPU pool: ['embed']",
    "resources.py": "24 two-core tasks on 12 cores: peak 6 at once",
}


def test_every_example_is_checked() -> None:
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (its toc extension's default)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_points_to_its_docs_section(script: Path) -> None:
    match = re.search(r"^Docs: (docs/[\w/.-]+\.md)#([\w-]+)$", script.read_text(), flags=re.M)
    assert match, "no 'Docs: docs/page.md#section' line"
    page = ROOT / match.group(1)
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    assert match.group(2) in {slug(h) for h in headings}
    assert "Guide section" not in script.read_text()


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, redis_url: str) -> None:
    env = {**os.environ, "TASKIQ_FLOW_REDIS_URL": redis_url}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXPECTED[script.name] in proc.stdout
