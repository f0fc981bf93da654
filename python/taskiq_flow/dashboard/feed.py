"""The live feed: one poller reads tracking once per tick and tells every open page what changed.

However many pages are open, a tick makes one pass over tracking: the runs list needs every run,
a run page needs its run, and a run read for one page serves them all. A run this process is
executing is read from :meth:`~taskiq_flow.tracking.PipelineTrackingManager.live` (no copy); any
other from the storage. A finished run is read again only every :data:`FINISHED_EVERY` seconds
(it changes only when it is resumed or deleted; deletion shows at once, as its id goes).

Each page first gets a snapshot, then per tick only what changed: a run page the steps whose
record changed (a step is compared by a tuple of its fields), a list page the rows of its page
that changed and their order. The bytes sent per tick grow with what changed, not with the run.

A run page also gets the run's dead letters (a ``letters`` event): read from the dashboard's
dead-letter store with the run's first snapshot, then again only when the run's failures change
(its failed tasks, failed steps or state), once more a tick later when the store is elsewhere
(Redis: a record may be written just after the failure it follows), and after a replay
(:meth:`Feed.letters_changed`). One read per run per such tick, however many pages watch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.exceptions import CorruptRecordError
from taskiq_flow.report import STATUS_COLOURS, _kind_colour, segment_kind, step_segments
from taskiq_flow.retry import DeadLetterQueue, DeadLetterStore, list_dead_letters
from taskiq_flow.tracking import (
    InMemoryPipelineStorage,
    PipelineStatus,
    PipelineTrackingManager,
    StepStatus,
)
from taskiq_flow.tracking.recorder import SEGMENT_REASONS

__all__ = [
    "FINISHED_EVERY",
    "LETTERS_SHOWN",
    "PAGE_SIZE",
    "Feed",
    "Subscription",
    "letter_row",
    "run_summary",
    "step_record",
]

logger = logging.getLogger(__name__)

#: Seconds between two reads of a run that has finished.
FINISHED_EVERY = 5.0
#: Runs per page of the runs list.
PAGE_SIZE = 50
#: Messages a page may fall behind before it is sent a new snapshot instead.
_BACKLOG = 64
#: Most dead letters a run page lists (the oldest first), and the longest error shown of one.
LETTERS_SHOWN = 200
_ERROR_SHOWN = 2_000

_UNFINISHED = ("pending", "running", "retrying")


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000.0, 1)


def _now_ms() -> int:
    """The server's clock, epoch ms (pages draw open segments up to it)."""
    return int(time.time() * 1000)


def _fingerprint(step: StepStatus) -> tuple[Any, ...]:
    return (
        step.status,
        step.tasks,
        step.tasks_done,
        step.tasks_running,
        step.tasks_retrying,
        step.tasks_failed,
        step.tasks_skipped,
        step.tasks_cancelled,
        step.attempts,
        step.duration_ms,
        step.started_at,
        step.finished_at,
        step.error,
        step.waiting,
        step.ready_at,
        step.sent_at,
        len(step.waited),
        sum(step.waited.values()),
        len(step.segments),
        tuple(step.segments[-1]) if step.segments else None,
    )


def _segments(step: StepStatus, t0: float) -> list[list[Any]]:
    """A step's bar as ``[start_ms, end_ms, kind]`` from the run's start: its recorded timeline
    while it is unfinished (the open segment's end ``None``: the page draws it up to now, so it
    grows between ticks), else the report's bar."""
    segs = step.segments
    if segs and step.status in _UNFINISHED:
        kinds = _KINDS
        return [
            [
                round((a - t0) * 1000.0, 1) if a > t0 else 0.0,
                None if b is None else round((b - t0) * 1000.0, 1),
                kinds.get(k) or segment_kind(k),
            ]
            for a, b, k in segs
        ]
    return [
        [round((a - t0) * 1000.0, 1), round((b - t0) * 1000.0, 1), k]
        for a, b, k in step_segments(step, t0)
    ]


#: The timeline kind of each reason a step's segments record.
_KINDS = {reason: segment_kind(reason) for reason in SEGMENT_REASONS}


def step_record(step: StepStatus, t0: float) -> list[Any]:
    """One step as a page gets it: ``[status, tasks, done, running, retrying, failed, skipped,
    cancelled, attempts, duration_ms, error, waiting, segments, waited]``; segments are the
    report's bars (:func:`~taskiq_flow.report.step_segments`) as ``[start_ms, end_ms, kind]``
    from the run's start (an unfinished step's open segment ends ``None``: now), ``waited`` the
    seconds waited by the core's reason."""
    return [
        step.status,
        step.tasks,
        step.tasks_done,
        step.tasks_running,
        step.tasks_retrying,
        step.tasks_failed,
        step.tasks_skipped,
        step.tasks_cancelled,
        step.attempts,
        None if step.duration_ms is None else round(step.duration_ms, 1),
        step.error,
        step.waiting,
        _segments(step, t0),
        {reason: round(seconds, 3) for reason, seconds in step.waited.items()},
    ]


