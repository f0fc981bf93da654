"""A real headless browser for tests: Debian's ``chromium``, driven over the DevTools protocol.

Opens a page, waits for its load event and two painted frames, and returns everything the page
said: console calls, uncaught exceptions, browser log errors (a blocked resource, a CSP violation)
and every request it made. No sleeps: each step waits for the browser's own event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

#: The Debian package that provides the browser (CI: ``apt-get install -y chromium``).
APT_PACKAGE = "chromium"


def find_chromium() -> str:
    """The browser's path; a test failure (never a skip) naming the package if it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        f"no headless browser: install Debian's {APT_PACKAGE!r} package "
        f"(apt-get install -y {APT_PACKAGE}) to run the report's browser tests"
    )


@dataclass
class PageLoad:
    """What a page did while it loaded."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    #: From navigation start to the second painted frame after the load event, in the page's
    #: own clock (``performance.now()``).
    rendered_ms: float = 0.0

    @property
    def problems(self) -> list[str]:
        """Console messages of any kind, exceptions and browser log errors."""
        return (
            [f"console.{kind}: {text}" for kind, text in self.console]
            + [f"exception: {text}" for text in self.exceptions]
            + [f"log: {text}" for text in self.log_errors]
        )


class Page:
    """One tab of the browser, attached over a flat DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._session: str | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._events.put_nowait(data)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, page: bool = True
    ) -> Any:
        """Sends a command (to the page's session unless ``page`` is false); its result."""
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if page and self._session is not None:
            message["sessionId"] = self._session
        await self._ws.send_json(message)
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def attach(self) -> None:
        """Opens a blank tab and attaches to it; enables the domains that report problems."""
        target = await self.call("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, page=False
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.call(f"{domain}.enable")

    async def open(self, url: str, width: int = 1280, height: int = 900) -> PageLoad:
        """Navigates to ``url`` and waits for its load event and two painted frames."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        while not self._events.empty():
            self._events.get_nowait()
        load = PageLoad()
        await self.call("Page.navigate", {"url": url})
        while True:
            event = await asyncio.wait_for(self._events.get(), 60)
            if self._record(event, load) == "Page.loadEventFired":
                break
        load.rendered_ms = float(
            await self.evaluate(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame("
                "() => r(performance.now()))))"
            )
        )
        # Anything reported up to now (the page's scripts have all run) is in the queue.
        while not self._events.empty():
            self._record(self._events.get_nowait(), load)
        return load

    @staticmethod
    def _record(event: dict[str, Any], load: PageLoad) -> str:
        method: str = event.get("method", "")
        params = event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            load.console.append((params["type"], text))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            load.exceptions.append(
                details.get("exception", {}).get("description") or details.get("text", "")
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            load.log_errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            load.requests.append(params["request"]["url"])
        return method

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        import base64

        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(shot["data"])

    async def close(self) -> None:
        """Closes the connection."""
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def headless_page(profile: Path) -> AsyncIterator[Page]:
    """A tab of a fresh headless chromium (its profile in ``profile``), closed afterwards."""
    process = await asyncio.create_subprocess_exec(
        find_chromium(),
        "--headless",
        "--no-sandbox",  # containers and CI run as root
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = process.stderr
    drain: asyncio.Task[None] | None = None
    try:

        async def devtools_url() -> str:
            seen = []
            while True:
                line = (await stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError(f"chromium exited before listening: {''.join(seen)}")
                seen.append(line)
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match:
                    return match.group(1)

        url = await asyncio.wait_for(devtools_url(), 60)

        async def discard() -> None:
            while await stderr.read(65536):
                pass

        drain = asyncio.create_task(discard())
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url, max_msg_size=0)
            page = Page(ws)
            try:
                await page.attach()
                yield page
            finally:
                with contextlib.suppress(Exception):
                    await page.call("Browser.close", page=False)
                await page.close()
    finally:
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decodes an 8-bit RGB/RGBA, non-interlaced PNG: ``(width, height, rows of pixels)``."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    pixels = [b"".join(row[x : x + 3] for x in range(0, stride, channels)) for row in rows]
    return width, height, pixels
