"""One run per key after its orchestrator was killed: on a real redis-server, with real
`taskiq worker` processes and a real orchestrator process killed with SIGKILL mid-run, the next
trigger of the key takes the run over and resumes it: same run id, its result, and the step that
finished before the kill is not run again."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid

from conftest import until
from redis.asyncio import Redis
from test_distributed import TESTS, started_app, supervised_workers

from taskiq_flow import PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage
from taskiq_flow.once import RedisKeyStore

#: The leases (of the key and of the run in tracking) of the orchestrator killed, in seconds.
LEASE = 1.0


async def test_a_key_whose_orchestrator_was_killed_resumes_its_run(
    redis: Redis, redis_url: str
) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    extra = {"TASKIQ_FLOW_TEST_RUN_LEASE": str(LEASE), "TASKIQ_FLOW_TEST_ONCE_KEY": key}
    with supervised_workers(redis_url, "--workers", "2", extra_env=extra) as (env, _):
        async with started_app(env) as app:
            sys.modules.pop("once_orchestrator", None)
            import once_orchestrator

            await redis.set("second:gate", 1)  # slow_step runs until the orchestrator is killed
            orchestrator = await asyncio.create_subprocess_exec(
                sys.executable, str(TESTS / "once_orchestrator.py"), cwd=TESTS, env=env
            )
            store = RedisKeyStore(redis, lease_seconds=LEASE)
            record, lease = store.keys_of(f"{once_orchestrator.NAME}\x1f{key}")
            await until(lambda: redis.get("second:runs"), 30, "slow_step to start")
            claimed = json.loads(await redis.get(record))
            assert claimed["state"] == "running"
            run_id = claimed["run"]
            tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))

            async def first_step_recorded() -> bool:
                status = await tracking.get_status(run_id)
                return status.steps[0].status == "done"

            await until(first_step_recorded, 30, "first_step's completion to be recorded")
            orchestrator.send_signal(signal.SIGKILL)
            await orchestrator.wait()
            await redis.set("second:go", 1)  # the first copy of slow_step ends, unheard

            pipeline = once_orchestrator.pipeline(app, redis, LEASE)
            keyed = pipeline.with_idempotency_key(key, store=store)
            outputs = await asyncio.wait_for(keyed.kiq_dataflow(x=3), 60)
            assert outputs == {"first": 4, "second": 40}
            assert keyed.pipeline_id == run_id  # the same run, taken over and resumed
            assert int(await redis.get("first:runs")) == 1  # finished before the kill: not rerun
            # Out when it was killed: sent again (its first copy ran to the end unheard).
            assert int(await redis.get("second:runs")) == 2
            status = await tracking.get_status(run_id)
            assert status.status == "done" and len(status.resumes) == 1
            settled = json.loads(await redis.get(record))
            assert (settled["state"], settled["run"]) == ("done", run_id)
            assert settled["result"] == outputs and not await redis.exists(lease)
            # The next trigger gets the stored result and sends nothing.
            again = await pipeline.with_idempotency_key(key, store=store).kiq_dataflow(x=3)
            assert again == outputs and int(await redis.get("first:runs")) == 1
