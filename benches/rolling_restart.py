"""What a rolling restart costs a running map: two `taskiq-flow worker` processes run a map of
small tasks on a real redis-server, once undisturbed and once while each worker in turn is replaced
by a new process (a new name, as a deploy's new pod has): the new one is started and up, then the
old one gets SIGTERM, as a Kubernetes rolling update does (``--stop-first``: SIGTERM first). The
delay is the difference of the two wall times, for each of ``--repeat`` pairs of runs.

    python benches/rolling_restart.py [--items 2000] [--seconds 0.05] [--drain-timeout 5]

Run it with an interpreter that has the code to measure installed (the workers are started with
the same interpreter). The broker's default lease (10 s) is used, as in production. A version
without draining ignores ``--drain-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

TESTS = Path(__file__).resolve().parent.parent / "tests"


async def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def one_run(
    url: str,
    items: int,
    seconds: float,
    drain: float,
    restart: bool,
    verbose: bool = False,
    stop_first: bool = False,
    max_parallel: int = 400,
) -> float:
    """Wall time of one map of ``items`` tasks, with or without a rolling restart."""
    import taskiq_flow.distributed.broker as broker_module

    drains = hasattr(broker_module, "DEFAULT_DRAIN_TIMEOUT")
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TASKIQ_FLOW_TEST_REDIS": url,
        "TASKIQ_FLOW_TEST_QUEUE": queue,
        "TASKIQ_FLOW_TEST_LEASE": "10",
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    redis = Redis.from_url(url)

    def start(name: str) -> None:
        command = [sys.executable, "-m", "taskiq_flow.cli", "worker", "drain_app:broker"]
        command += ["--name", name]
        if drains:
            command += ["--drain-timeout", str(drain)]
        procs[name] = subprocess.Popen(
            [*command, "--", "--log-level", "ERROR"],
            cwd=TESTS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def up(name: str) -> None:
        await _wait(lambda: redis.exists(f"taskiq_flow:worker:{name}"), 60, f"{name} up")

    await redis.flushdb()
    start("w1")
    start("w2")
    await up("w1")
    await up("w2")
    os.environ.update({"TASKIQ_FLOW_TEST_REDIS": url, "TASKIQ_FLOW_TEST_QUEUE": queue})
    sys.path.insert(0, str(TESTS))
    sys.modules.pop("drain_app", None)
    import drain_app

    from taskiq_flow import MapReduce
    from taskiq_flow.run.runner import run_single

    async def answered() -> bool:
        try:
            await run_single(drain_app.broker, drain_app.ping.task_name, (), {}, timeout=2)
        except Exception:
            return False
        return True

    await drain_app.broker.startup()
    try:
        await _wait(answered, 60, "a ping")
        began = time.monotonic()
        run = asyncio.ensure_future(
            MapReduce.map(
                drain_app.broker,
                drain_app.counted,
                range(items),
                max_parallel,
                kwargs={"seconds": seconds},
            )
        )
        if restart:
            for old, new, share in (("w1", "w1b", 0.15), ("w2", "w2b", 0.5)):
                await _wait(
                    lambda s=share: _done_at_least(redis, int(items * s)), 300, f"{share:.0%}"
                )
                if not stop_first:  # a deploy's surge: the new process is up first
                    start(new)
                    await up(new)
                procs[old].send_signal(signal.SIGTERM)
                stopped = time.monotonic()
                if stop_first:
                    start(new)
                proc = procs[old]
                await _wait(lambda p=proc: p.poll() is not None, 120, f"{old} to exit")
                exited = time.monotonic() - stopped
                await up(new)
                if verbose:
                    print(f"  {old} stopped at {stopped - began:.2f}s, exited {exited:.2f}s later")
        result = await run
        took = time.monotonic() - began
        assert result == list(range(items))
        done = await redis.hgetall("drain:done")
        assert len(done) == items, "items lost"
        twice = sum(1 for v in done.values() if int(v) > 1)
        if twice:
            print(f"  {twice} item(s) completed twice")
        return took
    finally:
        await drain_app.broker.shutdown()
        sys.path.remove(str(TESTS))
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        await redis.aclose()


async def _done_at_least(redis: Redis, count: int) -> bool:
    return bool(await redis.hlen("drain:done") >= count)


def main() -> None:
    """Prints the wall time of each run and the delay a rolling restart adds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0)
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=400,
        help="tasks in flight (default 400: more than the two workers' 2 x 100 slots, so "
        "each holds messages it has read but not started)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="say when each worker stopped")
    parser.add_argument(
        "--stop-first",
        action="store_true",
        help="stop each worker before starting its replacement (default: the replacement is "
        "up first, as a Kubernetes rolling update does)",
    )
    args = parser.parse_args()
    from taskiq_flow.testing import redis_server

    with redis_server() as url:
        for _ in range(args.repeat):
            still = asyncio.run(
                one_run(
                    url,
                    args.items,
                    args.seconds,
                    args.drain_timeout,
                    False,
                    max_parallel=args.max_parallel,
                )
            )
            rolled = asyncio.run(
                one_run(
                    url,
                    args.items,
                    args.seconds,
                    args.drain_timeout,
                    True,
                    args.verbose,
                    args.stop_first,
                    args.max_parallel,
                )
            )
            print(
                f"undisturbed {still:6.2f}s  rolling restart {rolled:6.2f}s  "
                f"delay {rolled - still:+6.2f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
