"""Tracking: the status of every pipeline run and of each of its steps.

A run reports to a :class:`PipelineTrackingManager`, which keeps records in a storage (in memory by
default). Each step's ``duration_ms`` is measured where its tasks ran, not where they were awaited:
for a step of one task it is that task's run time; for a step of many (a map), the span from the
first task's start to the last one's end.

::

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker).with_tracking(tracking)
    await pipeline.kiq_dataflow(x=1)
    status = await tracking.get_status(pipeline.pipeline_id)
    for step in status.steps:
        print(f"{step.name}: {step.duration_ms}ms")

A step is a declaration: a task wired in on its own is a step of one task; a map (a bulk
declaration) is one step of many tasks, whose :class:`StepStatus` counts its tasks by state
(``tasks_pending``, ``tasks_running``, ``tasks_retrying``, ``tasks_done``, ``tasks_failed``,
``tasks_skipped``, ``tasks_cancelled``; all of them at once as :attr:`StepStatus.counts`), so a map
of 10^4 items is one record and a run of 10^6 nodes stores no record per node.

A run resumed after its orchestrator died (``taskiq-flow runs resume``) keeps its history: its
first start, each step's attempts, errors and times, and the times it was resumed
(:attr:`PipelineStatus.resumes`). Its inputs are stored with it (:meth:`PipelineTrackingManager.
load_inputs`), so that a resume runs with the same ones unless told otherwise
(:meth:`PipelineTrackingManager.resume_inputs`).

A run's state is ``running``, then ``done``, ``failed`` or ``cancelled``. With a storage that
keeps leases (:class:`~taskiq_flow.distributed.RedisPipelineStorage`), the manager holds a lease
on each run it executes, renewed in the background from :meth:`PipelineTrackingManager.begin` to
:meth:`PipelineTrackingManager.end`; a run whose orchestrator died (its lease lapsed) reads back
as ``abandoned``. A record that cannot be read is skipped by listings (with a warning) and raises
:class:`~taskiq_flow.exceptions.CorruptRecordError` from
:meth:`~PipelineTrackingManager.get_status`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic_core import to_jsonable_python

from taskiq_flow.exceptions import (
    CorruptRecordError,
    InvalidValueError,
    StateError,
    UnknownIdError,
)

__all__ = [
    "MAX_SEGMENTS",
    "MAX_STEP_EDGES",
    "TASK_STATES",
    "InMemoryPipelineStorage",
    "PipelineStatus",
    "PipelineStorage",
    "PipelineTrackingManager",
    "StepStatus",
    "copy_status",
    "process_owner_id",
]

logger = logging.getLogger(__name__)

_OWNER = f"{socket.gethostname()[:64]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def process_owner_id() -> str:
    """This process's id as the owner of run leases: ``host/pid/random``."""
    return _OWNER


RunState = Literal["running", "done", "failed", "cancelled", "abandoned"]
StepState = Literal["pending", "running", "retrying", "done", "failed", "skipped", "cancelled"]


#: Most step edges a run's record keeps (:attr:`PipelineStatus.edges`); a run with more keeps
#: none (a page then draws no graph of it).
MAX_STEP_EDGES = 20_000
#: Most timeline segments kept per step (:attr:`StepStatus.segments`).
MAX_SEGMENTS = 64

#: The states a step's tasks are counted in, in the order :attr:`StepStatus.counts` lists them.
TASK_STATES: tuple[StepState, ...] = (
    "pending",
    "running",
    "retrying",
    "done",
    "failed",
    "skipped",
    "cancelled",
)


