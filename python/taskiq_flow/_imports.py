"""Importing what a command names as ``module:attribute``, the one way every command does.

``taskiq worker app:broker``, ``python -m`` and ``python script.py`` find a module in the current
directory; a console script such as ``taskiq-flow`` does not (its ``sys.path`` starts with its own
directory). Every ``taskiq-flow`` option that names an object (``report --dag``, ``runs resume
--pipeline``) imports through :func:`import_object`, so ``app:pipeline`` in the directory a user is
in is found by each of them alike.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from taskiq_flow.exceptions import InvalidValueError

__all__ = ["check_import_path", "import_object"]

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def check_import_path(path: str, option: str) -> str | None:
    """What is wrong with ``path`` as ``module:attribute``, naming ``option``; ``None`` if
    nothing (nothing is imported)."""
    if _IMPORT_PATH.fullmatch(path) is None:
        return f"{option} must look like module:attribute (e.g. app.flows:pipeline), got {path!r}"
    return None


def import_object(path: str, option: str) -> Any:
    """Imports ``module:attribute`` (the attribute may be dotted), looking in the current
    directory first, as ``taskiq worker`` and ``python -m`` do.

    :param path: ``module:attribute``, e.g. ``app.flows:pipeline``.
    :param option: the option the path was given with, named in errors (e.g. ``--dag``).
    :return: the object.
    :raises InvalidValueError: for a malformed path, a module that cannot be imported (with what
        its import raised, in one line) or a missing attribute.
    """
    problem = check_import_path(path, option)
    if problem is not None:
        raise InvalidValueError(problem)
    module_name, _, attribute = path.partition(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the user's module raises, reported in one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InvalidValueError(
            f"{option} {path}: cannot import {module_name!r}: {type(exc).__name__}: {first}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise InvalidValueError(f"{option} {path}: {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    return found
