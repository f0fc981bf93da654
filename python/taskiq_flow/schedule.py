"""Pipelines on a schedule, each slot fired exactly once however many schedulers run.

::

    nightly = PipelineSchedule("nightly", pipeline, cron="0 2 * * *", inputs={"day": "today"})
    every_minute = PipelineSchedule("sync", sync_pipeline, every=60)

    # taskiq-flow schedule app:schedules --redis redis://127.0.0.1:6379   (one or many of these)

A schedule's slots are wall-clock times (UTC) every scheduler computes alike: ``every=S`` seconds
from the Unix epoch (``every=60`` fires at each minute's start), or a five-field ``cron`` (minute
resolution, as taskiq's ``cron`` labels). Each slot is triggered as one run per key (see
:mod:`taskiq_flow.once`), its key the schedule's name and the slot's time
(``nightly@2026-05-01T02:00:00Z``): every scheduler triggers every slot, one of them runs it, the
others attach to it (so that one of them takes it over if the one that runs it dies). With a
:class:`~taskiq_flow.once.RedisKeyStore` that holds for any number of scheduler processes and
across their restarts; with the in-memory default, within one process.

A slot missed while every scheduler was down follows the schedule's ``catch_up`` policy, applied
when a scheduler starts and whenever it wakes late (a suspended process):

- ``"last"`` (the default): the most recent slot that has passed fires once (if it already ran,
  its key returns the stored result: nothing runs twice); earlier missed slots do not;
- ``"none"``: no slot that has passed fires; the next one to come does.

A slot's key is kept for three periods (and at least 24 h), so a restart within that time never
runs a slot again. ``start`` and ``end`` bound a schedule to a window of slots.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from taskiq import AsyncBroker

from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.once import DEFAULT_KEY_TTL, KeyStore, default_key_store

__all__ = ["CatchUp", "PipelineSchedule", "Scheduler", "slot_key"]

logger = logging.getLogger(__name__)

CatchUp = Literal["last", "none"]

#: How far a cron schedule looks for its next or previous slot (a year and a day, in minutes).
_CRON_HORIZON = 527_040 + 1_440


def slot_key(name: str, slot: float) -> str:
    """The idempotency key of a schedule's slot: ``name@2026-05-01T02:00:00Z`` (sub-second
    slots keep their fraction)."""
    moment = datetime.fromtimestamp(slot, tz=timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return f"{name}@{text}Z"


@dataclass(frozen=True)
class PipelineSchedule:
    """A pipeline run at each slot of a schedule.

    :param name: the schedule's name (part of each slot's key: keep it stable across restarts).
    :param pipeline: a :class:`~taskiq_flow.DataflowPipeline` (run as ``kiq_dataflow(**inputs)``)
        or a :class:`~taskiq_flow.Pipeline` (run as ``kiq(**inputs)``).
    :param every: seconds between slots, counted from the Unix epoch (> 0).
    :param cron: a five-field cron expression, in UTC (give ``every`` or ``cron``).
    :param inputs: the run's inputs (the same at every slot).
    :param catch_up: ``"last"`` or ``"none"``: what a scheduler does with slots that passed
        while none ran (see the module's docstring).
    :param start: no slot before this time (epoch seconds).
    :param end: no slot at or after this time (epoch seconds): a scheduler stops driving the
        schedule once its last slot's run ended.
    :raises InvalidValueError: for a bad name, period, cron, policy or window; a pipeline that
        is not a pipeline.
    """

    name: str
    pipeline: Any
    every: float | None = None
    cron: str | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: CatchUp = "last"
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        from taskiq_flow.dataflow import DataflowPipeline
        from taskiq_flow.pipeline import Pipeline

        if not isinstance(self.name, str) or not self.name:
            raise InvalidValueError(f"a schedule's name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.pipeline, (DataflowPipeline, Pipeline)):
            raise InvalidValueError(
                f"schedule {self.name!r}: pipeline must be a DataflowPipeline or a Pipeline, got "
                f"{type(self.pipeline).__name__}"
            )
        if (self.every is None) == (self.cron is None):
            raise InvalidValueError(f"schedule {self.name!r}: give every= or cron=, one of them")
        if self.every is not None and (
            isinstance(self.every, bool)
            or not isinstance(self.every, (int, float))
            or not math.isfinite(self.every)
            or not self.every > 0
        ):
            raise InvalidValueError(
                f"schedule {self.name!r}: every must be a finite number of seconds > 0, "
                f"got {self.every!r}"
            )
        if self.cron is not None:
            _check_cron(self.name, self.cron)
        if self.catch_up not in ("last", "none"):
            raise InvalidValueError(
                f"schedule {self.name!r}: catch_up must be 'last' or 'none', got {self.catch_up!r}"
            )
        for what in ("start", "end"):
            value = getattr(self, what)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise InvalidValueError(
                    f"schedule {self.name!r}: {what} must be epoch seconds, got {value!r}"
                )
        if not isinstance(self.inputs, Mapping):
            raise InvalidValueError(f"schedule {self.name!r}: inputs must be a mapping")

    # -- slots -----------------------------------------------------------------------------------

    def _in_window(self, slot: float | None) -> float | None:
        if slot is None or (self.end is not None and slot >= self.end):
            return None
        return slot

    def next_slot(self, after: float) -> float | None:
        """The first slot strictly after ``after`` (``None``: none left in the window)."""
        if self.start is not None and after < self.start:
            if self.slot_at_or_before(self.start, window=False) == self.start:
                return self._in_window(self.start)
            after = self.start
        slot: float | None
        if self.every is not None:
            slot = (math.floor(after / self.every) + 1) * self.every
        else:
            minute = math.floor(after / 60) * 60 + 60
            slot = _cron_scan(self.cron or "", minute, 60)
        return self._in_window(slot)

    def slot_at_or_before(self, moment: float, window: bool = True) -> float | None:
        """The last slot at or before ``moment`` (within the window unless ``window`` is
        false)."""
        if self.every is not None:
            slot: float | None = math.floor(moment / self.every) * self.every
        else:
            slot = _cron_scan(self.cron or "", math.floor(moment / 60) * 60, -60)
        if window and slot is not None:
            if self.end is not None and slot >= self.end:
                slot = self.slot_at_or_before(math.nextafter(self.end, -math.inf), window=False)
            if slot is not None and self.start is not None and slot < self.start:
                return None
        return slot

    # -- a run -----------------------------------------------------------------------------------

    async def fire(self, slot: float, store: KeyStore, ttl: float) -> Any:
        """Triggers the run of ``slot`` (one run per slot key) and returns its result."""
        from taskiq_flow.dataflow import DataflowPipeline

        keyed = self.pipeline.with_idempotency_key(slot_key(self.name, slot), ttl=ttl, store=store)
        if isinstance(self.pipeline, DataflowPipeline):
            return await keyed.kiq_dataflow(**self.inputs)
        result = await (await keyed.kiq(**self.inputs)).wait_result()
        if result.is_err and result.error is not None:
            raise result.error
        return result.return_value

    def key_ttl(self, slot: float) -> float:
        """How long a slot's key is kept: three periods, at least 24 h."""
        following = self.next_slot(slot)
        period = (following - slot) if following is not None else 0.0
        return max(DEFAULT_KEY_TTL, 3 * period)


def _check_cron(name: str, cron: object) -> None:
    import pycron  # type: ignore[import-untyped]  # taskiq's own cron matcher

    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise InvalidValueError(
            f"schedule {name!r}: cron must be five fields (minute hour day month weekday), "
            f"got {cron!r}"
        )
    try:
        pycron.is_now(cron, datetime.now(tz=timezone.utc))
    except Exception as exc:
        raise InvalidValueError(f"schedule {name!r}: cron {cron!r} is not valid: {exc}") from None
    if _cron_scan(cron, math.floor(time.time() / 60) * 60, 60) is None:
        raise InvalidValueError(f"schedule {name!r}: cron {cron!r} never fires within a year")


def _cron_scan(cron: str, first: float, step: int) -> float | None:
    """The first minute from ``first`` (going by ``step`` seconds) that ``cron`` matches."""
    import pycron

    moment = first
    for _ in range(_CRON_HORIZON):
        if pycron.is_now(cron, datetime.fromtimestamp(moment, tz=timezone.utc)):
            return moment
        moment += step
    return None


class Scheduler:
    """Drives schedules: at each slot (and, by each schedule's ``catch_up``, at start), triggers
    its run as one run per slot key. Any number of schedulers may drive the same schedules on one
    :class:`~taskiq_flow.once.RedisKeyStore`: each slot still runs once.

    :param schedules: the schedules.
    :param store: where slot keys are claimed (default: this process's memory: one scheduler).
    :param on_fired: called with ``(schedule, slot, result or exception)`` when a slot's run
        ended (whichever scheduler ran it).
    :raises InvalidValueError: for no schedules, something that is not a schedule, or two
        schedules with one name.
    """

    def __init__(
        self,
        schedules: Iterable[PipelineSchedule],
        store: KeyStore | None = None,
        on_fired: Callable[[PipelineSchedule, float, Any], None] | None = None,
    ) -> None:
        self.schedules = list(schedules)
        if not self.schedules:
            raise InvalidValueError("a scheduler needs at least one PipelineSchedule")
        names: set[str] = set()
        for schedule in self.schedules:
            if not isinstance(schedule, PipelineSchedule):
                raise InvalidValueError(
                    f"a scheduler drives PipelineSchedule objects, got {type(schedule).__name__}"
                )
            if schedule.name in names:
                raise InvalidValueError(f"two schedules are named {schedule.name!r}")
            names.add(schedule.name)
        self.store = store if store is not None else default_key_store()
        self.on_fired = on_fired

    def brokers(self) -> list[AsyncBroker]:
        """The distinct brokers of the schedules' pipelines (to start and shut down)."""
        found: list[AsyncBroker] = []
        for schedule in self.schedules:
            broker = schedule.pipeline.broker
            if all(broker is not b for b in found):
                found.append(broker)
        return found

    async def run(self, clock: Callable[[], float] = time.time) -> None:
        """Drives every schedule until each one's window ends (forever for a schedule without
        ``end``), waiting for the runs it triggered."""
        await asyncio.gather(*(self._drive(s, clock) for s in self.schedules))

    async def _drive(self, schedule: PipelineSchedule, clock: Callable[[], float]) -> None:
        fired: set[asyncio.Task[None]] = set()

        def fire(slot: float) -> None:
            task = asyncio.get_running_loop().create_task(self._fire(schedule, slot))
            fired.add(task)
            task.add_done_callback(fired.discard)

        now = clock()
        if schedule.catch_up == "last":
            last = schedule.slot_at_or_before(now)
            if last is not None:
                fire(last)
        upcoming = schedule.next_slot(now)
        while upcoming is not None:
            await _sleep_until(upcoming, clock)
            now = clock()
            latest = schedule.slot_at_or_before(now)
            if latest is not None and latest > upcoming:  # woke late: slots went by
                if schedule.catch_up == "last":
                    upcoming = latest
                else:
                    upcoming = schedule.next_slot(now)
                    continue
            fire(upcoming)
            upcoming = schedule.next_slot(upcoming)
        while fired:
            await asyncio.gather(*fired, return_exceptions=True)

    async def _fire(self, schedule: PipelineSchedule, slot: float) -> None:
        outcome: Any
        try:
            outcome = await schedule.fire(slot, self.store, schedule.key_ttl(slot))
            logger.info("schedule %s: slot %s done", schedule.name, slot_key("", slot)[1:])
        except Exception as exc:
            outcome = exc
            logger.warning(
                "schedule %s: slot %s failed: %s", schedule.name, slot_key("", slot)[1:], exc
            )
        if self.on_fired is not None:
            self.on_fired(schedule, slot, outcome)


async def _sleep_until(moment: float, clock: Callable[[], float]) -> None:
    """Sleeps until the wall clock reaches ``moment`` (in steps of at most a minute, so that a
    clock that jumps is followed)."""
    while True:
        left = moment - clock()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 60.0))
