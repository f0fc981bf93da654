"""A change counter per run in Redis, so a reader (the dashboard) reads only what changed.

Every write of a run's tracking record through
:class:`~taskiq_flow.tracking.PipelineTrackingManager` is followed by a bump of the run's
counter: one sorted set ``<prefix>:run:<id>:changes`` whose member ``#`` holds the counter
(its score) and whose other members are what the write changed, each scored with the counter
after it: a step's index, or ``*`` for the whole record (the run's head, its number of steps).
The set has at most one member per step plus two, and the TTL of the run's records.

A reader that saw a run at counter ``v`` asks ``ZSCORE key #`` and ``ZRANGE key (v +inf BYSCORE
WITHSCORES``: the same counter and nothing when nothing changed (two small replies per run, all
runs in one round trip), else the changed steps (read with one ``HMGET``) or ``*`` (read the
whole record). The bump follows the write it counts, so a reader that sees a counter also sees
what it counts; a counter lower than one seen (Redis lost its data, the set expired and began
anew) or none (an older writer) means: read the whole record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RedisChanges", "RunChanges", "changes_of"]

#: The member that holds the counter.
COUNTER = "#"
#: The member that says: the whole record changed.
WHOLE = "*"

# KEYS: the run's changes. ARGV: TTL (ms), then the members the write changed.
_BUMP = """
local v = redis.call('ZINCRBY', KEYS[1], 1, '#')
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], v, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return v
"""


@dataclass(slots=True)
class RunChanges:
    """What changed in one run since a counter: ``counter`` now (``None``: the run keeps no
    counter), ``whole`` (read the whole record), else the ``steps`` that changed."""

    counter: int | None
    whole: bool
    steps: list[int]

    @property
    def changed(self) -> bool:
        """Whether anything is to be read."""
        return self.whole or bool(self.steps)


class RedisChanges:
    """The change counters of runs tracked in Redis.

    :param storage: a :class:`~taskiq_flow.distributed.RedisPipelineStorage` (its client, keys
        and TTL).
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self._bump = storage.redis.register_script(_BUMP)

    def key(self, pipeline_id: str) -> str:
        """The key of a run's changes."""
        run_key: str = self.storage.keys_of(pipeline_id)[0]
        return f"{run_key}:changes"

    async def bump(self, pipeline_id: str, steps: Iterable[int] | None) -> None:
        """Counts a write of the run: of ``steps`` (``None``: the whole record)."""
        members = [WHOLE] if steps is None else [str(i) for i in steps]
        ttl_ms = int(self.storage.ttl_seconds * 1000)
        await self._bump(keys=[self.key(pipeline_id)], args=[ttl_ms, *members])

    async def forget(self, pipeline_id: str) -> None:
        """Drops a run's counter (its records were deleted)."""
        await self.storage.redis.delete(self.key(pipeline_id))

    async def since(self, seen: Sequence[tuple[str, int | None, bool]]) -> list[RunChanges]:
        """For each ``(run id, counter seen, it was running)``, what changed since (one round
        trip for all, two small commands per run and a third for a running one: is its lease
        held? a lapsed lease changes its state without a write); a counter seen ``None``: the
        whole record."""
        if not seen:
            return []
        async with self.storage.redis.pipeline(transaction=False) as pipe:
            for pipeline_id, counter, running in seen:
                key = self.key(pipeline_id)
                pipe.zscore(key, COUNTER)
                low = "-inf" if counter is None else f"({counter}"
                pipe.zrange(key, low, "+inf", byscore=True, withscores=True)
                if running:
                    pipe.exists(self.storage.lease_key(pipeline_id))
            replies = list(reversed(await pipe.execute()))
        out = []
        for _, counter, running in seen:
            score, reply = replies.pop(), replies.pop()
            if running and not replies.pop():  # its orchestrator is gone: it reads abandoned
                out.append(RunChanges(None if score is None else int(score), True, []))
                continue
            if score is None:  # no counter (an older writer; expired; Redis lost it)
                out.append(RunChanges(None, True, []))
                continue
            now = int(score)
            if counter is None or now < counter:  # new here, or counted anew from 0
                out.append(RunChanges(now, True, []))
                continue
            whole = False
            steps: list[int] = []
            for raw, _score in reply:
                member = raw.decode() if isinstance(raw, bytes) else str(raw)
                if member == WHOLE:
                    whole = True
                elif member.isdigit():
                    steps.append(int(member))
            out.append(RunChanges(now, whole, sorted(steps)))
        return out

    async def read_steps(self, pipeline_id: str, indices: Sequence[int]) -> list[Any] | None:
        """Steps of a run by index (:class:`~taskiq_flow.tracking.StepStatus`), read with one
        ``HMGET``; ``None`` if one is missing or unreadable (then read the whole record)."""
        from taskiq_flow.distributed.payload import decode
        from taskiq_flow.exceptions import CorruptRecordError
        from taskiq_flow.tracking import StepStatus

        storage = self.storage
        steps_key = storage.keys_of(pipeline_id)[1]
        raws = await storage.redis.hmget(steps_key, [str(i) for i in indices])
        limits = (storage.max_record_bytes + 65_536, storage.max_depth + 2)
        steps = []
        for index, raw in zip(indices, raws):
            if raw is None:
                return None
            try:
                data = decode(raw, f"step {index} of run {pipeline_id}", *limits)
                steps.append(StepStatus.from_record(data))
            except (CorruptRecordError, ValueError, TypeError, KeyError):
                return None
        return steps


def changes_of(storage: Any) -> RedisChanges | None:
    """The change counters of a storage: Redis for a
    :class:`~taskiq_flow.distributed.RedisPipelineStorage`, none for any other (in memory, a
    reader in the same process reads the live record)."""
    try:
        from taskiq_flow.distributed import RedisPipelineStorage
    except ImportError:  # no redis extra: the storage cannot be Redis
        return None
    return RedisChanges(storage) if isinstance(storage, RedisPipelineStorage) else None
