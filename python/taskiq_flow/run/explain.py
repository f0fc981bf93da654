"""A wait explained in one sentence, from the core's own record of why each node waits.

The core records, for every node, the reason it is where it is and since when (inputs, a step's
cap, the run's own cap (``run_cap``), the process-wide cap, a rate limit, a placement); the runner
adds what only it knows (a retry's backoff, a lost worker, what a skipped node's failed input
was). This module turns one such record into a sentence, e.g. ``waiting: step cap 'resize' is
full (16/16 in flight); next free slot when any of 16 finishes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["core_sentence", "seconds"]


def seconds(value: float) -> str:
    """A duration for people: ``0.25 s``, ``12 s``, ``3 min 5 s``."""
    if value < 10:
        return f"{value:.2g} s" if value < 1 else f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


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
) -> str:
    """The sentence for a record of :meth:`taskiq_flow._core.DagScheduler.explain`.

    :param step: the node's step.
    :param inputs: the steps of the node's inputs that have not finished.
    :param rate: the step's rate limit, per second.
    :param worker: the name of the worker the node is placed on.
    :param placement: why no worker takes the node now (from the pool), for a placement wait.
    """
    reason = why["reason"]
    waited = seconds(max(0.0, now - why["since"]))
    if reason == "inputs":
        count = why["pending_inputs"]
        which = f": {_names(inputs)}" if inputs else ""
        plural = "s" if count != 1 else ""
        return f"waiting for {count} input{plural}{which} (for {waited})"
    if reason == "step_cap":
        running, cap = why["key_running"], why["key_cap"]
        return (
            f"waiting: step cap {step!r} is full ({running}/{cap} in flight); next free slot when "
            f"any of {running} finishes (for {waited})"
        )
    if reason == "rate":
        due = why["next_token_at"]
        when = f"next token in {seconds(max(0.0, due - now))}" if due is not None else "soon"
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
    if reason == "placement":
        detail = f"; {placement}" if placement else ""
        return f"waiting: no worker has room for it now{detail} (for {waited})"
    if reason == "running":
        where = f" on {worker}" if worker else ""
        return f"running{where} (for {waited})"
    return f"{why['state']}"