def _run_head(status: PipelineStatus) -> dict[str, Any]:
    return {
        "id": status.pipeline_id,
        "name": status.name,
        "status": status.status,
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "error": status.error,
        "resumes": len(status.resumes),
    }


def run_summary(status: PipelineStatus) -> dict[str, Any]:
    """A run as a row of the runs list: its name, state, times, steps done of steps, how many
    tasks wait (pending or retrying) and, of the steps that wait, the first one's name and why."""
    done = waiting_tasks = 0
    first_waiting: tuple[str, str] | None = None
    waiting_steps = 0
    for step in status.steps:
        if step.status == "done":
            done += 1
        waits = step.tasks_pending + step.tasks_retrying
        waiting_tasks += waits
        if waits and step.waiting and step.status in _UNFINISHED:
            waiting_steps += 1
            if first_waiting is None:
                first_waiting = (step.name, step.waiting)
    took = (
        (status.finished_at - status.started_at) * 1000.0
        if status.finished_at is not None
        else None
    )
    live = status.status == "running"
    return {
        **_run_head(status),
        "took_ms": None if took is None else round(took, 1),
        "steps_done": done,
        "steps": len(status.steps),
        "tasks_waiting": waiting_tasks if live else 0,
        "waiting_steps": waiting_steps if live else 0,
        "first_waiting": list(first_waiting) if live and first_waiting else None,
    }


def _sse(event: str, data: Any) -> str:
    # One line of JSON: no newline can end the event early (json.dumps escapes them).
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class Subscription:
    """One open page: what it watches and the messages waiting for it (SSE text)."""

    run_id: str | None = None
    status: str = ""
    name: str = ""
    page: int = 0
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    #: It needs a whole snapshot next (new, or it fell behind).
    fresh: bool = True
    #: It was told its run is gone.
    gone: bool = False
    #: A list page: the rows it was last sent, by run id, and their order.
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    total: int = -1
    #: Bytes of every message put in its queue (what the feed's cost per tick is measured by).
    sent_bytes: int = 0

    def put(self, message: str) -> None:
        if self.queue.qsize() >= _BACKLOG:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.fresh = True
            self.rows, self.order, self.total = {}, [], -1
            return
        self.sent_bytes += len(message)
        self.queue.put_nowait(message)


def _failure_mark(status: PipelineStatus) -> tuple[int, int, str]:
    """What changes when a run gains a dead letter: its failed tasks, failed steps and state."""
    tasks = steps = 0
    for step in status.steps:
        tasks += step.tasks_failed
        if step.status == "failed":
            steps += 1
    return tasks, steps, status.status


