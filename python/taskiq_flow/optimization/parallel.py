"""The global parallelism cap: one limit over every pipeline of the process — or of many.

::

    from taskiq_flow.optimization.parallel import set_max_parallel_tasks

    set_max_parallel_tasks(100)   # never more than 100 pipeline tasks in flight in this process
    set_max_parallel_tasks(None)  # no global cap (the default)

    # One cap shared by every orchestrator process that names the same Redis and limit:
    set_max_parallel_tasks(100, redis=Redis.from_url(url), name="etl")

The cap is a :class:`taskiq_flow._core.SharedCap` that every run's scheduler consults while it
admits nodes, so a node leaves the core already holding its global slot. A slot freed by one run is
granted by the core to the run that has waited longest for one (round-robin between runs), and that
run is woken to take it. Across processes, the slots are leases in Redis
(:class:`taskiq_flow.distributed.RedisCapacityLimiter`: an atomic script, leases that expire when
their holder dies): a feeder takes a lease when some run of this process waits for a slot and gives
it back when none does; which node takes a lease is still the core's decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from taskiq_flow._backoff import Backoff
from taskiq_flow._core import SharedCap
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.run.settings import check_max_parallel

__all__ = [
    "CapGroup",
    "RedisCapGroup",
    "get_max_parallel_tasks",
    "global_cap",
    "set_max_parallel_tasks",
]

logger = logging.getLogger(__name__)

#: Longest pause, in seconds, between two tries of a lease feeder that cannot reach Redis.
FEED_RETRY_MAX = 2.0
#: How long ``aclose`` waits for the feeder to stop before giving the leases back itself.
FEEDER_STOP_SECONDS = 5.0


class CapGroup:
    """A shared cap and the runs attached to it, so that a run the core grants a slot is woken.

    :param cap: the core's shared cap.
    """

    def __init__(self, cap: SharedCap) -> None:
        self.cap = cap
        self._runs: dict[int, Callable[[], None]] = {}

    def attach(self, run: int, wake: Callable[[], None]) -> None:
        """Registers a run (its ``DagScheduler.gate_run``) and how to wake it."""
        self._runs[run] = wake

    def detach(self, run: int) -> None:
        """Forgets a run."""
        self._runs.pop(run, None)

    def wake_granted(self) -> None:
        """Wakes every run the core granted a slot since the last call (its scheduler takes the
        slot at its next poll)."""
        for run in self.cap.take_woken():
            wake = self._runs.get(run)
            if wake is not None:
                wake()

    def changed(self) -> None:
        """A run of this process took or gave back slots (a lease feeder reacts)."""

    @property
    def max_parallel(self) -> int | None:
        """The cap, or ``None`` when there is none."""
        cap: int | None = self.cap.max_parallel
        return cap

    async def aclose(self) -> None:
        """Gives back what this process holds elsewhere (nothing for a local cap)."""


class RedisCapGroup(CapGroup):
    """A cap shared through Redis: the core's slots in this process are the leases it holds.

    A feeder task takes a lease (``limiter.acquire()``) while some run of this process waits for a
    slot and gives leases back while more are held than used.
    """

    def __init__(self, limiter: Any) -> None:
        cap = SharedCap(1)
        cap.set_leased(0)
        super().__init__(cap)
        self.limiter = limiter
        self._held = 0
        self._poke: asyncio.Event | None = None
        self._feeder: asyncio.Task[None] | None = None

    @property
    def max_parallel(self) -> int | None:
        """The cap shared by every process."""
        total: int = self.limiter.total_tokens
        return total

    def changed(self) -> None:
        loop = asyncio.get_running_loop()
        if self._feeder is None or self._feeder.done() or self._feeder.get_loop() is not loop:
            self._poke = asyncio.Event()
            self._feeder = loop.create_task(self._feed())
        assert self._poke is not None
        self._poke.set()

    async def aclose(self) -> None:
        """Stops the feeder and gives every lease back, waiting until Redis has them (even if
        the feeder is slow to stop: the leases are given back by the limiter either way)."""
        feeder = self._feeder
        if feeder is not None and not feeder.done():
            feeder.cancel()
            await asyncio.wait({feeder}, timeout=FEEDER_STOP_SECONDS)
        self._held = 0
        self.cap.set_leased(0)
        await self.limiter.aclose()

    async def _feed(self) -> None:
        # Redis reads are awaited through cancellable: redis-py on Python 3.11 can absorb a
        # cancellation that lands as a read's socket timeout fires, and a feeder that does not
        # stop keeps its process's leases renewed while other processes starve.
        from taskiq_flow.distributed.aio import cancellable, reraise_cancellation

        assert self._poke is not None
        poke = self._poke
        cap = self.cap
        busy = Backoff(0.002, 0.05)  # every lease is held elsewhere: try again soon
        down = Backoff(0.05, FEED_RETRY_MAX)  # Redis cannot be reached
        polling = False
        try:
            while True:
                if not polling:
                    await poke.wait()
                    poke.clear()
                try:
                    # One try per turn, and the question asked again each time: a process whose
                    # runs no longer wait stops asking at once (and gives its spare leases back
                    # below), rather than wait for a lease only another process could free.
                    while cap.waiting_runs > 0 and await cancellable(self.limiter.try_acquire()):
                        busy.reset()
                        self._held += 1
                        cap.set_leased(self._held)
                        self.wake_granted()
                    down.reset()
                    spare = self._held - cap.in_use
                    if spare > 0 and cap.waiting_runs == 0:
                        # Given back as soon as no run of this process waits (awaited here,
                        # never left to a task that an ending event loop would destroy).
                        self._held -= spare
                        cap.set_leased(self._held)
                        await cancellable(self.limiter.give_back(spare))
                    polling = cap.waiting_runs > 0  # none free: try again after a pause
                    if polling:
                        await busy.sleep()
                    else:
                        busy.reset()
                except Exception as exc:
                    reraise_cancellation()  # a read cut by our cancellation, reported as an error
                    # Redis unreachable or slow to answer: the runs waiting for a slot wait on,
                    # and the feeder tries again (backing off to FEED_RETRY_MAX seconds) rather
                    # than stop and leave them waiting for a wake-up that never comes.
                    if not down.failing:
                        logger.warning(
                            "the shared cap's lease feeder could not reach Redis (%s: %s); "
                            "retrying",
                            type(exc).__name__,
                            exc,
                        )
                    polling = True
                    await down.sleep()
        except asyncio.CancelledError:
            # aclose(), or the event loop ending (asyncio.run cancels every task and waits for
            # them): no run of this process can use a slot any more. Every lease is given back
            # now, awaited, so that other processes get them at once.
            self._held = 0
            cap.set_leased(0)
            await self.limiter.give_back()
            raise


_LOCAL = CapGroup(SharedCap(None))
_ACTIVE: CapGroup = _LOCAL


def set_max_parallel_tasks(
    n: int | None,
    *,
    redis: Any = None,
    name: str = "global",
    lease_seconds: float = 30.0,
) -> None:
    """Caps the pipeline tasks in flight; ``None`` lifts the cap.

    Without ``redis`` the cap covers this process: lowering it lets tasks already in flight
    finish; raising it admits waiting ones at once. With a ``redis.asyncio.Redis`` client, the cap
    is shared by every process that sets one with the same ``name`` on the same Redis. A process
    gives its slots back as soon as none of its runs waits for one, and all of them when its
    event loop ends (``asyncio.run`` returning, an exception, Ctrl-C); code that drives its own
    loop without cancelling its tasks before closing it calls ``await global_cap().aclose()``
    first. A process that dies holding slots (killed) loses them within ``lease_seconds`` of its
    last renewal; the waiting processes take them within a tenth of a second after that. A run
    keeps the cap that was active when it started.

    :param n: an int from 1 to 4294967295, or ``None``.
    :raises InvalidValueError: for anything else.
    """
    global _ACTIVE
    cap = check_max_parallel(n)
    if redis is not None:
        if cap is None:
            raise InvalidValueError("a shared cap through Redis needs a number of tasks")
        from taskiq_flow.distributed import RedisCapacityLimiter

        _ACTIVE = RedisCapGroup(RedisCapacityLimiter(redis, name, cap, lease_seconds=lease_seconds))
        return
    _ACTIVE = _LOCAL
    _LOCAL.cap.set_max_parallel(cap)


def get_max_parallel_tasks() -> int | None:
    """The global cap, or ``None`` when there is none."""
    return _ACTIVE.max_parallel


def global_cap() -> CapGroup:
    """The cap runs attach to when they start (each keeps the one active then)."""
    return _ACTIVE
