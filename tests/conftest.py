"""Shared test settings and fixtures."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

import anyio
import pytest
from hypothesis import HealthCheck, settings
from taskiq import InMemoryBroker

from taskiq_flow.optimization.parallel import set_max_parallel_tasks

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("default")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server for the whole session (a failure, never a skip, if there is none)."""
    from taskiq_flow.testing import RedisServerUnavailable, redis_server

    try:
        with redis_server() as url:
            yield url
    except RedisServerUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session's redis-server, its database emptied for the test."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def anyio_backend() -> str:
    """taskiq runs on asyncio; the limiter tests also run on trio (see test_limits.py)."""
    return "asyncio"


@dataclass
class Gauge:
    """Counts tasks running at once, observed from inside the tasks."""

    running: int = 0
    peak: int = 0
    started: list[str] = field(default_factory=list)

    def enter(self, name: str = "") -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(name)

    def leave(self) -> None:
        self.running -= 1


async def until(
    condition: Callable[[], T | Awaitable[T]], timeout: float = 30.0, what: str = "the condition"
) -> T:
    """Waits until ``condition()`` (a plain or an async callable) returns something truthy, and
    returns it; for state that has no event of its own: a count in the core, a key a worker
    process writes in Redis. It is checked at once, then again after pauses growing from 1 ms to
    20 ms. Runs on asyncio and on trio (a virtual clock's time jumps to the next check).

    :param timeout: a generous bound, in seconds: reaching it fails the test.
    :param what: what is awaited, for the failure's message ("slow_step to start").
    :raises AssertionError: ``timeout`` passed first.
    """
    deadline = anyio.current_time() + timeout
    pause = 0.001
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return cast("T", value)
        if anyio.current_time() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what} (last: {value!r})"
            )
        await anyio.sleep(pause)
        pause = min(pause * 2, 0.02)


@pytest.fixture
def gauge() -> Gauge:
    return Gauge()


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    """A real taskiq InMemoryBroker with its defaults (it keeps only the last 100 results)."""
    b = InMemoryBroker()
    await b.startup()
    yield b
    await b.shutdown()


@pytest.fixture(autouse=True)
def no_global_cap() -> Iterator[None]:
    """Each test starts and ends without a process-wide cap."""
    set_max_parallel_tasks(None)
    yield
    set_max_parallel_tasks(None)
