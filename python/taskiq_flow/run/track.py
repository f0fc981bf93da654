"""A run's state changes, turned into tracking records.

The runner tells :class:`RunTracking` what happened to a node (sent, done, failed, retrying,
skipped); this class alone decides what that means for the tracked steps, and writes what changed
once per batch of events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from taskiq_flow.events import Completion
from taskiq_flow.exceptions import PayloadTooLargeError
from taskiq_flow.run.failures import describe
from taskiq_flow.run.plan import Plan
from taskiq_flow.tracking import PipelineStatus, PipelineTrackingManager

__all__ = ["RunTracking"]

logger = logging.getLogger(__name__)

#: Seconds between two recordings of why a live run's steps wait.
EXPLAIN_EVERY = 1.0
#: Most steps of one run explained at each recording.
EXPLAIN_STEPS = 200


class RunTracking:
    """Reports one run to a :class:`PipelineTrackingManager`.

    :param track_step: report every node into step ``track_step`` of an existing tracked run (a
        step of a sequential pipeline) instead of tracking a run of its own.
    """

    __slots__ = (
        "_dirty",
        "_explained_at",
        "_plan",
        "_status",
        "manager",
        "name",
        "pipeline_id",
        "track_step",
    )

    def __init__(
        self,
        manager: PipelineTrackingManager,
        pipeline_id: str,
        name: str,
        plan: Plan,
        track_step: int | None,
    ) -> None:
        self.manager = manager
        self.pipeline_id = pipeline_id
        self.name = name
        self.track_step = track_step
        self._plan = plan
        self._dirty: set[int] = set()
        self._status: PipelineStatus | None = None
        self._explained_at = -math.inf

    async def begin(self, restored: Sequence[int]) -> None:
        """The run starts; ``restored`` nodes finished in an earlier run of this pipeline id."""
        plan = self._plan
        if self.track_step is None:
            await self.manager.begin(
                self.pipeline_id, self.name, [(s.name, s.tasks) for s in plan.steps]
            )
        self._status = self.manager.live(self.pipeline_id)
        if self._status is not None and self.track_step is None:
            for node in restored:
                step = self._status.steps[plan.step_index(node)]
                step.tasks_done += 1
                if step.tasks_done >= step.tasks:
                    step.status = "done"

    def _index(self, node: int) -> int:
        return self._plan.step_index(node) if self.track_step is None else self.track_step

    def sent(self, node: int) -> None:
        """An attempt of ``node`` was sent."""
        if self._status is None:
            return
        index = self._index(node)
        step = self._status.steps[index]
        self._dirty.add(index)
        step.attempts += 1
        if step.status == "pending":
            step.status = "running"

    def finished(
        self,
        node: int,
        state: Literal["done", "failed", "retrying"],
        event: Completion | None,
        error: Any = None,
    ) -> None:
        """An attempt of ``node`` ended: ``state`` is ``done``, ``failed`` or ``retrying``."""
        if self._status is None:
            return
        index = self._index(node)
        step = self._status.steps[index]
        self._dirty.add(index)
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
        else:
            step.status = state
            step.error = describe(error)

    def waited(self, node: int, reason: str, seconds: float) -> None:
        """``node`` was sent after waiting ``seconds`` since it became ready, held last by
        ``reason``."""
        if self._status is not None:
            index = self._index(node)
            waited = self._status.steps[index].waited
            waited[reason] = waited.get(reason, 0.0) + seconds
            self._dirty.add(index)

    def explain(self, now: float, why: Callable[[str], str]) -> None:
        """Records why each unfinished step waits (``why(step name)``), at most once per
        :data:`EXPLAIN_EVERY` seconds and for the first :data:`EXPLAIN_STEPS` unfinished steps, so
        that another process can read it (``taskiq-flow explain RUN STEP``)."""
        if self._status is None or now - self._explained_at < EXPLAIN_EVERY:
            return
        self._explained_at = now
        plan = self._plan
        names = (
            [(self.track_step, plan.steps[0].name)]
            if self.track_step is not None
            else list(enumerate(spec.name for spec in plan.steps))
        )
        explained = 0
        for index, name in names:
            step = self._status.steps[index]
            if step.status in ("done", "failed", "skipped", "cancelled"):
                if step.waiting is not None:
                    step.waiting = None
                    self._dirty.add(index)
                continue
            if explained >= EXPLAIN_STEPS:
                break
            explained += 1
            sentence = why(name)
            if sentence != step.waiting:
                step.waiting = sentence
                self._dirty.add(index)

    def skipped(self, node: int) -> None:
        """``node`` will never run (an input failed)."""
        if self._status is not None:
            index = self._index(node)
            self._status.steps[index].status = "skipped"
            self._dirty.add(index)

    def grow(self, node: int, tasks: int) -> None:
        """The step of ``node`` has ``tasks`` tasks in all (a stream learns it as it goes)."""
        if self._status is not None:
            index = self._index(node)
            self._status.steps[index].tasks = tasks
            self._dirty.add(index)

    async def flush(self, results: dict[int, Any] | None) -> None:
        """Writes what changed since the last flush, and the values of nodes that finished (kept
        to resume from)."""
        if results and self.track_step is None:
            try:
                await self.manager.save_results(self.pipeline_id, results)
            except PayloadTooLargeError as err:  # kept in the run; only a resume re-runs it
                logger.warning("run %s: a result is not kept for resuming: %s", self.name, err)
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            await self.manager.save_steps(self.pipeline_id, dirty)

    async def end(self, state: str, error: str | None) -> None:
        """The run ended (``done``, ``failed`` or ``cancelled``)."""
        if self._status is not None:
            for step in self._status.steps:
                step.waiting = None
        if self.track_step is None:
            await self.manager.end(self.pipeline_id, state, error)  # type: ignore[arg-type]