def letter_row(record: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as a run page lists it: id, step, task, attempts, error (at most 2,000
    characters) and when it failed; never its arguments (they may hold anything)."""
    error = str(record["error"])
    return {
        "id": record["id"],
        "step": record["step"],
        "task": record["task_name"],
        "attempts": record["attempts"],
        "error": error if len(error) <= _ERROR_SHOWN else error[: _ERROR_SHOWN - 1] + "\u2026",
        "failed_at": record["failed_at"],
    }


@dataclass
class _Letters:
    """What the feed last read of a run's dead letters."""

    mark: tuple[int, int, str] | None
    text: str
    #: Read again at the next tick (a replay, or a record written just after its failure).
    due: bool = False


@dataclass
class _Run:
    """What the feed last read of a run."""

    status: PipelineStatus
    prints: list[tuple[Any, ...]]
    records: list[list[Any]]
    summary: dict[str, Any]
    read_at: float
    head: dict[str, Any]
    snapshot_text: str | None = None
    snapshot_tick: int = -1
    #: The run's change counter when it was read (``None``: it keeps none).
    counter: int | None = None


class Feed:
    """The shared poller of one dashboard.

    :param tracking: where runs are read.
    :param interval: seconds between two ticks (at most a few per second).
    """

    def __init__(
        self,
        tracking: PipelineTrackingManager,
        interval: float = 0.5,
        dead_letters: DeadLetterStore | None = None,
    ) -> None:
        if not (math.isfinite(interval) and interval >= 0.05):
            raise ValueError(f"interval must be at least 0.05 seconds, got {interval!r}")
        self.tracking = tracking
        self.interval = interval
        #: Where run pages' dead letters are read (``None``: pages list none).
        self.dead_letters = dead_letters
        #: Reads of a run's dead letters (one per run whose failures changed, per tick).
        self.letter_reads = 0
        self._letters: dict[str, _Letters] = {}
        self.subscriptions: set[Subscription] = set()
        #: Ticks made, and tracking reads (passes) made: one per tick; reads of change
        #: counters (one round trip per tick for every run kept in Redis).
        self.ticks = 0
        self.reads = 0
        self.counter_reads = 0
        #: Counters read with a record about to be loaded whole (set on it once loaded).
        self._counters: dict[str, int | None] = {}
        self._runs: dict[str, _Run] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Records in this process: a finished run changes only by running again (then it is
        # live) or by being deleted (then its id goes); it is never read twice.
        self._in_process = isinstance(tracking.storage, InMemoryPipelineStorage)

    # -- pages come and go ---------------------------------------------------------------------

    def subscribe(self, sub: Subscription) -> Subscription:
        """Adds an open page; it gets a snapshot at the next tick (soon: the poller wakes)."""
        self.subscriptions.add(sub)
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Removes a page that closed."""
        self.subscriptions.discard(sub)

    def start(self) -> None:
        """Starts the poller in the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stops the poller and ends every page's stream (an empty message ends one)."""
        for sub in list(self.subscriptions):
            sub.queue.put_nowait("")
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.subscriptions:
                self._wake.clear()
                await self._wake.wait()
            began = loop.time()
            try:
                await self.tick()
            except Exception:  # Redis stalled: the next tick tries again
                logger.exception("dashboard: reading tracking failed")
            self._wake.clear()
            rest = self.interval - (loop.time() - began)
            with contextlib.suppress(asyncio.TimeoutError):
                # A new page wakes the poller early, never sooner than a fifth of a tick.
                await asyncio.sleep(min(rest, self.interval / 5))
                await asyncio.wait_for(self._wake.wait(), max(0.0, rest - self.interval / 5))

    # -- one tick --------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass: reads what the open pages need, sends each what changed."""
        subs = list(self.subscriptions)
        if not subs:
            return
        self.ticks += 1
        want_all = any(s.run_id is None for s in subs)
        wanted = {s.run_id for s in subs if s.run_id is not None}
        changed = await self._read(want_all, wanted)
        letters = await self._read_letters(wanted, changed)
        texts: dict[str, str] = {}  # a run's delta, encoded once for all its pages
        for sub in subs:
            if sub.run_id is None:
                self._send_list(sub)
            else:
                fresh = sub.fresh
                self._send_run(sub, changed.get(sub.run_id), texts)
                known = self._letters.get(sub.run_id)
                if known is not None and not sub.gone and (fresh or sub.run_id in letters):
                    sub.put(known.text)

    def letters_changed(self, run_id: str) -> None:
        """A run's dead letters changed (a replay): its pages get them anew at the next tick,
        which comes at once."""
        known = self._letters.get(run_id)
        if known is not None:
            known.due = True
        self._wake.set()

    async def _read_letters(
        self, wanted: set[str], changed: Mapping[str, dict[str, Any] | None]
    ) -> set[str]:
        """Reads the dead letters of the watched runs whose failures changed; returns the ids
        of the runs whose list was read anew."""
        store = self.dead_letters
        for gone in set(self._letters) - wanted:
            del self._letters[gone]
        if store is None:
            return set()
        read: set[str] = set()
        for run_id in wanted:
            run = self._runs.get(run_id)
            if run is None:
                self._letters.pop(run_id, None)
                continue
            known = self._letters.get(run_id)
            if known is not None and not known.due and not changed.get(run_id):
                continue  # nothing of the run changed: neither did its failures
            mark = _failure_mark(run.status)
            if known is not None and not known.due and mark == known.mark:
                continue
            self.letter_reads += 1
            try:
                records, problems = await list_dead_letters(store, run_id)
            except Exception as exc:  # Redis stalled: the next tick tries again
                logger.warning(
                    "dashboard: reading the dead letters of run %s failed: %s", run_id, exc
                )
                continue
            message = {
                "letters": [letter_row(r) for r in records[:LETTERS_SHOWN]],
                "total": len(records),
                "problems": problems,
            }
            # A store elsewhere may get a record just after the failure it follows: once more.
            again = known is None or mark != known.mark
            due = again and not isinstance(store, DeadLetterQueue)
            text = _sse("letters", message)
            if known is None or text != known.text:
                read.add(run_id)
            self._letters[run_id] = _Letters(mark, text, due)
        return read

    async def _read(
        self, want_all: bool, wanted: set[str], prune: bool = True
    ) -> dict[str, dict[str, Any] | None]:
        """Reads the runs; returns, per run id read, its delta (``None``: gone)."""
        if prune:
            self.reads += 1
        tracking = self.tracking
        if want_all:
            ids = set(await tracking.storage.ids()) | {i for i in wanted if tracking.live(i)}
            for gone in set(self._runs) - ids:
                del self._runs[gone]
            targets = ids
        else:
            targets = wanted
            for old in set(self._runs) - wanted if prune else ():
                del self._runs[old]
        now = time.monotonic()
        deltas: dict[str, dict[str, Any] | None] = {}
        remote: list[str] = []
        for run_id in targets:
            status = tracking.live(run_id)
            if status is not None:  # executed here: its live record, read in place
                deltas[run_id] = self._update(run_id, status, now)
                continue
            known = self._runs.get(run_id)
            if (
                known is not None
                # (what was seen then: a live record read earlier may have ended since)
                and known.head["status"] != "running"
                and self._in_process
            ):
                continue
            remote.append(run_id)
        counted = await self._changed(remote, now) if remote else {}
        for run_id in remote:
            how = counted.get(run_id, "whole")
            if how is None:
                continue  # nothing changed
            if isinstance(how, list):
                deltas[run_id] = self._update_steps(run_id, how, now)
                continue
            try:
                status = await tracking.storage.load(run_id)
            except CorruptRecordError as exc:
                logger.warning("dashboard: skipping run %s: %s", run_id, exc)
                status = None
            if status is None:
                self._runs.pop(run_id, None)
                deltas[run_id] = None
                continue
            counter = self._counters.pop(run_id, None)
            deltas[run_id] = self._update(run_id, status, now)
            self._runs[run_id].counter = counter
        return deltas

    async def _changed(self, run_ids: list[str], now: float) -> dict[str, Any]:
        """What to read of each run kept in storage: ``None`` (nothing changed), a list of
        steps (read by :meth:`_update_steps`), or ``"whole"`` (load the record). With change
        counters (Redis), one round trip tells it for all; without, a running run is loaded at
        every tick and a finished one every :data:`FINISHED_EVERY` seconds."""
        changes = self.tracking.changes
        runs = self._runs
        if changes is None:
            return {r: None if self._fresh(runs.get(r), now) else "whole" for r in run_ids}
        seen = []
        for run_id in run_ids:
            known = runs.get(run_id)
            counter = known.counter if known is not None else None
            seen.append((run_id, counter, known is not None and known.head["status"] == "running"))
        self.counter_reads += 1
        answers = await changes.since(seen)
        out: dict[str, Any] = {}
        for run_id, answer in zip(run_ids, answers):
            known = runs.get(run_id)
            if answer.counter is None:  # a record without a counter: as without counters
                out[run_id] = None if self._fresh(known, now) else "whole"
                self._counters[run_id] = None
            elif known is None or answer.whole:
                out[run_id] = "whole"
                self._counters[run_id] = answer.counter
            elif answer.steps:
                read = await changes.read_steps(run_id, answer.steps)
                if read is None or any(i >= len(known.status.steps) for i in answer.steps):
                    out[run_id] = "whole"
                    self._counters[run_id] = answer.counter
                else:
                    for index, step in zip(answer.steps, read):
                        known.status.steps[index] = step
                    known.counter = answer.counter
                    out[run_id] = answer.steps
            else:
                known.counter = answer.counter
                out[run_id] = None
        return out

    @staticmethod
    def _fresh(known: _Run | None, now: float) -> bool:
        """Whether a finished run was read recently enough (without change counters)."""
        return (
            known is not None
            and known.head["status"] != "running"
            and now - known.read_at < FINISHED_EVERY
        )

    def _update_steps(self, run_id: str, indices: list[int], now: float) -> dict[str, Any]:
        """What changed in a run whose steps ``indices`` were read anew (in its record)."""
        known = self._runs[run_id]
        status = known.status
        t0 = status.started_at
        steps: dict[str, list[Any]] = {}
        for i in indices:
            mark = _fingerprint(status.steps[i])
            if mark != known.prints[i]:
                known.prints[i] = mark
                known.records[i] = step_record(status.steps[i], t0)
                steps[str(i)] = known.records[i]
        known.read_at = now
        if not steps:
            return {}
        known.summary = run_summary(status)
        known.snapshot_text = None
        kinds = {seg[2] for rec in steps.values() for seg in rec[12]}
        return {"steps": steps, "palette": palette(kinds), "now": _now_ms()}

    def _update(self, run_id: str, status: PipelineStatus, now: float) -> dict[str, Any]:
        """Compares a run read now with what was read before; returns what changed."""
        known = self._runs.get(run_id)
        t0 = status.started_at
        if known is None or len(known.prints) != len(status.steps) or known.status.started_at != t0:
            prints = [_fingerprint(s) for s in status.steps]
            records = [step_record(s, t0) for s in status.steps]
            head = _run_head(status)
            self._runs[run_id] = _Run(status, prints, records, run_summary(status), now, head)
            return {"full": True}
        steps: dict[str, list[Any]] = {}
        prints, records = known.prints, known.records
        for i, step in enumerate(status.steps):
            mark = _fingerprint(step)
            if mark != prints[i]:
                prints[i] = mark
                records[i] = step_record(step, t0)
                steps[str(i)] = records[i]
        head = _run_head(status)
        delta: dict[str, Any] = {}
        if head != known.head:
            known.head = head
            delta["run"] = head
        if steps:
            delta["steps"] = steps
        if delta:
            known.summary = run_summary(status)
            known.snapshot_text = None
            if "steps" in delta:
                kinds = {seg[2] for rec in steps.values() for seg in rec[12]}
                delta["palette"] = palette(kinds)
            delta["now"] = _now_ms()  # the page's open segments end now
        known.status, known.read_at = status, now
        return delta

    async def read_run(self, run_id: str) -> PipelineStatus | None:
        """A run for a page about to open it: live in this process (no read), as the feed holds
        it, or read now (the tick that follows then reads it no more than it would have)."""
        live = self.tracking.live(run_id)
        if live is not None:
            return live
        if run_id not in self._runs:
            await self._read(False, {run_id}, prune=False)
        known = self._runs.get(run_id)
        return known.status if known is not None else None

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        """A run as a page first gets it (``None`` if it was not read, or is gone)."""
        known = self._runs.get(run_id)
        if known is None:
            return None
        kinds = {seg[2] for rec in known.records for seg in rec[12]}
        return {
            "run": known.head,
            "names": [s.name for s in known.status.steps],
            "steps": known.records,
            "palette": palette(kinds),
            "now": _now_ms(),
        }

    def _send_run(
        self, sub: Subscription, delta: dict[str, Any] | None, texts: dict[str, str]
    ) -> None:
        run_id = sub.run_id
        assert run_id is not None
        if run_id not in self._runs:
            if not sub.gone:
                sub.put(_sse("gone", {"id": run_id}))
                sub.gone = True
            sub.fresh = True  # should it come back, it starts from a snapshot
            return
        sub.gone = False
        if sub.fresh or (delta is not None and delta.get("full")):
            sub.fresh = False
            known = self._runs[run_id]
            if known.snapshot_text is None or known.snapshot_tick != self.ticks:
                # One encoding for every page that opens at this tick.
                known.snapshot_text = _sse("snapshot", self.snapshot(run_id))
                known.snapshot_tick = self.ticks
            sub.put(known.snapshot_text)
        elif delta:
            if run_id not in texts:
                texts[run_id] = _sse("delta", delta)
            sub.put(texts[run_id])

    def _send_list(self, sub: Subscription) -> None:
        name = sub.name.casefold()
        rows = [
            r.summary
            for r in self._runs.values()
            if (not sub.status or r.summary["status"] == sub.status)
            and (not name or name in r.summary["name"].casefold())
        ]
        rows.sort(key=lambda r: (-r["started_at"], r["id"]))
        page = rows[sub.page * PAGE_SIZE : (sub.page + 1) * PAGE_SIZE]
        order = [r["id"] for r in page]
        changed = {r["id"]: r for r in page if sub.rows.get(r["id"]) is not r}
        if not sub.fresh and not changed and order == sub.order and len(rows) == sub.total:
            return
        message: dict[str, Any] = {"total": len(rows), "page": sub.page, "size": PAGE_SIZE}
        if sub.fresh or order != sub.order:
            message["order"] = order
        message["rows"] = changed
        sub.put(_sse("snapshot" if sub.fresh else "delta", message))
        sub.fresh = False
        sub.rows = {r["id"]: r for r in page}
        sub.order, sub.total = order, len(rows)


def palette(kinds: set[str]) -> dict[str, str]:
    """The colour of each kind of timeline segment but ``running`` (drawn in its step's status
    colour), as the report draws them."""
    return {kind: _kind_colour(kind, "done") for kind in kinds if kind != "running"}


def colours() -> Mapping[str, str]:
    """The status colours pages draw with (the report's)."""
    return STATUS_COLOURS
