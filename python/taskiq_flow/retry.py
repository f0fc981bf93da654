"""Retries with backoff and jitter, and the dead-letter record of what failed for good.

Dead letters live in a :class:`DeadLetterStore`: :class:`DeadLetterQueue` keeps them in this
process; :class:`~taskiq_flow.distributed.RedisDeadLetterQueue` keeps them in Redis, where another
process (``taskiq-flow runs dead-letters``, ``runs replay``, the dashboard) lists and replays them.
Code that must work with either uses the store's async methods (:meth:`DeadLetterStore.alist`,
:meth:`~DeadLetterStore.aget`, :meth:`~DeadLetterStore.aremove`, :meth:`~DeadLetterStore.replay`)
or the two functions made for a front end, :func:`list_dead_letters` and
:func:`replay_dead_letter`.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import random
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.exceptions import CorruptRecordError, InvalidValueError, UnknownIdError

__all__ = [
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLetterStore",
    "RetryPolicy",
    "default_dead_letters",
    "list_dead_letters",
    "replay_dead_letter",
]


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
    """A step that failed for good: enough to see why and to run it again.

    :param pipeline_id: the run it failed in.
    :param step: the step's name.
    :param task_name: the taskiq task's name, as the broker knows it.
    :param args: its positional arguments, as they were sent.
    :param kwargs: its keyword arguments, as they were sent.
    :param error: ``"Type: message"`` of its last error.
    :param error_type: the type name of its last error.
    :param attempts: how many attempts it had.
    :param failed_at: when it failed for good (seconds since the epoch).
    :param id: the record's id (a uuid in hex).
    """

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

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data, every field by its name (``args`` a list). An argument
        JSON cannot carry (possible only in a queue kept in memory) shows as its ``repr``."""
        from pydantic_core import to_jsonable_python

        return {
            "id": self.id,
            "pipeline_id": self.pipeline_id,
            "step": self.step,
            "task_name": self.task_name,
            "args": to_jsonable_python(list(self.args), fallback=_shown),
            "kwargs": to_jsonable_python(self.kwargs, fallback=_shown),
            "error": self.error,
            "error_type": self.error_type,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
        }


def _shown(value: Any) -> str:
    """``repr(value)``, at most 200 characters, or a placeholder if it raises."""
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ raises
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


