"""The README's test command fails on a finding of any linter the project configures.

A copy of the tree gets one planted violation of each kind (rustfmt, clippy pedantic, ruff, mypy
strict); each lint step of the README's test command, run as written in that copy, must fail and
name the planted line. A grep of the command would not show that the steps really judge the code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Planted violations: (file, text appended, what the failing step says about it).
PLANTS = {
    "cargo fmt": ("rust/src/lib.rs", "\npub fn planted_fmt()->u32{1}\n", "planted_fmt"),
    "cargo clippy": (
        "rust/src/lib.rs",
        "\n/// Planted.\n#[must_use]\npub fn planted_clippy(values: &Vec<u32>) -> usize {\n"
        "    values.len()\n}\n",
        "ptr_arg",
    ),
    "ruff check": ("python/taskiq_flow/_planted.py", "import os\n", "F401"),
    "python -m mypy": (
        "python/taskiq_flow/_planted_types.py",
        'def planted() -> int:\n    return "not an int"\n',
        "_planted_types.py",
    ),
}


def lint_steps() -> list[str]:
    """The lint steps of the README's test command, in its order."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    steps = [step.strip() for step in command.split("&&")]
    return [s for s in steps if s.startswith(tuple(PLANTS)) or s.startswith("ruff format")]


def test_the_test_command_runs_every_configured_linter() -> None:
    steps = lint_steps()
    for kind in PLANTS:
        assert any(step.startswith(kind) for step in steps), kind
    assert any("-D warnings" in step for step in steps if step.startswith("cargo clippy"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tracked tree with every violation planted."""
    tree = tmp_path_factory.mktemp("planted")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = tree / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for path, text, _said in PLANTS.values():
        with (tree / path).open("a") as handle:
            handle.write(text)
    return tree


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", list(PLANTS))
def test_each_lint_step_fails_on_its_planted_violation(planted: Path, kind: str) -> None:
    step = next(s for s in lint_steps() if s.startswith(kind))
    env = dict(os.environ)
    # The checkout's target directory: dependencies already checked there are reused (the planted
    # crate lives at another path, so it is built apart from the checkout's).
    env["CARGO_TARGET_DIR"] = str(ROOT / "target")
    proc = subprocess.run(
        step, shell=True, cwd=planted, capture_output=True, text=True, timeout=880, env=env
    )
    said = PLANTS[kind][2]
    assert proc.returncode != 0, (step, proc.stdout[-2000:], proc.stderr[-2000:])
    assert said in proc.stdout + proc.stderr, (step, proc.stdout[-2000:], proc.stderr[-2000:])
