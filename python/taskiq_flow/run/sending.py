"""Sending what the core admitted, and nothing else.

A node handed out by the core already holds its slots and its worker: sending never waits for a
limiter or a placement. On a broker whose send does no I/O (the in-memory one) the run loop sends
inline; otherwise a few dispatch coroutines drain a queue so that network round trips overlap.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from taskiq import AsyncBroker, TaskiqMessage

from taskiq_flow.exceptions import UnserializableError

__all__ = ["DISPATCHERS", "Sender", "check_calls", "check_serializable"]

Call = tuple[Sequence[Any], Mapping[str, Any]]

#: Dispatch coroutines per run on a networked broker: enough to overlap its round trips.
DISPATCHERS = 8


class Sender:
    """Sends nodes with ``send_one`` in the order they are submitted.

    :param send_one: sends one node (never raises: a failed send is reported as a failed attempt).
    :param inline: send from :meth:`flush`, in the caller's coroutine, instead of dispatchers.
    :param width: most dispatch coroutines.
    """

    __slots__ = ("_busy", "_closing", "_queue", "_send_one", "_tasks", "_wake", "inline", "width")

    def __init__(
        self, send_one: Callable[[int], Awaitable[None]], inline: bool, width: int = DISPATCHERS
    ) -> None:
        self._send_one = send_one
        self.inline = inline
        self.width = max(1, width)
        self._queue: deque[int] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: list[bool] = []
        self._closing = False

    def start(self) -> None:
        """Starts the dispatch coroutines (none when sending inline)."""
        if self.inline:
            return
        loop = asyncio.get_running_loop()
        self._busy = [False] * self.width
        self._tasks = [loop.create_task(self._dispatch(i)) for i in range(self.width)]

    def submit(self, nodes: Iterable[int]) -> None:
        """Queues nodes to send (sent by :meth:`flush` when inline)."""
        self._queue.extend(nodes)
        if not self.inline and self._queue:
            self._wake.set()

    async def flush(self) -> None:
        """Inline: sends everything queued."""
        queue = self._queue
        send_one = self._send_one
        while queue and not self._closing:
            await send_one(queue.popleft())

    async def _dispatch(self, index: int) -> None:
        queue = self._queue
        send_one = self._send_one
        busy = self._busy
        while not self._closing:
            while queue and not self._closing:
                node = queue.popleft()
                # Not cancelled while sending (see stop): once admitted, a node goes out, so that
                # its completion comes back and gives its slots up.
                busy[index] = True
                try:
                    await send_one(node)
                finally:
                    busy[index] = False
            self._wake.clear()
            await self._wake.wait()

    def stop(self) -> list[int]:
        """Stops sending: idle dispatchers are cancelled, one mid-send finishes that send.
        Returns the nodes queued and never sent."""
        self._closing = True
        self._wake.set()
        for index, task in enumerate(self._tasks):
            if not self._busy[index]:
                task.cancel()
        unsent = list(self._queue)
        self._queue.clear()
        return unsent


def _message(task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskiqMessage:
    return TaskiqMessage(
        task_id="check",
        task_name=task_name,
        labels={},
        labels_types={},
        args=list(args),
        kwargs=dict(kwargs),
    )


#: Types JSON carries exactly, whatever their value.
_PLAIN = frozenset({int, str, bool, type(None)})


class _Lossy(Exception):
    """A value a JSON serializer would change silently."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def _native(value: Any) -> bool:
    """Whether JSON carries ``value`` exactly (ints, strs, bools, None, finite floats, and lists,
    tuples and str-keyed dicts of them): then it needs no trial serialization. ``False`` for a
    type JSON does not know (the serializer, and the task's annotations, decide).

    :raises _Lossy: for what JSON would change silently: a non-finite float (sent as null), a dict
        key that is not a str (sent as a str).
    """
    kind = type(value)
    if kind is int or kind is str or kind is bool or value is None:
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
    decide the rest."""
    if not json_like:
        return True
    args, kwargs = call
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
        shown = f"argument {name}" if isinstance(name, int) else f"argument {name!r}"
        sent = args[name] if isinstance(name, int) else kwargs[str(name)]
        raise UnserializableError(
            f"{shown} for {task_name!r}{where} would arrive changed: the broker's JSON "
            f"serializer cannot carry {lossy.value!r} (in {sent!r}) faithfully"
        ) from None
    return trial


def check_serializable(
    broker: AsyncBroker, task_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Checks that the broker can send a call faithfully, without sending it.

    :raises UnserializableError: naming the task and the argument, if the broker cannot send it
        or its JSON serializer would deliver it changed (``{1: "a"}`` as ``{"1": "a"}``, NaN as
        ``None``).
    """
    if _needs_trial(_json_like(broker), task_name, (args, kwargs), ""):
        _dumps(broker, task_name, (args, kwargs), "")


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
        if json_like and not kwargs and len(args) == 1 and type(args[0]) in plain:
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
