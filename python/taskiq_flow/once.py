"""One run per key: a second trigger of a key attaches to its run, or returns its stored result.

::

    outputs = await pipeline.with_idempotency_key(f"order-{order_id}").kiq_dataflow(order=order_id)
    handle = await seq_pipeline.with_idempotency_key("nightly-2026-05-01").kiq(day)
    squares = await MapReduce.map(broker, square, items, idempotency_key="batch-17")

What a trigger of a key does is decided here, once, for every pipeline shape (:func:`run_keyed`):

- nobody holds the key: it **claims** it and runs (a new run id);
- a run of the key is live: it **attaches** to it: same run id, same result (or the same
  failure), nothing sent;
- the run finished less than ``ttl`` seconds ago (default 24 h): it returns the **stored result**,
  nothing sent;
- the run's orchestrator died (its lease on the key lapsed): it **takes the key over** and
  resumes the run through the pipeline's ``resume`` (with tracking that keeps leases, e.g.
  :class:`~taskiq_flow.distributed.RedisPipelineStorage`: what finished is not sent again), or,
  without such tracking, starts it again under a new run id (everything is sent again);
- a run that failed (or was cancelled) **frees its key**: the triggers attached to it get its
  failure, the next trigger starts a new run.

A key is scoped by the pipeline's name (``with_name``; a ``MapReduce`` call's default name is
``map:<task>``): one key in two pipelines of different names names two runs.

Where keys live: a :class:`KeyStore`. The default, :class:`InMemoryKeyStore`, holds keys of one
process (results kept as the objects themselves). :class:`RedisKeyStore` holds them in Redis, for
every process that names the same Redis and prefix: a claim is one atomic script (the key's record
and its owner's lease, both with a TTL), a finished run's result is stored as JSON with the key's
TTL (a result JSON would read back differently — a tuple, a non-str dict key, a model — is refused
with :class:`~taskiq_flow.exceptions.PayloadTooLargeError`: the caller whose run produced it still
gets it, the key is freed, and attached callers elsewhere get the error), and a failed run's claim
is replaced by a short-lived failure record (:data:`FAILED_KEEP_SECONDS`) that attached callers read
and the next trigger overwrites. Every trigger of one key in one process shares one flight: a
thousand concurrent triggers make one claim and, when attached over Redis, one poller (a bounded
poll with a backoff from 5 ms to 100 ms).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from taskiq_flow._backoff import Backoff
from taskiq_flow.events import describe_error
from taskiq_flow.exceptions import (
    InvalidValueError,
    PayloadTooLargeError,
    RemoteTaskError,
    StateError,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = [
    "DEFAULT_KEY_LEASE_SECONDS",
    "DEFAULT_KEY_TTL",
    "FAILED_KEEP_SECONDS",
    "IdempotencyKey",
    "InMemoryKeyStore",
    "KeyClaim",
    "KeyStore",
    "RedisKeyStore",
    "can_resume",
    "default_key_store",
    "run_keyed",
    "start_keyed",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a finished run's result answers its key, by default: 24 hours.
DEFAULT_KEY_TTL = 86_400.0
#: How long a key stays held after its orchestrator stopped renewing its lease (Redis).
DEFAULT_KEY_LEASE_SECONDS = 15.0
#: How long a failed run's record stays (for the callers attached to it); it never blocks a
#: new run.
FAILED_KEEP_SECONDS = 60.0

KeyState = Literal["running", "done", "failed"]


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """What a key's record says: whose run holds it and how that run stands."""

    state: KeyState
    pipeline_id: str
    owner: str
    #: For a running claim: whether its owner still holds its lease (a lapsed one died).
    alive: bool = True
    #: A finished run's result.
    result: Any = None
    #: A failed run's error, as text.
    error: str | None = None


