"""Bounded JSON: what taskiq-flow writes to Redis or reads back, with a size and a depth limit.

Everything stored is JSON (a value planted in Redis is parsed, never executed). Writers refuse a
value over :data:`DEFAULT_MAX_BYTES` (1 MiB) or nested deeper than :data:`DEFAULT_MAX_DEPTH`
with :class:`~taskiq_flow.exceptions.PayloadTooLargeError` naming what it was; readers turn a
record they cannot read (not JSON, too large, too deep) into
:class:`~taskiq_flow.exceptions.CorruptRecordError` instead of crashing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_jsonable_python

from taskiq_flow.exceptions import CorruptRecordError, InvalidValueError, PayloadTooLargeError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "check_limits",
    "decode",
    "encode",
    "too_deep",
]

#: The default size limit of one stored value or record: 1 MiB of JSON.
DEFAULT_MAX_BYTES = 1 << 20
#: The default nesting limit of one stored value or record.
DEFAULT_MAX_DEPTH = 100


def check_limits(max_bytes: int, max_depth: int) -> tuple[int, int]:
    """Validates a pair of limits.

    :raises InvalidValueError: for a limit that is not an int >= 1.
    """
    for name, value in (("max_bytes", max_bytes), ("max_depth", max_depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{name} must be an int >= 1, got {value!r}")
    return max_bytes, max_depth


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether a JSON-able value nests lists and dicts deeper than ``max_depth`` (iterative: a
    very deep value cannot exhaust the stack)."""
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def encode(value: Any, what: str, max_bytes: int, max_depth: int) -> str:
    """``value`` as JSON text, if within the limits (objects JSON cannot carry become their
    ``repr``).

    :param what: names the value in the error (``"the result of step 'load'"``).
    :raises PayloadTooLargeError: over ``max_bytes`` or ``max_depth``.
    """
    try:
        jsonable = to_jsonable_python(value, fallback=repr)
    except (ValueError, RecursionError) as exc:  # pydantic-core refuses cycles and deep values
        raise PayloadTooLargeError(f"{what} cannot be stored as JSON: {exc}") from None
    if too_deep(jsonable, max_depth):
        raise PayloadTooLargeError(f"{what} nests deeper than the limit of {max_depth} levels")
    text = json.dumps(jsonable)
    if len(text) > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {len(text):,} bytes as JSON; the limit is {max_bytes:,} bytes"
        )
    return text


def decode(raw: bytes | str | None, what: str, max_bytes: int, max_depth: int) -> Any:
    """A stored JSON record, parsed within the limits.

    :raises CorruptRecordError: missing, not JSON, over ``max_bytes`` or ``max_depth``.
    """
    if raw is None:
        raise CorruptRecordError(f"{what} is missing")
    if len(raw) > max_bytes:
        raise CorruptRecordError(f"{what} is {len(raw):,} bytes; the limit is {max_bytes:,}")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptRecordError(f"{what} is not readable JSON: {type(exc).__name__}") from None
    if too_deep(value, max_depth):
        raise CorruptRecordError(f"{what} nests deeper than the limit of {max_depth} levels")
    return value
