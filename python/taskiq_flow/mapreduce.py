"""Map-reduce: a fan-out over items and a fan-in by pairs, on the same engine as every pipeline.

::

    squares = await MapReduce.map(broker, square, range(10_000), max_parallel=15)
    total = await MapReduce.reduce(broker, add, squares)
    total = await MapReduce.map_reduce(broker, square, add, range(10_000))   # one DAG

    async for value in MapReduce.stream(broker, square, huge_iterable, max_parallel=64):
        ...  # results as they complete; memory bounded by what is in flight

Every call takes the run options of every pipeline as keywords (``run_timeout=``, ``retry=``,
``on_error=``, ``tracking=``, ``worker_pool=``, ``dead_letters=``, ``on_progress=``, ``name=``);
the task's own keyword arguments go in ``kwargs={...}``.

``map`` returns results in input order. ``reduce`` combines values pairwise in a balanced tree
(``task(left, right)``, so the task must be associative), ``log2(n)`` levels deep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import warnings
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

from taskiq import AsyncBroker
from typing_extensions import Unpack

from taskiq_flow.exceptions import DataflowError, InvalidValueError, Skip, StepFailedError
from taskiq_flow.once import IdempotencyKey, run_keyed
from taskiq_flow.resources import resources_of
from taskiq_flow.run.checks import check_calls
from taskiq_flow.run.plan import (
    MISSING,
    PassOn,
    Plan,
    StepSpec,
    attempt_timeout,
    check_broker,
    check_task_broker,
    check_task_keywords,
    declared_cap,
    task_identity,
)
from taskiq_flow.run.runner import Runner
from taskiq_flow.run.settings import (
    RunOptionValues,
    Settings,
    check_rate,
    option_names,
    unknown_option,
)

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


#: A ``MapReduce`` call's own options besides the run options, for the error naming a misspelled
#: one.
_CALL_OPTIONS = ("max_parallel", "param_name", "kwargs", "initial", "ordered", "rate", "burst")


def _settings(
    call: str,
    name: str,
    max_parallel: int | None,
    options: Mapping[str, Any],
    task: object = None,
) -> tuple[Settings, dict[str, Any]]:
    """The settings of a call from its run options, and (deprecated) the extra keywords of a call
    that takes task arguments (``task`` given): each must be a parameter of the task, so that a
    misspelled option is an error instead of a task argument.

    :raises InvalidValueError: for a bad option value.
    :raises TypeError: for a keyword that is neither an option nor (for ``map`` and ``stream``)
        a parameter of the task, naming the closest option.
    """
    where = f"MapReduce.{call}()"
    names = option_names()
    run = {"name": name, "max_parallel": max_parallel}
    legacy: dict[str, Any] = {}
    for key, value in options.items():
        if key in names:
            run[key] = value
        elif task is None:
            raise unknown_option(where, key, _CALL_OPTIONS)
        else:
            legacy[key] = value
    settings = Settings().given(where, run, stacklevel=3)
    if legacy:
        check_task_keywords(task, legacy, where, [*names, *_CALL_OPTIONS])
        warnings.warn(
            f"{where[:-1]}..., {', '.join(f'{k}=...' for k in legacy)}): give the task's "
            f"arguments as kwargs={{...}}; extra keywords are deprecated",
            DeprecationWarning,
            stacklevel=3,
        )
    return settings, legacy


def _step(
    broker: AsyncBroker, task: object, tasks: int, rate: float | None, burst: int
) -> StepSpec:
    """The step of a call's task, once the broker and the task are known to go together: its
    attempt timeout (the task's ``timeout`` label) and rate checked here."""
    check_broker(broker)
    task_name, labels, name = task_identity(task)
    check_task_broker(broker, task)
    step_rate, step_burst = check_rate(rate, burst)
    return StepSpec(
        name,
        task_name,
        labels,
        max_parallel=declared_cap(task),
        timeout=attempt_timeout(labels, name),
        tasks=tasks,
        resources=resources_of(task),
        rate=step_rate,
        burst=step_burst,
    )


async def _once(
    keyed: IdempotencyKey | None,
    settings: Settings,
    execute: Callable[[str | None], Awaitable[Any]],
) -> Any:
    """Runs ``execute`` (with a new run id), or once per key (see :mod:`taskiq_flow.once`; a
    call has no resume: a run whose orchestrator died is started again by the next trigger)."""
    if keyed is None:
        return await execute(None)

    async def start(pipeline_id: str, _resuming: bool) -> Any:
        return await execute(pipeline_id)

    return await run_keyed(keyed, settings.name, start, resumable=False)


class MapReduce:
    """Fan-out and fan-in over items (all methods are static).

    Every method takes ``max_parallel`` and the run options of every pipeline as keywords
    (:class:`~taskiq_flow.run.settings.RunOptionValues`: ``run_timeout`` bounds the whole call,
    ``on_error``, ``retry``, ``tracking``, ``worker_pool``, ``dead_letters``, ``on_progress``,
    ``name``), and ``rate`` and ``burst`` (the mapped task's starts). The task's own keyword
    arguments go in ``kwargs={...}``, so a misspelled option is an error, never a task argument;
    one attempt of a task is bounded by its own ``timeout`` (taskiq's label).
    ``max_parallel`` here is the pipeline's: it bounds every task of the call in flight at once
    (a ``map_reduce``'s map and reduce together). ``map``, ``reduce`` and ``map_reduce`` take
    ``idempotency_key=`` (a str, or an :class:`~taskiq_flow.once.IdempotencyKey` for its TTL and
    store): one run per key, scoped by the call's ``name`` (see :mod:`taskiq_flow.once`).
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
        rate: float | None = None,
        burst: int = 1,
        idempotency_key: str | IdempotencyKey | None = None,
        **options: Unpack[RunOptionValues],
    ) -> list[Any]:
        """Runs ``task`` on every item and returns the results in item order.

        :param items: the items; each is passed as the first argument (or as ``param_name``).
        :param max_parallel: most tasks in flight at once (``None``: all).
        :param kwargs: further keyword arguments for every call of the task.
        :param rate: at most this many calls started per second, in bursts of ``burst``.
        :param idempotency_key: one run per key: a second call with the key attaches to the
            live run or returns the stored result (see :mod:`taskiq_flow.once`).
        :param options: the run options (``run_timeout``: seconds the whole map may take;
            ``on_progress``: called with ``(finished, total)`` as calls complete; ...). Deprecated:
            the task's keyword arguments given here (give them as ``kwargs={...}``); one the task
            has no parameter for is refused.
        :raises UnserializableError: before anything is sent, if an item cannot be sent or would
            arrive changed (naming the step and the item).
        :raises TypeError: a keyword that is neither an option nor a parameter of the task.
        :raises StepFailedError: a call failed for good (``results``: ``{item index: value}`` of
            the calls that finished).
        """
        keyed = IdempotencyKey.of(idempotency_key)
        values = list(items)
        step = _step(broker, task, len(values), rate, burst)
        settings, legacy = _settings("map", f"map:{step.name}", max_parallel, options, task)
        call_kwargs = {**(kwargs or {}), **legacy}

        def call(node: int, _results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if param_name is None:
                return (values[node],), call_kwargs
            return (), {**call_kwargs, param_name: values[node]}

        check_calls(broker, step.task_name, [call(i, ()) for i in range(len(values))], step.name)
        plan = Plan(len(values), [], [], [step], call)

        async def execute(pipeline_id: str | None) -> list[Any]:
            run = Runner(broker, plan, settings, pipeline_id=pipeline_id)
            try:
                results = await run.execute()
            except StepFailedError as err:
                err.results = run.finished_results()  # {item index: value} of what finished
                raise
            return [v for v in results[: len(values)] if v is not MISSING]  # skipped: left out

        mapped: list[Any] = await _once(keyed, settings, execute)
        return mapped

    @staticmethod
    async def reduce(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        initial: Any = _NO_INITIAL,
        rate: float | None = None,
        burst: int = 1,
        idempotency_key: str | IdempotencyKey | None = None,
        **options: Unpack[RunOptionValues],
    ) -> Any:
        """Combines the items pairwise with ``task(left, right)`` in a balanced tree.

        Takes the options of :meth:`map`; a reduce's calls depend on each other, so
        ``on_error="continue"`` only lets the independent pairs finish.

        :param initial: the result for no items (without it, no items is an error).
        :raises DataflowError: no items and no ``initial``.
        :raises TypeError: an unknown option (naming the closest).
        """
        keyed = IdempotencyKey.of(idempotency_key)
        values = list(items)
        if initial is not _NO_INITIAL:
            values.insert(0, initial)
        step = _step(broker, task, max(len(values) - 1, 0), rate, burst)  # n - 1 pairs
        settings, _ = _settings("reduce", f"reduce:{step.name}", max_parallel, options)
        if not values:
            raise DataflowError("reduce of no items needs an initial value")
        if len(values) == 1:
            return values[0]
        operands, sources, targets, _ = _reduce_tree(len(values), 0)
        check_calls(broker, step.task_name, [((v,), {}) for v in values], step.name)

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            pair = operands[node]
            return tuple(values[i] if kind == "leaf" else results[i] for kind, i in pair), {}

        plan = Plan(len(operands), sources, targets, [step], call)

        async def execute(pipeline_id: str | None) -> Any:
            return (await Runner(broker, plan, settings, pipeline_id=pipeline_id).execute())[-1]

        return await _once(keyed, settings, execute)

    @staticmethod
    async def map_reduce(
        broker: AsyncBroker,
        map_task: object,
        reduce_task: object,
        items: Iterable[Any],
        max_parallel: int | None = None,
        *,
        rate: float | None = None,
        burst: int = 1,
        idempotency_key: str | IdempotencyKey | None = None,
        **options: Unpack[RunOptionValues],
    ) -> Any:
        """Maps then reduces in one run: each pair is combined as soon as both sides are ready;
        ``max_parallel`` bounds map and reduce tasks together. Takes the options of :meth:`map`
        (``rate`` bounds the map's calls).

        :raises DataflowError: no items.
        :raises TypeError: an unknown option (naming the closest).
        """
        keyed = IdempotencyKey.of(idempotency_key)
        values = list(items)
        n = len(values)
        map_step = _step(broker, map_task, n, rate, burst)
        reduce_step = _step(broker, reduce_task, max(n - 1, 0), None, 1)  # n - 1 pairs
        settings, _ = _settings(
            "map_reduce", f"map_reduce:{map_step.name}:{reduce_step.name}", max_parallel, options
        )
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
            present = tuple(
                v for v in (results[ref] for _, ref in operands[node - n]) if v is not MISSING
            )
            if len(present) == 2:
                return present, {}
            if present:  # the other side was skipped: this one is handed on as it is
                raise PassOn(present[0])
            raise Skip("every item it combines was skipped")

        check_calls(broker, map_step.task_name, [((v,), {}) for v in values], map_step.name)
        step_of = [0] * n + [1] * len(operands)
        # Optional edges: a skipped item is left out of the reduction.
        plan = Plan(
            n + len(operands),
            sources,
            targets,
            [map_step, reduce_step],
            call,
            step_of,
            optional=[True] * len(sources),
        )

        async def execute(pipeline_id: str | None) -> Any:
            results = await Runner(broker, plan, settings, pipeline_id=pipeline_id).execute()
            if results[final[1]] is MISSING:
                raise DataflowError("map_reduce has no result: every item was skipped")
            return results[final[1]]

        return await _once(keyed, settings, execute)

    @staticmethod
    async def stream(
        broker: AsyncBroker,
        task: object,
        items: Iterable[Any] | AsyncIterable[Any],
        max_parallel: int = 64,
        *,
        ordered: bool = False,
        kwargs: Mapping[str, Any] | None = None,
        rate: float | None = None,
        burst: int = 1,
        **options: Unpack[RunOptionValues],
    ) -> AsyncIterator[Any]:
        """Runs ``task`` on each item of a (possibly endless, possibly async) iterable and yields
        results as they complete (in item order with ``ordered=True``).

        A window of ``max_parallel`` nodes runs on the same runner as every pipeline (same caps,
        retries, dead letters, cancellation and tracking): each node that finishes is loaded with
        the next item. Only the window is held in memory, so a million items stream in the memory
        of ``max_parallel``. With ``on_error="continue"`` every item runs: those that failed for
        good are dead-lettered, and :class:`StepFailedError` comes after the last result. Takes
        the options of :meth:`map` (``run_timeout`` bounds the whole stream; ``on_progress`` is
        called with ``(items finished, items taken from the source so far)``).

        :raises StepFailedError: a call failed for good (nothing more is sent).
        :raises TypeError: a keyword that is neither an option nor a parameter of the task.
        """
        step = _step(broker, task, 0, rate, burst)
        settings, legacy = _settings("stream", f"stream:{step.name}", max_parallel, options, task)
        call_kwargs = {**(kwargs or {}), **legacy}
        window = settings.max_parallel
        if window is None:
            raise InvalidValueError("stream needs a max_parallel (an int >= 1) to bound memory")
        # The feed reports progress by items, not by the window's nodes.
        feed = _StreamFeed(_aiter(items), window, ordered, settings.on_progress)
        settings = dataclasses.replace(settings, on_progress=None)
        await feed.prime()
        if not feed.loaded:
            return
        slots = feed.slots
        step.tasks = len(feed.loaded)
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
