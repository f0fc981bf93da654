"""Limits shared by every process on one Redis: a concurrency cap and a rate limit.

:class:`RedisCapacityLimiter` keeps holders as leases in a sorted set (a holder that dies gives
its slots back when its leases expire); :class:`RedisRateLimiter` is a token bucket kept as a
theoretical arrival time, advanced by one atomic script per acquisition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from taskiq_flow._backoff import Backoff
from taskiq_flow.distributed.keys import validate_key_part
from taskiq_flow.exceptions import InvalidValueError, StateError
from taskiq_flow.run.settings import check_max_parallel, check_rate

__all__ = ["RedisCapacityLimiter", "RedisRateLimiter"]

logger = logging.getLogger(__name__)


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


class RedisCapacityLimiter:
    """A concurrency cap shared by every process using the same Redis and ``name``.

    Holders are leases in a sorted set, scored by expiry: taking one is an atomic script that
    first drops expired leases, so a process that dies holding slots gives them back after
    ``lease_seconds``. A live holder renews its leases every third of that. A waiter retries the
    script with a backoff from 2 ms to 50 ms (a blocking pop on a wake-up list stalled for seconds
    here now and then, so waiting is kept to plain retries: at most 20 round trips a second per
    waiting dispatcher).

    :param redis: a ``redis.asyncio.Redis`` client.
    :param name: the limit's name (letters, digits, ``_ . -``).
    :param total_tokens: the cap, an int >= 1.
    :param lease_seconds: how long a slot outlives a holder that stopped renewing.
    """

    def __init__(
        self,
        redis: Redis,
        name: str,
        total_tokens: int,
        lease_seconds: float = 30.0,
        prefix: str = "taskiq_flow",
    ) -> None:
        total = check_max_parallel(total_tokens, "total_tokens")  # the core's one cap rule
        if total is None:
            raise InvalidValueError("total_tokens must be an int from 1 to 4294967295, got None")
        if not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
            raise InvalidValueError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        self.redis = redis
        self._total = total
        self._lease_ms = max(1, int(lease_seconds * 1000))
        base = f"{validate_key_part('prefix', prefix)}:limit:{validate_key_part('name', name)}"
        self._key = base
        self._held: list[str] = []
        self._renewer: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    @property
    def total_tokens(self) -> int:
        """The shared cap."""
        return self._total

    @property
    def borrowed_tokens(self) -> int:
        """Slots this process holds."""
        return len(self._held)

    def acquire_nowait(self) -> None:
        """Never succeeds without a round trip: always raises :class:`anyio.WouldBlock`."""
        raise anyio.WouldBlock

    async def try_acquire(self) -> bool:
        """Takes a slot if the shared count allows it now (one round trip); ``True`` if taken."""
        lease = uuid.uuid4().hex
        if await self._acquire(keys=[self._key], args=[self._total, self._lease_ms, lease]):
            self._held.append(lease)
            self._start_renewer()
            return True
        return False

    async def acquire(self) -> None:
        """Takes a slot, waiting until the shared count allows it."""
        pause = Backoff(0.002, 0.05)
        while not await self.try_acquire():
            await pause.sleep()

    def release(self) -> None:
        """Gives a slot back (the round trip to Redis happens in the background; use
        :meth:`give_back` to wait for it). Without a running event loop the slot's lease is
        left to expire."""
        if not self._held:
            raise StateError("release() must be matched by an earlier acquire; none held")
        lease = self._held.pop()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.debug(
                "no event loop: slot of limit %s comes back when its lease ends", self._key
            )
            return
        task = loop.create_task(self._give_back([lease]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def give_back(self, count: int | None = None) -> None:
        """Gives back ``count`` slots (every one held by default) and waits until Redis has
        them. If Redis cannot be reached, their leases end within ``lease_seconds``."""
        if count is None or count >= len(self._held):
            leases, self._held = self._held, []
        else:
            leases = self._held[len(self._held) - count :]
            del self._held[len(self._held) - count :]
        await self._give_back(leases)

    async def _give_back(self, leases: list[str]) -> None:
        if not leases:
            return
        try:
            await self.redis.zrem(self._key, *leases)
        except RedisError as exc:
            logger.warning(
                "could not give back %d slot(s) of limit %s (they come back when their leases "
                "end): %s",
                len(leases),
                self._key,
                exc,
            )

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            if self._held:
                try:
                    await self._renew(keys=[self._key], args=[self._lease_ms, *self._held])
                except RedisError as exc:  # Redis stalled or restarting: try again next time
                    logger.warning("could not renew the leases of limit %s: %s", self._key, exc)

    async def aclose(self) -> None:
        """Gives back every slot still held, waits until Redis has them, and stops renewing."""
        await self.give_back()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return wait
"""


class RedisRateLimiter:
    """A token bucket shared by every process using the same Redis and ``name``: at most ``rate``
    acquisitions per second between them, in bursts of up to ``burst``.

    The bucket is a theoretical arrival time in Redis, advanced by one atomic script per
    acquisition (exact, as :class:`~taskiq_flow.RateLimiter`, with Redis's clock); each caller then
    sleeps until its reserved time.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param name: the limit's name (letters, digits, ``_ . -``).
    :param rate: acquisitions per second, > 0.
    :param burst: bucket size, an int >= 1.
    """

    def __init__(
        self, redis: Redis, name: str, rate: float, burst: int = 1, prefix: str = "taskiq_flow"
    ) -> None:
        checked, self.burst = check_rate(rate, burst)  # the core's one rate rule
        if checked is None:
            raise InvalidValueError("rate must be a finite number > 0, got None")
        self.rate = checked
        self._interval_us = 1e6 / self.rate
        self._key = f"{validate_key_part('prefix', prefix)}:rate:{validate_key_part('name', name)}"
        self._reserve = redis.register_script(_RESERVE)

    async def acquire(self) -> None:
        """Reserves the next token in Redis and sleeps until it is due."""
        tolerance = (self.burst - 1) * self._interval_us
        wait_us = await self._reserve(keys=[self._key], args=[self._interval_us, tolerance])
        if wait_us > 0:
            await asyncio.sleep(float(wait_us) / 1e6)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None
