"""Sequential pipelines, a drop-in for taskiq-pipelines' ``Pipeline``.

::

    pipeline = (
        Pipeline(broker, fetch_ids)              # the first task gets kiq()'s arguments
        .map(load_item, max_parallel=10)         # one task per item of the previous result
        .filter(is_valid)                        # keep the items for which the task is truthy
        .call_next(summarize)                    # previous result as first argument
        .group([to_csv, to_json])                # several tasks on the same input, at once
    )
    handle = await pipeline.kiq(day="2026-11-30")
    result = await handle.wait_result()          # a taskiq TaskiqResult
    print(result.return_value)

``map`` also takes the guide's form with explicit items: ``pipeline.map(process, items,
max_parallel=10)`` runs ``process`` on each of ``items`` (the previous result is not used), as the
first step or any later one. A first ``map`` or ``filter`` without items takes them from
``kiq(items)``.

``max_parallel`` on a step bounds that step; ``Pipeline(broker, max_parallel=n)`` (or
``with_max_parallel``) bounds the pipeline's tasks in flight, all steps together;
``run_timeout=`` (or ``with_run_timeout(s)``) bounds the whole run, a task's own ``timeout``
(taskiq's label) one attempt of it. Every run option is a keyword of ``Pipeline(...)`` and a
``with_*`` method; the steps' extra keywords are the task's arguments, so each must be a
parameter of the task (a misspelled option is an error).

Each step runs on the engine every pipeline shares: a map is a fan-out whose ``max_parallel`` the
Rust core enforces, and completions arrive as events, so ``wait_result()`` never polls the result
backend and a map of any size completes on a default ``InMemoryBroker()``.
"""

from __future__ import annotations

import asyncio
import difflib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from taskiq import AsyncBroker, TaskiqResult
from typing_extensions import Unpack

from taskiq_flow.events import FlowMiddleware
from taskiq_flow.exceptions import (
    DataflowError,
    StepFailedError,
    UnknownIdError,
)
from taskiq_flow.once import IdempotencyKey, can_resume, start_keyed
from taskiq_flow.resources import TaskResources, resources_of
from taskiq_flow.run.checks import check_calls
from taskiq_flow.run.options import RunOptions
from taskiq_flow.run.plan import (
    MISSING,
    EachSpec,
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
    check_max_parallel,
    check_rate,
)

__all__ = ["EMPTY_PARAM_NAME", "Pipeline", "PipelineMiddleware", "PipelineRun"]

#: ``param_name`` that passes nothing on (as in taskiq-pipelines).
EMPTY_PARAM_NAME: Literal[-1] = -1

StepKind = Literal["sequential", "map", "filter", "group"]

#: A step's own options, for the error naming a misspelled one.
_STEP_OPTIONS = (
    "items",
    "max_parallel",
    "param_name",
    "skip_errors",
    "check_interval",
    "rate",
    "burst",
)


class PipelineMiddleware(FlowMiddleware):
    """The middleware taskiq-pipelines users add to their broker; here it reports completions.

    Adding it is optional in one process (pipelines add what they need); add it (or
    :class:`~taskiq_flow.events.FlowMiddleware`) to the broker of worker processes.
    """


@dataclass(slots=True)
class _Step:
    kind: StepKind
    tasks: list[tuple[str, dict[str, Any], str]]
    resources: list[TaskResources]
    #: Each task's attempt timeout (its ``timeout`` label), checked when the step was added.
    timeouts: list[float | None]
    param_name: str | int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    items: list[Any] | None = None
    max_parallel: int | None = None
    skip_errors: bool = False
    rate: float | None = None
    burst: int = 1

    @property
    def name(self) -> str:
        names = ", ".join(t[2] for t in self.tasks)
        return names if self.kind == "sequential" else f"{self.kind}({names})"


