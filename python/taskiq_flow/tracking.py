"""Tracking: the status of every pipeline run and of each of its steps.

A run reports to a :class:`PipelineTrackingManager`, which keeps records in a storage (in memory by
default). Each step's ``duration_ms`` is measured where its tasks ran, not where they were awaited:
for a step of one task it is that task's run time; for a step of many (a map), the span from the
first task's start to the last one's end.

::

    tracking = PipelineTrackingManager()
    pipeline = DataflowPipeline(broker).with_tracking(tracking)
    await pipeline.kiq_dataflow(x=1)
    status = await tracking.get_status(pipeline.pipeline_id)
    for step in status.steps:
        print(f"{step.name}: {step.duration_ms}ms")

A run's state is ``running``, then ``done``, ``failed`` or ``cancelled``. With a storage that
keeps leases (:class:`~taskiq_flow.distributed.RedisPipelineStorage`), the manager holds a lease
on each run it executes, renewed in the background from :meth:`PipelineTrackingManager.begin` to
:meth:`PipelineTrackingManager.end`; a run whose orchestrator died (its lease lapsed) reads back
as ``abandoned``. A record that cannot be read is skipped by listings (with a warning) and raises
:class:`~taskiq_flow.exceptions.CorruptRecordError` from
:meth:`~PipelineTrackingManager.get_status`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from taskiq_flow.exceptions import (
    CorruptRecordError,
    InvalidValueError,
    StateError,
    UnknownIdError,
)

__all__ = [
    "InMemoryPipelineStorage",
    "PipelineStatus",
    "PipelineStorage",
    "PipelineTrackingManager",
    "StepStatus",
    "process_owner_id",
]

logger = logging.getLogger(__name__)

_OWNER = f"{socket.gethostname()[:64]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def process_owner_id() -> str:
    """This process's id as the owner of run leases: ``host/pid/random``."""
    return _OWNER


RunState = Literal["running", "done", "failed", "cancelled", "abandoned"]
StepState = Literal["pending", "running", "retrying", "done", "failed", "skipped", "cancelled"]


@dataclass(slots=True)
class StepStatus:
    """One step of a run: a task, or all the tasks of a map."""

    name: str
    status: StepState = "pending"
    duration_ms: float | None = None
    attempts: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    tasks: int = 1
    tasks_done: int = 0
    #: Seconds the step's tasks waited between becoming ready and being sent, summed, by what held
    #: each last (the core's reasons: ``step_cap``, ``rate``, ``shared_cap``, ``placement``, or
    #: ``ready`` for nothing but the run's own cap).
    waited: dict[str, float] = field(default_factory=dict)
    #: Why the step waits, as its run last explained it (while the run is live).
    waiting: str | None = None


@dataclass(slots=True)
class PipelineStatus:
    """One run of a pipeline."""

    pipeline_id: str
    name: str
    status: RunState = "running"
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    steps: list[StepStatus] = field(default_factory=list)

    @property
    def duration_ms(self) -> float | None:
        """Wall time of the run, once finished."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at) * 1000.0

    def slowest_step(self) -> StepStatus | None:
        """The step with the largest ``duration_ms``, if any finished."""
        timed = [s for s in self.steps if s.duration_ms is not None]
        return max(timed, key=lambda s: s.duration_ms or 0.0) if timed else None


class PipelineStorage(Protocol):
    """Where tracking records live."""

    async def save(self, status: PipelineStatus) -> None:
        """Stores a whole record (new or replaced)."""
        ...

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        """A record, or ``None``."""
        ...

    async def delete(self, pipeline_id: str) -> bool:
        """Removes a record; whether there was one."""
        ...

    async def ids(self) -> list[str]:
        """Every stored pipeline id."""
        ...


class InMemoryPipelineStorage:
    """Records in a dict, for the embedded default. Records are copied in and out."""

    def __init__(self) -> None:
        self._records: dict[str, PipelineStatus] = {}
        self._results: dict[str, dict[int, Any]] = {}

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Keeps finished nodes' values (what a resumed run starts from)."""
        self._results.setdefault(pipeline_id, {}).update(results)

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """The finished nodes' values of a run."""
        return dict(self._results.get(pipeline_id, {}))

    async def save(self, status: PipelineStatus) -> None:
        self._records[status.pipeline_id] = copy.deepcopy(status)

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        record = self._records.get(pipeline_id)
        return copy.deepcopy(record) if record is not None else None

    async def delete(self, pipeline_id: str) -> bool:
        self._results.pop(pipeline_id, None)
        return self._records.pop(pipeline_id, None) is not None

    async def ids(self) -> list[str]:
        return list(self._records)


