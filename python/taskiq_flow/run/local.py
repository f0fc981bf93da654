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

When the broker's only middleware with hooks is the :class:`~taskiq_flow.events.FlowMiddleware`
(the common case: nothing else observes a message) and a task is a coroutine function without
dependencies, ``timeout`` or ``ack_type`` label, whose arguments are plain JSON that its
annotations leave as they are, the attempt is *bare*: no message or result object is made for
nobody to see; the function is awaited with the copied arguments in its own asyncio task, its
exception logged as taskiq's receiver logs it, and its completion published as the middleware
publishes it (:meth:`LocalLane._bare`).

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
from collections.abc import Callable, Coroutine
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

from taskiq_flow import cancelling
from taskiq_flow.events import (
    FLOW_LABEL,
    Completion,
    FlowMiddleware,
    InProcessChannel,
    _readable,
)
from taskiq_flow.growth import Expand

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


#: Random bytes for task ids, read from ``os.urandom`` 4 KiB at a time (one system call per 256
#: ids instead of one per id), and how many of them are used.
_ID_POOL = bytearray()
_ID_USED = [0]


def _fast_task_id() -> str:
    """What taskiq's default id generator gives (a random uuid4 as 32 hex digits: 16 bytes of
    ``os.urandom`` with the version and variant bits set), made without building a
    :class:`uuid.UUID`."""
    used = _ID_USED[0]
    if used >= len(_ID_POOL):
        _ID_POOL[:] = os.urandom(4096)
        used = 0
    raw = _ID_POOL[used : used + 16]
    _ID_USED[0] = used + 16
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


def _with_flow(labels: dict[str, Any], flow: tuple[str, int, int]) -> dict[str, Any]:
    """A step's labels with the flow label of one attempt (run, node, attempt) added."""
    return {**labels, FLOW_LABEL: f"{flow[0]}:{flow[1]}:{flow[2]}"}


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
        self._hooks = _Hooks([], [], [], [], [], [], False, None)
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
        post_save = [m for m in backward if _overrides(m, "post_save")]
        hooked = [
            m
            for m in forward
            if any(
                _overrides(m, hook)
                for hook in ("pre_send", "post_send", "pre_execute", "post_execute", "on_error")
            )
            or m in post_save
        ]
        only = hooked[0] if len(hooked) == 1 else None
        bare = (
            only
            if type(only) is FlowMiddleware
            and type(only.channel) is InProcessChannel
            and not keep
            and not post_save
            else None
        )
        self._hooks = _Hooks(
            [m.pre_send for m in forward if _overrides(m, "pre_send")],
            [m.post_send for m in backward if _overrides(m, "post_send")],
            [m.pre_execute for m in forward if _overrides(m, "pre_execute")],
            [m.post_execute for m in backward if _overrides(m, "post_execute")],
            [m.on_error for m in backward if _overrides(m, "on_error")],
            [m.post_save for m in post_save],
            keep or bool(post_save),
            bare,
        )
        self._middlewares = middlewares
        self._seen = len(middlewares)
        return self._hooks

    async def send(
        self,
        task_name: str,
        labels: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flow: tuple[str, int, int] | None = None,
    ) -> None:
        """Starts one attempt of ``task_name`` (returns once it is started, as ``kiq()`` does).

        :param labels: the message's labels; with ``flow``, the step's own (not changed), to
            which the flow label is added if a message is made.
        :param flow: the attempt's run id, node and attempt number: the attempt may be bare
            (see the module). ``None``: ``labels`` carry the flow label, and a message is made.
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
                bare = hooks.bare
                if (
                    bare is not None
                    and flow is not None
                    and task is not None
                    and "timeout" not in labels
                    and "ack_type" not in labels
                ):
                    plan = self._plan_of(task_name, task.original_func)
                    if (
                        plan.coroutine
                        and plan.graph is None
                        and (
                            not self.receiver.validate_params
                            or plan.parsed_as_is(wire_args, wire_kwargs)
                        )
                    ):
                        attempt = self._bare(
                            bare, task_name, plan.target, wire_args, wire_kwargs, flow
                        )
                        if self.broker.await_inplace:
                            await attempt
                        else:
                            # No reference kept: until the attempt starts the loop holds its
                            # task, and while it runs the cancel registry does
                            # (cancelling.attempt_started).
                            asyncio.get_running_loop().create_task(attempt)
                        return
                if flow is not None:
                    labels, flow = _with_flow(labels, flow), None
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
        if flow is not None:
            labels = _with_flow(labels, flow)
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
            self._start(receive)
        if sent is not None:
            for hook in post_send:
                done = hook(sent)
                if inspect.isawaitable(done):
                    await done

    def _start(self, attempt: Coroutine[Any, Any, None]) -> None:
        """Runs ``attempt`` in an asyncio task of its own (a cancel of its run cuts that task)."""
        run = asyncio.get_running_loop().create_task(attempt)
        _BACKGROUND.add(run)
        run.add_done_callback(_BACKGROUND.discard)

    def _plan_of(self, name: str, target: Callable[..., Any]) -> _TaskPlan:
        """How taskiq's receiver runs ``name`` (read once from its caches)."""
        plan = self._tasks.get(name)
        if plan is None or plan.target is not target:
            plan = self._tasks[name] = _TaskPlan.of(self.receiver, name, target)
        return plan

    async def _bare(
        self,
        flow: FlowMiddleware,
        task_name: str,
        target: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        label: tuple[str, int, int],
    ) -> None:
        """A bare attempt (see the module): what taskiq's receiver and the
        :class:`~taskiq_flow.events.FlowMiddleware` do with it, less the message and the result
        that no other middleware would see: the attempt noted as running (a cancel cuts it), the
        function awaited, an exception logged as the receiver logs it, the completion published
        with the duration measured here."""
        run_id, node, attempt = label
        cancelling.attempt_started(run_id)
        started, wall = time.perf_counter(), time.time()
        value: Any = None
        error: BaseException | None = None
        try:
            value = await target(*args, **kwargs)
            if type(value) not in _NEVER_AWAITABLE and inspect.isawaitable(value):
                value = await value
        except NoResultError as no_result:
            error = no_result
            _receiver_log.warning(
                "Task %s with id %s skipped setting result.", task_name, f"{run_id}:{node}"
            )
        except BaseException as exc:  # as taskiq's receiver: a cancel too ends in a result
            error = exc
            _receiver_log.exception("Exception found while executing function.")
        cancelling.attempt_ended(run_id)
        if error is None and isinstance(value, Expand):
            value = value.to_wire()  # an expansion travels as JSON, in process too
        completion = Completion(
            run_id=run_id,
            node=node,
            attempt=attempt,
            ok=error is None,
            value=value if error is None else None,
            error=_readable(error),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            started_at=wall,
        )
        flow.channel.publish(completion)

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
        plan = self._plan_of(name, target)
        coroutine = plan.coroutine
        if receiver.validate_params and not plan.parsed_as_is(message.args, message.kwargs):
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
    #: The broker's :class:`~taskiq_flow.events.FlowMiddleware` when it is the only middleware
    #: with hooks (exactly that class, publishing in process, results not kept): attempts may be
    #: bare. ``None`` otherwise.
    bare: FlowMiddleware | None


