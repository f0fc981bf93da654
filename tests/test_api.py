"""The public surface: exports, the exception tree, and panics that must not kill Python."""

from __future__ import annotations

import ast
import graphlib
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lanes import lane  # noqa: F401 - the fixture: each test on both lanes

import taskiq_flow
from taskiq_flow import _core, exceptions

pytestmark = pytest.mark.usefixtures("lane")


def fresh(code: str) -> str:
    """What ``code`` prints, run by a fresh interpreter (which must exit with status 0)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout


def test_all_lists_every_public_name_and_nothing_else() -> None:
    public = {name for name in vars(taskiq_flow) if not name.startswith("_")}
    modules = {name for name, value in vars(taskiq_flow).items() if inspect.ismodule(value)}
    assert set(taskiq_flow.__all__) == public - modules
    for name in taskiq_flow.__all__:
        assert getattr(taskiq_flow, name).__doc__, f"{name} has no docstring"


def test_exception_tree() -> None:
    root = taskiq_flow.TaskiqFlowError
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, root)
        assert cls.__module__ == "taskiq_flow.exceptions"
    for cls in (
        exceptions.CycleError,
        exceptions.StateError,
        exceptions.UnknownIdError,
        exceptions.InvalidValueError,
        exceptions.UnschedulableError,
    ):
        assert issubclass(cls, ValueError)
    assert issubclass(exceptions.CycleError, graphlib.CycleError)
    assert not issubclass(exceptions.InternalError, ValueError)


def test_rust_panic_becomes_internal_error() -> None:
    with pytest.raises(
        taskiq_flow.InternalError, match="internal error in the scheduling core: boom"
    ):
        _core._panic_for_test("boom")
    # The interpreter lives on and the core still works.
    assert taskiq_flow.core.DagGraph(2, [0], [1]).topological_order() == [0, 1]


def test_panic_is_caught_by_except_exception_in_a_fresh_interpreter() -> None:
    code = (
        "from taskiq_flow import _core\n"
        "try:\n    _core._panic_for_test('x')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )
    assert fresh(code).strip() == "InternalError"


#: Every name that moved: (the old module, the name) -> the module it lives in now.
MOVED = {
    **{("taskiq_flow", n): "taskiq_flow.core" for n in ("DagGraph", "DagScheduler", "DagSorter")},
    ("taskiq_flow", "Placer"): "taskiq_flow.core",
    ("taskiq_flow.runs_cli", "add_runs_commands"): "taskiq_flow.cli.runs",
    ("taskiq_flow.runs_cli", "main_runs"): "taskiq_flow.cli.runs",
    ("taskiq_flow.runs_cli", "explain_line"): "taskiq_flow.cli.runs",
    ("taskiq_flow.runs_cli", "runs_table"): "taskiq_flow.cli.runs",
    ("taskiq_flow.runs", "resume"): "taskiq_flow.cli.resume",
    ("taskiq_flow.runs", "parse_inputs"): "taskiq_flow.cli.resume",
    ("taskiq_flow.demo", "run_demo"): "taskiq_flow.cli.demo",
    ("taskiq_flow.demo", "main"): "taskiq_flow.cli.demo",
    ("taskiq_flow.worker", "STOP_GRACE"): "taskiq_flow.cli.worker",
    ("taskiq_flow.worker", "check_broker"): "taskiq_flow.cli.worker",
}
#: Modules kept only for their former users.
SHIMS = ("taskiq_flow.engine", "taskiq_flow.runs_cli", "taskiq_flow.runs", "taskiq_flow.demo",
         "taskiq_flow.worker")  # fmt: skip


@pytest.mark.parametrize(("old", "name"), sorted(MOVED), ids=lambda v: str(v))
def test_a_moved_name_still_imports_and_says_where_it_went(old: str, name: str) -> None:
    new = MOVED[old, name]
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}") as seen:
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)
    assert seen[0].filename == __file__  # the warning points at the line that asked


def test_a_name_that_never_was_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'DagGraf'"):
        taskiq_flow.DagGraf  # noqa: B018
    from taskiq_flow import runs_cli

    with pytest.raises(AttributeError, match="has no attribute '_ms'"):
        runs_cli._ms  # noqa: B018


def test_the_engine_module_warns_on_import_naming_where_its_names_went() -> None:
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    from taskiq_flow.engine import FlowRun, Runner, run_single\n"
        "from taskiq_flow.run.runner import Runner as R, run_single as r\n"
        "assert FlowRun is Runner is R and run_single is r\n"
        "[w] = seen\n"
        "print(w.category.__name__, w.lineno, w.message)\n"
    )
    out = fresh(code)
    assert out.startswith("DeprecationWarning 4 taskiq_flow.engine is deprecated: ")
    assert "Runner (formerly FlowRun) and run_single from taskiq_flow.run.runner" in out


def test_the_global_cap_is_importable_from_the_package() -> None:
    from taskiq_flow.optimization import parallel

    assert taskiq_flow.set_max_parallel_tasks is parallel.set_max_parallel_tasks
    assert taskiq_flow.get_max_parallel_tasks is parallel.get_max_parallel_tasks
    assert {"set_max_parallel_tasks", "get_max_parallel_tasks"} <= set(taskiq_flow.__all__)


def test_the_core_namespace_holds_the_integer_id_classes_and_the_top_only_protocols() -> None:
    from taskiq_flow import core

    assert set(core.__all__) == {"DagGraph", "DagScheduler", "DagSorter", "Placer"}
    for name in core.__all__:
        assert getattr(core, name) is getattr(_core, name)
        assert name not in taskiq_flow.__all__ and name not in vars(taskiq_flow)
    for name in ("TopologicalSorter", "CapacityLimiter", "RateLimiter"):
        assert name in taskiq_flow.__all__


def test_no_module_of_the_package_imports_a_shim() -> None:
    """Every module imported with warnings as errors, in a fresh interpreter: none of them
    imports ``engine`` or a former CLI module (their users get a warning; the package, none)."""
    code = (
        "import importlib, pkgutil, sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import taskiq_flow\n"
        f"shims = {SHIMS!r}\n"
        "for m in pkgutil.walk_packages(taskiq_flow.__path__, 'taskiq_flow.'):\n"
        "    if m.name not in shims and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(len(sys.modules), sorted(set(shims) & set(sys.modules)))\n"
    )
    out = fresh(code)
    assert out.split(" ", 1)[1].strip() == "[]", out


def _python_in(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".py":
        return [text]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_examples_tests_and_benches_use_the_new_places() -> None:
    root = Path(__file__).resolve().parent.parent
    paths = [root / "README.md", *root.glob("docs/**/*.md")]
    for folder in ("examples", "benches", "tests"):
        paths += [p for p in (root / folder).rglob("*.py") if p.name != Path(__file__).name]
    used = []
    for path in paths:
        for code in _python_in(path):
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and node.module is not None:
                    names = [(node.module, a.name) for a in node.names]
                    used += [(path.name, *n) for n in names if n in MOVED or n[0] in SHIMS]
                elif isinstance(node, ast.Import):
                    used += [(path.name, a.name) for a in node.names if a.name in SHIMS]
    assert used == []


def test_the_reliable_broker_is_one_plain_module_level_class() -> None:
    from taskiq_flow.distributed import broker, reliable_stream_broker

    made = [reliable_stream_broker("redis://127.0.0.1:1") for _ in range(2)]
    assert type(made[0]) is type(made[1]) is broker.ReliableRedisStreamBroker
    assert broker.ReliableRedisStreamBroker.__qualname__ == "ReliableRedisStreamBroker"
    assert "ReliableRedisStreamBroker" in broker.__all__
