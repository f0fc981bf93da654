"""Memoized steps: a step declared ``pipeline_task(cache=True)`` is not sent again for inputs it
has seen (within ``cache_ttl``).

A step's key is its task's identity and ``cache_version`` plus its inputs: an input produced by
another cached step stands as that step's key (so a chain of cached steps whose first one hits
sends nothing: every key is known from the run's inputs alone), any other input as the digest of
its canonical JSON. Before a node of a cached step is sent, the runner asks its
:class:`StepCache`: a hit completes the node with the stored value; a miss claims the key (two
runs needing one key at once send it once: the second waits for the first's value) and the value
is stored when the node completes. A value (or an input) that JSON cannot carry unchanged (a
tuple, a set, an object) cannot be keyed faithfully: the step runs, uncached, and the log says so
once per step.

The cache is in memory by default (:class:`MemoryStepCache`, one per process) and in Redis when
the broker's completions travel through Redis (``taskiq_flow.distributed.cache``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from taskiq_flow._backoff import Backoff
from taskiq_flow.events import Completion
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.run.plan import MISSING, CachePolicy

if TYPE_CHECKING:
    from taskiq_flow.run.runner import Runner

__all__ = [
    "CachePolicy",
    "Memo",
    "MemoryStepCache",
    "StepCache",
    "canonical",
    "check_cache",
    "default_cache",
]

logger = logging.getLogger(__name__)

#: Most seconds a run waits for another run's value of the same key before running it itself.
SINGLE_FLIGHT_WAIT = 3600.0
#: How long a claim on a key holds (a run that died holding one delays others at most this).
CLAIM_SECONDS = 300.0


def check_cache(cache: object, ttl: object, version: object) -> CachePolicy | None:
    """``pipeline_task``'s cache options as a policy (``None``: not cached), checked once.

    :raises InvalidValueError: ``cache`` not a bool, a ``ttl`` that is not a finite number of
        seconds > 0, a ``version`` that is not a str or an int.
    """
    if not isinstance(cache, bool):
        raise InvalidValueError(f"pipeline_task cache must be True or False, got {cache!r}")
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise InvalidValueError(
            f"pipeline_task cache_ttl must be a finite number of seconds > 0, got {ttl!r}"
        )
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise InvalidValueError(
            f"pipeline_task cache_version must be a str or an int, got {version!r}"
        )
    return CachePolicy(float(ttl), str(version)) if cache else None


def _faithful(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` reads back from JSON equal and of the same types."""
    if depth > 100:
        return False
    kind = type(value)
    if value is None or kind in (bool, str):
        return True
    if kind is int:
        return len(str(abs(value))) < sys.get_int_max_str_digits() if value > 10**18 else True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_faithful(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _faithful(v, depth + 1) for k, v in value.items())
    return False


def canonical(value: Any) -> str | None:
    """``value`` as canonical JSON (sorted keys, no spaces), or ``None`` if JSON cannot carry it
    unchanged."""
    if not _faithful(value):
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class StepCache(Protocol):
    """Where memoized values live."""

    async def get(self, key: str) -> tuple[str, str] | None:
        """``(value JSON, run id that stored it)``, or ``None``."""
        ...

    async def claim(self, key: str, ttl: float) -> bool:
        """Claims ``key`` for computing (``False``: another run holds the claim)."""
        ...

    async def put(self, key: str, value: str, run_id: str, ttl: float) -> None:
        """Stores a value and gives the claim back."""
        ...

    async def release(self, key: str) -> None:
        """Gives a claim back without a value (the node failed)."""
        ...

    async def claimed(self, key: str) -> bool:
        """Whether some run holds the claim on ``key``."""
        ...

    async def last_inputs(self, step: str) -> dict[str, str] | None:
        """The input digests of the step's last stored value (to say why a lookup missed)."""
        ...

    async def set_last_inputs(self, step: str, inputs: dict[str, str], ttl: float) -> None:
        """Records the input digests of the step's newest value."""
        ...


