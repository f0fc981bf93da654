"""What every pipeline shape compiles to: a :class:`Plan` of nodes grouped into steps."""

from __future__ import annotations

import contextlib
import difflib
import inspect
from array import array
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.kicker import AsyncKicker

from taskiq_flow.exceptions import InvalidValueError, NotATaskError
from taskiq_flow.resources import TaskResources
from taskiq_flow.retry import RetryPolicy
from taskiq_flow.run.settings import check_timeout

__all__ = [
    "MISSING",
    "CachePolicy",
    "CallBuilder",
    "EachSpec",
    "PassOn",
    "Plan",
    "StepSpec",
    "attempt_timeout",
    "check_broker",
    "check_task_broker",
    "check_task_keywords",
    "declared_cap",
    "task_display_name",
    "task_identity",
]

#: Builds a node's arguments from the results so far: ``(args, kwargs)``.
CallBuilder = Callable[[int, Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


class PassOn(Exception):
    """Raised by a call builder for a node whose value is known without running its task (a
    reduce pair one of whose sides was skipped hands the other on): the node is done with
    ``value``, nothing is sent."""

    def __init__(self, value: Any) -> None:
        super().__init__("a value handed on")
        self.value = value


#: A node's value before it has one (and forever, for a node skipped or failed): a call builder
#: leaves a parameter fed by it to its default.
MISSING: Any = _Missing()


def task_display_name(task: AsyncTaskiqDecoratedTask[Any, Any]) -> str:
    """The name users wrote: the function's (taskiq renames the original ``*__taskiq_original``)."""
    name = getattr(task.original_func, "__name__", None) or task.task_name
    return str(name).removesuffix("__taskiq_original")


def task_identity(task: object) -> tuple[str, dict[str, Any], str]:
    """``(task name, labels, display name)`` of a taskiq task or kicker.

    :raises NotATaskError: for anything else.
    """
    if isinstance(task, AsyncTaskiqDecoratedTask):
        return task.task_name, dict(task.labels), task_display_name(task)
    if isinstance(task, AsyncKicker):
        return task.task_name, dict(task.labels), task.task_name.rsplit(":", 1)[-1]
    name = getattr(task, "__name__", repr(task))
    raise NotATaskError(
        f"{name} is not a taskiq task: decorate it with @broker.task before using it in a pipeline"
    )


def declared_cap(task: object) -> int | None:
    """The ``max_parallel`` a task declared with ``pipeline_task`` (checked there), if any: it
    bounds the task's step in every shape."""
    meta = getattr(task, "__taskiq_flow_dataflow__", None) or getattr(
        getattr(task, "original_func", None), "__taskiq_flow_dataflow__", None
    )
    cap: int | None = getattr(meta, "max_parallel", None)
    return cap


def attempt_timeout(labels: dict[str, Any], task: str) -> float | None:
    """The seconds one attempt of a task may take: its taskiq ``timeout`` label (``None``:
    none), checked here, once, when the task is added to a pipeline.

    :raises InvalidValueError: for a label that is not a finite number of seconds > 0.
    """
    value = labels.get("timeout")
    if isinstance(value, str):  # taskiq labels may be strings; its receiver takes float(label)
        with contextlib.suppress(ValueError):  # not a number: refused below, naming it
            value = float(value)
    return check_timeout(value, f"the timeout label of task {task!r}")


def check_task_keywords(
    task: object, keys: Collection[str], where: str, options: Collection[str]
) -> None:
    """Checks that each of ``keys``, given to ``where`` beside its ``options``, is a parameter of
    ``task``: a misspelled option must be an error, never a task argument.

    :raises TypeError: naming the key and the closest option (or the task's parameters).
    """
    func = getattr(task, "original_func", None)
    if func is None or not keys:
        return  # a kicker: its parameters are not known here
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return
    known = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(options), n=1, cutoff=0.75)
            hint = (
                f"; did you mean the option {close[0]!r}?"
                if close
                else f" (the task takes {', '.join(sorted(known)) or 'no keywords'})"
            )
            raise TypeError(
                f"{where} got an unknown keyword {key!r}: it is not an option, and the task has "
                f"no parameter of that name{hint}"
            )


def check_broker(broker: object) -> None:
    """Checks that ``broker`` is a taskiq broker.

    :raises InvalidValueError: naming what was given instead.
    """
    if not isinstance(broker, AsyncBroker):
        raise InvalidValueError(
            f"broker must be a taskiq broker (an AsyncBroker such as InMemoryBroker()), got "
            f"{type(broker).__name__}"
        )


def check_task_broker(broker: AsyncBroker, task: object) -> None:
    """Checks that ``task`` can be sent through ``broker``: it is registered on it (a task
    registered on another broker only would be refused by the broker at the first send).

    :raises NotATaskError: naming the task and the broker it belongs to.
    """
    own = getattr(task, "broker", None)
    if own is None or own is broker:
        return
    name = getattr(task, "task_name", None)
    if isinstance(name, str) and broker.find_task(name) is not None:
        return  # the same task registered on both (as a worker module and an orchestrator do)
    shown = task_display_name(task) if isinstance(task, AsyncTaskiqDecoratedTask) else name
    raise NotATaskError(
        f"task {shown!r} is registered on another broker ({type(own).__name__} at "
        f"{id(own):#x}), not on the one this pipeline sends through ({type(broker).__name__} "
        f"at {id(broker):#x}): decorate it with that broker's @broker.task"
    )


@dataclass(slots=True)
class StepSpec:
    """A step: a named group of nodes calling one task.

    Its values are checked where the user gave them (``pipeline_task``, ``Pipeline.map``, ...), by
    the rules of :mod:`taskiq_flow.run.settings`.
    """

    name: str
    task_name: str
    labels: dict[str, Any] = field(default_factory=dict)
    #: Most nodes of this step in flight at once.
    max_parallel: int | None = None
    retry: RetryPolicy | None = None
    #: Seconds one attempt may take (the task's ``timeout``: taskiq's label, enforced where the
    #: task runs). Not a run's bound: that is ``Settings.run_timeout``.
    timeout: float | None = None
    tasks: int = 1
    #: What one run of the task needs, for a worker pool (``None``: nothing declared).
    resources: TaskResources | None = None
    #: At most ``rate`` starts per second for this step, in bursts of ``burst``.
    rate: float | None = None
    burst: int = 1
    #: Steps with one (hashable) limit group share one step cap and one rate bucket (the nodes of
    #: one dataflow task); ``None``: the step's limits are its own.
    limit_group: object = None
    #: The shared limits' name in explanations (the task's, for a limit group); default the step's.
    limit_name: str | None = None
    #: A node of this step that fails for good is left out (like a skip: a map's item dropped)
    #: instead of failing the run; it is dead-lettered all the same.
    skip_errors: bool = False
    #: Memoized (``pipeline_task(cache=True)``): its nodes are looked up before being sent.
    cache: CachePolicy | None = None

    def renamed(self, name: str) -> StepSpec:
        """This step under another name (``dataclasses.replace(self, name=name)``, at a sixth of
        its cost: a dataflow makes one per node)."""
        return StepSpec(
            name,
            self.task_name,
            self.labels,
            self.max_parallel,
            self.retry,
            self.timeout,
            self.tasks,
            self.resources,
            self.rate,
            self.burst,
            self.limit_group,
            self.limit_name,
            self.skip_errors,
            self.cache,
        )


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How a step is memoized (:mod:`taskiq_flow.run.caching`): for ``ttl`` seconds, under
    ``version`` (change it when the task's code changes what it returns)."""

    ttl: float
    version: str


@dataclass(frozen=True, slots=True)
class EachSpec:
    """A node that maps over items: it is never sent; when the core admits it (its inputs are
    done), it is given one child per item, and its value is the list of their values.

    ``params`` are the keywords fed item by item (zipped: equal lengths), each taking the list
    its static call passes for it; ``producers`` says, per param, which node produces that list
    (``None``: an external input). A child's call is the node's own call with each of ``params``
    replaced by its item.
    """

    params: tuple[str, ...]
    producers: tuple[int | None, ...]
    #: For a shape that finds its items itself (a sequential pipeline's ``map``): the items from
    #: the values so far (raising :class:`~taskiq_flow.exceptions.DataflowError` for a value that
    #: has none), and the call of one item. ``params`` and ``producers`` are then empty.
    items: Callable[[Sequence[Any]], list[Any]] | None = None
    item_call: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    #: The node's value from its items and their values (:data:`MISSING` for an item left
    #: out); default: the values, those left out dropped.
    value: Callable[[list[Any], list[Any]], Any] | None = None


@dataclass(slots=True)
class Plan:
    """What a run executes: ``node_count`` nodes, edges ``sources[i] -> targets[i]``, each node in
    one step (``step_of``; node ``i`` is step ``i`` when omitted, or step 0 when there is one),
    its call built when it is sent (:meth:`build`).

    A run that grows adds steps (:meth:`add_step`) and nodes (:meth:`grow`), each range of added
    nodes with its own call builder; ``each`` names the nodes that map over items.
    """

    node_count: int
    sources: Sequence[int]
    targets: Sequence[int]
    steps: list[StepSpec]
    call: CallBuilder
    step_of: Sequence[int] | None = None
    #: Per node that maps over items, how (see :class:`EachSpec`).
    each: dict[int, EachSpec] | None = None
    #: Per edge, whether it is optional (its consumer has a default for it); ``None``: none is.
    optional: Sequence[bool] | None = None
    #: Per node, each parameter and the node producing it (``None``: an input of the run); what
    #: a memoized step's key is built from.
    feeds: Callable[[int], Sequence[tuple[str, int | None]]] | None = None
    #: Nodes added while the run grew: the first id of each range, and its call builder.
    _grown_first: list[int] = field(default_factory=list)
    _grown_call: list[CallBuilder] = field(default_factory=list)

    def step_index(self, node: int) -> int:
        """The index of a node's step."""
        if len(self.steps) == 1:
            return 0
        return node if self.step_of is None else self.step_of[node]

    def step(self, node: int) -> StepSpec:
        """The step of a node."""
        return self.steps[self.step_index(node)]

    def build(self, node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of ``node``'s call, from the values so far."""
        grown = self._grown_first
        if not grown or node < grown[0]:
            return self.call(node, results)
        return self._grown_call[bisect_right(grown, node) - 1](node, results)

    def _own_steps(self) -> array[int]:
        """``step_of`` as a growable array (made once, when the plan first grows)."""
        step_of = self.step_of
        if not isinstance(step_of, array):
            step_of = array("I", (self.step_index(v) for v in range(self.node_count)))
            self.step_of = step_of
        return step_of

    def add_step(self, spec: StepSpec) -> int:
        """Adds a step (nodes added later may be in it); returns its index."""
        self._own_steps()
        self.steps.append(spec)
        return len(self.steps) - 1

    def grow(self, steps: Sequence[int], call: CallBuilder) -> int:
        """Adds ``len(steps)`` nodes, node ``i`` in step ``steps[i]``, their calls built by
        ``call``; returns the first new id."""
        first = self.node_count
        self._own_steps().extend(steps)
        self.node_count += len(steps)
        self._grown_first.append(first)
        self._grown_call.append(call)
        return first

    def limit_keys(self) -> tuple[list[int] | None, list[tuple[int, StepSpec]]]:
        """The core's admission keys: each node's key (``None``: no step limits at all) and, per
        key from 1, the step whose ``max_parallel``, ``rate`` and ``burst`` it enforces. Steps of
        one ``limit_group`` share a key; a step without limits has key 0 (none)."""
        limits: dict[object, tuple[int, StepSpec]] = {}
        key_of_step = [0] * len(self.steps)
        for index, spec in enumerate(self.steps):
            if spec.max_parallel is None and spec.rate is None:
                continue
            group: object = spec.limit_group if spec.limit_group is not None else index
            if group not in limits:
                limits[group] = (len(limits) + 1, spec)
            key_of_step[index] = limits[group][0]
        if not limits:
            return None, []
        keys = [key_of_step[self.step_index(v)] for v in range(self.node_count)]
        return keys, list(limits.values())
