"""The one runner every pipeline shape runs on.

A :class:`Runner` executes a :class:`~taskiq_flow.run.plan.Plan` under a
:class:`~taskiq_flow.run.settings.Settings`. The Rust scheduler decides everything that is a
decision: which node is ready, whether its step's cap, the run's cap, the process-wide cap
(:mod:`taskiq_flow.optimization.parallel`) and its rate admit it, and which worker of the pool takes
it. A node leaves the core holding all of that; the runner sends it (:mod:`.sending`), awaits
completions (:mod:`taskiq_flow.events`), tells the core, and reports (:mod:`.track`). What a failed
attempt leads to is :mod:`.failures`' call.

A slot or a worker freed by this run may be granted by the core to a node of another run; the core
names the runs it granted, and the runner wakes them (their schedulers take the grant at their next
poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from taskiq import AsyncBroker, InMemoryBroker

from taskiq_flow import cancelling, observe
from taskiq_flow._core import DagScheduler, SharedCap
from taskiq_flow.events import Completion, Inbox, ensure_flow_middleware
from taskiq_flow.exceptions import (
    AbortPipeline,
    PipelineCancelledError,
    PipelineError,
    PipelineTimeoutError,
    Skip,
    StepFailedError,
    TaskiqFlowError,
    WorkerLostError,
)
from taskiq_flow.growth import expansion_of
from taskiq_flow.optimization.parallel import CapGroup, global_cap
from taskiq_flow.resources import ResourceAwareWorkerPool
from taskiq_flow.retry import DeadLetterQueue, DeadLetterStore
from taskiq_flow.run import drain, failures
from taskiq_flow.run.caching import Memo, StepCache, default_cache
from taskiq_flow.run.drain import DRAIN_TIMEOUT
from taskiq_flow.run.events import (
    LogListener,
    ObserverListener,
    ProgressListener,
    RunEvents,
    RunListener,
    TrackingListener,
)
from taskiq_flow.run.explain import explain_node, node_for
from taskiq_flow.run.growing import Grower, failed_completion
from taskiq_flow.run.local import lane_for
from taskiq_flow.run.plan import MISSING, Plan, StepSpec
from taskiq_flow.run.sending import (
    ATTEMPT_GRACE,
    DISPATCHERS,
    SLOT_HELD,
    CustomDispatch,
    NodeSender,
    Sender,
)
from taskiq_flow.run.settings import Settings
from taskiq_flow.tracking.recorder import EXPLAIN_EVERY, RunRecorder

__all__ = ["ATTEMPT_GRACE", "DRAIN_TIMEOUT", "CustomDispatch", "Feed", "Runner", "run_single"]

_MISSING: Any = MISSING
#: The cap of a send made on behalf of a node that already holds its slots: none.
_UNCAPPED = CapGroup(SharedCap(None))
#: Seconds a cancelled run waits for its cancel signal to be published to workers.
CUT_SIGNAL_TIMEOUT = 2.0
#: Under the ``taskiq_flow`` logger; nothing at INFO or above on the happy path.
logger = logging.getLogger(__name__)


class Feed(Protocol):
    """New work for a run over a window of nodes (a stream): each finished node can be loaded
    with the next item and run again."""

    def delivered(self, node: int, value: Any) -> None:
        """Node ``node`` finished with ``value`` (it may be loaded again after this)."""

    def skipped(self, node: int) -> None:
        """Node ``node`` failed for good and the run goes on (``on_error="continue"``)."""

    async def refill(self, nodes: list[int]) -> list[int]:
        """``nodes`` just finished: returns those (of these, or of earlier ones it held back)
        loaded with new items, which run again."""
        ...


class Runner:
    """One execution of a :class:`Plan`.

    :param broker: the taskiq broker tasks are sent through.
    :param plan: what to run.
    :param settings: how (checked already; see :class:`Settings`).
    :param pipeline_id: the run's id in tracking (a new uuid by default).
    :param custom_dispatch: runs a node instead of sending it through the broker.
    :param track_step: report every node into step ``track_step`` of an existing tracked run
        ``pipeline_id`` (a step of a sequential pipeline) instead of tracking a run of its own.
    :param restored: ``{node: value}`` finished by an earlier run of this ``pipeline_id``: they
        count as done and are not sent again.
    :param deadline: the loop time by which the run must end (a sequential pipeline's run
        deadline, shared by its steps); default: ``settings.run_timeout`` from the start.
    :param feed: for a stream, where finished nodes get new items.
    :param cap: the process-wide cap to attach to (default: the one active now).
    :param inputs: the run's inputs, stored by tracking with the run (a resume's default).
    :param grown: how an earlier run of this ``pipeline_id`` grew (its growth log, from
        tracking): the run grows the same way before it starts, so that ``restored`` ids match.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        plan: Plan,
        settings: Settings,
        *,
        pipeline_id: str | None = None,
        custom_dispatch: CustomDispatch | None = None,
        track_step: int | None = None,
        restored: Mapping[int, Any] | None = None,
        deadline: float | None = None,
        feed: Feed | None = None,
        cap: CapGroup | None = None,
        inputs: Mapping[str, Any] | None = None,
        grown: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.broker = broker
        self.plan = plan
        self.settings = settings
        self.pipeline_id = pipeline_id or uuid.uuid4().hex
        #: The id completions are addressed to (one per run, even when runs share a pipeline id).
        self.run_id = uuid.uuid4().hex
        self.custom_dispatch = custom_dispatch
        self.restored = dict(restored or {})
        self._grown_log = list(grown or ())
        #: What the run adds while it runs (made with the scheduler).
        self._grower: Grower | None = None
        #: Why each node that skipped itself did (``Skip(reason)``).
        self.skip_reasons: dict[int, str] = {}
        self.deadline = deadline
        self.feed = feed
        self.dead_letters: DeadLetterStore = failures.dead_letters_for(settings)
        self.tracking = (
            RunRecorder(
                settings.tracking, self.pipeline_id, settings.name, plan, track_step, inputs
            )
            if settings.tracking is not None
            else None
        )
        n = plan.node_count
        self.results: list[Any] = [_MISSING] * n
        self.failures: dict[str, BaseException | str | None] = {}
        self._attempt = [1] * n
        self._lost: dict[int, int] = {}
        self._finished = 0
        self._fatal: PipelineError | None = None
        self._cancel_requested = False
        self._poked = False
        self._inbox: Inbox | None = None
        self._scheduler: DagScheduler | None = None
        #: Nodes failed for good in this batch while the run goes on (a stream reloads them).
        self._dropped: list[int] = []
        #: What only the runner knows of a node: its last error, which failure a skipped node
        #: follows (a retry's due time is the core's).
        self._errors: dict[int, BaseException | None] = {}
        self._skipped_by: dict[int, int] = {}
        self._preds: dict[int, list[int]] | None = None
        self._step_nodes: list[list[int]] | None = None
        self._step_index: dict[str, list[int]] | None = None
        #: The process-wide (or cross-process) cap, as it was when the run started.
        self._cap: CapGroup = global_cap() if cap is None else cap
        self._pool: ResourceAwareWorkerPool | None = settings.worker_pool
        self._pool_run: int | None = None
        listeners: list[RunListener] = [LogListener()]
        if self.tracking is not None:
            listeners.append(TrackingListener(self.tracking))
        # Metrics and traces (none unless enabled in :mod:`taskiq_flow.observe`).
        listeners.extend(ObserverListener(o) for o in observe.observers())
        if settings.on_progress is not None:
            listeners.append(ProgressListener(settings.on_progress))
        #: The one events sink: everything that reports on the run listens to it.
        self.events = RunEvents(self, listeners)
        #: Sends one attempt of a node (or runs it through the custom dispatch).
        self._send = NodeSender(
            self,
            broker,
            plan,
            self.run_id,
            self.results,
            self.events,
            self._pool,
            custom_dispatch,
            lane_for(broker) if custom_dispatch is None else None,
        )
        self._sender = Sender(
            self._send.send,
            inline=isinstance(broker, InMemoryBroker) and custom_dispatch is None,
            width=min(DISPATCHERS, max(1, n)),
        )
        #: The memoized steps' lookups and stores (``None``: the plan has none).
        self.memo: Memo | None = (
            Memo(self, self._step_cache()) if any(s.cache for s in plan.steps) else None
        )
        handle = cancelling.HANDLE.get()
        if handle is not None:  # started by taskiq_flow.start(): the handle holds this run
            handle(self)

    # -- public ----------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stops the run: nothing new starts, and :meth:`execute` raises
        :class:`PipelineCancelledError`."""
        self._cancel_requested = True
        if self._inbox is not None:
            self._inbox.wake()

    def explain(self, node_or_step: int | str) -> str:
        """Why a node (by id), or a step (by name: its first node still waiting, else one
        running; a task wired into several nodes, ``tag[title]``, ``tag[body]``, answers by its
        name too), is where it is, in one sentence: ``waiting: step cap 'resize' is full (16/16 in
        flight); next free slot when any of 16 finishes (for 2.1 s)``.

        :raises UnknownIdError: for a node or step the plan does not have.
        """
        return explain_node(self, node_for(self, node_or_step))

    def skipped_steps(self) -> dict[str, str]:
        """``{step: why}`` for each node of the plan as built (not one a run added) that was
        skipped: it raised :class:`~taskiq_flow.exceptions.Skip`, or a step it needs did."""
        grower = self._grower
        base = len(self.results) if grower is None else grower.base
        shown: dict[str, str] = {}
        reasons = self.skip_reasons
        for node, reason in reasons.items():
            if node < base:
                shown[self.plan.step(node).name] = reason or "skipped"
        for node, cause in self._skipped_by.items():
            if node < base and cause in reasons:
                why = reasons[cause]
                step = self.plan.step(cause).name
                shown[self.plan.step(node).name] = f"{step!r} skipped" + (f": {why}" if why else "")
        return shown

    def finished_results(self) -> dict[int, Any]:
        """``{node: value}`` of every node that finished."""
        return {v: r for v, r in enumerate(self.results) if r is not _MISSING}

    async def execute(self) -> list[Any]:
        """Runs the plan to the end.

        :return: every node's value, by node id.
        :raises UnschedulableError: a step no worker of the pool could ever run (nothing sent).
        :raises StepFailedError: a step failed for good (at once with ``on_error="fail"``, at the
            end with ``"continue"``).
        :raises PipelineTimeoutError: the run took longer than its timeout.
        :raises PipelineCancelledError: :meth:`cancel` was called.
        """
        scheduler = self._scheduler = self._build_scheduler()
        loop = asyncio.get_running_loop()
        events = self.events
        if events.wants_waits:
            scheduler.record_waits(True)
        if self.restored or self._grown_log:
            self._restore(scheduler)
        channel = ensure_flow_middleware(self.broker).channel
        inbox = self._inbox = channel.open(self.run_id)
        live = (self.pipeline_id, self.run_id)
        cancelling.live_run(live, self.cancel)  # a cancel signal naming the run reaches it
        gate_run = scheduler.gate_run
        assert gate_run is not None
        self._cap.attach(gate_run, self._poke)
        if self._pool is not None:
            self._pool_run = scheduler.pool_run
            assert self._pool_run is not None
            self._pool.attach(self._pool_run, self._poke)
            self._send.attach_pool(self._pool_run)
        deadline = self.deadline
        if deadline is None and self.settings.run_timeout is not None:
            deadline = loop.time() + self.settings.run_timeout
        try:
            ready = channel.opened(self.run_id)
            if ready is not None:  # nothing is sent before the channel can tell it was lost
                try:
                    await ready
                except PipelineError as lost:
                    self._stop(lost)
            if self._fatal is None:
                await events.run_started(list(self.restored))
                self._sender.start()
                started = self._admit(scheduler.start(loop.time()), loop.time())
                self._after_core()
                self._sender.submit(started)
                if self._sender.inline:
                    await self._sender.flush()
                # The first batch: what was sent and why the rest waits are recorded at once
                # (another process reading the run, a dashboard, sees them before anything
                # finishes).
                await events.batch_done(loop.time(), self._take_closed([]))
            while not scheduler.is_finished and self._fatal is None:
                try:
                    await self._next_events(inbox, scheduler, loop, deadline)
                except PipelineError as lost:  # the channel broke (Redis gone, run state lost)
                    self._stop(lost)
        finally:
            cancelling.live_run(live, None)
            unsent = self._sender.stop()
            self._settle(channel, inbox, unsent)
        if isinstance(self._fatal, (PipelineCancelledError, PipelineTimeoutError)):
            await self._cut(channel)
        if self.memo is not None:
            await self.memo.settle()
        if self._fatal is None and self.failures:
            step, error = next(iter(self.failures.items()))
            self._fatal = StepFailedError(step, error, failures=self.failures)
        state = (
            "done"
            if self._fatal is None
            else "cancelled"
            if isinstance(self._fatal, PipelineCancelledError)
            else "failed"
        )
        # Every dead letter is where it is kept (Redis) before the run's end is recorded.
        await self.dead_letters.flush()
        try:
            await events.run_ended(state, None if self._fatal is None else str(self._fatal))
        except Exception as err:
            if self._fatal is None:
                raise
            # Tracking lives where the failure came from (Redis gone): the run's own error is
            # the one to report.
            logger.warning("run %s: could not record its end: %s", self.run_id, err)
        if self._fatal is not None:
            raise self._fatal
        return self.results

    # -- the core --------------------------------------------------------------------------------

    def _step_cache(self) -> StepCache:
        """Where memoized values live: in Redis when completions travel through Redis, else in
        this process."""
        make = getattr(ensure_flow_middleware(self.broker).channel, "step_cache", None)
        return make() if make is not None else default_cache()

    async def send_uncached(self, node: int) -> None:
        """Sends ``node`` without looking it up (another run computing its key gave up)."""
        await self._send.send(node, memo=False)

    def _restore(self, scheduler: DagScheduler) -> None:
        """Takes back what an earlier run of this pipeline id finished, after growing the run
        as it grew."""
        grower = self._grower
        assert grower is not None
        base = self.plan.node_count
        for node, value in self.restored.items():
            if node < base:
                self.results[node] = value
        grower.replay(self._grown_log)
        kept = grower.restorable(self.restored)
        for node in self.restored.keys() - kept.keys():
            if node < len(self.results):
                self.results[node] = _MISSING
        self.restored = kept
        scheduler.restore_done(sorted(kept))
        for node, value in kept.items():
            self.results[node] = value
        self._finished = len(kept)

    def _build_scheduler(self) -> DagScheduler:
        plan = self.plan
        classes = None
        if self._pool is not None:
            # A step no worker could ever run is refused here, before anything is sent.
            per_step = [self._pool.class_of(s.resources) for s in plan.steps]
            classes = [per_step[plan.step_index(v)] for v in range(plan.node_count)]
        keys, limits = plan.limit_keys()
        scheduler = DagScheduler(
            plan.node_count,
            plan.sources,
            plan.targets,
            keys=keys,
            max_parallel=self.settings.max_parallel,
            optional=plan.optional,
        )
        for key, spec in limits:
            scheduler.set_key_limits(
                key, max_parallel=spec.max_parallel, rate=spec.rate, burst=spec.burst
            )
        scheduler.attach(
            shared_cap=self._cap.cap,
            pool=self._pool.core if self._pool is not None else None,
            classes=classes,
        )
        self._grower = Grower(self, keys)
        return scheduler

    def _poke(self) -> None:
        """The core granted this run a slot or placed one of its nodes: poll at the next turn."""
        self._poked = True
        if self._inbox is not None:
            self._inbox.wake()

    def _after_core(self) -> None:
        """After the core released or granted anything: wake the runs it granted."""
        self._cap.wake_granted()
        self._cap.changed()
        if self._pool is not None:
            self._pool.wake_placed()

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
        pool = self._pool
        watching = pool is not None and pool.discover is not None
        if watching:
            assert pool is not None
            check = loop.time() + pool.refresh_interval
            wake = check if wake is None else min(wake, check)
        if self.tracking is not None:  # a waiting run still records why, for other processes
            check = loop.time() + EXPLAIN_EVERY
            wake = check if wake is None else min(wake, check)
        timer = loop.call_at(wake, inbox.wake) if wake is not None else None
        await inbox.wait()
        if timer is not None:
            timer.cancel()
        now = loop.time()
        if self._cancel_requested:
            self._stop(
                PipelineCancelledError(
                    f"pipeline {self.settings.name!r} was cancelled{self._cut_steps()}"
                )
            )
            return
        if deadline is not None and now >= deadline:
            limit = self.settings.run_timeout
            shown = f" after {limit:g} s" if limit is not None else ""
            self._stop(
                PipelineTimeoutError(
                    f"pipeline {self.settings.name!r} timed out{shown}{self._cut_steps()}"
                )
            )
            return
        if watching:
            await self._check_workers()
        done: list[int] = []
        grew: list[int] = []
        results = self.results
        attempts = self._attempt
        events = self.events
        for event in inbox.drain():
            node = event.node
            if event.attempt != attempts[node] or results[node] is not _MISSING:
                continue  # a duplicate delivery, or an attempt superseded by a retry
            if not event.ok:
                self._failed(event, scheduler, now)
                continue
            try:
                expansion = expansion_of(event.value)
            except TaskiqFlowError as err:
                self._failed(failed_completion(event, err), scheduler, now)
                continue
            if expansion is not None:
                grew += self._expand(node, event, expansion, scheduler, now)
                continue
            results[node] = event.value
            done.append(node)
            self._finished += 1
            events.attempt_ended(node, event, None)
            if self.memo is not None:
                self.memo.completed(node, event.value)
        admitted = scheduler.complete_many(done, now) if done else []
        admitted += grew
        if self._poked or wake is not None:
            self._poked = False
            admitted += scheduler.poll(now)
        if self.feed is not None and (done or self._dropped) and self._fatal is None:
            admitted += await self._refill(done, scheduler, loop)
        admitted = self._admit(admitted, now)
        self._after_core()
        self._sender.submit(admitted)
        if self._sender.inline:
            await self._sender.flush()
        await events.batch_done(now, self._take_closed(done))

    async def _refill(
        self, done: list[int], scheduler: DagScheduler, loop: asyncio.AbstractEventLoop
    ) -> list[int]:
        feed = self.feed
        assert feed is not None
        for node in done:
            feed.delivered(node, self.results[node])
        dropped, self._dropped = self._dropped, []
        for node in dropped:
            feed.skipped(node)
        again = await feed.refill(done + dropped)
        if not again:
            return []
        for node in again:
            if self.results[node] is not _MISSING:
                self._finished -= 1
            self.results[node] = _MISSING
            self._attempt[node] = 1
            self._lost.pop(node, None)
        admitted: list[int] = scheduler.recycle(again, loop.time())
        return admitted

    async def _check_workers(self) -> None:
        """A node placed on a worker that went away fails its attempt (placed and sent again)."""
        assert self._pool is not None and self._pool_run is not None
        for node in await self._pool.take_lost(self._pool_run):
            lost = WorkerLostError("its worker stopped advertising; placing it again")
            self._send.fail(node, self._attempt[node], lost)

    def _failed(self, event: Completion, scheduler: DagScheduler, now: float) -> None:
        """A failed attempt: resent, retried after a backoff, or failed for good."""
        node = event.node
        if isinstance(event.error, Skip) and self._fatal is None:
            self._skipped(node, event.error, scheduler, now)
            return
        step = self.plan.step(node)
        attempt = self._attempt[node]
        error = failures.name_timeout(event.error, step.name, step.timeout)
        events = self.events
        events.attempt_ended(node, event, error)
        losses = 0
        if isinstance(error, WorkerLostError):
            losses = self._lost[node] = self._lost.get(node, 0) + 1
        verdict = (
            failures.judge(error, attempt, step.retry or self.settings.retry, losses)
            if self._fatal is None
            else failures.FAILED
        )
        if verdict.resend:
            self._attempt[node] = attempt + 1
            events.node_retrying(node, event, error, None, losses)
            if scheduler.replace(node):
                self._submit([node], now)
            return  # else the core places it when a worker has room; it comes out of poll
        self._errors[node] = error
        if verdict.retry_in is not None:
            # The core keeps the node's slots and worker while it waits, and hands it out of
            # poll() when the retry is due.
            self._attempt[node] = attempt + 1
            scheduler.retry_at(node, now + verdict.retry_in, now)
            events.node_retrying(node, event, error, verdict.retry_in)
            return
        if step.skip_errors and self._fatal is None and not isinstance(error, AbortPipeline):
            # Left out, as a skip would be; dead-lettered and reported as failed all the same.
            self._dead_letter(node, step, error, attempt)
            events.node_failed(node, event, error)
            admitted, skipped, skipped_by = scheduler.skip(node, now)
            self.outcome(skipped, skipped_by, [])
            self._submit(admitted, now)
            return
        fail_fast = self._fatal is None and (
            isinstance(error, AbortPipeline) or self.settings.on_error == "fail"
        )
        if fail_fast:
            scheduler.cancel()  # before fail(): the freed slot must admit nothing of this run
        admitted, skipped, skipped_by, failed = scheduler.fail(node, now, detail=True)
        if self.memo is not None:
            self.memo.failed(node)
        self._dead_letter(node, step, error, attempt)
        events.node_failed(node, event, error)
        self.failures.setdefault(step.name, error)
        for parent in failed:  # a node whose children were added: one of them failed
            self._errors[parent] = error
            self.failures.setdefault(self.plan.step(parent).name, error)
        if self._fatal is not None:
            return
        if isinstance(error, AbortPipeline):
            self._fatal = error
        elif fail_fast:
            self._fatal = StepFailedError(step.name, error, failures=self.failures)
        else:
            self.outcome(skipped, skipped_by, [])
            if self.feed is not None:
                self._dropped.append(node)
            self._submit(admitted, now)

    def _skipped(self, node: int, skip: Skip, scheduler: DagScheduler, now: float) -> None:
        """A task raised :class:`Skip`: its output is absent (not a failure, not retried)."""
        self.skip_reasons[node] = skip.reason
        self.events.node_skipped(node)
        if self.feed is not None:  # a stream's window slot takes the next item
            self._dropped.append(node)
        admitted, skipped, skipped_by = scheduler.skip(node, now)
        self.outcome(skipped, skipped_by, [])
        self._submit(admitted, now)

    def _expand(
        self, node: int, event: Completion, expansion: Any, scheduler: DagScheduler, now: float
    ) -> list[int]:
        """``node``'s task returned an :class:`~taskiq_flow.Expand`: its children join the run
        (``node`` stays open until they finish). Returns what the core admitted."""
        assert self._grower is not None
        try:
            admitted = self._grower.expand(node, expansion, now)
        except TaskiqFlowError as err:
            self._failed(failed_completion(event, err), scheduler, now)
            return []
        self.events.attempt_ended(node, event, None)
        return admitted

    def _admit(self, admitted: list[int], now: float) -> list[int]:
        """What the core admitted, as nodes to send: a node that maps over items is given its
        items instead, and nodes the core closed get their values first."""
        grower = self._grower
        if grower is None:
            return admitted
        grower.take_closed()  # the values of nodes that closed, before anything reads them
        admitted = grower.admitted(admitted, now)
        grower.take_closed()
        return admitted

    def _submit(self, admitted: list[int], now: float) -> None:
        self._sender.submit(self._admit(admitted, now))

    def _take_closed(self, done: list[int]) -> list[int]:
        """``done`` and the nodes closed since the last batch (finished: their values are
        set), for the batch's listeners."""
        grower = self._grower
        if grower is None:
            return done
        grower.take_closed()
        if not grower.closed:
            return done
        closed, grower.closed = grower.closed, []
        self._finished += len(closed)
        for node in closed:
            self.events.node_closed(node)
        return done + closed

    def outcome(self, skipped: list[int], skipped_by: list[int], failed: list[int]) -> None:
        """Nodes the core skipped (with what caused each) or failed (a node whose children were
        added, when one of them failed) as a consequence of an event."""
        events = self.events
        for v, cause in zip(skipped, skipped_by):
            self._skipped_by[v] = cause
            events.node_skipped(v)
        for parent in failed:
            self.failures.setdefault(self.plan.step(parent).name, "a task it added failed")

    def fail_unsent(self, node: int, error: BaseException) -> None:
        """An admitted node that cannot even be sent (its items are not a list) fails its
        attempt with ``error``."""
        self.report(
            Completion(self.run_id, node, self._attempt[node], False, None, error, 0.0, time.time())
        )

    def nodes_added(self, first: int, count: int) -> None:
        """The run grew by ``count`` nodes from ``first``."""
        self.results.extend([_MISSING] * count)
        self._attempt.extend([1] * count)
        restored = self.restored
        if restored:
            for node in range(first, first + count):
                value = restored.get(node, _MISSING)
                if value is not _MISSING:
                    self.results[node] = value
        self._preds = None
        self._step_nodes = None
        self._step_index = None
        self.events.nodes_added(first, count)

    @property
    def worker_pool(self) -> ResourceAwareWorkerPool | None:
        """The worker pool the run places nodes on, if any."""
        return self._pool

    @property
    def grower(self) -> Grower | None:
        """What the run added while it ran (``None`` before it starts)."""
        return self._grower

    def _cut_steps(self) -> str:
        """``"; cut: 'fetch' (3 running), 'store'"``: the steps with attempts running, which a
        cancel cuts (empty if none)."""
        scheduler = self._scheduler
        if scheduler is None or not scheduler.counts()["running"]:
            return ""
        running: dict[str, int] = {}
        for node in range(self.plan.node_count):
            if scheduler.state(node) == "running" and scheduler.explain(node)["reason"] in (
                "running",
            ):
                name = self.plan.step(node).name
                running[name] = running.get(name, 0) + 1
        if not running:
            return ""
        shown = ", ".join(
            f"{name!r}" + (f" ({count} running)" if count > 1 else "")
            for name, count in running.items()
        )
        return f"; cut: {shown}"

    async def _cut(self, channel: Any) -> None:
        """The run was cancelled or timed out: every attempt of it still running is cancelled
        where it runs (here at once; in worker processes through the channel's cancel
        signal)."""
        cancelling.cancel_run(self.run_id)
        send = getattr(channel, "send_cancel", None)
        if send is None:
            return
        try:
            await asyncio.wait_for(send({"run": self.run_id}), CUT_SIGNAL_TIMEOUT)
        except Exception as err:  # the run is over; its attempts end with their own timeouts
            logger.warning("run %s: could not signal its cancel to workers: %s", self.run_id, err)

    def _stop(self, error: PipelineError) -> None:
        self._fatal = error
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._after_core()

    def _dead_letter(
        self, node: int, step: StepSpec, error: BaseException | None, attempts: int
    ) -> None:
        try:
            call = self.plan.build(node, self.results)
        except Exception:  # the inputs themselves were the problem
            call = ((), {})
        failures.record(
            self.dead_letters, self.pipeline_id, step.name, step.task_name, call, error, attempts
        )

    def worker_of(self, node: int) -> str | None:
        """The worker the pool placed ``node`` on, if any."""
        if self._pool is None or self._pool_run is None:
            return None
        worker: str | None = self._pool.worker_of(self._pool_run, node)
        return worker

    def inputs_of(self, node: int) -> Sequence[int]:
        """The nodes ``node`` consumes."""
        if self._preds is None:
            preds: dict[int, list[int]] = {}
            for a, b in zip(self.plan.sources, self.plan.targets):
                preds.setdefault(b, []).append(a)
            self._preds = preds
        return self._preds.get(node, [])

    @property
    def scheduler(self) -> DagScheduler | None:
        """The run's core scheduler (``None`` before the run starts)."""
        return self._scheduler

    def attempt_of(self, node: int) -> int:
        """The number of ``node``'s current attempt (1 for the first)."""
        return self._attempt[node]

    def report(self, completion: Completion) -> None:
        """Hands a completion made on this side (a failed send, an overdue attempt, a custom
        dispatch's value, a lost worker) to the loop, as if it came from a worker."""
        if self._inbox is not None:
            self._inbox.push(completion)

    def has_result(self, node: int) -> bool:
        """Whether ``node`` finished (its value is in :attr:`results`)."""
        return self.results[node] is not _MISSING

    def progress(self) -> tuple[int, int]:
        """``(tasks finished, tasks in all)`` so far: every node but those that map over items
        (their items are the tasks); a task that added tasks counts once they finish."""
        each = self.plan.each
        if not each:
            return self._finished, self.plan.node_count
        closed = sum(1 for v in each if self.results[v] is not _MISSING)
        return self._finished - closed, self.plan.node_count - len(each)

    @property
    def finished_count(self) -> int:
        """Nodes finished so far (restored ones included)."""
        return self._finished

    # -- the end ---------------------------------------------------------------------------------

    def _settle(self, channel: Any, inbox: Inbox, unsent: list[int]) -> None:
        """Gives back what nodes that will not run hold (the core fails those waiting out a
        retry; unsent ones fail here), then lets tasks still out report back in the background
        (:func:`.drain.drain`), so that their slots are released when they really finish."""
        scheduler = self._scheduler
        assert scheduler is not None
        scheduler.cancel()
        now = asyncio.get_running_loop().time()
        for node in unsent:
            if scheduler.state(node) == "running":
                scheduler.fail(node, now)
        self._after_core()
        if scheduler.counts()["running"] == 0:
            self._release(channel)
        else:
            drain.start(
                drain.drain(self.run_id, scheduler, inbox, self.attempt_of, self._after_core),
                lambda: self._release(channel),
            )

    def _release(self, channel: Any) -> None:
        """Leaves the shared cap and the pool (the core gives back whatever is still held) and
        closes the inbox."""
        scheduler = self._scheduler
        if scheduler is not None:
            gate_run = scheduler.gate_run
            scheduler.detach()  # the core gives what the run still holds to whoever waits
            if gate_run is not None:
                self._cap.detach(gate_run)
            if self._pool is not None and self._pool_run is not None:
                self._pool.detach(self._pool_run)
            with contextlib.suppress(RuntimeError):  # no running loop (closing): none to wake
                self._after_core()
        channel.close(self.run_id)


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
    """Runs one task through the runner and returns its value (no result backend involved).

    :param timeout: seconds its one attempt (and so the whole run) may take.
    :raises StepFailedError: if it fails.
    """
    call = (tuple(args), dict(kwargs))
    name = step or task_name
    plan = Plan(
        1,
        [],
        [],
        [StepSpec(name, task_name, labels or {}, timeout=timeout)],
        lambda _node, _results: call,
    )
    settings = Settings.build(name=name, dead_letters=DeadLetterQueue(), run_timeout=timeout)
    # Inside a custom dispatch the node already holds its process-wide slot: this send is that
    # node's, not another task.
    cap = _UNCAPPED if SLOT_HELD.get() else None
    return (await Runner(broker, plan, settings, cap=cap).execute())[0]
