"""The one engine every pipeline runs on.

A :class:`Plan` is a DAG of nodes, each one task call grouped into named steps. A
:class:`FlowRun` executes it: the Rust :class:`~taskiq_flow.DagScheduler` decides which nodes are
ready *and* admitted (a step's ``max_parallel``, the run's cap, in the best order), a small pool of
dispatch coroutines sends them through the broker, and completions come back as events
(:mod:`taskiq_flow.events`). The Python side only builds calls, sends, and awaits; it never decides
what runs next.

Failure handling lives here too: retries with backoff (the node keeps its slot while it waits),
fail-fast or run-what-can-run on failure, dead letters, run timeouts and cancellation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from taskiq import AsyncBroker, InMemoryBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.kicker import AsyncKicker
from typing_extensions import Self

from taskiq_flow._core import DagScheduler, TokenBucket
from taskiq_flow.events import FLOW_LABEL, Completion, Inbox, ensure_flow_middleware
from taskiq_flow.exceptions import (
    AbortPipeline,
    InvalidValueError,
    NotATaskError,
    PipelineCancelledError,
    PipelineError,
    PipelineTimeoutError,
    PoisonMessageError,
    StepFailedError,
    WorkerLostError,
)
from taskiq_flow.optimization.parallel import global_limiter
from taskiq_flow.resources import (
    QUEUE_LABEL,
    WORKER_LABEL,
    ResourceAwareWorkerPool,
    TaskResources,
)
from taskiq_flow.retry import DeadLetter, DeadLetterQueue, RetryPolicy, default_dead_letters
from taskiq_flow.tracking import PipelineTrackingManager

__all__ = [
    "FlowRun",
    "OnError",
    "Plan",
    "RunOptions",
    "StepSpec",
    "check_max_parallel",
    "check_rate",
    "run_single",
    "task_display_name",
    "task_identity",
]

OnError = Literal["fail", "continue"]

#: Builds a node's arguments from the results so far: ``(args, kwargs)``.
CallBuilder = Callable[[int, Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]
#: A custom way to run a node (``ExecutionEngine.schedule_task``): returns the task's value.
CustomDispatch = Callable[[int, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]

_MISSING: Any = object()
#: Dispatch coroutines per run: enough to overlap sends on a networked broker.
DISPATCHERS = 8
#: How often one node may lose its worker and be placed again before it fails for good.
MAX_WORKER_LOSSES = 5
#: How long a stopped run waits for tasks still out before it gives their slots back anyway (a
#: message lost by the broker never reports back).
DRAIN_TIMEOUT = 300.0


def task_display_name(task: AsyncTaskiqDecoratedTask[Any, Any]) -> str:
    """The name users wrote: the function's (taskiq renames the original ``*__taskiq_original``)."""
    name = getattr(task.original_func, "__name__", None) or task.task_name
    return str(name).removesuffix("__taskiq_original")


def task_identity(task: object) -> tuple[str, dict[str, Any], str]:
    """``(task name, labels, display name)`` of a taskiq task or kicker.

    :raises NotATaskError: for anything else.
    """
    if isinstance(task, AsyncTaskiqDecoratedTask):
        return task.task_name, dict(task.labels), task_display_name(task)
    if isinstance(task, AsyncKicker):
        return task.task_name, dict(task.labels), task.task_name.rsplit(":", 1)[-1]
    name = getattr(task, "__name__", repr(task))
    raise NotATaskError(
        f"{name} is not a taskiq task: decorate it with @broker.task before using it in a pipeline"
    )


def check_rate(rate: object, burst: object) -> tuple[float | None, int]:
    """Validates a step's rate limit (``None``: none) with the core's own checks.

    :raises InvalidValueError: for a rate <= 0, NaN or infinite, or a burst below 1.
    """
    if rate is None:
        return None, 1
    bucket = TokenBucket(rate, burst)  # type: ignore[arg-type]
    return bucket.rate, bucket.burst


