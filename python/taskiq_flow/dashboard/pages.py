"""The dashboard's two pages, written on the server; the data comes live from the feed.

Pages hold no run data but what the server escapes (a run's id and name, and the DAG the report
draws, escaped by it); everything else arrives as JSON over server-sent events and is put in the
page as text by ``static/dashboard.js``. The script and style are files the app serves itself, so
the Content-Security-Policy allows nothing inline.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from taskiq_flow.pictures import GraphView, layout
from taskiq_flow.report import STATUS_COLOURS, _dag_svg
from taskiq_flow.tracking import TASK_STATES, StepStatus

__all__ = ["DAG_LIMIT", "asset", "dag_html", "run_page", "runs_page"]

#: Most nodes drawn one by one; a bigger graph is drawn with nodes of one name collapsed.
DAG_LIMIT = 2000


@lru_cache(maxsize=4)
def asset(name: str) -> bytes:
    """A file of the app's own (``dashboard.js``, ``dashboard.css``)."""
    return (resources.files("taskiq_flow.dashboard") / "static" / name).read_bytes()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _json_block(element_id: str, value: object) -> str:
    """Data for the script, in an element the browser never runs (``application/json``); ``<``,
    ``>`` and ``&`` escaped so no text can close the element."""
    text = (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _page(title: str, page: str, csrf: str | None, body: str, attrs: str = "") -> str:
    csrf_meta = f'<meta name="csrf-token" content="{_e(csrf)}">' if csrf else ""
    mode = "token accepted: actions on" if csrf else "read-only (open the URL with ?token=...)"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{csrf_meta}<title>{_e(title)}</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body data-page="{page}"{attrs}><header class="top"><a href="/">taskiq-flow runs</a>'
        f'<span id="conn">connecting…</span><span class="note">{mode}</span>'
        '<span id="action-note"></span></header>'
        f"{_json_block('colours', STATUS_COLOURS)}{body}"
        '<script src="/static/dashboard.js"></script></body></html>'
    )


def runs_page(csrf: str | None) -> str:
    """The runs list: filters, a table the feed fills, a pager."""
    options = "".join(
        f'<option value="{s}">{s}</option>'
        for s in ("", "running", "done", "failed", "cancelled", "abandoned")
    ).replace('value=""></option>', 'value="">any status</option>')
    action = "<th></th>" if csrf else ""
    body = (
        "<h1>Runs</h1>"
        '<div class="filters"><label>status <select id="f-status">'
        f"{options}</select></label>"
        '<label>name <input id="f-name" type="search" placeholder="part of a name"></label>'
        '<button id="prev">newer</button><button id="next">older</button>'
        '<span id="pager"></span></div>'
        '<table id="runs"><thead><tr><th>run</th><th>name</th><th>status</th><th>started</th>'
        f"<th>took</th><th>steps done</th><th>waiting</th>{action}</tr></thead>"
        '<tbody id="runs-body"></tbody></table>'
    )
    return _page("taskiq-flow runs", "runs", csrf, body)


