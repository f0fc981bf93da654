"""Sending what the core admitted, and nothing else.

A node handed out by the core already holds its slots and its worker: sending never waits for a
limiter or a placement. :class:`NodeSender` sends one attempt of a node (its message, labels,
worker, the watchdog of its timeout, or a custom dispatch) and reports a send that failed as a
failed attempt; :class:`Sender` orders the sends: on a broker whose send does no I/O (the
in-memory one) the run loop sends inline, otherwise a few dispatch coroutines drain a queue so that
network round trips overlap.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from taskiq_flow.events import FLOW_LABEL, Completion
from taskiq_flow.exceptions import TaskiqFlowError, TaskTimeoutError
from taskiq_flow.resources import QUEUE_LABEL, WORKER_LABEL
from taskiq_flow.run.plan import PassOn

if TYPE_CHECKING:
    from taskiq_flow._core import DagScheduler
    from taskiq_flow.resources import ResourceAwareWorkerPool
    from taskiq_flow.run.caching import Memo
    from taskiq_flow.run.events import RunEvents
    from taskiq_flow.run.local import LocalLane
    from taskiq_flow.run.plan import Plan

logger = logging.getLogger(__name__)

__all__ = ["ATTEMPT_GRACE", "DISPATCHERS", "SLOT_HELD", "CustomDispatch", "NodeSender", "Sender"]

#: A custom way to run a node (``ExecutionEngine.schedule_task``): returns the task's value.
CustomDispatch = Callable[[int, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]

#: How long after a step's ``timeout`` this side gives up on a completion that never came.
ATTEMPT_GRACE = 2.0

#: Set while a custom dispatch (``ExecutionEngine.schedule_task``) runs a node: the node already
#: holds its slots (the process-wide one included), so a send made for it from inside the dispatch
#: (``super().schedule_task(...)``) must not wait for another slot — under a cap of n, n such
#: nodes would each wait for a slot only their own completion frees.
SLOT_HELD: contextvars.ContextVar[bool] = contextvars.ContextVar("slot_held", default=False)

_BACKGROUND: set[asyncio.Task[None]] = set()

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


class RunState(Protocol):
    """What a send reads of its run: each node's attempt number and whether it finished."""

    @property
    def scheduler(self) -> DagScheduler | None: ...
    def attempt_of(self, node: int) -> int: ...
    def has_result(self, node: int) -> bool: ...
    def report(self, completion: Completion) -> None: ...
    @property
    def memo(self) -> Memo | None: ...


