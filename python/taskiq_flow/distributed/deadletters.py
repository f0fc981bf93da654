"""Dead letters in Redis: steps that failed for good, listed and replayed from any process.

A run tracked in Redis (:class:`~taskiq_flow.distributed.RedisPipelineStorage`) records its dead
letters here, under the same prefix, without being told (:func:`taskiq_flow.run.failures.
dead_letters_for`); ``taskiq-flow runs dead-letters`` lists them and ``taskiq-flow runs replay``
sends one again, from another process.

Keys, under one prefix, all with a TTL:

- ``<prefix>:deadletter:<id>``          one record (a JSON object: the fields of
  :class:`~taskiq_flow.retry.DeadLetter`, its arguments exactly as JSON carries them);
- ``<prefix>:run:<id>:deadletters``     a set: the ids of one run's records.

Bounds: each record expires ``ttl_seconds`` after it was written (by default the TTL of the run's
tracking records, a week: a run and its dead letters go away together), is at most
``max_record_bytes`` of JSON, and one run keeps at most ``max_per_run`` records (1,000 by default:
a map whose every item fails cannot fill Redis; past the cap a record is not kept, and a warning
says so once per run). A record that cannot be read back raises
:class:`~taskiq_flow.exceptions.CorruptRecordError` naming its key (listings skip it and report
it).

The runner adds records without waiting (:meth:`RedisDeadLetterQueue.add` starts the write in the
background) and awaits :meth:`~RedisDeadLetterQueue.flush` before its run returns. A record Redis
did not take (Redis unreachable, or arguments JSON cannot carry unchanged) is not dropped: it is
kept in the store's object, listed and replayable there, and logged (``taskiq_flow`` logger,
WARNING).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from taskiq_flow.distributed.keys import validate_key_part
from taskiq_flow.distributed.payload import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    check_limits,
    decode,
    encode,
)
from taskiq_flow.exceptions import (
    CorruptRecordError,
    InvalidValueError,
    PayloadTooLargeError,
    UnknownIdError,
)
from taskiq_flow.retry import DeadLetter, DeadLetterStore

if TYPE_CHECKING:
    from taskiq_flow.distributed.storage import RedisPipelineStorage

__all__ = ["DEFAULT_MAX_PER_RUN", "RedisDeadLetterQueue"]

#: The most dead letters one run keeps in Redis, by default.
DEFAULT_MAX_PER_RUN = 1_000
#: Keys read per MGET when listing.
_CHUNK = 500

logger = logging.getLogger(__name__)

# KEYS: the record, its run's set. ARGV: id, JSON, TTL in seconds, the cap per run.
# Returns 1 once stored, 0 if the run already holds the cap.
_ADD = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0
   and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "pipeline_id": str,
    "step": str,
    "task_name": str,
    "args": list,
    "kwargs": dict,
    "error": str,
    "error_type": str,
    "attempts": int,
    "failed_at": (int, float),
}


class RedisDeadLetterQueue(DeadLetterStore):
    """Dead letters kept in Redis (see the module's docstring for the keys and bounds), so that
    any process can list and replay them.

    ::

        store = RedisDeadLetterQueue(Redis.from_url(url), prefix="taskiq_flow")
        for letter in await store.alist(run_id):
            print(letter.step, letter.error)
        value = await store.replay(letter.id, broker, timeout=30)

    :param redis: a ``redis.asyncio.Redis`` client.
    :param prefix: key prefix (letters, digits, ``_ . -``): the tracking storage's, to find a
        run's dead letters beside its records.
    :param ttl_seconds: lifetime of a record (default a week, as tracking records).
    :param max_per_run: the most records one run keeps (default 1,000).
    :param max_record_bytes: the largest record, as JSON (default 1 MiB).
    :param max_depth: the deepest nesting of a record (default 100).
    :raises InvalidValueError: for an unsafe prefix or a bound that is not a whole number >= 1.
    """

    __slots__ = (
        "_add",
        "_capped",
        "_pending",
        "_unsaved",
        "_writer",
        "max_depth",
        "max_per_run",
        "max_record_bytes",
        "prefix",
        "redis",
        "ttl_seconds",
    )

    def __init__(
        self,
        redis: Redis,
        prefix: str = "taskiq_flow",
        ttl_seconds: int = 7 * 86_400,
        max_per_run: int = DEFAULT_MAX_PER_RUN,
        max_record_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        for name, value in (("ttl_seconds", ttl_seconds), ("max_per_run", max_per_run)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValueError(f"{name} must be an int >= 1, got {value!r}")
        self.redis = redis
        self.prefix = validate_key_part("prefix", prefix)
        self.ttl_seconds = ttl_seconds
        self.max_per_run = max_per_run
        self.max_record_bytes, self.max_depth = check_limits(max_record_bytes, max_depth)
        self._add = redis.register_script(_ADD)
        #: Added, not yet in Redis (a write is under way or failed): written by the next flush.
        self._pending: dict[str, DeadLetter] = {}
        #: Refused by Redis's encoding (arguments JSON cannot carry): kept here only.
        self._unsaved: dict[str, DeadLetter] = {}
        self._writer: asyncio.Task[None] | None = None
        self._capped: set[str] = set()

    @classmethod
    def for_storage(cls, storage: RedisPipelineStorage) -> RedisDeadLetterQueue:
        """The dead letters beside a tracking storage's records: its client, its prefix, its TTL
        and its size limits."""
        return cls(
            storage.redis,
            prefix=storage.prefix,
            ttl_seconds=storage.ttl_seconds,
            max_record_bytes=storage.max_record_bytes,
            max_depth=storage.max_depth,
        )

    # -- keys ------------------------------------------------------------------------------------

    def record_key(self, record_id: str) -> str:
        """The key of one record.

        :raises InvalidValueError: for an id that is not a safe key part.
        """
        return f"{self.prefix}:deadletter:{validate_key_part('dead letter id', record_id)}"

    def run_key(self, pipeline_id: str) -> str:
        """The key of the set of one run's record ids."""
        return f"{self.prefix}:run:{validate_key_part('pipeline id', pipeline_id)}:deadletters"

    # -- writing ---------------------------------------------------------------------------------

    def add(self, record: DeadLetter) -> None:
        """Records a dead letter: starts writing it to Redis in the background (the record is
        listed and replayable through this object at once); :meth:`flush` waits for the write.

        :raises InvalidValueError: for a run id or record id that is not a safe key part.
        """
        self.record_key(record.id)
        self.run_key(record.pipeline_id)
        self._pending[record.id] = record
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here: the next flush writes it
            return
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())

    async def flush(self) -> None:
        """Waits until every record added so far is written to Redis, trying again those an
        earlier write failed to store. Never raises: what Redis did not take is logged
        (``taskiq_flow`` logger, WARNING) and kept in this object (:attr:`unsaved`)."""
        if self._pending and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write())
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._pending:
            logger.warning(
                "%d dead letter(s) could not be written to Redis; they are kept in this "
                "process only: %s",
                len(self._pending),
                ", ".join(sorted(self._pending)),
            )

    @property
    def unsaved(self) -> list[DeadLetter]:
        """Records added to this object that are not in Redis (yet, or at all), oldest first."""
        return sorted([*self._pending.values(), *self._unsaved.values()], key=_when)

    def _encode(self, record: DeadLetter) -> str:
        data = {
            "id": record.id,
            "pipeline_id": record.pipeline_id,
            "step": record.step,
            "task_name": record.task_name,
            "args": list(record.args),
            "kwargs": record.kwargs,
            "error": record.error,
            "error_type": record.error_type,
            "attempts": record.attempts,
            "failed_at": record.failed_at,
        }
        what = f"dead letter {record.id} (step {record.step!r} of run {record.pipeline_id})"
        return encode(data, what, self.max_record_bytes, self.max_depth)

    async def _write(self) -> None:
        """Writes what is pending, a batch per round trip, until nothing is."""
        while self._pending:
            batch: list[tuple[DeadLetter, str]] = []
            for record in list(self._pending.values())[:_CHUNK]:
                try:
                    batch.append((record, self._encode(record)))
                except PayloadTooLargeError as exc:
                    del self._pending[record.id]
                    self._unsaved[record.id] = record
                    logger.warning("%s; it is kept in this process only", exc)
            if not batch:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for record, text in batch:
                        keys = [self.record_key(record.id), self.run_key(record.pipeline_id)]
                        args: list[str | int] = [
                            record.id,
                            text,
                            self.ttl_seconds,
                            self.max_per_run,
                        ]
                        await self._add(keys=keys, args=args, client=pipe)
                    answers = await pipe.execute()
            except Exception as exc:  # Redis gone or stalled: kept, tried again by flush
                logger.warning(
                    "could not write %d dead letter(s) to Redis (kept in this process, tried "
                    "again at the next flush): %s: %s",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
                return
            for (record, _), stored in zip(batch, answers):
                self._pending.pop(record.id, None)
                if not stored and record.pipeline_id not in self._capped:
                    self._capped.add(record.pipeline_id)
                    logger.warning(
                        "run %s has %d dead letters in Redis (max_per_run); later ones are not "
                        "kept (the first: step %r, %s)",
                        record.pipeline_id,
                        self.max_per_run,
                        record.step,
                        record.error,
                    )

    # -- reading ---------------------------------------------------------------------------------

    def _parse(self, key: str, raw: bytes | str) -> DeadLetter:
        """A stored record.

        :raises CorruptRecordError: naming ``key``.
        """
        data = decode(
            raw, f"the dead letter at {key}", self.max_record_bytes + 65_536, self.max_depth + 2
        )
        if not isinstance(data, dict):
            raise CorruptRecordError(f"the dead letter at {key} is not a JSON object")
        for name, kind in _FIELDS.items():
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise CorruptRecordError(
                    f"the dead letter at {key} has no valid {name!r} (got {type(value).__name__})"
                )
        if not math.isfinite(data["failed_at"]):
            raise CorruptRecordError(f"the dead letter at {key} has no valid 'failed_at'")
        return DeadLetter(
            pipeline_id=data["pipeline_id"],
            step=data["step"],
            task_name=data["task_name"],
            args=tuple(data["args"]),
            kwargs=data["kwargs"],
            error=data["error"],
            error_type=data["error_type"],
            attempts=data["attempts"],
            failed_at=float(data["failed_at"]),
            id=data["id"],
        )

    def _local(self, record_id: str) -> DeadLetter | None:
        return self._pending.get(record_id) or self._unsaved.get(record_id)

    async def alist(
        self, pipeline_id: str | None = None, corrupt: list[CorruptRecordError] | None = None
    ) -> list[DeadLetter]:
        """Dead letters in Redis (and those of this object not written yet), oldest first.

        :param pipeline_id: only this run's (default: all, found by a SCAN of the prefix).
        :param corrupt: where the error of each record that cannot be read back goes (it names
            the key); such records are skipped, the others listed.
        :raises InvalidValueError: for a run id that is not a safe key part.
        """
        if pipeline_id is not None:
            members = await self.redis.smembers(self.run_key(pipeline_id))
            keys = sorted(
                self.record_key(m.decode() if isinstance(m, bytes) else m) for m in members
            )
        else:
            found = self.redis.scan_iter(match=f"{self.prefix}:deadletter:*", count=_CHUNK)
            keys = sorted([k.decode() if isinstance(k, bytes) else k async for k in found])
        records = {r.id: r for r in self.unsaved if pipeline_id in (None, r.pipeline_id)}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            for key, raw in zip(chunk, await self.redis.mget(chunk)):
                if raw is None:  # expired or removed since the set or the scan named it
                    continue
                try:
                    record = self._parse(key, raw)
                except CorruptRecordError as exc:
                    if corrupt is not None:
                        corrupt.append(exc)
                    continue
                if pipeline_id is None or record.pipeline_id == pipeline_id:
                    records.setdefault(record.id, record)
        return sorted(records.values(), key=_when)

    async def aget(self, record_id: str) -> DeadLetter:
        """One dead letter by id.

        :raises UnknownIdError: if there is none with that id.
        :raises InvalidValueError: for an id that is not a safe key part (nothing is read).
        :raises CorruptRecordError: if it cannot be read back (naming its key).
        """
        key = self.record_key(record_id)
        local = self._local(record_id)
        if local is not None:
            return local
        raw = await self.redis.get(key)
        if raw is None:
            raise UnknownIdError(f"no dead letter with id {record_id!r}")
        return self._parse(key, raw)

    async def aremove(self, record_id: str) -> DeadLetter:
        """Removes and returns a dead letter.

        :raises UnknownIdError: if there is none with that id (or another process removed it
            first).
        :raises CorruptRecordError: if it cannot be read back (it is left as it is).
        """
        record = await self.aget(record_id)
        local = self._pending.pop(record_id, None) or self._unsaved.pop(record_id, None)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.record_key(record_id))
            pipe.srem(self.run_key(record.pipeline_id), record_id)
            deleted, _ = await pipe.execute()
        if not deleted and local is None:
            raise UnknownIdError(f"no dead letter with id {record_id!r} (removed meanwhile)")
        return record

    async def delete_run(self, pipeline_id: str) -> int:
        """Removes every dead letter of one run (as its tracking records are deleted).

        :return: how many records there were.
        """
        run_key = self.run_key(pipeline_id)
        members = await self.redis.smembers(run_key)
        keys = [self.record_key(m.decode() if isinstance(m, bytes) else m) for m in members]
        for record_id in [r.id for r in self.unsaved if r.pipeline_id == pipeline_id]:
            self._pending.pop(record_id, None)
            self._unsaved.pop(record_id, None)
        deleted = 0
        for start in range(0, len(keys), _CHUNK):
            deleted += int(await self.redis.delete(*keys[start : start + _CHUNK]))
        await self.redis.delete(run_key)
        return deleted


def _when(record: DeadLetter) -> float:
    return record.failed_at