def run_page(
    run_id: str,
    name: str | None,
    csrf: str | None,
    dag: str | None,
    running: bool = False,
    replay: bool = False,
) -> str:
    """A run: its header, the DAG (when its graph is known), counts, retries and failures, its
    dead letters, the steps, the timeline, and why a clicked step is where it is. With a token
    session (``csrf``), its actions: delete, cancel while it runs (``running``; the script
    disables it once the feed says the run ended), and a Replay button per dead letter when the
    dashboard has a broker (``replay``)."""
    title = f"{name or 'run'} · {run_id}"
    can_replay = bool(csrf) and replay
    cancel = '<button id="cancel-run">cancel this run</button>' if running else ""
    actions = (
        f'<div class="actions">{cancel}<button id="delete-run">delete this run</button></div>'
        if csrf
        else ""
    )
    dag_part = (
        f'<h2>DAG</h2><div id="dag-box" class="scroll">{dag}</div>'
        if dag
        else (
            '<h2>DAG</h2><p class="note" id="no-dag">Its graph is not known here: its record '
            "keeps no edges (an older record, or more step edges than tracking keeps; serve it "
            "with graphs={name: pipeline}, or --dag).</p>"
        )
    )
    legend = " ".join(
        f'<span class="badge st-{s}">{s}</span>' for s in TASK_STATES if s in STATUS_COLOURS
    )
    body = (
        f'<h1><span id="run-name">{_e(name or "")}</span> <span id="run-status"></span></h1>'
        f'<div class="meta"><span>run <code>{_e(run_id)}</code></span>'
        '<span>started <span id="run-started"></span></span>'
        '<span>took <span id="run-took"></span></span><span id="run-resumes"></span>'
        '<span id="run-counts"></span></div>'
        '<p id="gone" hidden>This run is gone (deleted, or its records expired).</p>'
        f'<pre class="err" id="run-error"></pre>{actions}'
        f"<p>{legend}</p>{dag_part}"
        '<div id="explain" hidden></div>'
        '<h2>Retries and failures</h2><p id="problems-none">None so far.</p>'
        '<div class="scroll"><table><thead><tr><th>step</th><th>status</th><th>attempts</th>'
        '<th>tasks</th><th>error</th></tr></thead><tbody id="problems"></tbody></table></div>'
        '<h2>Dead letters</h2><p id="letters-none">None.</p><p class="note" id="letters-note"></p>'
        '<div class="scroll"><table id="letters-table"><thead><tr><th>id</th><th>step</th>'
        "<th>task</th><th>attempts</th><th>error</th><th>failed at</th>"
        f"{'<th></th>' if can_replay else ''}</tr></thead>"
        '<tbody id="letters"></tbody></table></div>'
        '<div class="cols"><div><h2>Steps</h2>'
        '<input id="step-filter" type="search" placeholder="filter by name" '
        'aria-label="filter steps by name">'
        '<div class="tr th"><span class="name">step</span><span>status</span>'
        "<span>done</span><span>attempts</span><span>took</span>"
        '<span class="wait">why it waits / counts</span></div>'
        '<div id="steps" class="scroll"><div id="steps-spacer"></div>'
        '<div id="steps-rows"></div></div></div>'
        '<div><h2>Timeline</h2><p class="note" id="timeline-scale"></p>'
        '<div id="timeline" class="scroll"><canvas id="timeline-canvas"></canvas>'
        '<div id="timeline-spacer"></div></div></div></div>'
    )
    attrs = f' data-run="{_e(run_id)}"' + (' data-replay="1"' if can_replay else "")
    return _page(title, "run", csrf, body, attrs)


def _step_of(graph: GraphView, steps: Sequence[StepStatus]) -> list[int | None]:
    """The step each graph node is: a dataflow run tracks one step per node in node order (its
    name starting with the node's); otherwise steps are matched to nodes by name."""
    nodes = graph.nodes
    if len(steps) == len(nodes) and all(s.name.startswith(n.name) for s, n in zip(steps, nodes)):
        return list(range(len(nodes)))
    first: dict[str, int] = {}
    for i, step in enumerate(steps):
        first.setdefault(step.name, i)
    return [first.get(n.name) for n in nodes]


def dag_html(graph: GraphView, steps: Sequence[StepStatus]) -> str:
    """The run's DAG as the report draws it (every node pending; the feed colours it), and,
    for nodes standing for many steps, which steps (by the index the node is marked with).

    :raises CycleError: if the graph has a cycle.
    """
    step_of = _step_of(graph, steps)
    lay = layout(graph, collapse=len(graph.nodes) > DAG_LIMIT)
    if len(lay.names) > DAG_LIMIT:
        return (
            f'<p class="note">{lay.node_total} nodes of {len(lay.names)} names: too many to '
            "draw.</p>"
        )
    pending = [StepStatus(s.name) for s in steps]
    svg = _dag_svg(lay, pending, step_of)
    groups: dict[str, list[int]] = {}
    for members in lay.members:
        own = [k for k in (step_of[m] for m in members) if k is not None]
        if len(own) > 1:
            groups[str(own[0])] = own
    return svg + _json_block("dag-members", groups)