class PipelineTrackingManager:
    """Keeps the status of pipeline runs and answers questions about them.

    :param storage: where records live (in memory by default).
    """

    def __init__(self, storage: PipelineStorage | None = None) -> None:
        self.storage: PipelineStorage = (
            storage if storage is not None else InMemoryPipelineStorage()
        )
        self._live: dict[str, PipelineStatus] = {}
        self._leases: dict[str, asyncio.Task[None]] = {}

    # -- the run's lease -------------------------------------------------------------------------

    async def hold_lease(self, pipeline_id: str) -> None:
        """Takes the lease on a run (if the storage keeps leases) and keeps renewing it every
        third of its length until :meth:`release_lease` (called by :meth:`begin` and
        :meth:`end`; call them yourself to hold a run you drive otherwise).

        :raises StateError: if another live process holds the run's lease (a run is resumed
            only once it is ``abandoned``).
        """
        renew = getattr(self.storage, "renew_lease", None)
        if renew is None or pipeline_id in self._leases:
            return
        await renew(pipeline_id, _OWNER)
        interval = float(getattr(self.storage, "lease_seconds", 15.0)) / 3
        self._leases[pipeline_id] = asyncio.get_running_loop().create_task(
            self._renew_lease(pipeline_id, renew, interval)
        )

    async def _renew_lease(self, pipeline_id: str, renew: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if not await renew(pipeline_id, _OWNER):
                    logger.warning("the tracking record of run %s vanished", pipeline_id)
            except StateError as exc:  # this process lost the lease (stalled past it)
                logger.warning("lease of run %s lost: %s", pipeline_id, exc)
                return
            except Exception as exc:  # Redis stalled or restarting: the next renewal may work
                logger.warning("lease of run %s not renewed: %s", pipeline_id, exc)

    async def release_lease(self, pipeline_id: str) -> None:
        """Stops renewing a run's lease and gives it up."""
        task = self._leases.pop(pipeline_id, None)
        if task is None:
            return
        task.cancel()
        release = getattr(self.storage, "release_lease", None)
        if release is not None:
            try:
                await release(pipeline_id)
            except Exception as exc:  # it lapses by itself
                logger.warning("lease of run %s not released: %s", pipeline_id, exc)

    # -- written by runs -------------------------------------------------------------------------

    async def begin(self, pipeline_id: str, name: str, steps: list[tuple[str, int]]) -> None:
        """A run starts (or resumes); ``steps`` lists each step's name and number of tasks.

        :raises StateError: if another live process holds the run's lease.
        """
        status = PipelineStatus(
            pipeline_id, name, steps=[StepStatus(step, tasks=count) for step, count in steps]
        )
        owner = getattr(self.storage, "lease_owner", None)
        if owner is not None and pipeline_id not in self._leases:
            holder = await owner(pipeline_id)
            if holder is not None and holder != _OWNER:
                raise StateError(
                    f"run {pipeline_id} is live in another process ({holder}); it can be "
                    "resumed once it is abandoned (its lease lapsed)"
                )
        self._live[pipeline_id] = status
        await self.storage.save(status)
        await self.hold_lease(pipeline_id)

    def live(self, pipeline_id: str) -> PipelineStatus | None:
        """The in-progress record of a run this process is executing."""
        return self._live.get(pipeline_id)

    async def save_steps(self, pipeline_id: str, indices: set[int]) -> None:
        """Writes some steps of a run in progress, if the storage keeps steps one by one (a
        durable storage); in-memory storage reads the live record instead."""
        save = getattr(self.storage, "save_steps", None)
        status = self._live.get(pipeline_id)
        if save is None or status is None or not indices:
            return
        await save(pipeline_id, {i: status.steps[i] for i in indices})

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Stores finished nodes' values, if the storage keeps them (both built-in ones do)."""
        save = getattr(self.storage, "save_results", None)
        if save is not None and results:
            await save(pipeline_id, results)

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """The finished nodes' values of a run (empty if the storage keeps none)."""
        load = getattr(self.storage, "load_results", None)
        return dict(await load(pipeline_id)) if load is not None else {}

    async def flush(self, pipeline_id: str) -> None:
        """Writes the in-progress record of a run to storage."""
        status = self._live.get(pipeline_id)
        if status is not None:
            await self.storage.save(status)

    async def end(self, pipeline_id: str, state: RunState, error: str | None = None) -> None:
        """A run ends."""
        status = self._live.pop(pipeline_id, None)
        if status is None:
            return
        status.status = state
        status.error = error
        status.finished_at = time.time()
        for step in status.steps:
            if step.status in ("pending", "running", "retrying"):
                step.status = "cancelled" if state != "done" else step.status
        try:
            await self.storage.save(status)
        finally:
            await self.release_lease(pipeline_id)

    # -- read by users ---------------------------------------------------------------------------

    async def get_status(self, pipeline_id: str) -> PipelineStatus:
        """The status of a run: its state, times and steps.

        :raises UnknownIdError: if no run has that id (or it was deleted).
        :raises CorruptRecordError: if its record cannot be read back.
        """
        live = self._live.get(pipeline_id)
        if live is not None:
            return copy.deepcopy(live)
        status = await self.storage.load(pipeline_id)
        if status is None:
            raise UnknownIdError(f"no pipeline run with id {pipeline_id!r}")
        return status

    async def list_pipelines(self, status: RunState | None = None) -> list[PipelineStatus]:
        """Every tracked run, oldest first, optionally only those in one state."""
        records = []
        for pipeline_id in await self.storage.ids():
            try:
                record = await self.storage.load(pipeline_id)
            except CorruptRecordError as exc:
                logger.warning("skipping run %s: %s", pipeline_id, exc)
                continue
            if record is not None and (status is None or record.status == status):
                records.append(record)
        return sorted(records, key=lambda r: r.started_at)

    async def delete_pipeline(self, pipeline_id: str) -> bool:
        """Deletes a run's records; returns whether there were any."""
        self._live.pop(pipeline_id, None)
        task = self._leases.pop(pipeline_id, None)
        if task is not None:
            task.cancel()
        return await self.storage.delete(pipeline_id)

    async def cleanup(self, older_than: float) -> int:
        """Deletes finished runs that ended more than ``older_than`` seconds ago.

        :return: how many were deleted.
        :raises InvalidValueError: for a negative age.
        """
        if not older_than >= 0:
            raise InvalidValueError(f"older_than must be >= 0 seconds, got {older_than!r}")
        cutoff = time.time() - older_than
        deleted = 0
        for record in await self.list_pipelines():
            if record.finished_at is not None and record.finished_at < cutoff:
                deleted += await self.storage.delete(record.pipeline_id)
        return deleted
