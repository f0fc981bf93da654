"""The in-process lane: a pipeline task on taskiq's ``InMemoryBroker`` run without the message
round trip.

On ``InMemoryBroker`` a ``kiq()`` builds a :class:`~taskiq.TaskiqMessage`, serializes it to JSON
bytes, wraps them in a ``BrokerMessage``; the broker starts an asyncio task in which taskiq's
``Receiver`` parses the bytes back into a message, runs the broker's middlewares and the function,
and stores the result in the result backend — which nothing reads for a pipeline task (its value
travels to the run in its completion, :class:`~taskiq_flow.events.FlowMiddleware`).

:class:`LocalLane` does what a user can observe of that, and nothing else:

- the message is a real :class:`~taskiq.TaskiqMessage` with the task id from the broker's id
  generator and the labels as taskiq's receiver sees them (taken through taskiq's own
  ``prepare_label`` / ``parse_label``: a label taskiq would send as text arrives as text);
- the arguments arrive as the JSON round trip would give them: plain JSON values are copied as
  they are (tuples as lists; a task mutating its argument never changes the producer's value);
  anything else (NaN, a non-str key, a big int, a pydantic model, an object JSON does not know)
  goes through the broker's own formatter, exactly as a ``kiq()`` would, and a value it refuses
  fails the attempt with taskiq's ``SendTaskError``;
- ``pre_send`` / ``post_send`` middlewares, when the broker has any, get the message as ``kiq()``
  gives it them, and the message then takes the formatter's full round trip;
- the broker's middlewares' ``pre_execute``, ``post_execute`` and ``on_error`` run in the order
  and with the arguments taskiq's ``Receiver`` gives them, in one asyncio task per attempt (so a
  cancel cuts it where it awaits, :mod:`taskiq_flow.cancelling`);
- arguments are parsed by annotation with taskiq's own ``parse_params`` and the receiver's
  cached signatures (``cast_types=False`` on the broker turns it off, as it does in taskiq);
  ``TaskiqDepends`` dependencies are resolved as taskiq resolves them; a synchronous function runs
  in the broker's thread pool in a copy of the context; a ``timeout`` label is enforced as taskiq
  enforces it;
- the result is stored in the broker's result backend only when something reads it: a middleware
  with ``post_save``, or a :class:`~taskiq_flow.events.FlowMiddleware` with ``keep_results``.

Set the environment variable ``TASKIQ_FLOW_FAST_PATH=0`` to send every pipeline task through
``kiq()`` instead (read when a run starts).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from taskiq import AsyncBroker, InMemoryBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.abc.broker import default_id_generator
from taskiq.context import Context
from taskiq.exceptions import NoResultError, SendTaskError, UnknownTaskError
from taskiq.formatters.json_formatter import JSONFormatter
from taskiq.formatters.proxy_formatter import ProxyFormatter
from taskiq.kicker import AsyncKicker
from taskiq.labels import LabelType, parse_label, prepare_label
from taskiq.receiver import Receiver
from taskiq.receiver.params_parser import parse_params
from taskiq.serializers.json_serializer import JSONSerializer
from taskiq.state import TaskiqState
from taskiq_dependencies import DependencyGraph

from taskiq_flow.events import FlowMiddleware

__all__ = ["ENV_VAR", "LocalLane", "lane_for"]

#: ``TASKIQ_FLOW_FAST_PATH=0`` (or ``false``, ``no``, ``off``) sends every task through ``kiq()``.
ENV_VAR = "TASKIQ_FLOW_FAST_PATH"

#: Where taskiq's receiver logs a task's exception: the lane logs it there too.
_receiver_log = logging.getLogger("taskiq.receiver.receiver")

_BACKGROUND: set[asyncio.Task[None]] = set()

#: Types whose values JSON gives back unchanged (checked by exact type: a subclass, an enum, is
#: not one).
_SCALARS = (str, int, float, bool, type(None))
#: What a task commonly returns, which cannot be awaited (spares an ``isawaitable`` check).
_NEVER_AWAITABLE = frozenset({str, int, float, bool, type(None), list, dict, tuple})
#: Below this an int reads back from JSON as itself with no question of size.
_INT_LIMIT = 1 << 63


class _NotPlain(Exception):
    """A value the JSON round trip might change: the formatter decides."""


_NOT_PLAIN = _NotPlain()


def _plain(value: Any) -> Any:
    """``value`` as the JSON round trip gives it back (a fresh copy of every container), for
    values made of plain JSON types only.

    :raises _NotPlain: for anything else.
    """
    kind = type(value)
    if kind is str:
        if value.isascii():
            return value
        try:
            value.encode()  # a lone surrogate: the formatter decides
        except UnicodeEncodeError:
            raise _NOT_PLAIN from None
        return value
    if kind is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return value
        raise _NOT_PLAIN
    if kind is float:
        if value - value == 0.0:  # finite (NaN and infinities give NaN)
            return value
        raise _NOT_PLAIN
    if kind is bool or value is None:
        return value
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    if kind is dict:
        copied = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _NOT_PLAIN
            copied[_plain(k)] = _plain(v)
        return copied
    raise _NOT_PLAIN


def _wire_labels(labels: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """``labels`` as taskiq's receiver sees them, and their types (what ``kiq()`` sends: taskiq's
    own ``prepare_label`` then ``parse_label``; a str, int, float or bool arrives as itself)."""
    received: dict[str, Any] = {}
    types: dict[str, int] = {}
    for name, value in labels.items():
        kind = _LABEL_TYPES.get(type(value))
        if kind is not None:
            received[name] = value
            types[name] = kind
        elif name != "types_of_exceptions":  # never sent by taskiq's kicker
            text, types[name] = prepare_label(value)
            received[name] = parse_label(text, types[name])
    return received, types


#: Label types that taskiq's round trip gives back as themselves (by exact type).
_LABEL_TYPES: dict[type, int] = {
    str: LabelType.STR.value,
    int: LabelType.INT.value,
    float: LabelType.FLOAT.value,
    bool: LabelType.BOOL.value,
}


def _fast_task_id() -> str:
    """What taskiq's default id generator gives (a random uuid4 as 32 hex digits), made without
    building a :class:`uuid.UUID`."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


