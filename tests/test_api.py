"""The public surface: exports, the exception tree, and panics that must not kill Python."""

from __future__ import annotations

import graphlib
import inspect
import subprocess
import sys

import pytest

import taskiq_flow
from taskiq_flow import _core, exceptions


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
    assert taskiq_flow.DagGraph(2, [0], [1]).topological_order() == [0, 1]


def test_panic_is_caught_by_except_exception_in_a_fresh_interpreter() -> None:
    code = (
        "from taskiq_flow import _core\n"
        "try:\n    _core._panic_for_test('x')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "InternalError"
