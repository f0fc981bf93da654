"""The command line under bad input and signals: `taskiq-flow worker` refuses what it cannot run
before starting any process, with one line; Ctrl-C and SIGTERM end the worker and the demo with
one line, no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import until

TESTS = Path(__file__).resolve().parent


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskiq_flow.cli", "worker", *args]


def env_for(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "TASKIQ_FLOW_TEST_REDIS": redis_url,
        "TASKIQ_FLOW_TEST_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["redis_app:broker", "--name", "a*b"], "--name must be 1-128 letters"),
        (["redis_ap:broker", "--name", "w"], "cannot import 'redis_ap'"),
        (["redis_app:brokr", "--name", "w"], "'redis_app' has no 'brokr'"),
        (["redis_app", "--name", "w"], "must look like module:attribute"),
        (["redis_app:URL", "--name", "w"], "is a str, not a taskiq broker"),
        (["redis_app:broker", "--name", "w", "--resource", "gpu=many"], "gpu=many"),
        (["redis_app:broker", "--name", "w", "--resource", "gpu"], "key=value"),
        (["redis_app:broker"], "--name"),
    ],
)
def test_the_worker_command_refuses_bad_input_before_starting_anything(
    redis_url: str, args: list[str], says: str
) -> None:
    done = subprocess.run(
        worker_command(*args),
        cwd=TESTS,
        env=env_for(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "taskiq.worker" not in done.stderr  # no taskiq worker was started


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_the_worker_command_stops_on_a_signal_with_one_line(redis_url: str, how: str) -> None:
    from redis import Redis

    name = f"w{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        worker_command("redis_app:broker", "--name", name, "--", "--log-level", "WARNING"),
        cwd=TESTS,
        env=env_for(redis_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    client = Redis.from_url(redis_url)
    try:

        def up() -> bool:  # its advert: it is up (or it ended, which fails below)
            return proc.poll() is not None or bool(client.exists(f"taskiq_flow:worker:{name}"))

        asyncio.run(until(up, 60, f"worker {name} to advertise itself"))
        assert proc.poll() is None, proc.communicate()[1]
        family = descendants(proc.pid)
        assert family  # the taskiq supervisor and its child
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "Traceback" not in err
        expected = "SIGTERM" if how == "SIGTERM" else "SIGINT"
        assert err.strip().splitlines()[-1] == f"taskiq-flow worker {name}: stopped by {expected}"
        for pid in family:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        client.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_demo_stops_on_a_signal_with_one_line(sig: signal.Signals, code: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq_flow.cli", "demo", "--tracks", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the demo started
    proc.stdout.readline()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines() == [f"taskiq-flow demo: stopped by {sig.name}"]


@pytest.mark.parametrize("command", [["runs", "list"], ["explain", "RUN"]])
def test_ctrl_c_while_redis_does_not_answer_ends_a_runs_command_with_one_line(
    command: list[str],
) -> None:
    """A server that accepts the connection and never answers: the command waits on it (for
    up to ``--timeout``, here far longer than the test) until Ctrl-C, which ends it with one
    line and status 130."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskiq_flow.cli", *command, "--redis",
             f"redis://127.0.0.1:{port}/0", "--timeout", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            server.settimeout(60)
            connection, _ = server.accept()  # the command is now waiting for Redis
            with connection:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert out == "" and err.splitlines() == [f"taskiq-flow {command[0]}: interrupted"]


@pytest.mark.parametrize("command", [["runs", "list"], ["explain", "RUN"]])
def test_a_redis_that_never_answers_ends_a_runs_command_after_its_timeout(
    command: list[str],
) -> None:
    """Without Ctrl-C, the command gives up after ``--timeout`` seconds with one line naming the
    option: the same on every redis client version (their own defaults differ)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        url = f"redis://127.0.0.1:{port}/0"
        proc = subprocess.run(
            [sys.executable, "-m", "taskiq_flow.cli", *command, "--redis", url,
             "--timeout", "0.5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"taskiq-flow {command[0]}: Redis at {url} did not answer within 0.5 s (--timeout)"
    ]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "3601"])
def test_a_bad_timeout_is_refused_before_connecting(value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskiq_flow.cli", "runs", "list", "--redis",
         "redis://127.0.0.1:1/0", "--timeout", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--timeout" in proc.stderr and "expected a number" in proc.stderr
