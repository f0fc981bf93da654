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
import contextlib
import difflib
import inspect
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from taskiq import AsyncBroker

from taskiq_flow.exceptions import DataflowError, InvalidValueError, StepFailedError
from taskiq_flow.resources import ResourceAwareWorkerPool, resources_of
from taskiq_flow.retry import DeadLetterQueue, RetryPolicy
from taskiq_flow.run.checks import check_calls
from taskiq_flow.run.plan import Plan, StepSpec, check_broker, check_task_broker, task_identity
from taskiq_flow.run.runner import Runner
from taskiq_flow.run.settings import OnError, Settings, check_rate
from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["MapReduce"]

_NO_INITIAL: Any = object()
_DONE: Any = object()
_SKIPPED: Any = object()


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


#: Every option a ``MapReduce`` call takes, for the error naming a misspelled one.
_OPTIONS = (
    "max_parallel",
    "param_name",
    "kwargs",
    "initial",
    "ordered",
    "on_error",
    "retry",
    "timeout",
    "tracking",
    "rate",
    "burst",
    "worker_pool",
    "dead_letters",
    "on_progress",
)


def _task_kwargs(
    task: object, kwargs: Mapping[str, Any] | None, legacy: dict[str, Any], call: str
) -> dict[str, Any]:
    """The keyword arguments every call of ``task`` gets: ``kwargs``, and (deprecated) the
    call's extra keywords — each of which must be a parameter of the task, so that a misspelled
    option is an error instead of a task argument.

    :raises TypeError: for an extra keyword the task has no parameter for.
    """
    given = dict(kwargs or {})
    if not legacy:
        return given
    func = getattr(task, "original_func", None)
    if func is not None:
        parameters = inspect.signature(func).parameters.values()
        takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
        known = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        for key in legacy:
            if not takes_any and key not in known:
                close = difflib.get_close_matches(key, _OPTIONS, n=1)
                hint = f"; did you mean the option {close[0]!r}?" if close else ""
                raise TypeError(
                    f"MapReduce.{call}() got an unknown keyword {key!r}: it is not an option, and "
                    f"the task has no parameter of that name{hint}"
                )
    warnings.warn(
        f"MapReduce.{call}(..., {', '.join(f'{k}=...' for k in legacy)}): give the task's "
        f"arguments as kwargs={{...}}; extra keywords are deprecated",
        DeprecationWarning,
        stacklevel=3,
    )
    return {**given, **legacy}


def _identity(broker: AsyncBroker, task: object) -> tuple[str, dict[str, Any], str]:
    """The task's identity, once the broker and the task are known to go together."""
    check_broker(broker)
    identity = task_identity(task)
    check_task_broker(broker, task)
    return identity


