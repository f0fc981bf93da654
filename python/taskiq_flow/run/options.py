"""The ``with_*`` settings every pipeline shape shares, kept in one :class:`Settings` value."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

from typing_extensions import Self

from taskiq_flow.once import DEFAULT_KEY_TTL, IdempotencyKey, KeyStore
from taskiq_flow.retry import DeadLetterStore, RetryPolicy
from taskiq_flow.run.settings import OnError, Settings, renamed_warning

if TYPE_CHECKING:
    from taskiq_flow.resources import ResourceAwareWorkerPool
    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["RunOptions"]


class RunOptions:
    """``with_*`` methods that each change one setting (checked by that setting's rule) and
    return the pipeline itself; the settings of the next run are :attr:`settings`.

    Every option of a run has one: ``with_max_parallel``, ``with_run_timeout``,
    ``with_on_error``, ``with_retry``, ``with_tracking``, ``with_dead_letters``,
    ``with_worker_pool``, ``with_progress``, ``with_name``. :meth:`with_idempotency_key` is
    the one that returns a copy (a key names one run, not a pipeline).
    """

    settings: Settings = Settings()
    #: The key the runs of this pipeline object are claimed under (see
    #: :meth:`with_idempotency_key`).
    idempotency_key: IdempotencyKey | None = None

    def with_idempotency_key(
        self, key: str, *, ttl: float = DEFAULT_KEY_TTL, store: KeyStore | None = None
    ) -> Self:
        """A copy of the pipeline whose runs are one run per ``key``
        (``await pipeline.with_idempotency_key(k).kiq_dataflow(**inputs)``): a second trigger of
        the key while its run is live attaches to it (same run id, same result); within ``ttl``
        seconds after it finished, it returns the stored result and sends nothing; after its
        orchestrator died, it resumes it. A run that fails frees its key. The key never mixes
        with the inputs. See :mod:`taskiq_flow.once`.

        The pipeline itself is unchanged (so one pipeline serves many keys at once); the copy
        shares its tasks and settings: build the pipeline first, then take keyed copies.

        :param ttl: seconds a finished run's result answers the key (default 24 h).
        :param store: where the key is claimed: this process's memory by default;
            :class:`~taskiq_flow.once.RedisKeyStore` for every process on one Redis.
        :raises InvalidValueError: for a key that is not a non-empty str, a TTL that is not a
            finite number > 0, or a store that is not a :class:`~taskiq_flow.once.KeyStore`.
        """
        keyed = copy.copy(self)
        keyed.idempotency_key = IdempotencyKey(key, ttl, store)
        return keyed

    def with_retry(
        self,
        max_attempts: int = 3,
        delay: float = 0.1,
        backoff: float = 2.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> Self:
        """Retries failed tasks (those without a policy of their own) with exponential backoff
        and jitter; see :class:`~taskiq_flow.RetryPolicy`."""
        policy = RetryPolicy(max_attempts, delay, backoff, max_delay, jitter, retry_on)
        self.settings = self.settings.evolve(retry=policy)
        return self

    def with_tracking(self, tracking: PipelineTrackingManager) -> Self:
        """Reports every run to ``tracking``."""
        self.settings = self.settings.evolve(tracking=tracking)
        return self

    def with_dead_letters(self, dead_letters: DeadLetterStore) -> Self:
        """Records tasks that failed for good in ``dead_letters`` (default: Redis for a run
        tracked in Redis, else the process-wide queue)."""
        self.settings = self.settings.evolve(dead_letters=dead_letters)
        return self

    def with_worker_pool(self, pool: ResourceAwareWorkerPool) -> Self:
        """Places every task on a worker of ``pool`` with room for it
        (see :mod:`taskiq_flow.resources`)."""
        self.settings = self.settings.evolve(worker_pool=pool)
        return self

    def with_run_timeout(self, seconds: float | None) -> Self:
        """Fails a run that takes longer than ``seconds`` in all with
        :class:`~taskiq_flow.exceptions.PipelineTimeoutError` (``None``: no bound). A task's own
        ``timeout`` (taskiq's label, or ``pipeline_task(timeout=)``) bounds one attempt of it.

        :raises InvalidValueError: for anything but ``None`` or a finite number > 0.
        """
        self.settings = self.settings.evolve(run_timeout=seconds)
        return self

    def with_timeout(self, seconds: float | None) -> Self:
        """Deprecated: :meth:`with_run_timeout` (the same bound, on the whole run)."""
        renamed_warning("timeout", f"{type(self).__name__}.with_timeout()", 2)
        return self.with_run_timeout(seconds)

    def with_on_error(self, on_error: OnError) -> Self:
        """``"fail"`` stops a run at the first task that failed for good; ``"continue"`` runs
        every task that does not depend on one (the run still fails at the end).

        :raises InvalidValueError: for anything but ``"fail"`` or ``"continue"``.
        """
        self.settings = self.settings.evolve(on_error=on_error)
        return self

    def with_name(self, name: str) -> Self:
        """Names the runs in tracking records, logs and errors.

        :raises InvalidValueError: for anything but a non-empty str.
        """
        self.settings = self.settings.evolve(name=name)
        return self

    def with_max_parallel(self, max_parallel: int | None) -> Self:
        """Bounds the tasks of one run in flight at once, all its steps together.

        :raises InvalidValueError: for anything but ``None`` or an int from 1 to 4294967295.
        """
        self.settings = self.settings.evolve(max_parallel=max_parallel)
        return self

    def with_progress(self, on_progress: Callable[[int, int], None] | None) -> Self:
        """Calls ``on_progress(finished, total)`` as each run progresses."""
        self.settings = self.settings.evolve(on_progress=on_progress)
        return self

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy of tasks without their own."""
        return self.settings.retry

    @property
    def tracking(self) -> PipelineTrackingManager | None:
        """Where runs are reported."""
        return self.settings.tracking

    @property
    def dead_letters(self) -> DeadLetterStore | None:
        """Where tasks that failed for good are recorded (``None``: the process-wide queue)."""
        return self.settings.dead_letters

    @property
    def worker_pool(self) -> ResourceAwareWorkerPool | None:
        """The pool tasks are placed on."""
        return self.settings.worker_pool

    @property
    def run_timeout(self) -> float | None:
        """Seconds a whole run may take."""
        return self.settings.run_timeout

    @property
    def timeout(self) -> float | None:
        """Deprecated: :attr:`run_timeout`."""
        renamed_warning("timeout", f"{type(self).__name__}.timeout", 2)
        return self.settings.run_timeout

    @property
    def max_parallel(self) -> int | None:
        """Most tasks of one run in flight at once."""
        return self.settings.max_parallel

    @property
    def on_error(self) -> OnError:
        """``"fail"`` or ``"continue"``."""
        return self.settings.on_error