@dataclass(slots=True)
class StepStatus:
    """One step of a run: a task wired in on its own, or all the tasks of a map.

    ``tasks`` is how many tasks the step has; each is counted in one state
    (``tasks_running``, ``tasks_retrying``, ``tasks_done``, ``tasks_failed``, ``tasks_skipped``,
    ``tasks_cancelled``; the rest are ``tasks_pending``). ``attempts`` counts every attempt sent,
    across resumes. A record written before the counts existed reads back with ``tasks_done``
    only (the others 0).
    """

    name: str
    status: StepState = "pending"
    duration_ms: float | None = None
    attempts: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    tasks: int = 1
    tasks_done: int = 0
    #: Seconds the step's tasks waited between becoming ready and being sent, summed, by what held
    #: each last (the core's reasons: ``run_cap`` for the run's own ``max_parallel``,
    #: ``step_cap``, ``rate``, ``shared_cap`` for the process-wide cap, ``placement``; ``ready``
    #: for a task sent in the round it became ready).
    waited: dict[str, float] = field(default_factory=dict)
    #: Why the step waits, as its run last explained it (while the run is live).
    waiting: str | None = None
    tasks_running: int = 0
    tasks_retrying: int = 0
    tasks_failed: int = 0
    tasks_skipped: int = 0
    tasks_cancelled: int = 0
    #: When (epoch seconds) the step's first task sent became ready (all its inputs done).
    ready_at: float | None = None
    #: When (epoch seconds) the step's first task was sent.
    sent_at: float | None = None
    #: What held the step's first task between ``ready_at`` and ``sent_at`` (a key of
    #: ``waited``).
    first_wait: str | None = None
    #: Of ``tasks_done``, how many came from the step cache (not sent: ``cache=True``).
    tasks_cached: int = 0
    #: The step's timeline as the core's reasons changed: ``[start, end, kind]`` (epoch seconds,
    #: ``end`` ``None`` for the segment still open), ``kind`` ``running`` while any of its tasks
    #: runs, else what holds its ready tasks (``run_cap``, ``step_cap``, ``rate``, ``shared_cap``,
    #: ``placement``, ``backoff``, ``ready``; ``children`` while tasks it added run). Nothing is
    #: recorded while it waits for inputs. At most :data:`MAX_SEGMENTS` per step (past that the
    #: shortest closed segment is folded into a neighbour; the exact totals stay in ``waited``).
    segments: list[list[Any]] = field(default_factory=list)

    @property
    def tasks_pending(self) -> int:
        """Tasks not sent yet (nor skipped or cancelled)."""
        started = (
            self.tasks_running
            + self.tasks_retrying
            + self.tasks_done
            + self.tasks_failed
            + self.tasks_skipped
            + self.tasks_cancelled
        )
        return max(0, self.tasks - started)

    @property
    def counts(self) -> dict[StepState, int]:
        """The step's tasks by state (every state, in :data:`TASK_STATES` order); they sum to
        ``tasks``."""
        return {
            "pending": self.tasks_pending,
            "running": self.tasks_running,
            "retrying": self.tasks_retrying,
            "done": self.tasks_done,
            "failed": self.tasks_failed,
            "skipped": self.tasks_skipped,
            "cancelled": self.tasks_cancelled,
        }

    def counts_text(self) -> str:
        """The counts for people, states with no task left out: ``"5000 done, 50 running, 4950
        pending"`` (``"1 done"`` for a task that ran)."""
        counts = self.counts
        order: tuple[StepState, ...] = (
            "done",
            "running",
            "retrying",
            "failed",
            "skipped",
            "cancelled",
            "pending",
        )
        shown = [f"{counts[state]} {state}" for state in order if counts[state]]
        if self.tasks_cached:
            shown.insert(1, f"{self.tasks_cached} cached")
        return ", ".join(shown) if shown else f"{self.tasks} tasks"

    def clear_counts(self) -> None:
        """Every task back to pending (a step about to run again, as a resumed run does)."""
        self.tasks_running = self.tasks_retrying = self.tasks_done = 0
        self.tasks_failed = self.tasks_skipped = self.tasks_cancelled = 0
        self.tasks_cached = 0

    def settle_status(self) -> None:
        """Sets ``status`` from the counts: ``failed`` if a task failed for good, else
        ``running`` while a task runs (or some finished and others wait), ``retrying`` while the
        only unfinished ones wait for a retry; once every task finished, ``cancelled``, ``done``
        or ``skipped``."""
        if self.tasks_failed:
            self.status = "failed"
        elif self.tasks_running:
            self.status = "running"
        elif self.tasks_retrying:
            self.status = "retrying"
        elif self.tasks_pending:
            started = self.tasks_done or self.tasks_skipped or self.tasks_cancelled
            self.status = "running" if started else "pending"
        elif self.tasks_cancelled:
            self.status = "cancelled"
        elif self.tasks_done:
            self.status = "done"
        elif self.tasks_skipped:
            self.status = "skipped"

    def mark(self, kind: str | None, at: float) -> bool:
        """The step's timeline changes at ``at`` (epoch seconds): its open segment ends there
        and one of ``kind`` opens (``None``: none; the step waits for inputs, or finished). A
        segment of no length is replaced; one of the same kind as the segment just before it
        (touching it) extends that one. Past :data:`MAX_SEGMENTS`, the shortest closed segment
        is folded into its neighbour.

        :return: whether the segments changed.
        """
        segs = self.segments
        last = segs[-1] if segs else None
        if last is not None and last[1] is None:
            if last[2] == kind:
                return False
            if at <= last[0]:  # an open segment of no length: as if it never opened
                segs.pop()
                last = segs[-1] if segs else None
            else:
                last[1] = at
        elif kind is None:
            return False
        if kind is None:
            return True
        if last is not None and last[2] == kind and last[1] is not None and last[1] >= at:
            last[1] = None  # it goes on
            return True
        segs.append([at, None, kind])
        if len(segs) > MAX_SEGMENTS:
            _fold_shortest(segs)
        return True

    def close_segments(self, at: float) -> None:
        """Ends the open segment, if any, at ``at`` (the run ended)."""
        if self.segments and self.segments[-1][1] is None:
            self.mark(None, max(at, self.segments[-1][0]))

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> StepStatus:
        """A step from its stored form (fields it does not know are ignored; missing ones take
        their defaults, so older records read back).

        :raises TypeError: for a record that is not an object of fields.
        """
        if not isinstance(data, dict):
            raise TypeError("a step record is not an object")
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


