"""A self-contained HTML report of one run: its DAG, a timeline, its slowest steps and failures.

One file, nothing fetched: the CSS, the pictures (inline SVG, laid out here in Python) and a few
lines of script are all inside it, so it opens offline and can be mailed or kept as a CI artifact.

::

    status = await tracking.get_status(pipeline.pipeline_id)
    write_report("run.html", status, dag=pipeline.dag)

What it shows:

- the DAG (when given), laid out by level, each node coloured by its step's outcome; the critical
  path outlined; a graph of more than ``max_dag_nodes`` nodes is drawn with nodes of the same name
  collapsed into one node with a count;
- a timeline (Gantt) of the run, from its start, one row per step. A bar is made of segments
  ``(start, end, kind)`` (epoch seconds; kinds such as ``waiting:run cap``, ``waiting:cap``,
  ``queued``, ``running``); without given segments (:func:`default_segments`) a step's bar
  starts when its first task became ready: what the core recorded as holding that task back
  (``waiting:...``), then ``queued`` from its sending to its start where it ran, then
  ``running`` (for a one-task step that was retried, ``retrying`` up to its last attempt). Every
  moment from "ready" to "running" has its reason; what a map's other tasks waited for is in its
  row's title, summed by reason. A resumed run has a line at each resume;
- the slowest steps and the critical path (by tracked durations), outlined in the timeline and
  the DAG in a colour no status uses (:data:`CRITICAL_COLOUR`, dashed);
- a table of retries and failures (steps with more attempts than tasks, or failed) with errors;
- every step in a table: status, tasks done of tasks (a mapped step is one row with its count;
  its title has the count in each state), attempts, duration.

The page fits a 1400 px wide window without scrolling sideways: the DAG and the timeline are
scaled down to the page's width when they are wider.

All user text (names, errors, segment kinds) is escaped; no user text is placed inside the script,
and the page's Content-Security-Policy lets only that script run (by its hash) and fetch nothing.
The ``#timeline`` element carries its scale (``data-t0``, ``data-x0``, ``data-px-per-ms``) and
each segment its times (``data-start-ms``, ``data-end-ms``, ms from ``data-t0``), so a bar can be
checked against the tracking record.

Size: the timeline and the steps table are written in chunks that the browser skips while off
screen. Measured in headless chromium on a shared 2-core machine (``benches/report_render.py``):
10^4 steps (6.5 MB) render in 0.4-0.65 s, 3 x 10^4 distinct steps in ~1 s, 5 x 10^4 in 1.2-2 s;
past ``max_timeline_rows`` steps (20,000) the timeline has one row per step name, and 10^5 steps
of 20 names (29 MB) render in 1.2-1.4 s.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskiq_flow._duration import duration, duration_ms
from taskiq_flow.pictures import TIMES, GraphView, Layout, SimpleGraph, layout
from taskiq_flow.tracking import PipelineStatus, StepStatus

__all__ = [
    "CRITICAL_COLOUR",
    "STATUS_COLOURS",
    "Segment",
    "default_segments",
    "recorded_graph",
    "render_report",
    "segment_kind",
    "step_segments",
    "write_report",
]

#: One piece of a step's bar: ``(start, end, kind)``, times in epoch seconds.
Segment = tuple[float, float, str]

#: Fill colour of each step status (DAG nodes and ``running`` segments).
STATUS_COLOURS: dict[str, str] = {
    "done": "#2e7d32",
    "failed": "#c62828",
    "running": "#1565c0",
    "retrying": "#ef6c00",
    "skipped": "#9e9e9e",
    "cancelled": "#616161",
    "pending": "#cfd8dc",
}

#: Outline of the critical path (DAG nodes and edges, timeline rows): no status's colour.
CRITICAL_COLOUR = "#6a1b9a"

_KIND_COLOURS: dict[str, str] = {
    "waiting:inputs": "#fff59d",
    "waiting:cap": "#ffcc80",
    "waiting:run cap": "#ffd180",
    "ready": "#e1f5fe",
    "waiting:rate": "#ffe082",
    "waiting:resources": "#bcaaa4",
    "waiting:backoff": "#f8bbd0",
    "open": "#c5cae9",
    "waiting:shared cap": "#ffb74d",
    "queued": "#b39ddb",
    "retrying": "#ffab91",
}
_OTHER_WAIT = "#e6ee9c"

_TIMELINE_WIDTH = 860.0  # px for the whole run
_LABEL_WIDTH = 200.0  # px for the step names left of the bars
_NOTE_WIDTH = 200.0  # px right of the bars for their notes
_ROW = 16.0  # px per timeline row
_BAR = 11.0  # px bar height
_NODE_W = 150.0
_NODE_H = 26.0
_COL_GAP = 70.0
_ROW_GAP = 10.0
_MAX_EDGES = 20_000
_CHUNK = 250  # timeline rows (and table rows) per chunk the browser may skip off screen
_MAX_PROBLEMS = 1000  # rows of the retries-and-failures table
_DASH = "\N{EN DASH}"


def _e(text: object) -> str:
    """Escaped for HTML text and attribute values, control characters removed."""
    s = str(text)
    if any(ord(c) < 32 and c not in "\t\n" for c in s):
        s = "".join(c for c in s if ord(c) >= 32 or c in "\t\n")
    return html.escape(s, quote=True)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return _DASH
    moment = _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _n(x: float) -> str:
    """A coordinate: three decimals, no trailing zeros."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _kind_colour(kind: str, status: str) -> str:
    if kind == "running":
        return STATUS_COLOURS.get(status, STATUS_COLOURS["running"])
    colour = _KIND_COLOURS.get(kind)
    if colour is not None:
        return colour
    return _OTHER_WAIT if kind.startswith("waiting") else "#b0bec5"


