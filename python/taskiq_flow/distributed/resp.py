"""A lean Redis connection for the per-task hot paths of the Redis mode.

redis-py's asyncio client spends about 75-120 µs of CPU per round trip here (a ``PING``; a
``MULTI`` … ``EXEC`` of four commands about 200-260 µs): a connection taken from a pool and put
back, a task per read timeout, retries, observability hooks. The commands a pipeline task costs
(a worker's ``XREADGROUP`` and its acknowledgement transaction, an orchestrator's sends and its
completion reads) go instead through :class:`LeanConnection`: one socket, the commands of a
batch packed by hiredis and written at once, replies parsed by hiredis in ``data_received`` and
handed to the waiting callers in order (about 10-30 µs per round trip).

It speaks only what those paths need: plain TCP or a Unix socket, ``AUTH`` (user and password)
and ``SELECT``, RESP2 replies as bytes. Anything else a connection pool is configured with (TLS,
a credential provider, RESP3, a connect callback) makes :meth:`LeanConnection.from_pool` return
``None``, and the caller stays on redis-py. Errors are redis-py's own classes, so the callers'
fault handling is the same either way: a lost connection fails every caller waiting on it with
:class:`redis.exceptions.ConnectionError` (the next call reconnects), no answer within the
socket timeout (plus the block time of a blocking read) with :class:`redis.exceptions.TimeoutError`
(the connection is closed: what it still owes is never matched to a later call), and an error
reply comes back as a :class:`redis.exceptions.ResponseError` in its place among the replies.
A caller cancelled while it waits leaves its replies to be read and dropped: the connection
stays usable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["LeanConnection", "stream_entries"]

hiredis: Any
try:  # the redis extra installs it; without it, everything stays on redis-py
    import hiredis
except ImportError:  # pragma: no cover - hiredis is part of the redis extra
    hiredis = None

#: Connection settings a lean connection honours, or that do not change what goes on the wire.
_UNDERSTOOD = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_type",
        "socket_read_size",
        "retry",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
        "encoding",
        "encoding_errors",
        "decode_responses",
        "protocol",
        "client_name",
        "lib_name",
        "lib_version",
        "driver_info",
        "himport_registry",
        "maint_notifications_config",
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "event_dispatcher",
    }
)
#: Default socket timeouts (as redis-py's).
_TIMEOUT = 5.0


class _Batch:
    """Callers waiting for the replies of one write, in order."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        assert hiredis is not None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[_Batch] = collections.deque()
        self.transport: Any = None
        self.lost: BaseException | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = reader.gets()
            except Exception as exc:  # a protocol error: nothing after it can be trusted
                self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step
                self._fail(RedisConnectionError("Redis sent a reply nothing asked for"))
                if self.transport is not None:
                    self.transport.abort()
                return
            batch = waiting[0]
            batch.replies.append(reply)
            batch.left -= 1
            if batch.left == 0:
                waiting.popleft()
                if not batch.future.done():  # its caller may have been cancelled
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)


