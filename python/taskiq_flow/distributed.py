"""Past one process: completions and tracking through Redis, as JSON only.

Workers in other processes (or hosts) report completions through :class:`RedisCompletionChannel`:
the worker-side :class:`~taskiq_flow.events.FlowMiddleware` appends each completion to a Redis
stream of its run, and the orchestrator reads that stream (one blocking reader per run, never one
poller per task). :class:`RedisPipelineStorage` keeps tracking records in Redis, one hash field per
step so that concurrent steps never overwrite each other, every key under one prefix and with a TTL.

Everything written or read here is JSON: a value planted in Redis is parsed, never executed.
Pass a JSON serializer to taskiq-redis result backends too (:func:`json_result_backend`); they
default to pickle.

::

    channel = RedisCompletionChannel("redis://127.0.0.1:6379")
    broker = RedisStreamBroker("redis://127.0.0.1:6379").with_middlewares(FlowMiddleware(channel))
    tracking = PipelineTrackingManager(RedisPipelineStorage(Redis(), ttl_seconds=86400))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from typing import Any

import anyio
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from redis.exceptions import LockError, RedisError
from taskiq import AsyncBroker

from taskiq_flow.events import Completion, Inbox
from taskiq_flow.exceptions import (
    AbortPipeline,
    InvalidValueError,
    PipelineError,
    PoisonMessageError,
    TaskiqFlowError,
)
from taskiq_flow.tracking import PipelineStatus, StepStatus

__all__ = [
    "ChannelLostError",
    "RedisCapacityLimiter",
    "RedisCompletionChannel",
    "RedisPipelineStorage",
    "RedisRateLimiter",
    "RemoteTaskError",
    "discover_workers",
    "json_result_backend",
    "reliable_stream_broker",
    "validate_key_part",
]

logger = logging.getLogger(__name__)
_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def validate_key_part(what: str, value: str) -> str:
    """Checks an id or prefix that becomes part of a Redis key: letters, digits, ``_ . -`` only,
    so that no user value can be a glob pattern, contain the ``:`` separator or escape the prefix.

    :raises InvalidValueError: otherwise.
    """
    if not isinstance(value, str) or not _SAFE.fullmatch(value):
        raise InvalidValueError(
            f"{what} must be 1-128 letters, digits, '_', '.' or '-', got {value!r}"
        )
    return value


class ChannelLostError(PipelineError, ConnectionError):
    """Completions could not be read from Redis for too long: the run stops instead of hanging."""


class RemoteTaskError(TaskiqFlowError):
    """A task failed in another process; its exception arrives as its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def _error_to_json(error: BaseException | None) -> dict[str, str] | None:
    if error is None:
        return None
    if isinstance(error, AbortPipeline):
        return {"type": "AbortPipeline", "message": error.reason}
    return {"type": type(error).__name__, "message": str(error)}


def _error_from_json(data: dict[str, str] | None) -> BaseException | None:
    if data is None:
        return None
    if data["type"] == "AbortPipeline":
        return AbortPipeline(reason=data["message"])
    if data["type"] == "PoisonMessageError":
        return PoisonMessageError(data["message"])
    return RemoteTaskError(data["type"], data["message"])


