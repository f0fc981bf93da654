"""Retries with backoff and jitter, and the dead-letter record of what failed for good."""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.exceptions import InvalidValueError, UnknownIdError

__all__ = ["DeadLetter", "DeadLetterQueue", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how far apart, a failed step is tried again.

    The wait before retry ``n`` (1 for the first retry) is ``delay * backoff ** (n - 1)``, capped at
    ``max_delay``, then stretched by a random factor in ``[1 - jitter, 1 + jitter]`` so that many
    failures at once do not retry in lockstep.

    :param max_attempts: attempts in all, the first included (1 means no retry).
    :param delay: seconds before the first retry.
    :param backoff: factor by which each further wait grows (>= 1).
    :param max_delay: longest wait, in seconds.
    :param jitter: relative spread of each wait, from 0 to 1.
    :param retry_on: exception types worth retrying; others fail at once.
    :raises InvalidValueError: for values outside these ranges.
    """

    max_attempts: int = 3
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise InvalidValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise InvalidValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in ("delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.backoff, (int, float)) or not (1 <= self.backoff < math.inf):
            raise InvalidValueError(f"backoff must be a finite number >= 1, got {self.backoff!r}")
        if not isinstance(self.jitter, (int, float)) or not (0 <= self.jitter <= 1):
            raise InvalidValueError(f"jitter must be a number from 0 to 1, got {self.jitter!r}")

    def should_retry(self, attempt: int, error: BaseException | None) -> bool:
        """Whether attempt ``attempt`` (1-based), which failed with ``error``, gets another."""
        if attempt >= self.max_attempts:
            return False
        return error is None or isinstance(error, self.retry_on)

    def delay_for(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_delay, self.delay * self.backoff ** (retry - 1))
        if self.jitter:
            base *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)


@dataclass(slots=True)
class DeadLetter:
    """A step that failed for good: enough to see why and to run it again."""

    pipeline_id: str
    step: str
    task_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: str
    error_type: str
    attempts: int
    failed_at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class DeadLetterQueue:
    """An in-memory record of dead letters, listable and replayable.

    :meth:`replay` sends the task again with the same inputs and returns its result; a replay that
    succeeds removes the record.
    """

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[str, DeadLetter] = {}

    def add(self, record: DeadLetter) -> None:
        """Records a dead letter."""
        self._records[record.id] = record

    def list(self, pipeline_id: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally only those of one pipeline run."""
        records = sorted(self._records.values(), key=lambda r: r.failed_at)
        if pipeline_id is None:
            return records
        return [r for r in records if r.pipeline_id == pipeline_id]

    def get(self, record_id: str) -> DeadLetter:
        """One dead letter by id.

        :raises UnknownIdError: if there is none with that id.
        """
        try:
            return self._records[record_id]
        except KeyError:
            raise UnknownIdError(f"no dead letter with id {record_id!r}") from None

    def remove(self, record_id: str) -> DeadLetter:
        """Removes and returns a dead letter.

        :raises UnknownIdError: if there is none with that id.
        """
        record = self.get(record_id)
        del self._records[record_id]
        return record

    def __len__(self) -> int:
        return len(self._records)

    async def replay(self, record_id: str, broker: Any, timeout: float | None = None) -> Any:
        """Runs a dead letter's task again with its inputs; on success, removes the record.

        :param broker: the broker to send it through.
        :param timeout: seconds to wait for it, or ``None``.
        :return: the task's return value.
        :raises StepFailedError: if it fails again (the record stays).
        """
        from taskiq_flow.run.runner import run_single

        record = self.get(record_id)
        value = await run_single(
            broker, record.task_name, record.args, record.kwargs, step=record.step, timeout=timeout
        )
        self._records.pop(record_id, None)
        return value


_DEFAULT_QUEUE = DeadLetterQueue()


def default_dead_letters() -> DeadLetterQueue:
    """The process-wide dead-letter queue pipelines use unless given another."""
    return _DEFAULT_QUEUE
