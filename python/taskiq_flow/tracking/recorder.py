"""A run's events, turned into tracking records: the one place a live record changes.

The runner's events sink tells :class:`RunRecorder` what happened to a node (sent, done, failed,
retrying, skipped, its step grew); this class alone decides what that means for the tracked steps,
and writes what changed once per batch of events. A step counts its tasks by state: this class
keeps one byte per node (what state its count is in) and no record per node, so a map of 10^6
items is one record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from taskiq_flow.events import Completion, describe
from taskiq_flow.exceptions import PayloadTooLargeError
from taskiq_flow.tracking import (
    MAX_STEP_EDGES,
    PipelineStatus,
    PipelineTrackingManager,
    StepStatus,
)
from taskiq_flow.tracking.asks import ASKED_FOR

__all__ = ["EXPLAIN_EVERY", "SEGMENT_REASONS", "RunRecorder", "RunShape"]

_FINISHED = ("done", "failed", "skipped", "cancelled")

logger = logging.getLogger(__name__)

#: Seconds between two recordings of why a live run's steps wait.
EXPLAIN_EVERY = 1.0
#: Most steps of one run explained at each recording.
EXPLAIN_STEPS = 200

# What a node's count is in (one byte per node).
_PENDING, _RUNNING, _RETRYING, _DONE, _FAILED, _SKIPPED = range(6)

#: The core's reasons a step's timeline shows, by code (code 0: none; the node waits for inputs,
#: finished, or was skipped). ``running`` wins over everything, ``children`` over waits; among
#: waits, the first here that holds any of the step's tasks.
_KINDS = (
    "",
    "running",
    "children",
    "placement",
    "shared_cap",
    "run_cap",
    "step_cap",
    "rate",
    "backoff",
    "ready",
)
#: The reasons a step's segments record, in the order above.
SEGMENT_REASONS = _KINDS[1:]
_CODE = {kind: code for code, kind in enumerate(_KINDS) if kind}
_READY = _CODE["ready"]
_WAITS = range(3, len(_KINDS))
#: Where a step's counts keep the code of the kind its timeline shows now.
_SHOWN = len(_KINDS)


class StepShape(Protocol):
    """A step as the recorder needs it."""

    @property
    def name(self) -> str: ...
    @property
    def tasks(self) -> int: ...


class RunShape(Protocol):
    """The shape of a run as the recorder needs it (a :class:`taskiq_flow.run.plan.Plan`)."""

    @property
    def node_count(self) -> int: ...
    @property
    def steps(self) -> Sequence[StepShape]: ...
    @property
    def each(self) -> Mapping[int, Any] | None: ...
    @property
    def sources(self) -> Sequence[int]: ...
    @property
    def targets(self) -> Sequence[int]: ...
    def step_index(self, node: int) -> int: ...


class RunRecorder:
    """Reports one run to a :class:`PipelineTrackingManager`.

    :param track_step: report every node into step ``track_step`` of an existing tracked run (a
        step of a sequential pipeline) instead of tracking a run of its own.
    :param inputs: the run's inputs, stored with it (what a resume runs with by default).
    """

    __slots__ = (
        "_asked",
        "_dirty",
        "_edge_count",
        "_edges",
        "_explained_at",
        "_first_node",
        "_kinds",
        "_open_from",
        "_plan",
        "_ready_as",
        "_ready_steps",
        "_reason",
        "_reshaped",
        "_state",
        "_status",
        "inputs",
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
        plan: RunShape,
        track_step: int | None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.pipeline_id = pipeline_id
        self.name = name
        self.track_step = track_step
        self.inputs = inputs
        self._plan = plan
        self._dirty: set[int] = set()
        self._status: PipelineStatus | None = None
        self._explained_at = -math.inf
        self._state = bytearray(plan.node_count)
        self._first_node: list[int] | None = None
        self._open_from = 0
        self._reshaped = False
        #: Each node's reason, as a code of ``_KINDS`` (one byte per node).
        self._reason = bytearray(plan.node_count)
        #: Per step with a task that ever left "inputs": its tasks by reason code.
        self._kinds: dict[int, list[int]] = {}
        #: The graph between steps (``None``: too big to keep), and how many plan edges it
        #: covers.
        self._edges: dict[tuple[int, int], None] | None = {}
        self._edge_count = 0
        #: What "ready" means for this run now: ``ready``, or the cap that holds every ready
        #: task (``run_cap``, ``shared_cap``: the core tells it when asked, see
        #: :meth:`ready_means`); and the steps whose timeline shows it, with a ready node each.
        self._ready_as = "ready"
        #: Steps a dashboard asked about (from another process), explained until the time each
        #: maps to (the run's clock).
        self._asked: dict[int, float] = {}
        self._ready_steps: dict[int, int] = {}

    async def begin(self, restored: Sequence[int]) -> None:
        """The run starts; ``restored`` nodes finished in an earlier run of this pipeline id."""
        plan = self._plan
        if self.track_step is None:
            await self.manager.begin(
                self.pipeline_id,
                self.name,
                [(s.name, s.tasks) for s in plan.steps],
                inputs=self.inputs,
                edges=self._step_edges(),
            )
        self._status = self.manager.live(self.pipeline_id)
        if self._status is None:
            return
        steps = self._status.steps
        if self.track_step is not None:
            # A step of a sequential pipeline: its tasks (known now: a map's items) all run
            # (again) from here.
            step = steps[self.track_step]
            step.tasks = max(1, plan.node_count)
            step.clear_counts()
            step.settle_status()
            return
        # What finished before (restored) is done; everything else runs from pending. A node
        # that maps over items is not a task (its items are).
        for step in steps:
            step.clear_counts()
        state = self._state
        each = plan.each or ()
        for node in restored:
            state[node] = _DONE
            if node not in each:
                steps[plan.step_index(node)].tasks_done += 1
        for step in steps:
            step.settle_status()

    def _step_edges(self) -> list[list[int]] | None:
        """The graph between steps, from the plan's edges not looked at yet (``None`` past
        :data:`MAX_STEP_EDGES`)."""
        plan = self._plan
        sources, targets = plan.sources, plan.targets
        edges = self._edges
        if edges is not None:
            index = plan.step_index
            for k in range(self._edge_count, len(sources)):
                a, b = index(sources[k]), index(targets[k])
                if a != b:
                    edges[(a, b)] = None
                    if len(edges) > MAX_STEP_EDGES:
                        self._edges = edges = None
                        break
        self._edge_count = len(sources)
        return None if edges is None else [[a, b] for a, b in edges]

    def reasons(self, changes: Sequence[tuple[int, str, float]], offset: float) -> None:
        """The core's changes of reason ``(node, reason, time)`` since the last call (times on
        the run's clock; ``offset`` turns them into epoch seconds): each step's timeline
        (:attr:`StepStatus.segments`) follows what its tasks wait for, or ``running``."""
        if self._status is None or not changes:
            return
        steps = self._status.steps
        reason = self._reason
        kinds = self._kinds
        code_of = _CODE
        waits = _WAITS
        last = _SHOWN
        track = self.track_step
        step_index = self._plan.step_index
        touched: set[int] = set()
        for node, why, at in changes:
            code = code_of.get(why, 0)
            before = reason[node]
            if code == before:
                continue
            reason[node] = code
            index = step_index(node) if track is None else track
            counts = kinds.get(index)
            if counts is None:
                counts = kinds[index] = [0] * (last + 1)
            counts[before] -= 1
            counts[code] += 1
            touched.add(index)
            if code == _READY:
                self._ready_steps[index] = node
            # The step's kind at this change (changes come in time order): running, else open
            # (tasks it added run), else the first wait that holds any of its tasks.
            if counts[1]:
                shown = 1
            elif counts[2]:
                shown = 2
            else:
                shown = 0
                for c in waits:
                    if counts[c]:
                        shown = c
                        break
            if shown != counts[last]:
                counts[last] = shown
                self._show(steps[index], index, shown, at + offset)
        for index in touched:
            counts = kinds[index]
            if not counts[last]:
                del kinds[index]  # nothing of it is active: it needs no counts

    def _show(self, step: StepStatus, index: int, code: int, at: float) -> None:
        """Step ``index`` shows kind ``code`` from ``at`` (epoch seconds)."""
        kind: str | None = _KINDS[code] or None
        if code == _READY:
            kind = self._ready_as
        elif index in self._ready_steps:
            del self._ready_steps[index]
        if step.mark(kind, round(at, 3)):
            self._dirty.add(index)

    def ready_nodes(self, most: int = 3) -> list[int]:
        """A few nodes whose steps' timelines show them ready (to ask the core what holds
        them)."""
        nodes = []
        for node in self._ready_steps.values():
            nodes.append(node)
            if len(nodes) >= most:
                break
        return nodes

    def ready_means(self, kind: str, at: float) -> None:
        """What holds the run's ready tasks now, as the core explains one of them (``ready``,
        ``run_cap``, ``shared_cap``): the open segment of each step whose tasks are ready says
        it: a wait that showed ``ready`` is that wait from its start; one that showed another
        cap changes at ``at`` (epoch seconds)."""
        if kind not in ("ready", "run_cap", "shared_cap") or kind == self._ready_as:
            return
        self._ready_as = kind
        if self._status is None:
            return
        steps = self._status.steps
        family = ("ready", "run_cap", "shared_cap")
        for index in self._ready_steps:
            step = steps[index]
            segs = step.segments
            if not (segs and segs[-1][1] is None and segs[-1][2] in family):
                continue
            if segs[-1][2] == "ready":
                segs[-1][2] = kind  # learnt now: what held it since it became ready
                self._dirty.add(index)
            elif step.mark(kind, round(at, 3)):
                self._dirty.add(index)

    def _index(self, node: int) -> int:
        return self._plan.step_index(node) if self.track_step is None else self.track_step

    def _leave(self, step: StepStatus, node: int) -> int:
        """Takes ``node`` out of the count it is in; returns that state."""
        before = self._state[node]
        if before == _RUNNING:
            step.tasks_running -= 1
        elif before == _RETRYING:
            step.tasks_retrying -= 1
        return before

    def sent(self, node: int) -> None:
        """An attempt of ``node`` was sent."""
        if self._status is None:
            return
        index = self._index(node)
        step = self._status.steps[index]
        self._dirty.add(index)
        step.attempts += 1
        if index < self._open_from:  # a finished step runs again (a stream's next item)
            self._open_from = index
        before = self._leave(step, node)
        # A node finished before and sent again is a new task of a stream (its window slot was
        # loaded with the next item): its earlier task stays counted where it ended.
        step.tasks_running += 1
        self._state[node] = _RUNNING
        if before == _PENDING and step.sent_at is None:
            step.sent_at = time.time()
        step.settle_status()

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
        self._leave(step, node)
        if state == "done":
            step.tasks_done += 1
            self._state[node] = _DONE
        elif state == "failed":
            step.tasks_failed += 1
            self._state[node] = _FAILED
            step.error = describe(error)
        else:
            step.tasks_retrying += 1
            self._state[node] = _RETRYING
            step.error = describe(error)
        step.settle_status()
        if step.status in _FINISHED:
            step.waiting = None

    def closed(self, node: int) -> None:
        """A node given children finished: a task that added tasks counts done (if this run did
        not see its own attempt end: a resumed run grew it again); a node mapping over items is
        no task."""
        if self._status is None or self._state[node] == _DONE:
            return
        if node in (self._plan.each or ()):
            return
        index = self._index(node)
        step = self._status.steps[index]
        self._leave(step, node)
        step.tasks_done += 1
        self._state[node] = _DONE
        step.settle_status()
        self._dirty.add(index)

    def cached(self, node: int) -> None:
        """``node`` finished from the step cache (after :meth:`finished`)."""
        if self._status is not None:
            index = self._index(node)
            self._status.steps[index].tasks_cached += 1
            self._dirty.add(index)

    def waited(self, node: int, reason: str, seconds: float) -> None:
        """``node`` was sent after waiting ``seconds`` since it became ready, held last by
        ``reason`` (called after :meth:`sent`, for a node's first attempt)."""
        if self._status is not None:
            index = self._index(node)
            step = self._status.steps[index]
            waited = step.waited
            waited[reason] = waited.get(reason, 0.0) + seconds
            if step.ready_at is None and step.sent_at is not None:
                # The step's first task: it became ready ``seconds`` before it was sent.
                step.ready_at = step.sent_at - seconds
                step.first_wait = reason
            self._dirty.add(index)

    def explain_due(self, now: float) -> bool:
        """Whether :meth:`explain` records at ``now`` (the run's clock)."""
        return self._status is not None and now - self._explained_at >= EXPLAIN_EVERY

    def ask(self, indices: Sequence[int], now: float) -> None:
        """Steps asked about (:meth:`PipelineTrackingManager.ask_explain`): each is explained at
        every recording for :data:`~taskiq_flow.tracking.asks.ASKED_FOR` seconds from ``now``,
        wherever it is in the run."""
        if self._status is None:
            return
        count = len(self._status.steps)
        for index in indices:
            if 0 <= index < count:
                self._asked[index] = now + ASKED_FOR

    def explain(self, now: float, why: Callable[[int | str], str]) -> None:
        """Records why each unfinished step waits (``why(node)`` for a step of one task,
        ``why(step name)`` for one of many), at most once per :data:`EXPLAIN_EVERY` seconds and
        for the first :data:`EXPLAIN_STEPS` unfinished steps, so that another process can read it
        (``taskiq-flow explain RUN STEP``)."""
        if self._status is None or now - self._explained_at < EXPLAIN_EVERY:
            return
        self._explained_at = now
        plan = self._plan
        steps = self._status.steps
        if self.track_step is not None:
            step = steps[self.track_step]
            if step.status not in _FINISHED:
                self._explain_step(self.track_step, plan.steps[0].name, why)
            return
        first = self._first_nodes()
        # Steps before the first unfinished one are never looked at again.
        while self._open_from < len(steps) and steps[self._open_from].status in _FINISHED:
            self._open_from += 1
        explained = 0
        for index in range(self._open_from, len(steps)):
            if steps[index].status in _FINISHED:
                continue
            if explained >= EXPLAIN_STEPS:
                break
            explained += 1
            spec = plan.steps[index]
            self._explain_step(index, first[index] if spec.tasks == 1 else spec.name, why)
        for index, until in list(self._asked.items()):
            if until < now or steps[index].status in _FINISHED:
                del self._asked[index]
                continue
            spec = plan.steps[index]
            self._explain_step(index, first[index] if spec.tasks == 1 else spec.name, why)

    def _explain_step(self, index: int, asked: int | str, why: Callable[[int | str], str]) -> None:
        assert self._status is not None
        step = self._status.steps[index]
        sentence = why(asked) if not (isinstance(asked, int) and asked < 0) else None
        if sentence != step.waiting:
            step.waiting = sentence
            self._dirty.add(index)

    def _first_nodes(self) -> list[int]:
        """Each step's first node (-1 for a step without nodes), found once."""
        if self._first_node is None:
            plan = self._plan
            first = [-1] * len(plan.steps)
            for node in range(plan.node_count - 1, -1, -1):
                first[plan.step_index(node)] = node
            self._first_node = first
        return self._first_node

    def skipped(self, node: int) -> None:
        """``node`` will never run (an input failed)."""
        if self._status is not None:
            index = self._index(node)
            step = self._status.steps[index]
            self._leave(step, node)
            step.tasks_skipped += 1
            self._state[node] = _SKIPPED
            step.settle_status()
            if step.status in _FINISHED:
                step.waiting = None
            self._dirty.add(index)

    def added(self, first: int, count: int) -> None:
        """The run grew by ``count`` nodes from ``first``: steps it added are appended to the
        record, and every step counts the tasks its plan step now has."""
        self._state.extend(bytes(count))
        self._reason.extend(bytes(count))
        if self._status is None or self.track_step is not None:
            return
        plan = self._plan
        steps = self._status.steps
        while len(steps) < len(plan.steps):
            spec = plan.steps[len(steps)]
            steps.append(StepStatus(spec.name, tasks=spec.tasks))
            self._reshaped = True
            self._first_node = None
        if self._edges is not None and len(plan.sources) > self._edge_count:
            before = self._status.edges
            edges = self._step_edges()
            if edges != before:
                self._status.edges = edges
                self._reshaped = True
        touched = {plan.step_index(v) for v in range(first, first + count)}
        if plan.each:  # a node that maps over items stops counting as a task
            touched.update(plan.step_index(v) for v in plan.each if v < first)
        for index in touched:
            if steps[index].tasks != plan.steps[index].tasks:
                steps[index].tasks = max(0, plan.steps[index].tasks)
                steps[index].settle_status()
                self._dirty.add(index)

    def grow(self, node: int, tasks: int) -> None:
        """The step of ``node`` has ``tasks`` tasks in all (a stream learns it as it goes)."""
        if self._status is not None:
            index = self._index(node)
            self._status.steps[index].tasks = tasks
            self._dirty.add(index)

    async def flush(
        self, results: dict[int, Any] | None, growth: list[dict[str, Any]] | None = None
    ) -> None:
        """Writes what changed since the last flush, how the run grew (before the values of the
        nodes it added), and the values of nodes that finished (kept to resume from)."""
        if growth and self.track_step is None:
            try:
                await self.manager.save_growth(self.pipeline_id, growth)
            except PayloadTooLargeError as err:
                logger.warning("run %s: how it grew is not kept for resuming: %s", self.name, err)
        if self._reshaped and self._status is not None:
            self._reshaped = False
            self._dirty.clear()
            await self.manager.flush(self.pipeline_id)
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
