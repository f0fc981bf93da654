"""Resource-aware scheduling: what a task needs, what workers offer, and who runs what.

Annotate tasks with what they need, in either order with ``@broker.task``::

    @broker.task
    @CPUProfile(cpu_units=2)        # 2 cores
    @RAMProfile(ram_mb=4096)        # 4 GB
    def heavy_computation(data): ...

    @ResourceProfile(gpu=1, labels={"gpu": True})   # any named resource, and required labels
    @broker.task
    async def embed(text): ...

and describe the workers::

    pool = ResourceAwareWorkerPool(
        workers=[
            {"cpu_cores": 8, "ram_gb": 32, "gpu": 1, "labels": {"gpu": True}},
            {"cpu_cores": 4, "ram_gb": 16, "labels": {"gpu": False}},
        ]
    )

The Rust placement core decides which worker takes each task (best fit by default) and holds the
capacity until it is released. A task no worker could ever take is refused when it is submitted,
naming the resource or label and the largest offer; :meth:`ResourceAwareWorkerPool.explain` says why
a task waits. Pipelines given a pool (``pipeline.with_worker_pool(pool)``) have every task placed by
the core as it is admitted (it leaves the core already holding its worker), and label its message
with that worker.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from taskiq.decor import AsyncTaskiqDecoratedTask

from taskiq_flow._core import PoolPlacements, WorkerPool
from taskiq_flow.exceptions import InvalidValueError, UnknownIdError, UnschedulableError

__all__ = [
    "CPUProfile",
    "RAMProfile",
    "ResourceAwareWorkerPool",
    "ResourceProfile",
    "TaskResources",
    "WorkerSpec",
    "resources_of",
]

_F = TypeVar("_F")
_ATTR = "__taskiq_flow_resources__"
#: Label the engine puts on a message placed on a worker.
WORKER_LABEL = "taskiq_flow_worker"
#: Label naming the placed worker's own queue, which the reliable Redis broker sends to.
QUEUE_LABEL = "taskiq_flow_queue"


@dataclass(frozen=True, slots=True)
class TaskResources:
    """What one run of a task needs: CPU in milli-cores, RAM in MB, named resources, labels."""

    cpu_milli: int = 0
    ram_mb: int = 0
    extra: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)

    def merged(self, other: TaskResources) -> TaskResources:
        """This profile with ``other``'s non-zero parts laid over it."""
        return TaskResources(
            cpu_milli=other.cpu_milli or self.cpu_milli,
            ram_mb=other.ram_mb or self.ram_mb,
            extra={**self.extra, **other.extra},
            labels={**self.labels, **other.labels},
        )