class RedisCompletionChannel:
    """Completions through one Redis stream per run (``<prefix>:done:<run id>``).

    :param redis: a ``redis.asyncio.Redis`` client, or a URL.
    :param prefix: the key prefix (letters, digits, ``_ . -``).
    :param ttl_seconds: how long an unread stream may live (a run's orchestrator that died).
    :param block_ms: how long one read blocks before checking for shutdown.
    :param give_up_seconds: how long reads may keep failing (Redis down or restarting) before
        the run fails with :class:`ChannelLostError`.
    """

    def __init__(
        self,
        redis: Redis | str,
        prefix: str = "taskiq_flow",
        ttl_seconds: int = 86_400,
        block_ms: int = 1_000,
        give_up_seconds: float = 30.0,
    ) -> None:
        self.prefix = validate_key_part("prefix", prefix)
        self.give_up_seconds = give_up_seconds
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise InvalidValueError(f"ttl_seconds must be an int >= 1, got {ttl_seconds!r}")
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self.ttl_seconds = ttl_seconds
        self.block_ms = block_ms
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._deletes: set[asyncio.Task[None]] = set()

    def _redis(self) -> Redis:
        if self._client is None:
            assert self._url is not None
            self._client = Redis.from_url(self._url)
        return self._client

    def key(self, run_id: str) -> str:
        """The stream of one run."""
        return f"{self.prefix}:done:{validate_key_part('run id', run_id)}"

    def publish(self, completion: Completion) -> Coroutine[Any, Any, None]:
        """Appends a completion to its run's stream (returns the coroutine taskiq awaits)."""
        return self._publish(completion)

    async def _publish(self, completion: Completion) -> None:
        key = self.key(completion.run_id)
        payload = json.dumps(
            {
                "node": completion.node,
                "attempt": completion.attempt,
                "ok": completion.ok,
                "value": to_jsonable_python(completion.value, fallback=repr),
                "error": _error_to_json(completion.error),
                "duration_ms": completion.duration_ms,
                "started_at": completion.started_at,
            }
        )
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"c": payload})
            pipe.expire(key, self.ttl_seconds)
            await pipe.execute()

    def open(self, run_id: str) -> Inbox:
        """Starts reading a run's stream into a new inbox."""
        inbox = Inbox()
        key = self.key(run_id)
        self._readers[run_id] = asyncio.get_running_loop().create_task(
            self._read(run_id, key, inbox)
        )
        return inbox

    async def _read(self, run_id: str, key: str, inbox: Inbox) -> None:
        last = "0-0"
        redis = self._redis()
        failing_since: float | None = None
        while True:
            try:
                batches: Any = await redis.xread({key: last}, block=self.block_ms, count=1000)
            except RedisError as exc:
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", None)  # Python 3.11+
                if run_id not in self._readers or (cancelling is not None and cancelling()):
                    return  # closed or cancelled mid-read (redis-py reports that as an error)
                # Redis restarting: retry for a while, then fail the run clearly (never hang).
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.give_up_seconds:
                    inbox.fail(
                        ChannelLostError(
                            f"completions of run {run_id} cannot be read from Redis since "
                            f"{self.give_up_seconds:.0f}s: {exc}"
                        )
                    )
                    return
                await asyncio.sleep(0.1)
                continue
            failing_since = None
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        data = json.loads(fields.get(b"c") or fields.get("c"))
                        completion = Completion(
                            run_id=run_id,
                            node=int(data["node"]),
                            attempt=int(data["attempt"]),
                            ok=bool(data["ok"]),
                            value=data["value"],
                            error=_error_from_json(data["error"]),
                            duration_ms=float(data["duration_ms"]),
                            started_at=float(data["started_at"]),
                        )
                    except (ValueError, TypeError, KeyError) as exc:
                        # Not a completion we wrote (JSON only: nothing is ever unpickled).
                        logger.warning(
                            "ignoring malformed completion %s in %s: %s", entry_id, key, exc
                        )
                        continue
                    inbox.push(completion)

    def close(self, run_id: str) -> None:
        """Stops reading a run's stream and deletes it."""
        reader = self._readers.pop(run_id, None)
        if reader is not None:
            reader.cancel()
            task = asyncio.get_running_loop().create_task(self._delete(run_id))
            self._deletes.add(task)
            task.add_done_callback(self._deletes.discard)

    async def aclose(self) -> None:
        """Stops every reader, finishes pending clean-ups, and closes the connection this channel
        opened itself."""
        for run_id in list(self._readers):
            self._readers.pop(run_id).cancel()
        if self._deletes:
            await asyncio.gather(*self._deletes, return_exceptions=True)
        if self._client is not None and self._url is not None:
            await self._client.aclose()
            self._client = None

    async def _delete(self, run_id: str) -> None:
        # Best effort: the stream expires with its TTL anyway.
        try:
            await self._redis().delete(self.key(run_id))
        except RedisError as exc:
            logger.warning("could not delete the completion stream of run %s: %s", run_id, exc)


