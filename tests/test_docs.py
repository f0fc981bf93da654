"""Every ```python block of the documentation (docs/**/*.md) is a complete program: each runs as
a user runs it, saved to its own file and run by its own interpreter, and exits with status 0
(the programs assert what their pages say).

A block preceded by ``<!-- needs: redis -->`` gets the session's Redis through the
``TASKIQ_FLOW_REDIS_URL`` environment variable (the variable the pages document). A block that
only includes an example script (``--8<-- "examples/x.py"``) is that script, which
tests/test_examples.py runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"((?:<!--[^\n]*-->\n)*)```python\n(.*?)```", re.S)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)


@dataclass
class Block:
    page: str
    line: int
    code: str
    needs: frozenset[str]

    @property
    def included(self) -> list[str]:
        return INCLUDE.findall(self.code)


def blocks() -> list[Block]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for match in BLOCK.finditer(text):
            comments = re.findall(r"<!--\s*needs:\s*([\w, ]+?)\s*-->", match.group(1))
            needs = frozenset(n.strip() for c in comments for n in c.split(","))
            line = text.count("\n", 0, match.start(2)) + 1
            found.append(Block(str(page.relative_to(DOCS)), line, match.group(2), needs))
    return found


BLOCKS = blocks()
PROGRAMS = [b for b in BLOCKS if not b.included]
INCLUDES = [b for b in BLOCKS if b.included]


def test_the_pages_have_programs() -> None:
    assert len(PROGRAMS) >= 30
    pages = {b.page for b in BLOCKS}
    assert {"performance.md", "getting-started.md", "redis.md", "core.md"} <= pages


def test_included_examples_are_whole_scripts_that_the_example_tests_run() -> None:
    from test_examples import EXPECTED

    assert INCLUDES, "the performance guide shows its new examples by including them"
    for block in INCLUDES:
        assert block.code.strip() == f'--8<-- "{block.included[0]}"', block
        path = ROOT / block.included[0]
        assert path.parent.name == "examples" and path.name in EXPECTED, path


@pytest.mark.parametrize("block", PROGRAMS, ids=lambda b: f"{b.page}:{b.line}")
def test_block_runs_as_a_program(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    assert block.needs <= {"redis"}, f"unknown needs: {block.needs}"
    env = {k: v for k, v in os.environ.items() if k != "TASKIQ_FLOW_REDIS_URL"}
    if "redis" in block.needs:
        env["TASKIQ_FLOW_REDIS_URL"] = request.getfixturevalue("redis_url")
    assert "await" not in block.code or "asyncio.run(" in block.code, "top-level await"
    name = re.sub(r"\W", "_", f"{block.page[:-3]}_{block.line}") + ".py"
    (tmp_path / name).write_text(block.code)
    proc = subprocess.run(
        [sys.executable, name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


def test_the_strict_build_is_in_the_test_command_and_in_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    assert command.endswith("&& mkdocs build --strict")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    at = ci.index(command)  # the same line, exactly
    # Last, so that CI's status is the command's (see the next test); the wheel check before it.
    assert ci[at - 1 :] == [".ci/wheel-check", command]


def test_ci_fails_when_any_step_of_the_test_command_fails(tmp_path: Path) -> None:
    """``set -e`` ignores a failure inside an ``&&`` list: CI must still fail on a failed step."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    script = (ROOT / ".ci" / "run").read_text()
    script = script.replace('cd "$(dirname "$0")/.."', "cd .")
    steps = {"failing": "true && false && true", "passing": "true && true"}
    for name, steps_run in steps.items():
        run = tmp_path / name
        body = script.replace(command, steps_run).replace(".ci/wheel-check", "echo checked")
        run.write_text(body)
        proc = subprocess.run(["bash", str(run)], capture_output=True, text=True, timeout=60)
        assert "checked" in proc.stdout
        assert (proc.returncode != 0) == (name == "failing"), (name, proc.returncode)


def test_the_api_reference_reads_rest_docstrings_as_markdown() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        from griffe_rest import markdown
    finally:
        sys.path.remove(str(DOCS))
    text = (
        "Runs a :class:`~taskiq_flow.dataflow.DAG` (see ``execute``)::\n\n    run()\n\n::\n\n"
        "    more()\n:raises CycleError, MissingInputError: before\n    anything is sent."
    )
    assert markdown(text) == (
        "Runs a `DAG` (see `execute`):\n\n    run()\n\n\n\n    more()\n"
        ":raises CycleError: before\n    anything is sent.\n"
        ":raises MissingInputError: before\n    anything is sent."
    )


def test_the_performance_guide_says_which_tracking_ttl_is_the_default_and_which_the_example() -> (
    None
):
    """Next to an example that sets ``ttl_seconds``, the page says the default as the default and
    what the example's value means, both true of ``RedisPipelineStorage``."""
    import inspect

    from taskiq_flow.distributed import RedisPipelineStorage

    text = " ".join((DOCS / "performance.md").read_text().split())
    default = inspect.signature(RedisPipelineStorage).parameters["ttl_seconds"].default
    assert default % 86_400 == 0
    assert f"{default // 86_400} days ({default:,} s) unless you pass `ttl_seconds`" in text
    assert "`RedisPipelineStorage(redis, ttl_seconds=86400)` keeps records for one day" in text
