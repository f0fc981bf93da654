"""A taskiq-redis stream broker whose messages survive dead workers, bad input and Redis faults.

:func:`reliable_stream_broker` builds a :class:`ReliableRedisStreamBroker`. What it adds to
taskiq-redis's ``RedisStreamBroker``:

**Leases, not idle guesses.** A worker holds every message it took under a lease of
``lease_seconds`` (default :data:`DEFAULT_LEASE_SECONDS`, 10 s) and renews it every quarter of
that for as long as the task runs (``XCLAIM ... JUSTID`` on the messages it still owns, which
resets their idle time without counting a delivery). A message whose lease lapsed (its worker
died) is reclaimed by any live worker within ``lease_seconds`` plus a quarter of it; a long,
healthy step is never reclaimed. A message's delivery count therefore counts its workers'
deaths: delivered more than ``max_deliveries`` times, it is a poison message (taken out, its step
failed with :class:`~taskiq_flow.exceptions.PoisonMessageError`).

**Boot ids.** Each worker process is its own stream consumer (its boot id). A ``taskiq-flow
worker`` child restarted by taskiq's supervisor under the same name finds its predecessor's boot
id and takes over what it held at once, without waiting for the lease.

**Workers drain.** A worker that stops (SIGTERM or Ctrl-C, taskiq's supervisor stopping or
restarting its child, ``--max-tasks-per-child``) takes no new message, lets the tasks it runs
finish for up to ``drain_timeout`` seconds (default :data:`DEFAULT_DRAIN_TIMEOUT`; ``taskiq-flow
worker --drain-timeout S`` sets it for its worker), then cancels the ``async`` tasks still running
(they see ``CancelledError`` where they await; nothing of theirs is published, stored or
acknowledged) and gives back at once everything it holds but did not finish: each message is
appended again to the end of its stream and acknowledged and deleted where it was, in one script,
only while this worker still owns it, so a live worker's blocking read takes it at once, under
the same task id and attempt (one completion per attempt still holds; a drain counts no
delivery). A message whose attempt completed is acknowledged with its completion and never given
back. A synchronous task running in a thread cannot be interrupted: the drain waits for it and
its result counts.

**Every message ends in a completion.** A stream entry without its ``data`` field, a message
that cannot be decoded, a task this worker does not have, a malformed ``taskiq_flow`` label:
the worker acknowledges it, writes it to its dead-letter stream ``<prefix>:dead:<queue>`` and, if
the message names its run, fails the step with
:class:`~taskiq_flow.exceptions.UndeliverableMessageError`. The worker keeps running.

**Redis faults.** A stall or a restart never ends the worker: reads retry with a backoff up to
5 s, consumer groups lost with the data are declared again, acknowledgements retry.

**Bounded streams.** An acknowledged message is deleted from its stream (``XACK`` + ``XDEL``
in one transaction); a pending one never is. Reclaim takes no lock (``XAUTOCLAIM`` is atomic),
and a taskiq-redis reclaim lock left without a TTL (``autoclaim:<group>:<queue>``) is given one.

Also: queue priorities (``priority_queues``, highest first; the default queue last) and a worker's
own queue when started by ``taskiq-flow worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, AsyncBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.message import BrokerMessage
from taskiq.serializers import JSONSerializer
from taskiq_redis import RedisStreamBroker

from taskiq_flow.distributed.aio import cancellable, reraise_cancellation
from taskiq_flow.distributed.keys import validate_key_part
from taskiq_flow.distributed.payload import FastJSONSerializer
from taskiq_flow.distributed.resp import LeanConnection, stream_entries
from taskiq_flow.distributed.workers import (
    BOOT_TTL,
    DRAIN_ENV,
    HEARTBEAT_TTL,
    WORKER_ENV,
    boot_key,
    draining_key,
    worker_key,
)
from taskiq_flow.events import FLOW_LABEL, Completion, FlowMiddleware, parse_flow_label
from taskiq_flow.exceptions import (
    InvalidValueError,
    PoisonMessageError,
    UndeliverableMessageError,
)
from taskiq_flow.resources import QUEUE_LABEL

__all__ = [
    "BOOT_LABEL",
    "CUT_GRACE",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_RESULT_TTL",
    "ReliableRedisStreamBroker",
    "json_result_backend",
    "reliable_stream_broker",
    "validate_drain_timeout",
]

logger = logging.getLogger(__name__)

#: The advert label carrying a worker process's boot id (its stream consumer name).
BOOT_LABEL = "taskiq_flow_boot"
#: How long a message stays with a worker that stopped renewing its lease.
DEFAULT_LEASE_SECONDS = 10.0
#: Seconds a stopping worker lets its running tasks finish before it cancels them: room, within
#: Kubernetes's default 30 s grace period, for the cut, the give-back and the exit.
DEFAULT_DRAIN_TIMEOUT = 20.0
#: Seconds the tasks cancelled at the drain timeout get to unwind (their ``finally`` blocks)
#: before what they hold is given back regardless (a late result of theirs is then discarded).
CUT_GRACE = 2.0
#: Longest drain timeout accepted (a day).
MAX_DRAIN_TIMEOUT = 86_400.0
#: How long ``json_result_backend`` keeps a result by default (one hour).
DEFAULT_RESULT_TTL = 3_600
#: Dead-letter streams keep about this many entries, for this long.
DEAD_LETTER_MAXLEN = 10_000
DEAD_LETTER_TTL = 7 * 86_400
#: How long a worker's own queue (``<queue>.<name>``) lives once nothing is on it and its
#: worker stopped refreshing it (killed; a clean stop deletes it at once).
IDLE_WORKER_QUEUE_TTL = 3 * HEARTBEAT_TTL
#: How long a worker's own queue with messages on it outlives its worker: as long as a successor
#: under the same name takes over what it held (the boot id is remembered as long).
WORKER_QUEUE_TTL = BOOT_TTL
#: How long sending a message retries while Redis is unreachable.
SEND_RETRY_SECONDS = 10.0
#: Longest pause between two attempts to reach Redis.
MAX_BACKOFF = 5.0

# Renews the leases this consumer still owns: KEYS[1] the stream; ARGV group, consumer, ids.
# Returns the ids it no longer owns (acknowledged, or taken by another worker).
_RENEW = """
local owned, lost = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then table.insert(owned, ARGV[i]) else table.insert(lost, ARGV[i]) end
end
for i = 1, #owned, 1000 do
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for j = i, math.min(i + 999, #owned) do table.insert(args, owned[j]) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return lost
"""


# Gives back messages this consumer owns: KEYS[1] the stream; ARGV group, consumer, ids. Each
# one still pending for this consumer is appended again (same fields, a new id) and acknowledged
# and deleted where it was; one another consumer took meanwhile is left alone. Returns how many.
_GIVE_BACK = """
local given = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    if #entry > 0 then
      redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
      given = given + 1
    end
  end
end
return given
"""


# A worker's own queue: KEYS[1]. Empty, it lives ARGV[1] ms more; with messages, ARGV[2] ms.
_KEEP_QUEUE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# A stopping worker's own queue: deleted (with its consumer group) if nothing is on it.
_DROP_EMPTY_QUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XLEN', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def reliable_stream_broker(
    url: str,
    max_deliveries: int = 5,
    priority_queues: Sequence[str] = (),
    lease_seconds: float | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    **kwargs: Any,
) -> AsyncBroker:
    """A taskiq-redis ``RedisStreamBroker`` that does not lose, repeat or loop on messages
    whose worker died, and that survives bad messages and Redis faults (see the module's
    docstring).

    :param url: the Redis URL.
    :param max_deliveries: deliveries (workers that died with it) before a message is poison.
    :param priority_queues: extra queues, highest priority first, drained before the default.
    :param lease_seconds: a worker's lease on a message it runs (default 10 s; taskiq-redis's
        ``idle_timeout``, in ms, is taken as the lease if given instead).
    :param drain_timeout: seconds a stopping worker lets its running tasks finish before it
        cancels them and gives back what it holds (default 20 s; ``taskiq-flow worker
        --drain-timeout`` overrides it for its worker).
    :param kwargs: anything ``RedisStreamBroker`` takes.
    :raises InvalidValueError: for a bad ``max_deliveries``, lease, drain timeout or queue name.
    """
    broker: AsyncBroker = ReliableRedisStreamBroker(
        url,
        max_deliveries=max_deliveries,
        priority_queues=priority_queues,
        lease_seconds=lease_seconds,
        drain_timeout=drain_timeout,
        **kwargs,
    )
    return broker


def json_result_backend(url: str, **kwargs: Any) -> Any:
    """A taskiq-redis result backend that stores JSON (``RedisAsyncResultBackend`` defaults to
    pickle, which runs whatever code a value planted in Redis carries), with results expiring
    after :data:`DEFAULT_RESULT_TTL` seconds (one hour) unless ``result_ex_time`` or
    ``result_px_time`` says otherwise.

    :param url: the Redis URL.
    :param kwargs: anything ``RedisAsyncResultBackend`` takes.
    """
    from taskiq.serializers import JSONSerializer
    from taskiq_redis import RedisAsyncResultBackend

    if kwargs.get("result_ex_time") is None and kwargs.get("result_px_time") is None:
        kwargs["result_ex_time"] = DEFAULT_RESULT_TTL
    kwargs.setdefault("serializer", JSONSerializer())
    return RedisAsyncResultBackend(url, **kwargs)


def _lease_from(lease_seconds: float | None, idle_timeout: Any) -> float:
    if lease_seconds is None:
        lease_seconds = DEFAULT_LEASE_SECONDS if idle_timeout is None else idle_timeout / 1000
    if (
        isinstance(lease_seconds, bool)
        or not isinstance(lease_seconds, (int, float))
        or not math.isfinite(lease_seconds)
        or not 0.2 <= lease_seconds <= 86_400
    ):
        raise InvalidValueError(f"lease_seconds must be within [0.2, 86400], got {lease_seconds!r}")
    return float(lease_seconds)


def validate_drain_timeout(value: object, what: str = "drain_timeout") -> float:
    """A drain timeout, in seconds: a number within [0, 86400] (0 cancels at once what runs).

    :param value: the value given (a number, or the text of one, as a command line gives it).
    :param what: its name, for the error message (``"--drain-timeout"``).
    :return: the timeout as a float.
    :raises InvalidValueError: naming the value and the range.
    """
    seconds: object = value
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_DRAIN_TIMEOUT
    ):
        raise InvalidValueError(
            f"{what} must be a number of seconds within [0, 86400], got {value!r}"
        )
    return float(seconds)


class _Attempt:
    """A task this worker process runs: its taskiq callback, and whether it can be cut."""

    __slots__ = ("in_body", "is_async", "task")

    def __init__(self, task: asyncio.Task[Any], is_async: bool) -> None:
        self.task = task
        self.is_async = is_async
        self.in_body = True  # until its result reaches the middlewares


class _DrainGuard(TaskiqMiddleware):
    """Added last to a worker's middlewares (so its ``on_error`` and ``post_execute`` run first):
    notes each task's callback as it starts, and stops the result path of an attempt cut by a
    drain or given back (no completion published, no result stored, no acknowledgement)."""

    def __init__(self, owner: ReliableRedisStreamBroker) -> None:
        super().__init__()
        self.owner = owner

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self.owner._attempt_starts(message)
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        self.owner._attempt_ends(message, failed=True)

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.owner._attempt_ends(message, failed=result.is_err)


class _ReusingFormatter(TaskiqFormatter):
    """A worker's formatter: hands taskiq the message the broker parsed when it took it off
    the stream (to check it), instead of parsing the same bytes again."""

    def __init__(self, inner: TaskiqFormatter, parsed: dict[int, tuple[Any, TaskiqMessage]]):
        self.inner = inner
        self._parsed = parsed

    def dumps(self, message: TaskiqMessage) -> BrokerMessage:
        return self.inner.dumps(message)

    def loads(self, message: bytes) -> TaskiqMessage:
        found = self._parsed.pop(id(message), None)
        if found is not None and found[0] is message:
            return found[1]
        return self.inner.loads(message)


class ReliableRedisStreamBroker(RedisStreamBroker):
    """``RedisStreamBroker`` with leases, boot ids, dead letters and Redis fault handling
    (see :mod:`taskiq_flow.distributed.broker`)."""

    def __init__(
        self,
        url: str,
        max_deliveries: int = 5,
        priority_queues: Sequence[str] = (),
        lease_seconds: float | None = None,
        prefix: str = "taskiq_flow",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if (
            isinstance(max_deliveries, bool)
            or not isinstance(max_deliveries, int)
            or max_deliveries < 1
        ):
            raise InvalidValueError(f"max_deliveries must be an int >= 1, got {max_deliveries!r}")
        lease = _lease_from(lease_seconds, kwargs.pop("idle_timeout", None))
        self.drain_timeout = validate_drain_timeout(drain_timeout)
        queues = [validate_key_part("queue name", q) for q in priority_queues]
        streams = dict(kwargs.pop("additional_streams", None) or {})
        streams.update({q: ">" for q in queues})
        super().__init__(url, additional_streams=streams, idle_timeout=int(lease * 1000), **kwargs)
        if self.queue_name in queues:
            raise InvalidValueError(f"{self.queue_name!r} is the default queue already")
        if type(self.serializer) is JSONSerializer:  # taskiq's default: the same JSON, faster
            self.serializer = FastJSONSerializer()
        self.max_deliveries = max_deliveries
        self.priority_queues = queues
        self.lease_seconds = lease
        self.prefix = validate_key_part("prefix", prefix)
        # Messages parsed on arrival, handed to taskiq as they are (id of their bytes -> both).
        self._parsed: dict[int, tuple[Any, TaskiqMessage]] = {}
        # What this worker holds: stream -> {message id: task id}, and back.
        self._held: dict[Any, dict[Any, str]] = {}
        self._tasks: dict[str, tuple[Any, Any]] = {}
        # Completions to write with a message's acknowledgement: task id -> (key, JSON, ttl).
        self._carried: dict[str, tuple[str, str, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Messages sent in this turn of the event loop, written together.
        # Sends, and acknowledgements with their completions, written in batches.
        self._sends: GroupWriter[_Outgoing] = GroupWriter(self._send_batch)
        self._acks: GroupWriter[_Acking] = GroupWriter(self._ack_batch)
        # The hot paths' lean connections (None: the pool's settings need redis-py): one for
        # sends and acknowledgements, one for the worker's blocking reads.
        self._lean = LeanConnection.from_pool(self.connection_pool)
        self._lean_read = LeanConnection.from_pool(self.connection_pool)
        self._in_ack: set[str] = set()
        self._predecessor: str | None = None
        self._next_reclaim = 0.0
        self._advert: dict[str, Any] | None = None
        # The drain: the callbacks running (task id -> attempt), those cut, those given back.
        self._running: dict[str, _Attempt] = {}
        self._cut: set[str] = set()
        self._given_back: set[str] = set()
        self._drain_task: asyncio.Task[None] | None = None
        self._cut_now = asyncio.Event()

    # -- life cycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Declares the consumer groups; in a worker, starts renewing leases (and, for a
        ``taskiq-flow worker``, advertising and taking over from a predecessor)."""
        advert = os.environ.get(WORKER_ENV) if self.is_worker_process else None
        if advert:
            # Started by `taskiq-flow worker`: consume an own queue first, and advertise it.
            self._advert = json.loads(advert)
            name = validate_key_part("worker name", self._advert["name"])
            self.consumer_name = f"{name}.{self.consumer_name}"
            own = f"{self.queue_name}.{name}"
            self._advert["queue"] = own
            # The boot id travels as a label (the pool reads other keys as resources).
            self._advert["labels"] = {
                **(self._advert.get("labels") or {}),
                BOOT_LABEL: self.consumer_name,
            }
            self.priority_queues.insert(0, own)
            self.additional_streams[own] = ">"
            # Read from its start: what was placed on this name while no process served it
            # (its predecessor stopped, the queue was deleted, then a message came) runs.
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                async with Redis(connection_pool=self.connection_pool) as conn:
                    await conn.xgroup_create(own, self.consumer_group_name, id="0", mkstream=True)
        await super().startup()
        if not self.is_worker_process:
            return
        if self._advert is not None:
            async with Redis(connection_pool=self.connection_pool) as conn:
                previous: Any = await conn.set(
                    boot_key(self._advert["name"], self.prefix),
                    self.consumer_name,
                    ex=BOOT_TTL,
                    get=True,
                )
            if previous is not None:
                self._predecessor = previous.decode()
            self._spawn(self._advertise())
        self._spawn(self._keep_leases())
        drain = os.environ.get(DRAIN_ENV)
        if drain:
            try:
                self.drain_timeout = validate_drain_timeout(drain, DRAIN_ENV)
            except InvalidValueError as exc:  # never a restart loop: keep the broker's own
                logger.warning("%s; draining for %gs instead", exc, self.drain_timeout)
        if not any(isinstance(m, _DrainGuard) for m in self.middlewares):
            self.add_middlewares(_DrainGuard(self))
        if not isinstance(self.formatter, _ReusingFormatter):
            self.formatter = _ReusingFormatter(self.formatter, self._parsed)

    async def shutdown(self) -> None:
        """Stops the heartbeats, withdraws the advert, and removes this process's stream
        consumer if it holds nothing (consumers would pile up in the group otherwise), and
        its own queue if nothing is on it. A worker process first ends its drain (cutting what
        still runs) and gives back whatever it holds but did not finish."""
        if self.is_worker_process:
            await self._end_drain()
        # What was sent or acknowledged is written before the connections close.
        await self._sends.flushed()
        await self._acks.flushed()
        for task in list(self._background):
            task.cancel()
        for lean in (self._lean, self._lean_read):
            if lean is not None:
                await lean.aclose()
        if self.is_worker_process:
            with contextlib.suppress(RedisError):
                async with Redis(connection_pool=self.connection_pool) as conn:
                    if self._advert is not None:
                        await conn.delete(worker_key(self._advert["name"], self.prefix))
                    for stream in self.streams:
                        await self._forget_consumer(conn, stream, self.consumer_name)
                    if self._advert is not None:
                        # Its own queue goes too, if nothing is on it (what is stays for a
                        # successor under this name, for WORKER_QUEUE_TTL at most).
                        await conn.eval(_DROP_EMPTY_QUEUE, 1, self._advert["queue"])
        await super().shutdown()

    async def _forget_consumer(self, conn: Redis, stream: Any, consumer: str) -> None:
        """Deletes a consumer from the group, only if it has no pending message (deleting
        one drops what it holds)."""
        with contextlib.suppress(ResponseError):
            pending: Any = await conn.xpending_range(
                stream, self.consumer_group_name, "-", "+", 1, consumer
            )
            if not pending:
                await conn.xgroup_delconsumer(stream, self.consumer_group_name, consumer)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def streams(self) -> list[str]:
        """Every stream this broker consumes."""
        return [self.queue_name, *self.additional_streams]

    async def _advertise(self) -> None:
        assert self._advert is not None
        key = worker_key(self._advert["name"], self.prefix)
        payload = json.dumps(self._advert)
        own = self._advert["queue"]
        ttls = (int(IDLE_WORKER_QUEUE_TTL * 1000), int(WORKER_QUEUE_TTL * 1000))
        while True:
            try:
                async with Redis(connection_pool=self.connection_pool) as conn:
                    await conn.set(key, payload, px=int(HEARTBEAT_TTL * 1000))
                    await conn.eval(_KEEP_QUEUE, 1, own, *ttls)
            except RedisError as exc:
                logger.warning("worker advert not refreshed: %s", exc)
            await asyncio.sleep(HEARTBEAT_TTL / 3)

    async def _keep_leases(self) -> None:
        """Renews the lease on every message this worker holds, every quarter lease."""
        while True:
            await asyncio.sleep(self.lease_seconds / 4)
            try:
                await self.renew_leases()
            except RedisError as exc:
                logger.warning("leases not renewed (Redis unavailable): %s", exc)
            except Exception:  # never let the heartbeat die
                logger.exception("leases not renewed")

    async def renew_leases(self) -> None:
        """One round of lease renewals (what the heartbeat does)."""
        held = [(s, list(ids)) for s, ids in self._held.items() if ids]
        if not held:
            return
        async with Redis(connection_pool=self.connection_pool) as conn:
            renew = conn.register_script(_RENEW)
            for stream, ids in held:
                lost: Any = await renew(
                    keys=[stream], args=[self.consumer_group_name, self.consumer_name, *ids]
                )
                for message_id in lost or ():
                    self._drop(stream, message_id)

    def _drop(self, stream: Any, message_id: Any) -> str | None:
        """Forgets a held message; returns its task id."""
        ids = self._held.get(stream)
        if ids is None:
            return None
        task_id = ids.pop(message_id, None)
        if task_id is None:
            other = message_id.decode() if isinstance(message_id, bytes) else message_id
            task_id = ids.pop(other, None) or ids.pop(str(other).encode(), None)
        if task_id is not None:
            self._tasks.pop(task_id, None)
        return task_id

    def carry_completion(self, task_id: str, channel: Any, run_id: str, payload: str) -> bool:
        """Takes a prepared completion to write in the same transaction as the message's
        acknowledgement (never one without the other). ``False`` if this worker no longer
        holds the message (already acknowledged): the caller writes it itself."""
        if task_id not in self._tasks:
            return False
        self._carried[task_id] = (channel.key(run_id), payload, channel.ttl_seconds)
        return True

    # -- draining ----------------------------------------------------------------------------

    def _attempt_starts(self, message: TaskiqMessage) -> None:
        """A task's callback starts (its worker's last ``pre_execute``): noted, so that a drain
        waits for it and can cut it; refused if its message was given back meanwhile."""
        task_id = message.task_id
        if task_id in self._given_back:
            raise asyncio.CancelledError  # given back while it waited: it runs elsewhere
        task = asyncio.current_task()
        if task is None:
            return
        found = self.find_task(message.task_name)
        # taskiq awaits a coroutine function; anything else runs in its executor.
        is_async = found is not None and asyncio.iscoroutinefunction(found.original_func)
        attempt = _Attempt(task, is_async)
        self._running[task_id] = attempt

        def ended(_: object) -> None:
            if self._running.get(task_id) is attempt:
                del self._running[task_id]

        task.add_done_callback(ended)

    def _attempt_ends(self, message: TaskiqMessage, failed: bool) -> None:
        """A task's result reaches the middlewares. If it was cut by the drain (and failed:
        a task that caught the cancellation and returned completed), or given back, its
        callback ends here: nothing is published, stored or acknowledged."""
        task_id = message.task_id
        attempt = self._running.get(task_id)
        if attempt is not None:
            attempt.in_body = False
        if task_id in self._given_back or (failed and task_id in self._cut):
            raise asyncio.CancelledError

    def _begin_drain(self) -> None:
        if self._drain_task is not None or not self.is_worker_process:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing runs either
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Lets the running tasks finish for up to ``drain_timeout`` seconds, cuts the
        ``async`` ones still running, and gives back what this worker holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        with contextlib.suppress(RedisError, InvalidValueError):
            async with Redis(connection_pool=self.connection_pool) as conn:
                ttl = int(self.drain_timeout + CUT_GRACE) + 60
                await conn.set(draining_key(self.consumer_name, self.prefix), 1, ex=ttl)
        if self._running:
            logger.info(
                "draining: %d task(s) running, %gs to finish",
                len(self._running),
                self.drain_timeout,
            )
        while not self._cut_now.is_set():
            waiting = [a.task for a in self._running.values() if not a.task.done()]
            left = deadline - loop.time()
            if not waiting or left <= 0:
                break
            cut_now = loop.create_task(self._cut_now.wait())
            await asyncio.wait(
                [*waiting, cut_now], timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            cut_now.cancel()
        cut = [
            (task_id, a.task)
            for task_id, a in self._running.items()
            if a.is_async and a.in_body and not a.task.done()
        ]
        if cut:
            logger.warning(
                "drain timeout (%gs): cancelling %d running task(s); they run again elsewhere",
                self.drain_timeout,
                len(cut),
            )
            for task_id, task in cut:
                self._cut.add(task_id)
                task.cancel()
            await asyncio.wait([task for _, task in cut], timeout=CUT_GRACE)
        try:
            await self.give_back()
        except RedisError as exc:
            logger.warning("messages not given back (Redis unavailable): %s", exc)

    async def _end_drain(self) -> None:
        """At shutdown: the drain is cut short (what still runs is cancelled now), then
        whatever is still held but not running is given back."""
        self._begin_drain()
        self._cut_now.set()
        if self._drain_task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drain_task), CUT_GRACE + 1)
        try:
            await self.give_back()
        except RedisError as exc:
            logger.warning("messages not given back (Redis unavailable): %s", exc)
        with contextlib.suppress(RedisError, InvalidValueError):
            async with Redis(connection_pool=self.connection_pool) as conn:
                await conn.delete(draining_key(self.consumer_name, self.prefix))

    async def give_back(self) -> int:
        """Gives back every message this worker process holds in Redis (taken, prefetched,
        read but not yet handed to taskiq, cut) except those whose task still runs here: each
        is appended again to its stream, to be taken at once by a live worker (in
        one Redis script). Their callbacks, if they start or end here later, are stopped.

        :return: how many messages were given back.
        """
        given = 0
        async with Redis(connection_pool=self.connection_pool) as conn:
            script = conn.register_script(_GIVE_BACK)
            for stream in self.streams:
                try:
                    pending: Any = await conn.xpending_range(
                        stream, self.consumer_group_name, "-", "+", 10_000, self.consumer_name
                    )
                except ResponseError:
                    continue  # no such group
                # Computed after the last await: a callback starting from here on sees its
                # message given back.
                keep = {
                    _text(self._tasks[task_id][1])
                    for task_id, attempt in self._running.items()
                    if task_id in self._tasks
                    and task_id not in self._cut
                    and not attempt.task.done()
                }
                keep |= self._in_ack
                ids = [p["message_id"] for p in pending if _text(p["message_id"]) not in keep]
                for message_id in ids:
                    task_id = self._drop(stream, message_id) or self._drop(
                        stream.encode(), message_id
                    )
                    if task_id is not None:
                        self._given_back.add(task_id)
                self._parsed.clear()  # parsed again if taskiq still takes one (a fallback)
                for i in range(0, len(ids), 1000):
                    given += int(
                        await script(
                            keys=[stream],
                            args=[self.consumer_group_name, self.consumer_name, *ids[i : i + 1000]],
                        )
                    )
        if given:
            logger.warning("gave back %d message(s): other workers take them now", given)
        return given

    # -- sending -----------------------------------------------------------------------------

    async def kick(self, message: Any) -> None:
        """Appends a message to its queue: a priority queue it names, the queue of the
        worker it was placed on, or the default queue."""
        labels = message.labels
        wanted = labels.get("queue") or labels.get("queue_name")
        queue = wanted if wanted in self.priority_queues else self.queue_name
        own = labels.get(QUEUE_LABEL)
        placed = isinstance(own, str)
        if isinstance(own, str):
            if not own.startswith(f"{self.queue_name}."):
                # Placed on a worker of another application (its advert shares this Redis):
                # sending it elsewhere would run it where the placement did not put it.
                raise UndeliverableMessageError(
                    f"task {message.task_name!r} was placed on a worker whose queue {own!r} "
                    f"is not one of this broker's (queue {self.queue_name!r}): build the "
                    "pool with discover_workers(redis, broker=broker)"
                )
            queue = validate_key_part("worker queue", own)  # placed on that worker
        # Sends made while another send of this process is on its way go out together, in
        # one pipelined write, as soon as that one is answered (see GroupWriter).
        await self._sends.put((queue, placed, message.message))

    async def _send_batch(self, batch: list[_Outgoing]) -> list[BaseException | None]:
        """Writes the messages of a batch in one pipelined write (no transaction: each
        ``XADD`` is atomic, and none depends on another); returns how each went. A connection
        broken by a Redis restart or stall is retried (on a fresh one) for up to
        SEND_RETRY_SECONDS; a message whose reply was lost may then be sent twice
        (at-least-once, as any redelivery)."""
        pause, deadline = 0.05, time.monotonic() + SEND_RETRY_SECONDS
        while True:
            try:
                if self._lean is not None:
                    replies = await self._lean.execute(self._send_commands(batch))
                else:
                    async with (
                        Redis(connection_pool=self.connection_pool) as conn,
                        conn.pipeline(transaction=False) as pipe,
                    ):
                        for queue, placed, data in batch:
                            pipe.xadd(
                                queue,
                                {b"data": data},
                                maxlen=self.maxlen,
                                approximate=self.approximate,
                            )
                            if placed:  # a worker's own queue outlives it only so long
                                pipe.pexpire(queue, int(WORKER_QUEUE_TTL * 1000))
                        replies = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            outcomes: list[BaseException | None] = []
            at = 0
            for _, placed, _ in batch:
                reply = replies[at]
                outcomes.append(reply if isinstance(reply, BaseException) else None)
                at += 2 if placed else 1
            return outcomes

    def _send_commands(self, batch: list[_Outgoing]) -> list[tuple[Any, ...]]:
        """The commands :meth:`_send_batch` writes: per message its ``XADD`` (capped as the
        broker's ``maxlen`` says), and a ``PEXPIRE`` of a worker's own queue."""
        cap: tuple[Any, ...] = ()
        if self.maxlen is not None:
            cap = ("MAXLEN", "~" if self.approximate else "=", self.maxlen)
        ttl = int(WORKER_QUEUE_TTL * 1000)
        commands: list[tuple[Any, ...]] = []
        for queue, placed, data in batch:
            commands.append(("XADD", queue, *cap, "*", "data", data))
            if placed:
                commands.append(("PEXPIRE", queue, ttl))
        return commands

    # -- receiving ---------------------------------------------------------------------------

    async def _next_batch(self, conn: Redis) -> Any:
        """What to take next: the highest-priority queue with anything waiting, checked
        without blocking; when all are empty, a blocking read on all of them."""
        if self._lean_read is not None:
            return await cancellable(self._lean_next_batch(self._lean_read))
        return await cancellable(self._pool_next_batch(conn))

    async def _lean_next_batch(self, lean: LeanConnection) -> Any:
        """:meth:`_next_batch` on the lean connection. A cancellation (the worker stops)
        ends the wait at once and closes the connection, so that the blocked read takes
        nothing more on Redis's side."""
        group, consumer = self.consumer_group_name, self.consumer_name
        count: tuple[Any, ...] = ("COUNT", self.count) if self.count else ()
        if self.priority_queues:
            for queue in (*self.priority_queues, self.queue_name):
                [reply] = await lean.execute(
                    [("XREADGROUP", "GROUP", group, consumer, *count, "STREAMS", queue, ">")]
                )
                found = stream_entries(reply)
                if found:
                    return found
        streams: dict[Any, Any] = {self.queue_name: ">", **self.additional_streams}
        block = ("BLOCK", self.block) if self.block is not None else ()
        read = ("XREADGROUP", "GROUP", group, consumer, *count, *block, "STREAMS", *streams)
        try:
            [reply] = await lean.execute(
                [(*read, *streams.values())], block=(self.block or 0) / 1000
            )
        except asyncio.CancelledError:
            # The worker stops: its read must not go on taking messages on Redis's side
            # (as redis-py's disconnect on cancellation ensures).
            lean.abort()
            raise
        return stream_entries(reply)

    async def _pool_next_batch(self, conn: Redis) -> Any:
        if self.priority_queues:
            for queue in (*self.priority_queues, self.queue_name):
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

    async def listen(self) -> AsyncGenerator[Any, None]:
        """Messages for this worker, forever: new ones, a predecessor's, and those whose
        lease lapsed. Redis errors are waited out with a backoff, never raised. When the
        worker stops listening (it is stopping), its drain begins."""
        try:
            async with contextlib.aclosing(self._receive()) as messages:
                async for message in messages:
                    yield message
        finally:
            self._begin_drain()

    async def _receive(self) -> AsyncGenerator[Any, None]:
        pause = 0.1
        while True:
            try:
                async with Redis(connection_pool=self.connection_pool) as conn:
                    if self._predecessor is not None:
                        async for message in self._take_over(conn, self._predecessor):
                            yield message
                        self._predecessor = None
                    while True:
                        fetched = await self._next_batch(conn)
                        pause = 0.1
                        for stream, entries in fetched or []:
                            for message_id, fields in entries:
                                message = await self._admit(conn, stream, message_id, fields)
                                if message is not None:
                                    yield message
                        if time.monotonic() >= self._next_reclaim:
                            self._next_reclaim = time.monotonic() + self.lease_seconds / 4
                            for stream in self.streams:
                                async for message in self._reclaim(conn, stream):
                                    yield message
            except ResponseError as exc:
                reraise_cancellation()
                if "NOGROUP" in str(exc):
                    logger.warning("consumer group lost (Redis lost its data?): declaring it")
                    self._held.clear()  # their pending entries are gone with the group
                    with contextlib.suppress(RedisError):
                        await self._declare_again()
                else:
                    logger.warning("Redis refused a read: %s; retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
            except (RedisError, OSError) as exc:
                reraise_cancellation()
                logger.warning("Redis unavailable: %s; retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
            except Exception:
                # Never the end of the worker (taskiq ends its process when `listen` raises):
                # logged with its traceback, and retried.
                logger.exception("reading the next messages failed; retrying in %.1fs", pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)

    async def _declare_again(self) -> None:
        """Declares lost consumer groups from the start of their streams: what was sent
        since Redis came back is read, not skipped."""
        async with Redis(connection_pool=self.connection_pool) as conn:
            for stream in self.streams:
                with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                    await conn.xgroup_create(
                        stream, self.consumer_group_name, id="0", mkstream=True
                    )

    async def _admit(self, conn: Redis, stream: Any, message_id: Any, fields: Any) -> Any | None:
        """The message to run, or ``None`` if it cannot run here (then it is answered,
        dead-lettered and acknowledged)."""
        data = fields.get(b"data") if isinstance(fields, dict) else None
        if data is None:
            await self._reject(
                conn, stream, message_id, fields, "a stream entry without a 'data' field"
            )
            return None
        formatter = self.formatter
        reusing = isinstance(formatter, _ReusingFormatter)
        try:
            if isinstance(formatter, _ReusingFormatter):
                message = formatter.inner.loads(data)
            else:
                message = formatter.loads(data)
        except Exception as exc:
            await self._reject(
                conn, stream, message_id, fields, f"a message that cannot be decoded: {exc}"
            )
            return None
        if self.find_task(message.task_name) is None:
            reason = f"task {message.task_name!r} is not registered on this worker"
            await self._reject(conn, stream, message_id, fields, reason, message)
            return None
        label = message.labels.get(FLOW_LABEL)
        if label is not None and parse_flow_label(label) is None:
            reason = f"a malformed {FLOW_LABEL} label {label!r}"
            await self._reject(conn, stream, message_id, fields, reason, message)
            return None
        self._held.setdefault(stream, {})[message_id] = message.task_id
        self._tasks[message.task_id] = (stream, message_id)
        if reusing:  # taskiq parses it again otherwise
            self._parsed[id(data)] = (data, message)
        return AckableMessage(data=data, ack=self._acker(stream, message_id))

    def _acker(self, stream: Any, message_id: Any) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            task_id = self._drop(stream, message_id)
            carried = self._carried.pop(task_id, None) if task_id is not None else None
            await self._ack(stream, message_id, carried)

        return ack

    async def _ack(
        self, stream: Any, message_id: Any, carried: tuple[str, str, int] | None = None
    ) -> None:
        """Acknowledges and deletes a message (with its completion, if it carries one, in
        the same transaction). Acknowledgements made in one turn of the event loop go out
        together, in one transaction (see :meth:`_ack_batch`); this returns once its own is
        written, or given up."""
        text = _text(message_id)
        self._in_ack.add(text)  # never given back: its acknowledgement is on its way
        try:
            await self._acks.put((stream, message_id, carried))
        except RedisError as exc:  # batched with a write that was cut: reclaimed after a lease
            logger.warning("message %s may not be acknowledged: %s", message_id, exc)
        finally:
            self._in_ack.discard(text)

    async def _ack_batch(self, batch: list[_Acking]) -> list[BaseException | None]:
        """Writes a batch of acknowledgements, each with its completion, in one transaction
        (an ``XADD`` per completion and an ``EXPIRE`` per completion stream, one ``XACK``
        and one ``XDEL`` per stream; on the lean connection where the pool's settings allow),
        retrying while Redis is unavailable (for about a lease; after that the messages are
        reclaimed and run again). Never raises."""
        pause, deadline = 0.05, time.monotonic() + self.lease_seconds
        ids: dict[Any, list[Any]] = {}
        for stream, message_id, _ in batch:
            ids.setdefault(stream, []).append(message_id)
        while True:
            try:
                if self._lean is not None:
                    replies = await self._lean_ack(batch, ids)
                else:
                    async with (
                        Redis(connection_pool=self.connection_pool) as conn,
                        conn.pipeline(transaction=True) as pipe,
                    ):
                        for _, _, carried in batch:
                            if carried is not None:
                                key, payload, ttl = carried
                                pipe.xadd(key, {"c": payload})
                                pipe.expire(key, ttl)
                        for stream, message_ids in ids.items():
                            pipe.xack(stream, self.consumer_group_name, *message_ids)
                            pipe.xdel(stream, *message_ids)
                        replies = await pipe.execute(raise_on_error=False)
                # Executed: a command Redis refused (its group lost with the data) is not
                # retried, or the completions written with it would be written twice.
                for reply in replies:
                    if isinstance(reply, Exception):
                        logger.warning("acknowledgement refused by Redis: %s", reply)
                return [None] * len(batch)
            except RedisError as exc:
                if time.monotonic() > deadline:
                    logger.warning("%d message(s) not acknowledged: %s", len(batch), exc)
                    return [None] * len(batch)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _lean_ack(self, batch: list[_Acking], ids: dict[Any, list[Any]]) -> list[Any]:
        """The acknowledgement transaction of :meth:`_ack_batch` on the lean connection: the
        completions (one ``EXPIRE`` per completion stream), then one ``XACK`` and one ``XDEL``
        per stream, in one ``MULTI`` … ``EXEC``; returns the replies of its commands.

        :raises RedisError: if the transaction was refused as a whole (``EXECABORT``), or
            Redis could not be reached.
        """
        assert self._lean is not None
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        ttls: dict[str, int] = {}
        for _, _, carried in batch:
            if carried is not None:
                key, payload, ttl = carried
                commands.append(("XADD", key, "*", "c", payload))
                ttls[key] = ttl
        commands.extend(("EXPIRE", key, ttl) for key, ttl in ttls.items())
        group = self.consumer_group_name
        for stream, message_ids in ids.items():
            commands.append(("XACK", stream, group, *message_ids))
            commands.append(("XDEL", stream, *message_ids))
        commands.append(("EXEC",))
        replies = await self._lean.execute(commands)
        done = replies[-1]
        if isinstance(done, RedisError):  # EXECABORT: nothing of it was executed
            raise done
        return list(done or ())

    async def _reclaim(self, conn: Redis, stream: Any) -> AsyncGenerator[Any, None]:
        """Takes over messages whose lease lapsed (no lock: ``XAUTOCLAIM`` is atomic)."""
        with contextlib.suppress(RedisError):  # a taskiq-redis lock left without a TTL
            await conn.expire(f"autoclaim:{self.consumer_group_name}:{stream}", 10, nx=True)
        # As many as a read takes (xread_count), so that what a dead worker held spreads
        # over the live ones instead of all landing on one (a poison message among them
        # would take the rest down with it again).
        batch = min(self.unacknowledged_batch_size, self.count or 100)
        cursor: Any = "0-0"
        for _ in range(100):  # pages of entries still leased, skipped
            reply: Any = await conn.xautoclaim(
                name=stream,
                groupname=self.consumer_group_name,
                consumername=self.consumer_name,
                min_idle_time=self.idle_timeout,
                start_id=cursor,
                count=batch,
            )
            cursor = reply[0]
            async for message in self._adopt(conn, stream, reply[1]):
                yield message
            if reply[1] or cursor in (b"0-0", "0-0"):
                return

    async def _take_over(self, conn: Redis, predecessor: str) -> AsyncGenerator[Any, None]:
        """Takes what this worker name's previous boot held (it died: restarted by the
        supervisor), counting one delivery each, then removes that consumer. A predecessor
        still draining (a successor started while it stops) is left alone: it gives back what
        it holds itself, and takes what it still runs to its end."""
        with contextlib.suppress(InvalidValueError):  # a consumer name of the user's
            if await conn.exists(draining_key(predecessor, self.prefix)):
                logger.info("%s is draining: it gives back what it holds", predecessor)
                return
        for stream in self.streams:
            try:
                pending: Any = await conn.xpending_range(
                    stream, self.consumer_group_name, "-", "+", 10_000, predecessor
                )
            except ResponseError:
                continue  # no such group yet
            ids = [p["message_id"] for p in pending]
            for i in range(0, len(ids), 1000):
                claimed: Any = await conn.xclaim(
                    stream, self.consumer_group_name, self.consumer_name, 0, ids[i : i + 1000]
                )
                logger.warning(
                    "took over %d message(s) of %s from %s (its previous process)",
                    len(claimed),
                    stream,
                    predecessor,
                )
                async for message in self._adopt(conn, stream, claimed):
                    yield message
            await self._forget_consumer(conn, stream, predecessor)

    async def _adopt(self, conn: Redis, stream: Any, claimed: Any) -> AsyncGenerator[Any, None]:
        for message_id, fields in claimed:
            if fields is None or message_id in self._held.get(stream, {}):
                continue  # deleted meanwhile; or ours and running (a late heartbeat)
            pending: Any = await conn.xpending_range(
                stream, self.consumer_group_name, message_id, message_id, 1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            if deliveries > self.max_deliveries:
                await self._bury(conn, stream, message_id, fields, deliveries)
                continue
            message = await self._admit(conn, stream, message_id, fields)
            if message is not None:
                yield message

    # -- messages that cannot run ------------------------------------------------------------

    async def _reject(
        self,
        conn: Redis,
        stream: Any,
        message_id: Any,
        fields: Any,
        reason: str,
        message: Any = None,
        poison: bool = False,
    ) -> None:
        """Dead-letters a message, fails its step (:class:`UndeliverableMessageError`, or
        :class:`PoisonMessageError` for a ``poison`` one) and acknowledges it."""
        said = "is poison" if poison else "cannot run"
        logger.warning("message %s of %s %s: %s", message_id, stream, said, reason)
        await self._dead_letter(conn, stream, message_id, fields, reason)
        error = PoisonMessageError(reason) if poison else UndeliverableMessageError(reason)
        await self._answer(message, fields, error)
        await self._ack(stream, message_id)

    async def _bury(
        self, conn: Redis, stream: Any, message_id: Any, fields: Any, deliveries: int
    ) -> None:
        try:
            name = self.formatter.loads(fields[b"data"]).task_name
        except Exception:
            name = "?"
        reason = (
            f"{name} was delivered {deliveries} times and its worker died each time "
            f"(max_deliveries={self.max_deliveries})"
        )
        await self._reject(conn, stream, message_id, fields, reason, poison=True)

    async def _dead_letter(
        self, conn: Redis, stream: Any, message_id: Any, fields: Any, reason: str
    ) -> None:
        """Keeps what could not run in ``<prefix>:dead:<queue>`` (capped, with a TTL)."""
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        key = f"{self.prefix}:dead:{name}"
        record: Any = {"reason": reason[:4096], "stream": name, "id": message_id}
        if isinstance(fields, dict):
            for field, value in list(fields.items())[:8]:
                record[f"field:{field.decode() if isinstance(field, bytes) else field}"] = (
                    value[:65_536] if isinstance(value, (bytes, str)) else str(value)
                )
        with contextlib.suppress(RedisError):
            async with conn.pipeline(transaction=True) as pipe:
                pipe.xadd(key, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
                pipe.expire(key, DEAD_LETTER_TTL)
                await pipe.execute()

    async def _answer(self, message: Any, fields: Any, error: BaseException) -> None:
        """Fails the step a message belongs to, if it says which (its flow label)."""
        label = message.labels.get(FLOW_LABEL) if message is not None else None
        if label is None and isinstance(fields, dict) and b"data" in fields:
            label = _label_from_raw(fields[b"data"])
        parsed = parse_flow_label(label)
        middleware = next((m for m in self.middlewares if isinstance(m, FlowMiddleware)), None)
        if parsed is None or middleware is None:
            return
        run_id, node, attempt = parsed
        published = middleware.channel.publish(
            Completion(run_id, node, attempt, False, None, error, 0.0, time.time())
        )
        if published is not None:
            await published


#: A message to send: its queue, whether it was placed on a worker, its bytes.
_Outgoing = tuple[str, bool, Any]
#: An acknowledgement to write: the stream, the message id, and the completion it carries
#: (key, JSON, TTL) if any.
_Acking = tuple[Any, Any, "tuple[str, str, int] | None"]

_Item = TypeVar("_Item")


class GroupWriter(Generic[_Item]):
    """Writes items in batches without waiting to fill one (a group commit): an item put while
    no write is on its way is written at once, alone; the items put while one is on its way
    are written together as soon as it is answered, by the first of their callers. Each caller
    learns its own item's outcome.

    :param write: writes a batch; returns, per item, ``None`` or the error that item met (an
        error it raises is every item's).
    """

    def __init__(
        self, write: Callable[[list[_Item]], Awaitable[list[BaseException | None]]]
    ) -> None:
        self._write = write
        self._waiting: list[tuple[_Item, asyncio.Future[bool] | None]] = []
        self._busy = False
        self._idle: asyncio.Event | None = None
        self._orphaned: set[asyncio.Task[None]] = set()

    async def put(self, item: _Item) -> None:
        """Writes ``item`` (with others) and returns once it is written.

        :raises BaseException: the error its write met.
        """
        own: asyncio.Future[bool] | None = None
        if self._busy:
            own = asyncio.get_running_loop().create_future()
            self._waiting.append((item, own))
            try:
                if not await own:
                    return  # written by the batch before
            except asyncio.CancelledError:
                if own.done() and not own.cancelled() and own.exception() is None and own.result():
                    self._hand_on()  # cancelled as it was to write the next batch: passed on
                raise
            # This caller writes the next batch: everything waiting, its own item first.
            batch, self._waiting = self._waiting, []
        else:
            self._busy = True
            batch = [(item, None)]
        # If this caller is cancelled mid-write, whether the batch reached Redis is unknown:
        # the others are told so (never cancelled for another's cancellation).
        outcomes: list[BaseException | None] | None = None
        try:
            outcomes = await self._write([i for i, _ in batch])
        except Exception as exc:
            outcomes = [exc] * len(batch)
        finally:
            if outcomes is None:  # cancelled mid-write (the error is made only then)
                lost = RedisConnectionError(
                    "interrupted: the write it was batched with was cancelled"
                )
                outcomes = [lost] * len(batch)
            self._hand_on()
            for (_, future), outcome in zip(batch, outcomes):
                if future is None or future is own or future.done():
                    continue  # this caller's, or one whose caller was cancelled
                if outcome is None:
                    future.set_result(False)
                else:
                    future.set_exception(outcome)
        mine = next(o for (_, f), o in zip(batch, outcomes) if f is own)
        if mine is not None:
            raise mine

    def _hand_on(self) -> None:
        """The write is answered: the first live caller waiting writes the next batch (with
        none left, a task writes what cancelled callers left)."""
        for _, future in self._waiting:
            if future is not None and not future.done():
                future.set_result(True)
                return
        if self._waiting:
            batch, self._waiting = self._waiting, []
            task = asyncio.get_running_loop().create_task(self._orphans(batch))
            self._orphaned.add(task)
            task.add_done_callback(self._orphaned.discard)
            return
        self._busy = False
        if self._idle is not None:
            self._idle.set()

    async def _orphans(self, batch: list[tuple[_Item, asyncio.Future[bool] | None]]) -> None:
        try:
            await self._write([i for i, _ in batch])
        except Exception as exc:
            logger.warning("%d write(s) to Redis failed: %s", len(batch), exc)
        finally:
            self._hand_on()

    async def flushed(self) -> None:
        """Returns once nothing is being written."""
        while self._busy:
            self._idle = asyncio.Event()
            await self._idle.wait()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _label_from_raw(data: Any) -> Any:
    """The flow label of a message that taskiq cannot decode, if its JSON still says it."""
    try:
        decoded = json.loads(data)
        return decoded["labels"][FLOW_LABEL]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
