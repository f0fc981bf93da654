"""Past one process: Redis brokers, completions, tracking, limits and worker adverts.

Everything taskiq-flow writes to or reads from Redis is JSON, bounded in size (1 MiB by default)
and depth, under one key prefix, with a TTL: a value planted in Redis is parsed, never executed.
Pass a JSON serializer to taskiq-redis result backends too (:func:`json_result_backend` does, and
sets a default expiry); they default to pickle.

::

    channel = RedisCompletionChannel("redis://127.0.0.1:6379")
    broker = reliable_stream_broker("redis://127.0.0.1:6379").with_middlewares(
        FlowMiddleware(channel)
    )
    tracking = PipelineTrackingManager(RedisPipelineStorage(Redis(), ttl_seconds=86400))

The modules, each one concern:

- :mod:`~taskiq_flow.distributed.channel`  completions, one stream per run
- :mod:`~taskiq_flow.distributed.storage`  tracking records and the run's lease
- :mod:`~taskiq_flow.distributed.broker`   the reliable stream broker, the JSON result backend
- :mod:`~taskiq_flow.distributed.deadletters`  dead letters, listed and replayed from any process
- :mod:`~taskiq_flow.distributed.limits`   a concurrency cap and a rate limit shared via Redis
- :mod:`~taskiq_flow.distributed.workers`  worker adverts and their discovery
- :mod:`~taskiq_flow.distributed.payload`, :mod:`~taskiq_flow.distributed.keys`  bounded JSON,
  safe key parts
"""

from __future__ import annotations

from taskiq_flow.distributed.broker import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RESULT_TTL,
    json_result_backend,
    reliable_stream_broker,
)
from taskiq_flow.distributed.channel import RedisCompletionChannel
from taskiq_flow.distributed.deadletters import DEFAULT_MAX_PER_RUN, RedisDeadLetterQueue
from taskiq_flow.distributed.keys import validate_key_part
from taskiq_flow.distributed.limits import RedisCapacityLimiter, RedisRateLimiter
from taskiq_flow.distributed.storage import DEFAULT_RUN_LEASE_SECONDS, RedisPipelineStorage
from taskiq_flow.distributed.workers import HEARTBEAT_TTL, WORKER_ENV, discover_workers
from taskiq_flow.exceptions import (
    ChannelLostError,
    RemoteTaskError,
    RunStateLostError,
    UndeliverableMessageError,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_PER_RUN",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_RUN_LEASE_SECONDS",
    "HEARTBEAT_TTL",
    "WORKER_ENV",
    "ChannelLostError",
    "RedisCapacityLimiter",
    "RedisCompletionChannel",
    "RedisDeadLetterQueue",
    "RedisPipelineStorage",
    "RedisRateLimiter",
    "RemoteTaskError",
    "RunStateLostError",
    "UndeliverableMessageError",
    "discover_workers",
    "json_result_backend",
    "reliable_stream_broker",
    "validate_key_part",
]