def _overrides(middleware: TaskiqMiddleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(TaskiqMiddleware, hook)


def enabled() -> bool:
    """Whether the fast lane is on (``TASKIQ_FLOW_FAST_PATH`` is not a false word)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


class LocalLane:
    """Runs pipeline tasks of one ``InMemoryBroker`` in this process (see the module).

    :param broker: the broker (exactly ``InMemoryBroker``, with taskiq's receiver:
        :func:`lane_for` checks).
    """

    __slots__ = ("_hooks", "_middlewares", "_seen", "_tasks", "broker", "receiver")

    #: Formatters (and, for taskiq's default proxy formatter, serializers) that give a plain JSON
    #: value back as itself: with another, every message takes the formatter's round trip.
    PLAIN_FORMATTERS = (JSONFormatter,)
    PLAIN_SERIALIZERS = (JSONSerializer,)

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.receiver: Receiver = broker.receiver
        self._middlewares: list[TaskiqMiddleware] | None = None
        self._seen = -1
        self._hooks = _Hooks([], [], [], [], [], [], False)
        #: Per task name: how taskiq's receiver runs it (see :meth:`_task_plan`).
        self._tasks: dict[str, _TaskPlan] = {}

    def _plain_formatter(self) -> bool:
        """Whether the broker's formatter gives plain JSON values back unchanged."""
        formatter = type(self.broker.formatter)
        if formatter is ProxyFormatter:
            return type(self.broker.serializer) in self.PLAIN_SERIALIZERS
        return formatter in self.PLAIN_FORMATTERS

    def _hooks_now(self) -> _Hooks:
        """The broker's middlewares' hooks that are overridden, in the order taskiq calls them
        (recomputed when middlewares are added)."""
        middlewares = self.broker.middlewares
        if middlewares is self._middlewares and len(middlewares) == self._seen:
            return self._hooks
        forward = list(middlewares)
        backward = forward[::-1]
        keep = any(isinstance(m, FlowMiddleware) and m.keep_results for m in forward)
        post_save = [m.post_save for m in backward if _overrides(m, "post_save")]
        self._hooks = _Hooks(
            [m.pre_send for m in forward if _overrides(m, "pre_send")],
            [m.post_send for m in backward if _overrides(m, "post_send")],
            [m.pre_execute for m in forward if _overrides(m, "pre_execute")],
            [m.post_execute for m in backward if _overrides(m, "post_execute")],
            [m.on_error for m in backward if _overrides(m, "on_error")],
            post_save,
            keep or bool(post_save),
        )
        self._middlewares = middlewares
        self._seen = len(middlewares)
        return self._hooks

    async def send(
        self, task_name: str, labels: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Starts one attempt of ``task_name`` (returns once it is started, as ``kiq()`` does).

        :raises SendTaskError: the task is not registered, or the formatter refuses the
            arguments (nothing runs).
        """
        hooks = self._hooks_now()
        pre_send, post_send = hooks.pre_send, hooks.post_send
        task = self.broker.find_task(task_name)
        message: TaskiqMessage | None = None
        if not pre_send and not post_send and self._plain_formatter():
            try:
                wire_args = [_plain(a) for a in args]
                wire_kwargs = {k: _plain(v) for k, v in kwargs.items()}
            except _NotPlain:
                pass
            else:
                received, types = _wire_labels(labels)
                ids = self.broker.id_generator
                message = TaskiqMessage(
                    task_id=_fast_task_id() if ids is default_id_generator else ids(),
                    task_name=task_name,
                    labels=received,
                    labels_types=types,
                    args=wire_args,
                    kwargs=wire_kwargs,
                )
        sent: TaskiqMessage | None = None
        if message is None:  # what kiq() does, step by step
            kicker: AsyncKicker[Any, Any] = AsyncKicker(task_name, self.broker, labels)
            sent = kicker._prepare_message(*args, **kwargs)
            for hook in pre_send:
                sent = hook(sent)
                if inspect.isawaitable(sent):
                    sent = await sent
            assert sent is not None
        try:
            if task is None:
                raise UnknownTaskError(task_name=task_name)
            if sent is not None:
                formatter = self.broker.formatter
                message = formatter.loads(formatter.dumps(sent).message)
                message.parse_labels()
        except Exception as exc:
            raise SendTaskError from exc
        assert message is not None
        receive = self._receive(task.original_func, message, hooks)
        if self.broker.await_inplace:  # as the broker's kick: the attempt runs within the send
            await receive
        else:
            run = asyncio.get_running_loop().create_task(receive)
            _BACKGROUND.add(run)
            run.add_done_callback(_BACKGROUND.discard)
        if sent is not None:
            for hook in post_send:
                done = hook(sent)
                if inspect.isawaitable(done):
                    await done

    async def _receive(
        self, target: Callable[..., Any], message: TaskiqMessage, hooks: _Hooks
    ) -> None:
        """What taskiq's ``Receiver.callback`` does with a parsed message on ``InMemoryBroker``
        (nothing to acknowledge), the result backend left out unless something reads it."""
        for pre in hooks.pre_execute:
            message = pre(message)
            if type(message) is not TaskiqMessage and inspect.isawaitable(message):
                message = await message
        if "ack_type" in message.labels:
            self.receiver._get_ack_time(message)
        result = await self._run_task(target, message, hooks.on_error)
        for post in hooks.post_execute:
            done = post(message, result)
            if done is not None and inspect.isawaitable(done):
                await done
        if hooks.store and not isinstance(result.error, NoResultError):
            try:
                await self.broker.result_backend.set_result(message.task_id, result)
                for save in hooks.post_save:
                    done = save(message, result)
                    if inspect.isawaitable(done):
                        await done
            except Exception:
                _receiver_log.exception("Can't set result in result backend.")

    async def _run_task(
        self, target: Callable[..., Any], message: TaskiqMessage, on_error: list[Any]
    ) -> TaskiqResult[Any]:
        """Taskiq's ``Receiver.run_task`` on the receiver's own caches: arguments parsed by
        annotation, dependencies resolved, the function run (a synchronous one in the broker's
        thread pool), the ``timeout`` label enforced, ``on_error`` middlewares called."""
        receiver = self.receiver
        name = message.task_name
        plan = self._tasks.get(name)
        if plan is None or plan.target is not target:
            plan = self._tasks[name] = _TaskPlan.of(receiver, name, target)
        coroutine = plan.coroutine
        if receiver.validate_params:
            parse_params(plan.signature, plan.hints, message)
        graph = plan.graph
        dep_ctx = None
        if graph is not None:
            context = self.broker.custom_dependency_context
            context.update(
                {Context: Context(message, self.broker, None), TaskiqState: self.broker.state}
            )
            dep_ctx = graph.async_ctx(context, self.broker.dependency_overrides or None)
        returned = None
        found: BaseException | None = None
        started = time.time()
        try:
            kwargs = message.kwargs
            if dep_ctx is not None:
                kwargs = await dep_ctx.resolve_kwargs()
                kwargs.update(message.kwargs)
            if coroutine:
                future = target(*message.args, **kwargs)
            else:
                call = functools.partial(target, *message.args, **kwargs)
                future = asyncio.get_running_loop().run_in_executor(
                    receiver.executor, contextvars.copy_context().run, call
                )
            timeout = message.labels.get("timeout")
            if timeout is not None:
                if not coroutine:
                    _receiver_log.warning("Timeouts for sync tasks don't work in python well.")
                with anyio.fail_after(float(timeout)):
                    returned = await future
                    if inspect.isawaitable(returned):
                        returned = await returned
            else:
                returned = await future
                if type(returned) not in _NEVER_AWAITABLE and inspect.isawaitable(returned):
                    returned = await returned
        except NoResultError as no_result:
            found = no_result
            _receiver_log.warning(
                "Task %s with id %s skipped setting result.", name, message.task_id
            )
        except BaseException as exc:  # as taskiq's receiver: a cancel too ends in a result
            found = exc
            _receiver_log.exception("Exception found while executing function.")
        elapsed = time.time() - started
        if dep_ctx is not None:
            if found is not None and receiver.propagate_exceptions:
                await dep_ctx.close(type(found), found, found.__traceback__)
            else:
                await dep_ctx.close(None, None, None)
        if found is None:
            return TaskiqResult(
                is_err=False,
                return_value=returned,
                execution_time=round(elapsed, 2),
                labels=message.labels,
            )
        result: TaskiqResult[Any] = TaskiqResult(
            is_err=True,
            log=None,
            return_value=returned,
            execution_time=round(elapsed, 2),
            error=found,
            labels=message.labels,
        )
        for hook in on_error:
            done = hook(message, result, found)
            if inspect.isawaitable(done):
                await done
        return result


@dataclass(frozen=True, slots=True)
class _Hooks:
    """The broker's middlewares' hooks that are overridden, in the order taskiq calls each."""

    pre_send: list[Any]
    post_send: list[Any]
    pre_execute: list[Any]
    post_execute: list[Any]
    on_error: list[Any]
    post_save: list[Any]
    #: Whether results go to the result backend (something reads them back).
    store: bool


@dataclass(frozen=True, slots=True)
class _TaskPlan:
    """How taskiq's receiver runs a task, read once from its own caches."""

    target: Callable[..., Any]
    coroutine: bool
    signature: inspect.Signature | None
    hints: dict[str, Any]
    #: Its dependency graph, ``None`` when it has no dependencies (nothing to resolve).
    graph: DependencyGraph | None

    @classmethod
    def of(cls, receiver: Receiver, name: str, target: Callable[..., Any]) -> _TaskPlan:
        if name not in receiver.known_tasks:
            receiver._prepare_task(name, target)
        graph = receiver.dependency_graphs.get(name)
        return cls(
            target,
            asyncio.iscoroutinefunction(target),
            receiver.task_signatures.get(name),
            receiver.task_hints.get(name) or {},
            graph if graph and not graph.is_empty() else None,
        )


def lane_for(broker: AsyncBroker) -> LocalLane | None:
    """The broker's in-process lane, or ``None`` when its tasks go through ``kiq()``: a broker
    that is not exactly taskiq's ``InMemoryBroker`` (a subclass may send elsewhere), one with
    another receiver or its ``kick`` replaced on the instance, or the lane turned off
    (:data:`ENV_VAR`)."""
    if type(broker) is not InMemoryBroker or not enabled():
        return None
    if type(broker.receiver) is not Receiver or "kick" in vars(broker):
        return None  # a kick replaced on the broker itself must see every send
    lane: LocalLane | None = getattr(broker, "_taskiq_flow_lane", None)
    if lane is None:
        lane = LocalLane(broker)
        broker._taskiq_flow_lane = lane  # type: ignore[attr-defined]
    return lane
