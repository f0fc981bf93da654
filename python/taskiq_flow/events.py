"""Completion events: how a finished task reaches the run that dispatched it.

Every message the engine sends carries the label ``taskiq_flow`` = ``"<run id>:<node>:<attempt>"``.
:class:`FlowMiddleware`, installed on the broker, sees the task finish where it ran, measures its
duration there, and hands a :class:`Completion` to the run's inbox. Nothing polls the result
backend, and the result backend need not keep anything: the value travels in the event.

In one process the inbox is an in-memory queue (:class:`InProcessChannel`); a channel that crosses
processes (through Redis) implements the same two methods, so the engine does not change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from taskiq_flow import _logs, cancelling
from taskiq_flow.exceptions import PayloadTooLargeError, RemoteTaskError
from taskiq_flow.growth import Expand

__all__ = [
    "FLOW_LABEL",
    "Completion",
    "CompletionChannel",
    "FlowMiddleware",
    "InProcessChannel",
    "Inbox",
    "describe",
    "describe_error",
    "ensure_flow_middleware",
    "parse_flow_label",
]

logger = logging.getLogger(__name__)

#: The label that ties a message to its run, node and attempt.
FLOW_LABEL = "taskiq_flow"


@dataclass(slots=True)
class Completion:
    """A task finished: which run, node and attempt, and how it went."""

    run_id: str
    node: int
    attempt: int
    ok: bool
    value: Any
    error: BaseException | None
    duration_ms: float
    started_at: float


class Inbox:
    """Completions of one run, delivered in batches: the run drains everything that arrived."""

    __slots__ = ("_error", "_items", "_waiter", "_woken")

    def __init__(self) -> None:
        self._items: deque[Completion] = deque()
        #: What :meth:`wait` awaits while it waits (a bare future: less than an asyncio.Event).
        self._waiter: asyncio.Future[None] | None = None
        #: Whether :meth:`wake` (or a delivery) came since the last :meth:`wait` returned.
        self._woken = False
        self._error: BaseException | None = None

    def _wake_waiter(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, completion: Completion) -> None:
        """Delivers one completion (any coroutine or callback of the same loop)."""
        self._items.append(completion)
        self._wake_waiter()

    def wake(self) -> None:
        """Wakes the waiting run without a completion (a timer, a cancel)."""
        self._wake_waiter()

    def fail(self, error: BaseException) -> None:
        """The channel broke for good: the run waiting on this inbox gets ``error``."""
        self._error = error
        self._wake_waiter()

    async def wait(self) -> None:
        """Waits until something arrived or :meth:`wake` was called.

        :raises BaseException: what :meth:`fail` was given, once nothing more is queued.
        """
        if not self._items:
            if self._error is None and not self._woken:
                waiter = self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
            if self._error is not None and not self._items:
                raise self._error
        self._woken = False

    def drain(self) -> list[Completion]:
        """Everything delivered so far."""
        items = list(self._items)
        self._items.clear()
        return items


class CompletionChannel(Protocol):
    """Where completions travel from the task to its run."""

    def open(self, run_id: str) -> Inbox:
        """Registers a run and returns the inbox its completions will arrive in."""
        ...

    def opened(self, run_id: str) -> Coroutine[Any, Any, None] | None:
        """What the runner awaits (if not ``None``) after :meth:`open` and before it sends
        anything: the run's state is then where the channel checks it still exists."""
        ...

    def close(self, run_id: str) -> None:
        """Forgets a run; later completions for it are dropped."""
        ...

    def publish(self, completion: Completion) -> Coroutine[Any, Any, None] | None:
        """Delivers a completion to its run (called where the task ran); may return an
        awaitable, which the worker awaits."""
        ...


#: What ``FlowMiddleware`` sets as a result's error so that taskiq's receiver does not store it
#: (taskiq checks its type only; one instance, never raised, serves every task).
_NO_RESULT = NoResultError()


