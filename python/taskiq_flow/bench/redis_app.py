"""The taskiq app the Redis benchmarks run: imported by the bench and by its `taskiq worker`
processes, configured through ``TASKIQ_FLOW_BENCH_REDIS`` and ``TASKIQ_FLOW_BENCH_QUEUE``."""

from __future__ import annotations

import os

from taskiq_flow.bench.orchestrators import register_tasks
from taskiq_flow.distributed import (
    RedisCompletionChannel,
    json_result_backend,
    reliable_stream_broker,
)
from taskiq_flow.events import FlowMiddleware

URL = os.environ.get("TASKIQ_FLOW_BENCH_REDIS", "redis://127.0.0.1:6379")
QUEUE = os.environ.get("TASKIQ_FLOW_BENCH_QUEUE", "taskiq_flow_bench")

broker = (
    reliable_stream_broker(URL, queue_name=QUEUE, xread_block=200)
    .with_result_backend(json_result_backend(URL, prefix_str="taskiq_flow_bench"))
    .with_middlewares(FlowMiddleware(RedisCompletionChannel(URL)))
)


@broker.task(task_name="bench_redis_noop")
async def noop(x: int = 0) -> int:
    return x


#: The tasks of ``taskiq-flow bench --group orchestrators`` (its ``taskiq-flow redis`` contender).
orchestrator_tasks = register_tasks(broker)
