"""A wait explained in one sentence, from the core's own record of why each node waits.

The core records, for every node, the reason it is where it is and since when (inputs, a step's
cap, the run's own cap (``run_cap``), the process-wide cap, a rate limit, a placement); the runner
adds what only it knows (the error a retry follows, a lost worker, what a skipped node's failed
input was). This module turns one such record into a sentence, e.g. ``waiting: step cap 'resize' is
full (16/16 in flight); next free slot when any of 16 finishes``.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskiq_flow._duration import duration
from taskiq_flow.exceptions import PipelineCancelledError, PipelineTimeoutError, UnknownIdError
from taskiq_flow.run import failures

if TYPE_CHECKING:
    from taskiq_flow.run.runner import Runner

__all__ = ["core_sentence", "explain_node", "explain_step", "node_for", "step_node"]


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def core_sentence(
    why: dict[str, Any],
    now: float,
    *,
    step: str,
    inputs: Sequence[str],
    rate: float | None,
    worker: str | None,
    placement: str | None,
    failed: str | None = None,
    cap: str | None = None,
) -> str:
    """The sentence for a record of :meth:`taskiq_flow._core.DagScheduler.explain`.

    :param step: the node's step.
    :param inputs: the steps of the node's inputs that have not finished.
    :param rate: the step's rate limit, per second.
    :param worker: the name of the worker the node is placed on.
    :param placement: why no worker takes the node now (from the pool), for a placement wait.
    :param failed: what failed before a retry's backoff (``attempt 1 failed (ValueError: x)``).
    :param cap: names the full cap of a ``step_cap`` wait when it is not a step's (an
        expansion's).
    """
    reason = why["reason"]
    waited = duration(max(0.0, now - why["since"]))
    if reason == "inputs":
        count = why["pending_inputs"]
        which = f": {_names(inputs)}" if inputs else ""
        plural = "s" if count != 1 else ""
        return f"waiting for {count} input{plural}{which} (for {waited})"
    if reason == "step_cap":
        running, limit = why["key_running"], why["key_cap"]
        named = cap or f"step cap {step!r}"
        return (
            f"waiting: {named} is full ({running}/{limit} in flight); next free slot when "
            f"any of {running} finishes (for {waited})"
        )
    if reason == "rate":
        due = why["next_token_at"]
        when = f"next token in {duration(max(0.0, due - now))}" if due is not None else "soon"
        limit = f" ({rate:g}/s)" if rate is not None else ""
        return f"waiting: rate limit of {step!r}{limit}; {when} (for {waited})"
    if reason == "shared_cap":
        return (
            f"waiting: the process-wide cap is full ({why['shared_in_use']}/{why['shared_cap']} "
            f"in flight across runs); slots go to waiting runs in turn (for {waited})"
        )
    if reason == "run_cap":
        return (
            f"waiting: the pipeline's cap is full ({why['run_running']}/{why['run_cap']} in "
            f"flight); next free slot when any of them finishes (for {waited})"
        )
    if reason == "ready":
        return "ready: admitted at the next turn"
    if reason == "children":
        count = why["open_children"]
        plural = "s" if count != 1 else ""
        inputs_left = why["pending_inputs"]
        also = f", and {inputs_left} of its own inputs" if inputs_left else ""
        return f"open: waiting for {count} task{plural} it added{also} (for {waited})"
    if reason == "backoff":
        after = f" after {failed}" if failed else ""
        return (
            f"waiting: retry backoff{after}; next attempt in "
            f"{duration(max(0.0, why['retry_at'] - now))}"
        )
    if reason == "placement":
        detail = f"; {placement}" if placement else ""
        return f"waiting: no worker has room for it now{detail} (for {waited})"
    if reason == "running":
        where = f" on {worker}" if worker else ""
        return f"running{where} (for {waited})"
    return f"{why['state']}"


def explain_node(run: Runner, node: int) -> str:
    """Why ``node`` of ``run`` is where it is, in one sentence (what :meth:`Runner.explain`
    says): the core's record, and what only the runner knows (the error a retry follows, a
    lost worker, which failure a skipped node follows). Reads the run; changes nothing."""
    plan = run.plan
    step = plan.step(node)
    scheduler = run.scheduler
    if scheduler is None:
        return "pending: the run has not started"
    try:
        now = asyncio.get_running_loop().time()
    except RuntimeError:  # asked from outside the loop: its clock is the monotonic one
        now = time.monotonic()
    why = scheduler.explain(node)
    state = why["state"]
    error = failures.describe(run._errors.get(node))
    memo = run.memo
    if state == "done":
        if memo is not None and node in memo.cached_from:
            return f"done: cached (from run {memo.cached_from[node]})"
        missed = memo.missed.get(node) if memo is not None else None
        return f"done: step {step.name!r}" + (f" (cache missed: {missed})" if missed else "")
    if state == "failed":
        return f"failed: {error}"
    if state == "skipped":
        reasons = run.skip_reasons
        if node in reasons:
            return f"skipped: {reasons[node] or 'its task raised Skip'}"
        cause = run._skipped_by.get(node)
        shown = f"step {plan.step(cause).name!r}" if cause is not None else "an input"
        if cause in reasons:
            why_skipped = f" ({reasons[cause]})" if reasons[cause] else ""
            return f"skipped: {shown} skipped{why_skipped}"
        return f"skipped: {shown} failed before it could run"
    stopped = isinstance(run._fatal, (PipelineCancelledError, PipelineTimeoutError))
    if state == "cancelled" or (stopped and state in ("waiting", "queued", "running", "open")):
        return f"cancelled: {run._fatal}" if run._fatal else "cancelled"
    worker = placement = None
    pool = run._pool
    if pool is not None and run._pool_run is not None:
        worker = pool.worker_of(run._pool_run, node)
        if why["reason"] == "placement":
            placement = _best_candidate(pool.explain(step.resources))
    grower = run.grower
    expansion = grower.expansion_keys.get(why.get("limit_key", -1)) if grower is not None else None
    sentence = core_sentence(
        why,
        now,
        step=step.name
        if step.limit_name is None or why["reason"] not in ("rate", "step_cap")
        else step.limit_name,
        cap=f"the cap of an expansion by step {plan.step(expansion).name!r}"
        if expansion is not None
        else None,
        inputs=_unfinished_inputs(run, node) if why["reason"] == "inputs" else [],
        rate=step.rate,
        worker=worker,
        placement=placement,
        failed=f"attempt {run._attempt[node] - 1} failed ({error})"
        if why["reason"] == "backoff"
        else None,
    )
    lost = run._lost.get(node)
    if lost:
        sentence += f"; placed again after losing its worker {lost} time(s)"
    missed = memo.missed.get(node) if memo is not None else None
    if missed:
        sentence += f"; cache missed: {missed}"
    parent = why.get("parent")
    if parent is not None:
        sentence += f"; a task of step {step.name!r} added by node {parent}"
    return sentence


def node_for(run: Runner, node_or_step: int | str) -> int:
    """The node a question is about: a node id, or a step's name (its first node still waiting,
    else one running or retrying, else its last); a task's name answers for its steps
    ``task[output]``.

    :raises UnknownIdError: for a node or step the run does not have (naming the closest step).
    """
    plan = run.plan
    if isinstance(node_or_step, int) and not isinstance(node_or_step, bool):
        if 0 <= node_or_step < plan.node_count:
            return node_or_step
        raise UnknownIdError(f"no node {node_or_step} (the run has {plan.node_count})")
    if run._step_index is None:
        # Step names, and a task's name for its steps ``task[output]`` (a task wired into
        # several nodes answers for them together): built once per run.
        by_name: dict[str, list[int]] = {}
        for i, spec in enumerate(plan.steps):
            by_name.setdefault(spec.name, []).append(i)
            base, bracket, _ = spec.name.partition("[")
            if bracket and base != spec.name:
                by_name.setdefault(f"{base}[", []).append(i)
        run._step_index = by_name
    indices = run._step_index.get(str(node_or_step)) or run._step_index.get(f"{node_or_step}[", [])
    if not indices:
        names = sorted({spec.name for spec in plan.steps})
        close = difflib.get_close_matches(str(node_or_step), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownIdError(f"no step named {node_or_step!r} in this run{hint}")
    by_index = _step_nodes(run)
    nodes = (
        by_index[indices[0]]
        if len(indices) == 1
        else sorted(v for i in indices for v in by_index[i])
    )
    return _standing_for(run, nodes)


def step_node(run: Runner, index: int) -> int:
    """The node step ``index`` of the plan stands for, as :func:`node_for` picks it for a step's
    name (its first node still waiting, else one running, else its last); ``-1`` for a step
    without nodes.

    :raises UnknownIdError: for a step the plan does not have.
    """
    if not 0 <= index < len(run.plan.steps):
        raise UnknownIdError(f"no step {index} (the run has {len(run.plan.steps)})")
    nodes = _step_nodes(run)[index]
    return _standing_for(run, nodes) if nodes else -1


def explain_step(run: Runner, index: int) -> str:
    """Why step ``index`` of ``run`` is where it is (:func:`explain_node` of :func:`step_node`):
    what ``run.explain(step name)`` says when step names are unique.

    :raises UnknownIdError: for a step the plan does not have.
    """
    node = step_node(run, index)
    if node < 0:
        return "open: its tasks are not known yet"
    return explain_node(run, node)


def _step_nodes(run: Runner) -> list[list[int]]:
    """Each step's nodes, in node order (built once, until the run grows)."""
    if run._step_nodes is None:
        plan = run.plan
        by_step: list[list[int]] = [[] for _ in plan.steps]
        for v in range(plan.node_count):
            by_step[plan.step_index(v)].append(v)
        run._step_nodes = by_step
    return run._step_nodes