#: The core's wait reasons (``StepStatus.waited``) as timeline kinds.
_WAIT_KINDS = {
    "placement": "waiting:resources",
    "shared_cap": "waiting:shared cap",
    "run_cap": "waiting:run cap",
    "step_cap": "waiting:cap",
    "rate": "waiting:rate",
    "ready": "ready",
}
_WAIT_WORDS = {
    "placement": "a worker with room",
    "shared_cap": "the process-wide cap",
    "run_cap": "the run's cap",
    "step_cap": "the step's cap",
    "rate": "a rate token",
    "ready": "the next admission round",
}


def _wait_pieces(step: StepStatus, pieces: list[_Piece], run_start: float | None) -> list[_Piece]:
    """What the step's first task did between becoming ready and starting, drawn before its first
    bar: held back by the core's reason (``first_wait``) from ``ready_at`` to ``sent_at``, then
    ``queued`` until it started where it ran. Nothing is drawn when the times are missing (an
    older record) or out of order (another host's clock, a resumed step that had started)."""
    ready, sent = step.ready_at, step.sent_at
    if not pieces or ready is None or sent is None:
        return pieces
    start = pieces[0].start
    if run_start is not None:
        ready = max(ready, run_start)  # a clock's rounding never puts a wait before the run
    if not ready <= sent <= start:
        return pieces
    before: list[_Piece] = []
    if sent > ready:
        kind = _WAIT_KINDS.get(step.first_wait or "", f"waiting:{step.first_wait}")
        before.append(_Piece(ready, (sent - ready) * 1000.0, kind))
    if start > sent:
        before.append(_Piece(sent, (start - sent) * 1000.0, "queued"))
    return [*before, *pieces]


def _default_pieces(step: StepStatus, run_start: float | None = None) -> list[_Piece]:
    return _wait_pieces(step, _attempt_pieces(step), run_start)


def _attempt_pieces(step: StepStatus) -> list[_Piece]:
    start, end = step.started_at, step.finished_at
    if start is None or end is None or end < start:
        return []
    duration = step.duration_ms
    span_ms = (end - start) * 1000.0
    if step.tasks == 1 and duration is not None and 0 <= duration < span_ms:
        last = end - duration / 1000.0
        if last - start > 1e-6:
            # The last attempt is drawn from the tracked duration itself (epoch floats are only
            # good to a quarter of a microsecond).
            return [
                _Piece(start, (last - start) * 1000.0, "retrying"),
                _Piece(last, duration, "running"),
            ]
    if duration is not None and step.tasks == 1:
        return [_Piece(end - duration / 1000.0, duration, "running")]
    return [_Piece(start, span_ms, "running")]


def default_segments(step: StepStatus, run_start: float | None = None) -> list[Segment]:
    """A step's bar when no segments are given: from ``ready_at`` (its first task ready) to
    ``sent_at``, what the core held that task back for (``first_wait``: ``waiting:run cap``,
    ``waiting:cap``, ...); then ``queued`` until ``started_at`` (sent, not started where it
    runs); then its last ``duration_ms`` up to ``finished_at`` as ``running`` (for a mapped step,
    its whole span); for a one-task step whose span is longer than its last attempt (it was
    retried), ``retrying`` before that.

    :param run_start: the run's start: no segment begins before it.
    """
    return [(p.start, p.start + p.ms / 1000.0, p.kind) for p in _default_pieces(step, run_start)]


def segment_kind(reason: str) -> str:
    """The timeline kind of a reason recorded in :attr:`StepStatus.segments`: ``running``;
    ``open`` while tasks a step added run; the waits as :func:`default_segments` names them
    (``waiting:run cap``, ``waiting:cap``, ``waiting:rate``, ``waiting:backoff``, ...)."""
    if reason == "running":
        return "running"
    if reason == "children":
        return "open"
    if reason == "backoff":
        return "waiting:backoff"
    return _WAIT_KINDS.get(reason, f"waiting:{reason}")