def check_max_parallel(value: object, what: str = "max_parallel") -> int | None:
    """Validates a ``max_parallel`` setting: ``None`` or an int >= 1.

    :raises InvalidValueError: otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(f"{what} must be an int >= 1 or None, got {value!r}")
    if value < 1:
        raise InvalidValueError(f"{what} must be an int >= 1 or None, got {value!r}")
    return value


class RunOptions:
    """The ``with_*`` settings every pipeline shape shares; each returns the pipeline itself."""

    retry: RetryPolicy | None = None
    tracking: PipelineTrackingManager | None = None
    dead_letters: DeadLetterQueue | None = None
    worker_pool: ResourceAwareWorkerPool | None = None
    timeout: float | None = None

    def with_retry(
        self,
        max_attempts: int = 3,
        delay: float = 0.1,
        backoff: float = 2.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> Self:
        """Retries failed tasks (those without a policy of their own) with exponential backoff
        and jitter; see :class:`~taskiq_flow.RetryPolicy`."""
        self.retry = RetryPolicy(max_attempts, delay, backoff, max_delay, jitter, retry_on)
        return self

    def with_tracking(self, tracking: PipelineTrackingManager) -> Self:
        """Reports every run to ``tracking``."""
        self.tracking = tracking
        return self

    def with_dead_letters(self, dead_letters: DeadLetterQueue) -> Self:
        """Records tasks that failed for good in ``dead_letters`` (default: the process-wide
        queue)."""
        self.dead_letters = dead_letters
        return self

    def with_worker_pool(self, pool: ResourceAwareWorkerPool) -> Self:
        """Places every task on a worker of ``pool`` with room for it
        (see :mod:`taskiq_flow.resources`)."""
        self.worker_pool = pool
        return self

    def with_timeout(self, seconds: float) -> Self:
        """Fails a run that takes longer than ``seconds``.

        :raises InvalidValueError: for anything but a number > 0.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise InvalidValueError(f"timeout must be a number of seconds > 0, got {seconds!r}")
        self.timeout = seconds
        return self


@dataclass(slots=True)
class StepSpec:
    """A step: a named group of nodes calling one task."""

    name: str
    task_name: str
    labels: dict[str, Any] = field(default_factory=dict)
    max_parallel: int | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    tasks: int = 1
    #: What one run of the task needs, for a worker pool (``None``: nothing declared).
    resources: TaskResources | None = None
    #: At most ``rate`` starts per second for this step, in bursts of ``burst``.
    rate: float | None = None
    burst: int = 1


@dataclass(slots=True)
class Plan:
    """What a run executes: ``node_count`` nodes, edges ``sources[i] -> targets[i]``, each node in
    one step (``step_of``; node ``i`` is step ``i`` when omitted), its call built when admitted."""

    node_count: int
    sources: Sequence[int]
    targets: Sequence[int]
    steps: list[StepSpec]
    call: CallBuilder
    step_of: Sequence[int] | None = None

    def step_index(self, node: int) -> int:
        """The index of a node's step."""
        if len(self.steps) == 1:
            return 0
        return node if self.step_of is None else self.step_of[node]

    def step(self, node: int) -> StepSpec:
        """The step of a node."""
        return self.steps[self.step_index(node)]


