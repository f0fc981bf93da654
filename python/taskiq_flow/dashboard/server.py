"""Serving the dashboard from the process that runs the pipelines (in-memory tracking).

::

    async with await serve(tracking, port=8000) as dashboard:
        print("open", dashboard.url)      # carries ?token=...: the page then allows actions
        await pipeline.kiq_dataflow(x=1)

The server runs in the caller's event loop (uvicorn, as a task), so it reads the live records of
the runs this process executes without copying them or crossing threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from taskiq_flow.dashboard.app import DEFAULT_REPLAY_TIMEOUT, create_app, new_token
from taskiq_flow.pictures import GraphView
from taskiq_flow.retry import DeadLetterStore
from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["DashboardServer", "is_loopback", "loopback_hosts", "serve"]

logger = logging.getLogger("taskiq_flow.dashboard")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(port: int) -> list[str]:
    """The ``Host`` values a loopback server answers (anything else is another site that
    rebound a name to this machine)."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    return [*names, *(f"{n}:{port}" for n in names)]


class DashboardServer:
    """A running dashboard: its :attr:`url` (with the token), :attr:`base_url`, :attr:`token`,
    the ASGI :attr:`app`; :meth:`close` stops it (or use it as an async context manager)."""

    def __init__(self, app: Starlette, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.app = app
        self._server = server
        self._task = task
        sockets = [s for srv in server.servers for s in srv.sockets]
        host, port = sockets[0].getsockname()[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{shown}:{self.port}"
        self.token: str = app.state.dashboard._token

    @property
    def url(self) -> str:
        """The address to open: it gives the page the token (then it allows actions)."""
        return f"{self.base_url}/?token={self.token}"

    async def close(self) -> None:
        """Stops serving: open pages are disconnected, the poller stops."""
        await self.app.state.dashboard.feed.stop()  # ends the open pages' streams
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> DashboardServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def serve(
    tracking: PipelineTrackingManager,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    graphs: Mapping[str, GraphView] | None = None,
    interval: float = 0.5,
    origins: Sequence[str] = (),
    actions: Mapping[str, Callable[[Request], Awaitable[Response]]] | None = None,
    dead_letters: DeadLetterStore | None = None,
    broker: Any = None,
    replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
) -> DashboardServer:
    """Serves the dashboard over ``tracking`` in this event loop; returns once it listens.

    :param host: where to listen (loopback by default; anything else is logged as a warning).
    :param port: the port (0: a free one; see :attr:`DashboardServer.port`).
    :param token: what allows actions (``None``: a new random one, :attr:`DashboardServer.token`).
    :param graphs: graphs to draw, by run name (``{"ingest": pipeline}``).
    :param interval: seconds between two reads of tracking.
    :param origins: other origins that may act (a reverse proxy's public address).
    :param actions: more actions behind the token, by path under ``/api/``
        (:func:`~taskiq_flow.dashboard.create_app`).
    :param dead_letters: where the runs' dead letters are read (default: where a run tracked in
        ``tracking`` keeps them; a run given ``with_dead_letters(store)`` needs that ``store``).
    :param broker: the started broker the runs use: with it, a token session's run page can
        replay a dead letter (the replay is awaited in this loop; pages stay live meanwhile).
    :param replay_timeout: seconds a replay may take.
    :raises OSError: if the address cannot be bound.
    :raises ValueError: for a replay timeout that is not a number > 0.
    """
    if not is_loopback(host):
        logger.warning(
            "the dashboard listens on %s, not only on this machine: anyone who reaches it can "
            "read every run (actions still need the token)",
            host,
        )

    def make_app(bound: int) -> Starlette:
        return create_app(
            tracking,
            token=token or new_token(),
            graphs=graphs,
            interval=interval,
            allowed_hosts=loopback_hosts(bound) if is_loopback(host) else None,
            origins=origins,
            actions=actions,
            dead_letters=dead_letters,
            broker=broker,
            replay_timeout=replay_timeout,
        )

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    try:
        app = make_app(bound)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise OSError(f"the dashboard stopped before listening on {host}:{port}")
        await asyncio.sleep(0.01)
    return DashboardServer(app, server, task)