def step_segments(
    step: StepStatus, run_start: float | None = None, now: float | None = None
) -> list[Segment]:
    """A step's bar: the timeline its run recorded as the core's reasons changed
    (:attr:`StepStatus.segments`; a segment still open ends at ``now``, the current time by
    default). Once the step finished, what held it before its first send is drawn as recorded
    (each reason in turn) and the rest from its tasks' own times, as :func:`default_segments`
    draws them (``queued``, ``retrying``, ``running``: what the worker measured). A record
    without a timeline (an older one) gets :func:`default_segments`.

    :param run_start: the run's start: no segment begins before it.
    """
    return [(p.start, p.end, p.kind) for p in _step_pieces(step, run_start, now)]


_FINISHED = ("done", "failed", "skipped", "cancelled")


def _step_pieces(
    step: StepStatus, run_start: float | None = None, now: float | None = None
) -> list[_Piece]:
    if not step.segments:
        return _default_pieces(step, run_start)
    end_now = time.time() if now is None else now
    recorded: list[_Piece] = []
    for start, end, reason in step.segments:
        a = float(start) if run_start is None else max(float(start), run_start)
        b = max(a, end_now if end is None else float(end))
        recorded.append(_Piece(a, (b - a) * 1000.0, segment_kind(str(reason))))
    attempts = _attempt_pieces(step)
    if step.status not in _FINISHED or not attempts:
        return recorded
    # A finished step: what held it before its first send, as recorded (every reason in
    # turn), then its tasks' own times where they ran (queued, retrying, running).
    # The wait's ends are the core's own record (ready_at, sent_at); the recorded reasons
    # divide it.
    cut = step.sent_at if step.sent_at is not None else attempts[0].start
    begin = step.ready_at
    if run_start is not None and begin is not None:
        begin = max(begin, run_start)
    waits: list[_Piece] = []
    for piece in recorded:
        if piece.kind in ("running", "open") or piece.start >= cut:
            continue
        a = piece.start if begin is None or waits else begin
        b = min(piece.end, cut)
        if b > a:
            waits.append(_Piece(a, (b - a) * 1000.0, piece.kind))
    if not waits or cut > attempts[0].start:
        return _default_pieces(step, run_start)
    last = waits[-1]
    last.ms = (cut - last.start) * 1000.0  # up to the send, with no gap
    queued = (
        [_Piece(cut, (attempts[0].start - cut) * 1000.0, "queued")]
        if attempts[0].start > cut
        else []
    )
    return [*waits, *queued, *attempts]


def recorded_graph(status: PipelineStatus) -> SimpleGraph | None:
    """The graph between a run's steps as its record keeps it (:attr:`PipelineStatus.edges`),
    nodes named after the steps; ``None`` when the record keeps none or its edges are not step
    indices."""
    edges = status.edges
    if edges is None:
        return None
    count = len(status.steps)
    pairs: list[tuple[int, int]] = []
    for edge in edges:
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
            return None
        a, b = edge
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < count and 0 <= b < count):
            return None
        pairs.append((a, b))
    return SimpleGraph.from_edges([s.name for s in status.steps], pairs)


def _waits_text(step: StepStatus) -> str:
    """``waited: the run's cap 12 s, the step's cap 0.3 s (its 1000 tasks together)``."""
    parts = [
        f"{_WAIT_WORDS.get(reason, reason)} {duration(seconds)}"
        for reason, seconds in sorted(step.waited.items(), key=lambda item: -item[1])
        if seconds > 0
    ]
    if not parts:
        return ""
    together = f" (its {step.tasks} tasks together)" if step.tasks > 1 else ""
    return f"; waited for {', '.join(parts)}{together}"


@dataclass(slots=True)
class _Piece:
    """A segment as drawn: start (epoch seconds), length in ms, kind."""

    start: float
    ms: float
    kind: str

    @property
    def end(self) -> float:
        return self.start + self.ms / 1000.0


@dataclass(slots=True)
class _Row:
    index: int
    step: StepStatus
    segments: list[_Piece]
    #: How many steps the row stands for (steps of one name, grouped in a very big run).
    steps: int = 1


def _rows(status: PipelineStatus, segments: Mapping[str, Sequence[Segment]] | None) -> list[_Row]:
    rows = []
    for i, step in enumerate(status.steps):
        given = segments.get(step.name) if segments is not None else None
        if given is not None:
            segs = []
            for start, end, kind in given:
                if not (math.isfinite(start) and math.isfinite(end)) or end < start:
                    raise ValueError(
                        f"segment of step {step.name!r} must have finite start <= end, "
                        f"got ({start!r}, {end!r})"
                    )
                segs.append(_Piece(float(start), (float(end) - float(start)) * 1000.0, str(kind)))
        else:
            segs = _step_pieces(step, status.started_at, status.finished_at)
        rows.append(_Row(i, step, segs))
    return rows


