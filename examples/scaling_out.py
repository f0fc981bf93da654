"""Scaling out: the same map on two `taskiq-flow worker` processes sharing one Redis.

Docs: docs/performance.md#scaling-out

This file is both the app the workers import (`scaling_out:broker`) and the orchestrator. It
uses the Redis at $TASKIQ_FLOW_REDIS_URL, or starts a throwaway `redis-server` if that is unset.
Run: python examples/scaling_out.py
"""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from taskiq_flow import CPUProfile, FlowMiddleware, MapReduce, ResourceAwareWorkerPool
from taskiq_flow.distributed import (
    RedisCompletionChannel,
    discover_workers,
    json_result_backend,
    reliable_stream_broker,
)
from taskiq_flow.testing import redis_server

URL = os.environ.get("TASKIQ_FLOW_REDIS_URL", "redis://127.0.0.1:6379")
QUEUE = os.environ.get("SCALING_OUT_QUEUE", "scaling_out")
broker = (
    reliable_stream_broker(URL, queue_name=QUEUE)
    .with_result_backend(json_result_backend(URL))
    .with_middlewares(FlowMiddleware(RedisCompletionChannel(URL)))
)


@broker.task(task_name="scaling_out.resize")  # the same name in every process
@CPUProfile(cpu_units=1)
async def resize(image: int) -> str:
    await asyncio.sleep(0.2)  # the work
    return os.environ["TASKIQ_FLOW_WORKER_NAME"]


def start_worker(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`taskiq-flow worker scaling_out:broker --name NAME --cpu-cores 2 --ram-gb 1`."""
    here = Path(__file__).resolve().parent
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "taskiq_flow.cli", "worker", f"{Path(__file__).stem}:broker"),
            *("--name", name, "--cpu-cores", "2", "--ram-gb", "1"),
            *("--", "--app-dir", str(here), "--log-level", "WARNING"),
        ],
        env={**env, "TASKIQ_FLOW_WORKER_NAME": name},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def orchestrate() -> None:
    redis = Redis.from_url(URL)
    deadline = time.monotonic() + 60
    while len(adverts := await discover_workers(redis, broker=broker)) < 2:
        assert time.monotonic() < deadline, "the workers did not start"
        await asyncio.sleep(0.2)
    await broker.startup()
    pool = ResourceAwareWorkerPool(adverts)
    started = time.perf_counter()
    where = await MapReduce.map(broker, resize, range(8), worker_pool=pool, run_timeout=60)
    elapsed = time.perf_counter() - started
    print(f"8 one-core tasks on 2 workers of 2 cores: {elapsed:.2f}s")
    print("ran on:", {name: where.count(name) for name in sorted(set(where))})
    assert sorted(set(where)) == ["w1", "w2"]
    await broker.shutdown()
    await redis.aclose()


def main() -> None:
    if "TASKIQ_FLOW_REDIS_URL" not in os.environ:
        # No Redis named: run this same program again against a throwaway redis-server.
        with redis_server() as url:
            env = {**os.environ, "TASKIQ_FLOW_REDIS_URL": url}
            sys.exit(subprocess.run([sys.executable, __file__], env=env).returncode)
    workers = [start_worker(name, dict(os.environ)) for name in ("w1", "w2")]
    try:
        asyncio.run(orchestrate())
    finally:
        for worker in workers:
            worker.terminate()  # a graceful stop, like Ctrl-C
        for worker in workers:
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