def _standing_for(run: Runner, nodes: Sequence[int]) -> int:
    # A step stands for its first node still waiting (what a user asks about), else its first
    # node running or retrying, else its last node.
    scheduler = run.scheduler
    running = last = -1
    for v in nodes:
        last = v
        if scheduler is None:
            return v
        state = scheduler.state(v)
        if state in ("waiting", "queued"):
            return v
        if state == "running":
            if scheduler.explain(v)["reason"] in ("backoff", "placement"):
                return v
            if running < 0:
                running = v
    return running if running >= 0 else last


def _unfinished_inputs(run: Runner, node: int) -> list[str]:
    names: list[str] = []
    for p in run.inputs_of(node):
        if not run.has_result(p):
            name = run.plan.step(p).name
            if name not in names:
                names.append(name)
    return names


def _best_candidate(why_not: dict[str, list[str]]) -> str | None:
    """From the pool's reasons per worker: a label no live worker has, or the live worker closest
    to fitting and what it lacks."""
    live = {w: reasons for w, reasons in why_not.items() if reasons != ["worker removed"]}
    if not live:
        return "no worker is live" if why_not else None
    lacking = set.intersection(
        *({r for r in reasons if r.startswith("missing label ")} for reasons in live.values())
    )
    if lacking:
        labels = ", ".join(sorted(r.removeprefix("missing ") for r in lacking))
        return f"no live worker has {labels}"
    worker, reasons = min(live.items(), key=lambda item: len(item[1]))
    return f"on the best candidate {worker}: {'; '.join(reasons)}"
