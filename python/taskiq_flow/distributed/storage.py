"""Tracking records in Redis, bounded, with a lease that tells a live run from an abandoned one.

Keys of one run, all under one prefix and all with a TTL:

- ``<prefix>:run:<id>``          the run (a JSON string);
- ``<prefix>:run:<id>:steps``    a hash, one JSON field per step (concurrent steps never
  overwrite each other);
- ``<prefix>:run:<id>:results``  a hash, finished nodes' values (what a resumed run starts
  from);
- ``<prefix>:run:<id>:inputs``   the run's inputs (JSON: ``{"inputs": {...}}``), or why they were
  not stored (``{"not_stored": "..."}``: over ``max_record_bytes``, too deep, not JSON);
- ``<prefix>:run:<id>:lease``    the orchestrator's lease: its owner id, expiring after
  ``lease_seconds`` unless renewed.

The orchestrator's :class:`~taskiq_flow.tracking.PipelineTrackingManager` renews the lease every
third of ``lease_seconds`` while the run is live, and each renewal pushes the run's keys' expiry
to at least ``max(ttl_seconds, lease_seconds)``: a TTL shorter than a step never lets a live run's
records expire. A record whose status is ``running`` but whose lease has lapsed reads back as
``abandoned`` (its orchestrator died). A record that cannot be read raises
:class:`~taskiq_flow.exceptions.CorruptRecordError` (and is skipped by listings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from pydantic_core import to_jsonable_python
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
    StateError,
)
from taskiq_flow.tracking import PipelineStatus, StepStatus

__all__ = ["DEFAULT_RUN_LEASE_SECONDS", "RedisPipelineStorage"]

#: How long a run stays ``running`` after its orchestrator stopped renewing its lease.
DEFAULT_RUN_LEASE_SECONDS = 15.0
#: Longest error text kept in a step or run record.
_MAX_ERROR = 4_096

# KEYS: lease, run, steps, results, inputs. ARGV: owner, lease ms, keys' expiry ms.
# Returns 1; 0 when the run's record is gone (its state vanished); or the other owner's id when
# another live process holds the lease.
_RENEW = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, 5 do
  local left = redis.call('PTTL', KEYS[i])
  if left >= 0 and left < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return 1
"""


def _cut(error: str | None) -> str | None:
    return error if error is None or len(error) <= _MAX_ERROR else error[:_MAX_ERROR] + "..."