class MapReduce:
    """Fan-out and fan-in over items (all methods are static).

    Every method takes the same options, keyword-only after ``max_parallel``: ``on_error``,
    ``retry``, ``timeout`` (the whole call), ``tracking``, ``rate`` and ``burst`` (the mapped
    task's starts), ``worker_pool``, ``dead_letters``, ``on_progress``; the task's own keyword
    arguments go in ``kwargs={...}``, so a misspelled option is an error, never a task argument.
    ``max_parallel`` here is the pipeline's: it bounds every task of the call in flight at once
    (a ``map_reduce``'s map and reduce together).
    """

    @staticmethod
    async def map(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        param_name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        rate: float | None = None,
        burst: int = 1,
        worker_pool: ResourceAwareWorkerPool | None = None,
        dead_letters: DeadLetterQueue | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        **task_kwargs: Any,
    ) -> list[Any]:
        """Runs ``task`` on every item and returns the results in item order.

        :param items: the items; each is passed as the first argument (or as ``param_name``).
        :param max_parallel: most tasks in flight at once (``None``: all).
        :param kwargs: further keyword arguments for every call of the task.
        :param timeout: seconds the whole map may take.
        :param worker_pool: place each call on a worker with room for it.
        :param rate: at most this many calls started per second, in bursts of ``burst``.
        :param on_progress: called with ``(finished, total)`` as calls complete.
        :param task_kwargs: deprecated: give them as ``kwargs={...}`` (a misspelled option would
            otherwise be sent as a task argument); one the task has no parameter for is refused.
        :raises UnserializableError: before anything is sent, if an item cannot be sent or would
            arrive changed (naming the step and the item).
        :raises TypeError: a keyword that is neither an option nor a parameter of the task.
        :raises StepFailedError: a call failed for good (``results``: ``{item index: value}`` of
            the calls that finished).
        """
        task_name, labels, name = _identity(broker, task)
        call_kwargs = _task_kwargs(task, kwargs, task_kwargs, "map")
        settings = Settings.build(
            max_parallel=max_parallel,
            on_error=on_error,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            worker_pool=worker_pool,
            dead_letters=dead_letters,
            on_progress=on_progress,
            name=f"map:{name}",
        )
        step_rate, step_burst = check_rate(rate, burst)
        values = list(items)

        def call(node: int, _results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if param_name is None:
                return (values[node],), call_kwargs
            return (), {**call_kwargs, param_name: values[node]}

        step = StepSpec(
            name,
            task_name,
            labels,
            tasks=len(values),
            resources=resources_of(task),
            rate=step_rate,
            burst=step_burst,
        )
        check_calls(broker, task_name, [call(i, ()) for i in range(len(values))], name)
        plan = Plan(len(values), [], [], [step], call)
        run = Runner(broker, plan, settings)
        try:
            return await run.execute()
        except StepFailedError as err:
            err.results = run.finished_results()  # {item index: value} of what finished
            raise

    @staticmethod
    async def reduce(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        initial: Any = _NO_INITIAL,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        rate: float | None = None,
        burst: int = 1,
        worker_pool: ResourceAwareWorkerPool | None = None,
        dead_letters: DeadLetterQueue | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Combines the items pairwise with ``task(left, right)`` in a balanced tree.

        Takes the options of :meth:`map`; a reduce's calls depend on each other, so
        ``on_error="continue"`` only lets the independent pairs finish.

        :param initial: the result for no items (without it, no items is an error).
        :raises DataflowError: no items and no ``initial``.
        """
        task_name, labels, name = _identity(broker, task)
        settings = Settings.build(
            max_parallel=max_parallel,
            on_error=on_error,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            worker_pool=worker_pool,
            dead_letters=dead_letters,
            on_progress=on_progress,
            name=f"reduce:{name}",
        )
        step_rate, step_burst = check_rate(rate, burst)
        values = list(items)
        if initial is not _NO_INITIAL:
            values.insert(0, initial)
        if not values:
            raise DataflowError("reduce of no items needs an initial value")
        if len(values) == 1:
            return values[0]
        check_calls(broker, task_name, [((v,), {}) for v in values], name)
        operands, sources, targets, _ = _reduce_tree(len(values), 0)

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            pair = operands[node]
            return tuple(values[i] if kind == "leaf" else results[i] for kind, i in pair), {}

        step = StepSpec(
            name,
            task_name,
            labels,
            tasks=len(operands),
            resources=resources_of(task),
            rate=step_rate,
            burst=step_burst,
        )
        plan = Plan(len(operands), sources, targets, [step], call)
        return (await Runner(broker, plan, settings).execute())[-1]

    @staticmethod
    async def map_reduce(
        broker: AsyncBroker,
        map_task: object,
        reduce_task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        rate: float | None = None,
        burst: int = 1,
        worker_pool: ResourceAwareWorkerPool | None = None,
        dead_letters: DeadLetterQueue | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Maps then reduces in one run: each pair is combined as soon as both sides are ready;
        ``max_parallel`` bounds map and reduce tasks together. Takes the options of :meth:`map`
        (``rate`` bounds the map's calls).

        :raises DataflowError: no items.
        """
        map_name, map_labels, map_display = _identity(broker, map_task)
        red_name, red_labels, red_display = _identity(broker, reduce_task)
        settings = Settings.build(
            max_parallel=max_parallel,
            on_error=on_error,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            worker_pool=worker_pool,
            dead_letters=dead_letters,
            on_progress=on_progress,
            name=f"map_reduce:{map_display}:{red_display}",
        )
        step_rate, step_burst = check_rate(rate, burst)
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

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if node < n:
                return (values[node],), {}
            return tuple(results[ref] for _, ref in operands[node - n]), {}

        check_calls(broker, map_name, [((v,), {}) for v in values], map_display)

        steps = [
            StepSpec(
                map_display,
                map_name,
                map_labels,
                tasks=n,
                resources=resources_of(map_task),
                rate=step_rate,
                burst=step_burst,
            ),
            StepSpec(
                red_display,
                red_name,
                red_labels,
                tasks=len(operands),
                resources=resources_of(reduce_task),
            ),
        ]
        step_of = [0] * n + [1] * len(operands)
        plan = Plan(n + len(operands), sources, targets, steps, call, step_of)
        results = await Runner(broker, plan, settings).execute()
        return results[final[1]]

    @staticmethod
    async def stream(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any] | AsyncIterable[Any],
        max_parallel: int = 64,
        *,
        ordered: bool = False,
        kwargs: Mapping[str, Any] | None = None,
        on_error: OnError = "fail",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        tracking: PipelineTrackingManager | None = None,
        rate: float | None = None,
        burst: int = 1,
        worker_pool: ResourceAwareWorkerPool | None = None,
        dead_letters: DeadLetterQueue | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        **task_kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Runs ``task`` on each item of a (possibly endless, possibly async) iterable and yields
        results as they complete (in item order with ``ordered=True``).

        A window of ``max_parallel`` nodes runs on the same runner as every pipeline (same caps,
        retries, dead letters, cancellation and tracking): each node that finishes is loaded with
        the next item. Only the window is held in memory, so a million items stream in the memory
        of ``max_parallel``. With ``on_error="continue"`` every item runs: those that failed for
        good are dead-lettered, and :class:`StepFailedError` comes after the last result. Takes
        the options of :meth:`map` (``timeout`` bounds the whole stream).

        :param on_progress: called with ``(items finished, items taken from the source so far)``
            as calls complete.
        :param task_kwargs: deprecated, as in :meth:`map`.
        :raises StepFailedError: a call failed for good (nothing more is sent).
        """
        task_name, labels, name = _identity(broker, task)
        call_kwargs = _task_kwargs(task, kwargs, task_kwargs, "stream")
        settings = Settings.build(
            max_parallel=max_parallel,
            on_error=on_error,
            retry=retry,
            timeout=timeout,
            tracking=tracking,
            worker_pool=worker_pool,
            dead_letters=dead_letters,
            name=f"stream:{name}",
        )
        step_rate, step_burst = check_rate(rate, burst)
        window = settings.max_parallel
        if window is None:
            raise InvalidValueError("stream needs a max_parallel (an int >= 1) to bound memory")
        feed = _StreamFeed(_aiter(items), window, ordered, on_progress)
        await feed.prime()
        if not feed.loaded:
            return
        slots = feed.slots
        step = StepSpec(
            name,
            task_name,
            labels,
            tasks=len(feed.loaded),
            resources=resources_of(task),
            rate=step_rate,
            burst=step_burst,
        )
        plan = Plan(
            len(feed.loaded),
            [],
            [],
            [step],
            lambda node, _results: ((slots[node],), call_kwargs),
        )
        runner = Runner(broker, plan, settings, feed=feed)
        feed.runner = runner
        run = asyncio.get_running_loop().create_task(runner.execute())
        run.add_done_callback(feed.finished)
        try:
            while True:
                value = await feed.next_value()
                if value is _DONE:
                    break
                yield value
            await run  # raises what ended the run
        finally:
            feed.closed = True
            feed.space.set()
            if not run.done():
                runner.cancel()
                with contextlib.suppress(Exception):  # stopped by us: what it raises is not news
                    await run


class _StreamFeed:
    """Loads stream items into the window's nodes and hands results to the consumer.

    At most ``window`` items are pulled from the source and not yet handed to the consumer
    (running, or finished and buffered), whatever the consumer's pace: so memory is one window, and
    an idle consumer pauses the stream. The runner is held only when nothing is in flight (every
    result is then in the consumer's buffer, so holding it cannot block what the consumer awaits).
    """

    def __init__(
        self,
        source: AsyncIterator[Any],
        window: int,
        ordered: bool,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.source = source
        self.on_progress = on_progress
        #: Items finished (delivered or failed for good).
        self.done_count = 0
        self.window = window
        self.ordered = ordered
        self.slots: list[Any] = []
        self.seq_of: list[int] = []
        self.loaded: list[int] = []
        self.exhausted = False
        self.next_seq = 0
        self.next_out = 0
        #: Items handed to the consumer, or skipped because they failed.
        self.consumed = 0
        self.in_flight = 0
        self.reorder: dict[int, Any] = {}
        self.held: list[int] = []
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.space = asyncio.Event()
        self.runner: Runner | None = None
        #: The consumer stopped iterating: load nothing more.
        self.closed = False

    async def _next_item(self) -> tuple[bool, Any]:
        if self.exhausted:
            return False, None
        try:
            return True, await anext(self.source)
        except StopAsyncIteration:
            self.exhausted = True
            return False, None

    def _load(self, node: int, item: Any) -> None:
        self.slots[node] = item
        self.seq_of[node] = self.next_seq
        self.next_seq += 1
        self.in_flight += 1

    async def prime(self) -> None:
        """Loads the first window."""
        while len(self.slots) < self.window:
            ok, item = await self._next_item()
            if not ok:
                break
            self.slots.append(None)
            self.seq_of.append(0)
            self._load(len(self.slots) - 1, item)
            self.loaded.append(len(self.slots) - 1)

    def delivered(self, node: int, value: Any) -> None:
        self._arrive(self.seq_of[node], value)

    def skipped(self, node: int) -> None:
        self._arrive(self.seq_of[node], _SKIPPED)

    def _arrive(self, seq: int, value: Any) -> None:
        self.in_flight -= 1
        self.done_count += 1
        if self.on_progress is not None:
            self.on_progress(self.done_count, self.next_seq)
        if not self.ordered:
            self._put(value)
            return
        self.reorder[seq] = value
        while self.next_out in self.reorder:
            self._put(self.reorder.pop(self.next_out))
            self.next_out += 1

    def _put(self, value: Any) -> None:
        if value is _SKIPPED:
            self.consumed += 1
            self.space.set()
        else:
            self.out.put_nowait(value)

    async def refill(self, nodes: list[int]) -> list[int]:
        self.held.extend(nodes)
        again: list[int] = []
        while self.held and not self.exhausted and not self.closed:
            if self.next_seq - self.consumed >= self.window:
                if self.in_flight > 0:
                    break  # the next completion comes back here
                self.space.clear()
                await self.space.wait()
                continue
            ok, item = await self._next_item()
            if not ok:
                break
            node = self.held.pop()
            self._load(node, item)
            again.append(node)
        if self.runner is not None and again:
            self.runner.events.step_grew(0, self.next_seq)
        return again

    def finished(self, run: asyncio.Task[list[Any]]) -> None:
        """The run ended: the consumer gets what is buffered, then the end (or the error)."""
        for seq in sorted(self.reorder):
            value = self.reorder.pop(seq)
            if value is not _SKIPPED:
                self.out.put_nowait(value)
        self.out.put_nowait(_DONE)

    async def next_value(self) -> Any:
        value = await self.out.get()
        if value is not _DONE:
            self.consumed += 1
            self.space.set()
        return value


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