class InProcessChannel:
    """Completions within one process: a dict of inboxes."""

    __slots__ = ("_inboxes",)

    def __init__(self) -> None:
        self._inboxes: dict[str, Inbox] = {}

    def open(self, run_id: str) -> Inbox:
        inbox = self._inboxes[run_id] = Inbox()
        return inbox

    def opened(self, run_id: str) -> None:
        return None

    def close(self, run_id: str) -> None:
        self._inboxes.pop(run_id, None)

    def publish(self, completion: Completion) -> None:
        inbox = self._inboxes.get(completion.run_id)
        if inbox is not None:
            inbox.push(completion)


class FlowMiddleware(TaskiqMiddleware):
    """Reports every finished pipeline task to its run, with the duration measured where it ran.

    Added to a broker automatically when a pipeline first uses it; add it yourself to the broker of
    ``taskiq worker`` processes.

    :param channel: where completions go (the process-wide in-memory channel by default).
    :param keep_results: also store pipeline tasks' results in the broker's result backend
        (off by default: a pipeline task's value travels in its completion, and nothing reads
        it from the result backend).
    """

    def __init__(
        self, channel: CompletionChannel | None = None, keep_results: bool = False
    ) -> None:
        super().__init__()
        _logs.install()
        self.channel: CompletionChannel = channel if channel is not None else default_channel()
        self.keep_results = keep_results
        #: Per task id running here: when it started (perf counter, wall clock), its parsed label.
        self._started: dict[str, tuple[float, float, tuple[str, int, int] | None]] = {}

    async def startup(self) -> None:
        """Starts listening for cancel signals, if the channel carries them (called by
        ``broker.startup()``: a worker process cuts the running attempts of a cancelled run)."""
        listen = getattr(self.channel, "listen_cancels", None)
        if listen is not None:
            listen()

    async def shutdown(self) -> None:
        """Closes the channel's own connections, if it has any (called by ``broker.shutdown()``)."""
        close = getattr(self.channel, "aclose", None)
        if close is not None:
            await close()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Notes when a pipeline task starts, and which run it belongs to (a cancel of the run cuts
        it where it awaits)."""
        raw = message.labels.get(FLOW_LABEL)
        if raw is not None:
            label = parse_flow_label(raw)  # parsed once: post_execute takes it from here
            self._started[message.task_id] = (time.perf_counter(), time.time(), label)
            if label is not None:
                cancelling.attempt_started(label[0])
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        """The attempt is over (a cancel must not cut what reports it)."""
        started = self._started.get(message.task_id)
        label = started[2] if started else parse_flow_label(message.labels.get(FLOW_LABEL))
        if label is not None:
            cancelling.attempt_ended(label[0])

    def post_execute(
        self, message: TaskiqMessage, result: TaskiqResult[Any]
    ) -> Coroutine[Any, Any, None] | None:
        """Publishes the completion of a pipeline task (taskiq awaits what a networked channel
        returns). A malformed ``taskiq_flow`` label is logged and skipped, never raised: the
        worker goes on. A result the channel refuses (over its size or depth limit, or a value
        JSON cannot carry unchanged) fails the attempt with the reason; a failure to publish
        fails it too: every attempt ends in a completion. With a broker that can (the reliable
        Redis stream broker), the completion is written in the same transaction as the
        message's acknowledgement."""
        started = self._started.pop(message.task_id, None)
        label = started[2] if started else None
        raw = None
        if label is None:
            raw = message.labels.get(FLOW_LABEL)
            if raw is None:
                return None
            label = parse_flow_label(raw)
        if label is None:
            logger.warning(
                "task %s (%s) has a malformed %s label %r: no completion sent",
                message.task_id,
                message.task_name,
                FLOW_LABEL,
                raw,
            )
            return None
        run_id, node, attempt = label
        cancelling.attempt_ended(run_id)
        now = time.perf_counter()
        duration_ms = (now - started[0]) * 1000.0 if started else result.execution_time * 1000.0
        value = result.return_value
        if isinstance(value, Expand):  # an expansion travels as JSON, in process too
            value = value.to_wire()
        completion = Completion(
            run_id=run_id,
            node=node,
            attempt=attempt,
            ok=not result.is_err,
            value=value,
            error=_readable(result.error),
            duration_ms=duration_ms,
            started_at=started[1] if started else time.time() - duration_ms / 1000.0,
        )
        try:
            return self._send(message, result, completion)
        except Exception as exc:  # never leave an attempt without a completion
            logger.exception(
                "the completion of task %s (%s) could not be published",
                message.task_id,
                message.task_name,
            )
            completion.ok, completion.value = False, None
            completion.error = RemoteTaskError(
                type(exc).__name__,
                f"publishing the result of task {message.task_name!r} failed: "
                + describe_error(exc),
            )
            result.is_err, result.return_value, result.error = True, None, completion.error
        try:
            return self._send(message, result, completion)
        except Exception:  # logged: the channel itself is broken
            logger.exception("the failure of task %s could not be published", message.task_id)
            return None

    def _send(
        self, message: TaskiqMessage, result: TaskiqResult[Any], completion: Completion
    ) -> Coroutine[Any, Any, None] | None:
        prepare = getattr(self.channel, "prepare", None)
        if prepare is None:
            return self.channel.publish(completion)
        payload, refused = prepare(completion, message.task_name)
        if not self.keep_results:
            # The value travels in the completion: nothing reads it from the result backend, so
            # it is not stored there (one write and one key fewer per task).
            result.error = _NO_RESULT
        if refused:
            result.is_err = True
            result.return_value = None
            result.error = PayloadTooLargeError(
                f"the result of task {message.task_name!r} cannot be carried by the channel "
                "(over its limits, or not JSON that reads back unchanged)"
            )
        carry = getattr(self.broker, "carry_completion", None)
        if carry is not None and carry(message.task_id, self.channel, completion.run_id, payload):
            return None  # written with the message's acknowledgement, in one transaction
        write: Any = getattr(self.channel, "write")  # noqa: B009 - what networked channels have
        written: Coroutine[Any, Any, None] = write(completion.run_id, payload)
        return written


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of an exception, even one whose ``__str__`` raises."""
    try:
        message = str(error)
    except Exception as exc:  # a user exception whose __str__ raises
        message = f"<its str() raised {type(exc).__name__}>"
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def describe(error: BaseException | str | None) -> str | None:
    """``"Type: message"`` of an error (a string stands for itself; ``None`` for none)."""
    if error is None or isinstance(error, str):
        return error
    return describe_error(error)


def _readable(error: BaseException | None) -> BaseException | None:
    """The error a task raised, or, if it cannot even be shown (its ``__str__`` raises), a
    :class:`~taskiq_flow.exceptions.RemoteTaskError` with its type name that can."""
    if error is None:
        return None
    try:
        str(error)
    except Exception as exc:  # a user exception whose __str__ raises
        readable = RemoteTaskError(type(error).__name__, f"<its str() raised {type(exc).__name__}>")
        readable.__cause__ = error
        return readable
    return error


def parse_flow_label(raw: object) -> tuple[str, int, int] | None:
    """``"<run id>:<node>:<attempt>"`` as its three parts, or ``None`` if malformed."""
    if not isinstance(raw, str):
        return None
    parts = raw.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


_DEFAULT_CHANNEL = InProcessChannel()


def default_channel() -> InProcessChannel:
    """The process-wide in-memory completion channel."""
    return _DEFAULT_CHANNEL


def ensure_flow_middleware(broker: Any) -> FlowMiddleware:
    """Returns the broker's :class:`FlowMiddleware`, adding one if it has none."""
    for middleware in broker.middlewares:
        if isinstance(middleware, FlowMiddleware):
            return middleware
    middleware = FlowMiddleware()
    broker.add_middlewares(middleware)
    return middleware
