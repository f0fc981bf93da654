"""Dataflow pipelines: tasks wired by the names of what they produce and consume.

A task declares its output with :func:`pipeline_task`; its inputs are its parameter names. A task
whose parameter is another task's output runs after it and receives its value; a parameter that no
task produces is an external input, given to :meth:`DataflowPipeline.kiq_dataflow`.

::

    @broker.task
    @pipeline_task(output="clean")
    async def clean(raw: list[int]) -> list[int]: ...

    @broker.task
    @pipeline_task(output="total")
    async def total(clean: list[int]) -> int: ...

    pipeline = DataflowPipeline.from_tasks(broker, [clean, total], max_parallel=20)
    outputs = await pipeline.kiq_dataflow(raw=[3, 1, 2])   # {"clean": [...], "total": 6}

Everything that can be checked is checked before any task is sent: cycles (named), inputs that
nothing produces, two tasks producing one output, ``max_parallel``, things that are not taskiq
tasks, arguments the broker cannot serialize.
"""

from __future__ import annotations

import inspect
import uuid
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, TypeVar, cast

from taskiq import AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from typing_extensions import Unpack

from taskiq_flow import pictures
from taskiq_flow._core import DagGraph
from taskiq_flow.exceptions import (
    CycleError,
    DataflowError,
    DuplicateOutputError,
    InvalidValueError,
    MissingInputError,
    NotATaskError,
    UnserializableError,
)
from taskiq_flow.once import can_resume, run_keyed
from taskiq_flow.resources import resources_of
from taskiq_flow.retry import RetryPolicy
from taskiq_flow.run.caching import check_cache
from taskiq_flow.run.checks import check_serializable, unknown_inputs
from taskiq_flow.run.options import RunOptions
from taskiq_flow.run.plan import (
    MISSING,
    CachePolicy,
    EachSpec,
    Plan,
    StepSpec,
    attempt_timeout,
    check_broker,
    check_task_broker,
    task_display_name,
)
from taskiq_flow.run.runner import Runner, run_single
from taskiq_flow.run.settings import (
    RunOptionValues,
    Settings,
    check_max_parallel,
    check_rate,
    check_timeout,
)

__all__ = [
    "DAG",
    "DataflowPipeline",
    "DataflowRegistry",
    "ExecutionEngine",
    "TaskNode",
    "pipeline_task",
]

_F = TypeVar("_F")
_META = "__taskiq_flow_dataflow__"


@dataclass(frozen=True, slots=True)
class _DataflowMeta:
    output: str | None
    inputs: tuple[str, ...] | None
    labels: dict[str, Any]
    retry: RetryPolicy | None
    timeout: float | None
    rate: float | None = None
    burst: int = 1
    each: dict[str, str] | None = None
    max_parallel: int | None = None
    cache: CachePolicy | None = None


def _check_each(each: object, where: str) -> dict[str, str] | None:
    """``each`` as ``{parameter: source name}``, checked.

    :raises InvalidValueError: anything but a non-empty mapping of non-empty strs.
    """
    if each is None:
        return None
    if (
        not isinstance(each, Mapping)
        or not each
        or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in each.items())
    ):
        raise InvalidValueError(
            f"{where} each must map parameter names to the names of the lists they take item "
            f"by item (e.g. each={{'url': 'pages'}}), got {each!r}"
        )
    return dict(each)