_WORST = ("failed", "cancelled", "retrying", "running", "pending", "skipped", "done")


def _severity(status: str) -> int:
    """Lower is worse; an unknown status counts as the worst."""
    return _WORST.index(status) if status in _WORST else 0


def _group_rows(rows: list[_Row]) -> list[_Row]:
    """One row per step name: the span of all its steps (first start to last end), its worst
    status, its tasks, attempts and tasks done summed."""
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(row.step.name, []).append(row)
    out = []
    for name, members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        steps = [m.step for m in members]
        pieces = [p for m in members for p in m.segments]
        starts = [s.started_at for s in steps if s.started_at is not None]
        ends = [s.finished_at for s in steps if s.finished_at is not None]
        start = min(starts) if starts else None
        end = max(ends) if ends else None
        span = (end - start) * 1000.0 if start is not None and end is not None else None
        step = StepStatus(
            name,
            min((s.status for s in steps), key=_severity),
            span,
            sum(s.attempts for s in steps),
            next((s.error for s in steps if s.error), None),
            start,
            end,
            sum(s.tasks for s in steps),
            sum(s.tasks_done for s in steps),
        )
        step.tasks_running = sum(s.tasks_running for s in steps)
        step.tasks_retrying = sum(s.tasks_retrying for s in steps)
        step.tasks_failed = sum(s.tasks_failed for s in steps)
        step.tasks_skipped = sum(s.tasks_skipped for s in steps)
        step.tasks_cancelled = sum(s.tasks_cancelled for s in steps)
        first = min(p.start for p in pieces) if pieces else None
        last = max(p.end for p in pieces) if pieces else None
        segs = (
            [_Piece(first, (last - first) * 1000.0, "running")]
            if first is not None and last is not None
            else []
        )
        out.append(_Row(members[0].index, step, segs, len(members)))
    return out


def _tick_step(span_ms: float) -> float:
    raw = span_ms / 8 if span_ms > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0):
        if raw <= m * power:
            return m * power
    return 10.0 * power


def _timeline_html(
    status: PipelineStatus, rows: list[_Row], critical: set[int], slowest: dict[int, int]
) -> str:
    """The timeline: an axis, then the rows in SVG chunks of :data:`_CHUNK` rows, each chunk
    skipped by the browser while it is off screen (``content-visibility``)."""
    starts = [p.start for r in rows for p in r.segments]
    ends = [p.end for r in rows for p in r.segments]
    # From the run's start (default segments never begin before it; given ones may).
    t0 = min([status.started_at, *starts])
    t1 = max([status.finished_at or t0, *ends, t0])
    span_ms = max((t1 - t0) * 1000.0, 1e-3)
    scale = _TIMELINE_WIDTH / span_ms  # px per ms
    x0 = _LABEL_WIDTH
    width = x0 + _TIMELINE_WIDTH + _NOTE_WIDTH
    tick = _tick_step(span_ms)
    ticks = [k * tick for k in range(int(span_ms / tick + 1e-9) + 1)]
    # Lines across the rows: each resume, and the run's end.
    marks = [(t, "resume", f"resumed {_fmt_time(t)}") for t in status.resumes]
    if status.finished_at is not None:
        marks.append((status.finished_at, "end", f"run {status.status} {_fmt_time(t1)}"))
    out = [
        f'<div id="timeline" data-t0="{t0!r}" data-x0="{_n(x0)}" data-px-per-ms="{scale!r}" '
        f'data-run-start-ms="{(status.started_at - t0) * 1000.0!r}"'
        + (
            f' data-run-end-ms="{(status.finished_at - t0) * 1000.0!r}"'
            if status.finished_at is not None
            else ""
        )
        + f'><svg class="axis" xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" '
        f'height="18" viewBox="0 0 {_n(width)} 18">'
    ]
    for t in ticks:
        out.append(f'<text x="{_n(x0 + t * scale)}" y="12">{_e(duration_ms(t))}</text>')
    out.append("</svg>")
    for first in range(0, len(rows), _CHUNK):
        chunk = rows[first : first + _CHUNK]
        height = _ROW * len(chunk)
        out.append(
            f'<div class="chunk" style="contain-intrinsic-size:auto {_n(width)}px auto '
            f'{_n(height)}px"><svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" '
            f'height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}">'
        )
        for t in ticks:
            x = _n(x0 + t * scale)
            out.append(f'<line class="tick" x1="{x}" y1="0" x2="{x}" y2="{_n(height)}"/>')
        for at, kind, title in marks:
            x = _n(x0 + (at - t0) * 1000.0 * scale)
            out.append(
                f'<line class="mark {kind}" x1="{x}" y1="0" x2="{x}" y2="{_n(height)}">'
                f"<title>{_e(title)}</title></line>"
            )
        for n, row in enumerate(chunk):
            out.append(_timeline_row(row, n * _ROW, t0, x0, scale, critical, slowest))
        out.append("</svg></div>")
    out.append("</div>")
    return "".join(out)


