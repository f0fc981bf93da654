"""Old import paths that keep working: a name asked of a module it left is found where it lives
now, with a :class:`DeprecationWarning` that says where that is.

A module whose names moved keeps only this::

    def __getattr__(name: str) -> Any:
        return moved(__name__, name, "taskiq_flow.cli.runs")

Nothing is imported until a moved name is asked for.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["moved"]


def moved(old: str, name: str, new: str | Mapping[str, str]) -> Any:
    """``name`` of module ``old``, taken from where it lives now, with a warning naming that place.

    :param old: the module the name was asked of (its ``__name__``).
    :param name: the name asked for.
    :param new: the module every public name of ``old`` lives in now, or each moved name's module.
    :raises AttributeError: for a name that did not move (as a module without it would).
    """
    place = new if isinstance(new, str) else new.get(name)
    if place is not None and not name.startswith("_"):
        module = importlib.import_module(place)
        if hasattr(module, name):
            warnings.warn(
                f"{old}.{name} moved to {place}.{name}; import it from {place}",
                DeprecationWarning,
                stacklevel=3,
            )
            return getattr(module, name)
    raise AttributeError(f"module {old!r} has no attribute {name!r}")
