"""Every Python snippet in README.md runs, in order, and prints what its comments say."""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from taskiq_flow import UnschedulableError

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run(code: str, namespace: dict[str, Any]) -> None:
    compiled = compile(code, "README", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def test_snippets_run_in_order(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # files the snippets write (a run report) land here
    assert len(SNIPPETS) >= 7
    # Run as a module of its own: taskiq's @broker.task looks the function's module up.
    module = types.ModuleType("readme_snippets")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for code in SNIPPETS:
        if "UnschedulableError" in code:
            # The placement snippet ends on the error it documents.
            with pytest.raises(UnschedulableError, match="needs gpu=2 but the largest gpu"):
                run(code, namespace)
            continue
        run(code.replace("redis://127.0.0.1:6379", redis_url), namespace)
    out = capsys.readouterr().out
    expected = [
        "{'clean': [1, 2, 3], 'total': 6, 'largest': 3}",
        "[0, 1, 4, 9, 16]",
        "True",
        "328350",
        "['load', 'clean', 'enrich', 'report']",
    ]
    for line in expected:
        assert line in out.splitlines(), line
    assert "waiting: step cap 'map(resize)' is full (16/16 in flight); next free slot" in out
    assert "<h1>" in (tmp_path / "run.html").read_text()
    assert re.search(r"^total: \d+\.\d\dms$", out, flags=re.M)