class RedisPipelineStorage:
    """Tracking records in Redis (see the module's docstring for the keys). Every write sets the
    TTL on the keys it touches in the same transaction, so no key of a run is left without one.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param ttl_seconds: lifetime of a run's records after its last write (default a week).
    :param prefix: key prefix (letters, digits, ``_ . -``).
    :param lease_seconds: how long a run stays ``running`` after its orchestrator stopped
        renewing its lease (default 15 s); after that it reads back as ``abandoned``.
    :param max_record_bytes: the largest record or stored value, as JSON (default 1 MiB).
    :param max_depth: the deepest nesting of a stored value (default 100).
    :raises InvalidValueError: for a TTL below 1 second, an unsafe prefix, a bad limit.
    """

    def __init__(
        self,
        redis: Redis,
        ttl_seconds: int = 7 * 86_400,
        prefix: str = "taskiq_flow",
        lease_seconds: float = DEFAULT_RUN_LEASE_SECONDS,
        max_record_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise InvalidValueError(f"ttl_seconds must be an int >= 1, got {ttl_seconds!r}")
        if not isinstance(lease_seconds, (int, float)) or not 0.1 <= lease_seconds < 1e6:
            raise InvalidValueError(f"lease_seconds must be >= 0.1, got {lease_seconds!r}")
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = float(lease_seconds)
        self.prefix = validate_key_part("prefix", prefix)
        self.max_record_bytes, self.max_depth = check_limits(max_record_bytes, max_depth)
        self._renew = redis.register_script(_RENEW)

    def keys_of(self, pipeline_id: str) -> tuple[str, str, str]:
        """The keys of a run: the run, its steps, its finished nodes' values."""
        run = f"{self.prefix}:run:{validate_key_part('pipeline id', pipeline_id)}"
        return run, f"{run}:steps", f"{run}:results"

    def lease_key(self, pipeline_id: str) -> str:
        """The key of a run's orchestrator lease."""
        return f"{self.keys_of(pipeline_id)[0]}:lease"

    def inputs_key(self, pipeline_id: str) -> str:
        """The key of a run's inputs."""
        return f"{self.keys_of(pipeline_id)[0]}:inputs"

    # -- the lease -------------------------------------------------------------------------------

    async def renew_lease(self, pipeline_id: str, owner: str) -> bool:
        """Takes or renews the lease on a live run for ``lease_seconds``, and keeps its records
        from expiring meanwhile.

        :return: ``False`` if the run's record is gone (its state vanished from Redis).
        :raises StateError: if another live process holds the lease (its owner id is named).
        """
        lease_ms = int(self.lease_seconds * 1000)
        keep_ms = max(self.ttl_seconds * 1000, 2 * lease_ms)
        keys = [
            self.lease_key(pipeline_id),
            *self.keys_of(pipeline_id),
            self.inputs_key(pipeline_id),
        ]
        answer: Any = await self._renew(keys=keys, args=[owner, lease_ms, keep_ms])
        if isinstance(answer, (bytes, str)):
            holder = answer.decode() if isinstance(answer, bytes) else answer
            raise StateError(
                f"run {pipeline_id} is live in another process ({holder}); it can be resumed "
                f"once that one's lease lapses (after {self.lease_seconds:g}s without renewal)"
            )
        return bool(answer)

    async def release_lease(self, pipeline_id: str) -> None:
        """Gives up the lease (the run ended)."""
        await self.redis.delete(self.lease_key(pipeline_id))

    async def lease_owner(self, pipeline_id: str) -> str | None:
        """Who holds a run's lease, or ``None`` if it lapsed."""
        raw = await self.redis.get(self.lease_key(pipeline_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- values ----------------------------------------------------------------------------------

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Stores finished nodes' values (JSON), one hash field each, with the run's TTL.

        :raises PayloadTooLargeError: a value over ``max_record_bytes`` or ``max_depth``,
            naming its node; nothing is stored then.
        """
        if not results:
            return
        run_key, _, results_key = self.keys_of(pipeline_id)
        mapping: Any = {
            str(k): encode(
                v,
                f"the value of node {k} of run {pipeline_id}",
                self.max_record_bytes,
                self.max_depth,
            )
            for k, v in results.items()
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(results_key, mapping=mapping)
            pipe.expire(results_key, self.ttl_seconds, gt=True)
            pipe.expire(results_key, self.ttl_seconds, nx=True)
            pipe.expire(run_key, self.ttl_seconds, gt=True)
            await pipe.execute()

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """Finished nodes' values of a run.

        :raises CorruptRecordError: for a value that cannot be read back.
        """
        raw = await self.redis.hgetall(self.keys_of(pipeline_id)[2])
        try:
            return {
                int(k): decode(v, f"value {k!r} of run {pipeline_id}", *self._read_limits)
                for k, v in raw.items()
            }
        except ValueError as exc:
            raise CorruptRecordError(f"the values of run {pipeline_id}: {exc}") from None

    async def save_inputs(self, pipeline_id: str, inputs: Mapping[str, Any]) -> str | None:
        """Stores a run's inputs (JSON, within ``max_record_bytes`` and ``max_depth``) with the
        run's TTL, to resume it with. Inputs that cannot be stored are not dropped silently: why
        is stored instead, and returned.

        :return: ``None`` once stored, or why they could not be.
        """
        what = f"the inputs record of run {pipeline_id}"
        note: str | None = None
        try:
            # No fallback: an object JSON cannot carry is refused, never stored as its repr.
            text = encode(
                {"inputs": to_jsonable_python(dict(inputs))},
                what,
                self.max_record_bytes,
                self.max_depth,
            )
        except PayloadTooLargeError as exc:
            note = str(exc)
        except (ValueError, TypeError, RecursionError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            note = f"the inputs of run {pipeline_id} are not JSON: {reason}"
        if note is not None:
            text = encode({"not_stored": note}, what, self.max_record_bytes, self.max_depth)
        run_key, _, _ = self.keys_of(pipeline_id)
        key = self.inputs_key(pipeline_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, text, ex=self.ttl_seconds)
            pipe.expire(run_key, self.ttl_seconds, gt=True)
            await pipe.execute()
        return note

    async def load_inputs(self, pipeline_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(inputs, None)``, or ``(None, why they were not stored)``, or ``(None, None)`` if
        nothing is stored for the run.

        :raises CorruptRecordError: for a record that cannot be read back.
        """
        raw = await self.redis.get(self.inputs_key(pipeline_id))
        if raw is None:
            return None, None
        data = decode(raw, f"the inputs of run {pipeline_id}", *self._read_limits)
        if isinstance(data, dict) and isinstance(data.get("inputs"), dict):
            return data["inputs"], None
        if isinstance(data, dict) and isinstance(data.get("not_stored"), str):
            return None, data["not_stored"]
        raise CorruptRecordError(f"the inputs of run {pipeline_id} are not an inputs record")

    @property
    def _read_limits(self) -> tuple[int, int]:
        return self.max_record_bytes + 65_536, self.max_depth + 2

    # -- records ---------------------------------------------------------------------------------

    def _step_json(self, pipeline_id: str, step: StepStatus) -> str:
        record = asdict(step)
        record["error"] = _cut(step.error)
        return encode(
            record,
            f"the tracking record of step {step.name!r} of run {pipeline_id}",
            self.max_record_bytes,
            self.max_depth,
        )

    async def save(self, status: PipelineStatus) -> None:
        """Stores a whole record: the run, then each step as its own field."""
        run_key, steps_key, _ = self.keys_of(status.pipeline_id)
        head = asdict(status)
        head["steps"] = len(status.steps)
        head["error"] = _cut(status.error)
        head_json = encode(
            head,
            f"the tracking record of run {status.pipeline_id}",
            self.max_record_bytes,
            self.max_depth,
        )
        steps = {str(i): self._step_json(status.pipeline_id, s) for i, s in enumerate(status.steps)}
        async with self.redis.pipeline(transaction=True) as pipe:
            # Never shorten what a live run's lease extended (gt), but give a new key its TTL.
            pipe.set(run_key, head_json, keepttl=True)
            pipe.expire(run_key, self.ttl_seconds, gt=True)
            pipe.expire(run_key, self.ttl_seconds, nx=True)
            if steps:
                pipe.hset(steps_key, mapping=steps)  # type: ignore[arg-type]
                pipe.expire(steps_key, self.ttl_seconds, gt=True)
                pipe.expire(steps_key, self.ttl_seconds, nx=True)
            await pipe.execute()

    async def save_steps(self, pipeline_id: str, steps: dict[int, StepStatus]) -> None:
        """Writes some steps of a run; each is its own field, so writers of different steps
        never overwrite each other."""
        if not steps:
            return
        run_key, steps_key, _ = self.keys_of(pipeline_id)
        mapping = {str(i): self._step_json(pipeline_id, s) for i, s in steps.items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps_key, mapping=mapping)  # type: ignore[arg-type]
            pipe.expire(steps_key, self.ttl_seconds, gt=True)
            pipe.expire(steps_key, self.ttl_seconds, nx=True)
            pipe.expire(run_key, self.ttl_seconds, gt=True)
            await pipe.execute()

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        """A run's record, or ``None``; ``abandoned`` if it says ``running`` but its lease
        lapsed.

        :raises CorruptRecordError: if the record cannot be read back.
        """
        run_key, steps_key, _ = self.keys_of(pipeline_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(run_key)
            pipe.hgetall(steps_key)
            pipe.exists(self.lease_key(pipeline_id))
            head_raw, steps_raw, leased = await pipe.execute()
        if head_raw is None:
            return None
        try:
            return self._parse(pipeline_id, head_raw, steps_raw, bool(leased))
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRecordError(f"tracking record of run {pipeline_id}: {exc}") from None

    def _parse(
        self, pipeline_id: str, head_raw: bytes, steps_raw: dict[bytes, bytes], leased: bool
    ) -> PipelineStatus:
        head = decode(head_raw, f"run {pipeline_id}", *self._read_limits)
        if not isinstance(head, dict):
            raise CorruptRecordError("not an object")
        count = int(head.pop("steps"))
        if not 0 <= count <= 10_000_000:
            raise CorruptRecordError(f"{count} steps")
        by_index: dict[int, StepStatus] = {}
        for k, v in steps_raw.items():
            data = decode(v, f"step {k!r}", *self._read_limits)
            if not isinstance(data, dict):
                raise CorruptRecordError(f"step {k!r} is not an object")
            # A record written before a field existed reads back with its default.
            by_index[int(k)] = StepStatus.from_record(data)
        steps = [by_index.get(i, StepStatus(f"step {i}")) for i in range(count)]
        fields = {k: head[k] for k in PipelineStatus.__dataclass_fields__ if k in head}
        fields["steps"] = steps
        resumes = fields.get("resumes", [])
        if not isinstance(resumes, list) or not all(isinstance(t, (int, float)) for t in resumes):
            raise CorruptRecordError("its resumes are not a list of times")
        status = PipelineStatus(**fields)
        if status.status == "running" and not leased:
            status.status = "abandoned"
        return status

    async def delete(self, pipeline_id: str) -> bool:
        """Removes a run's records (its lease, inputs and dead letters too); whether any were."""
        keys = (
            *self.keys_of(pipeline_id),
            self.lease_key(pipeline_id),
            self.inputs_key(pipeline_id),
            f"{self.keys_of(pipeline_id)[0]}:changes",  # the dashboard's change counter
            f"{self.keys_of(pipeline_id)[0]}:ask",  # steps a dashboard asked the reason of
        )
        from taskiq_flow.distributed.deadletters import RedisDeadLetterQueue

        letters = await RedisDeadLetterQueue(self.redis, prefix=self.prefix).delete_run(pipeline_id)
        return bool(await self.redis.delete(*keys)) or letters > 0

    async def ids(self) -> list[str]:
        """Every stored run id."""
        ids = []
        pattern = f"{self.prefix}:run:*"
        async for key in self.redis.scan_iter(match=pattern, count=500):
            name = key.decode() if isinstance(key, bytes) else key
            rest = name[len(self.prefix) + len(":run:") :]
            if ":" not in rest:
                ids.append(rest)
        return ids