def _timeline_row(
    row: _Row,
    y: float,
    t0: float,
    x0: float,
    scale: float,
    critical: set[int],
    slowest: dict[int, int],
) -> str:
    step = row.step
    classes = ["row"]
    if row.index in critical:
        classes.append("crit")
    if row.index in slowest:
        classes.append("slow")
    text_y = _n(y + _BAR - 1)
    counts = f" ({step.counts_text()})" if step.tasks > 1 else ""
    out = [
        f'<g class="{" ".join(classes)}" data-step="{row.index}">'
        f"<title>{_e(step.name)}: {_e(step.status)}{_e(counts)}, "
        f"{_e(duration_ms(step.duration_ms, _DASH))}{_e(_waits_text(step))}</title>"
        f'<text class="name" x="{_n(x0 - 6)}" y="{text_y}">{_e(_short(step.name, 34))}</text>'
    ]
    for piece in row.segments:
        offset_ms = (piece.start - t0) * 1000.0
        out.append(
            f'<rect class="seg" x="{_n(x0 + offset_ms * scale)}" y="{_n(y)}" '
            f'width="{_n(piece.ms * scale)}" height="{_n(_BAR)}" '
            f'fill="{_kind_colour(piece.kind, step.status)}" data-kind="{_e(piece.kind)}" '
            f'data-start-ms="{offset_ms!r}" data-end-ms="{offset_ms + piece.ms!r}"/>'
        )
    if row.segments:
        end_x = x0 + (max(p.end for p in row.segments) - t0) * 1000.0 * scale
        note = duration_ms(step.duration_ms, _DASH)
        if row.index in slowest:
            note = f"#{slowest[row.index]} slowest · {note}"
        if row.steps > 1:
            note = f"{row.steps} steps, {step.tasks} tasks · {note}"
        elif step.tasks > 1:
            unfinished = step.tasks_done < step.tasks
            note = f"{TIMES}{step.tasks} · {step.counts_text() + ' · ' if unfinished else ''}{note}"
        out.append(f'<text class="note" x="{_n(end_x + 4)}" y="{text_y}">{_e(note)}</text>')
    out.append("</g>")
    return "".join(out)


def _dag_svg(lay: Layout, steps: Sequence[StepStatus], step_of: Sequence[int | None]) -> str:
    """The DAG, by level; each node coloured by its step's status (a group: its worst step's)."""
    by_level = lay.by_level()
    pos: dict[int, tuple[float, float]] = {}
    tallest = max((len(level) for level in by_level), default=0)
    for level, members in enumerate(by_level):
        for row, node in enumerate(members):
            pos[node] = (10 + level * (_NODE_W + _COL_GAP), 10 + row * (_NODE_H + _ROW_GAP))
    width = 20 + len(by_level) * (_NODE_W + _COL_GAP)
    height = 20 + tallest * (_NODE_H + _ROW_GAP)
    critical = set(lay.critical)
    on_path = set(zip(lay.critical, lay.critical[1:]))
    out = [
        f'<svg id="dag" xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" '
        f'height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}">'
    ]
    for s, t, count in lay.edges[:_MAX_EDGES]:
        (ax, ay), (bx, by) = pos[s], pos[t]
        ax, ay, bx, by = ax + _NODE_W, ay + _NODE_H / 2, bx, by + _NODE_H / 2
        mid = (ax + bx) / 2
        cls = "edge crit" if (s, t) in on_path else "edge"
        out.append(
            f'<path class="{cls}" d="M{_n(ax)},{_n(ay)} C{_n(mid)},{_n(ay)} {_n(mid)},{_n(by)} '
            f'{_n(bx)},{_n(by)}"><title>{count} edge{"s" if count > 1 else ""}</title></path>'
        )
    for node, (x, y) in pos.items():
        name = lay.names[node]
        own = [k for k in (step_of[m] for m in lay.members[node]) if k is not None]
        state = min((steps[k].status for k in own), key=_severity, default="pending")
        label = name if lay.counts[node] == 1 else f"{name} {TIMES}{lay.counts[node]}"
        cls = "node crit" if node in critical else "node"
        data = f' data-step="{own[0]}"' if own else ""
        text_fill = "#000" if state in ("pending", "skipped") else "#fff"
        out.append(
            f'<g class="{cls}"{data}><title>{_e(label)}: {_e(state)}</title>'
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(_NODE_W)}" height="{_n(_NODE_H)}" '
            f'rx="6" fill="{STATUS_COLOURS.get(state, "#cfd8dc")}"/>'
            f'<text x="{_n(x + _NODE_W / 2)}" y="{_n(y + _NODE_H / 2 + 4)}" '
            f'fill="{text_fill}">{_e(_short(label, 20))}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#212121}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.meta span{margin-right:18px}.badge{padding:1px 8px;border-radius:9px;color:#fff}