def _fold_shortest(segs: list[list[Any]]) -> None:
    """Folds the shortest closed segment into its longer neighbour (the bar keeps its span)."""
    closed = len(segs) - 1 if segs[-1][1] is None else len(segs)
    k = min(range(closed), key=lambda i: segs[i][1] - segs[i][0])
    before = segs[k - 1] if k > 0 else None
    after = segs[k + 1] if k + 1 < len(segs) else None

    def length(seg: list[Any] | None) -> float:
        if seg is None:
            return -1.0
        return math.inf if seg[1] is None else float(seg[1] - seg[0])

    if before is not None and length(before) >= length(after):
        before[1] = segs[k][1]
    else:
        assert after is not None
        after[0] = segs[k][0]
    del segs[k]


def copy_step(step: StepStatus) -> StepStatus:
    """A copy of a step record that shares nothing mutable with it."""
    return dataclasses.replace(
        step, waited=dict(step.waited), segments=[list(seg) for seg in step.segments]
    )


def copy_status(status: PipelineStatus) -> PipelineStatus:
    """A copy of a run record that shares nothing mutable with it (what ``copy.deepcopy``
    makes, in a fraction of its time: a record of 10^4 steps and edges is copied in and out of
    in-memory storage at each start and end of its run)."""
    edges = status.edges
    return dataclasses.replace(
        status,
        steps=[copy_step(step) for step in status.steps],
        resumes=list(status.resumes),
        edges=None if edges is None else [[a, b] for a, b in edges],
    )


