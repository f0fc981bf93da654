"""Cancel that reaches running work: which attempts run in this process, and cutting them.

Where a pipeline task runs, :class:`~taskiq_flow.events.FlowMiddleware` notes the asyncio task
running each attempt (taskiq runs a message's middlewares and its function in one task); a
cancel of that run cancels those tasks, so the function sees :class:`asyncio.CancelledError`
where it awaits. A synchronous function in a thread cannot be interrupted: the task awaiting it
is cancelled, so its result is discarded, while the thread runs on to its end.

A cancel arrives here from the run's own runner in this process, or as a message on the
channel's cancel signal (a Redis pub/sub channel, :mod:`taskiq_flow.distributed.channel`):
``{"run": run_id}`` cuts the attempts of that run; ``{"pipeline": pipeline_id}`` asks the live
run of that pipeline id in this process (if any) to cancel itself, which then cuts its attempts
wherever they run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = [
    "CANCEL_MEMORY",
    "HANDLE",
    "attempt_ended",
    "attempt_started",
    "cancel_run",
    "handle_signal",
    "live_run",
    "running_attempts",
    "send_cancel",
    "was_cut",
]

logger = logging.getLogger(__name__)

#: Seconds a cancelled run is remembered: an attempt of it starting here later is cut at once.
CANCEL_MEMORY = 600.0

#: Per run id, the asyncio tasks running one of its attempts in this process.
_RUNNING: dict[str, set[asyncio.Task[Any]]] = {}
#: Tasks cancelled here (their cancellation is taken back once the attempt has reported).
_CUT: set[asyncio.Task[Any]] = set()
#: Run ids cancelled lately, with when (monotonic seconds).
_CANCELLED: dict[str, float] = {}
#: Live runs of this process, by pipeline id and by run id: what cancels each.
_LIVE: dict[str, Callable[[], None]] = {}

#: Within :func:`taskiq_flow.handle.start`: what the first run started takes itself to.
HANDLE: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "taskiq_flow_handle", default=None
)


if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # in C
else:  # asyncio.current_task() in Python, less its argument handling (called twice per attempt)
    _get_running_loop = asyncio.events._get_running_loop
    _current_tasks = asyncio.tasks._current_tasks  # type: ignore[attr-defined]

    def _current_task() -> asyncio.Task[Any] | None:
        return _current_tasks.get(_get_running_loop())  # type: ignore[no-any-return]


def attempt_started(run_id: str) -> None:
    """An attempt of ``run_id`` starts in the current asyncio task (it is cut at once if its run
    was cancelled)."""
    task = _current_task()
    if task is None:
        return
    _RUNNING.setdefault(run_id, set()).add(task)
    if run_id in _CANCELLED:
        _cut(task)


def attempt_ended(run_id: str) -> bool:
    """The attempt of ``run_id`` in the current task is over (before its completion is
    published: a cancel arriving now must not cut the publishing). Returns whether it was cut."""
    task = _current_task()
    if task is None:
        return False
    running = _RUNNING.get(run_id)
    if running is not None:
        running.discard(task)
        if not running:
            del _RUNNING[run_id]
    if task in _CUT:
        _CUT.discard(task)
        while task.cancelling():  # the cancellation was handled: the task goes on publishing
            task.uncancel()
        return True
    return False


def was_cut() -> bool:
    """Whether the current asyncio task runs an attempt that a cancel has cut (until the attempt
    has ended)."""
    task = _current_task()
    return task is not None and task in _CUT


def running_attempts(run_id: str) -> int:
    """How many attempts of ``run_id`` run in this process now."""
    return len(_RUNNING.get(run_id, ()))


def _cut(task: asyncio.Task[Any]) -> None:
    if task not in _CUT and not task.done():
        _CUT.add(task)
        task.cancel("its run was cancelled")


def cancel_run(run_id: str) -> int:
    """Cuts every attempt of ``run_id`` running in this process (and any that starts here for a
    while after); returns how many were running."""
    now = time.monotonic()
    _CANCELLED[run_id] = now
    if len(_CANCELLED) > 1024:  # forget the old ones
        for old in [r for r, at in _CANCELLED.items() if now - at > CANCEL_MEMORY]:
            del _CANCELLED[old]
    tasks = list(_RUNNING.get(run_id, ()))
    for task in tasks:
        _cut(task)
    return len(tasks)


def live_run(keys: tuple[str, ...], cancel: Callable[[], None] | None) -> None:
    """Registers (``cancel`` given) or forgets a live run of this process under ``keys`` (its
    pipeline id and run id), for a cancel signal naming it."""
    for key in keys:
        if cancel is None:
            _LIVE.pop(key, None)
        else:
            _LIVE[key] = cancel


def handle_signal(message: Any) -> None:
    """A cancel signal: ``{"run": id}`` cuts that run's attempts here; ``{"pipeline": id}``
    cancels the live run of that pipeline id here, if any. Anything else is logged and
    dropped."""
    if isinstance(message, dict):
        run_id = message.get("run")
        if isinstance(run_id, str) and run_id:
            cancel_run(run_id)
            return
        pipeline = message.get("pipeline")
        if isinstance(pipeline, str) and pipeline:
            cancel = _LIVE.get(pipeline)
            if cancel is not None:
                cancel()
            return
    logger.warning("ignoring a malformed cancel signal: %r", message)


async def send_cancel(tracking: PipelineTrackingManager, run_id: str) -> int:
    """Asks the orchestrator running ``run_id`` to cancel it; does not wait for the run's end
    (its record turns ``cancelled`` once the orchestrator has stopped it).

    :param tracking: where the run is tracked: a
        :class:`~taskiq_flow.distributed.RedisPipelineStorage` sends the signal over its Redis,
        on ``<its prefix>:cancel``; anything else cancels the live run of this process.
    :param run_id: the run (its pipeline id).
    :return: how many processes the signal reached: over Redis, the subscribers of the channel
        (0: no process listens); in this process, 1 if the run is live here, else 0.
    :raises RedisError: if Redis cannot be reached.
    """
    storage = tracking.storage
    try:
        from taskiq_flow.distributed import RedisCompletionChannel, RedisPipelineStorage
    except ImportError:  # no redis extra: the storage cannot be Redis
        pass
    else:
        if isinstance(storage, RedisPipelineStorage):
            channel = RedisCompletionChannel(storage.redis, prefix=storage.prefix)
            return await channel.send_cancel({"pipeline": run_id})
    live = tracking.live(run_id) is not None
    handle_signal({"pipeline": run_id})
    return 1 if live else 0