def _step_to_json(step: StepStatus) -> str:
    return json.dumps(asdict(step))


def _step_from_json(raw: bytes | str) -> StepStatus:
    data = json.loads(raw)
    return StepStatus(**{k: data[k] for k in StepStatus.__dataclass_fields__ if k in data})


class RedisPipelineStorage:
    """Tracking records in Redis: ``<prefix>:run:<id>`` (the run, a JSON string) and
    ``<prefix>:run:<id>:steps`` (a hash, one JSON field per step). Every write sets the TTL on
    both keys in the same transaction, so no key of a run is ever left without one.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param ttl_seconds: lifetime of a run's records after its last write (default a week).
    :param prefix: key prefix (letters, digits, ``_ . -``).
    :raises InvalidValueError: for a TTL below 1 second or an unsafe prefix.
    """

    def __init__(
        self, redis: Redis, ttl_seconds: int = 7 * 86_400, prefix: str = "taskiq_flow"
    ) -> None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise InvalidValueError(f"ttl_seconds must be an int >= 1, got {ttl_seconds!r}")
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self.prefix = validate_key_part("prefix", prefix)

    def keys_of(self, pipeline_id: str) -> tuple[str, str, str]:
        """The keys of a run: the run, its steps, its finished nodes' values."""
        run = f"{self.prefix}:run:{validate_key_part('pipeline id', pipeline_id)}"
        return run, f"{run}:steps", f"{run}:results"

    async def save_results(self, pipeline_id: str, results: dict[int, Any]) -> None:
        """Stores finished nodes' values (JSON), one hash field each, with the run's TTL."""
        if not results:
            return
        run_key, _, results_key = self.keys_of(pipeline_id)
        mapping: Any = {
            str(k): json.dumps(to_jsonable_python(v, fallback=repr)) for k, v in results.items()
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(results_key, mapping=mapping)
            pipe.expire(results_key, self.ttl_seconds)
            pipe.expire(run_key, self.ttl_seconds)
            await pipe.execute()

    async def load_results(self, pipeline_id: str) -> dict[int, Any]:
        """Finished nodes' values of a run."""
        raw = await self.redis.hgetall(self.keys_of(pipeline_id)[2])
        return {int(k): json.loads(v) for k, v in raw.items()}

    async def save(self, status: PipelineStatus) -> None:
        run_key, steps_key, _ = self.keys_of(status.pipeline_id)
        head = asdict(status)
        head["steps"] = len(status.steps)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(run_key, json.dumps(head), ex=self.ttl_seconds)
            if status.steps:
                pipe.hset(
                    steps_key,
                    mapping={str(i): _step_to_json(s) for i, s in enumerate(status.steps)},
                )
                pipe.expire(steps_key, self.ttl_seconds)
            await pipe.execute()

    async def save_steps(self, pipeline_id: str, steps: dict[int, StepStatus]) -> None:
        """Writes some steps of a run; each is its own field, so writers of different steps
        never overwrite each other."""
        if not steps:
            return
        run_key, steps_key, _ = self.keys_of(pipeline_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps_key, mapping={str(i): _step_to_json(s) for i, s in steps.items()})
            pipe.expire(steps_key, self.ttl_seconds)
            pipe.expire(run_key, self.ttl_seconds)
            await pipe.execute()

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        run_key, steps_key, _ = self.keys_of(pipeline_id)
        head_raw, steps_raw = await asyncio.gather(
            self.redis.get(run_key), self.redis.hgetall(steps_key)
        )
        if head_raw is None:
            return None
        head = json.loads(head_raw)
        count = int(head.pop("steps"))
        by_index = {int(k): _step_from_json(v) for k, v in steps_raw.items()}
        steps = [by_index.get(i, StepStatus(f"step {i}")) for i in range(count)]
        fields = {k: head[k] for k in PipelineStatus.__dataclass_fields__ if k in head}
        fields["steps"] = steps
        return PipelineStatus(**fields)

    async def delete(self, pipeline_id: str) -> bool:
        return bool(await self.redis.delete(*self.keys_of(pipeline_id)))

    async def ids(self) -> list[str]:
        ids = []
        pattern = f"{self.prefix}:run:*"
        async for key in self.redis.scan_iter(match=pattern, count=500):
            name = key.decode() if isinstance(key, bytes) else key
            rest = name[len(self.prefix) + len(":run:") :]
            if ":" not in rest:
                ids.append(rest)
        return ids


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


class RedisCapacityLimiter:
    """A concurrency cap shared by every process using the same Redis and ``name``.

    Holders are leases in a sorted set, scored by expiry: taking one is an atomic script that
    first drops expired leases, so a process that dies holding slots gives them back after
    ``lease_seconds``. A live holder renews its leases every third of that. A waiter retries the
    script with a backoff from 2 ms to 50 ms (a blocking pop on a wake-up list stalled for seconds
    here now and then, so waiting is kept to plain retries: at most 20 round trips a second per
    waiting dispatcher).

    :param redis: a ``redis.asyncio.Redis`` client.
    :param name: the limit's name (letters, digits, ``_ . -``).
    :param total_tokens: the cap, an int >= 1.
    :param lease_seconds: how long a slot outlives a holder that stopped renewing.
    """

    def __init__(
        self,
        redis: Redis,
        name: str,
        total_tokens: int,
        lease_seconds: float = 30.0,
        prefix: str = "taskiq_flow",
    ) -> None:
        if isinstance(total_tokens, bool) or not isinstance(total_tokens, int) or total_tokens < 1:
            raise InvalidValueError(f"total_tokens must be an int >= 1, got {total_tokens!r}")
        if not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
            raise InvalidValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self.redis = redis
        self._total = total_tokens
        self._lease_ms = max(1, int(lease_seconds * 1000))
        base = f"{validate_key_part('prefix', prefix)}:limit:{validate_key_part('name', name)}"
        self._key = base
        self._held: list[str] = []
        self._renewer: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    @property
    def total_tokens(self) -> int:
        """The shared cap."""
        return self._total

    @property
    def borrowed_tokens(self) -> int:
        """Slots this process holds."""
        return len(self._held)

    def acquire_nowait(self) -> None:
        """Never succeeds without a round trip: always raises :class:`anyio.WouldBlock`."""
        raise anyio.WouldBlock

    async def acquire(self) -> None:
        """Takes a slot, waiting until the shared count allows it."""
        lease = uuid.uuid4().hex
        pause = 0.002
        while True:
            if await self._acquire(keys=[self._key], args=[self._total, self._lease_ms, lease]):
                self._held.append(lease)
                self._start_renewer()
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def release(self) -> None:
        """Gives a slot back (the round trip to Redis happens in the background)."""
        if not self._held:
            raise InvalidValueError("release() must be matched by an earlier acquire; none held")
        lease = self._held.pop()
        task = asyncio.get_running_loop().create_task(self._give_back(lease))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _give_back(self, lease: str) -> None:
        await self.redis.zrem(self._key, lease)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            if self._held:
                await self._renew(keys=[self._key], args=[self._lease_ms, *self._held])

    async def aclose(self) -> None:
        """Gives back every slot still held and stops renewing."""
        while self._held:
            self.release()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()


def reliable_stream_broker(
    url: str,
    max_deliveries: int = 5,
    priority_queues: Sequence[str] = (),
    **kwargs: Any,
) -> AsyncBroker:
    """A taskiq-redis ``RedisStreamBroker`` that does not lose or loop on a message whose worker
    died (see :class:`ReliableRedisStreamBroker`, built lazily so that ``taskiq-redis`` stays
    optional)."""
    broker: AsyncBroker = _reliable_class()(
        url, max_deliveries=max_deliveries, priority_queues=priority_queues, **kwargs
    )
    return broker


def _reliable_class() -> type:
    global _RELIABLE
    if _RELIABLE is None:
        _RELIABLE = _make_reliable_class()
    return _RELIABLE


_RELIABLE: type | None = None


def _make_reliable_class() -> type:
    from collections.abc import AsyncGenerator

    from taskiq import AckableMessage
    from taskiq_redis import RedisStreamBroker

    from taskiq_flow.events import FLOW_LABEL, FlowMiddleware
    from taskiq_flow.resources import QUEUE_LABEL

    class ReliableRedisStreamBroker(RedisStreamBroker):
        """``RedisStreamBroker`` with two fixes for workers that die mid-task.

        - Unacknowledged messages idle longer than ``idle_timeout`` (ms) are reclaimed on every
          read timeout too, not only after a new message arrives (taskiq-redis reclaims only
          then, so a DAG waiting on a lost step, with nothing else in flight, stalls forever).
        - The reclaim lock expires and is never waited for (a worker killed holding it would
          otherwise stop all reclaiming).
        - Queue priorities: a task declared with ``@broker.task(queue="high_priority")`` (or
          taskiq-redis's ``queue_name`` label) goes to that stream, if it is one of
          ``priority_queues`` (highest first); a worker always takes what waits in a
          higher-priority queue before anything in a lower one, the default queue last.
        - A message delivered more than ``max_deliveries`` times is a poison message: it is
          acknowledged (taken out) and its pipeline run is told the step failed for good with
          :class:`PoisonMessageError`, so the run fails naming it and a dead letter is recorded.
        """

        def __init__(
            self,
            url: str,
            max_deliveries: int = 5,
            priority_queues: Sequence[str] = (),
            **kwargs: Any,
        ) -> None:
            if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int):
                raise InvalidValueError(
                    f"max_deliveries must be an int >= 1, got {max_deliveries!r}"
                )
            if max_deliveries < 1:
                raise InvalidValueError(
                    f"max_deliveries must be an int >= 1, got {max_deliveries!r}"
                )
            queues = [validate_key_part("queue name", q) for q in priority_queues]
            streams = dict(kwargs.pop("additional_streams", None) or {})
            streams.update({q: ">" for q in queues})
            super().__init__(url, additional_streams=streams, **kwargs)
            if self.queue_name in queues:
                raise InvalidValueError(f"{self.queue_name!r} is the default queue already")
            self.max_deliveries = max_deliveries
            self.priority_queues = queues

        async def startup(self) -> None:
            advert = os.environ.get(WORKER_ENV) if self.is_worker_process else None
            if advert:
                # Started by `taskiq-flow worker`: consume an own queue first, and advertise it.
                self._advert = json.loads(advert)
                own = f"{self.queue_name}.{validate_key_part('worker name', self._advert['name'])}"
                self._advert["queue"] = own
                self.priority_queues.insert(0, own)
                self.additional_streams[own] = ">"
            await super().startup()
            if advert:
                self._heartbeat = asyncio.get_running_loop().create_task(self._advertise())

        async def shutdown(self) -> None:
            heartbeat = getattr(self, "_heartbeat", None)
            if heartbeat is not None:
                heartbeat.cancel()
                async with Redis(connection_pool=self.connection_pool) as conn:
                    await conn.delete(_worker_key(self._advert["name"]))
            await super().shutdown()

        async def _advertise(self) -> None:
            key = _worker_key(self._advert["name"])
            payload = json.dumps(self._advert)
            while True:
                try:
                    async with Redis(connection_pool=self.connection_pool) as conn:
                        await conn.set(key, payload, px=int(HEARTBEAT_TTL * 1000))
                except RedisError as exc:
                    logger.warning("worker heartbeat failed: %s", exc)
                await asyncio.sleep(HEARTBEAT_TTL / 3)

        async def kick(self, message: Any) -> None:
            labels = message.labels
            wanted = labels.get("queue") or labels.get("queue_name")
            queue = wanted if wanted in self.priority_queues else self.queue_name
            own = labels.get(QUEUE_LABEL)
            if isinstance(own, str) and own.startswith(f"{self.queue_name}."):
                queue = validate_key_part("worker queue", own)  # placed on that worker
            async with Redis(connection_pool=self.connection_pool) as conn:
                await conn.xadd(
                    queue,
                    {b"data": message.message},
                    maxlen=self.maxlen,
                    approximate=self.approximate,
                )

        async def _next_batch(self, conn: Redis) -> Any:
            """What to take next: the highest-priority queue with anything waiting, checked
            without blocking; when all are empty, a blocking read on all of them."""
            for queue in (*self.priority_queues, self.queue_name):
                if self.priority_queues:
                    found: Any = await conn.xreadgroup(
                        self.consumer_group_name,
                        self.consumer_name,
                        {queue: ">"},
                        noack=False,
                        count=self.count,
                    )
                    if found:
                        return found
            streams: Any = {self.queue_name: ">", **self.additional_streams}
            return await conn.xreadgroup(
                self.consumer_group_name,
                self.consumer_name,
                streams,
                block=self.block,
                noack=False,
                count=self.count,
            )

        async def listen(self) -> AsyncGenerator[AckableMessage, None]:
            async with Redis(connection_pool=self.connection_pool) as conn:
                while True:
                    fetched = await self._next_batch(conn)
                    for stream, entries in fetched or []:
                        for message_id, fields in entries:
                            yield AckableMessage(
                                data=fields[b"data"],
                                ack=self._ack_generator(id=message_id, queue_name=stream),
                            )
                    for stream in [self.queue_name, *self.additional_streams]:
                        async for message in self._reclaim(conn, stream):
                            yield message

        async def _reclaim(self, conn: Redis, stream: str) -> AsyncGenerator[AckableMessage, None]:
            # The lock always expires: a worker killed while holding one (taskiq-redis's has no
            # timeout by default) would otherwise stop every reclaim for good. And nobody waits
            # for it: if another worker is reclaiming, this one reads on.
            lock = conn.lock(
                f"autoclaim:{self.consumer_group_name}:{stream}",
                timeout=self.unacknowledged_lock_timeout or 10.0,
            )
            if not await lock.acquire(blocking=False):
                return
            try:
                claimed: Any = await conn.xautoclaim(
                    name=stream,
                    groupname=self.consumer_group_name,
                    consumername=self.consumer_name,
                    min_idle_time=self.idle_timeout,
                    count=self.unacknowledged_batch_size,
                )
            finally:
                with contextlib.suppress(LockError):
                    await lock.release()
            for message_id, fields in claimed[1]:
                pending: Any = await conn.xpending_range(
                    stream, self.consumer_group_name, message_id, message_id, 1
                )
                deliveries = int(pending[0]["times_delivered"]) if pending else 1
                if deliveries > self.max_deliveries:
                    await self._bury(conn, stream, message_id, fields[b"data"], deliveries)
                    continue
                yield AckableMessage(
                    data=fields[b"data"],
                    ack=self._ack_generator(id=message_id, queue_name=stream),
                )

        async def _bury(
            self, conn: Redis, stream: str, message_id: Any, data: bytes, deliveries: int
        ) -> None:
            await conn.xack(stream, self.consumer_group_name, message_id)
            try:
                message = self.formatter.loads(data)
                label = message.labels.get(FLOW_LABEL)
            except Exception:  # not a message we can read: out of the stream is all we can do
                logger.warning("dropped unreadable poison message %s from %s", message_id, stream)
                return
            logger.warning(
                "message %s (%s) delivered %d times, its worker gone each time: failing it",
                message_id,
                message.task_name,
                deliveries,
            )
            middleware = next((m for m in self.middlewares if isinstance(m, FlowMiddleware)), None)
            if label is None or middleware is None:
                return
            run_id, node, attempt = str(label).rsplit(":", 2)
            error = PoisonMessageError(
                f"{message.task_name} was delivered {deliveries} times and its worker died "
                "each time"
            )
            published = middleware.channel.publish(
                Completion(run_id, int(node), int(attempt), False, None, error, 0.0, time.time())
            )
            if published is not None:
                await published

    return ReliableRedisStreamBroker


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return wait
"""


class RedisRateLimiter:
    """A token bucket shared by every process using the same Redis and ``name``: at most ``rate``
    acquisitions per second between them, in bursts of up to ``burst``.

    The bucket is a theoretical arrival time in Redis, advanced by one atomic script per
    acquisition (exact, as :class:`~taskiq_flow.RateLimiter`, with Redis's clock); each caller then
    sleeps until its reserved time.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param name: the limit's name (letters, digits, ``_ . -``).
    :param rate: acquisitions per second, > 0.
    :param burst: bucket size, an int >= 1.
    """

    def __init__(
        self, redis: Redis, name: str, rate: float, burst: int = 1, prefix: str = "taskiq_flow"
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e9:
            raise InvalidValueError(f"rate must be a finite number > 0, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise InvalidValueError(f"burst must be an int >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._interval_us = 1e6 / self.rate
        self._key = f"{validate_key_part('prefix', prefix)}:rate:{validate_key_part('name', name)}"
        self._reserve = redis.register_script(_RESERVE)

    async def acquire(self) -> None:
        """Reserves the next token in Redis and sleeps until it is due."""
        tolerance = (self.burst - 1) * self._interval_us
        wait_us = await self._reserve(keys=[self._key], args=[self._interval_us, tolerance])
        if wait_us > 0:
            await asyncio.sleep(float(wait_us) / 1e6)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None


#: Set by ``taskiq-flow worker`` for the ``taskiq worker`` it starts: the worker's advert (JSON).
WORKER_ENV = "TASKIQ_FLOW_WORKER"
#: Seconds a worker's advert lives without a heartbeat (refreshed every third of that).
HEARTBEAT_TTL = 3.0


def _worker_key(name: str, prefix: str = "taskiq_flow") -> str:
    return f"{prefix}:worker:{validate_key_part('worker name', name)}"


async def discover_workers(redis: Redis, prefix: str = "taskiq_flow") -> list[dict[str, Any]]:
    """The adverts of every live ``taskiq-flow worker`` (those whose heartbeat has not lapsed),
    in the form :class:`~taskiq_flow.ResourceAwareWorkerPool` takes, each with its ``queue``."""
    adverts = []
    pattern = f"{validate_key_part('prefix', prefix)}:worker:*"
    async for key in redis.scan_iter(match=pattern, count=500):
        raw = await redis.get(key)
        if raw is None:
            continue  # expired between the scan and the read
        try:
            adverts.append(json.loads(raw))
        except ValueError:
            logger.warning("ignoring a malformed worker advert at %s", key)
    return sorted(adverts, key=lambda a: str(a.get("name")))


def json_result_backend(url: str, **kwargs: Any) -> Any:
    """A taskiq-redis result backend that stores JSON (``RedisAsyncResultBackend`` defaults to
    pickle, which runs whatever code a value planted in Redis carries)."""
    from taskiq.serializers import JSONSerializer
    from taskiq_redis import RedisAsyncResultBackend

    return RedisAsyncResultBackend(url, serializer=JSONSerializer(), **kwargs)