class KeyStore(abc.ABC):
    """Where keys are claimed. Every trigger of a key goes through :func:`run_keyed`, which calls
    these methods; a store only keeps records, it decides nothing. A store implements the
    abstract ones (a subclass that does not cannot be made: ``TypeError`` names what it lacks).

    A store also holds this process's flights (the runs of its keys being driven or waited on
    here), so that concurrent triggers of one key in one process share one claim.
    """

    #: Seconds a running claim survives its owner without renewal (``None``: no lease, the
    #: store lives in one process).
    lease_seconds: float | None = None

    def __init__(self) -> None:
        self.flights: dict[str, _Flight] = {}

    @abc.abstractmethod
    async def claim(self, key: str, pipeline_id: str, owner: str, ttl: float) -> KeyClaim | None:
        """Claims ``key`` for a new run ``pipeline_id``: ``None`` once claimed, or the record
        found (a failed run's record counts as free)."""
        ...

    @abc.abstractmethod
    async def read(self, key: str) -> KeyClaim | None:
        """The key's record, or ``None``."""
        ...

    @abc.abstractmethod
    async def take_over(
        self, key: str, seen: KeyClaim, pipeline_id: str, owner: str, ttl: float
    ) -> bool:
        """Takes a running claim whose lease lapsed, if it is still ``seen``: whether it was."""
        ...

    async def renew(self, key: str, pipeline_id: str, owner: str) -> bool:
        """Renews the owner's lease: whether the claim is still this owner's."""
        return True

    @abc.abstractmethod
    async def finish(self, key: str, pipeline_id: str, owner: str, result: Any, ttl: float) -> None:
        """Stores a finished run's result for ``ttl`` seconds, if the claim is still ours.

        :raises PayloadTooLargeError: a result the store cannot keep faithfully.
        """
        ...

    @abc.abstractmethod
    async def fail(self, key: str, pipeline_id: str, owner: str, error: str) -> None:
        """Frees the key of a run that failed (a failure record stays for attached callers)."""
        ...


@dataclass(slots=True)
class _Entry:
    claim: KeyClaim
    expires: float


class InMemoryKeyStore(KeyStore):
    """Keys of one process (the default). A finished run's result is kept as the object itself:
    every trigger gets the same object (do not mutate it)."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, _Entry] = {}
        self._sweep_at = 1024

    def _get(self, key: str) -> KeyClaim | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._records[key]
            return None
        return entry.claim

    def _put(self, key: str, claim: KeyClaim, ttl: float) -> None:
        self._records[key] = _Entry(claim, time.monotonic() + ttl)
        if len(self._records) >= self._sweep_at:  # expired keys go, amortized
            now = time.monotonic()
            for k in [k for k, e in self._records.items() if e.expires <= now]:
                del self._records[k]
            self._sweep_at = max(1024, 2 * len(self._records))

    def _ours(self, key: str, pipeline_id: str, owner: str) -> bool:
        found = self._get(key)
        return (
            found is not None
            and found.state == "running"
            and found.pipeline_id == pipeline_id
            and found.owner == owner
        )

    async def claim(self, key: str, pipeline_id: str, owner: str, ttl: float) -> KeyClaim | None:
        found = self._get(key)
        if found is not None and found.state != "failed":
            return found
        self._put(key, KeyClaim("running", pipeline_id, owner), ttl)
        return None

    async def read(self, key: str) -> KeyClaim | None:
        return self._get(key)

    async def take_over(
        self, key: str, seen: KeyClaim, pipeline_id: str, owner: str, ttl: float
    ) -> bool:
        if self._get(key) != seen:
            return False
        self._put(key, KeyClaim("running", pipeline_id, owner), ttl)
        return True

    async def finish(self, key: str, pipeline_id: str, owner: str, result: Any, ttl: float) -> None:
        if self._ours(key, pipeline_id, owner):
            self._put(key, KeyClaim("done", pipeline_id, owner, result=result), ttl)

    async def fail(self, key: str, pipeline_id: str, owner: str, error: str) -> None:
        if self._ours(key, pipeline_id, owner):
            failed = KeyClaim("failed", pipeline_id, owner, error=error)
            self._put(key, failed, FAILED_KEEP_SECONDS)


# KEYS: record, lease. ARGV: record (running), owner, ttl ms, lease ms.
# Returns {1} once claimed, or {0, record found, lease exists}.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then
  local ok, rec = pcall(cjson.decode, v)
  if ok and type(rec) == 'table' and rec.state ~= 'failed' then
    return {0, v, redis.call('EXISTS', KEYS[2])}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return {1}
"""

