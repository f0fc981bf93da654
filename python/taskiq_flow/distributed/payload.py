"""Bounded JSON: what taskiq-flow writes to Redis or reads back, with a size and a depth limit.

Everything stored is JSON (a value planted in Redis is parsed, never executed). Writers refuse a
value over :data:`DEFAULT_MAX_BYTES` (1 MiB) or nested deeper than :data:`DEFAULT_MAX_DEPTH`
with :class:`~taskiq_flow.exceptions.PayloadTooLargeError` naming what it was; readers turn a
record they cannot read (not JSON, too large, too deep) into
:class:`~taskiq_flow.exceptions.CorruptRecordError` instead of crashing.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python
from taskiq.abc.serializer import TaskiqSerializer

from taskiq_flow.events import describe_error
from taskiq_flow.exceptions import CorruptRecordError, InvalidValueError, PayloadTooLargeError

orjson: Any
try:
    orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - optional: the standard library does it all, slower
    orjson = None

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "FastJSONSerializer",
    "check_limits",
    "decode",
    "dumps",
    "encode",
    "loads",
    "safe_repr",
    "too_deep",
]

#: The default size limit of one stored value or record: 1 MiB of JSON.
DEFAULT_MAX_BYTES = 1 << 20
#: The default nesting limit of one stored value or record.
DEFAULT_MAX_DEPTH = 100


#: A run of this many digits may be an int past 64 bits, which orjson would read as a float.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def dumps(value: Any, max_bytes: int | None = None) -> bytes:
    """``value`` (plain JSON data) as JSON text that reads back as ``json.dumps``'s does:
    through orjson when it is installed and gives the same meaning, else ``json.dumps``
    (non-finite floats, which orjson writes as ``null``; ints past 64 bits; lone surrogates;
    anything orjson refuses).

    :param max_bytes: a size limit the caller checks on the result: orjson's text is used only
        when even ``json.dumps``'s (at most 3 times as long: its separators take a space more,
        its escapes of non-ASCII at most 3 characters a byte) is within it, so that what is
        refused for its size stays exactly what ``json.dumps`` makes too large.
    :raises TypeError: for what ``json.dumps`` cannot write.
    :raises ValueError: likewise (an int over CPython's digit limit, a cycle).
    """
    if orjson is not None:
        try:
            out: bytes = orjson.dumps(value)
        except (TypeError, ValueError):
            pass
        else:
            # NaN and infinities come out as null (json writes NaN, Infinity).
            if b"null" not in out and (max_bytes is None or 3 * len(out) <= max_bytes):
                return out
    return json.dumps(value).encode()


def loads(raw: bytes | str) -> Any:
    """JSON text as ``json.loads`` reads it: through orjson when it is installed and reads it
    the same way, else ``json.loads`` (long digit runs, which orjson reads as floats past 64
    bits; ``NaN`` and ``Infinity``; lone surrogates; nesting orjson refuses).

    :raises ValueError: for what is not JSON (``json.JSONDecodeError``).
    :raises RecursionError: for nesting too deep for ``json.loads``.
    """
    if orjson is not None:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        if not _LONG_DIGITS.search(data):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
    return json.loads(raw)


class FastJSONSerializer(TaskiqSerializer):
    """taskiq's ``JSONSerializer``, faster: the same JSON meaning, written and read through
    :func:`dumps` and :func:`loads` (orjson where it reads back the same, else ``json``)."""

    def dumpb(self, value: Any) -> bytes:
        """A message as JSON bytes."""
        return dumps(value)

    def loadb(self, value: bytes) -> Any:
        """A message from JSON bytes."""
        return loads(value)


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
    """``value`` as JSON text that reads back equal, if within the limits.

    JSON values travel as they are (``None``, bools, ints, floats including NaN and infinities,
    strs, lists, dicts with str keys); tuples and other sequences arrive as lists, a one-shot
    iterator (a generator) as the list of its items. A value of another type that pydantic knows
    (a dataclass, a pydantic model, a datetime, a UUID, a Decimal, an enum, a set, bytes) travels
    in pydantic's JSON form, as taskiq sends it. Everything JSON would change silently or cannot
    carry is refused, naming where it is in the value: a dict key that is not a str (JSON would
    make ``{1: "a"}`` into ``{"1": "a"}``), an int CPython will not write as text (more than
    ``sys.get_int_max_str_digits()`` digits), a value that contains itself, an object of a type
    JSON does not know (no silent ``repr``), and anything whose encoding raises (an iterator, a
    custom serializer, a ``__repr__``).

    :param what: names the value in the error (``"the result of step 'load'"``).
    :raises PayloadTooLargeError: over ``max_bytes`` or ``max_depth``, or a value JSON cannot
        carry unchanged (the message says what and where).
    """
    try:
        jsonable = _Walker(max_depth, max_bytes).walk(value, 1)
        text = dumps(jsonable, max_bytes).decode()
    except _Refused as refused:
        raise PayloadTooLargeError(f"{what} {refused.describe()}") from None
    except _TooDeep:
        raise PayloadTooLargeError(
            f"{what} nests deeper than the limit of {max_depth} levels"
        ) from None
    except RecursionError:
        raise PayloadTooLargeError(f"{what} nests too deep to encode") from None
    except Exception as exc:  # whatever user code raised while being encoded
        raise PayloadTooLargeError(
            f"{what} cannot be encoded as JSON: {describe_error(exc)}"
        ) from None
    if len(text) > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {len(text):,} bytes as JSON; the limit is {max_bytes:,} bytes"
        )
    return text


def safe_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, or a placeholder if ``repr`` raises."""
    try:
        text = repr(value)
    except Exception as exc:  # a user object whose __repr__ raises
        return f"<a {type(value).__name__} whose repr() raised {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Refused(Exception):
    """A part of a value JSON cannot carry unchanged; ``path`` grows as the walk unwinds."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
        self.path: list[str] = []

    def describe(self) -> str:
        where = "".join(reversed(self.path))
        return f"cannot travel as JSON unchanged: {'at ' + where + ', ' if where else ''}{self.why}"


#: Ints below this many bits are far under CPython's 4,300-digit text limit: never checked.
_SAFE_INT_BITS = 10_000


class _Walker:
    """One walk over a value: checks it and, only where needed, builds its JSON-able copy
    (a container whose items all travel as they are is returned itself)."""

    __slots__ = ("_max_depth", "_max_items", "_open")

    def __init__(self, max_depth: int, max_bytes: int) -> None:
        self._max_depth = max_depth
        # Every JSON item takes at least two bytes with its separator: more cannot fit.
        self._max_items = max_bytes // 2 + 1
        self._open: set[int] = set()  # containers being walked (a value met again is a cycle)

    def walk(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str or kind is float or kind is bool or value is None:
            return value
        if kind is int:
            return self._int(value)
        if kind is list or kind is tuple:
            return self._sequence(value, depth)
        if kind is dict:
            return self._dict(value, depth)
        return self._other(value, depth)

    def _int(self, value: int) -> int:
        if value.bit_length() > _SAFE_INT_BITS:
            limit = sys.get_int_max_str_digits()
            if limit and _too_long(value):
                raise _Refused(
                    f"an int of more than {limit:,} digits (CPython writes at most "
                    f"sys.get_int_max_str_digits() = {limit:,} digits as text)"
                )
        return value

    def _enter(self, value: Any, depth: int) -> None:
        if depth > self._max_depth:
            raise _TooDeep
        if id(value) in self._open:
            raise _Refused(f"a {type(value).__name__} that contains itself")
        self._open.add(id(value))

    def _sequence(self, value: Any, depth: int) -> Any:
        self._enter(value, depth)
        copy: list[Any] | None = None
        try:
            for index, item in enumerate(value):
                try:
                    out = self.walk(item, depth + 1)
                except _Refused as refused:
                    refused.path.append(f"[{index}]")
                    raise
                if copy is not None:
                    copy.append(out)
                elif out is not item:
                    copy = list(value[:index])
                    copy.append(out)
        finally:
            self._open.discard(id(value))
        return value if copy is None else copy

    def _dict(self, value: Any, depth: int) -> Any:
        self._enter(value, depth)
        copy: dict[str, Any] | None = None
        try:
            for key, item in value.items():
                if type(key) is not str and not isinstance(key, str):
                    raise _Refused(
                        f"the dict key {safe_repr(key)} ({type(key).__name__}) is not a str: "
                        f"{_json_key(key)}"
                    )
                try:
                    out = self.walk(item, depth + 1)
                except _Refused as refused:
                    refused.path.append(f"[{safe_repr(key, 40)}]")
                    raise
                if copy is not None:
                    copy[key] = out
                elif out is not item:
                    copy = {k: v for k, v in value.items()}
                    copy[key] = out
        finally:
            self._open.discard(id(value))
        return value if copy is None else copy

    def _other(self, value: Any, depth: int) -> Any:
        if isinstance(value, (str, float)):
            return value  # a str or float subclass (a StrEnum): JSON writes its value
        if isinstance(value, int):
            return self._int(value)
        if isinstance(value, dict):
            return self._dict(value, depth)
        if isinstance(value, (list, tuple)):
            return self._sequence(value, depth)
        if isinstance(value, Iterator):
            return self._sequence(self._drain(value), depth)
        try:
            converted = to_jsonable_python(value)
        except PydanticSerializationError as exc:
            if "Unable to serialize unknown type" in str(exc):
                raise _Refused(
                    f"a {type(value).__module__}.{type(value).__qualname__} is not a JSON value "
                    "(return plain data: numbers, strs, lists, dicts with str keys)"
                ) from None
            raise _Refused(f"encoding a {type(value).__name__} failed: {exc}") from None
        except ValueError as exc:  # pydantic-core refuses cycles and ints it cannot write
            raise _Refused(f"a {type(value).__name__} that JSON cannot carry: {exc}") from None
        return self.walk(converted, depth)

    def _drain(self, iterator: Iterator[Any]) -> list[Any]:
        """A one-shot iterator's items (read once; refused past what could fit the limit)."""
        items: list[Any] = []
        limit = self._max_items
        try:
            for item in iterator:
                items.append(item)
                if len(items) > limit:
                    raise _Refused(
                        f"a {type(iterator).__name__} with more than {limit:,} items (over the "
                        "size limit however small they are)"
                    )
        except _Refused:
            raise
        except Exception as exc:  # whatever the iterator raised
            raise _Refused(
                f"reading the {type(iterator).__name__} raised {describe_error(exc)}"
            ) from None
        return items


class _TooDeep(Exception):
    """Deeper than the depth limit."""


def _too_long(value: int) -> bool:
    """Whether CPython refuses to write ``value`` as text (over its digit limit)."""
    try:
        str(value)
    except ValueError:
        return True
    return False


def _json_key(key: Any) -> str:
    """What JSON would make of a dict key that is not a str."""
    try:
        return f"JSON would deliver it as the str {json.dumps({key: 0})[1:-4]}"
    except (TypeError, ValueError):
        return "JSON keys are strs"


def decode(raw: bytes | str | None, what: str, max_bytes: int, max_depth: int) -> Any:
    """A stored JSON record, parsed within the limits.

    :raises CorruptRecordError: missing, not JSON, over ``max_bytes`` or ``max_depth``.
    """
    if raw is None:
        raise CorruptRecordError(f"{what} is missing")
    if len(raw) > max_bytes:
        raise CorruptRecordError(f"{what} is {len(raw):,} bytes; the limit is {max_bytes:,}")
    try:
        value = loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptRecordError(
            f"{what} is not readable JSON: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if too_deep(value, max_depth):
        raise CorruptRecordError(f"{what} nests deeper than the limit of {max_depth} levels")
    return value
