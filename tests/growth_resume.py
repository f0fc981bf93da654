"""An orchestrator process the growth resume test kills mid-growth: runs
:data:`growth_app.fan` (60 children, the first 20 quick) with its tracking in Redis."""

from __future__ import annotations

import asyncio
import os

import growth_app
from redis.asyncio import Redis

from taskiq_flow import PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage


async def main() -> None:
    await growth_app.broker.startup()
    lease = float(os.environ.get("TASKIQ_FLOW_TEST_RUN_LEASE", "15"))
    storage = RedisPipelineStorage(
        Redis.from_url(growth_app.URL), ttl_seconds=600, lease_seconds=lease
    )
    growth_app.fan.with_tracking(PipelineTrackingManager(storage))
    print(await growth_app.fan.kiq_dataflow(n=60), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