def pipeline_task(
    output: str | None = None,
    *,
    inputs: Sequence[str] | None = None,
    labels: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    rate: float | None = None,
    burst: int = 1,
    each: Mapping[str, str] | None = None,
    max_parallel: int | None = None,
    cache: bool = False,
    cache_ttl: float = 86_400.0,
    cache_version: str | int = "1",
) -> Callable[[_F], _F]:
    """Declares a task's place in a dataflow. Works above or below ``@broker.task``.

    :param output: the name of what the task produces (default: the function's name).
    :param inputs: the names it consumes (default: its parameter names).
    :param labels: free-form labels, visible as ``TaskNode.labels`` (e.g. to custom engines).
    :param retry: this task's retry policy (overrides the pipeline's).
    :param timeout: seconds one attempt may take (taskiq's ``timeout`` label, which it sets, as
        ``@broker.task(timeout=)`` does); a task that runs longer fails that attempt with
        :class:`~taskiq_flow.exceptions.TaskTimeoutError` (and is retried like any failure). A
        whole run is bounded by the pipeline's ``run_timeout``.
    :param rate: at most this many starts of the task per second, in bursts of ``burst``.
    :param each: ``{parameter: name}``: the parameter takes each item of the list ``name`` (an
        output or an external input), one task per item, made when the list is known; the
        step's value is the list of their values in order. Several parameters zip (lists of
        equal length). A step mapping item by item over another's items goes on item by item:
        item 0 may run here while item 99 of the step before is still running.
    :param max_parallel: most of this task's tasks in flight at once (its items, and every
        node of it), in every pipeline shape.
    :param cache: memoize it: a node whose inputs were seen (within ``cache_ttl`` seconds, under
        the same ``cache_version``) is not sent; its stored value is used (see
        :mod:`taskiq_flow.run.caching`). In memory, or in Redis when completions travel
        through Redis. Bump ``cache_version`` when the task's code changes what it returns.
    :raises InvalidValueError: for a rate <= 0, a burst below 1, a timeout that is not > 0, an
        ``output`` that is not a non-empty str, ``inputs`` that are not strs, a bad ``each`` or
        ``max_parallel``.
    """
    if output is not None and (not isinstance(output, str) or not output):
        raise InvalidValueError(
            f"pipeline_task output must be a non-empty str (the name consumers take it by), "
            f"got {output!r}"
        )
    if inputs is not None and (
        isinstance(inputs, str) or not all(isinstance(i, str) and i for i in inputs)
    ):
        raise InvalidValueError(
            f"pipeline_task inputs must be a list of input names (non-empty strs), got {inputs!r}"
        )
    rate, burst = check_rate(rate, burst)
    meta = _DataflowMeta(
        output,
        tuple(inputs) if inputs is not None else None,
        dict(labels or {}),
        retry,
        check_timeout(timeout),
        rate,
        burst,
        _check_each(each, "pipeline_task"),
        check_max_parallel(max_parallel, "pipeline_task max_parallel"),
        check_cache(cache, cache_ttl, cache_version),
    )

    def mark(target: _F) -> _F:
        setattr(target, _META, meta)
        if isinstance(target, AsyncTaskiqDecoratedTask):
            setattr(target.original_func, _META, meta)
        return target

    return mark


@dataclass(slots=True)
class TaskNode:
    """A task in a dataflow: what it consumes and produces."""

    name: str
    task: AsyncTaskiqDecoratedTask[Any, Any]
    output: str
    #: The names the task consumes: outputs of other tasks, or external inputs.
    inputs: tuple[str, ...]
    #: The parameter each input is passed as (the input's own name unless mapped).
    params: tuple[str, ...] = ()
    #: Free-form labels; shared by the nodes of one task unless given per node (do not mutate).
    labels: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout: float | None = None
    rate: float | None = None
    burst: int = 1
    #: The parameters fed item by item (see ``pipeline_task(each=)``).
    each: frozenset[str] = frozenset()
    #: Most of this task's tasks in flight at once.
    max_parallel: int | None = None
    #: The parameters that have a default (a skipped or absent input leaves them to it).
    defaults: frozenset[str] = frozenset()
    #: How the task is memoized (``None``: it is not).
    cache: CachePolicy | None = None

    @property
    def task_name(self) -> str:
        """The taskiq task name messages are sent under."""
        return self.task.task_name

    @property
    def optional_inputs(self) -> frozenset[str]:
        """The inputs whose parameter has a default (a run may leave them out)."""
        optional = self.defaults
        if not optional:
            return frozenset()
        return frozenset(name for p, name in zip(self.params, self.inputs) if p in optional)


def _as_task(task: object) -> AsyncTaskiqDecoratedTask[Any, Any]:
    if isinstance(task, AsyncTaskiqDecoratedTask):
        return task
    name = getattr(task, "__name__", repr(task))
    raise NotATaskError(
        f"{name} is not a taskiq task: decorate it with @broker.task before adding it"
    )