@dataclass(slots=True)
class PipelineStatus:
    """One run of a pipeline."""

    pipeline_id: str
    name: str
    status: RunState = "running"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    steps: list[StepStatus] = field(default_factory=list)
    #: When (epoch seconds) the run was resumed after its orchestrator died, oldest first; empty
    #: for a run that was never resumed.
    resumes: list[float] = field(default_factory=list)
    #: The run's graph between its steps: ``[source step, target step]`` pairs (indices into
    #: :attr:`steps`, no repeats), so a page can draw it from the record alone; ``None`` when
    #: not recorded (an older record, or more than :data:`MAX_STEP_EDGES` of them).
    edges: list[list[int]] | None = None

    @property
    def resumed_at(self) -> float | None:
        """When the run was last resumed, if ever."""
        return self.resumes[-1] if self.resumes else None

    @property
    def duration_ms(self) -> float | None:
        """Wall time of the run, once finished (from its first start, across resumes)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at) * 1000.0

    def slowest_step(self) -> StepStatus | None:
        """The step with the largest ``duration_ms``, if any finished."""
        timed = [s for s in self.steps if s.duration_ms is not None]
        return max(timed, key=lambda s: s.duration_ms or 0.0) if timed else None


class PipelineStorage(Protocol):
    """Where tracking records live."""

    async def save(self, status: PipelineStatus) -> None:
        """Stores a whole record (new or replaced)."""
        ...

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        """A record, or ``None``."""
        ...

    async def delete(self, pipeline_id: str) -> bool:
        """Removes a record; whether there was one."""
        ...

    async def ids(self) -> list[str]:
        """Every stored pipeline id."""
        ...


class InMemoryPipelineStorage:
    """Records in a dict, for the embedded default. Records and inputs are copied in and out."""

    def __init__(self) -> None:
        self._records: dict[str, PipelineStatus] = {}
        self._results: dict[str, dict[int, Any]] = {}
        self._inputs: dict[str, tuple[dict[str, Any] | None, str | None]] = {}

    async def save_inputs(self, pipeline_id: str, inputs: Mapping[str, Any]) -> str | None:
        """Keeps a run's inputs (a deep copy) to resume it with.

        :return: ``None`` once stored, or why they could not be (then that is kept instead).
        """
        try:
            self._inputs[pipeline_id] = (copy.deepcopy(dict(inputs)), None)
        except Exception as exc:  # an object that cannot be copied (a lock, a socket)
            note = f"an input cannot be copied: {type(exc).__name__}: {exc}"
            self._inputs[pipeline_id] = (None, note)
            return note
        return None

    async def load_inputs(self, pipeline_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(inputs, None)``, or ``(None, why they were not stored)``, or ``(None, None)`` when
        nothing was kept for the run."""
        inputs, note = self._inputs.get(pipeline_id, (None, None))
        return (copy.deepcopy(inputs) if inputs is not None else None), note

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Keeps finished nodes' values (what a resumed run starts from)."""
        self._results.setdefault(pipeline_id, {}).update(results)

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """The finished nodes' values of a run."""
        return dict(self._results.get(pipeline_id, {}))

    async def save(self, status: PipelineStatus) -> None:
        self._records[status.pipeline_id] = copy_status(status)

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        record = self._records.get(pipeline_id)
        return copy_status(record) if record is not None else None

    async def delete(self, pipeline_id: str) -> bool:
        self._results.pop(pipeline_id, None)
        self._inputs.pop(pipeline_id, None)
        return self._records.pop(pipeline_id, None) is not None

    async def ids(self) -> list[str]:
        return list(self._records)


