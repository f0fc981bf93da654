"""An orchestrator process for the cross-process cap tests: runs a map of `held` tasks under a cap
shared through Redis, then prints how many results it got.

    python redis_orchestrator.py ITEMS CAP [--close] [--lease S] [--seconds S]

Without ``--close`` it ends as a user's script does: the map returns and ``asyncio.run`` ends,
nothing closed by hand. ``--lease`` is the cap's lease, ``--seconds`` how long each task holds
its slot. It prints ``ready`` once the workers answer, before the map starts. The cap's Redis
client is named ``orchestrator-PID`` (``CLIENT LIST`` tells a test what it last did).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

import redis_app
from redis.asyncio import Redis

from taskiq_flow import MapReduce
from taskiq_flow.optimization.parallel import global_cap, set_max_parallel_tasks
from taskiq_flow.run.runner import run_single


def dump_tasks() -> None:
    """On SIGUSR1 (a test that timed out): every asyncio task's stack, to stderr; then exits
    (status 70), so that the test waits for the exit rather than for a guessed time."""
    for task in asyncio.all_tasks():
        print(f"-- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(70)


async def main(args: argparse.Namespace) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    broker = redis_app.broker
    await broker.startup()
    deadline = time.monotonic() + 60
    while True:  # the workers see only messages sent after their consumer group exists
        try:
            await run_single(broker, redis_app.ping.task_name, (), {}, timeout=2)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
    print("ready", flush=True)
    set_max_parallel_tasks(
        args.cap,
        redis=Redis.from_url(redis_app.URL, client_name=f"orchestrator-{os.getpid()}"),
        name=os.environ["TASKIQ_FLOW_TEST_LIMIT"],
        lease_seconds=args.lease,
    )
    results = await MapReduce.map(
        broker, redis_app.held, range(args.items), max_parallel=50, kwargs={"seconds": args.seconds}
    )
    if args.close:
        await global_cap().aclose()
        set_max_parallel_tasks(None)
        await broker.shutdown()
    print(len(results), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("items", type=int)
    parser.add_argument("cap", type=int)
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=0.05)
    asyncio.run(main(parser.parse_args()))
