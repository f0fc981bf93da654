"""What a new user gets from the README's commands: ``pip install .`` (no extras) into a fresh
virtual environment, then ``taskiq-flow runs ...`` and ``taskiq-flow worker ...``; and the docs
command, ``pip install '.[docs]' && mkdocs serve``, in a fresh clone (no compiled module in the
source tree).

The environment is real, not patched: a new ``venv`` whose only taskiq_flow is the wheel that
``pip wheel .`` builds (maturin, from cargo's cache: seconds after the editable build), installed
by pip. Its other packages come from this interpreter's site-packages, linked one by one into a
directory the venv reads through a ``.pth`` line: every package except taskiq_flow itself (the
editable install, which points at a tree holding the compiled module) and the ``redis`` extra's
(``redis``, ``taskiq_redis``), which are therefore missing exactly as they are after a plain
``pip install .`` (an ``import redis`` finds nothing). A ``.pth`` line adds a directory without
reading the ``.pth`` files in it, so no editable install is seen through it. Installing the
dependencies from an index instead would take minutes and a network; the venv takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Not in a fresh clone, or not needed by the docs: left out of the copied tree.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "target",
    "site",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".benchmarks",
    "*.so",
    "*.pyd",
)
#: What a plain ``pip install .`` does not have: taskiq_flow from a source tree, the redis extra.
LEFT_OUT = {"taskiq_flow", "redis", "taskiq_redis"}


def _left_out(entry: str) -> bool:
    """Whether a site-packages entry (a package, a module, a ``.dist-info``) is left out."""
    stem = re.split(r"[-.]", entry, maxsplit=1)[0].lower()
    editable = stem.startswith("__editable__") and any(name in stem for name in LEFT_OUT)
    return entry.endswith(".pth") or stem in LEFT_OUT or editable


def _site_dirs() -> list[Path]:
    """This interpreter's site-packages directories, in import order."""
    return [
        Path(p)
        for p in sys.path
        if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()
    ]


def run(
    *argv: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install .`` done (no extras); returns its ``bin`` directory."""
    work = tmp_path_factory.mktemp("user")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", ROOT]
    if importlib.util.find_spec("maturin") is not None:
        build.insert(4, "--no-build-isolation")  # the installed maturin and cargo's cache
    built = run(*build, timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (work / "dist").glob("taskiq_flow-*.whl")

    venv = work / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    deps = work / "deps"
    deps.mkdir()
    for directory in _site_dirs():
        for entry in directory.iterdir():
            if not _left_out(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (site / "_deps.pth").write_text(f"{deps}\n")
    installed = run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]

    # What the venv sees: the wheel's taskiq_flow (with its compiled core), no redis extra, no
    # source tree of taskiq_flow anywhere on its path.
    probe = (
        "import importlib.util, json, sys, taskiq_flow, taskiq_flow._core as core\n"
        "print(json.dumps({'file': taskiq_flow.__file__, 'core': core.__file__, 'path': sys.path,"
        " 'missing': [m for m in ('redis', 'taskiq_redis') if importlib.util.find_spec(m) is None],"
        " 'mkdocs': importlib.util.find_spec('mkdocstrings_handlers') is not None}))\n"
    )
    seen = run(python, "-c", probe, cwd=work)
    assert seen.returncode == 0, seen.stderr
    facts = json.loads(seen.stdout)
    assert Path(facts["file"]).parent.parent == site and Path(facts["core"]).parent.parent == site
    assert facts["missing"] == ["redis", "taskiq_redis"] and facts["mkdocs"]
    assert not any(Path(p, "taskiq_flow").exists() for p in facts["path"] if p and Path(p) != site)
    return venv / "bin"


def test_the_docs_build_strictly_from_a_fresh_clone_with_a_plain_install(
    user_venv: Path, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=NOT_IN_A_CLONE, symlinks=True)
    assert not list((clone / "python").rglob("_core*.so")), "the copy holds no compiled module"
    built = run(
        user_venv / "python",
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        tmp_path / "site",
        cwd=clone,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "CapacityLimiter" in page and "RateLimiter" in page


URL = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "list", "--redis", URL],
        ["runs", "show", "RUN", "--redis", URL],
        ["runs", "delete", "RUN", "--redis", URL],
        ["runs", "resume", "RUN", "--redis", URL, "--pipeline", "app:pipeline"],
        ["runs", "report", "RUN", "--redis", URL],
        ["report", "RUN", "--redis", URL],
        ["explain", "RUN", "--redis", URL],
        ["worker", "app:broker", "--name", "w1"],
        ["worker", "--help"],
    ],
    ids=" ".join,
)
def test_a_command_that_needs_the_redis_extra_says_so_in_one_line(
    user_venv: Path, tmp_path: Path, argv: list[str]
) -> None:
    done = run(user_venv / "taskiq-flow", *argv, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"taskiq-flow {argv[0]} needs the redis extra"), line
    assert "pip install 'taskiq-flow[redis]'" in line and "pip install '.[redis]'" in line


def test_what_needs_no_extra_runs_without_it(user_venv: Path, tmp_path: Path) -> None:
    report = tmp_path / "demo.html"
    done = run(
        user_venv / "taskiq-flow",
        "demo",
        "--tracks",
        "1",
        "--speed",
        "0",
        "--report",
        report,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<- slowest" in done.stdout and report.is_file()
    helped = run(user_venv / "taskiq-flow", "runs", "list", "--help", cwd=tmp_path, timeout=60)
    assert helped.returncode == 0, helped.stderr
    usage = helped.stdout.split("\n\n")[0]
    assert " --redis URL " in usage and "[--redis URL]" not in usage  # help needs no extra
