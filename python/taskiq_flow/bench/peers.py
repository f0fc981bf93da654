"""Pure-Python peers the benchmarks measure against (and the tests use as oracles).

They are written to be lean and fair: the fastest straightforward Python for the job, not straw men.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskiq_flow.resources import TaskResources


class KahnSorter:
    """A lean Kahn sorter on integer ids: lists, no dicts, no per-node objects."""

    __slots__ = ("_pending", "_ready", "_succ")

    def __init__(self, node_count: int, sources: Sequence[int], targets: Sequence[int]) -> None:
        succ: list[list[int]] = [[] for _ in range(node_count)]
        pending = [0] * node_count
        for s, t in zip(sources, targets):
            succ[s].append(t)
            pending[t] += 1
        self._succ = succ
        self._pending = pending
        self._ready = [v for v in range(node_count) if pending[v] == 0]

    def get_ready(self) -> list[int]:
        """Nodes released since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def complete(self, node: int) -> list[int]:
        """Marks ``node`` done and returns the nodes it released."""
        pending = self._pending
        released = []
        for s in self._succ[node]:
            pending[s] -= 1
            if pending[s] == 0:
                released.append(s)
        return released


def fits(free: Sequence[int], demand: Sequence[int]) -> bool:
    """Whether ``demand`` fits into ``free``, resource by resource."""
    return all(d <= f for f, d in zip(free, demand))


def first_fit_decreasing(
    capacities: Sequence[Sequence[int]], demands: Sequence[Sequence[int]]
) -> list[int | None]:
    """Classic FFD: tasks by size (largest share of the largest capacity), descending, each onto
    the first worker it fits on. Returns each task's worker or ``None``."""
    return _first_fit(capacities, demands, descending=True)


def smallest_first(
    capacities: Sequence[Sequence[int]], demands: Sequence[Sequence[int]]
) -> list[int | None]:
    """First fit with the smallest tasks first (places the most tasks on uniform capacities)."""
    return _first_fit(capacities, demands, descending=False)


def _first_fit(
    capacities: Sequence[Sequence[int]], demands: Sequence[Sequence[int]], descending: bool
) -> list[int | None]:
    largest = [max(max(c[i] for c in capacities), 1) for i in range(len(capacities[0]))]

    def size(t: int) -> float:
        return max(d / m for d, m in zip(demands[t], largest))

    order = sorted(range(len(demands)), key=size, reverse=descending)
    scanner = FirstFitScanner(capacities)
    result: list[int | None] = [None] * len(demands)
    for t in order:
        result[t] = scanner.place(demands[t])
    return result


class _NoRoom:
    """What lets a Python peer skip a task that cannot fit in constant time: an upper bound on
    each resource's free amount (exact after a scan that found no room), and the demands that found
    no room since capacity last grew."""

    __slots__ = ("failed", "top")

    def __init__(self, capacities: Sequence[Sequence[int]]) -> None:
        self.top = [max(c[i] for c in capacities) for i in range(len(capacities[0]))]
        self.failed: set[tuple[int, ...]] = set()

    def hopeless(self, demand: Sequence[int]) -> bool:
        """Whether ``demand`` surely finds no room."""
        return any(d > t for d, t in zip(demand, self.top)) or tuple(demand) in self.failed

    def missed(self, demand: Sequence[int], free: Sequence[Sequence[int]]) -> None:
        """A scan of every worker found no room for ``demand``."""
        self.failed.add(tuple(demand))
        self.top = [max(col) for col in zip(*free)]

    def grew(self, free: Sequence[int]) -> None:
        """A worker's free capacity grew to ``free``."""
        self.failed.clear()
        self.top = [max(t, f) for t, f in zip(self.top, free)]


class _PythonFit:
    """What the online Python placers share: each worker's free capacity as a list, the
    :class:`_NoRoom` bound, and giving a task's demand back."""

    __slots__ = ("_free", "_room")

    def __init__(self, capacities: Sequence[Sequence[int]]) -> None:
        self._free = [list(c) for c in capacities]
        self._room = _NoRoom(capacities)

    def release(self, worker: int, demand: Sequence[int]) -> None:
        """Gives ``demand`` back to ``worker``."""
        free = self._free[worker]
        for i, d in enumerate(demand):
            free[i] += d
        self._room.grew(free)


class FirstFitScanner(_PythonFit):
    """Online first fit in Python: each task onto the lowest-numbered worker it fits on, skipping
    a task that cannot fit in constant time."""

    __slots__ = ()

    def place(self, demand: Sequence[int]) -> int | None:
        """Places ``demand`` on the first worker it fits on; ``None`` if none has room."""
        if self._room.hopeless(demand):
            return None
        for w, f in enumerate(self._free):
            if fits(f, demand):
                for i, d in enumerate(demand):
                    f[i] -= d
                return w
        self._room.missed(demand, self._free)
        return None

    def workers_used(self, capacities: Sequence[Sequence[int]]) -> int:
        """Workers holding any task."""
        return sum(free != list(cap) for free, cap in zip(self._free, capacities))


