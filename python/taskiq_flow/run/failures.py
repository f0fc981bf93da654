"""What a failed attempt leads to: a retry after a backoff, a resend, or a failure for good."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskiq_flow.events import describe
from taskiq_flow.exceptions import (
    AbortPipeline,
    PoisonMessageError,
    TaskTimeoutError,
    WorkerLostError,
)
from taskiq_flow.retry import DeadLetter, DeadLetterStore, RetryPolicy, default_dead_letters

if TYPE_CHECKING:
    from taskiq_flow.run.settings import Settings

__all__ = [
    "MAX_WORKER_LOSSES",
    "Verdict",
    "dead_letters_for",
    "describe",
    "judge",
    "name_timeout",
    "record",
]

#: How often one node may lose its worker and be placed again before it fails for good.
MAX_WORKER_LOSSES = 5


@dataclass(frozen=True, slots=True)
class Verdict:
    """``resend``: send again at once (a lost worker); ``retry_in``: seconds before a retry;
    neither: the node failed for good."""

    resend: bool = False
    retry_in: float | None = None


FAILED = Verdict()


def judge(
    error: BaseException | None,
    attempt: int,
    policy: RetryPolicy | None,
    worker_losses: int,
) -> Verdict:
    """Decides what attempt ``attempt`` failing with ``error`` leads to.

    A lost worker is not the task's fault: resent at once (at most :data:`MAX_WORKER_LOSSES`
    times), whatever the policy says. :class:`AbortPipeline` and :class:`PoisonMessageError` are
    never retried.
    """
    if isinstance(error, WorkerLostError):
        return Verdict(resend=True) if worker_losses <= MAX_WORKER_LOSSES else FAILED
    if (
        policy is not None
        and not isinstance(error, (AbortPipeline, PoisonMessageError))
        and policy.should_retry(attempt, error)
    ):
        return Verdict(retry_in=policy.delay_for(attempt))
    return FAILED


def name_timeout(error: BaseException | None, step: str, timeout: float | None) -> Any:
    """taskiq reports an attempt that ran out of time as a bare ``TimeoutError``; this names the
    step and the limit instead."""
    if timeout is not None and type(error).__name__ == "TimeoutError" and not str(error):
        return TaskTimeoutError(f"step {step!r} timed out after {timeout:g} s")
    return error


def dead_letters_for(settings: Settings) -> DeadLetterStore:
    """Where a run's dead letters go: the store it was given (``dead_letters=``); else, for a run
    tracked in Redis (:class:`~taskiq_flow.distributed.RedisPipelineStorage`), Redis under the
    tracking's prefix and TTL (:class:`~taskiq_flow.distributed.RedisDeadLetterQueue`), so that
    another process can list and replay them; else the process-wide
    :func:`~taskiq_flow.retry.default_dead_letters`."""
    if settings.dead_letters is not None:
        return settings.dead_letters
    tracking = settings.tracking
    # Only a module that was imported can have made the storage: nothing of Redis is imported
    # for a run that does not use it.
    storage_module = sys.modules.get("taskiq_flow.distributed.storage")
    if (
        tracking is not None
        and storage_module is not None
        and isinstance(tracking.storage, storage_module.RedisPipelineStorage)
    ):
        from taskiq_flow.distributed.deadletters import RedisDeadLetterQueue

        return RedisDeadLetterQueue.for_storage(tracking.storage)
    return default_dead_letters()


def record(
    queue: DeadLetterStore,
    pipeline_id: str,
    step: str,
    task_name: str,
    call: tuple[tuple[Any, ...], dict[str, Any]],
    error: BaseException | None,
    attempts: int,
) -> None:
    """Records a node that failed for good in ``queue``."""
    args, kwargs = call
    queue.add(
        DeadLetter(
            pipeline_id=pipeline_id,
            step=step,
            task_name=task_name,
            args=args,
            kwargs=kwargs,
            error=describe(error) or "unknown error",
            error_type=type(error).__name__ if error is not None else "None",
            attempts=attempts,
        )
    )