class FlowRun:
    """One execution of a :class:`Plan`.

    :param broker: the taskiq broker tasks are sent through.
    :param plan: what to run.
    :param max_parallel: most nodes of this run in flight at once (``None``: no cap).
    :param on_error: ``"fail"`` stops starting tasks at the first step that fails for good;
        ``"continue"`` runs every node that does not depend on a failure.
    :param retry: the retry policy of steps that have none of their own.
    :param timeout: seconds the whole run may take.
    :param tracking: where to report progress.
    :param dead_letters: where steps that failed for good are recorded.
    :param pipeline_id: the run's id (a new uuid by default).
    :param name: the pipeline's name, for tracking.
    :param custom_dispatch: runs a node instead of sending it through the broker.
    :param on_progress: called with ``(finished, total)`` after each batch of completions.
    :param track_step: report every node into step ``track_step`` of an existing tracked run
        ``pipeline_id`` (a step of a sequential pipeline), instead of tracking a run of its own.
    :param worker_pool: place every task on a worker with room for it before sending it, and hold
        that capacity until it completes; a task no worker could run fails the run at once.
    :param restored: ``{node: value}`` finished by an earlier run of this ``pipeline_id`` (an
        orchestrator that died): they count as done and are not sent again.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        plan: Plan,
        *,
        max_parallel: int | None = None,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        dead_letters: DeadLetterQueue | None = None,
        pipeline_id: str | None = None,
        name: str = "pipeline",
        custom_dispatch: CustomDispatch | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        track_step: int | None = None,
        worker_pool: ResourceAwareWorkerPool | None = None,
        restored: Mapping[int, Any] | None = None,
    ) -> None:
        if on_error not in ("fail", "continue"):
            raise InvalidValueError(f"on_error must be 'fail' or 'continue', got {on_error!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.broker = broker
        self.plan = plan
        self.max_parallel = check_max_parallel(max_parallel)
        self.on_error = on_error
        self.retry = retry
        self.timeout = timeout
        self.tracking = tracking
        self.dead_letters = dead_letters if dead_letters is not None else default_dead_letters()
        self.pipeline_id = pipeline_id or uuid.uuid4().hex
        #: The id completions are addressed to (one per run, even when runs share a pipeline id).
        self.run_id = uuid.uuid4().hex
        self.name = name
        self.custom_dispatch = custom_dispatch
        self.on_progress = on_progress
        self.track_step = track_step
        self.worker_pool = worker_pool
        self.restored = dict(restored or {})
        self._placements: dict[int, int] = {}
        self._lost: dict[int, int] = {}
        n = plan.node_count
        self.results: list[Any] = [_MISSING] * n
        self.failures: dict[str, BaseException | str | None] = {}
        self._attempt = [1] * n
        self._queue: deque[int] = deque()
        self._wake_dispatch = asyncio.Event()
        self._in_flight = 0
        self._finished = 0
        self._fatal: PipelineError | None = None
        self._cancel_requested = False
        self._inbox: Inbox | None = None
        self._scheduler: DagScheduler | None = None
        self._retry_timers: list[asyncio.TimerHandle] = []
        self._retrying: set[int] = set()
        self._sending: list[bool] = []
        self._closing = False
        self._dirty_steps: set[int] = set()
        #: The process-wide (or cross-process) cap, as it was when the run started.
        self._limiter = global_limiter()
        self._inline = (
            isinstance(broker, InMemoryBroker) and custom_dispatch is None and worker_pool is None
        )

    # -- public ----------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stops the run: nothing new starts, and :meth:`execute` raises
        :class:`PipelineCancelledError`."""
        self._cancel_requested = True
        if self._inbox is not None:
            self._inbox.wake()

    def finished_results(self) -> dict[int, Any]:
        """``{node: value}`` of every node that finished."""
        return {v: r for v, r in enumerate(self.results) if r is not _MISSING}

    async def execute(self) -> list[Any]:
        """Runs the plan to the end.

        :return: every node's value, by node id.
        :raises StepFailedError: a step failed for good (at once with ``on_error="fail"``, at the
            end with ``"continue"``).
        :raises PipelineTimeoutError: the run took longer than ``timeout``.
        :raises PipelineCancelledError: :meth:`cancel` was called.
        """
        plan = self.plan
        if self.worker_pool is not None:
            for spec in plan.steps:  # a task no worker could ever run: refuse before sending
                self.worker_pool.check(spec.resources or TaskResources())
        scheduler = self._scheduler = self._build_scheduler()
        if self.restored:
            scheduler.restore_done(sorted(self.restored))
            for node, value in self.restored.items():
                self.results[node] = value
            self._finished = len(self.restored)
        channel = ensure_flow_middleware(self.broker).channel
        inbox = self._inbox = channel.open(self.run_id)
        loop = asyncio.get_running_loop()
        dispatchers: list[asyncio.Task[None]] = []
        deadline = loop.time() + self.timeout if self.timeout is not None else None
        try:
            if self.tracking is not None and self.track_step is None:
                await self.tracking.begin(
                    self.pipeline_id, self.name, [(s.name, s.tasks) for s in plan.steps]
                )
                live = self.tracking.live(self.pipeline_id)
                if live is not None:
                    for node in self.restored:
                        live.steps[plan.step_index(node)].status = "done"
            count = min(DISPATCHERS, plan.node_count)
            self._sending = [False] * count
            dispatchers = [loop.create_task(self._dispatcher(i)) for i in range(count)]
            self._dispatch(scheduler.start(loop.time()))
            if self._inline:
                await self._send_inline()
            while not scheduler.is_finished and self._fatal is None:
                await self._next_events(inbox, scheduler, loop, deadline)
        finally:
            self._stop_dispatchers(dispatchers)
            for timer in self._retry_timers:
                timer.cancel()
            await self._settle(channel, inbox)
        if self._fatal is None and self.failures:
            step, error = next(iter(self.failures.items()))
            self._fatal = StepFailedError(step, error, failures=self.failures)
        await self._end_tracking()
        if self._fatal is not None:
            raise self._fatal
        return self.results

    # -- the loop --------------------------------------------------------------------------------

    def _build_scheduler(self) -> DagScheduler:
        plan = self.plan
        capped = [
            i for i, s in enumerate(plan.steps) if s.max_parallel is not None or s.rate is not None
        ]
        keys = None
        limits: dict[object, tuple[int, StepSpec]] = {}
        if capped:
            key_of_step = [0] * len(plan.steps)
            for index in capped:
                spec = plan.steps[index]
                # Steps calling one rate-limited task share its bucket (a dataflow may call a
                # task from several nodes); other limits are per step.
                group: object = ("task", spec.task_name) if spec.rate is not None else index
                if group not in limits:
                    limits[group] = (len(limits) + 1, spec)
                key_of_step[index] = limits[group][0]
            keys = [key_of_step[plan.step_index(v)] for v in range(plan.node_count)]
        scheduler = DagScheduler(
            plan.node_count, plan.sources, plan.targets, keys=keys, max_parallel=self.max_parallel
        )
        for key, spec in limits.values():
            scheduler.set_key_limits(
                key, max_parallel=spec.max_parallel, rate=spec.rate, burst=spec.burst
            )
        return scheduler

    async def _next_events(
        self,
        inbox: Inbox,
        scheduler: DagScheduler,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> None:
        wake = scheduler.next_wakeup()
        if deadline is not None:
            wake = deadline if wake is None else min(wake, deadline)
        pool = self.worker_pool
        watching = pool is not None and pool.discover is not None and bool(self._placements)
        if watching:
            assert pool is not None
            check = loop.time() + pool.refresh_interval
            wake = check if wake is None else min(wake, check)
        timer = loop.call_at(wake, inbox.wake) if wake is not None else None
        await inbox.wait()
        if timer is not None:
            timer.cancel()
        now = loop.time()
        if self._cancel_requested:
            self._stop(PipelineCancelledError(f"pipeline {self.name!r} was cancelled"))
            return
        if deadline is not None and now >= deadline:
            self._stop(
                PipelineTimeoutError(f"pipeline {self.name!r} timed out after {self.timeout}s")
            )
            return
        if watching:
            await self._check_workers()
        done: list[int] = []
        for event in inbox.drain():
            if (
                event.attempt != self._attempt[event.node]
                or self.results[event.node] is not _MISSING
            ):
                continue  # a duplicate delivery, or an attempt superseded by a retry
            if event.ok:
                self.results[event.node] = event.value
                done.append(event.node)
                self._finish_node(event)
            else:
                self._failed(event, scheduler, now)
        admitted = scheduler.complete_many(done, now) if done else []
        if scheduler.next_wakeup() is not None or wake is not None:
            admitted += scheduler.poll(now)
        self._dispatch(admitted)
        if self._inline:
            await self._send_inline()
        if done and self.tracking is not None and self.track_step is None:
            await self.tracking.save_results(
                self.pipeline_id, {node: self.results[node] for node in done}
            )
        if self._dirty_steps and self.tracking is not None:
            dirty, self._dirty_steps = self._dirty_steps, set()
            await self.tracking.save_steps(self.pipeline_id, dirty)
        if self.on_progress is not None:
            self.on_progress(self._finished, self.plan.node_count)

    async def _check_workers(self) -> None:
        """Reads the live workers; a node placed on one that went away fails its attempt with
        :class:`WorkerLostError`, which places and sends it again."""
        pool = self.worker_pool
        assert pool is not None
        await pool.refresh()
        mine = {placement: node for node, placement in self._placements.items()}
        for placement in pool.lost & mine.keys():
            pool.lost.discard(placement)
            node = mine[placement]
            del self._placements[node]
            worker = "its worker"
            assert self._inbox is not None
            self._inbox.push(
                Completion(
                    self.run_id,
                    node,
                    self._attempt[node],
                    False,
                    None,
                    WorkerLostError(f"{worker} stopped advertising; placing it again"),
                    0.0,
                    time.time(),
                )
            )

    def _failed(self, event: Completion, scheduler: DagScheduler, now: float) -> None:
        """Handles a failed attempt: a retry after a backoff, or a failure for good."""
        node = event.node
        step = self.plan.step(node)
        policy = step.retry or self.retry
        attempt = self._attempt[node]
        error = event.error
        if isinstance(error, WorkerLostError) and self._fatal is None:
            self._lost[node] = self._lost.get(node, 0) + 1
            if self._lost[node] <= MAX_WORKER_LOSSES:
                # Not the task's fault: sent again at once, whatever the retry policy says.
                self._attempt[node] = attempt + 1
                self._retrying.add(node)
                self._track(node, "retrying", event, error=error)
                asyncio.get_running_loop().call_soon(self._resend, node)
                return
        if (
            self._fatal is None
            and policy is not None
            and not isinstance(error, (AbortPipeline, PoisonMessageError))
            and policy.should_retry(attempt, error)
        ):
            # The node keeps its slots while it waits: it is still this run's work in flight.
            self._attempt[node] = attempt + 1
            self._retrying.add(node)
            self._track(node, "retrying", event, error=error)
            loop = asyncio.get_running_loop()
            self._retry_timers.append(
                loop.call_later(policy.delay_for(attempt), self._resend, node)
            )
            return
        self._finish_node(event, failed=True)
        self._record_dead_letter(node, step, error, attempt)
        self.failures.setdefault(step.name, error)
        if self._fatal is not None:
            return
        if isinstance(error, AbortPipeline):
            self._stop(error)
        elif self.on_error == "continue":
            admitted, skipped = scheduler.fail(node, now)
            for v in skipped:
                self._track_skipped(v)
            self._dispatch(admitted)
        else:
            self._stop(StepFailedError(step.name, error, failures=self.failures))

    def _stop(self, error: PipelineError) -> None:
        self._fatal = error
        if self._scheduler is not None:
            self._scheduler.cancel()

    def _resend(self, node: int) -> None:
        self._retrying.discard(node)
        if self._fatal is None:
            self._queue.append(node)
            self._wake_dispatch.set()

    def _dispatch(self, nodes: Sequence[int]) -> None:
        if nodes:
            self._queue.extend(nodes)
            if not self._inline:
                self._wake_dispatch.set()

    async def _send_inline(self) -> None:
        """On a broker whose send does no I/O (the in-memory one), the run loop sends what it
        admitted itself, as long as global slots are free without waiting: no hand-off to the
        dispatch pool. Anything that would wait stays queued for the pool."""
        queue = self._queue
        limiter = self._limiter
        while queue and not self._closing:
            node = queue[0]
            if self._attempt[node] == 1:
                try:
                    limiter.acquire_nowait()
                except anyio.WouldBlock:
                    self._wake_dispatch.set()  # what must wait for a global slot goes to the pool
                    return
                self._in_flight += 1
            queue.popleft()
            await self._send(node)

    async def _dispatcher(self, index: int) -> None:
        limiter = self._limiter
        queue = self._queue
        sending = self._sending
        while not self._closing:
            while queue and not self._closing:
                node = queue.popleft()
                if self._attempt[node] == 1:
                    await limiter.acquire()
                    self._in_flight += 1
                if self.worker_pool is not None and node not in self._placements:
                    await self._place(node)  # first send, or again after its worker was lost
                # Not cancelled while sending (see _stop_dispatchers): once a slot is taken the
                # message goes out, so that its completion comes back and gives the slot up.
                sending[index] = True
                try:
                    await self._send(node)
                finally:
                    sending[index] = False
            self._wake_dispatch.clear()
            await self._wake_dispatch.wait()

    async def _place(self, node: int) -> None:
        """Waits for a worker with room for the node (holding its global slot meanwhile)."""
        assert self.worker_pool is not None
        placement = next(_PLACEMENT_IDS)
        try:
            await self.worker_pool.acquire(
                self.plan.step(node).resources or TaskResources(), placement
            )
        except BaseException:
            if self._attempt[node] == 1:
                self._in_flight -= 1
                self._limiter.release()
            else:  # a re-placement: the node still counts as waiting to be resent
                self._retrying.add(node)
            raise
        self._placements[node] = placement

    def _unplace(self, node: int) -> None:
        placement = self._placements.pop(node, None)
        if placement is not None and self.worker_pool is not None:
            self.worker_pool.release(placement)

    def _stop_dispatchers(self, dispatchers: list[asyncio.Task[None]]) -> None:
        """Stops the dispatch pool: idle dispatchers (waiting for work or a global slot) are
        cancelled; one in the middle of a send finishes it and then stops."""
        self._closing = True
        self._wake_dispatch.set()
        for index, task in enumerate(dispatchers):
            if not self._sending[index]:
                task.cancel()

    async def _send(self, node: int) -> None:
        step = self.plan.step(node)
        attempt = self._attempt[node]
        if self.tracking is not None:
            self._track(node, "running")
        try:
            # Built from the predecessors' results, which never change: a retry rebuilds it.
            args, kwargs = self.plan.call(node, self.results)
            if self.custom_dispatch is not None:
                asyncio.get_running_loop().create_task(
                    self._run_custom(node, attempt, args, kwargs)
                )
                return
            labels: dict[str, Any] = {FLOW_LABEL: f"{self.run_id}:{node}:{attempt}"}
            if step.timeout is not None:
                labels["timeout"] = step.timeout
            placement = self._placements.get(node)
            if placement is not None and self.worker_pool is not None:
                labels[WORKER_LABEL] = self.worker_pool.worker_of(placement)
                queue = self.worker_pool.queue_of(placement)
                if queue is not None:
                    labels[QUEUE_LABEL] = queue
            kicker: AsyncKicker[Any, Any] = AsyncKicker(step.task_name, self.broker, step.labels)
            kicker = kicker.with_labels(**labels)
            await kicker.kiq(*args, **kwargs)
        except Exception as exc:  # could not send: this attempt failed
            self._push_failure(node, attempt, exc)

    async def _run_custom(
        self, node: int, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        assert self.custom_dispatch is not None
        started, wall = time.perf_counter(), time.time()
        try:
            value = await self.custom_dispatch(node, args, kwargs)
        except Exception as exc:
            self._push_failure(node, attempt, exc)
            return
        if self._inbox is not None:
            elapsed = (time.perf_counter() - started) * 1000.0
            self._inbox.push(
                Completion(self.run_id, node, attempt, True, value, None, elapsed, wall)
            )

    def _push_failure(self, node: int, attempt: int, exc: BaseException) -> None:
        if self._inbox is not None:
            self._inbox.push(
                Completion(self.run_id, node, attempt, False, None, exc, 0.0, time.time())
            )

    def _finish_node(self, event: Completion, failed: bool = False) -> None:
        self._finished += 1
        self._in_flight -= 1
        self._limiter.release()
        self._unplace(event.node)
        if self.tracking is not None:
            self._track(event.node, "failed" if failed else "done", event, error=event.error)

    async def _settle(self, channel: Any, inbox: Inbox) -> None:
        """Closes the run's inbox, first letting tasks still out report back in the background,
        so that their global slots are released when they really finish."""
        for node in self._queue:  # retries admitted but not sent: they still hold their slots
            if self._attempt[node] > 1:
                self._in_flight -= 1
                self._limiter.release()
                self._unplace(node)
        self._queue.clear()
        for node in self._retrying:  # waiting for a retry that will not come: not running
            self._in_flight -= 1
            self._limiter.release()
            self._unplace(node)
        self._retrying.clear()
        if self._in_flight <= 0:
            channel.close(self.run_id)
            return

        async def drain() -> None:
            deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT
            try:
                while self._in_flight > 0:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        logger.warning(
                            "run %s: %d tasks never reported back in %.0fs; giving their slots "
                            "back",
                            self.run_id,
                            self._in_flight,
                            DRAIN_TIMEOUT,
                        )
                        break
                    timer = asyncio.get_running_loop().call_later(remaining, inbox.wake)
                    try:
                        await inbox.wait()
                    finally:
                        timer.cancel()
                    for event in inbox.drain():
                        if event.attempt == self._attempt[event.node]:
                            self._in_flight -= 1
                            self._limiter.release()
                            self._unplace(event.node)
            except Exception as exc:  # the channel broke: nothing more will report back
                logger.warning("run %s: stopped waiting for tasks still out: %s", self.run_id, exc)
            finally:
                # Cancelled (the event loop is closing): whatever is still out will never report
                # back to this process, so its slots are given back here.
                for _ in range(max(self._in_flight, 0)):
                    self._limiter.release()
                self._in_flight = 0
                for node in list(self._placements):
                    self._unplace(node)
                channel.close(self.run_id)

        task = asyncio.get_running_loop().create_task(drain())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    # -- tracking and dead letters ---------------------------------------------------------------

    def _track(
        self,
        node: int,
        state: str,
        event: Completion | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        if self.tracking is None:
            return
        status = self.tracking.live(self.pipeline_id)
        if status is None:
            return
        index = self.plan.step_index(node) if self.track_step is None else self.track_step
        step = status.steps[index]
        self._dirty_steps.add(index)
        if state == "running":
            step.attempts += 1
            if step.status == "pending":
                step.status = "running"
            return
        if event is not None:
            end = event.started_at + event.duration_ms / 1000.0
            step.started_at = (
                event.started_at
                if step.started_at is None
                else min(step.started_at, event.started_at)
            )
            step.finished_at = end if step.finished_at is None else max(step.finished_at, end)
            if step.tasks == 1:
                step.duration_ms = event.duration_ms
            else:
                step.duration_ms = (step.finished_at - step.started_at) * 1000.0
        if state == "done":
            step.tasks_done += 1
            if step.tasks_done >= step.tasks and step.status != "failed":
                step.status = "done"
        elif state == "failed":
            step.status = "failed"
            step.error = _describe(error)
        elif state == "retrying":
            step.status = "retrying"
            step.error = _describe(error)

    def _track_skipped(self, node: int) -> None:
        if self.tracking is None:
            return
        status = self.tracking.live(self.pipeline_id)
        if status is not None:
            index = self.plan.step_index(node) if self.track_step is None else self.track_step
            status.steps[index].status = "skipped"

    async def _end_tracking(self) -> None:
        if self.tracking is None or self.track_step is not None:
            return
        if self._fatal is None:
            await self.tracking.end(self.pipeline_id, "done")
        elif isinstance(self._fatal, PipelineCancelledError):
            await self.tracking.end(self.pipeline_id, "cancelled", str(self._fatal))
        else:
            await self.tracking.end(self.pipeline_id, "failed", str(self._fatal))

    def _record_dead_letter(
        self, node: int, step: StepSpec, error: BaseException | None, attempts: int
    ) -> None:
        try:
            args, kwargs = self.plan.call(node, self.results)
        except Exception:  # the inputs themselves were the problem
            args, kwargs = (), {}
        self.dead_letters.add(
            DeadLetter(
                pipeline_id=self.pipeline_id,
                step=step.name,
                task_name=step.task_name,
                args=args,
                kwargs=kwargs,
                error=_describe(error) or "unknown error",
                error_type=type(error).__name__ if error is not None else "None",
                attempts=attempts,
            )
        )


_BACKGROUND: set[asyncio.Task[None]] = set()
logger = logging.getLogger(__name__)
#: Placement ids, unique across every run sharing a worker pool.
_PLACEMENT_IDS = itertools.count()


def _describe(error: BaseException | str | None) -> str | None:
    if error is None or isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}"


async def run_single(
    broker: AsyncBroker,
    task_name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    step: str | None = None,
    timeout: float | None = None,
    labels: dict[str, Any] | None = None,
) -> Any:
    """Runs one task through the engine and returns its value (no result backend involved).

    :raises StepFailedError: if it fails.
    """
    call = (tuple(args), dict(kwargs))
    plan = Plan(
        1,
        [],
        [],
        [StepSpec(step or task_name, task_name, labels or {})],
        lambda _node, _results: call,
    )
    run = FlowRun(
        broker, plan, timeout=timeout, name=step or task_name, dead_letters=DeadLetterQueue()
    )
    return (await run.execute())[0]
