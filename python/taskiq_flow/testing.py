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
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RedisServerUnavailable", "free_port", "redis_server"]


class RedisServerUnavailable(RuntimeError):
    """``redis-server`` is not installed, or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Runs ``redis-server`` for the duration of the block; yields its URL.

    :raises RedisServerUnavailable: if it is not installed or does not answer within
        ``timeout`` seconds.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerUnavailable(
            "redis-server is not installed (Debian: apt-get install -y redis-server)"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="taskiq-flow-redis-")
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    command += ["--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RedisServerUnavailable(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False
