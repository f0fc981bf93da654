"""Every example script runs to completion (each asserts what its guide section promises)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
EXPECTED = {
    "parallelism.py": "under a global cap of 8: peak in flight 8",
    "memory.py": "measured 500 items in chunks of 100",
    "profiling.py": "Peak:",
    "external_services.py": "peak connections 5",
    "benchmarking.py": "P95",
    "troubleshooting.py": "Slowest step: analyze",
    "custom_executor.py": "sent to the GPU pool: ['embed']",
    "resources.py": "24 two-core tasks on 12 cores: peak 6 at once",
}


def test_every_example_is_checked() -> None:
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXPECTED[script.name] in proc.stdout