class MemoryStepCache:
    """A process's cache: values and claims in dicts, each with its expiry."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, str, str]] = {}
        self._claims: dict[str, float] = {}
        self._last: dict[str, tuple[float, dict[str, str]]] = {}

    async def get(self, key: str) -> tuple[str, str] | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._values[key]
            return None
        return found[1], found[2]

    async def claim(self, key: str, ttl: float) -> bool:
        held = self._claims.get(key)
        if held is not None and held > time.monotonic():
            return False
        self._claims[key] = time.monotonic() + ttl
        return True

    async def put(self, key: str, value: str, run_id: str, ttl: float) -> None:
        self._values[key] = (time.monotonic() + ttl, value, run_id)
        self._claims.pop(key, None)

    async def release(self, key: str) -> None:
        self._claims.pop(key, None)

    async def claimed(self, key: str) -> bool:
        held = self._claims.get(key)
        return held is not None and held > time.monotonic()

    async def last_inputs(self, step: str) -> dict[str, str] | None:
        found = self._last.get(step)
        return found[1] if found is not None and found[0] > time.monotonic() else None

    async def set_last_inputs(self, step: str, inputs: dict[str, str], ttl: float) -> None:
        self._last[step] = (time.monotonic() + ttl, inputs)

    def clear(self) -> None:
        """Forgets everything (for tests and benchmarks)."""
        self._values.clear()
        self._claims.clear()
        self._last.clear()


_DEFAULT = MemoryStepCache()


def default_cache() -> MemoryStepCache:
    """The process-wide in-memory cache."""
    return _DEFAULT


class Memo:
    """The memoized steps of one run: keys, lookups, claims and stores.

    :param run: the runner.
    :param cache: where values live.
    """

    def __init__(self, run: Runner, cache: StepCache) -> None:
        self.run = run
        self.cache = cache
        #: Per node of a cached step: its key (once known) and its input digests.
        self.keys: dict[int, str] = {}
        self.inputs: dict[int, dict[str, str]] = {}
        #: Nodes completed from the cache, and the run that stored their value.
        self.cached_from: dict[int, str] = {}
        #: Why a node's lookup missed.
        self.missed: dict[int, str] = {}
        #: Nodes whose key this run claimed (their value is stored when they complete).
        self.claimed: dict[int, str] = {}
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stores: set[asyncio.Task[Any]] = set()

    def key(self, node: int) -> str | None:
        """``node``'s key, or ``None`` if an input cannot be keyed faithfully (said once)."""
        run = self.run
        plan = run.plan
        step = plan.step(node)
        policy = step.cache
        assert policy is not None and plan.feeds is not None
        _, kwargs = plan.build(node, run.results)
        parts: dict[str, str] = {}
        for param, producer in plan.feeds(node):
            if producer is not None and producer in self.keys:
                parts[param] = "key:" + self.keys[producer]
                continue
            value = kwargs.get(param, MISSING)
            if value is MISSING:
                parts[param] = "absent"
                continue
            text = canonical(value)
            if text is None:
                self._warn(step.name, f"its input {param!r} cannot be keyed faithfully as JSON")
                return None
            parts[param] = "value:" + _digest(text)
        identity = json.dumps([step.task_name, policy.version, parts], sort_keys=True)
        key = _digest(identity)
        self.keys[node] = key
        self.inputs[node] = parts
        return key

    def _warn(self, step: str, why: str) -> None:
        if step not in self._warned:
            self._warned.add(step)
            logger.warning("step %r is not cached in this run: %s", step, why)

    async def before_send(self, node: int, attempt: int) -> bool:
        """Looks ``node`` up; returns whether it is handled (completed from the cache, or waiting
        for another run's value of its key) instead of being sent."""
        key = self.key(node)
        if key is None:
            return False
        step = self.run.plan.step(node)
        policy = step.cache
        assert policy is not None
        if await self._hit(node, attempt, key):
            return True
        if await self.cache.claim(key, min(policy.ttl, CLAIM_SECONDS)):
            self.claimed[node] = key
            await self._why_missed(node, step.name)
            return False
        # Another run computes this key now: its value is this node's (sent only if it fails).
        self._spawn(self._wait_for_other(node, attempt, key))
        return True

    async def _hit(self, node: int, attempt: int, key: str) -> bool:
        found = await self.cache.get(key)
        if found is None:
            return False
        text, run_id = found
        self.cached_from[node] = run_id
        self.run.report(
            Completion(
                self.run.run_id, node, attempt, True, json.loads(text), None, 0.0, time.time()
            )
        )
        return True

    async def _wait_for_other(self, node: int, attempt: int, key: str) -> None:
        pause = Backoff(0.002, 0.2)
        deadline = time.monotonic() + SINGLE_FLIGHT_WAIT
        try:
            while time.monotonic() < deadline:
                if await self._hit(node, attempt, key):
                    return
                if not await self.cache.claimed(key):  # the other run gave up: this one runs it
                    step = self.run.plan.step(node)
                    assert step.cache is not None
                    if await self.cache.claim(key, min(step.cache.ttl, CLAIM_SECONDS)):
                        self.claimed[node] = key
                        await self.run.send_uncached(node)
                        return
                await pause.sleep()
            await self.run.send_uncached(node)
        except Exception as err:  # the cache is unreachable: the node runs uncached
            logger.warning("step cache unreachable (%s): running the node uncached", err)
            await self.run.send_uncached(node)

    async def _why_missed(self, node: int, step: str) -> None:
        last = await self.cache.last_inputs(f"{self.run.plan.step(node).task_name}:{step}")
        now = self.inputs[node]
        if last is None:
            self.missed[node] = "no value stored for this step (first run, or expired)"
            return
        changed = sorted(p for p in now.keys() | last.keys() if now.get(p) != last.get(p))
        if changed:
            shown = ", ".join(f"{p!r}" for p in changed)
            word = "inputs" if len(changed) > 1 else "input"
            self.missed[node] = f"{word} {shown} changed"
        else:
            self.missed[node] = "its value expired (or the version changed)"

    def completed(self, node: int, value: Any) -> None:
        """A node whose key this run claimed completed: its value is stored (if JSON carries it
        unchanged)."""
        key = self.claimed.pop(node, None)
        if key is None:
            return
        step = self.run.plan.step(node)
        policy = step.cache
        assert policy is not None
        text = canonical(value)
        if text is None:
            self._warn(step.name, "its value cannot be stored faithfully as JSON")
            self._spawn(self.cache.release(key), store=True)
            return
        self._spawn(self._store(key, text, policy.ttl, node, step.name), store=True)

    async def _store(self, key: str, text: str, ttl: float, node: int, step: str) -> None:
        await self.cache.put(key, text, self.run.pipeline_id, ttl)
        task = self.run.plan.step(node).task_name
        await self.cache.set_last_inputs(f"{task}:{step}", self.inputs[node], ttl)

    def failed(self, node: int) -> None:
        """A node whose key this run claimed failed for good: the claim is given back."""
        key = self.claimed.pop(node, None)
        if key is not None:
            self._spawn(self.cache.release(key), store=True)

    def _spawn(self, work: Any, store: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(work)
        (self._stores if store else self._tasks).add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._stores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("step cache: %s", task.exception())

    async def settle(self) -> None:
        """Waits for pending stores (a run's values are in the cache when it returns) and stops
        waiting for other runs' values."""
        for task in list(self._tasks):
            task.cancel()
        for node in list(self.claimed):  # a run that ended before these completed
            self.failed(node)
        if self._stores:
            await asyncio.gather(*list(self._stores), return_exceptions=True)