class LeanConnection:
    """One connection to Redis that writes batches of commands and hands back their replies
    (see the module's docstring).

    :param host: the server's host (ignored if ``path`` is given).
    :param port: its port.
    :param path: a Unix socket path, instead of TCP.
    :param db: the database to ``SELECT`` (if not 0).
    :param username: the ACL user to authenticate as (with ``password``).
    :param password: the password, if the server wants one.
    :param socket_timeout: seconds to wait for the replies of a batch (plus the block time of a
        blocking read) before the connection is given up.
    :param connect_timeout: seconds to wait for a connection.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = _TIMEOUT,
        connect_timeout: float | None = _TIMEOUT,
    ) -> None:
        self.host, self.port, self.path = host, int(port), path
        self.db, self.username, self.password = int(db), username, password
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def from_pool(cls, pool: Any) -> LeanConnection | None:
        """A lean connection to where a redis-py asyncio connection pool connects, or ``None``
        if that pool is configured with anything a lean connection does not do (TLS, a
        credential provider, RESP3, decoded replies, ...) or hiredis is not installed."""
        from redis.asyncio.connection import Connection, UnixDomainSocketConnection

        if hiredis is None or pool is None:
            return None
        kind = getattr(pool, "connection_class", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if kind not in (Connection, UnixDomainSocketConnection) or not isinstance(kwargs, dict):
            return None
        if not set(kwargs) <= _UNDERSTOOD:
            return None
        if kwargs.get("decode_responses") or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        if kwargs.get("client_name") is not None:
            return None
        path = kwargs.get("path") if kind is UnixDomainSocketConnection else None
        if kind is UnixDomainSocketConnection and not path:
            return None
        try:
            return cls(
                host=str(kwargs.get("host", "localhost")),
                port=int(kwargs.get("port", 6379)),
                path=path,
                db=int(kwargs.get("db") or 0),
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                socket_timeout=kwargs.get("socket_timeout", _TIMEOUT),
                connect_timeout=kwargs.get("socket_connect_timeout", _TIMEOUT),
            )
        except (TypeError, ValueError):
            return None

    async def execute(self, commands: Sequence[Sequence[Any]], block: float = 0.0) -> list[Any]:
        """Writes ``commands`` at once and returns their replies, in order (an error reply as a
        :class:`~redis.exceptions.ResponseError` in its place).

        :param commands: each command as its arguments (``("XADD", key, "*", "c", payload)``).
        :param block: seconds a blocking command among them may block (added to the timeout).
        :raises redis.exceptions.ConnectionError: if Redis cannot be reached or the connection
            is lost before every reply came.
        :raises redis.exceptions.TimeoutError: if the replies do not come within the socket
            timeout (plus ``block``); the connection is closed.
        """
        protocol = self._protocol
        if (
            protocol is None
            or protocol.lost is not None
            or self._loop is not asyncio.get_running_loop()
        ):
            protocol = await self._connect()
        transport = protocol.transport
        assert transport is not None
        assert hiredis is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        pack = hiredis.pack_command
        if len(commands) == 1:
            data = pack(tuple(commands[0]))
        else:
            data = b"".join([pack(tuple(c)) for c in commands])
        protocol.waiting.append(_Batch(future, len(commands)))
        transport.write(data)
        timer = None
        if self.socket_timeout is not None:
            timer = loop.call_later(self.socket_timeout + block, self._expire, protocol, future)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, protocol: _Protocol, future: asyncio.Future[list[Any]]) -> None:
        """No reply in time: the connection is given up (what it owes would be matched to the
        wrong caller otherwise)."""
        if future.done():
            return
        future.set_exception(
            RedisTimeoutError(f"no reply from Redis within {self.socket_timeout}s")
        )
        protocol._fail(RedisConnectionError("connection to Redis given up after a timeout"))
        if protocol.transport is not None:
            protocol.transport.abort()
        if self._protocol is protocol:
            self._protocol = None

    async def _connect(self) -> _Protocol:
        """Connects (once, for every caller that asks meanwhile), authenticates and selects
        the database."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop: what the old one held is unusable
            self._drop()
            self._loop = loop
            self._connecting = None
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._drop()
        self._connecting = loop.create_future()
        connecting = self._connecting
        try:
            protocol = await self._open(loop)
        except BaseException as exc:
            error = (
                exc
                if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ResponseError))
                else RedisConnectionError(f"cannot connect to Redis: {exc}")
            )
            if not connecting.done():
                connecting.set_exception(error)
                connecting.exception()  # retrieved: no warning if nobody else waits
            self._connecting = None
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise error from exc
        self._protocol = protocol
        self._connecting = None
        if not connecting.done():
            connecting.set_result(protocol)
        return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        try:
            if self.path is not None:
                opening = loop.create_unix_connection(_Protocol, self.path)
            else:
                opening = loop.create_connection(_Protocol, self.host, self.port)
            transport, protocol = await asyncio.wait_for(opening, self.connect_timeout)
        except asyncio.TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to Redis timed out: {exc}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        if protocol.transport is None:  # uvloop may call connection_made after returning
            protocol.transport = transport
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            setup.append(
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            assert protocol.transport is not None and hiredis is not None
            future: asyncio.Future[list[Any]] = loop.create_future()
            protocol.waiting.append(_Batch(future, len(setup)))
            protocol.transport.write(b"".join(hiredis.pack_command(c) for c in setup))
            try:
                replies = await asyncio.wait_for(future, self.socket_timeout)
            except asyncio.TimeoutError as exc:
                protocol.transport.abort()
                raise RedisTimeoutError("no reply from Redis to AUTH / SELECT") from exc
            except BaseException:
                protocol.transport.abort()
                raise
            for reply in replies:
                if isinstance(reply, ResponseError):
                    protocol.transport.abort()
                    from redis.exceptions import AuthenticationError

                    raise AuthenticationError(str(reply))
        return protocol

    def abort(self) -> None:
        """Closes the connection at once (a blocking read on it ends on Redis's side too:
        nothing more is delivered to it)."""
        self._drop()

    def _drop(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            _abort(protocol.transport)

    async def aclose(self) -> None:
        """Closes the connection, and returns once its socket is closed (callers still
        waiting fail with a connection error)."""
        protocol, self._protocol = self._protocol, None
        if protocol is None or protocol.transport is None:
            return
        if self._loop is not asyncio.get_running_loop():
            _abort(protocol.transport)  # opened in another event loop
            return
        protocol.transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.closed), 1.0)


def _abort(transport: Any) -> None:
    """Closes a transport at once, even one whose event loop is closed (its socket is then
    closed directly: left to the garbage collector, it would warn)."""
    try:
        transport.abort()
    except RuntimeError:  # its event loop is closed
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            sock.close()


def stream_entries(reply: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]]:
    """An ``XREAD`` / ``XREADGROUP`` reply (RESP2) as redis-py gives it: per stream, its
    entries as ``(id, {field: value})`` (``None`` for an entry deleted while pending).

    :raises redis.exceptions.ResponseError: the error Redis replied with.
    """
    if isinstance(reply, ResponseError):
        raise reply
    if not reply:
        return []
    out: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]] = []
    for stream, entries in reply:
        parsed: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        for entry_id, fields in entries:
            if fields is None:
                parsed.append((entry_id, None))
            else:
                parsed.append((entry_id, dict(zip(fields[::2], fields[1::2]))))
        out.append((stream, parsed))
    return out
