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
from taskiq_flow.exceptions import InvalidValueError

__all__ = [
    "DRAIN_ENV",
    "HEARTBEAT_TTL",
    "WORKER_ENV",
    "boot_key",
    "discover_workers",
    "draining_key",
    "worker_key",
]

logger = logging.getLogger(__name__)

#: Set by ``taskiq-flow worker`` for the ``taskiq worker`` it starts: the worker's advert (JSON).
WORKER_ENV = "TASKIQ_FLOW_WORKER"
#: Set by ``taskiq-flow worker --drain-timeout S`` for the ``taskiq worker`` it starts: the
#: seconds a stopping worker lets its running tasks finish (overrides the broker's own).
DRAIN_ENV = "TASKIQ_FLOW_DRAIN_TIMEOUT"
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


def draining_key(consumer: str, prefix: str = "taskiq_flow") -> str:
    """The key a draining worker process (a stream consumer, its boot id) sets while it drains:
    a successor under the same name leaves what it holds to it (it gives everything back)."""
    return (
        f"{validate_key_part('prefix', prefix)}:draining:"
        f"{validate_key_part('consumer name', consumer)}"
    )


async def discover_workers(
    redis: Redis,
    prefix: str = "taskiq_flow",
    *,
    broker: Any = None,
    queue: str | None = None,
) -> list[dict[str, Any]]:
    """The adverts of every live ``taskiq-flow worker`` (those whose heartbeat has not lapsed),
    in the form :class:`~taskiq_flow.ResourceAwareWorkerPool` takes, each with its ``queue`` and
    its boot id in ``labels``. A malformed advert is skipped with a warning.

    Several applications may share one Redis (and the default prefix): pass the ``broker`` the
    pool's tasks are sent with (or its ``queue`` name), and only workers serving that queue are
    returned. Without either, every advert is returned, and a warning says so if they serve
    more than one queue (a task placed on another application's worker cannot be sent).

    :param redis: a ``redis.asyncio.Redis`` client.
    :param prefix: the key prefix the workers use.
    :param broker: keep only workers consuming this broker's queue (its ``queue_name``).
    :param queue: the same, by queue name.
    :raises InvalidValueError: for a ``broker`` without a queue name, or both given and
        different.
    """
    wanted = queue
    if broker is not None:
        name = getattr(broker, "queue_name", None)
        if not isinstance(name, str):
            raise InvalidValueError(
                f"broker= must be a Redis stream broker with a queue_name, got "
                f"{type(broker).__name__}"
            )
        if wanted is not None and wanted != name:
            raise InvalidValueError(f"queue={wanted!r} is not the broker's queue {name!r}")
        wanted = name
    adverts = []
    served: set[str] = set()
    pattern = f"{validate_key_part('prefix', prefix)}:worker:*"
    async for key in redis.scan_iter(match=pattern, count=500):
        raw = await redis.get(key)
        if raw is None:
            continue  # expired between the scan and the read
        try:
            advert = json.loads(raw)
        except (ValueError, RecursionError):
            advert = None
        if (
            not isinstance(advert, dict)
            or not isinstance(advert.get("name"), str)
            or not isinstance(advert.get("queue"), str)
        ):
            logger.warning("ignoring a malformed worker advert at %s", key)
            continue
        base = serves(advert)
        served.add(base)
        if wanted is None or base == wanted:
            adverts.append(advert)
    if wanted is None and len(served) > 1:
        logger.warning(
            "workers of %d applications (queues %s) advertise on this Redis: pass broker= to "
            "discover_workers() to keep only those of this application",
            len(served),
            ", ".join(sorted(served)),
        )
    return sorted(adverts, key=lambda a: str(a.get("name")))


def serves(advert: dict[str, Any]) -> str:
    """The application queue a worker serves: its own queue is ``<queue>.<name>``."""
    own, name = str(advert["queue"]), str(advert["name"])
    suffix = f".{name}"
    return own[: -len(suffix)] if own.endswith(suffix) else own
