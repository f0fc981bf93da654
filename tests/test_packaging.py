"""What a plain install gets: a lean import, the CLI's version, the typed stub."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata, resources

import pytest

from taskiq_flow.cli import main


def test_import_pulls_in_neither_the_bench_harness_nor_its_peers() -> None:
    code = (
        "import sys, json, taskiq_flow\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'rustworkx', 'networkx', 'aiolimiter', 'pytest_benchmark', 'numpy'} "
        "or m.startswith('taskiq_flow.bench'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"taskiq-flow {metadata.version('taskiq-flow')}\n"


def test_the_typed_stub_ships_with_the_package() -> None:
    package = resources.files("taskiq_flow")
    assert package.joinpath("py.typed").is_file()
    stub = package.joinpath("_core.pyi").read_text()
    assert "class TopologicalSorter" in stub and "class CapacityLimiter" in stub
