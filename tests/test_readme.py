"""Every Python snippet in README.md runs and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskiq_flow import UnschedulableError

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = SNIPPETS[index]
    namespace: dict[str, object] = {}
    if "UnschedulableError" in code:
        # The placement snippet ends on the error it documents.
        with pytest.raises(UnschedulableError, match="needs gpu=2 but the largest gpu"):
            exec(compile(code, f"README snippet {index}", "exec"), namespace)
        return
    exec(compile(code, f"README snippet {index}", "exec"), namespace)
    if "static_order" in code:
        assert capsys.readouterr().out.strip() == "['load', 'clean', 'enrich', 'report']"