# The shared head of the scripts below: the record, decoded, if it is a running claim of run
# ARGV[1] by owner ARGV[2].
_OURS = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, rec = pcall(cjson.decode, v)
if not ok or type(rec) ~= 'table' or rec.state ~= 'running' or rec.run ~= ARGV[1]
   or rec.owner ~= ARGV[2] then return 0 end
"""

# ARGV: old run, old owner, new record, new owner, ttl ms, lease ms.
_TAKE_OVER = (
    "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
    + _OURS
    + """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6])
return 1
"""
)

# ARGV: run, owner, lease ms. The record outlives the lease at least twice over.
_RENEW = (
    _OURS
    + """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('PTTL', KEYS[1]) < 2 * tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
end
return 1
"""
)

# ARGV: run, owner, new record, its lifetime ms.
_SETTLE = (
    _OURS
    + """
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
return 1
"""
)


class RedisKeyStore(KeyStore):
    """Keys in Redis, shared by every process that names the same Redis and ``prefix``.

    Keys of one idempotency key (both with a TTL): ``<prefix>:once:<hash>`` (its record, JSON:
    the run id, its owner, its state, a finished run's result) and ``<prefix>:once:<hash>:lease``
    (the owner's lease, renewed every third of ``lease_seconds`` while the run is live). The hash
    is of the pipeline's name and the key, so any text can be a key.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param prefix: key prefix (letters, digits, ``_ . -``).
    :param lease_seconds: how long a key stays held after its orchestrator stopped renewing its
        lease (default 15 s); then the next trigger takes the run over.
    :param max_result_bytes: the largest result stored, as JSON (default 1 MiB).
    :raises InvalidValueError: for an unsafe prefix, a lease below 0.1 s, a bad limit.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str = "taskiq_flow",
        lease_seconds: float = DEFAULT_KEY_LEASE_SECONDS,
        max_result_bytes: int | None = None,
    ) -> None:
        from taskiq_flow.distributed.keys import validate_key_part
        from taskiq_flow.distributed.payload import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH

        super().__init__()
        if (
            isinstance(lease_seconds, bool)
            or not isinstance(lease_seconds, (int, float))
            or not 0.1 <= lease_seconds < 1e6
        ):
            raise InvalidValueError(f"lease_seconds must be >= 0.1, got {lease_seconds!r}")
        limit = DEFAULT_MAX_BYTES if max_result_bytes is None else max_result_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValueError(f"max_result_bytes must be an int >= 1, got {limit!r}")
        self.redis = redis
        self.prefix = validate_key_part("prefix", prefix)
        self.lease_seconds = float(lease_seconds)
        self._lease_ms = int(self.lease_seconds * 1000)
        self.max_result_bytes = limit
        self.max_depth = DEFAULT_MAX_DEPTH
        self._claim = redis.register_script(_CLAIM)
        self._take_over = redis.register_script(_TAKE_OVER)
        self._renew = redis.register_script(_RENEW)
        self._settle = redis.register_script(_SETTLE)

    def keys_of(self, key: str) -> list[str]:
        """The Redis keys of an idempotency key (as :func:`run_keyed` scopes it): its record and
        its lease."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        record = f"{self.prefix}:once:{digest}"
        return [record, f"{record}:lease"]

    def _record(self, claim: KeyClaim, key: str) -> str:
        from taskiq_flow.distributed.payload import encode

        body: dict[str, Any] = {
            "state": claim.state,
            "run": claim.pipeline_id,
            "owner": claim.owner,
            "key": key[:200],
        }
        if claim.error is not None:
            body["error"] = claim.error[:4096]
        if claim.state != "done":
            return json.dumps(body)
        what = f"the result of run {claim.pipeline_id} (key {key[:80]!r})"
        text = encode(claim.result, what, self.max_result_bytes, self.max_depth)
        if json.loads(text) != claim.result:
            raise PayloadTooLargeError(
                f"{what} would read back as a different value from JSON (a tuple becomes a "
                "list, a model a dict, NaN unequal to itself): it is not stored"
            )
        return json.dumps(body)[:-1] + f', "result": {text}}}'

    def _parse(self, raw: bytes | str, alive: bool) -> KeyClaim:
        from taskiq_flow.distributed.payload import decode

        data = decode(raw, "an idempotency key's record", self.max_result_bytes + 65_536, 102)
        if (
            not isinstance(data, dict)
            or data.get("state") not in ("running", "done", "failed")
            or not isinstance(data.get("run"), str)
            or not isinstance(data.get("owner"), str)
        ):
            from taskiq_flow.exceptions import CorruptRecordError

            raise CorruptRecordError(f"an idempotency key's record is not one: {str(raw)[:80]}")
        error = data.get("error")
        return KeyClaim(
            data["state"],
            data["run"],
            data["owner"],
            alive,
            data.get("result"),
            error if isinstance(error, str) else None,
        )

    async def claim(self, key: str, pipeline_id: str, owner: str, ttl: float) -> KeyClaim | None:
        record = self._record(KeyClaim("running", pipeline_id, owner), key)
        lease_ms = self._lease_ms
        answer: Any = await self._claim(
            keys=self.keys_of(key), args=[record, owner, _ms(ttl), lease_ms]
        )
        if int(answer[0]) == 1:
            return None
        return self._parse(answer[1], bool(int(answer[2])))

    async def read(self, key: str) -> KeyClaim | None:
        record, lease = self.keys_of(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(record)
            pipe.exists(lease)
            raw, alive = await pipe.execute()
        return None if raw is None else self._parse(raw, bool(alive))

    async def take_over(
        self, key: str, seen: KeyClaim, pipeline_id: str, owner: str, ttl: float
    ) -> bool:
        record = self._record(KeyClaim("running", pipeline_id, owner), key)
        args: list[str | int] = [seen.pipeline_id, seen.owner, record, owner, _ms(ttl)]
        answer: Any = await self._take_over(keys=self.keys_of(key), args=[*args, self._lease_ms])
        return bool(answer)

    async def renew(self, key: str, pipeline_id: str, owner: str) -> bool:
        lease_ms = self._lease_ms
        answer: Any = await self._renew(keys=self.keys_of(key), args=[pipeline_id, owner, lease_ms])
        return bool(answer)

    async def finish(self, key: str, pipeline_id: str, owner: str, result: Any, ttl: float) -> None:
        record = self._record(KeyClaim("done", pipeline_id, owner, result=result), key)
        await self._settle(keys=self.keys_of(key), args=[pipeline_id, owner, record, _ms(ttl)])

    async def fail(self, key: str, pipeline_id: str, owner: str, error: str) -> None:
        record = self._record(KeyClaim("failed", pipeline_id, owner, error=error), key)
        keep = _ms(FAILED_KEEP_SECONDS)
        await self._settle(keys=self.keys_of(key), args=[pipeline_id, owner, record, keep])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


_DEFAULT_STORE: InMemoryKeyStore | None = None


def default_key_store() -> InMemoryKeyStore:
    """The process's in-memory key store (what a key without a store of its own uses)."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = InMemoryKeyStore()
    return _DEFAULT_STORE


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A key naming one run, how long its result answers it, and where it is claimed.

    ``IdempotencyKey("k")`` is what ``with_idempotency_key("k")`` and ``idempotency_key="k"``
    build; give one to ``MapReduce``'s ``idempotency_key=`` to set its TTL or store there.

    :param key: any non-empty str.
    :param ttl: seconds a finished run's result answers the key (default 24 h).
    :param store: where the key is claimed (default: this process's :class:`InMemoryKeyStore`;
        :class:`RedisKeyStore` across processes).
    :raises InvalidValueError: for a key that is not a non-empty str, a TTL that is not a finite
        number > 0, a store that is not a :class:`KeyStore`.
    """

    key: str
    ttl: float = DEFAULT_KEY_TTL
    store: KeyStore | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InvalidValueError(f"an idempotency key must be a non-empty str, got {self.key!r}")
        ttl = self.ttl
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not math.isfinite(ttl)
            or not ttl > 0
        ):
            raise InvalidValueError(
                f"an idempotency key's ttl must be a finite number of seconds > 0, got {ttl!r}"
            )
        if self.store is not None and not isinstance(self.store, KeyStore):
            raise InvalidValueError(
                f"an idempotency key's store must be a KeyStore (InMemoryKeyStore, "
                f"RedisKeyStore), got {type(self.store).__name__}"
            )

    @classmethod
    def of(cls, value: object) -> IdempotencyKey | None:
        """``value`` as a key: ``None``, a str, or an :class:`IdempotencyKey` (checked).

        :raises InvalidValueError: for anything else, or a bad key.
        """
        if value is None or isinstance(value, IdempotencyKey):
            return value
        return cls(value)  # type: ignore[arg-type]  # checked in __post_init__

    @property
    def key_store(self) -> KeyStore:
        """The store the key is claimed in."""
        return self.store if self.store is not None else default_key_store()


def can_resume(tracking: PipelineTrackingManager | None) -> bool:
    """Whether a run reported to ``tracking`` can be resumed by another process when its
    orchestrator dies: tracking whose storage keeps leases (Redis)."""
    return tracking is not None and getattr(tracking.storage, "renew_lease", None) is not None


class _Flight:
    """The run of one key as this process drives or awaits it: every trigger here shares it."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[Any] = loop.create_future()
        # Nobody may await a flight that failed: its exception is not news then.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.known = asyncio.Event()
        self.pipeline_id = ""
        self.watchers: list[Callable[[str], None]] = []

    def set_id(self, pipeline_id: str) -> None:
        if pipeline_id != self.pipeline_id:
            self.pipeline_id = pipeline_id
            for watch in self.watchers:
                watch(pipeline_id)
        self.known.set()


Start = Callable[[str, bool], Awaitable[Any]]


async def start_keyed(
    key: IdempotencyKey, scope: str, start: Start, *, resumable: bool
) -> tuple[str, asyncio.Task[Any]]:
    """:func:`run_keyed` in a task of its own, for a shape that hands back a handle at once
    (``Pipeline.kiq``): returns the run id as soon as the key's claim tells it, and the task.

    :raises Exception: what the claim raised (Redis unreachable, a corrupt record).
    """
    known: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def seen(pipeline_id: str) -> None:
        if not known.done():
            known.set_result(pipeline_id)

    task = asyncio.get_running_loop().create_task(
        run_keyed(key, scope, start, resumable=resumable, on_id=seen)
    )
    try:
        await asyncio.wait([known, task], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    if not known.done():
        known.cancel()
        task.result()  # raises what ended it before a run id was known
    return known.result(), task


async def run_keyed(
    key: IdempotencyKey,
    scope: str,
    start: Start,
    *,
    resumable: bool,
    on_id: Callable[[str], None] | None = None,
) -> Any:
    """Runs the run named by ``key`` once: claims it and calls ``start(pipeline_id, False)``,
    attaches to the live run, returns the stored result, or takes over a run whose orchestrator
    died and calls ``start(pipeline_id, True)`` (resume) when ``resumable``, else
    ``start(new id, False)``. The one place where a trigger of a key is decided.

    :param scope: the pipeline's name (a key names a run of one pipeline).
    :param on_id: called with the run id as soon as it is known (and again if it changes: a run
        started again under a new id after its orchestrator died, without tracking).
    :return: the run's result.
    :raises RemoteTaskError: the run attached to failed in another process (its error named).
    :raises PayloadTooLargeError: the run finished in another process but its result could not be
        stored (why named).
    """
    store = key.key_store
    name = f"{scope}\x1f{key.key}"
    flight = store.flights.get(name)
    if flight is not None:
        if on_id is not None:
            flight.watchers.append(on_id)
            if flight.known.is_set():
                on_id(flight.pipeline_id)
        return await asyncio.shield(flight.done)
    flight = store.flights[name] = _Flight()
    if on_id is not None:
        flight.watchers.append(on_id)
    try:
        value = await _drive(store, name, key.ttl, start, resumable, flight)
    except asyncio.CancelledError:
        flight.done.cancel()
        raise
    except BaseException as exc:
        flight.done.set_exception(exc)
        raise
    else:
        flight.done.set_result(value)
        return value
    finally:
        del store.flights[name]


async def _drive(
    store: KeyStore, name: str, ttl: float, start: Start, resumable: bool, flight: _Flight
) -> Any:
    owner = f"{_owner_id()}/{uuid.uuid4().hex[:8]}"
    fresh = uuid.uuid4().hex
    found = await store.claim(name, fresh, owner, ttl)
    attached: str | None = None
    pause = Backoff(0.005, 0.1)
    while True:
        if found is None:
            return await _own(store, name, ttl, start, fresh, False, owner, flight)
        if found.state == "done":
            flight.set_id(found.pipeline_id)
            return found.result
        if found.state == "failed":
            if found.pipeline_id == attached:
                if found.error is not None and found.error.startswith(_UNSTORED):
                    raise PayloadTooLargeError(found.error[len(_UNSTORED) :])
                type_name, _, message = (found.error or "").partition(": ")
                raise RemoteTaskError(type_name or "Error", message)
            fresh = uuid.uuid4().hex
            found = await store.claim(name, fresh, owner, ttl)
            continue
        flight.set_id(found.pipeline_id)
        attached = found.pipeline_id
        if not found.alive:
            again = found.pipeline_id if resumable else uuid.uuid4().hex
            if await store.take_over(name, found, again, owner, ttl):
                if not resumable:
                    logger.warning(
                        "run %s of idempotency key %r lost its orchestrator; without tracking "
                        "that keeps leases it cannot be resumed: starting it again as run %s",
                        found.pipeline_id,
                        name.partition("\x1f")[2],
                        again,
                    )
                return await _own(store, name, ttl, start, again, resumable, owner, flight)
        else:
            await pause.sleep()
        found = await store.read(name)
        if found is None:
            fresh = uuid.uuid4().hex
            found = await store.claim(name, fresh, owner, ttl)


#: A failure record's error that says the run finished but its result could not be stored.
_UNSTORED = "unstored: "


async def _own(
    store: KeyStore,
    name: str,
    ttl: float,
    start: Start,
    pipeline_id: str,
    resuming: bool,
    owner: str,
    flight: _Flight,
) -> Any:
    """Runs the key's run as its owner: renews the lease while it runs, stores its result, or
    frees the key if it fails."""
    flight.set_id(pipeline_id)
    renewer = None
    if store.lease_seconds is not None:
        renewer = asyncio.get_running_loop().create_task(
            _renew(store, name, pipeline_id, owner, store.lease_seconds / 3)
        )
    try:
        value = await (
            _resume(start, pipeline_id, store) if resuming else start(pipeline_id, False)
        )
    except BaseException as exc:
        why = "PipelineCancelledError: cancelled" if isinstance(exc, asyncio.CancelledError) else ""
        await asyncio.shield(store.fail(name, pipeline_id, owner, why or describe_error(exc)))
        raise
    finally:
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
    try:
        await store.finish(name, pipeline_id, owner, value, ttl)
    except PayloadTooLargeError as exc:
        logger.warning("%s; the key is freed: the next trigger runs again", exc)
        await store.fail(name, pipeline_id, owner, _UNSTORED + str(exc))
    return value


async def _resume(start: Start, pipeline_id: str, store: KeyStore) -> Any:
    """Resumes a taken-over run; while tracking still counts its dead orchestrator live (its
    lease there has not lapsed yet), waits and tries again (for up to two leases)."""
    pause = Backoff(0.05, 1.0)
    deadline = time.monotonic() + 2 * (store.lease_seconds or 0.0) + 1.0
    while True:
        try:
            return await start(pipeline_id, True)
        except StateError as exc:
            if "live in another process" not in str(exc) or time.monotonic() > deadline:
                raise
            await pause.sleep()


async def _renew(store: KeyStore, name: str, pipeline_id: str, owner: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            if not await store.renew(name, pipeline_id, owner):
                logger.warning(
                    "run %s lost its idempotency key (its lease lapsed and another process "
                    "took it over)",
                    pipeline_id,
                )
                return
        except Exception as exc:  # Redis stalled: the next renewal may work
            logger.warning("the idempotency key of run %s was not renewed: %s", pipeline_id, exc)


def _owner_id() -> str:
    from taskiq_flow.tracking import process_owner_id

    return process_owner_id()
