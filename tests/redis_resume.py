"""An orchestrator process the resume test kills mid-run: runs first_step -> slow_step with its
tracking in Redis."""

from __future__ import annotations

import asyncio
import os

import redis_app
from redis.asyncio import Redis

from taskiq_flow import DataflowPipeline, PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage


async def main() -> None:
    await redis_app.broker.startup()
    lease = float(os.environ.get("TASKIQ_FLOW_TEST_RUN_LEASE", "15"))
    storage = RedisPipelineStorage(
        Redis.from_url(redis_app.URL), ttl_seconds=600, lease_seconds=lease
    )
    pipeline = DataflowPipeline.from_tasks(
        redis_app.broker, [redis_app.first_step, redis_app.slow_step]
    ).with_tracking(PipelineTrackingManager(storage))
    print(await pipeline.kiq_dataflow(x=3), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
