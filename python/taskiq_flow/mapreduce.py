"""Map-reduce: a fan-out over items and a fan-in by pairs, on the same engine as every pipeline.

::

    squares = await MapReduce.map(broker, square, range(10_000), max_parallel=15)
    total = await MapReduce.reduce(broker, add, squares)
    total = await MapReduce.map_reduce(broker, square, add, range(10_000))   # one DAG

    async for value in MapReduce.stream(broker, square, huge_iterable, max_parallel=64):
        ...  # results as they complete; memory bounded by what is in flight

``map`` returns results in input order. ``reduce`` combines values pairwise in a balanced tree
(``task(left, right)``, so the task must be associative), ``log2(n)`` levels deep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from taskiq_flow._core import ConcurrencyCounter
from taskiq_flow.engine import (
    FlowRun,
    OnError,
    Plan,
    StepSpec,
    check_max_parallel,
    check_rate,
    task_identity,
)
from taskiq_flow.events import FLOW_LABEL, ensure_flow_middleware
from taskiq_flow.exceptions import DataflowError, InvalidValueError, StepFailedError
from taskiq_flow.optimization.parallel import global_limiter
from taskiq_flow.resources import ResourceAwareWorkerPool, resources_of
from taskiq_flow.retry import RetryPolicy
from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["MapReduce"]

_NO_INITIAL: Any = object()


def _reduce_tree(
    leaves: int, first_node: int
) -> tuple[list[tuple[tuple[str, int], tuple[str, int]]], list[int], list[int], tuple[str, int]]:
    """A balanced pairwise reduction of ``leaves`` values.

    Returns, for each combining node (numbered from ``first_node``), its two operands as
    ``("leaf", i)`` or ``("node", j)``; the edges between combining nodes; and the final operand.
    """
    level: list[tuple[str, int]] = [("leaf", i) for i in range(leaves)]
    operands: list[tuple[tuple[str, int], tuple[str, int]]] = []
    sources: list[int] = []
    targets: list[int] = []
    while len(level) > 1:
        nxt: list[tuple[str, int]] = []
        for i in range(0, len(level) - 1, 2):
            node = first_node + len(operands)
            left, right = level[i], level[i + 1]
            operands.append((left, right))
            for kind, ref in (left, right):
                if kind == "node":
                    sources.append(ref)
                    targets.append(node)
            nxt.append(("node", node))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return operands, sources, targets, level[0]


class MapReduce:
    """Fan-out and fan-in over items (all methods are static)."""

    @staticmethod
    async def map(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        param_name: str | None = None,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        rate: float | None = None,
        burst: int = 1,
        worker_pool: ResourceAwareWorkerPool | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Runs ``task`` on every item and returns the results in item order.

        :param items: the items; each is passed as the first argument (or as ``param_name``).
        :param max_parallel: most tasks in flight at once (``None``: all).
        :param worker_pool: place each call on a worker with room for it.
        :param rate: at most this many calls started per second, in bursts of ``burst``.
        :param kwargs: further keyword arguments for every call.
        :raises StepFailedError: a call failed for good.
        """
        task_name, labels, name = task_identity(task)
        values = list(items)
        cap = check_max_parallel(max_parallel)

        def call(node: int, _results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if param_name is None:
                return (values[node],), kwargs
            return (), {**kwargs, param_name: values[node]}

        step_rate, step_burst = check_rate(rate, burst)
        step = StepSpec(
            name,
            task_name,
            labels,
            max_parallel=cap,
            tasks=len(values),
            resources=resources_of(task),
            rate=step_rate,
            burst=step_burst,
        )
        plan = Plan(len(values), [], [], [step], call)
        run = FlowRun(
            broker,
            plan,
            on_error=on_error,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            name=f"map:{name}",
            worker_pool=worker_pool,
        )
        return await run.execute()

    @staticmethod
    async def reduce(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        initial: Any = _NO_INITIAL,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
    ) -> Any:
        """Combines the items pairwise with ``task(left, right)`` in a balanced tree.

        :param initial: the result for no items (without it, no items is an error).
        :raises DataflowError: no items and no ``initial``.
        """
        task_name, labels, name = task_identity(task)
        values = list(items)
        if initial is not _NO_INITIAL:
            values.insert(0, initial)
        if not values:
            raise DataflowError("reduce of no items needs an initial value")
        if len(values) == 1:
            return values[0]
        operands, sources, targets, _ = _reduce_tree(len(values), 0)

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            pair = operands[node]
            return tuple(values[i] if kind == "leaf" else results[i] for kind, i in pair), {}

        step = StepSpec(
            name,
            task_name,
            labels,
            max_parallel=check_max_parallel(max_parallel),
            tasks=len(operands),
        )
        plan = Plan(len(operands), sources, targets, [step], call)
        run = FlowRun(
            broker, plan, retry=retry, timeout=timeout, tracking=tracking, name=f"reduce:{name}"
        )
        return (await run.execute())[-1]

    @staticmethod
    async def map_reduce(
        broker: AsyncBroker,
        map_task: object,
        reduce_task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
    ) -> Any:
        """Maps then reduces in one run: each pair is combined as soon as both sides are ready.

        :raises DataflowError: no items.
        """
        map_name, map_labels, map_display = task_identity(map_task)
        red_name, red_labels, red_display = task_identity(reduce_task)
        values = list(items)
        n = len(values)
        if n == 0:
            raise DataflowError("map_reduce of no items has no result")
        operands, sources, targets, final = _reduce_tree(n, n)
        # Map nodes are 0..n-1 and are the tree's leaves.
        for node, pair in enumerate(operands, start=n):
            for kind, ref in pair:
                if kind == "leaf":
                    sources.append(ref)
                    targets.append(node)
        cap = check_max_parallel(max_parallel)

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if node < n:
                return (values[node],), {}
            return tuple(results[ref] for _, ref in operands[node - n]), {}

        steps = [
            StepSpec(map_display, map_name, map_labels, max_parallel=cap, tasks=n),
            StepSpec(red_display, red_name, red_labels, max_parallel=cap, tasks=len(operands)),
        ]
        step_of = [0] * n + [1] * len(operands)
        plan = Plan(n + len(operands), sources, targets, steps, call, step_of)
        run = FlowRun(
            broker,
            plan,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            name=f"map_reduce:{map_display}:{red_display}",
        )
        results = await run.execute()
        return results[final[1]]

    @staticmethod
    async def stream(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any] | AsyncIterable[Any],
        max_parallel: int = 64,
        *,
        ordered: bool = False,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Runs ``task`` on each item of a (possibly endless, possibly async) iterable and yields
        results as they complete (in item order with ``ordered=True``).

        At most ``max_parallel`` calls are in flight and only those are held in memory, so a
        million items stream in the memory of ``max_parallel``.

        :raises StepFailedError: a call failed for good (nothing more is sent).
        """
        cap = check_max_parallel(max_parallel)
        if cap is None:
            raise InvalidValueError("stream needs a max_parallel (an int >= 1) to bound memory")
        task_name, labels, name = task_identity(task)
        counter = ConcurrencyCounter(cap)
        limiter = global_limiter()
        channel = ensure_flow_middleware(broker).channel
        run_id = uuid.uuid4().hex
        inbox = channel.open(run_id)
        pending: dict[int, tuple[Any, int]] = {}  # seq -> (item, attempt)
        ready: dict[int, Any] = {}  # finished out of order (ordered mode)
        next_out = 0
        seq = 0
        source = _aiter(items)
        exhausted = False
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []

        retrying: set[int] = set()

        def resend(i: int) -> None:
            retrying.discard(i)
            _spawn(loop, send, i)

        async def send(i: int) -> None:
            item, attempt = pending[i]
            kicker: AsyncKicker[Any, Any] = AsyncKicker(task_name, broker, labels)
            await kicker.with_labels(**{FLOW_LABEL: f"{run_id}:{i}:{attempt}"}).kiq(item, **kwargs)

        try:
            while True:
                # Fill the window; in ordered mode never run ahead of the oldest unyielded item by
                # more than the window, so the reorder buffer stays bounded too.
                while (
                    not exhausted
                    and (not ordered or seq - next_out < cap)
                    and counter.try_acquire()
                ):
                    try:
                        item = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        counter.release()
                        break
                    await limiter.acquire()
                    pending[seq] = (item, 1)
                    await send(seq)
                    seq += 1
                if exhausted and not pending:
                    return
                await inbox.wait()
                for event in inbox.drain():
                    entry = pending.get(event.node)
                    if entry is None or entry[1] != event.attempt:
                        continue
                    if not event.ok:
                        if retry is not None and retry.should_retry(event.attempt, event.error):
                            pending[event.node] = (entry[0], event.attempt + 1)
                            retrying.add(event.node)
                            delay = retry.delay_for(event.attempt)
                            timers.append(loop.call_later(delay, resend, event.node))
                            continue
                        del pending[event.node]  # finished, if badly: not out any more
                        limiter.release()
                        raise StepFailedError(name, event.error)
                    del pending[event.node]
                    counter.release()
                    limiter.release()
                    if ordered:
                        ready[event.node] = event.value
                    else:
                        yield event.value
                while ordered and next_out in ready:
                    yield ready.pop(next_out)
                    next_out += 1
        finally:
            for timer in timers:
                timer.cancel()
            for node in retrying:  # waiting for a retry that will not come: not out
                del pending[node]
                limiter.release()
            if pending:
                # Calls still out keep their global slots until they really finish.
                _spawn_drain(channel, run_id, inbox, pending, limiter)
            else:
                channel.close(run_id)


def _spawn_drain(
    channel: Any, run_id: str, inbox: Any, pending: dict[int, tuple[Any, int]], limiter: Any
) -> None:
    """Waits in the background for the calls a stopped stream left out, releasing the global
    slot of each as it completes (a call waiting for a retry is not out: released at once)."""

    async def drain() -> None:
        try:
            while pending:
                await inbox.wait()
                for event in inbox.drain():
                    entry = pending.get(event.node)
                    if entry is not None and entry[1] == event.attempt:
                        del pending[event.node]
                        limiter.release()
        finally:
            for _ in pending:  # cancelled as the loop closes: these will never report back
                limiter.release()
            pending.clear()
            channel.close(run_id)

    task = asyncio.get_running_loop().create_task(drain())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def _spawn(loop: asyncio.AbstractEventLoop, send: Any, node: int) -> None:
    task = loop.create_task(send(node))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Task[Any]] = set()


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
