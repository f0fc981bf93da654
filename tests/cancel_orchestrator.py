"""An orchestrator process the cancel test stops from another process: runs
:data:`cancel_app.pipeline` (6 items that wait to be cut) with its tracking in Redis, and says
how it ended (exit 3 on an error)."""

from __future__ import annotations

import asyncio
import sys

import cancel_app
from redis.asyncio import Redis

from taskiq_flow import PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage


async def main() -> None:
    await cancel_app.broker.startup()
    tracking = PipelineTrackingManager(RedisPipelineStorage(Redis.from_url(cancel_app.URL)))
    try:
        await cancel_app.pipeline.with_tracking(tracking).kiq_dataflow(n=6)
    except Exception as err:
        print(f"{type(err).__name__}: {err}", flush=True)
        sys.exit(3)
    finally:
        await cancel_app.broker.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