def make_node(
    task: object,
    output: str | None = None,
    inputs: Sequence[str] | Mapping[str, str] | None = None,
    labels: Mapping[str, Any] | None = None,
    each: Mapping[str, str] | None = None,
) -> TaskNode:
    """Describes a taskiq task as a dataflow node (arguments override :func:`pipeline_task`).

    ``inputs`` is a list of parameter names (each fed by the output or external input of that
    name), or a mapping ``{parameter: source name}`` to wire one task into several places.
    ``each`` maps parameters to the lists they take item by item (see :func:`pipeline_task`).

    :raises NotATaskError: if ``task`` is not a taskiq task.
    :raises DataflowError: if ``inputs`` names a parameter the task does not have.
    :raises InvalidValueError: for an ``output`` that is not a non-empty str.
    """
    decorated = _as_task(task)
    if output is not None and (not isinstance(output, str) or not output):
        raise InvalidValueError(f"output must be a non-empty str, got {output!r}")
    shape = _shape(decorated)
    meta = shape.meta
    declared: Sequence[str] | Mapping[str, str] | None = (
        inputs if inputs is not None else (meta.inputs if meta else None)
    )
    if declared is None:
        wiring = shape.default_wiring
    elif isinstance(declared, dict) or isinstance(declared, Mapping):  # noqa: SIM101 - dict first: fast
        wiring = dict(declared)
    else:
        wiring = {n: n for n in declared}
    mapped = _check_each(each, "add_dataflow_task") if each is not None else None
    if mapped is None and meta is not None:
        mapped = meta.each
    if mapped:
        wiring = {**wiring, **mapped}
    if not shape.takes_any and not shape.known.issuperset(wiring):
        param = next(p for p in wiring if p not in shape.known)
        raise DataflowError(
            f"task {shape.name} has no parameter {param!r} (it takes {sorted(shape.known)})"
        )
    params = tuple(wiring)
    # Nodes of one task nearly always pass the same parameters: one shared tuple for all.
    params = _PARAMS.setdefault(params, params)
    return TaskNode(
        shape.name,
        decorated,
        output or shape.output,
        tuple(wiring.values()),
        params,
        {**shape.labels, **labels} if labels else shape.labels,
        shape.retry,
        shape.timeout,
        shape.rate,
        shape.burst,
        frozenset(mapped) if mapped else frozenset(),
        meta.max_parallel if meta is not None else None,
        shape.optional,
        meta.cache if meta is not None else None,
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a dataflow node needs from its task, read once per task (``inspect.signature`` is the
    slow part of adding a node)."""

    name: str
    meta: _DataflowMeta | None
    output: str
    known: frozenset[str]
    optional: frozenset[str]
    takes_any: bool
    default_wiring: dict[str, str]
    labels: dict[str, Any]
    retry: RetryPolicy | None
    timeout: float | None
    rate: float | None
    burst: int


_PARAMS: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHAPES: dict[int, tuple[AsyncTaskiqDecoratedTask[Any, Any], _DataflowMeta | None, _Shape]] = {}


def _shape(decorated: AsyncTaskiqDecoratedTask[Any, Any]) -> _Shape:
    meta: _DataflowMeta | None = getattr(decorated, _META, None) or getattr(
        decorated.original_func, _META, None
    )
    cached = _SHAPES.get(id(decorated))
    # Keyed by id, kept with the task itself (so the id cannot be reused while cached) and the
    # declaration it was read with (a later pipeline_task on the same task is seen).
    if cached is not None and cached[0] is decorated and cached[1] is meta:
        return cached[2]
    func = decorated.original_func
    name = task_display_name(decorated)
    parameters = list(inspect.signature(func).parameters.values())
    usable = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    shape = _Shape(
        name=name,
        meta=meta,
        output=meta.output if meta and meta.output else name,
        known=frozenset(p.name for p in usable),
        optional=frozenset(p.name for p in usable if p.default is not p.empty),
        takes_any=any(p.kind == p.VAR_KEYWORD for p in parameters),
        default_wiring={p.name: p.name for p in usable},
        labels=dict(meta.labels) if meta else {},
        retry=meta.retry if meta else None,
        # The declared timeout, or taskiq's label (``@broker.task(timeout=)``), checked once here.
        timeout=(
            meta.timeout
            if meta and meta.timeout is not None
            else attempt_timeout(decorated.labels, name)
        ),
        rate=meta.rate if meta else None,
        burst=meta.burst if meta else 1,
    )
    _SHAPES[id(decorated)] = (decorated, meta, shape)
    return shape


class DAG:
    """A validated dataflow graph: nodes, the edges their names imply, and analysis.

    :raises DuplicateOutputError: two nodes produce the same output.
    :raises CycleError: the dependencies form a cycle (``args[1]`` lists node names).
    """

    def __init__(self, nodes: Sequence[TaskNode]) -> None:
        self.nodes: list[TaskNode] = list(nodes)
        count = len(self.nodes)
        # Built in bulk (C loops over whole lists): a 10^5-node DAG spent over a microsecond a
        # node in a per-name Python loop here.
        producer = dict(zip([n.output for n in self.nodes], range(count)))
        if len(producer) != count:
            self._duplicate_output()
        self.producer = producer
        get = producer.get
        #: For each node, the producer of each input (``None``: an external input).
        self.feeds: list[tuple[int | None, ...]] = [tuple(map(get, n.inputs)) for n in self.nodes]
        # Edges as packed arrays (4 bytes an id, not a list of int objects): a 10^5-node DAG
        # stays a few MiB.
        sources = array("I")
        targets = array("I")
        external: set[str] = set()
        #: Per edge, whether its consumer has a default for it (``None``: no edge is optional).
        optional: array[int] | None = None
        for i, (node, feeds) in enumerate(zip(self.nodes, self.feeds)):
            if None not in feeds and not node.defaults:  # the common case
                sources.extend(feeds)  # type: ignore[arg-type]  # no None here
                targets.extend(repeat(i, len(feeds)))
                if optional is not None:
                    optional.extend(repeat(0, len(feeds)))
                continue
            for param, name, p in zip(node.params, node.inputs, feeds):
                if p is None:
                    if param not in node.defaults:  # an input nothing produces
                        external.add(name)
                    continue
                flag = param in node.defaults
                if flag and optional is None:
                    optional = array("b", repeat(0, len(sources)))
                if optional is not None:
                    optional.append(flag)
                sources.append(p)
                targets.append(i)
        self.sources = sources
        self.targets = targets
        self.optional: Sequence[bool] | None = (
            [bool(f) for f in optional] if optional is not None else None
        )
        self.external_inputs: frozenset[str] = frozenset(external)
        self.graph = DagGraph(len(self.nodes), sources, targets)
        try:
            self._order = self.graph.topological_order()
        except CycleError as err:
            names = [self.nodes[i].name for i in cast("list[int]", err.cycle)]
            raise CycleError(f"tasks are in a cycle: {' -> '.join(names)}", names) from None

    def _duplicate_output(self) -> None:
        """Raises for the first node whose output an earlier node produces."""
        seen: dict[str, TaskNode] = {}
        for node in self.nodes:
            other = seen.setdefault(node.output, node)
            if other is not node:
                raise DuplicateOutputError(
                    f"output {node.output!r} is produced by both {other.name!r} and {node.name!r}"
                )

    @property
    def outputs(self) -> list[str]:
        """Every node's output name, in node order."""
        return [n.output for n in self.nodes]

    def topological_order(self) -> list[str]:
        """Node names in an order that respects every dependency."""
        return [self.nodes[i].name for i in self._order]

    def levels(self) -> list[list[str]]:
        """Node names by level: level 0 needs only external inputs; each level can run at once."""
        by_level: list[list[str]] = []
        for i, level in enumerate(self.graph.levels()):
            while len(by_level) <= level:
                by_level.append([])
            by_level[level].append(self.nodes[i].name)
        return by_level

    def critical_path(self, weights: Mapping[str, int] | None = None) -> tuple[int, list[str]]:
        """The heaviest chain of dependent tasks: ``(total weight, names)``; weight 1 each by
        default, or ``weights[name]`` (e.g. expected milliseconds)."""
        w = [int((weights or {}).get(n.name, 1)) for n in self.nodes]
        total, path = self.graph.critical_path(w)
        return total, [self.nodes[i].name for i in path]

    def __len__(self) -> int:
        return len(self.nodes)

    def to_mermaid(self, collapse: pictures.CollapseKey = False) -> str:
        """The graph as a Mermaid flowchart (critical path in bold); ``collapse=True`` draws the
        nodes of one name as one node with a count."""
        return pictures.to_mermaid(self, collapse)

    def to_dot(self, collapse: pictures.CollapseKey = False) -> str:
        """The graph in Graphviz DOT (see :meth:`to_mermaid` for ``collapse``)."""
        return pictures.to_dot(self, collapse)

    def to_json(self, collapse: pictures.CollapseKey = False) -> dict[str, Any]:
        """Nodes (with levels), edges, levels and the critical path, JSON-serializable (schema in
        :func:`taskiq_flow.pictures.to_json`)."""
        return pictures.to_json(self, collapse)

    def __repr__(self) -> str:
        return pictures.describe(self)


class DataflowRegistry:
    """Collects tasks and builds the :class:`DAG` they imply."""

    def __init__(self) -> None:
        self._nodes: list[TaskNode] = []

    def register_task(
        self,
        task: object,
        output: str | None = None,
        inputs: Sequence[str] | Mapping[str, str] | None = None,
        labels: Mapping[str, Any] | None = None,
        each: Mapping[str, str] | None = None,
    ) -> TaskNode:
        """Adds a taskiq task; ``output``/``inputs``/``each`` override what
        :func:`pipeline_task` says.

        :raises NotATaskError: if ``task`` is not a taskiq task.
        """
        node = make_node(task, output, inputs, labels, each)
        self._nodes.append(node)
        return node

    @property
    def nodes(self) -> list[TaskNode]:
        """The registered nodes."""
        return list(self._nodes)

    @property
    def nodes_view(self) -> Sequence[TaskNode]:
        """The registered nodes, without a copy."""
        return self._nodes

    def build_dag(self) -> DAG:
        """The validated graph of the registered tasks."""
        return DAG(self._nodes)


class ExecutionEngine(RunOptions):
    """Runs a :class:`DAG` on a broker.

    Subclasses may override :meth:`schedule_task` to run some nodes elsewhere (a GPU pool, a
    different broker); the engine then awaits it for each node, and everything else (order,
    ``max_parallel``, retries, tracking) stays the same.

    :param broker: the taskiq broker.
    :param dag: the graph to run.
    :param max_parallel: most tasks of a run in flight at once (``None``: all that are ready).
    :param settings: all the options at once (then give none of them separately).
    :param options: the run options of every pipeline (``run_timeout``, ``on_error``, ``retry``,
        ``tracking``, ...).
    :raises InvalidValueError: for a bad value (checked here, once).
    :raises TypeError: for an unknown option (naming the closest).

    The ``with_*`` methods of every pipeline change the settings of the next run.
    """

    #: The graph the steps were last made for, its ``each`` nodes and its steps.
    _made_steps: tuple[DAG, dict[int, EachSpec], list[StepSpec]] | None = None

    def __init__(
        self,
        broker: AsyncBroker,
        dag: DAG,
        *,
        max_parallel: int | None = None,
        settings: Settings | None = None,
        **options: Unpack[RunOptionValues],
    ) -> None:
        check_broker(broker)
        self.broker = broker
        self.dag = dag
        seen: set[int] = set()
        for node in dag.nodes:
            if id(node.task) not in seen:
                seen.add(id(node.task))
                check_task_broker(broker, node.task)
        if settings is None:
            settings = Settings(name="dataflow").given(
                f"{type(self).__name__}()", {"max_parallel": max_parallel, **options}
            )
        elif options or max_parallel is not None:
            raise TypeError("give settings or separate options, not both")
        self.settings = settings
        self.pipeline_id: str | None = None
        self._run: Runner | None = None
        #: The run in progress, or the last one.
        self.last_run: Runner | None = None

    async def schedule_task(self, task_node: TaskNode, inputs: dict[str, Any]) -> Any:
        """Runs one node with its inputs and returns its value.

        The default sends it through the broker; override to run it elsewhere.
        """
        return await run_single(
            self.broker,
            task_node.task_name,
            (),
            inputs,
            step=task_node.name,
            timeout=task_node.timeout,
            labels=task_node.task.labels,
        )

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Validates the external inputs of a run; raises before anything is sent."""
        missing = sorted(self.dag.external_inputs - inputs.keys())
        consumed = {name for n in self.dag.nodes for name in n.inputs}
        unknown = sorted(set(inputs) - consumed)
        # Both are said at once: a misspelled input is usually the missing one.
        said = unknown_inputs(unknown, consumed, "task") if unknown else ""
        if missing:
            needs = {name: [n.name for n in self.dag.nodes if name in n.inputs] for name in missing}
            shown = "; ".join(f"{k!r} (needed by {', '.join(v)})" for k, v in needs.items())
            also = f"; also given {said}" if said else ""
            raise MissingInputError(f"no task produces, and no input gives: {shown}{also}")
        if unknown:
            raise DataflowError(said)
        produced = sorted(set(inputs) & self.dag.producer.keys())
        if produced:
            raise DataflowError(f"inputs {produced} are outputs of tasks; they cannot be given")
        # Every value is sent as a keyword argument somewhere: one serialization checks them all.
        takers = {name: n for n in self.dag.nodes for name in n.inputs}
        try:
            check_serializable(self.broker, "inputs", (), inputs)
        except UnserializableError:
            for name, value in inputs.items():
                taker = takers[name]
                check_serializable(self.broker, taker.task_name, (), {name: value}, taker.name)
            raise

    def _steps_of(self, dag: DAG) -> tuple[dict[int, EachSpec], list[StepSpec]]:
        """The steps of ``dag``'s nodes and its ``each`` nodes, made once per graph (they do not
        depend on a run's inputs)."""
        made = self._made_steps
        if made is not None and made[0] is dag:
            return made[1], made[2]
        nodes = dag.nodes
        feeds = dag.feeds
        each: dict[int, EachSpec] = {}
        for i, n in enumerate(nodes):
            if n.each:
                params = tuple(p for p in n.params if p in n.each)
                by_param = dict(zip(n.params, feeds[i]))
                each[i] = EachSpec(params, tuple(by_param[p] for p in params))

        # A step is a declaration: each node (a task wired in on its own) is a step of its own,
        # so tracking and explain tell a task's nodes apart; a task wired into several nodes
        # names each by its output (``tag[title]``). The nodes of one task share its rate
        # bucket (the plan says so with the step's limit group).
        per_task: dict[int, int] = {}
        for n in nodes:
            per_task[id(n.task)] = per_task.get(id(n.task), 0) + 1
        specs: dict[int, StepSpec] = {}
        steps: list[StepSpec] = []
        for n in nodes:
            first = specs.get(id(n.task))
            name = n.name if per_task[id(n.task)] == 1 else f"{n.name}[{n.output}]"
            if first is None:
                first = specs[id(n.task)] = StepSpec(
                    name,
                    n.task_name,
                    n.task.labels,
                    max_parallel=n.max_parallel,
                    cache=n.cache,
                    retry=n.retry,
                    timeout=n.timeout,
                    resources=resources_of(n.task),
                    rate=n.rate,
                    burst=n.burst,
                    limit_group=("task", n.task_name),
                    limit_name=n.name,
                )
                steps.append(first)
            else:
                steps.append(first.renamed(name))

        self._made_steps = (dag, each, steps)
        return each, steps

    def _plan(self, inputs: Mapping[str, Any]) -> Plan:
        dag = self.dag
        nodes = dag.nodes
        feeds = dag.feeds

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            spec = nodes[node]
            kwargs = {}
            for param, name, producer in zip(spec.params, spec.inputs, feeds[node]):
                if producer is not None:
                    value = results[producer]
                    if value is not MISSING:  # a skipped producer leaves it to its default
                        kwargs[param] = value
                elif name in inputs:  # an optional input not given is left to its default
                    kwargs[param] = inputs[name]
            return (), kwargs

        each, steps = self._steps_of(dag)

        def fed(node: int) -> Sequence[tuple[str, int | None]]:
            return list(zip(nodes[node].params, feeds[node]))

        return Plan(
            len(nodes),
            dag.sources,
            dag.targets,
            list(steps),  # a run that grows adds steps to its own list
            call,
            each=dict(each) if each else None,
            optional=dag.optional,
            feeds=fed,
        )

    async def execute(
        self,
        inputs: Mapping[str, Any] | None = None,
        pipeline_id: str | None = None,
        restored: Mapping[int, Any] | None = None,
        grown: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Runs the graph with the given external inputs.

        :param pipeline_id: the run's id (new by default); tracking records it under this id.
        :param restored: values of nodes an earlier run of ``pipeline_id`` finished.
        :param grown: how that run grew (from tracking), to grow the same way.

        :return: ``{output name: value}`` for every task that did not skip (see
            :attr:`skipped`).
        :raises MissingInputError, DataflowError, UnserializableError: before anything is sent.
        :raises StepFailedError: a task failed for good; ``results`` holds what finished.
        """
        inputs = dict(inputs or {})
        self.check_inputs(inputs)
        custom = None
        if type(self).schedule_task is not ExecutionEngine.schedule_task:
            nodes = self.dag.nodes

            async def custom(node: int, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return await self.schedule_task(nodes[node], kwargs)

        run = Runner(
            self.broker,
            self._plan(inputs),
            self.settings,
            pipeline_id=pipeline_id,
            custom_dispatch=custom,
            restored=restored,
            inputs=inputs,
            grown=grown,
        )
        self._run = self.last_run = run
        self.pipeline_id = run.pipeline_id
        try:
            values = await run.execute()
        except Exception as err:
            nodes = self.dag.nodes
            partial = {
                nodes[v].output: value
                for v, value in run.finished_results().items()
                if v < len(nodes)
            }
            if hasattr(err, "results"):
                err.results = partial
            raise
        finally:
            self._run = None
        return {
            node.output: values[i]
            for i, node in enumerate(self.dag.nodes)
            if values[i] is not MISSING
        }

    def run_graph(self) -> pictures.SimpleGraph:
        """The last run's graph as it grew (tasks added by ``Expand`` and ``each`` included,
        each named by its step): draw it with ``pictures.to_mermaid(graph, collapse=True)``, or
        give it to :func:`~taskiq_flow.report.render_report`.

        :raises DataflowError: if there has been no run.
        """
        run = self.last_run
        if run is None or run.grower is None:
            raise DataflowError("no run to draw: the engine has not run yet")
        return run.grower.shape()

    @property
    def skipped(self) -> dict[str, str]:
        """The steps of the last run that skipped (:class:`~taskiq_flow.Skip`), or were skipped
        because a step they need did: ``{step: why}``."""
        return self.last_run.skipped_steps() if self.last_run is not None else {}

    def cancel(self) -> None:
        """Cancels the run in progress, if any."""
        if self._run is not None:
            self._run.cancel()

    def explain(self, step: str) -> str:
        """Why ``step`` of the run in progress (or the last run) is where it is, in one
        sentence (see :meth:`taskiq_flow.run.runner.Runner.explain`).

        :raises DataflowError: if there has been no run.
        """
        if self.last_run is None:
            raise DataflowError("no run to explain: the engine has not run yet")
        return self.last_run.explain(step)


class DataflowPipeline(RunOptions):
    """A dataflow pipeline on a broker.

    :param broker: the taskiq broker.
    :param max_parallel: most tasks of one run in flight at once, all steps together (``None``:
        all that are ready).
    :param options: the run options, as the ``with_*`` methods set them: ``on_error`` (``"fail"``
        stops at the first failure; ``"continue"`` runs every task that does not depend on one),
        ``run_timeout`` (seconds a whole run may take; a task's own ``timeout`` bounds one
        attempt), ``name`` (in tracking records; default ``"dataflow"``), ``on_progress`` (called
        with ``(tasks finished, tasks in all)``), ``retry``, ``tracking``, ``dead_letters``,
        ``worker_pool``.
    :raises InvalidValueError: for a bad value of any of these (checked here, once, by the rule
        of :mod:`taskiq_flow.run.settings`).
    :raises TypeError: for an unknown option (naming the closest).
    """

    def __init__(
        self,
        broker: AsyncBroker,
        max_parallel: int | None = None,
        **options: Unpack[RunOptionValues],
    ) -> None:
        check_broker(broker)
        self.broker = broker
        self.settings = Settings(name="dataflow").given(
            f"{type(self).__name__}()", {"max_parallel": max_parallel, **options}
        )
        self.registry = DataflowRegistry()
        self._dag: DAG | None = None
        self.pipeline_id: str | None = None
        self._engine: ExecutionEngine | None = None
        self._last_engine: ExecutionEngine | None = None

    @property
    def name(self) -> str:
        """The pipeline's name in tracking records."""
        return self.settings.name

    @classmethod
    def from_tasks(
        cls,
        broker: AsyncBroker,
        tasks: Iterable[object],
        max_parallel: int | None = None,
        **options: Unpack[RunOptionValues],
    ) -> DataflowPipeline:
        """A pipeline of the given tasks (each declared with :func:`pipeline_task`); takes the
        options of :class:`DataflowPipeline`."""
        pipeline = cls(broker, max_parallel)
        pipeline.settings = pipeline.settings.given(f"{cls.__name__}.from_tasks()", options)
        for task in tasks:
            pipeline.add_dataflow_task(task)
        return pipeline

    def add_dataflow_task(
        self,
        task: object,
        output: str | None = None,
        inputs: Sequence[str] | Mapping[str, str] | None = None,
        labels: Mapping[str, Any] | None = None,
        each: Mapping[str, str] | None = None,
    ) -> DataflowPipeline:
        """Adds a task; returns the pipeline. ``each={parameter: name}`` maps the task over the
        items of the list ``name`` (see :func:`pipeline_task`).

        :raises NotATaskError: if ``task`` is not a taskiq task, or is registered on another
            broker than the pipeline's.
        """
        check_task_broker(self.broker, task)
        self.registry.register_task(task, output, inputs, labels, each)
        return self

    @property
    def dag(self) -> DAG:
        """The validated graph of the pipeline's tasks (built once, rebuilt after an add)."""
        if self._dag is None or len(self._dag) != len(self.registry.nodes_view):
            self._dag = self.registry.build_dag()
        return self._dag

    async def kiq_dataflow(self, *chunk: Any, **inputs: Any) -> dict[str, Any]:
        """Runs the pipeline and returns every task's output: ``{output name: value}``.

        External inputs are keyword arguments; a pipeline with a single external input also takes
        it positionally (``await pipeline.kiq_dataflow(chunk)``). A pipeline from
        :meth:`with_idempotency_key` runs once per key (see :mod:`taskiq_flow.once`).

        :raises CycleError, DuplicateOutputError, MissingInputError, UnserializableError: before
            any task is sent.
        :raises StepFailedError: a task failed for good (``results`` holds what finished).
        :raises RemoteTaskError: keyed: the run attached to failed in another process.
        """
        keyed = self.idempotency_key
        if keyed is None:
            return await self._run_dataflow(chunk, inputs, uuid.uuid4().hex, None)

        async def start(pipeline_id: str, resuming: bool) -> dict[str, Any]:
            if resuming:  # the run's orchestrator died: on with the inputs stored with it
                return await self.resume(pipeline_id)
            return await self._run_dataflow(chunk, inputs, pipeline_id, None)

        def seen(pipeline_id: str) -> None:
            self.pipeline_id = pipeline_id

        outputs: dict[str, Any] = await run_keyed(
            keyed, self.name, start, resumable=can_resume(self.tracking), on_id=seen
        )
        return outputs

    async def _run_dataflow(
        self,
        chunk: tuple[Any, ...],
        inputs: dict[str, Any],
        pipeline_id: str,
        restored: Mapping[int, Any] | None,
        grown: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        dag = self.dag
        if chunk:
            if len(chunk) != 1 or len(dag.external_inputs) != 1 or inputs:
                raise DataflowError(
                    "a positional input needs a pipeline with exactly one external input "
                    f"(this one has {sorted(dag.external_inputs)}); pass inputs by name"
                )
            inputs = {next(iter(dag.external_inputs)): chunk[0]}
        engine = ExecutionEngine(self.broker, dag, settings=self.settings)
        self._engine = self._last_engine = engine
        self.pipeline_id = pipeline_id
        try:
            return await engine.execute(inputs, pipeline_id, restored, grown)
        finally:
            self._engine = None

    async def resume(
        self,
        pipeline_id: str,
        *chunk: Any,
        inputs_changed_ok: bool = False,
        **inputs: Any,
    ) -> dict[str, Any]:
        """Runs ``pipeline_id`` to the end after its orchestrator died: tasks that finished (as
        recorded by tracking) are not sent again; the others are. It runs with the inputs stored
        with the run; inputs given must be those, unless ``inputs_changed_ok``.

        :raises DataflowError: without tracking (there is nothing to resume from).
        :raises StateError: no inputs given and none stored (naming why).
        :raises InvalidValueError: inputs given that differ from the stored ones.
        """
        if self.tracking is None:
            raise DataflowError("resume needs the tracking the run was recorded in")
        given: dict[str, Any] | None = dict(inputs) if chunk or inputs else None
        if chunk:
            if len(chunk) != 1 or len(self.dag.external_inputs) != 1 or inputs:
                raise DataflowError(
                    "a positional input needs a pipeline with exactly one external input "
                    f"(this one has {sorted(self.dag.external_inputs)}); pass inputs by name"
                )
            given = {next(iter(self.dag.external_inputs)): chunk[0]}
        resolved = await self.tracking.resume_inputs(
            pipeline_id, given, inputs_changed_ok=inputs_changed_ok
        )
        restored = await self.tracking.load_results(pipeline_id)
        grown = await self.tracking.load_growth(pipeline_id)
        return await self._run_dataflow((), resolved, pipeline_id, restored, grown)

    def run_graph(self) -> pictures.SimpleGraph:
        """The last run's graph as it grew (see :meth:`ExecutionEngine.run_graph`):
        ``pictures.to_mermaid(pipeline.run_graph(), collapse=True)`` draws each step once with
        its count.

        :raises DataflowError: if the pipeline has not run yet.
        """
        if self._last_engine is None:
            raise DataflowError("no run to draw: the pipeline has not run yet")
        return self._last_engine.run_graph()

    @property
    def skipped(self) -> dict[str, str]:
        """The steps of the last run that skipped (:class:`~taskiq_flow.Skip`), or were skipped
        because a step they need did: ``{step: why}``. Their outputs are absent from what
        :meth:`kiq_dataflow` returned."""
        return self._last_engine.skipped if self._last_engine is not None else {}

    def cancel(self) -> None:
        """Cancels the run in progress, if any: ``kiq_dataflow`` raises
        :class:`~taskiq_flow.exceptions.PipelineCancelledError`."""
        if self._engine is not None:
            self._engine.cancel()

    def explain(self, step: str) -> str:
        """Why ``step`` of the run in progress (or the last run) is where it is, in one sentence:
        ``waiting: the pipeline's cap is full (20/20 in flight); next free slot when any of them
        finishes (for 1.2 s)``.

        :raises DataflowError: if the pipeline has not run yet.
        :raises UnknownIdError: if it has no such step.
        """
        if self._last_engine is None:
            raise DataflowError("no run to explain: the pipeline has not run yet")
        return self._last_engine.explain(step)
