"""Argument checks before anything leaves: what a broker's serializer would alter or refuse is
refused here, naming the step, the item and the argument, before a single task is sent.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from taskiq import AsyncBroker, TaskiqMessage

from taskiq_flow.exceptions import UnserializableError

__all__ = ["check_calls", "check_serializable", "unknown_inputs"]

Call = tuple[Sequence[Any], Mapping[str, Any]]


def _message(task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskiqMessage:
    return TaskiqMessage(
        task_id="check",
        task_name=task_name,
        labels={},
        labels_types={},
        args=list(args),
        kwargs=dict(kwargs),
    )


#: Types JSON carries exactly, whatever their value (an int, up to ``_INT_TEXT_BITS``).
_PLAIN = frozenset({str, bool, type(None)})


#: Bits of the largest int CPython turns into JSON text (``sys.get_int_max_str_digits()``, 4300
#: digits by default): a larger one needs a trial serialization to be refused with a clear error.
_INT_TEXT_BITS = 14_000


class _Lossy(Exception):
    """A value a JSON serializer would change silently."""

    def __init__(self, value: Any, why: str | None = None) -> None:
        super().__init__()
        self.value = value
        self.why = why


def _one_shot(value: Any) -> _Lossy:
    return _Lossy(
        value,
        f"it is a one-shot iterator ({type(value).__name__}): reading it to check or send it "
        "would consume it, so the task would get what was left; pass list(...) or a tuple",
    )


def _native(value: Any) -> bool:
    """Whether JSON carries ``value`` exactly (ints, strs, bools, None, finite floats, and lists,
    tuples and str-keyed dicts of them): then it needs no trial serialization. ``False`` for a
    type JSON does not know (the serializer, and the task's annotations, decide).

    :raises _Lossy: for what JSON would change silently: a non-finite float (sent as null), a dict
        key that is not a str (sent as a str).
    """
    kind = type(value)
    if kind is int:
        bits: int = value.bit_length()
        return bits <= _INT_TEXT_BITS
    if kind is str or kind is bool or value is None:
        return True
    if kind is float:
        if math.isfinite(value):
            return True
        raise _Lossy(value)
    if kind is list or kind is tuple:
        native = True
        for item in value:
            native = _native(item) and native
        return native
    if kind is dict:
        native = True
        for key, item in value.items():
            if type(key) is not str:
                raise _Lossy({key: item})
            native = _native(item) and native
        return native
    if isinstance(value, Iterator):
        raise _one_shot(value)
    return False


def _json_like(broker: AsyncBroker) -> bool:
    return "json" in type(getattr(broker, "serializer", None)).__name__.lower()


def _dumps(broker: AsyncBroker, task_name: str, call: Call, where: str) -> None:
    try:
        broker.formatter.dumps(_message(task_name, *call))
    except Exception as exc:
        raise UnserializableError(
            f"arguments for {task_name!r}{where} cannot be serialized by the broker: {exc}"
        ) from exc


def _needs_trial(json_like: bool, task_name: str, call: Call, where: str) -> bool:
    """Checks what can be checked without serializing; ``True`` if a trial serialization must
    decide the rest.

    A one-shot iterator (a generator, ``iter(...)``, ``map(...)``) is refused whatever the
    serializer: checking it, or sending it, reads it.
    """
    args, kwargs = call
    if not json_like:
        for position, value in enumerate(args):
            if isinstance(value, Iterator):
                _refuse(task_name, where, position, args, kwargs, _one_shot(value))
        for keyword, value in kwargs.items():
            if isinstance(value, Iterator):
                _refuse(task_name, where, keyword, args, kwargs, _one_shot(value))
        return True
    trial = False
    name: object = None
    try:
        for position, value in enumerate(args):
            name = position  # named in the error
            trial = not _native(value) or trial
        for keyword, value in kwargs.items():
            name = keyword
            trial = not _native(value) or trial
    except _Lossy as lossy:
        _refuse(task_name, where, name, args, kwargs, lossy)
    return trial


def _refuse(
    task_name: str,
    where: str,
    name: object,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    lossy: _Lossy,
) -> None:
    """Raises the error for an argument that would arrive changed."""
    shown = f"argument {name}" if isinstance(name, int) else f"argument {name!r}"
    sent = args[name] if isinstance(name, int) else kwargs[str(name)]
    if lossy.why is not None:
        raise UnserializableError(f"{shown} for {task_name!r}{where} cannot be sent: {lossy.why}")
    raise UnserializableError(
        f"{shown} for {task_name!r}{where} would arrive changed: the broker's JSON "
        f"serializer cannot carry {_shown(lossy.value)} (in {_shown(sent)}) faithfully"
    )


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened; never raises (a hostile ``__repr__`` is not the error)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_serializable(
    broker: AsyncBroker,
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    step: str | None = None,
) -> None:
    """Checks that the broker can send a call faithfully, without sending it.

    :param step: the step the call belongs to, named in the error.
    :raises UnserializableError: naming the task and the argument, if the broker cannot send it
        or its JSON serializer would deliver it changed (``{1: "a"}`` as ``{"1": "a"}``, NaN as
        ``None``, a generator read by the check), or CPython cannot turn it into JSON text (an
        int of more than 4300 digits).
    """
    where = "" if step is None else f" (step {step!r})"
    if _needs_trial(_json_like(broker), task_name, (args, kwargs), where):
        _dumps(broker, task_name, (args, kwargs), where)


def check_calls(broker: AsyncBroker, task_name: str, calls: Sequence[Call], step: str) -> None:
    """Checks every call of a step before any is sent. Plain values (numbers, strings, lists and
    dicts of them) are checked by looking at them; the others are serialized once, all together
    (then once each, to name the first bad item, if that fails).

    :raises UnserializableError: naming the step, the task, the item index and the argument.
    """
    json_like = _json_like(broker)
    plain = _PLAIN
    trial = []
    for index, call in enumerate(calls):
        args, kwargs = call
        if json_like and not kwargs and len(args) == 1:
            kind = type(args[0])
            if kind in plain or (kind is int and args[0].bit_length() <= _INT_TEXT_BITS):
                continue  # the common map item: one int or str, nothing to check
        try:
            if _needs_trial(json_like, task_name, call, ""):
                trial.append(call)
        except UnserializableError:  # said again, naming the item
            _needs_trial(json_like, task_name, call, f" (step {step!r}, item {index})")
            raise
    if not trial:
        return
    together: Call = ([[list(args), dict(kwargs)] for args, kwargs in trial], {})
    try:
        _dumps(broker, task_name, together, "")
        return
    except UnserializableError:
        pass
    for index, call in enumerate(calls):
        _dumps(broker, task_name, call, f" (step {step!r}, item {index})")
    raise UnserializableError(f"arguments for {task_name!r} in step {step!r} cannot be sent")


def unknown_inputs(unknown: Iterable[str], known: Iterable[str], taker: str) -> str:
    """What a run says of inputs no ``taker`` takes, each with the closest known name:
    ``unknown inputs 'rwa' (did you mean 'raw'?): no task takes them``."""
    names = sorted(known)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown inputs {', '.join(hints)}: no {taker} takes them"