class BestFitScorer(_PythonFit):
    """Online best fit in Python: every worker scored by the spare capacity left, lowest wins; a
    task that cannot fit is skipped in constant time."""

    __slots__ = ("_capacity", "_inverse")

    def __init__(self, capacities: Sequence[Sequence[int]]) -> None:
        super().__init__(capacities)
        self._capacity = [list(c) for c in capacities]
        self._inverse = [[1 / x if x else 0.0 for x in c] for c in capacities]

    def place(self, demand: Sequence[int]) -> int | None:
        """Places ``demand`` on the tightest worker it fits on; ``None`` if none has room."""
        if self._room.hopeless(demand):
            return None
        best = None
        best_score = 0.0
        for w, free in enumerate(self._free):
            score = 0.0
            for f, d, inv in zip(free, demand, self._inverse[w]):
                if d > f:
                    break
                score += (f - d) * inv
            else:
                if best is None or score < best_score:
                    best, best_score = w, score
        if best is None:
            self._room.missed(demand, self._free)
            return None
        free = self._free[best]
        for i, d in enumerate(demand):
            free[i] -= d
        return best

    def workers_used(self) -> int:
        """Workers holding any task."""
        return sum(free != cap for free, cap in zip(self._free, self._capacity))


class _NumpyFit:
    """What the online numpy placers share: capacity and free capacity as ``int64`` arrays (a row
    a worker), the :class:`_NoRoom` bound, giving a task's demand back, and counting the workers
    in use. Needs numpy (the ``[bench]`` extra)."""

    __slots__ = ("_capacity", "_free", "_np", "_room")

    def __init__(self, capacities: Sequence[Sequence[int]]) -> None:
        import numpy as np

        self._np = np
        self._capacity = np.array(capacities, dtype=np.int64)
        self._free = self._capacity.copy()
        self._room = _NoRoom(capacities)

    def release(self, worker: int, demand: Sequence[int]) -> None:
        """Gives ``demand`` back to ``worker``."""
        self._free[worker] += self._np.asarray(demand, dtype=self._np.int64)
        self._room.grew(self._free[worker].tolist())

    def workers_used(self) -> int:
        """Workers holding any task."""
        return int((self._free != self._capacity).any(axis=1).sum())


class NumpyBestFit(_NumpyFit):
    """Online best fit with numpy: every worker scored at once, as :class:`BestFitScorer` scores
    them (same choices, ties to the lowest worker), skipping a task that cannot fit in constant
    time. Needs numpy (the ``[bench]`` extra)."""

    __slots__ = ("_inverse",)

    def __init__(self, capacities: Sequence[Sequence[int]]) -> None:
        super().__init__(capacities)
        np = self._np
        total = self._capacity.astype(np.float64)
        self._inverse = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)

    def place(self, demand: Sequence[int]) -> int | None:
        """Places ``demand`` on the tightest worker it fits on; ``None`` if none has room."""
        if self._room.hopeless(demand):
            return None
        np = self._np
        left = self._free - np.asarray(demand, dtype=np.int64)
        fit = (left >= 0).all(axis=1)
        if not fit.any():
            self._room.missed(demand, self._free.tolist())
            return None
        score = (left * self._inverse).sum(axis=1)
        score[~fit] = np.inf
        best = int(score.argmin())
        self._free[best] = left[best]
        return best


class NumpyFirstFit(_NumpyFit):
    """Online first fit with numpy: every worker tested at once, the first that fits wins (as
    :class:`FirstFitScanner`), skipping a task that cannot fit in constant time. Needs numpy."""

    __slots__ = ()

    def place(self, demand: Sequence[int]) -> int | None:
        """Places ``demand`` on the first worker it fits on; ``None`` if none has room."""
        if self._room.hopeless(demand):
            return None
        d = self._np.asarray(demand, dtype=self._np.int64)
        fit = (self._free >= d).all(axis=1)
        first = int(fit.argmax())
        if not fit.any():
            self._room.missed(demand, self._free.tolist())
            return None
        self._free[first] -= d
        return first


class PythonTokenBucket:
    """A plain token bucket in Python, lean: tokens refilled lazily from ``time.monotonic()``,
    a caller that finds none reserves one (the count goes negative) and sleeps until it is due."""

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int = 1) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    async def acquire(self) -> None:
        """Takes the next token, sleeping until it is due."""
        now = time.monotonic()
        tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate) - 1.0
        self._tokens = tokens
        self._updated = now
        if tokens < 0.0:
            await asyncio.sleep(-tokens / self._rate)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class NamedPool:
    """A worker pool in Python behind :class:`~taskiq_flow.ResourceAwareWorkerPool`'s API: a
    task's declared resources in, a worker's name out, holdings kept by task id; placement by
    ``scorer`` (:class:`BestFitScorer` or :class:`NumpyBestFit`)."""

    __slots__ = ("_held", "_names", "scorer")

    def __init__(self, names: Sequence[str], scorer: BestFitScorer | NumpyBestFit) -> None:
        self._names = list(names)
        self.scorer = scorer
        self._held: dict[int, tuple[int, tuple[int, int, int]]] = {}

    def place(self, task: TaskResources, task_id: int) -> str | None:
        """Places one run of ``task``: its worker's name, or ``None`` if none has room."""
        if task_id in self._held:
            raise ValueError(f"task {task_id} is placed already")
        demand = (task.cpu_milli, task.ram_mb, task.extra.get("gpu", 0))
        worker = self.scorer.place(demand)
        if worker is None:
            return None
        self._held[task_id] = (worker, demand)
        return self._names[worker]

    def release(self, task_id: int) -> str:
        """Gives back what ``task_id`` holds; returns its worker's name."""
        worker, demand = self._held.pop(task_id)
        self.scorer.release(worker, demand)
        return self._names[worker]
