"""The end of a stopped run: its tasks still out report back before their slots are given back.

A run that stops (failed, cancelled, timed out) while tasks are still out does not forget them:
each keeps its slots until its completion comes back, read here in the background, so that a cap
shared with other runs never admits more than it allows. A message the broker lost never reports
back: after :data:`DRAIN_TIMEOUT` the slots are given back anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from taskiq_flow._core import DagScheduler
from taskiq_flow.events import Inbox

__all__ = ["DRAIN_TIMEOUT", "drain", "start"]

#: How long a stopped run waits for tasks still out before it gives their slots back anyway (a
#: message lost by the broker never reports back).
DRAIN_TIMEOUT = 300.0

logger = logging.getLogger("taskiq_flow.run.runner")

_BACKGROUND: set[asyncio.Task[None]] = set()


async def drain(
    run_id: str,
    scheduler: DagScheduler,
    inbox: Inbox,
    attempt_of: Callable[[int], int],
    after_core: Callable[[], None],
) -> None:
    """Reads the completions of a stopped run's tasks still out, ending each in the core (its
    slots go to whoever waits), until none is out or :data:`DRAIN_TIMEOUT` passes.

    :param attempt_of: each node's current attempt (an older attempt's completion is ignored).
    :param after_core: called after the core released anything (wakes the runs it granted).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    try:
        while scheduler.counts()["running"] > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(
                    "run %s: %d tasks never reported back in %.0fs; giving their slots back",
                    run_id,
                    scheduler.counts()["running"],
                    DRAIN_TIMEOUT,
                )
                return
            timer = loop.call_later(remaining, inbox.wake)
            try:
                await inbox.wait()
            finally:
                timer.cancel()
            for event in inbox.drain():
                node = event.node
                if event.attempt == attempt_of(node) and scheduler.state(node) == "running":
                    scheduler.fail(node, loop.time())
            after_core()
    except Exception as exc:  # the channel broke: nothing more will report back
        logger.warning("run %s: stopped waiting for tasks still out: %s", run_id, exc)


def start(body: Coroutine[Any, Any, None], then: Callable[[], None]) -> None:
    """Runs ``body`` in the background, then ``then()`` — also when the task is cancelled (the
    event loop is closing: whatever is still out will never report back to this process, so its
    slots are given back there)."""

    async def run() -> None:
        try:
            await body
        finally:
            then()

    task = asyncio.get_running_loop().create_task(run())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
