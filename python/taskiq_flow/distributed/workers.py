"""Worker adverts: what each ``taskiq-flow worker`` offers, kept alive in Redis by a heartbeat.

A worker started by ``taskiq-flow worker`` publishes its advert (name, capacity, labels, its own
queue, and in its labels its boot id ``taskiq_flow_boot``: the stream consumer of the running
process) at
``<prefix>:worker:<name>`` with a TTL of :data:`HEARTBEAT_TTL` seconds (10), refreshed every third
of that. A child restarted by taskiq's supervisor under the same name is a new boot: it takes over
at once whatever its predecessor held (see
:class:`~taskiq_flow.distributed.broker.ReliableRedisStreamBroker`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis

from taskiq_flow.distributed.keys import validate_key_part

__all__ = ["HEARTBEAT_TTL", "WORKER_ENV", "boot_key", "discover_workers", "worker_key"]

logger = logging.getLogger(__name__)

#: Set by ``taskiq-flow worker`` for the ``taskiq worker`` it starts: the worker's advert (JSON).
WORKER_ENV = "TASKIQ_FLOW_WORKER"
#: Seconds a worker's advert lives without a heartbeat (refreshed every third of that): long
#: enough to outlive a Redis stall of several seconds (a lapsed advert makes pools drop the
#: worker for good); a child restarted by the supervisor is taken over at once regardless.
HEARTBEAT_TTL = 10.0
#: Seconds the last boot id of a worker name is remembered.
BOOT_TTL = 7 * 86_400


def worker_key(name: str, prefix: str = "taskiq_flow") -> str:
    """The key of a worker's advert."""
    return f"{validate_key_part('prefix', prefix)}:worker:{validate_key_part('worker name', name)}"


def boot_key(name: str, prefix: str = "taskiq_flow") -> str:
    """The key remembering the last boot (stream consumer) of a worker name."""
    return f"{validate_key_part('prefix', prefix)}:boot:{validate_key_part('worker name', name)}"


async def discover_workers(redis: Redis, prefix: str = "taskiq_flow") -> list[dict[str, Any]]:
    """The adverts of every live ``taskiq-flow worker`` (those whose heartbeat has not lapsed),
    in the form :class:`~taskiq_flow.ResourceAwareWorkerPool` takes, each with its ``queue`` and
    its boot id in ``labels``. A malformed advert is skipped with a warning.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param prefix: the key prefix the workers use.
    """
    adverts = []
    pattern = f"{validate_key_part('prefix', prefix)}:worker:*"
    async for key in redis.scan_iter(match=pattern, count=500):
        raw = await redis.get(key)
        if raw is None:
            continue  # expired between the scan and the read
        try:
            advert = json.loads(raw)
        except (ValueError, RecursionError):
            advert = None
        if not isinstance(advert, dict) or not isinstance(advert.get("name"), str):
            logger.warning("ignoring a malformed worker advert at %s", key)
            continue
        adverts.append(advert)
    return sorted(adverts, key=lambda a: str(a.get("name")))