def _amount(what: str, value: object, scale: float = 1.0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValueError(f"{what} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return round(value * scale)


def _annotate(resources: TaskResources) -> Callable[[_F], _F]:
    def mark(target: _F) -> _F:
        holders: list[object] = [target]
        if isinstance(target, AsyncTaskiqDecoratedTask):
            holders.append(target.original_func)
        for holder in holders:
            current: TaskResources | None = getattr(holder, _ATTR, None)
            setattr(holder, _ATTR, current.merged(resources) if current else resources)
        return target

    return mark


def CPUProfile(cpu_units: float) -> Callable[[_F], _F]:
    """Declares the CPU cores one run of the task needs (fractions allowed: 0.5 is half a core).

    :raises InvalidValueError: for a negative, NaN or infinite amount.
    """
    return _annotate(TaskResources(cpu_milli=_amount("cpu_units", cpu_units, 1000.0)))


def RAMProfile(ram_mb: int) -> Callable[[_F], _F]:
    """Declares the memory, in MB, one run of the task needs.

    :raises InvalidValueError: for a negative, NaN or infinite amount.
    """
    return _annotate(TaskResources(ram_mb=_amount("ram_mb", ram_mb)))


def ResourceProfile(
    labels: Mapping[str, Any] | None = None, **amounts: float
) -> Callable[[_F], _F]:
    """Declares named resources (``gpu=1``) and labels a worker must carry (``{"gpu": True}``).

    :raises InvalidValueError: for a negative, NaN or infinite amount.
    """
    extra = {name: _amount(name, value) for name, value in amounts.items()}
    return _annotate(TaskResources(extra=extra, labels=dict(labels or {})))


def resources_of(task: object) -> TaskResources:
    """The resources declared on a task (nothing declared: needs nothing); a
    :class:`TaskResources` stands for itself."""
    if isinstance(task, TaskResources):
        return task
    found = getattr(task, _ATTR, None)
    if found is None and isinstance(task, AsyncTaskiqDecoratedTask):
        found = getattr(task.original_func, _ATTR, None)
    return found if isinstance(found, TaskResources) else _NOTHING


#: What a task that declares nothing needs: one shared object (pools remember classes by object),
#: read-only all through.
_NOTHING = TaskResources(extra=MappingProxyType({}), labels=MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A worker as the pool sees it: a name, what it offers, its labels."""

    name: str
    cpu_milli: int
    ram_mb: int
    extra: Mapping[str, int]
    labels: Mapping[str, Any]
    #: The worker's own queue, when it consumes one (``taskiq-flow worker``): tasks placed on it
    #: are sent there.
    queue: str | None = None

    @classmethod
    def parse(cls, index: int, spec: Mapping[str, Any]) -> WorkerSpec:
        """Reads the guide's form: ``cpu_cores``, ``ram_gb`` or ``ram_mb``, ``labels``, and any
        other key as a named resource (``gpu=2``)."""
        spec = dict(spec)
        name = str(spec.pop("name", f"worker-{index}"))
        queue = spec.pop("queue", None)
        labels = spec.pop("labels", {}) or {}
        if not isinstance(labels, Mapping):
            raise InvalidValueError(f"labels of {name} must be a mapping, got {labels!r}")
        cpu = _amount(f"cpu_cores of {name}", spec.pop("cpu_cores", 0), 1000.0)
        if "ram_gb" in spec and "ram_mb" in spec:
            raise InvalidValueError(f"{name} gives both ram_gb and ram_mb; give one")
        ram = (
            _amount(f"ram_gb of {name}", spec.pop("ram_gb"), 1024.0)
            if "ram_gb" in spec
            else _amount(f"ram_mb of {name}", spec.pop("ram_mb", 0))
        )
        extra = {key: _amount(f"{key} of {name}", value) for key, value in spec.items()}
        return cls(name, cpu, ram, extra, dict(labels), None if queue is None else str(queue))


def _label(key: str, value: Any) -> str:
    """``key=value`` with JSON spelling for booleans and numbers, so that ``{"gpu": True}`` and a
    command line's ``--label gpu=true`` name the same label."""
    if isinstance(value, (bool, int, float)) or value is None:
        value = json.dumps(value)
    return f"{key}={value}"


class ResourceAwareWorkerPool:
    """Workers with capacities and labels; the Rust core places each task on one that fits.

    The placement queue is the core's too (:class:`taskiq_flow._core.WorkerPool`): tasks that
    find no room wait in arrival order, and each release places every waiting task that fits now,
    so a big task never blocks small ones behind it; a task passed over ``max_bypass`` times
    blocks the queue until it is placed, so it is never starved either. Every run given the pool
    shares that one queue.

    :param workers: one mapping per worker (see :meth:`WorkerSpec.parse`).
    :param policy: ``"best_fit"`` (pack, the default), ``"spread"`` or ``"first_fit"``.
    :param max_bypass: placements that may pass a waiting task before it blocks the queue.
    :raises InvalidValueError: for a negative capacity, a worker offering nothing, no workers.
    """

    def __init__(
        self,
        workers: Sequence[Mapping[str, Any]],
        policy: str = "best_fit",
        *,
        max_bypass: int = 32,
    ) -> None:
        if not workers:
            raise InvalidValueError("a worker pool needs at least one worker")
        self.workers = [WorkerSpec.parse(i, w) for i, w in enumerate(workers)]
        names = [w.name for w in self.workers]
        if len(set(names)) != len(names):
            raise InvalidValueError(f"worker names must be unique, got {names}")
        extras = sorted({key for w in self.workers for key in w.extra})
        self.resources = ["cpu_milli", "ram_mb", *extras]
        if isinstance(max_bypass, bool) or not isinstance(max_bypass, int) or max_bypass < 0:
            raise InvalidValueError(f"max_bypass must be an int >= 0, got {max_bypass!r}")
        #: The core's pool: placer and placement queue, shared by every run using this pool.
        self.core = WorkerPool(self.resources, policy, max_bypass)  # type: ignore[arg-type]
        for w in self.workers:
            capacity = [w.cpu_milli, w.ram_mb, *(w.extra.get(k, 0) for k in extras)]
            labels = [self.core.label(_label(k, v)) for k, v in w.labels.items()]
            self.core.add_worker(capacity, labels)
        self._extras = extras
        self._extras_offered = frozenset(extras)
        self._no_extras = [0] * len(extras)
        self._policy = policy
        self._runs: dict[int, Callable[[], None]] = {}
        #: Placements outside any run (:meth:`place`, :meth:`acquire`, :meth:`release`), made by
        #: the core under a run id of their own; a task object's class is remembered there.
        self._placements = PoolPlacements(
            self.core, [w.name for w in self.workers], self._new_class, self.wake_placed
        )
        self._own = self._placements.run
        # The hot pair goes straight to the core, as threading.Condition binds its lock's
        # acquire/release: the methods below document them and do the same through a frame. A
        # subclass that overrides one keeps its own.
        if type(self).place is ResourceAwareWorkerPool.place:
            self.place = self._placements.place  # type: ignore[method-assign]
        if type(self).release is ResourceAwareWorkerPool.release:
            self.release = self._placements.release  # type: ignore[method-assign]
        self._waiters: dict[int, asyncio.Future[int]] = {}
        #: ``(run, node)`` placements whose worker went away, not yet handled by their run.
        self.lost: set[tuple[int, int]] = set()
        self._removed: set[str] = set()
        #: Where live workers are read from (see :meth:`watch`), and how often.
        self.discover: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]] | None = None
        self.refresh_interval = 1.0
        self._refreshed_at = 0.0

    def watch(
        self,
        discover: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]],
        interval: float = 1.0,
    ) -> ResourceAwareWorkerPool:
        """Keeps the pool in step with live workers: runs using it call :meth:`refresh` every
        ``interval`` seconds, which reads ``discover()`` (e.g.
        ``lambda: discover_workers(redis, broker=broker)``). Returns the pool."""
        self.discover = discover
        self.refresh_interval = interval
        return self

    async def refresh(self) -> None:
        """Re-reads the live workers (at most once per ``refresh_interval``) and applies them
        with :meth:`sync`."""
        if self.discover is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self._refreshed_at < self.refresh_interval:
            return
        self._refreshed_at = now
        self.sync(await self.discover())

    async def take_lost(self, run: int) -> list[int]:
        """Refreshes the live workers (see :meth:`refresh`) and takes the nodes of ``run`` whose
        worker went away since the last call: their run fails their attempt with
        :class:`~taskiq_flow.exceptions.WorkerLostError`, which places and sends them again."""
        await self.refresh()
        mine = [placement for placement in self.lost if placement[0] == run]
        self.lost.difference_update(mine)
        return [node for _, node in mine]

    def sync(self, workers: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """Makes the pool's workers the given ones: new ones are added (waiting tasks that fit
        are placed on them); those gone are removed, and what was placed on them is recorded in
        :attr:`lost`. Returns the lost ``(run, node)`` placements."""
        specs = [WorkerSpec.parse(i, w) for i, w in enumerate(workers)]
        live = {s.name for s in specs}
        lost: list[tuple[int, int]] = []
        for index, known in enumerate(self.workers):
            if known.name not in live and known.name not in self._removed:
                lost += self.core.remove_worker(index)
                self._removed.add(known.name)
        known_names = {w.name for w in self.workers}
        for spec in specs:
            if spec.name in self._removed and spec.name in live:
                continue  # a name comes back only as a new worker, under a new name
            if spec.name not in known_names:
                self._add(spec)
        self.lost.update(lost)
        self.wake_placed()
        return lost

    def _add(self, spec: WorkerSpec) -> None:
        unknown = sorted(set(spec.extra) - set(self._extras))
        if unknown:
            raise InvalidValueError(
                f"worker {spec.name} offers {unknown}, which this pool was not built with"
            )
        capacity = [spec.cpu_milli, spec.ram_mb, *(spec.extra.get(k, 0) for k in self._extras)]
        labels = [self.core.label(_label(k, v)) for k, v in spec.labels.items()]
        self.core.add_worker(capacity, labels)
        self.workers.append(spec)
        self._placements.add_name(spec.name)

    def _demand(self, needs: TaskResources) -> tuple[list[int], list[int]]:
        extra = needs.extra
        amounts = [needs.cpu_milli, needs.ram_mb]
        if extra:
            if not extra.keys() <= self._extras_offered:
                unknown = sorted(extra.keys() - self._extras_offered)
                raise UnschedulableError(
                    f"task needs {', '.join(f'{k}={extra[k]}' for k in unknown)} "
                    f"but no worker offers {', '.join(unknown)}"
                )
            amounts.extend(map(extra.get, self._extras, self._no_extras))
        else:
            amounts += self._no_extras
        if not needs.labels:
            return amounts, []
        return amounts, [self.core.label(_label(k, v)) for k, v in needs.labels.items()]

    def class_of(self, task: object) -> int:
        """The core's demand class of what ``task`` needs (registered on first use, then
        remembered for the task object: declare a task's resources before the pool first sees
        it).

        :raises UnschedulableError: if no worker could ever run it.
        """
        return self._placements.class_of(task)

    def _new_class(self, task: object) -> int:
        """What :meth:`class_of` asks the first time it sees ``task``."""
        amounts, labels = self._demand(resources_of(task))
        return self.core.add_class(amounts, labels)  # an equal demand gets its class back

    def check(self, task: object) -> None:
        """Raises :class:`UnschedulableError` (naming what is missing) if no worker could ever
        run ``task``."""
        amounts, labels = self._demand(resources_of(task))
        self.core.check(amounts, labels)

    # -- runs sharing the pool -------------------------------------------------------------------

    def attach(self, run: int, wake: Callable[[], None]) -> None:
        """Registers a run (its ``DagScheduler.pool_run``) and how to wake it when the core places
        one of its waiting nodes."""
        self._runs[run] = wake

    def detach(self, run: int) -> None:
        """Forgets a run."""
        self._runs.pop(run, None)

    def wake_placed(self) -> None:
        """Wakes every run (and standalone waiter) that had nodes placed since the last call."""
        for run in self.core.take_woken():
            if run == self._own:
                for task_id in self.core.take_placed(run):
                    future = self._waiters.pop(task_id, None)
                    if future is None or future.done():
                        self.core.release(run, task_id)  # its waiter gave up meanwhile
                    else:
                        worker = self.core.worker_of(run, task_id)
                        future.set_result(-1 if worker is None else worker)
                continue
            wake = self._runs.get(run)
            if wake is not None:
                wake()

    # -- placements outside any run --------------------------------------------------------------

    def place(self, task: object, task_id: int) -> str | None:
        """Places one run of ``task`` now: the worker's name, or ``None`` if none has room yet
        (nothing is queued).

        :raises UnschedulableError: if no worker could ever run it.
        :raises InvalidValueError: if ``task_id`` is not an integer from 0 to 4294967295.
        :raises StateError: if ``task_id`` holds a placement already.
        """
        return self._placements.place(task, task_id)

    async def acquire(self, task: object, task_id: int) -> str:
        """Places one run of ``task``, waiting in the core's placement queue until a worker has
        room for it.

        :raises UnschedulableError: at once, if no worker could ever run it.
        """
        placed = self._placements.place(task, task_id, True)
        if placed is not None:
            return placed
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[task_id] = future
        try:
            return self.workers[await future].name
        except BaseException:
            self._waiters.pop(task_id, None)
            if future.done() and not future.cancelled():
                self.release(task_id)  # placed as we were cancelled: give it back
            else:
                self.core.release(self._own, task_id)  # out of the queue
            raise

    def release(self, task_id: int) -> str:
        """Gives a placed task's capacity back; returns its worker. Waiting tasks that fit now
        are placed.

        :raises UnknownIdError: if that task holds nothing.
        """
        return self._placements.release(task_id)

    def explain(self, task: object) -> dict[str, list[str]]:
        """For every worker that cannot take ``task`` now, why not."""
        amounts, labels = self._demand(resources_of(task))
        return {self.workers[w].name: reasons for w, reasons in self.core.explain(amounts, labels)}

    def free(self, worker: str) -> dict[str, int]:
        """What a worker has free, by resource."""
        for i, w in enumerate(self.workers):
            if w.name == worker:
                return dict(zip(self.resources, self.core.free(i)))
        raise UnknownIdError(f"no worker named {worker!r}")

    def queue_of(self, run: int, node: int) -> str | None:
        """The own queue of the worker a placed node holds capacity on, if it has one."""
        worker = self.core.worker_of(run, node)
        return None if worker is None else self.workers[worker].queue

    def worker_of(self, run: int, node: int) -> str | None:
        """The worker a placed node of ``run`` holds capacity on."""
        worker = self.core.worker_of(run, node)
        return None if worker is None else self.workers[worker].name

    @property
    def placed_count(self) -> int:
        """Tasks holding capacity now."""
        return self.core.placed_count

    @property
    def waiting_count(self) -> int:
        """Tasks waiting for a worker with room."""
        return self.core.waiting_count

    def __repr__(self) -> str:
        return f"ResourceAwareWorkerPool({self.workers!r})"