class NodeSender:
    """Sends one attempt of a node of a run: through the broker, with the step's labels, its
    worker and queue when the pool placed it, and a watchdog that fails the attempt if its
    ``timeout`` (and a grace) passes with no completion; or through a custom dispatch. A send that
    fails is reported to the run as a failed attempt (never raised).

    :param run_id: the id completions are addressed to.
    :param results: the run's values by node (a node's call is built from its inputs').
    :param lane: runs the broker's tasks in this process (:mod:`.local`) instead of ``kiq()``.
    """

    __slots__ = ("_pool_run", "broker", "custom_dispatch", "events", "lane", "plan", "pool",
                 "results", "run", "run_id")  # fmt: skip

    def __init__(
        self,
        run: RunState,
        broker: AsyncBroker,
        plan: Plan,
        run_id: str,
        results: list[Any],
        events: RunEvents,
        pool: ResourceAwareWorkerPool | None,
        custom_dispatch: CustomDispatch | None,
        lane: LocalLane | None = None,
    ) -> None:
        self.run = run
        self.broker = broker
        self.plan = plan
        self.run_id = run_id
        self.results = results
        self.events = events
        self.pool = pool
        self.custom_dispatch = custom_dispatch
        #: Runs tasks in this process without taskiq's message round trip (``None``: ``kiq()``).
        self.lane = lane
        self._pool_run: int | None = None

    def attach_pool(self, pool_run: int | None) -> None:
        """The run's id in the pool, once its scheduler has one."""
        self._pool_run = pool_run

    async def send(self, node: int, memo: bool = True) -> None:
        """Sends the current attempt of ``node`` (a memoized step's is looked up first, unless
        ``memo`` is false)."""
        step = self.plan.step(node)
        attempt = self.run.attempt_of(node)
        events = self.events
        if events.wants_waits and memo:
            scheduler = self.run.scheduler
            wait = scheduler.wait_of(node) if attempt == 1 and scheduler is not None else None
            events.attempt_sent(node, attempt, wait)
        try:
            cache = self.run.memo
            if memo and step.cache is not None and cache is not None:
                try:
                    if await cache.before_send(node, attempt):
                        return  # completed from the cache, or another run computes it
                except Exception as err:  # the cache is unreachable: the node runs uncached
                    logger.warning("step cache unreachable (%s): sending %s", err, step.name)
            # Built from the predecessors' results, which never change: a retry rebuilds it.
            args, kwargs = self.plan.build(node, self.results)
            if self.custom_dispatch is not None:
                task = asyncio.get_running_loop().create_task(
                    self._run_custom(node, attempt, args, kwargs)
                )
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
                return
            lane = self.lane
            pool = self.pool
            if lane is not None and step.timeout is None and pool is None:
                # The lane adds the flow label itself, only when it makes a message.
                await lane.send(
                    step.task_name, step.labels, args, kwargs, (self.run_id, node, attempt)
                )
                return
            # A new dict each time: taskiq's kicker updates the dict it is given in place, and
            # the step's labels are the task's own.
            labels: dict[str, Any] = {**step.labels, FLOW_LABEL: f"{self.run_id}:{node}:{attempt}"}
            if step.timeout is not None:
                labels["timeout"] = step.timeout
                # The worker enforces the timeout; this side fails the attempt too if no
                # completion ever comes (a worker killed on a broker without acknowledgements).
                asyncio.get_running_loop().call_later(
                    step.timeout + max(ATTEMPT_GRACE, step.timeout / 10),
                    self._overdue,
                    node,
                    attempt,
                )
            if pool is not None and self._pool_run is not None:
                worker = pool.worker_of(self._pool_run, node)
                if worker is not None:
                    labels[WORKER_LABEL] = worker
                    queue = pool.queue_of(self._pool_run, node)
                    if queue is not None:
                        labels[QUEUE_LABEL] = queue
            if lane is not None:
                await lane.send(step.task_name, labels, args, kwargs)
            else:
                kicker: AsyncKicker[Any, Any] = AsyncKicker(step.task_name, self.broker, labels)
                await kicker.kiq(*args, **kwargs)
        except PassOn as passed:  # its value is known: nothing to send
            self.run.report(
                Completion(self.run_id, node, attempt, True, passed.value, None, 0.0, time.time())
            )
        except Exception as exc:  # could not send: this attempt failed
            # taskiq wraps every error of a broker's kick in SendTaskError; ours says why (and a
            # refusal such as UndeliverableMessageError is not retried).
            cause = exc.__cause__
            self.fail(node, attempt, cause if isinstance(cause, TaskiqFlowError) else exc)

    def fail(self, node: int, attempt: int, exc: BaseException) -> None:
        """Reports that attempt ``attempt`` of ``node`` failed with ``exc``."""
        self.run.report(Completion(self.run_id, node, attempt, False, None, exc, 0.0, time.time()))

    def _overdue(self, node: int, attempt: int) -> None:
        """An attempt's timeout (and grace) passed on this side with no completion."""
        run = self.run
        scheduler = run.scheduler
        if (
            attempt != run.attempt_of(node)
            or run.has_result(node)
            or scheduler is None
            or scheduler.state(node) != "running"
        ):
            return
        step = self.plan.step(node)
        assert step.timeout is not None
        self.fail(
            node,
            attempt,
            TaskTimeoutError(
                f"step {step.name!r} timed out after {step.timeout:g} s: no completion came back "
                "(its worker may have died)"
            ),
        )

    async def _run_custom(
        self, node: int, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        assert self.custom_dispatch is not None
        started, wall = time.perf_counter(), time.time()
        SLOT_HELD.set(True)  # this task's own context: see SLOT_HELD
        try:
            value = await self.custom_dispatch(node, args, kwargs)
        except Exception as exc:
            self.fail(node, attempt, exc)
            return
        elapsed = (time.perf_counter() - started) * 1000.0
        self.run.report(Completion(self.run_id, node, attempt, True, value, None, elapsed, wall))
