"""An orchestrator process the one-run-per-key resume test kills mid-run: triggers the key
``TASKIQ_FLOW_TEST_ONCE_KEY`` of first_step -> slow_step (:data:`pipeline`, running while the test
holds ``second:gate``), its key in Redis and its tracking in Redis, both with the lease
``TASKIQ_FLOW_TEST_RUN_LEASE`` (seconds; short, so that the test need not wait long)."""

from __future__ import annotations

import asyncio
import os
from types import ModuleType

import redis_app
from redis.asyncio import Redis

from taskiq_flow import DataflowPipeline, PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.once import RedisKeyStore

#: The pipeline's name scopes its keys: the test's trigger names the same one.
NAME = "once-resume"


def pipeline(app: ModuleType, client: Redis, lease: float) -> DataflowPipeline:
    """first_step -> slow_step of ``app`` (tests/redis_app.py as imported by its caller), named
    :data:`NAME`, tracked in Redis with ``lease``."""
    storage = RedisPipelineStorage(client, ttl_seconds=600, lease_seconds=lease)
    return (
        DataflowPipeline.from_tasks(app.broker, [app.first_step, app.slow_step])
        .with_name(NAME)
        .with_tracking(PipelineTrackingManager(storage))
    )


async def main() -> None:
    await redis_app.broker.startup()
    lease = float(os.environ.get("TASKIQ_FLOW_TEST_RUN_LEASE", "15"))
    client = Redis.from_url(redis_app.URL)
    keyed = pipeline(redis_app, client, lease).with_idempotency_key(
        os.environ["TASKIQ_FLOW_TEST_ONCE_KEY"],
        store=RedisKeyStore(client, lease_seconds=lease),
    )
    print(await keyed.kiq_dataflow(x=3), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
