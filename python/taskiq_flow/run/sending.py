"""Sending what the core admitted, and nothing else.

A node handed out by the core already holds its slots and its worker: sending never waits for a
limiter or a placement. On a broker whose send does no I/O (the in-memory one) the run loop sends
inline; otherwise a few dispatch coroutines drain a queue so that network round trips overlap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["DISPATCHERS", "Sender"]

#: Dispatch coroutines per run on a networked broker: enough to overlap its round trips.
DISPATCHERS = 8


class Sender:
    """Sends nodes with ``send_one`` in the order they are submitted.

    :param send_one: sends one node (never raises: a failed send is reported as a failed attempt).
    :param inline: send from :meth:`flush`, in the caller's coroutine, instead of dispatchers.
    :param width: most dispatch coroutines.
    """

    __slots__ = ("_busy", "_closing", "_queue", "_send_one", "_tasks", "_wake", "inline", "width")

    def __init__(
        self, send_one: Callable[[int], Awaitable[None]], inline: bool, width: int = DISPATCHERS
    ) -> None:
        self._send_one = send_one
        self.inline = inline
        self.width = max(1, width)
        self._queue: deque[int] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: list[bool] = []
        self._closing = False

    def start(self) -> None:
        """Starts the dispatch coroutines (none when sending inline)."""
        if self.inline:
            return
        loop = asyncio.get_running_loop()
        self._busy = [False] * self.width
        self._tasks = [loop.create_task(self._dispatch(i)) for i in range(self.width)]

    def submit(self, nodes: Iterable[int]) -> None:
        """Queues nodes to send (sent by :meth:`flush` when inline)."""
        self._queue.extend(nodes)
        if not self.inline and self._queue:
            self._wake.set()

    async def flush(self) -> None:
        """Inline: sends everything queued."""
        queue = self._queue
        send_one = self._send_one
        while queue and not self._closing:
            await send_one(queue.popleft())

    async def _dispatch(self, index: int) -> None:
        queue = self._queue
        send_one = self._send_one
        busy = self._busy
        while not self._closing:
            while queue and not self._closing:
                node = queue.popleft()
                # Not cancelled while sending (see stop): once admitted, a node goes out, so that
                # its completion comes back and gives its slots up.
                busy[index] = True
                try:
                    await send_one(node)
                finally:
                    busy[index] = False
            self._wake.clear()
            await self._wake.wait()

    def stop(self) -> list[int]:
        """Stops sending: idle dispatchers are cancelled, one mid-send finishes that send.
        Returns the nodes queued and never sent."""
        self._closing = True
        self._wake.set()
        for index, task in enumerate(self._tasks):
            if not self._busy[index]:
                task.cancel()
        unsent = list(self._queue)
        self._queue.clear()
        return unsent
