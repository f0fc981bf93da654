"""An orchestrator process for the cross-process cap test: runs a map of `held` tasks under a cap
shared through Redis, then prints how many results it got."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import redis_app
from redis.asyncio import Redis

from taskiq_flow import MapReduce
from taskiq_flow.run.runner import run_single
from taskiq_flow.optimization.parallel import global_cap, set_max_parallel_tasks


async def main(items: int, cap: int) -> None:
    broker = redis_app.broker
    await broker.startup()
    client = Redis.from_url(redis_app.URL)
    try:
        deadline = time.monotonic() + 60
        while True:  # the workers see only messages sent after their consumer group exists
            try:
                await run_single(broker, redis_app.ping.task_name, (), {}, timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        set_max_parallel_tasks(cap, redis=client, name=os.environ["TASKIQ_FLOW_TEST_LIMIT"])
        results = await MapReduce.map(broker, redis_app.held, range(items), max_parallel=50)
        await global_cap().aclose()
        print(len(results))
    finally:
        set_max_parallel_tasks(None)
        await client.aclose()
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