def _call(step: _Step, value: Any, passes: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not passes or step.param_name == EMPTY_PARAM_NAME:
        return (), dict(step.kwargs)
    if step.param_name is None:
        return (value,), dict(step.kwargs)
    return (), {**step.kwargs, str(step.param_name): value}


class PipelineRun:
    """A running pipeline: await :meth:`wait_result`, or :meth:`cancel` it.

    Shaped like taskiq's ``AsyncTaskiqTask`` (``is_ready``, ``get_result``, ``wait_result``).
    """

    def __init__(
        self,
        task: asyncio.Task[TaskiqResult[Any]],
        pipeline_id: str,
        stop: Any,
        runs: list[Runner] | None = None,
        steps: Sequence[str] = (),
    ) -> None:
        self._task = task
        self.pipeline_id = pipeline_id
        self.task_id = pipeline_id
        self._stop = stop
        self._runs = runs if runs is not None else []
        self._steps = tuple(steps)

    def explain(self, step: str) -> str:
        """Why ``step`` is where it is, in one sentence, while it runs (a step not started yet, or
        finished, says so).

        :raises UnknownIdError: if the pipeline has no step of that name (naming the steps).
        """
        if self._steps and step not in self._steps:
            close = difflib.get_close_matches(step, self._steps, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownIdError(
                f"no step named {step!r} in this pipeline (its steps: "
                f"{', '.join(map(repr, self._steps))}){hint}"
            )
        for run in self._runs:
            if any(spec.name == step for spec in run.plan.steps):
                return run.explain(step)
        return f"not running: step {step!r} has not started or has finished"

    async def is_ready(self) -> bool:
        """Whether the pipeline has finished."""
        return self._task.done()

    async def get_result(self, with_logs: bool = False) -> TaskiqResult[Any]:
        """The result of a finished pipeline (waits if it is still running)."""
        return await asyncio.shield(self._task)

    async def wait_result(
        self, check_interval: float = 0.2, timeout: float = -1, with_logs: bool = False
    ) -> TaskiqResult[Any]:
        """Waits for the pipeline and returns its result (``return_value``, ``is_err``,
        ``error``). ``check_interval`` is accepted for compatibility; nothing is polled.

        :raises TimeoutError: if ``timeout`` (seconds, -1 for none) passes first.
        """
        if timeout is None or timeout < 0:
            return await asyncio.shield(self._task)
        return await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def cancel(self) -> None:
        """Cancels the pipeline: no new task starts; the result is an error."""
        self._stop()


class Pipeline(RunOptions):
    """A sequence of steps, each fed the previous step's result.

    :param broker: the taskiq broker.
    :param task: an optional first task (same as ``call_next(task)``).
    :param max_parallel: most tasks of one run in flight at once, all steps together.
    :param options: the run options, as the ``with_*`` methods set them (``run_timeout``,
        ``on_error``, ``retry``, ``tracking``, ``dead_letters``, ``worker_pool``,
        ``on_progress``, ``name``).
    :raises InvalidValueError: for a bad value of any of these (checked here, once, by the rule
        of :mod:`taskiq_flow.run.settings`).
    :raises TypeError: for an unknown option (naming the closest).
    """

    def __init__(
        self,
        broker: AsyncBroker,
        task: object | None = None,
        *,
        max_parallel: int | None = None,
        **options: Unpack[RunOptionValues],
    ) -> None:
        check_broker(broker)
        self.broker = broker
        self.steps: list[_Step] = []
        self.settings = Settings(name="pipeline").given(
            "Pipeline()", {"max_parallel": max_parallel, **options}
        )
        self.pipeline_id: str | None = None
        if task is not None:
            self.call_next(task)

    # -- building --------------------------------------------------------------------------------

    def call_next(
        self, task: object, param_name: str | int | None = None, **additional_kwargs: Any
    ) -> Pipeline:
        """Adds a step that gets the previous result as its first argument, or as keyword
        ``param_name``, or not at all with ``param_name=-1``.

        :raises TypeError: for an extra keyword the task has no parameter for.
        """
        self.steps.append(
            _Step(
                "sequential",
                *self._step_tasks([task], additional_kwargs, "call_next"),
                param_name,
                additional_kwargs,
            )
        )
        return self

    def call_after(self, task: object, **additional_kwargs: Any) -> Pipeline:
        """Adds a step that runs after the previous one without getting its result."""
        return self.call_next(task, EMPTY_PARAM_NAME, **additional_kwargs)

    def map(
        self,
        task: object,
        items: Iterable[Any] | str | None = None,
        max_parallel: int | None = None,
        *,
        param_name: str | None = None,
        skip_errors: bool = False,
        check_interval: float = 0.5,
        rate: float | None = None,
        burst: int = 1,
        **additional_kwargs: Any,
    ) -> Pipeline:
        """Adds a fan-out: ``task`` on every item, results in item order.

        The items are ``items`` if given, else the previous step's result. taskiq-pipelines'
        positional ``param_name`` (a string in second place) is accepted too.

        :param max_parallel: most of these tasks in flight at once.
        :param skip_errors: drop failed items instead of failing the pipeline.
        :param check_interval: accepted for compatibility; nothing is polled.
        :param rate: at most this many of these tasks started per second, in bursts of ``burst``.
        :raises TypeError: for an extra keyword the task has no parameter for.
        """
        step_rate, step_burst = check_rate(rate, burst)
        if isinstance(items, str):
            param_name, items = items, None
        self.steps.append(
            _Step(
                "map",
                *self._step_tasks([task], additional_kwargs, "map"),
                param_name,
                additional_kwargs,
                items=list(items) if items is not None else None,
                max_parallel=_step_cap(max_parallel, task),
                skip_errors=skip_errors,
                rate=step_rate,
                burst=step_burst,
            )
        )
        return self

    def filter(
        self,
        task: object,
        param_name: str | None = None,
        skip_errors: bool = False,
        check_interval: float = 0.5,
        max_parallel: int | None = None,
        **additional_kwargs: Any,
    ) -> Pipeline:
        """Keeps the items of the previous result for which ``task(item)`` is truthy.

        :raises TypeError: for an extra keyword the task has no parameter for.
        """
        self.steps.append(
            _Step(
                "filter",
                *self._step_tasks([task], additional_kwargs, "filter"),
                param_name,
                additional_kwargs,
                max_parallel=_step_cap(max_parallel, task),
                skip_errors=skip_errors,
            )
        )
        return self

    def group(
        self,
        tasks: Sequence[object],
        param_name: str | int | None = None,
        max_parallel: int | None = None,
        **additional_kwargs: Any,
    ) -> Pipeline:
        """Runs several tasks at once on the previous result; the result is the list of theirs.

        :raises TypeError: for an extra keyword one of the tasks has no parameter for.
        """
        if not tasks:
            raise DataflowError("group needs at least one task")
        self.steps.append(
            _Step(
                "group",
                *self._step_tasks(tasks, additional_kwargs, "group"),
                param_name,
                additional_kwargs,
                max_parallel=check_max_parallel(max_parallel),
            )
        )
        return self

    def _step_tasks(
        self, tasks: Sequence[object], keywords: dict[str, Any], method: str
    ) -> tuple[list[tuple[str, dict[str, Any], str]], list[TaskResources], list[float | None]]:
        """A step's tasks as :class:`_Step` holds them (identities, resources, attempt timeouts),
        once each is checked: ``keywords`` against its parameters, then its broker and its
        ``timeout`` label.

        :raises TypeError: for a keyword a task has no parameter for (naming ``method``).
        """
        for task in tasks:
            check_task_keywords(task, keywords, f"Pipeline.{method}()", _STEP_OPTIONS)
        identities = []
        timeouts = []
        for task in tasks:
            identity = task_identity(task)
            check_task_broker(self.broker, task)
            identities.append(identity)
            timeouts.append(attempt_timeout(identity[1], identity[2]))
        return identities, [resources_of(task) for task in tasks], timeouts

    # -- running ---------------------------------------------------------------------------------

    async def kiq(self, *args: Any, **kwargs: Any) -> PipelineRun:
        """Starts the pipeline; the first step gets these arguments (a first ``map`` or
        ``filter`` without items of its own takes its items as ``kiq(items)``). A pipeline from
        :meth:`with_idempotency_key` runs once per key (see :mod:`taskiq_flow.once`).

        :raises DataflowError: if the pipeline is empty, or its first step cannot take these
            arguments.
        :raises UnserializableError: if the broker cannot send the first step's arguments, a
            later step's own items or any step's extra keyword arguments, or would deliver them
            changed (naming the step and the item).
        """
        if not self.steps:
            raise DataflowError("Pipeline is empty.")
        step = self.steps[0]
        for task_name, calls in self._first_calls(args, kwargs).items():
            check_calls(self.broker, task_name, calls, step.name)
        self._check_later_steps()
        if self.idempotency_key is not None:
            return await self._start_keyed(self.idempotency_key, args, kwargs)
        return self._start(uuid.uuid4().hex, args, kwargs, {})

    async def _start_keyed(
        self, keyed: IdempotencyKey, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PipelineRun:
        """``kiq`` of a keyed copy: one run per key (see :mod:`taskiq_flow.once`); the handle
        has the key's run id, and its result is that run's (this trigger's own run, the one it
        attached to, or the stored one). ``cancel`` stops the run only where it runs."""
        runs: list[Runner] = []
        stops: list[Any] = []

        async def start(pipeline_id: str, resuming: bool) -> Any:
            if resuming:
                run = await self.resume(pipeline_id, *args, **kwargs)
            else:
                run = self._start(pipeline_id, args, kwargs, {})
            runs.extend(run._runs)
            stops.append(run.cancel)
            result = await run.get_result()
            if result.is_err and result.error is not None:
                raise result.error
            return result.return_value

        pipeline_id, task = await start_keyed(
            keyed, self.settings.name, start, resumable=can_resume(self.tracking)
        )
        self.pipeline_id = pipeline_id

        async def body() -> TaskiqResult[Any]:
            started = time.perf_counter()
            try:
                value = await task
            except Exception as err:
                return _result(started, error=err)
            return _result(started, value)

        def stop() -> None:
            for cancel in stops:
                cancel()

        handle = asyncio.get_running_loop().create_task(body())
        return PipelineRun(handle, pipeline_id, stop, runs, self._step_names())

    def _step_names(self) -> list[str]:
        """The names a run's handle explains: each step's, and each task's of a group."""
        names = [step.name for step in self.steps]
        names += [d for step in self.steps if step.kind == "group" for _n, _l, d in step.tasks]
        return names

    def _check_later_steps(self) -> None:
        """Checks what later steps send that is known now: their own items and extra keyword
        arguments (what comes from the previous step is checked where it ran)."""
        for step in self.steps[1:]:
            task_name = step.tasks[0][0]
            if step.items is not None:
                check_calls(
                    self.broker,
                    task_name,
                    [_call(step, item, True) for item in step.items],
                    step.name,
                )
            elif step.kwargs:
                for name, _labels, _display in step.tasks:
                    check_calls(self.broker, name, [((), step.kwargs)], step.name)

    def _first_calls(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
        """The calls of the first step, by task name, for these ``kiq`` arguments."""
        step = self.steps[0]
        if step.kind in ("sequential", "group"):
            call = (args, {**step.kwargs, **kwargs})
            return {task[0]: [call] for task in step.tasks}
        items = self._first_items(step, args, kwargs)
        return {step.tasks[0][0]: [_call(step, item, True) for item in items]}

    @staticmethod
    def _first_items(step: _Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if step.items is not None:
            if args or kwargs:
                raise DataflowError(
                    f"the first step {step.name} has its own items; kiq() takes no arguments"
                )
            return step.items
        if len(args) != 1 or kwargs:
            raise DataflowError(
                f"the first step {step.name} needs items: give them as map(task, items) or as "
                "kiq(items)"
            )
        try:
            return list(args[0])
        except TypeError:
            raise DataflowError(
                f"the first step {step.name} needs an iterable of items, got "
                f"{type(args[0]).__name__}"
            ) from None

    async def resume(self, pipeline_id: str, *args: Any, **kwargs: Any) -> PipelineRun:
        """Continues ``pipeline_id`` after its orchestrator died: what tracking recorded as
        finished (a step's value, a map's finished items) is not sent again; the rest is. Give
        the first step's arguments again.

        :raises DataflowError: without tracking (there is nothing to resume from).
        """
        if self.tracking is None:
            raise DataflowError("resume needs the tracking the run was recorded in")
        if not self.steps:
            raise DataflowError("Pipeline is empty.")
        done = await self.tracking.load_results(pipeline_id)
        grown = await self.tracking.load_growth(pipeline_id)
        return self._start(pipeline_id, args, kwargs, done, grown)

    def _start(
        self,
        pipeline_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        restored: dict[int, Any],
        grown: Sequence[dict[str, Any]] = (),
    ) -> PipelineRun:
        self.pipeline_id = pipeline_id
        plan, nodes_of = self._plan(args, kwargs)
        run = Runner(
            self.broker,
            plan,
            self.settings,
            pipeline_id=pipeline_id,
            restored=restored,
            grown=grown,
        )
        steps = self.steps

        async def body() -> TaskiqResult[Any]:
            started = time.perf_counter()
            try:
                results = await run.execute()
            except Exception as err:
                if isinstance(err, StepFailedError):
                    err.results = self._partial(run.results, nodes_of, run)
                return _result(started, error=err)
            value = _value_of(steps[-1], nodes_of[-1], results)
            skipped = run.skipped_steps()
            return _result(
                started,
                None if value is MISSING else value,
                labels={"skipped": skipped} if skipped else None,
            )

        task = asyncio.get_running_loop().create_task(body())
        return PipelineRun(task, pipeline_id, run.cancel, [run], self._step_names())

    def _plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Plan, list[list[int]]]:
        """The whole pipeline as one plan: a node per step (a group: one per task), each after
        the previous step's; a ``map`` or ``filter`` node is given one child per item when the
        previous value is known. Returns it and each step's nodes."""
        specs: list[StepSpec] = []
        step_of: list[int] = []
        sources: list[int] = []
        targets: list[int] = []
        each: dict[int, EachSpec] = {}
        builders: list[Any] = []
        nodes_of: list[list[int]] = []
        for k, step in enumerate(self.steps):
            tasks = step.tasks if step.kind == "group" else step.tasks[:1]
            own: list[int] = []
            for (name, labels, display), needs, timeout in zip(
                tasks, step.resources, step.timeouts
            ):
                node = len(step_of)
                own.append(node)
                step_of.append(len(specs))
                specs.append(
                    StepSpec(
                        display if step.kind == "group" else step.name,
                        name,
                        labels,
                        max_parallel=step.max_parallel,
                        timeout=timeout,
                        resources=needs,
                        rate=step.rate,
                        burst=step.burst,
                        limit_group=("step", k),
                        limit_name=step.name,
                        skip_errors=step.skip_errors,
                    )
                )
                for before in nodes_of[-1] if nodes_of else ():
                    sources.append(before)
                    targets.append(node)
                if step.kind in ("map", "filter"):
                    each[node] = self._each(k, step, args, kwargs, nodes_of)
                    builders.append(None)
                elif k == 0:
                    call = (args, {**step.kwargs, **kwargs})
                    builders.append(lambda _results, call=call: call)
                else:
                    builders.append(self._sequential(step, self.steps[k - 1], nodes_of[-1]))
            nodes_of.append(own)

        def build(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            made: tuple[tuple[Any, ...], dict[str, Any]] = builders[node](results)
            return made

        plan = Plan(len(step_of), sources, targets, specs, build, step_of, each=each or None)
        return plan, nodes_of

    @staticmethod
    def _sequential(step: _Step, before: _Step, nodes: list[int]) -> Any:
        def build(results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return _call(step, _value_of(before, nodes, results), True)

        return build

    def _each(
        self,
        k: int,
        step: _Step,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        nodes_of: list[list[int]],
    ) -> EachSpec:
        """How a ``map`` or ``filter`` step finds its items and calls its task on one."""
        before = self.steps[k - 1] if k else None
        nodes = nodes_of[-1] if nodes_of else []
        first_items = self._first_items(step, args, kwargs) if k == 0 else None

        def items(results: Sequence[Any]) -> list[Any]:
            if step.items is not None:
                return step.items
            if first_items is not None:
                return first_items
            assert before is not None
            value = _value_of(before, nodes, results)
            try:
                return list(value)
            except TypeError:
                raise DataflowError(
                    f"step {step.name} needs an iterable from the previous step, got "
                    f"{type(value).__name__}"
                ) from None

        def item_call(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return _call(step, item, True)

        keep = _kept if step.kind == "filter" else None
        return EachSpec((), (), items=items, item_call=item_call, value=keep)

    def _partial(
        self, results: Sequence[Any], nodes_of: list[list[int]], run: Runner
    ) -> dict[str, Any]:
        """What finished of a failed run, by step: a step's value, or for a ``map`` or
        ``filter`` step that did not finish, its items' values by index."""
        partial: dict[str, Any] = {}
        grower = run.grower
        for step, nodes in zip(self.steps, nodes_of):
            value = _value_of(step, nodes, results)
            if value is not MISSING and all(results[n] is not MISSING for n in nodes):
                partial[step.name] = value
                continue
            opened = grower.opened.get(nodes[0]) if grower is not None else None
            if opened is not None:
                first = opened.first
                own = results[first : first + opened.count]
                partial[step.name] = {i: v for i, v in enumerate(own) if v is not MISSING}
        return partial


def _step_cap(max_parallel: int | None, task: object) -> int | None:
    """A map or filter step's cap: the one given, else the one its task declared with
    ``pipeline_task(max_parallel=)``."""
    given = check_max_parallel(max_parallel)
    return given if given is not None else declared_cap(task)


def _result(
    started: float,
    value: Any = None,
    error: BaseException | None = None,
    labels: dict[str, Any] | None = None,
) -> TaskiqResult[Any]:
    """A run's outcome as taskiq's result (``started``: its ``perf_counter`` start)."""
    return TaskiqResult(
        is_err=error is not None,
        log=None,
        return_value=value,
        execution_time=time.perf_counter() - started,
        error=error,
        labels=labels or {},
    )


def _kept(items: list[Any], values: list[Any]) -> list[Any]:
    """A filter's value: the items whose task returned something truthy (those left out by
    ``skip_errors`` dropped)."""
    return [item for item, keep in zip(items, values) if keep is not MISSING and keep]


def _value_of(step: _Step, nodes: list[int], results: Sequence[Any]) -> Any:
    """A step's value: its node's, or for a group the list of its tasks' (in order)."""
    if step.kind == "group":
        return [results[n] for n in nodes if results[n] is not MISSING]
    return results[nodes[0]]