@dataclass(frozen=True, slots=True)
class _TaskPlan:
    """How taskiq's receiver runs a task, read once from its own caches."""

    target: Callable[..., Any]
    coroutine: bool
    signature: inspect.Signature | None
    hints: dict[str, Any]
    #: Its dependency graph, ``None`` when it has no dependencies (nothing to resolve).
    graph: DependencyGraph | None
    #: For a function whose parameters are all plain (positional-or-keyword or keyword-only, no
    #: ``*args`` / ``**kwargs``), each parameter's annotation when it is one of
    #: :data:`_AS_IS` (``None`` for any other annotation or none), by position and by name;
    #: ``None`` for any other function.
    as_is: tuple[tuple[type | None, ...], dict[str, type | None]] | None

    @classmethod
    def of(cls, receiver: Receiver, name: str, target: Callable[..., Any]) -> _TaskPlan:
        if name not in receiver.known_tasks:
            receiver._prepare_task(name, target)
        graph = receiver.dependency_graphs.get(name)
        signature = receiver.task_signatures.get(name)
        hints = receiver.task_hints.get(name) or {}
        return cls(
            target,
            asyncio.iscoroutinefunction(target),
            signature,
            hints,
            graph if graph and not graph.is_empty() else None,
            _as_is_plan(signature, hints),
        )

    def parsed_as_is(self, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Whether taskiq's ``parse_params`` would leave a message's arguments as they are:
        every argument whose parameter is annotated has exactly the annotated type among
        ``int``, ``float``, ``str``, ``bool`` (pydantic gives such a value back unchanged) or is
        ``None`` (never parsed), and no argument meets any other annotation (``Any`` counts as
        none: pydantic gives any value back as it is)."""
        as_is = self.as_is
        if as_is is None:
            return False
        by_position, by_name = as_is
        if len(args) > len(by_position):
            return False
        for value, annotation in zip(args, by_position):
            if annotation is not None and type(value) is not annotation and value is not None:
                return False
        for key, value in kwargs.items():
            annotation = by_name.get(key, _UNKNOWN)
            if annotation is _UNKNOWN:
                return False  # taskiq's parsing of a name it does not know is its own business
            if annotation is not None and type(value) is not annotation and value is not None:
                return False
        return True


#: Annotations whose values of exactly that type pydantic's validation gives back unchanged.
_AS_IS = (int, float, str, bool)
_UNKNOWN: Any = object()


def _as_is_plan(
    signature: inspect.Signature | None, hints: dict[str, Any]
) -> tuple[tuple[type | None, ...], dict[str, type | None]] | None:
    """:attr:`_TaskPlan.as_is` of a function (``None`` when any parameter is ``*args``,
    ``**kwargs`` or annotated with anything but :data:`_AS_IS`)."""
    if signature is None:
        return None
    by_position: list[type | None] = []
    by_name: dict[str, type | None] = {}
    for name, param in signature.parameters.items():
        annotation = hints.get(name)
        if annotation is Any:  # pydantic gives any value back as it is
            annotation = None
        if annotation is not None and annotation not in _AS_IS:
            return None
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            by_position.append(annotation)
        elif param.kind is not inspect.Parameter.KEYWORD_ONLY:
            return None
        by_name[name] = annotation
    return tuple(by_position), by_name


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
