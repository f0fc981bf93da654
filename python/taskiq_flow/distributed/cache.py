"""The step cache in Redis (``pipeline_task(cache=True)`` when completions travel through Redis):
values shared by every orchestrator of the application, each key with its TTL, and one claim
per key so that two runs needing it at once send it once (see :mod:`taskiq_flow.run.caching`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis.asyncio import Redis

__all__ = ["RedisStepCache"]


class RedisStepCache:
    """Memoized values under ``<prefix>:cache:<key>`` (JSON ``{"v": value, "run": id}``), claims
    under ``<prefix>:cache:<key>:claim``, each step's last input digests under
    ``<prefix>:cache-last:<digest of the step>``.

    :param redis: the client.
    :param prefix: the key prefix (checked by the channel that makes this cache).
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:cache:{key}"

    def _last(self, step: str) -> str:
        return f"{self.prefix}:cache-last:{hashlib.sha256(step.encode()).hexdigest()}"

    async def get(self, key: str) -> tuple[str, str] | None:
        raw = await self.redis.get(self._key(key))
        if raw is None:
            return None
        data: Any = json.loads(raw)
        return str(data["v"]), str(data["run"])

    async def claim(self, key: str, ttl: float) -> bool:
        claimed = await self.redis.set(
            f"{self._key(key)}:claim", "1", nx=True, px=max(1, int(ttl * 1000))
        )
        return bool(claimed)

    async def put(self, key: str, value: str, run_id: str, ttl: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self._key(key),
                json.dumps({"v": value, "run": run_id}),
                px=max(1, int(ttl * 1000)),
            )
            pipe.delete(f"{self._key(key)}:claim")
            await pipe.execute()

    async def release(self, key: str) -> None:
        await self.redis.delete(f"{self._key(key)}:claim")

    async def claimed(self, key: str) -> bool:
        return bool(await self.redis.exists(f"{self._key(key)}:claim"))

    async def last_inputs(self, step: str) -> dict[str, str] | None:
        raw = await self.redis.get(self._last(step))
        if raw is None:
            return None
        data: Any = json.loads(raw)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    async def set_last_inputs(self, step: str, inputs: dict[str, str], ttl: float) -> None:
        await self.redis.set(self._last(step), json.dumps(inputs), px=max(1, int(ttl * 1000)))
