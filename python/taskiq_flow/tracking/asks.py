"""Questions a dashboard asks a run's orchestrator through tracking: "why does step ``i`` wait?".

A run this process executes is asked directly
(:meth:`~taskiq_flow.tracking.PipelineTrackingManager.explain_step`). A run executed by another
process is asked through its storage: the asker adds the step's index to the run's asks, and
the orchestrator takes them at its next recording of why its steps wait (at most
:data:`~taskiq_flow.tracking.recorder.EXPLAIN_EVERY` seconds later), explains each asked step
from then on for :data:`ASKED_FOR` seconds, and stores the sentence with the step (its
``waiting``), which the dashboard's feed brings to the page.

Over Redis (:class:`~taskiq_flow.distributed.RedisPipelineStorage`), the asks of a run are a set
``<prefix>:run:<id>:ask`` with a TTL of :data:`ASK_TTL` seconds; the orchestrator takes them with
one ``SMEMBERS`` + ``DEL`` transaction per recording (once a second while the run is live).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ASKED_FOR", "ASK_TTL", "RedisAsks", "asks_of"]

#: Seconds an asked step goes on being explained by its orchestrator after the last ask.
ASKED_FOR = 30.0
#: Seconds an ask waits for the orchestrator to take it (then it lapses).
ASK_TTL = 60
#: Most steps one run keeps asked at once (more asks than that are dropped).
MAX_ASKS = 1_000


class RedisAsks:
    """The asks of runs tracked in Redis.

    :param storage: a :class:`~taskiq_flow.distributed.RedisPipelineStorage` (its client and
        keys).
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def key(self, pipeline_id: str) -> str:
        """The key of a run's asks."""
        run_key: str = self.storage.keys_of(pipeline_id)[0]
        return f"{run_key}:ask"

    async def ask(self, pipeline_id: str, index: int) -> bool:
        """Asks the run's orchestrator to explain step ``index``; whether the ask was stored."""
        key = self.key(pipeline_id)
        async with self.storage.redis.pipeline(transaction=True) as pipe:
            pipe.scard(key)
            pipe.sadd(key, str(index))
            pipe.expire(key, ASK_TTL)
            size, _, _ = await pipe.execute()
        return int(size) < MAX_ASKS

    async def take(self, pipeline_id: str) -> list[int]:
        """The steps asked about since the last take (and forgets them)."""
        key = self.key(pipeline_id)
        async with self.storage.redis.pipeline(transaction=True) as pipe:
            pipe.smembers(key)
            pipe.delete(key)
            members, _ = await pipe.execute()
        asked = []
        for raw in list(members)[:MAX_ASKS]:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if text.isdigit():
                asked.append(int(text))
        return asked


def asks_of(storage: Any) -> RedisAsks | None:
    """Where a storage keeps asks: Redis for a
    :class:`~taskiq_flow.distributed.RedisPipelineStorage`, none for any other (a run in memory
    is asked in its own process)."""
    try:
        from taskiq_flow.distributed import RedisPipelineStorage
    except ImportError:  # no redis extra: the storage cannot be Redis
        return None
    return RedisAsks(storage) if isinstance(storage, RedisPipelineStorage) else None
