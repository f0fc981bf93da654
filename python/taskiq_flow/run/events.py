"""The one events sink of a run: the runner says what happened, once; listeners subscribe.

The :class:`~taskiq_flow.run.runner.Runner` is the loop: it asks the core, sends, feeds
completions back. Everything a run *reports* — tracking records, metrics and traces, progress
callbacks, the ``taskiq_flow`` log — listens to its :class:`RunEvents` instead of being called
from the loop one by one. A listener overrides the :class:`RunListener` methods it needs; the
sink calls, for each event, only the listeners that override it (an event nobody listens to costs
one empty loop).

Listeners here: :class:`TrackingListener` (tells the run's
:class:`~taskiq_flow.tracking.recorder.RunRecorder`),
:class:`ObserverListener` (an :class:`~taskiq_flow.observe.Observer`: Prometheus, OpenTelemetry),
:class:`ProgressListener` (``on_progress``), :class:`LogListener` (retries at INFO, lost workers and
failures for good at WARNING).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from taskiq_flow.run import failures
from taskiq_flow.run.explain import explain_step
from taskiq_flow.tracking.asks import asks_of

if TYPE_CHECKING:
    from taskiq_flow.events import Completion
    from taskiq_flow.observe import Observer
    from taskiq_flow.run.runner import Runner
    from taskiq_flow.tracking.recorder import RunRecorder

__all__ = [
    "LogListener",
    "ObserverListener",
    "ProgressListener",
    "RunEvents",
    "RunListener",
    "TrackingListener",
]

#: The runner's log (``taskiq_flow.run.runner``): where users have always found run messages.
logger = logging.getLogger("taskiq_flow.run.runner")


class RunListener:
    """What a run reports as it happens. Every method does nothing here; a listener overrides
    those it needs (the sink calls a listener only for the events it overrides)."""

    #: Whether the core must record what each node waited for before it ran (costs a little).
    wants_waits = False

    async def run_started(self, run: Runner, restored: Sequence[int]) -> None:
        """The run starts; ``restored`` nodes finished in an earlier run of its pipeline id."""

    def attempt_sent(
        self, run: Runner, node: int, attempt: int, wait: tuple[str, float] | None
    ) -> None:
        """An attempt leaves; ``wait`` is what held the node last and for how long (first
        attempts, when waits are recorded)."""

    def attempt_ended(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        """An attempt reported back (``error`` is ``None`` when it succeeded)."""

    def node_retrying(
        self,
        run: Runner,
        node: int,
        event: Completion,
        error: BaseException | None,
        delay: float | None,
        losses: int,
    ) -> None:
        """A failed attempt is tried again: after ``delay`` seconds, or (``delay`` ``None``) at
        once on another worker after losing its ``losses``-th one."""

    def node_failed(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        """A node failed for good (it is dead-lettered)."""

    def node_skipped(self, run: Runner, node: int) -> None:
        """A node will not run: something it needs failed."""

    def step_grew(self, run: Runner, step: int, tasks: int) -> None:
        """Step ``step`` now counts ``tasks`` tasks (a stream loaded more items)."""

    def nodes_added(self, run: Runner, first: int, count: int) -> None:
        """The run grew: ``count`` nodes from id ``first`` (their steps in ``run.plan``)."""

    def node_closed(self, run: Runner, node: int) -> None:
        """A node given children finished (its value is set from theirs)."""

    async def batch_done(self, run: Runner, now: float, done: Sequence[int]) -> None:
        """The runner handled a batch of events; ``done`` nodes finished in it."""

    async def run_ended(self, run: Runner, state: str, error: str | None) -> None:
        """The run ended: ``done``, ``failed`` or ``cancelled`` (with its error)."""


_EVENTS = (
    "run_started",
    "attempt_sent",
    "attempt_ended",
    "node_retrying",
    "node_failed",
    "node_skipped",
    "step_grew",
    "nodes_added",
    "node_closed",
    "batch_done",
    "run_ended",
)


class RunEvents:
    """A run's listeners, by event.

    :param run: the run they listen to.
    :param listeners: in the order they are told.
    """

    __slots__ = ("_by_event", "listeners", "run", "wants_waits")

    def __init__(self, run: Runner, listeners: Sequence[RunListener]) -> None:
        self.run = run
        self.listeners = list(listeners)
        self.wants_waits = any(listener.wants_waits for listener in self.listeners)
        base = RunListener.__dict__
        self._by_event: dict[str, list[Callable[..., Any]]] = {
            name: [
                getattr(listener, name)
                for listener in self.listeners
                if getattr(type(listener), name) is not base[name]
            ]
            for name in _EVENTS
        }

    def listening(self, event: str) -> bool:
        """Whether any listener takes ``event`` (to skip building what only it needs)."""
        return bool(self._by_event[event])

    async def run_started(self, restored: Sequence[int]) -> None:
        for call in self._by_event["run_started"]:
            await call(self.run, restored)

    def attempt_sent(self, node: int, attempt: int, wait: tuple[str, float] | None) -> None:
        for call in self._by_event["attempt_sent"]:
            call(self.run, node, attempt, wait)

    def attempt_ended(self, node: int, event: Completion, error: BaseException | None) -> None:
        for call in self._by_event["attempt_ended"]:
            call(self.run, node, event, error)

    def node_retrying(
        self,
        node: int,
        event: Completion,
        error: BaseException | None,
        delay: float | None,
        losses: int = 0,
    ) -> None:
        for call in self._by_event["node_retrying"]:
            call(self.run, node, event, error, delay, losses)

    def node_failed(self, node: int, event: Completion, error: BaseException | None) -> None:
        for call in self._by_event["node_failed"]:
            call(self.run, node, event, error)

    def node_skipped(self, node: int) -> None:
        for call in self._by_event["node_skipped"]:
            call(self.run, node)

    def step_grew(self, step: int, tasks: int) -> None:
        for call in self._by_event["step_grew"]:
            call(self.run, step, tasks)

    def nodes_added(self, first: int, count: int) -> None:
        for call in self._by_event["nodes_added"]:
            call(self.run, first, count)

    def node_closed(self, node: int) -> None:
        for call in self._by_event["node_closed"]:
            call(self.run, node)

    async def batch_done(self, now: float, done: Sequence[int]) -> None:
        for call in self._by_event["batch_done"]:
            await call(self.run, now, done)

    async def run_ended(self, state: str, error: str | None) -> None:
        """Tells every listener; the first error raised by one is raised after all were told."""
        raised: Exception | None = None
        for call in self._by_event["run_ended"]:
            try:
                await call(self.run, state, error)
            except Exception as exc:
                raised = raised or exc
        if raised is not None:
            raise raised


class TrackingListener(RunListener):
    """Tells a run's :class:`~taskiq_flow.tracking.recorder.RunRecorder` what happened; only
    the recorder edits the tracking records."""

    wants_waits = True

    def __init__(self, tracking: RunRecorder) -> None:
        self.tracking = tracking
        #: Whether the storage carries a dashboard's asks (Redis), taken once a second.
        self.takes_asks = (
            tracking.track_step is None and asks_of(tracking.manager.storage) is not None
        )

    async def run_started(self, run: Runner, restored: Sequence[int]) -> None:
        scheduler = run.scheduler
        if scheduler is not None:  # each step's timeline follows the core's reasons
            scheduler.record_history(True)
        tracking = self.tracking
        await tracking.begin(restored)
        if tracking.track_step is None:
            tracking.manager.set_explainer(
                tracking.pipeline_id, lambda index: explain_step(run, index)
            )

    def attempt_sent(
        self, run: Runner, node: int, attempt: int, wait: tuple[str, float] | None
    ) -> None:
        self.tracking.sent(node)
        if wait is not None:
            self.tracking.waited(node, *wait)

    def attempt_ended(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        if error is None:
            self.tracking.finished(node, "done", event)
            memo = run.memo
            if memo is not None and node in memo.cached_from:
                self.tracking.cached(node)

    def node_retrying(
        self,
        run: Runner,
        node: int,
        event: Completion,
        error: BaseException | None,
        delay: float | None,
        losses: int,
    ) -> None:
        self.tracking.finished(node, "retrying", event, error)

    def node_failed(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        self.tracking.finished(node, "failed", event, error)

    def node_skipped(self, run: Runner, node: int) -> None:
        self.tracking.skipped(node)

    def step_grew(self, run: Runner, step: int, tasks: int) -> None:
        self.tracking.grow(step, tasks)

    def nodes_added(self, run: Runner, first: int, count: int) -> None:
        self.tracking.added(first, count)

    def node_closed(self, run: Runner, node: int) -> None:
        self.tracking.closed(node)

    def _reasons(self, run: Runner) -> None:
        """The core's changes of reason since the last batch, to each step's timeline; what
        holds the ready tasks (the run's cap, the process-wide cap) asked of the core once."""
        scheduler = run.scheduler
        if scheduler is None:
            return
        tracking = self.tracking
        changes = scheduler.take_history()
        if changes:
            offset = time.time() - asyncio.get_running_loop().time()
            tracking.reasons(changes, offset)
        for node in tracking.ready_nodes():
            why = scheduler.explain(node)
            if why["state"] == "queued":
                tracking.ready_means(why["reason"], time.time())
                break

    async def batch_done(self, run: Runner, now: float, done: Sequence[int]) -> None:
        tracking = self.tracking
        self._reasons(run)
        if self.takes_asks and tracking.explain_due(now):
            # Steps a dashboard in another process asked about are explained too.
            try:
                tracking.ask(await tracking.manager.take_asks(tracking.pipeline_id), now)
            except Exception as err:  # Redis stalled: asked again by the next recording
                logger.debug("run %s: asks not taken: %s", run.run_id, err)
        tracking.explain(now, run.explain)
        results = run.results
        grower = run.grower
        await tracking.flush(
            {node: results[node] for node in done}
            if done and tracking.track_step is None
            else None,
            grower.take_log() if grower is not None and grower.pending_log else None,
        )

    async def run_ended(self, run: Runner, state: str, error: str | None) -> None:
        self._reasons(run)  # what changed since the last batch, up to the end
        await self.tracking.end(state, error)


class ObserverListener(RunListener):
    """Tells an :class:`~taskiq_flow.observe.Observer` (metrics, traces) what happened."""

    wants_waits = True

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    async def run_started(self, run: Runner, restored: Sequence[int]) -> None:
        self.observer.run_started(run)

    def attempt_sent(
        self, run: Runner, node: int, attempt: int, wait: tuple[str, float] | None
    ) -> None:
        self.observer.attempt_started(
            run,
            node,
            run.plan.step(node).name,
            attempt,
            wait,
            run.worker_of(node),
            run.inputs_of(node),
        )

    def attempt_ended(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        step = run.plan.step(node).name
        self.observer.attempt_ended(run, node, step, error is None, event.duration_ms / 1000, error)

    def node_retrying(
        self,
        run: Runner,
        node: int,
        event: Completion,
        error: BaseException | None,
        delay: float | None,
        losses: int,
    ) -> None:
        if delay is not None:
            self.observer.retried(run, run.plan.step(node).name)

    def node_failed(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        self.observer.dead_lettered(run, run.plan.step(node).name)

    async def run_ended(self, run: Runner, state: str, error: str | None) -> None:
        self.observer.run_ended(run, state)


class ProgressListener(RunListener):
    """Calls ``on_progress(finished, total)`` after each batch of events."""

    def __init__(self, on_progress: Callable[[int, int], None]) -> None:
        self.on_progress = on_progress

    async def batch_done(self, run: Runner, now: float, done: Sequence[int]) -> None:
        self.on_progress(*run.progress())


class LogListener(RunListener):
    """The ``taskiq_flow`` log of a run: retries at INFO, lost workers and failures for good at
    WARNING, nothing at INFO on the happy path."""

    def node_retrying(
        self,
        run: Runner,
        node: int,
        event: Completion,
        error: BaseException | None,
        delay: float | None,
        losses: int,
    ) -> None:
        step = run.plan.step(node).name
        if delay is None:
            logger.warning(
                "run %s: step %r lost its worker (%s); placing it again (%d of %d)",
                run.run_id,
                step,
                error,
                losses,
                failures.MAX_WORKER_LOSSES,
            )
            return
        logger.info(
            "run %s: step %r attempt %d failed (%s); retrying in %.2f s",
            run.run_id,
            step,
            event.attempt,
            failures.describe(error),
            delay,
        )

    def node_failed(
        self, run: Runner, node: int, event: Completion, error: BaseException | None
    ) -> None:
        logger.warning(
            "run %s: step %r failed for good after %d attempt(s): %s",
            run.run_id,
            run.plan.step(node).name,
            event.attempt,
            failures.describe(error),
        )
