"""Former home of ``taskiq-flow runs``, which lives in :mod:`taskiq_flow.cli.runs` now.

Its names still import from here, each with a :class:`DeprecationWarning` that says where it went.
"""

from __future__ import annotations

from typing import Any

from taskiq_flow._moved import moved


def __getattr__(name: str) -> Any:
    return moved(__name__, name, "taskiq_flow.cli.runs")
