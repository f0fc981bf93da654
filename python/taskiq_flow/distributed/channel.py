"""Completions through Redis: one stream per run, written where tasks ran, read by the run.

Workers' :class:`~taskiq_flow.events.FlowMiddleware` appends each completion to the stream of its
run (``<prefix>:done:<run id>``); the orchestrator reads those streams, one blocking ``XREAD``
over every run open in the channel (per process), never one poller per task nor one connection
per run; a run opened while that read blocks wakes it at once (an entry on the reader's own
``<prefix>:wake:<id>`` stream). While a run is open the reader keeps a marker key
(``<prefix>:open:<run id>``) and the stream's TTL alive; if the marker is gone (Redis restarted
with its data lost, or flushed), nothing in flight can ever report back and the run fails at once
with :class:`~taskiq_flow.exceptions.RunStateLostError`. If Redis cannot be reached for
``give_up_seconds``, it fails with :class:`~taskiq_flow.exceptions.ChannelLostError`.

A worker publishing a completion while Redis stalls or restarts retries with a backoff until it
is written (its message is acknowledged only after that, so no completion is lost). A value over
the size or depth limit, or one JSON cannot carry unchanged (``{1: "a"}``, an int of more than
4,300 digits, a list that contains itself, an object JSON does not know), is not sent: the
attempt fails with :class:`~taskiq_flow.exceptions.PayloadTooLargeError` naming the task and
why. A completion whose value cannot be read back fails its attempt with
:class:`~taskiq_flow.exceptions.CorruptRecordError`. Every attempt ends in a completion.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskiq_flow import cancelling
from taskiq_flow._backoff import Backoff
from taskiq_flow.distributed.aio import cancellable, reraise_cancellation
from taskiq_flow.distributed.cache import RedisStepCache
from taskiq_flow.distributed.keys import validate_key_part
from taskiq_flow.distributed.payload import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    check_limits,
    decode,
    encode,
)
from taskiq_flow.distributed.resp import LeanConnection, stream_entries
from taskiq_flow.events import Completion, Inbox
from taskiq_flow.exceptions import (
    AbortPipeline,
    ChannelLostError,
    CorruptRecordError,
    InvalidValueError,
    PayloadTooLargeError,
    PoisonMessageError,
    RemoteTaskError,
    RunStateLostError,
    Skip,
    UndeliverableMessageError,
)

__all__ = ["RedisCompletionChannel", "error_from_json", "error_to_json"]

logger = logging.getLogger(__name__)

#: Errors that travel as themselves (everything else becomes a :class:`RemoteTaskError`).
_KNOWN: dict[str, type[Exception]] = {
    "PoisonMessageError": PoisonMessageError,
    "UndeliverableMessageError": UndeliverableMessageError,
    "PayloadTooLargeError": PayloadTooLargeError,
    "Skip": Skip,
}
#: The start of every completion this channel writes (see ``prepare``): enough to fail the
#: attempt by name when the rest cannot be read.
_HEAD = re.compile(rb'\{"node": (\d{1,18}), "attempt": (\d{1,18}), "ok": ')
#: Longest error message kept in a completion.
_MAX_MESSAGE = 4_096

# Keeps a run's state alive while its orchestrator reads it; 0 if the state is gone.
_RENEW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""


def _number(value: float) -> str:
    """A duration or a time as JSON (``null`` if not a finite number)."""
    number = float(value)
    return repr(number) if math.isfinite(number) else "null"


def error_to_json(error: BaseException | None) -> dict[str, str] | None:
    """An exception as ``{"type", "message"}`` (the message cut to 4 KiB)."""
    if error is None:
        return None
    if isinstance(error, AbortPipeline):
        return {"type": "AbortPipeline", "message": str(error.reason)[:_MAX_MESSAGE]}
    try:
        message = str(error)
    except Exception as exc:  # a user exception whose __str__ raises
        message = f"<its str() raised {type(exc).__name__}>"
    return {"type": type(error).__name__, "message": message[:_MAX_MESSAGE]}


def error_from_json(data: Any) -> BaseException | None:
    """The exception :func:`error_to_json` described (a :class:`RemoteTaskError` for a type
    that is not one of ours).

    :raises CorruptRecordError: for anything else.
    """
    if data is None:
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("type", "message")
    ):
        raise CorruptRecordError(f"not an error record: {data!r:.200}")
    if data["type"] == "AbortPipeline":
        return AbortPipeline(reason=data["message"])
    known = _KNOWN.get(data["type"])
    if known is not None:
        return known(data["message"])
    return RemoteTaskError(data["type"], data["message"])


class _Reading:
    """A run whose completions the channel reads: its inbox, keys and read position."""

    __slots__ = ("inbox", "key", "last", "marker", "marking", "opened", "run_id", "since")

    def __init__(self, run_id: str, inbox: Inbox, key: str, marker: str, since: float) -> None:
        self.run_id = run_id
        self.inbox = inbox
        self.key = key
        self.marker = marker
        self.since = since  # when it was opened (a failing Redis counts from then for it)
        self.last: Any = "0-0"
        self.opened = False  # its marker is set
        self.marking: asyncio.Task[ChannelLostError | None] | None = None  # sets its marker


class RedisCompletionChannel:
    """Completions through one Redis stream per run (``<prefix>:done:<run id>``).

    :param redis: a ``redis.asyncio.Redis`` client, or a URL.
    :param prefix: the key prefix (letters, digits, ``_ . -``).
    :param ttl_seconds: how long an unread stream may live (a run's orchestrator that died); an
        open run's reader keeps it alive.
    :param block_ms: how long one read blocks before checking that the runs' state still
        exists (a completion, or a run opened, ends the wait at once).
    :param give_up_seconds: how long reads may keep failing (Redis down or restarting) before
        the run fails with :class:`~taskiq_flow.exceptions.ChannelLostError`.
    :param max_value_bytes: the largest result a completion carries, as JSON (default 1 MiB);
        a larger one fails its step with :class:`~taskiq_flow.exceptions.PayloadTooLargeError`.
    :param max_depth: the deepest nesting a result may have (default 100).
    :raises InvalidValueError: for an unsafe prefix or a limit out of range.
    """

    def __init__(
        self,
        redis: Redis | str,
        prefix: str = "taskiq_flow",
        ttl_seconds: int = 86_400,
        block_ms: int = 1_000,
        give_up_seconds: float = 30.0,
        max_value_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.prefix = validate_key_part("prefix", prefix)
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
            raise InvalidValueError(f"ttl_seconds must be an int >= 1, got {ttl_seconds!r}")
        if not isinstance(give_up_seconds, (int, float)) or not give_up_seconds > 0:
            raise InvalidValueError(f"give_up_seconds must be > 0, got {give_up_seconds!r}")
        self.max_value_bytes, self.max_depth = check_limits(max_value_bytes, max_depth)
        self.give_up_seconds = float(give_up_seconds)
        self._url = redis if isinstance(redis, str) else None
        self._client: Redis | None = None if isinstance(redis, str) else redis
        self.ttl_seconds = ttl_seconds
        self.block_ms = block_ms
        # The runs open here, read by one reader (by run id, and by stream key).
        self._runs: dict[str, _Reading] = {}
        self._by_key: dict[bytes, str] = {}
        self._failed: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        # The reader's blocking XREAD goes through a lean connection where the client's
        # settings allow (None: redis-py's); made with the reader's first read.
        self._lean: LeanConnection | None = None
        self._lean_checked = False
        self._blocked = False  # the reader waits in its blocking read
        self._waking: asyncio.Task[None] | None = None
        self._deletes: set[asyncio.Task[None]] = set()
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # The reader's own stream: an entry on it ends its blocking read (a run was opened).
        self._wake_key = f"{self.prefix}:wake:{self._owner}"
        self._wake_key_bytes = self._wake_key.encode()
        self._wake_last: Any = "0-0"
        self._listener: asyncio.Task[None] | None = None
        self._cache: RedisStepCache | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            assert self._url is not None
            self._client = Redis.from_url(self._url)
        return self._client

    def key(self, run_id: str) -> str:
        """The stream of one run."""
        return f"{self.prefix}:done:{validate_key_part('run id', run_id)}"

    def step_cache(self) -> RedisStepCache:
        """The step cache of this application, in the same Redis (``pipeline_task(cache=True)``)."""
        if self._cache is None:
            self._cache = RedisStepCache(self._redis(), self.prefix)
        return self._cache

    @property
    def cancel_key(self) -> str:
        """The pub/sub channel cancel signals travel on (``<prefix>:cancel``)."""
        return f"{self.prefix}:cancel"

    async def send_cancel(self, message: dict[str, str]) -> int:
        """Publishes a cancel signal (``{"run": id}`` or ``{"pipeline": id}``, see
        :mod:`taskiq_flow.cancelling`) to every process listening; returns how many got it.

        :raises RedisError: if Redis cannot be reached.
        """
        received: int = await self._redis().publish(self.cancel_key, json.dumps(message))
        return received

    def listen_cancels(self) -> None:
        """Starts listening for cancel signals in the background (once per channel), handing
        each to :func:`taskiq_flow.cancelling.handle_signal`; a lost connection is retried."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        pause = Backoff(0.05, 2.0)
        while True:
            try:
                async with self._redis().pubsub() as pubsub:
                    await pubsub.subscribe(self.cancel_key)
                    pause.reset()
                    while True:
                        message = await cancellable(
                            pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        )
                        if message is not None and message.get("type") == "message":
                            try:
                                signal = json.loads(message["data"])
                            except ValueError:
                                signal = message["data"]
                            cancelling.handle_signal(signal)
            except RedisError as exc:
                reraise_cancellation()  # a read cut by our cancellation, reported as an error
                if not pause.failing:
                    logger.warning("cancel signals cannot be read from Redis: %s; retrying", exc)
                await pause.sleep()

    def open_key(self, run_id: str) -> str:
        """The marker that says a run is open (its state exists in Redis)."""
        return f"{self.prefix}:open:{validate_key_part('run id', run_id)}"

    def publish(self, completion: Completion) -> Coroutine[Any, Any, None]:
        """Appends a completion to its run's stream (returns the coroutine taskiq awaits)."""
        return self._publish(completion)

    def prepare(self, completion: Completion, task_name: str | None = None) -> tuple[str, bool]:
        """The completion as the JSON its stream entry carries, and whether its value was
        refused (over the size or depth limit, or a value JSON cannot carry unchanged, see
        :func:`~taskiq_flow.distributed.payload.encode`): the entry then reports the attempt
        failed with :class:`~taskiq_flow.exceptions.PayloadTooLargeError` naming ``task_name``
        and why. Never raises for what a task returned or raised."""
        ok, error, value_text = completion.ok, completion.error, "null"
        if ok:
            what = f"the result of task {task_name!r}" if task_name else "the result"
            what += f" (run {completion.run_id}, node {completion.node})"
            try:
                value_text = encode(completion.value, what, self.max_value_bytes, self.max_depth)
            except PayloadTooLargeError as exc:
                ok, error = False, exc
        # As json.dumps writes it (the start is what _HEAD reads when the value cannot be read
        # back), without its cost: ints, JSON's true/false, floats as their repr.
        error_text = "null" if error is None else json.dumps(error_to_json(error))
        head = (
            f'{{"node": {int(completion.node)}, "attempt": {int(completion.attempt)}, '
            f'"ok": {"true" if ok else "false"}, "error": {error_text}, '
            f'"duration_ms": {_number(completion.duration_ms)}, '
            f'"started_at": {_number(completion.started_at)}}}'
        )
        return f'{head[:-1]}, "value": {value_text}}}', ok != completion.ok

    async def publish_checked(self, completion: Completion, task_name: str | None = None) -> bool:
        """Publishes a completion, refusing a value over the limits (the step then fails with
        :class:`~taskiq_flow.exceptions.PayloadTooLargeError` naming ``task_name``), and
        retrying with a backoff while Redis is unreachable, until it is written.

        :return: whether the value was refused.
        """
        payload, refused = self.prepare(completion, task_name)
        await self.write(completion.run_id, payload)
        return refused

    async def write(self, run_id: str, payload: str) -> None:
        """Appends a prepared completion to its run's stream, retrying with a backoff while
        Redis is unreachable, until it is written."""
        key = self.key(run_id)
        pause = 0.05
        while True:
            try:
                async with self._redis().pipeline(transaction=True) as pipe:
                    pipe.xadd(key, {"c": payload})
                    pipe.expire(key, self.ttl_seconds)
                    await pipe.execute()
                return
            except RedisError as exc:
                logger.warning(
                    "completion of run %s not written yet (%s); retrying in %.1fs",
                    run_id,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _publish(self, completion: Completion) -> None:
        await self.publish_checked(completion)

    def open(self, run_id: str) -> Inbox:
        """Starts reading a run's stream into a new inbox (and listening for cancel signals:
        ``taskiq-flow runs cancel`` from another process reaches the run here). Every run open
        in this channel is read by one blocking read, woken at once for a run opened while it
        blocks."""
        self.listen_cancels()
        inbox = Inbox()
        key = self.key(run_id)
        reading = _Reading(run_id, inbox, key, self.open_key(run_id), time.monotonic())
        self._runs[run_id] = reading
        self._by_key[key.encode()] = run_id
        reading.marking = asyncio.get_running_loop().create_task(self._mark(reading))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        elif self._blocked and self._waking is None:
            self._waking = asyncio.get_running_loop().create_task(self._wake())
        return inbox

    async def opened(self, run_id: str) -> None:
        """Returns once the run's marker is set in Redis; the runner sends nothing before.

        The marker is how the reader tells that a run's state vanished (Redis restarted
        without its data): set before the run's first message, it is lost with them. Set
        after (it used to be set by the reader, whenever its blocking read ended), it would be
        set again in the empty Redis, and a run whose messages were lost would wait forever.

        :raises ChannelLostError: if Redis could not be reached for ``give_up_seconds``.
        """
        reading = self._runs.get(run_id)
        if reading is not None and reading.marking is not None:
            error = await reading.marking
            if error is not None:
                raise error

    async def _mark(self, reading: _Reading) -> ChannelLostError | None:
        """Sets a run's marker (see :meth:`opened`), retrying while Redis is unavailable; after
        ``give_up_seconds`` the run's inbox fails with the :class:`ChannelLostError` returned."""
        pause = 0.05
        while self._runs.get(reading.run_id) is reading:
            try:
                await self._redis().set(reading.marker, self._owner, px=self.ttl_seconds * 1000)
                reading.opened = True
                return None
            except RedisError as exc:
                reraise_cancellation()  # a SET cut by close() or aclose(), reported as an error
                if time.monotonic() - reading.since > self.give_up_seconds:
                    lost = ChannelLostError(
                        f"run {reading.run_id} cannot be opened: Redis unreachable since "
                        f"{self.give_up_seconds:.0f}s: {exc}"
                    )
                    self._fail_run(reading, lost)
                    return lost
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
        return None  # closed meanwhile

    async def _wake(self) -> None:
        """Ends the shared reader's blocking read (an entry on its own wake stream), so that it
        reads a run opened meanwhile at once."""
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": 1}, maxlen=16, approximate=False)
                pipe.pexpire(self._wake_key, self.ttl_seconds * 1000)
                await pipe.execute()
        except RedisError as exc:  # the reader's next read (within block_ms) finds the run
            logger.debug("wake of the completion reader not written: %s", exc)
        finally:
            self._waking = None

    @staticmethod
    def _cancelled() -> bool:
        """Whether the running task is being cancelled (redis-py reports a read cut by a
        cancellation as an error)."""
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return bool(cancelling is not None and cancelling())

    async def _read(self) -> None:
        """The one reader of every run open in this channel: keeps their state alive (and fails
        a run whose marker vanished), and reads all their streams with one blocking ``XREAD``;
        ends when no run is open."""
        redis = self._redis()
        renew = redis.register_script(_RENEW)
        ttl_ms = self.ttl_seconds * 1000
        runs = self._runs
        failing_since: float | None = None
        next_check = 0.0
        pause = 0.05
        while runs:
            try:
                now = time.monotonic()
                if now >= next_check:
                    # Runs whose marker is not set yet have sent nothing (see `opened`).
                    checked = [r for r in runs.values() if r.opened]
                    replies: list[Any] = []
                    if checked:
                        async with redis.pipeline(transaction=False) as pipe:
                            for r in checked:
                                await renew(keys=[r.marker, r.key], args=[ttl_ms], client=pipe)
                            replies = await pipe.execute()
                    next_check = now + max(self.block_ms / 1000, 0.2)
                    for r, alive in zip(checked, replies):
                        if not alive:
                            self._fail_run(
                                r,
                                RunStateLostError(
                                    f"the state of run {r.run_id} vanished from Redis (restarted "
                                    "without its data, or flushed): what was in flight cannot "
                                    "report back"
                                ),
                            )
                    if not runs:
                        break
                streams: dict[Any, Any] = {self._wake_key: self._wake_last}
                for r in runs.values():
                    streams[r.key] = r.last
                self._blocked = True
                try:
                    batches = await self._xread(redis, streams)
                finally:
                    self._blocked = False
            except RedisError as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if self._cancelled():
                    return
                if now - failing_since > self.give_up_seconds:
                    for r in list(runs.values()):
                        if now - max(failing_since, r.since) > self.give_up_seconds:
                            self._fail_run(
                                r,
                                ChannelLostError(
                                    f"completions of run {r.run_id} cannot be read from Redis "
                                    f"since {self.give_up_seconds:.0f}s: {exc}"
                                ),
                            )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            failing_since = None
            pause = 0.05
            by_key = self._by_key
            for stream, entries in batches or []:
                if stream == self._wake_key_bytes:
                    self._wake_last = entries[-1][0]
                    continue
                run_id = by_key.get(stream)
                reading = runs.get(run_id) if run_id is not None else None
                if reading is None:
                    continue  # closed meanwhile
                inbox = reading.inbox
                for entry_id, fields in entries:
                    reading.last = entry_id
                    completion = self._parse(reading.run_id, reading.key, entry_id, fields)
                    if completion is not None:
                        inbox.push(completion)

    async def _xread(self, redis: Redis, streams: dict[Any, Any]) -> Any:
        """The reader's blocking ``XREAD`` of ``streams`` (key: last id read), on the lean
        connection if the client's settings allow; its reply as redis-py gives it."""
        if not self._lean_checked:
            self._lean_checked = True
            self._lean = LeanConnection.from_pool(redis.connection_pool)
        lean = self._lean
        if lean is None:
            return await redis.xread(streams, block=self.block_ms, count=1000)
        read = ("XREAD", "COUNT", 1000, "BLOCK", self.block_ms, "STREAMS", *streams)
        try:
            [reply] = await lean.execute([(*read, *streams.values())], block=self.block_ms / 1000)
        except asyncio.CancelledError:
            lean.abort()  # the connection is not left owing a blocked read's reply
            raise
        return stream_entries(reply)

    def _fail_run(self, reading: _Reading, error: BaseException) -> None:
        """A run whose completions can no longer come: its inbox fails, its stream is no
        longer read (the run closes it)."""
        reading.inbox.fail(error)
        if self._runs.get(reading.run_id) is reading:
            del self._runs[reading.run_id]
            self._by_key.pop(reading.key.encode(), None)
            self._failed.add(reading.run_id)

    def _parse(self, run_id: str, key: str, entry_id: Any, fields: Any) -> Completion | None:
        raw = fields.get(b"c") or fields.get("c")
        try:
            data = decode(
                raw,
                f"completion {entry_id!r} in {key}",
                self.max_value_bytes + 65_536,
                self.max_depth + 2,
            )
            if not isinstance(data, dict):
                raise CorruptRecordError("not an object")
            return Completion(
                run_id=run_id,
                node=int(data["node"]),
                attempt=int(data["attempt"]),
                ok=bool(data["ok"]),
                value=data["value"],
                error=error_from_json(data["error"]),
                duration_ms=float(data["duration_ms"]),
                started_at=float(data["started_at"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogatepass")
            head = _HEAD.match(raw) if isinstance(raw, bytes) else None
            if head is None:
                # Not a completion we wrote (JSON only: nothing is ever unpickled).
                logger.warning("ignoring malformed completion %s in %s: %s", entry_id, key, exc)
                return None
            # Ours, but its value cannot be read here (e.g. an int over this process's digit
            # limit): the attempt fails, naming why, instead of never reporting back.
            node, attempt = int(head.group(1)), int(head.group(2))
            logger.warning(
                "completion %s of node %d in %s unreadable: %s", entry_id, node, key, exc
            )
            return Completion(
                run_id=run_id,
                node=node,
                attempt=attempt,
                ok=False,
                value=None,
                error=CorruptRecordError(
                    f"the completion of node {node} (attempt {attempt}) of run {run_id} cannot "
                    f"be read back: {exc}"
                ),
                duration_ms=0.0,
                started_at=time.time(),
            )

    def close(self, run_id: str) -> None:
        """Stops reading a run's stream and deletes it."""
        reading = self._runs.pop(run_id, None)
        if reading is not None:
            self._by_key.pop(reading.key.encode(), None)
            if reading.marking is not None:
                reading.marking.cancel()  # no marker set after its deletion
        if reading is not None or run_id in self._failed:
            self._failed.discard(run_id)
            task = asyncio.get_running_loop().create_task(self._delete(run_id))
            self._deletes.add(task)
            task.add_done_callback(self._deletes.discard)

    async def aclose(self) -> None:
        """Stops the reader, finishes pending clean-ups, and closes the connection this channel
        opened itself."""
        for reading in self._runs.values():
            if reading.marking is not None:
                reading.marking.cancel()
        self._runs.clear()
        self._by_key.clear()
        for task in (self._reader, self._listener, self._waking):
            if task is not None:
                task.cancel()
        self._reader = self._listener = self._waking = None
        if self._lean is not None:
            await self._lean.aclose()
        if self._deletes:
            await asyncio.gather(*self._deletes, return_exceptions=True)
        if self._client is not None and self._url is not None:
            await self._client.aclose()
            self._client = None

    async def _delete(self, run_id: str) -> None:
        # Best effort: the stream and the marker expire with their TTL anyway.
        try:
            await self._redis().delete(self.key(run_id), self.open_key(run_id))
        except RedisError as exc:
            logger.warning("could not delete the completion stream of run %s: %s", run_id, exc)
