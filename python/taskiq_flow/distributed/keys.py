"""Redis key parts: every id or prefix that becomes part of a key is checked here first."""

from __future__ import annotations

import re

from taskiq_flow.exceptions import InvalidValueError

__all__ = ["validate_key_part"]

_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def validate_key_part(what: str, value: str) -> str:
    """Checks an id or prefix that becomes part of a Redis key: letters, digits, ``_ . -`` only,
    so that no user value can be a glob pattern, contain the ``:`` separator or escape the prefix.

    :param what: what the value is, for the error message (``"run id"``, ``"prefix"``).
    :param value: the value to check.
    :return: ``value``, unchanged.
    :raises InvalidValueError: otherwise.
    """
    if not isinstance(value, str) or not _SAFE.fullmatch(value):
        raise InvalidValueError(
            f"{what} must be 1-128 letters, digits, '_', '.' or '-', got {value!r}"
        )
    return value
