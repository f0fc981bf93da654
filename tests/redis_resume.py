"""An orchestrator process the resume tests kill mid-run, with its tracking in Redis: runs
first_step -> slow_step (running while the test holds ``second:gate``), or, with
``TASKIQ_FLOW_TEST_RESUME=slow``, first_step beside a four-second step (:data:`slow_pipeline`,
also what ``runs resume --pipeline`` imports)."""

from __future__ import annotations

import asyncio
import os

import redis_app
from redis.asyncio import Redis

from taskiq_flow import DataflowPipeline, PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage

#: first_step(x) and slow(x) side by side: killed while slow runs, whatever the machine's load.
slow_pipeline = DataflowPipeline.from_tasks(
    redis_app.broker, [redis_app.first_step, redis_app.slow]
)


async def main() -> None:
    await redis_app.broker.startup()
    lease = float(os.environ.get("TASKIQ_FLOW_TEST_RUN_LEASE", "15"))
    storage = RedisPipelineStorage(
        Redis.from_url(redis_app.URL), ttl_seconds=600, lease_seconds=lease
    )
    if os.environ.get("TASKIQ_FLOW_TEST_RESUME") == "slow":
        pipeline = slow_pipeline
    else:
        pipeline = DataflowPipeline.from_tasks(
            redis_app.broker, [redis_app.first_step, redis_app.slow_step]
        )
    pipeline.with_tracking(PipelineTrackingManager(storage))
    print(await pipeline.kiq_dataflow(x=3), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