class DeadLetterStore(ABC):
    """Where dead letters are kept: the one interface the runner, the ``taskiq-flow runs``
    commands and the dashboard use, whichever store holds them.

    The runner calls :meth:`add` (synchronous: it never waits on I/O in its loop) for each step
    that failed for good, and awaits :meth:`flush` before the run returns, so a store that writes
    elsewhere has written everything by then. Everything else is async, since a store may need
    I/O to answer.
    """

    __slots__ = ()

    @abstractmethod
    def add(self, record: DeadLetter) -> None:
        """Records a dead letter (a store that writes elsewhere starts the write here and
        finishes it by :meth:`flush`)."""

    async def flush(self) -> None:  # noqa: B027 - a store kept in memory has nothing to flush
        """Waits until every record added so far is stored (nothing to wait for by default).
        Never raises: what cannot be stored is logged and kept in this process."""

    @abstractmethod
    async def alist(
        self, pipeline_id: str | None = None, corrupt: list[CorruptRecordError] | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally only those of one run.

        :param pipeline_id: only this run's (default: all).
        :param corrupt: where a record that cannot be read back goes (its error names its key);
            such records are skipped, the others still listed.
        """

    @abstractmethod
    async def aget(self, record_id: str) -> DeadLetter:
        """One dead letter by id.

        :raises UnknownIdError: if there is none with that id.
        :raises CorruptRecordError: if it cannot be read back (naming where it is stored).
        """

    @abstractmethod
    async def aremove(self, record_id: str) -> DeadLetter:
        """Removes and returns a dead letter.

        :raises UnknownIdError: if there is none with that id.
        """

    async def replay(self, record_id: str, broker: Any, timeout: float | None = None) -> Any:
        """Runs a dead letter's task again, through ``broker``, with its arguments; on success,
        removes the record.

        :param broker: the broker to send it through (it must know the task).
        :param timeout: seconds to wait for it, or ``None``.
        :return: the task's return value.
        :raises UnknownIdError: no record with that id, or a task ``broker`` does not know
            (nothing is sent then).
        :raises StepFailedError: if it fails again (the record stays).
        """
        from taskiq_flow.run.runner import run_single

        record = await self.aget(record_id)
        if broker.find_task(record.task_name) is None:
            raise UnknownIdError(
                f"dead letter {record_id}: the broker has no task named {record.task_name!r} "
                "(give the broker of the application that ran it)"
            )
        value = await run_single(
            broker, record.task_name, record.args, record.kwargs, step=record.step, timeout=timeout
        )
        # Replayed meanwhile by another process: it is gone either way.
        with contextlib.suppress(UnknownIdError):
            await self.aremove(record_id)
        return value


class DeadLetterQueue(DeadLetterStore):
    """An in-memory record of dead letters, listable and replayable.

    :meth:`replay` sends the task again with the same inputs and returns its result; a replay that
    succeeds removes the record. Besides the store's async methods it answers synchronously
    (:meth:`list`, :meth:`get`, :meth:`remove`, ``len()``).
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

    async def alist(
        self,
        pipeline_id: str | None = None,
        corrupt: builtins.list[CorruptRecordError] | None = None,
    ) -> builtins.list[DeadLetter]:
        """:meth:`list`, as the store's interface asks (nothing here is ever corrupt)."""
        return self.list(pipeline_id)

    async def aget(self, record_id: str) -> DeadLetter:
        """:meth:`get`, as the store's interface asks."""
        return self.get(record_id)

    async def aremove(self, record_id: str) -> DeadLetter:
        """:meth:`remove`, as the store's interface asks."""
        return self.remove(record_id)


_DEFAULT_QUEUE = DeadLetterQueue()


def default_dead_letters() -> DeadLetterQueue:
    """The process-wide dead-letter queue pipelines use unless given another (or tracked in
    Redis: then their dead letters go to Redis, see
    :func:`taskiq_flow.run.failures.dead_letters_for`)."""
    return _DEFAULT_QUEUE


async def list_dead_letters(
    store: DeadLetterStore, pipeline_id: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """What a front end (the dashboard, ``runs dead-letters --json``) shows: the dead letters of
    ``store`` (of one run, or all), oldest first, each as :meth:`DeadLetter.to_json` gives it,
    and one line per record that could not be read back (naming its key).

    :param store: where they are kept.
    :param pipeline_id: only this run's (default: all).
    :return: ``(records, problems)``.
    :raises redis.exceptions.RedisError: or ``OSError``, if the store's Redis does not answer.
    """
    corrupt: list[CorruptRecordError] = []
    records = await store.alist(pipeline_id, corrupt=corrupt)
    return [r.to_json() for r in records], [str(e) for e in corrupt]


async def replay_dead_letter(
    store: DeadLetterStore, record_id: str, broker: Any, timeout: float | None = None
) -> Any:
    """Replays one dead letter, for a front end (the dashboard's Replay button, ``runs
    replay``): sends its task again through ``broker`` (started by the caller) with the stored
    arguments, waits at most ``timeout`` seconds, and on success removes the record.

    :param store: where it is kept.
    :param record_id: its id.
    :param broker: a started broker that knows the task, whose completions reach this process
        (for a Redis broker: a :class:`~taskiq_flow.FlowMiddleware` over a
        :class:`~taskiq_flow.distributed.RedisCompletionChannel`).
    :param timeout: seconds the replay may take, or ``None``.
    :return: the task's return value.
    :raises UnknownIdError: no record with that id, or a task the broker does not know (nothing
        sent).
    :raises CorruptRecordError: the record cannot be read back (nothing sent).
    :raises StepFailedError: it failed again (the record stays).
    :raises PipelineTimeoutError: it took longer than ``timeout`` (the record stays).
    """
    return await store.replay(record_id, broker, timeout=timeout)