class PipelineTrackingManager:
    """Keeps the status of pipeline runs and answers questions about them.

    :param storage: where records live (in memory by default).
    """

    def __init__(self, storage: PipelineStorage | None = None) -> None:
        self.storage: PipelineStorage = (
            storage if storage is not None else InMemoryPipelineStorage()
        )
        self._live: dict[str, PipelineStatus] = {}
        #: Growth records written per live run (where the next one goes).
        self._growth_count: dict[str, int] = {}
        self._leases: dict[str, asyncio.Task[None]] = {}
        #: Per live run of this process: why its step ``i`` is where it is, asked now.
        self._explainers: dict[str, Callable[[int], str]] = {}
        from taskiq_flow.tracking.changes import changes_of

        #: The storage's change counters (Redis), bumped after each write.
        self.changes = changes_of(self.storage)

    # -- the run's lease -------------------------------------------------------------------------

    async def hold_lease(self, pipeline_id: str) -> None:
        """Takes the lease on a run (if the storage keeps leases) and keeps renewing it every
        third of its length until :meth:`release_lease` (called by :meth:`begin` and
        :meth:`end`; call them yourself to hold a run you drive otherwise).

        :raises StateError: if another live process holds the run's lease (a run is resumed
            only once it is ``abandoned``).
        """
        renew = getattr(self.storage, "renew_lease", None)
        if renew is None or pipeline_id in self._leases:
            return
        await renew(pipeline_id, _OWNER)
        interval = float(getattr(self.storage, "lease_seconds", 15.0)) / 3
        self._leases[pipeline_id] = asyncio.get_running_loop().create_task(
            self._renew_lease(pipeline_id, renew, interval)
        )

    async def _renew_lease(self, pipeline_id: str, renew: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if not await renew(pipeline_id, _OWNER):
                    logger.warning("the tracking record of run %s vanished", pipeline_id)
            except StateError as exc:  # this process lost the lease (stalled past it)
                logger.warning("lease of run %s lost: %s", pipeline_id, exc)
                return
            except Exception as exc:  # Redis stalled or restarting: the next renewal may work
                logger.warning("lease of run %s not renewed: %s", pipeline_id, exc)

    async def release_lease(self, pipeline_id: str) -> None:
        """Stops renewing a run's lease and gives it up."""
        task = self._leases.pop(pipeline_id, None)
        if task is None:
            return
        task.cancel()
        release = getattr(self.storage, "release_lease", None)
        if release is not None:
            try:
                await release(pipeline_id)
            except Exception as exc:  # it lapses by itself
                logger.warning("lease of run %s not released: %s", pipeline_id, exc)

    # -- written by runs -------------------------------------------------------------------------

    async def begin(
        self,
        pipeline_id: str,
        name: str,
        steps: list[tuple[str, int]],
        *,
        inputs: Mapping[str, Any] | None = None,
        edges: list[list[int]] | None = None,
    ) -> None:
        """A run starts, or resumes; ``steps`` lists each step's name and number of tasks.

        A run whose id has a record already is resumed: it keeps its first start, each step's
        attempts, errors, times and waits (matched by name), and the time of this resume is added
        to :attr:`PipelineStatus.resumes`; every task counts as pending until the run says
        otherwise.

        :param inputs: the run's inputs, stored with it to resume it with (if the storage keeps
            inputs; both built-in ones do). Inputs the storage refuses (over its size limit, not
            JSON) are not stored: a warning says so, and a resume then needs them given again.
        :param edges: the graph between the steps, ``[source, target]`` step indices
            (:attr:`PipelineStatus.edges`; more than :data:`MAX_STEP_EDGES` are not kept).
        :raises StateError: if another live process holds the run's lease.
        """
        status = PipelineStatus(
            pipeline_id,
            name,
            steps=[StepStatus(step, tasks=count) for step, count in steps],
            edges=edges if edges is not None and len(edges) <= MAX_STEP_EDGES else None,
        )
        owner = getattr(self.storage, "lease_owner", None)
        if owner is not None and pipeline_id not in self._leases:
            holder = await owner(pipeline_id)
            if holder is not None and holder != _OWNER:
                raise StateError(
                    f"run {pipeline_id} is live in another process ({holder}); it can be "
                    "resumed once it is abandoned (its lease lapsed)"
                )
        try:
            earlier = await self.storage.load(pipeline_id)
        except CorruptRecordError as exc:
            logger.warning("run %s: its earlier record is unreadable, starting anew: %s", name, exc)
            earlier = None
        if earlier is not None:
            _carry_history(earlier, status)
        self._live[pipeline_id] = status
        await self._save(status)
        if inputs is not None:
            await self._save_inputs(pipeline_id, name, inputs)
        await self.hold_lease(pipeline_id)

    async def _save_inputs(self, pipeline_id: str, name: str, inputs: Mapping[str, Any]) -> None:
        save = getattr(self.storage, "save_inputs", None)
        if save is None:
            return
        note = await save(pipeline_id, inputs)
        if note is not None:
            logger.warning(
                "run %s (%s): its inputs are not stored (%s); resuming it needs them given again",
                pipeline_id,
                name,
                note,
            )

    async def load_inputs(self, pipeline_id: str) -> dict[str, Any]:
        """The inputs stored with a run (what :meth:`begin` was given).

        :raises StateError: if none are stored: naming why (over the storage's size limit, not
            JSON, a run recorded without them).
        :raises CorruptRecordError: if they cannot be read back.
        """
        load = getattr(self.storage, "load_inputs", None)
        if load is None:
            raise StateError(f"run {pipeline_id}: this storage keeps no inputs; give them again")
        inputs, note = await load(pipeline_id)
        if inputs is not None:
            return dict(inputs)
        if note is not None:
            raise StateError(
                f"run {pipeline_id}: its inputs were not stored ({note}); give them again"
            )
        raise StateError(
            f"run {pipeline_id}: no inputs are stored with it (it was recorded without them, or "
            "its records expired); give them again"
        )

    async def resume_inputs(
        self,
        pipeline_id: str,
        given: Mapping[str, Any] | None,
        *,
        inputs_changed_ok: bool = False,
    ) -> dict[str, Any]:
        """The inputs to resume a run with: the stored ones when none are ``given``; the given
        ones if they are the stored ones (compared as JSON, what a task receives), or if
        ``inputs_changed_ok`` (the run then goes on with the new inputs, which replace the stored
        ones when it begins).

        :raises StateError: if none are given and none are stored (naming why).
        :raises InvalidValueError: if the given inputs differ from the stored ones (naming which)
            and ``inputs_changed_ok`` is false.
        """
        if given is None:
            return await self.load_inputs(pipeline_id)
        given = dict(given)
        try:
            stored = await self.load_inputs(pipeline_id)
        except StateError as exc:  # nothing to compare with: the given ones are all there is
            logger.info("%s; resuming with the inputs given", exc)
            return given
        if inputs_changed_ok:
            return given
        differ = sorted(
            k
            for k in set(stored) | set(given)
            if k not in stored or k not in given or _as_json(stored[k]) != _as_json(given[k])
        )
        if differ:
            shown = ", ".join(
                f"{k}: stored {_shown(stored, k)}, given {_shown(given, k)}" for k in differ[:5]
            )
            more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
            raise InvalidValueError(
                f"run {pipeline_id} ran with other inputs ({shown}{more}); resume it without "
                "inputs to use the stored ones, or allow the change (inputs_changed_ok=True, "
                "--inputs-changed-ok)"
            )
        return given

    async def restore_steps(self, pipeline_id: str, indices: Sequence[int]) -> None:
        """Steps of a run in progress that finished in an earlier run of it (a resumed
        sequential pipeline): every task of each counts as done."""
        status = self._live.get(pipeline_id)
        if status is None:
            return
        for index in indices:
            step = status.steps[index]
            step.clear_counts()
            step.tasks_done = step.tasks
            step.settle_status()
        await self.save_steps(pipeline_id, set(indices))

    def set_explainer(self, pipeline_id: str, explain: Callable[[int], str] | None) -> None:
        """What answers :meth:`explain_step` for a run this process executes (``None``: the
        run ended)."""
        if explain is None:
            self._explainers.pop(pipeline_id, None)
        else:
            self._explainers[pipeline_id] = explain

    def explain_step(self, pipeline_id: str, index: int) -> str | None:
        """Why step ``index`` of a run this process executes is where it is, asked of the run
        now (what its ``explain`` says of that step); ``None`` if the run is not live here.

        :raises UnknownIdError: for a step the run does not have.
        """
        explain = self._explainers.get(pipeline_id)
        if explain is None:
            return None
        status = self._live.get(pipeline_id)
        if status is not None and not 0 <= index < len(status.steps):
            raise UnknownIdError(f"run {pipeline_id} has no step {index}")
        return explain(index)

    async def ask_explain(self, pipeline_id: str, index: int) -> bool:
        """Asks the orchestrator of a run in another process why step ``index`` waits: it
        stores its answer with the step (``waiting``) within about a second, and keeps it
        current for a while (:mod:`taskiq_flow.tracking.asks`).

        :return: whether the ask was stored (the storage keeps asks: Redis does).
        """
        from taskiq_flow.tracking.asks import asks_of

        asks = asks_of(self.storage)
        return False if asks is None else await asks.ask(pipeline_id, index)

    async def take_asks(self, pipeline_id: str) -> list[int]:
        """The steps of a run asked about by :meth:`ask_explain` since the last take."""
        from taskiq_flow.tracking.asks import asks_of

        asks = asks_of(self.storage)
        return [] if asks is None else await asks.take(pipeline_id)

    def live(self, pipeline_id: str) -> PipelineStatus | None:
        """The in-progress record of a run this process is executing."""
        return self._live.get(pipeline_id)

    async def save_steps(self, pipeline_id: str, indices: set[int]) -> None:
        """Writes some steps of a run in progress, if the storage keeps steps one by one (a
        durable storage); in-memory storage reads the live record instead."""
        save = getattr(self.storage, "save_steps", None)
        status = self._live.get(pipeline_id)
        if save is None or status is None or not indices:
            return
        await save(pipeline_id, {i: status.steps[i] for i in indices})
        if self.changes is not None:
            await self.changes.bump(pipeline_id, indices)

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Stores finished nodes' values, if the storage keeps them (both built-in ones do)."""
        save = getattr(self.storage, "save_results", None)
        if save is not None and results:
            await save(pipeline_id, results)

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """The finished nodes' values of a run (empty if the storage keeps none)."""
        load = getattr(self.storage, "load_results", None)
        if load is None:
            return {}
        return {k: v for k, v in (await load(pipeline_id)).items() if k >= 0}

    async def save_growth(self, pipeline_id: str, records: list[dict[str, Any]]) -> None:
        """Appends how a run grew (records in order; what a resume grows again from). Kept with
        the run's values, as entries ``-1``, ``-2``, ... (node ids are never negative).

        :raises PayloadTooLargeError: a record over the storage's limits (nothing is stored).
        """
        save = getattr(self.storage, "save_results", None)
        if save is None or not records:
            return
        start = self._growth_count.get(pipeline_id)
        if start is None:
            start = len(await self.load_growth(pipeline_id))
        await save(pipeline_id, {-1 - (start + i): r for i, r in enumerate(records)})
        self._growth_count[pipeline_id] = start + len(records)

    async def load_growth(self, pipeline_id: str) -> list[dict[str, Any]]:
        """How a run grew, in order (empty for a run that did not)."""
        load = getattr(self.storage, "load_results", None)
        if load is None:
            return []
        stored = {k: v for k, v in (await load(pipeline_id)).items() if k < 0}
        records = [stored[k] for k in sorted(stored, reverse=True)]
        if stored and min(stored) != -len(stored):
            raise CorruptRecordError(f"run {pipeline_id}: its growth records have a gap")
        return records

    async def flush(self, pipeline_id: str) -> None:
        """Writes the in-progress record of a run to storage."""
        status = self._live.get(pipeline_id)
        if status is not None:
            await self._save(status)

    async def _save(self, status: PipelineStatus) -> None:
        """Writes a whole record, and counts the write (the storage's change counter)."""
        await self.storage.save(status)
        if self.changes is not None:
            await self.changes.bump(status.pipeline_id, None)

    async def end(self, pipeline_id: str, state: RunState, error: str | None = None) -> None:
        """A run ends."""
        self._growth_count.pop(pipeline_id, None)
        self._explainers.pop(pipeline_id, None)
        status = self._live.pop(pipeline_id, None)
        if status is None:
            return
        status.status = state
        status.error = error
        status.finished_at = time.time()
        for step in status.steps:
            step.close_segments(status.finished_at)
        if state != "done":
            # Nothing runs on for this run: what was out or waiting is cancelled.
            for step in status.steps:
                step.tasks_cancelled += step.tasks_pending + step.tasks_running
                step.tasks_cancelled += step.tasks_retrying
                step.tasks_running = step.tasks_retrying = 0
                if step.status in ("pending", "running", "retrying"):
                    step.status = "cancelled"
        try:
            await self._save(status)
        finally:
            await self.release_lease(pipeline_id)

    # -- read by users ---------------------------------------------------------------------------

    async def get_status(self, pipeline_id: str) -> PipelineStatus:
        """The status of a run: its state, times and steps.

        :raises UnknownIdError: if no run has that id (or it was deleted).
        :raises CorruptRecordError: if its record cannot be read back.
        """
        live = self._live.get(pipeline_id)
        if live is not None:
            return copy_status(live)
        status = await self.storage.load(pipeline_id)
        if status is None:
            raise UnknownIdError(f"no pipeline run with id {pipeline_id!r}")
        return status

    async def list_pipelines(self, status: RunState | None = None) -> list[PipelineStatus]:
        """Every tracked run, oldest first, optionally only those in one state."""
        records = []
        for pipeline_id in await self.storage.ids():
            try:
                record = await self.storage.load(pipeline_id)
            except CorruptRecordError as exc:
                logger.warning("skipping run %s: %s", pipeline_id, exc)
                continue
            if record is not None and (status is None or record.status == status):
                records.append(record)
        return sorted(records, key=lambda r: r.started_at)

    async def delete_pipeline(self, pipeline_id: str) -> bool:
        """Deletes a run's records; returns whether there were any."""
        self._live.pop(pipeline_id, None)
        task = self._leases.pop(pipeline_id, None)
        if task is not None:
            task.cancel()
        self._explainers.pop(pipeline_id, None)
        deleted = await self.storage.delete(pipeline_id)
        if self.changes is not None:
            await self.changes.forget(pipeline_id)
        return deleted

    async def cleanup(self, older_than: float) -> int:
        """Deletes finished runs that ended more than ``older_than`` seconds ago.

        :return: how many were deleted.
        :raises InvalidValueError: for a negative age.
        """
        if not older_than >= 0:
            raise InvalidValueError(f"older_than must be >= 0 seconds, got {older_than!r}")
        cutoff = time.time() - older_than
        deleted = 0
        for record in await self.list_pipelines():
            if record.finished_at is not None and record.finished_at < cutoff:
                deleted += await self.storage.delete(record.pipeline_id)
                if self.changes is not None:
                    await self.changes.forget(record.pipeline_id)
        return deleted


def _carry_history(earlier: PipelineStatus, status: PipelineStatus) -> None:
    """What a resumed run keeps of its earlier record: its first start, each step's attempts,
    errors, times and waits (steps matched by name, in order), and one more resume. A step that
    had finished every task stays done; any other starts again from pending (the run restores
    what it finished)."""
    status.started_at = earlier.started_at
    status.resumes = [*earlier.resumes, time.time()]
    by_name: dict[str, list[StepStatus]] = {}
    for old in earlier.steps:
        by_name.setdefault(old.name, []).append(old)
    for step in status.steps:
        olds = by_name.get(step.name)
        if not olds:
            continue
        old = olds.pop(0)
        step.attempts = old.attempts
        step.error = old.error
        step.duration_ms = old.duration_ms
        step.started_at = old.started_at
        step.finished_at = old.finished_at
        step.waited = dict(old.waited)
        step.segments = [list(seg) for seg in old.segments]
        step.close_segments(status.resumes[-1])
        if old.status == "done" and old.tasks == step.tasks:
            step.tasks_done = step.tasks
            step.ready_at, step.sent_at, step.first_wait = old.ready_at, old.sent_at, old.first_wait
        step.settle_status()


def _as_json(value: Any) -> Any:
    """A value as a task receives it over JSON (what stored inputs are compared as)."""
    try:
        return to_jsonable_python(value, fallback=repr)
    except Exception:  # a cycle or a value too deep: compared as itself
        return value


def _shown(values: Mapping[str, Any], key: str) -> str:
    if key not in values:
        return "nothing"
    text = repr(values[key])
    return text if len(text) <= 40 else text[:39] + "…"
