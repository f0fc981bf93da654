"""Helpers for tests and benchmarks that need a real Redis.

:func:`redis_server` starts a throwaway ``redis-server`` bound to 127.0.0.1 on a free port, with
no persistence, and stops it by pid::

    with redis_server() as url:
        broker = reliable_stream_broker(url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["RedisProcess", "RedisServerUnavailable", "free_port", "redis_server"]


class RedisServerUnavailable(RuntimeError):
    """``redis-server`` is not installed, or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence), that can be stopped and
    started again on the same port (a restart that loses its data).

    :param port: the port (a free one by default).
    :param debug: allow ``DEBUG`` from local clients (``DEBUG SLEEP`` stalls Redis in tests).
    :param extra: more ``redis-server`` arguments (``--aclfile``, ``--tls-port`` ...).
    :raises RedisServerUnavailable: if ``redis-server`` is not installed.
    """

    def __init__(
        self, port: int | None = None, debug: bool = False, extra: Sequence[str] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerUnavailable(
                "redis-server is not installed (Debian: apt-get install -y redis-server)"
            )
        self.port = port or free_port()
        self.workdir = tempfile.mkdtemp(prefix="taskiq-flow-redis-")
        self.command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        self.command += ["--appendonly", "no", "--dir", self.workdir]
        if debug:
            self.command += ["--enable-debug-command", "local"]
        self.command += list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server and waits until it answers.

        :raises RedisServerUnavailable: if it does not answer within ``timeout`` seconds.
        """
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisServerUnavailable(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stops the server (by pid), losing its data."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stops the server and removes its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def redis_server(timeout: float = 10.0, debug: bool = False) -> Iterator[str]:
    """Runs ``redis-server`` for the duration of the block; yields its URL.

    :param debug: allow ``DEBUG`` commands from local clients.
    :raises RedisServerUnavailable: if it is not installed or does not answer within
        ``timeout`` seconds.
    """
    server = RedisProcess(debug=debug)
    try:
        server.start(timeout)
        yield server.url
    finally:
        server.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False