.scroll{overflow:auto;max-height:70vh;border:1px solid #e0e0e0}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}th{background:#fafafa;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{margin:0;white-space:pre-wrap;max-width:80ch;font-size:12px}
svg text{font:11px system-ui,sans-serif}svg .name{text-anchor:end}svg.axis text{fill:#757575}
.chunk{content-visibility:auto}#steps .tr{display:flex;height:22px;align-items:center;
border-bottom:1px solid #eee;white-space:nowrap}#steps .th{font-weight:600;background:#fafafa;
position:sticky;top:0;z-index:1}#steps span{flex:0 0 90px;padding:0 8px;overflow:hidden;
text-overflow:ellipsis}#steps span:first-child{flex-basis:300px}#steps span:nth-child(n+3){
text-align:right;font-variant-numeric:tabular-nums}#steps span:nth-child(6){flex-basis:170px}
#steps span:last-child{flex-basis:200px;text-align:left}#steps .tr.hl{background:#fff8e1}
svg .tick{stroke:#eeeeee}svg .note{fill:#616161}
#dag text{text-anchor:middle}.edge{fill:none;stroke:#90a4ae;stroke-width:1.2}
.edge.crit{stroke:CRIT;stroke-width:2.5;stroke-dasharray:6 3}
.node.crit rect{stroke:CRIT;stroke-width:3;stroke-dasharray:6 3}
.row.crit .name{fill:CRIT;font-weight:600}.row.crit rect{stroke:CRIT;stroke-width:1}
#timeline svg,#dag{max-width:100%;height:auto;display:block}
svg .mark{stroke:#455a64;stroke-width:1.5;stroke-dasharray:4 3}svg .mark.resume{stroke:#00695c}
.legend .crit{background:none;border:2px dashed CRIT;width:9px;height:9px}
.row.slow .note{fill:#000;font-weight:600}rect.seg{stroke:rgba(0,0,0,.3);stroke-width:.6}
.hl rect{stroke:#000!important;stroke-width:2!important}.hl text{font-weight:700}
tr.hl{background:#fff8e1}.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
"""

# No user data is ever put inside this script: it reads data-* attributes from the page.
_JS = """
(function () {
  "use strict";
  var filter = document.getElementById("filter");
  var rows = document.querySelectorAll("#steps .tr[data-name]");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      for (var i = 0; i < rows.length; i++) {
        var name = (rows[i].getAttribute("data-name") || "").toLowerCase();
        rows[i].style.display = name.indexOf(q) < 0 ? "none" : "";
      }
    });
  }
  var lit = [];
  document.addEventListener("click", function (event) {
    var target = event.target;
    var el = target && target.closest ? target.closest("[data-step]") : null;
    for (var i = 0; i < lit.length; i++) { lit[i].classList.remove("hl"); }
    lit = [];
    if (!el) { return; }
    var id = el.getAttribute("data-step");
    if (!/^[0-9]+$/.test(id)) { return; }
    var same = document.querySelectorAll('[data-step="' + id + '"]');
    for (var j = 0; j < same.length; j++) { same[j].classList.add("hl"); lit.push(same[j]); }
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


_CSS = _CSS.replace("CRIT", CRITICAL_COLOUR)

_JS_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()


def render_report(
    status: PipelineStatus,
    dag: GraphView | None = None,
    segments: Mapping[str, Sequence[Segment]] | None = None,
    *,
    slowest: int = 5,
    max_dag_nodes: int = 2000,
    max_timeline_rows: int = 20_000,
    title: str | None = None,
) -> str:
    """The HTML report of one run, as one self-contained page.

    :param status: the run's tracking record (``await tracking.get_status(pipeline_id)``).
    :param dag: the run's graph, to draw and to find the critical path in (step names are matched
        to node names); ``recorded_graph(status)`` is the graph the run's record keeps.
    :param segments: per step name, the pieces of its bar ``(start, end, kind)`` in epoch seconds,
        e.g. ``waiting:inputs``, ``waiting:cap``, ``queued``, ``running``; steps not listed get
        :func:`default_segments`.
    :param slowest: how many of the slowest steps to highlight.
    :param max_dag_nodes: above this many nodes, nodes of one name are drawn as one; a graph still
        bigger than that is not drawn (the page says so).
    :param max_timeline_rows: above this many steps, the timeline has one row per step name (the
        span of its steps, with their count); the steps table still lists every step.
    :param title: the page title (default: the run's name and id).
    :raises ValueError: for a segment whose end is before its start, or a negative ``slowest``.
    :raises CycleError: if ``dag`` has a cycle.
    """
    if slowest < 0:
        raise ValueError(f"slowest must be >= 0, got {slowest!r}")
    rows = _rows(status, segments)
    grouped = len(rows) > max_timeline_rows
    if grouped:
        rows = _group_rows(rows)
    step_by_name: dict[str, int] = {}
    for i, step in enumerate(status.steps):
        step_by_name.setdefault(step.name, i)
    timed = sorted(
        (i for i, s in enumerate(status.steps) if s.duration_ms is not None),
        key=lambda i: -(status.steps[i].duration_ms or 0.0),
    )
    slow = {i: rank + 1 for rank, i in enumerate(timed[:slowest])}

    critical_steps: set[int] = set()
    critical_names: list[str] = []
    dag_html = ""
    if dag is not None:
        nodes = dag.nodes
        steps = status.steps
        # A dataflow run tracks one step per node, in node order: then each node has its own
        # step (named after it, told apart when names repeat); otherwise steps are matched to
        # nodes by name.
        aligned = len(steps) == len(nodes) and all(
            step.name.startswith(node.name) for step, node in zip(steps, nodes)
        )
        step_of: list[int | None] = (
            list(range(len(nodes))) if aligned else [step_by_name.get(n.name) for n in nodes]
        )
        weights = [
            max(1, round((steps[k].duration_ms or 0.0) * 1000)) if k is not None else 1
            for k in step_of
        ]
        lay = layout(dag, collapse=len(nodes) > max_dag_nodes, weights=weights)
        critical_names = [nodes[v].name for v in lay.path]
        critical_steps = {k for k in (step_of[v] for v in lay.path) if k is not None}
        if len(lay.names) <= max_dag_nodes:
            note = (
                f"<p>{lay.node_total} nodes drawn as {len(lay.names)} (nodes of one name "
                f"collapsed, with their count).</p>"
                if lay.collapsed
                else ""
            )
            if len(lay.edges) > _MAX_EDGES:
                note += f"<p>The first {_MAX_EDGES} of {len(lay.edges)} edges are drawn.</p>"
            dag_html = (
                f"<h2>DAG</h2>{note}{_legend(STATUS_COLOURS, bool(lay.path))}"
                f'<div class="scroll">{_dag_svg(lay, steps, step_of)}</div>'
            )
        else:
            dag_html = (
                f"<h2>DAG</h2><p>{lay.node_total} nodes, {len(lay.names)} distinct names: too "
                f"many to draw (limit {max_dag_nodes}).</p>"
            )

    ordered = sorted(rows, key=lambda r: (r.segments[0].start if r.segments else math.inf, r.index))
    timeline = _timeline_html(status, ordered, critical_steps, slow)
    kinds = sorted({p.kind for r in rows for p in r.segments} - {"running"})
    present = {r.step.status for r in rows if any(p.kind == "running" for p in r.segments)}
    legend = {f"running, {s}": c for s, c in STATUS_COLOURS.items() if s in present}
    legend.update({k: _kind_colour(k, "done") for k in kinds})

    counts: dict[str, int] = {}
    for step in status.steps:
        counts[step.status] = counts.get(step.status, 0) + 1
    page_title = title if title is not None else f"{status.name} · run {status.pipeline_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing may be loaded from anywhere, and no script runs but the page's own (by its
        # hash): even text that escaped escaping could not run.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        f"style-src 'unsafe-inline'; script-src '{_JS_HASH}'; img-src data:\">",
        f"<title>{_e(page_title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>{_e(status.name)} <span class="badge" style="background:'
        f'{STATUS_COLOURS.get(status.status, "#616161")}">{_e(status.status)}</span></h1>',
        '<div class="meta">',
        f"<span>run <code>{_e(status.pipeline_id)}</code></span>",
        f"<span>started {_e(_fmt_time(status.started_at))}</span>",
        f"<span>took {_e(duration_ms(status.duration_ms, _DASH))}</span>",
        (
            f'<span id="resumed">resumed {len(status.resumes)}{TIMES} (last '
            f"{_e(_fmt_time(status.resumed_at))}): history kept, attempts sent again counted"
            "</span>"
            if status.resumes
            else ""
        ),
        f"<span>{len(status.steps)} steps, {sum(s.tasks for s in status.steps)} tasks: ",
        _e(", ".join(f"{n} {k}" for k, n in sorted(counts.items()))),
        "</span></div>",
    ]
    if status.error:
        parts.append(f"<p><b>Error:</b></p><pre>{_e(status.error)}</pre>")
    parts.append('<h2>Slowest steps</h2><ol id="slowest">')
    for i in timed[:slowest]:
        s = status.steps[i]
        tasks = f" ({s.tasks} tasks)" if s.tasks > 1 else ""
        parts.append(f"<li>{_e(s.name)}{_e(tasks)}: {_e(duration_ms(s.duration_ms, _DASH))}</li>")
    parts.append("</ol>")
    if critical_names:
        shown = [_e(n) for n in critical_names]
        if len(shown) > 12:
            shown = [*shown[:6], f"… ({len(shown) - 11} more) …", *shown[-5:]]
        parts.append(f'<p id="critical"><b>Critical path:</b> {" → ".join(shown)}</p>')
    parts.append(dag_html)
    parts.append("<h2>Timeline</h2>")
    if grouped:
        parts.append(
            f"<p>{len(status.steps)} steps drawn as {len(rows)} rows (steps of one name "
            "grouped: each row spans its steps' first start to last end).</p>"
        )
    parts.append(_legend(legend, bool(critical_steps)))
    parts.append(f'<div class="scroll">{timeline}</div>')
    parts.append(_problems_table(status))
    parts.append(_steps_table(status, slow, critical_steps))
    parts.append(f"<script>{_JS}</script></body></html>")
    return "".join(parts)


def _legend(items: Mapping[str, str], critical: bool = False) -> str:
    spans = "".join(
        f'<span><i style="background:{colour}"></i>{_e(label)}</span>'
        for label, colour in items.items()
    )
    if critical:
        spans += '<span><i class="crit"></i>critical path</span>'
    return f'<div class="legend">{spans}</div>'


def _problems_table(status: PipelineStatus) -> str:
    problems = [
        (i, s) for i, s in enumerate(status.steps) if s.status == "failed" or s.attempts > s.tasks
    ]
    if not problems:
        return '<h2>Retries and failures</h2><p id="problems">None: every task ran once.</p>'
    resumed = (
        "<p>The run was resumed: an attempt out when its orchestrator died was sent again, and "
        "counts here.</p>"
        if status.resumes
        else ""
    )
    rows = "".join(
        f'<tr data-step="{i}"><td>{_e(s.name)}</td><td>{_e(s.status)}</td>'
        f'<td class="num">{s.attempts}</td><td class="num">{s.tasks}</td>'
        f"<td><pre>{_e(s.error or '')}</pre></td></tr>"
        for i, s in problems[:_MAX_PROBLEMS]
    )
    more = len(problems) - _MAX_PROBLEMS
    note = f"<p>and {more} more (see the steps below).</p>" if more > 0 else ""
    return (
        f'<h2>Retries and failures</h2>{resumed}<div class="scroll"><table id="problems">'
        "<thead><tr>"
        "<th>step</th><th>status</th><th>attempts</th><th>tasks</th><th>error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>{note}"
    )


def _steps_table(status: PipelineStatus, slow: Mapping[int, int], critical: set[int]) -> str:
    """Every step, as rows of fixed-width cells in chunks the browser may skip off screen (a
    table of 10^4 rows would cost more to lay out than the rest of the page)."""
    heads = ("step", "status", "tasks done", "attempts", "duration", "start offset", "")
    out = [
        '<h2>Steps</h2><p><input id="filter" type="search" placeholder="filter by name" '
        'aria-label="filter steps by name"></p><div class="scroll"><div id="steps" role="table">'
        '<div class="tr th" role="row">',
        *(f'<span role="columnheader">{h}</span>' for h in heads),
        "</div>",
    ]
    steps = status.steps
    for first in range(0, len(steps), _CHUNK):
        count = min(_CHUNK, len(steps) - first)
        out.append(f'<div class="chunk" style="contain-intrinsic-size:auto {count * 22}px">')
        for i in range(first, first + count):
            s = steps[i]
            start = s.started_at
            offset = _DASH if start is None else duration(start - status.started_at)
            took = duration_ms(s.duration_ms, _DASH)
            marks = []
            if i in critical:
                marks.append("critical path")
            if i in slow:
                marks.append(f"#{slow[i]} slowest")
            name = _e(s.name)
            out.append(
                f'<div class="tr" role="row" data-step="{i}" data-name="{name}">'
                f'<span role="cell" title="{name}">{name}</span><span role="cell">'
                f'{_e(s.status)}</span><span role="cell" title="{_e(s.counts_text())}">'
                f"{s.tasks_done}/{s.tasks}</span>"
                f'<span role="cell">{s.attempts}</span><span role="cell">'
                f'{_e(took)}</span><span role="cell">{_e(offset)}</span>'
                f'<span role="cell">{_e(", ".join(marks))}</span></div>'
            )
        out.append("</div>")
    out.append("</div></div>")
    return "".join(out)


def write_report(
    path: str | os.PathLike[str],
    status: PipelineStatus,
    dag: GraphView | None = None,
    segments: Mapping[str, Sequence[Segment]] | None = None,
    *,
    slowest: int = 5,
    max_dag_nodes: int = 2000,
    max_timeline_rows: int = 20_000,
    title: str | None = None,
) -> Path:
    """Writes :func:`render_report` (same parameters) to ``path`` in UTF-8; returns the path."""
    page = render_report(
        status,
        dag,
        segments,
        slowest=slowest,
        max_dag_nodes=max_dag_nodes,
        max_timeline_rows=max_timeline_rows,
        title=title,
    )
    target = Path(path)
    target.write_text(page, encoding="utf-8", errors="replace")  # a lone surrogate in a name
    return target
