"""Large dataflows declared in bulk: many nodes of a few tasks, as arrays.

A :class:`~taskiq_flow.DataflowPipeline` keeps a Python object per node, which is what a
hand-written graph wants and what a million-node one cannot afford. A :class:`BulkDataflow`
declares nodes by the block and edges by the array, keeps them as packed integer arrays, and
hands them to the core, which checks them and builds each node's arguments when the node is
sent. No Python object exists per node until one is asked for (a value, a name)::

    flow = BulkDataflow(broker, [load, combine], max_parallel=16)
    first = flow.add_nodes(1000, task=0, output="load")        # nodes 0..999: load0..load999
    rest = flow.add_nodes(1000, task=1, output="sum")          # nodes 1000..1999: sum0..sum999
    flow.feed("seed", first, param="seed")                     # an external input of the run
    flow.connect(first, rest, param="a")                       # load{i} -> sum{i} as a=
    out = await flow.kiq_dataflow(seed=1)
    out["sum17"], out.at(1017)                                 # the same value

Names are implicit: node ``k`` of a block declared with ``output="sum"`` is ``sum{k}``, made only
when it is asked for. A run goes through the one runner every shape uses, so ``max_parallel``,
retries, tracking, explanations and worker pools apply as they do to a ``DataflowPipeline``.

Everything is checked before any task is sent: arrays of unequal length, ids out of range, a
cycle (naming its nodes), a parameter given twice, a required one not given, one the task does
not take, an external input not given, two blocks that name a node alike, something that is not a
taskiq task of the pipeline's broker, inputs the broker cannot send.
"""

from __future__ import annotations

import bisect
import difflib
import inspect
import uuid
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskiq import AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from typing_extensions import Unpack

from taskiq_flow._core import DataflowTable
from taskiq_flow.exceptions import (
    CycleError,
    DataflowError,
    DuplicateOutputError,
    InvalidValueError,
    MissingInputError,
    NotATaskError,
    StateError,
    UnserializableError,
)
from taskiq_flow.resources import resources_of
from taskiq_flow.run.checks import check_serializable, unknown_inputs
from taskiq_flow.run.options import RunOptions
from taskiq_flow.run.plan import (
    Plan,
    StepSpec,
    attempt_timeout,
    check_broker,
    check_task_broker,
    task_display_name,
)
from taskiq_flow.run.runner import Runner
from taskiq_flow.run.settings import RunOptionValues, Settings

__all__ = ["BulkDataflow", "BulkResults"]

_MISSING: Any = object()

#: Ids are packed 4 bytes each (``array('I')``; the core reads them as native ``u32``).
_ID = "I" if array("I").itemsize == 4 else "L"
_INT_FORMATS = frozenset("bBhHiIlLqQnN")


def _ids(what: str, values: object) -> array[int]:
    """``values`` as packed ids: an ``array('I')`` is taken as it is, a ``range`` or any sequence
    or buffer of ints is packed.

    :raises InvalidValueError: naming the first value that is not an id (an int from 0 to
        4294967295).
    """
    if isinstance(values, array) and values.typecode == _ID:
        return values
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidValueError(
            f"{what} must be a sequence of node ids (ints), got {type(values).__name__}"
        )
    try:
        view = memoryview(values)  # type: ignore[arg-type]
    except TypeError:
        source: Any = values
    else:  # a buffer (numpy, array of another type): read through its items
        if view.ndim != 1 or view.format not in _INT_FORMATS:
            raise InvalidValueError(
                f"{what} must be a one-dimensional sequence of ints, got a buffer of format "
                f"{view.format!r} and {view.ndim} dimension(s)"
            )
        source = view.tolist()
    try:
        return array(_ID, source)
    except (OverflowError, TypeError):
        for i, v in enumerate(source):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFF_FFFF:
                raise InvalidValueError(
                    f"{what}[{i}] must be an id (an int from 0 to 4294967295), got {v!r}"
                ) from None
        raise


def _count(what: str, *lengths: tuple[str, int]) -> int:
    """The common length of arrays given together.

    :raises InvalidValueError: naming each array and its length.
    """
    if len({n for _, n in lengths}) > 1:
        shown = ", ".join(f"{name} {n}" for name, n in lengths)
        raise InvalidValueError(f"{what}: the arrays must have equal lengths, got {shown}")
    return lengths[0][1]


@dataclass(frozen=True, slots=True)
class _Block:
    """Nodes ``first .. first + count - 1``, named ``f"{prefix}{k}"`` or ``names[k]``."""

    first: int
    count: int
    prefix: str | None
    names: Sequence[str] | None


def _index_in(prefix: str, name: str) -> int | None:
    """``k`` if ``name`` is ``f"{prefix}{k}"`` (``k`` written as ``str(k)`` writes it)."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if not (rest.isascii() and rest.isdigit()) or (len(rest) > 1 and rest[0] == "0"):
        return None
    return int(rest)


@dataclass(frozen=True, slots=True)
class _TaskInfo:
    task: AsyncTaskiqDecoratedTask[Any, Any]
    name: str
    required: tuple[str, ...]
    known: frozenset[str] | None  # None: takes any keyword


def _task_info(task: object) -> _TaskInfo:
    if not isinstance(task, AsyncTaskiqDecoratedTask):
        name = getattr(task, "__name__", repr(task))
        raise NotATaskError(
            f"{name} is not a taskiq task: decorate it with @broker.task before using it in a "
            "bulk dataflow"
        )
    parameters = list(inspect.signature(task.original_func).parameters.values())
    keywords = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
    return _TaskInfo(
        task,
        task_display_name(task),
        tuple(p.name for p in keywords if p.default is p.empty),
        None if takes_any else frozenset(p.name for p in keywords),
    )


class BulkDataflow(RunOptions):
    """A dataflow of many nodes of a few tasks, declared with arrays.

    :param broker: the taskiq broker tasks are sent through.
    :param tasks: the tasks nodes run; a node names its task by its index in this list.
    :param max_parallel: most tasks of one run in flight at once (``None``: all that are ready).
    :param options: the run options of :class:`~taskiq_flow.DataflowPipeline` (``on_error``,
        ``run_timeout``, ``name``, ``on_progress``, ``retry``, ``tracking``, ``dead_letters``,
        ``worker_pool``), each checked here by its rule.
    :raises NotATaskError: for something that is not a taskiq task, or a task registered on
        another broker.
    :raises InvalidValueError: for no tasks, a task listed twice, or a bad option value.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        tasks: Sequence[object],
        max_parallel: int | None = None,
        **options: Unpack[RunOptionValues],
    ) -> None:
        check_broker(broker)
        infos = [_task_info(task) for task in tasks]
        if not infos:
            raise InvalidValueError("a bulk dataflow needs at least one task")
        for info in infos:
            check_task_broker(broker, info.task)
        seen: dict[int, int] = {}
        for i, info in enumerate(infos):
            j = seen.setdefault(id(info.task), i)
            if j != i:
                raise InvalidValueError(
                    f"task {info.name!r} is listed twice (at {j} and {i}): list each task once "
                    "and give its index to every node that runs it"
                )
        self.broker = broker
        self.settings = Settings(name="bulk dataflow").given(
            f"{type(self).__name__}()", {"max_parallel": max_parallel, **options}
        )
        self._tasks = infos
        self._blocks: list[_Block] = []
        self._firsts: list[int] = []
        self._task_of = array(_ID)
        self._sources = array(_ID)
        self._targets = array(_ID)
        self._params = array(_ID)
        self._feed_targets = array(_ID)
        self._feed_params = array(_ID)
        self._feed_inputs = array(_ID)
        self._param_ids: dict[str, int] = {}
        self._input_ids: dict[str, int] = {}
        self._table: DataflowTable | None = None
        self._named: dict[str, int] | None = None
        self._run: Runner | None = None
        #: The run in progress, or the last one.
        self.last_run: Runner | None = None
        self.pipeline_id: str | None = None

    # -- declaring -------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        """Nodes declared so far."""
        return len(self._task_of)

    @property
    def edge_count(self) -> int:
        """Edges between nodes declared so far (external inputs not counted)."""
        return len(self._sources)

    @property
    def external_inputs(self) -> list[str]:
        """The names of the run's external inputs (declared with :meth:`feed`)."""
        return list(self._input_ids)

    def add_nodes(
        self,
        count: int | None = None,
        *,
        task: int | Sequence[int] = 0,
        output: str | Sequence[str],
    ) -> range:
        """Adds a block of nodes and returns their ids.

        :param count: how many (default: one per name of ``output``, or per entry of ``task``).
        :param task: the index (in this dataflow's tasks) of the task every node runs, or one
            index per node.
        :param output: a prefix (node ``k`` of the block is named ``f"{output}{k}"``, made only
            when asked for), or one name per node.
        :raises InvalidValueError: for a count below 0, a task index out of range, a prefix that
            is not a non-empty str, names that are not strs, lengths that disagree.
        :raises StateError: while the dataflow runs (as :meth:`connect` and :meth:`feed` do).
        """
        self._check_still()
        names: Sequence[str] | None = None
        prefix: str | None = None
        if isinstance(output, str):
            if not output:
                raise InvalidValueError("output must be a non-empty prefix or a list of names")
            prefix = output
        else:
            names = list(output)
            if not all(isinstance(name, str) and name for name in names):
                bad = next(name for name in names if not (isinstance(name, str) and name))
                raise InvalidValueError(f"output names must be non-empty strs, got {bad!r}")
        if isinstance(count, bool) or (count is not None and not isinstance(count, int)):
            raise InvalidValueError(f"count must be an int >= 0, got {count!r}")
        per_node = None if isinstance(task, int) else _ids("task", task)
        lengths: list[tuple[str, int]] = [("count", count)] if count is not None else []
        if names is not None:
            lengths.append(("output", len(names)))
        if per_node is not None:
            lengths.append(("task", len(per_node)))
        if not lengths:
            raise InvalidValueError("add_nodes() needs a count when output is a prefix")
        n = _count("add_nodes()", *lengths)
        if n < 0:
            raise InvalidValueError(f"count must be an int >= 0, got {n}")
        tasks = len(self._tasks)
        if isinstance(task, int):
            if isinstance(task, bool) or not 0 <= task < tasks:
                raise InvalidValueError(
                    f"task must be an index into the {tasks} task(s) of the dataflow, got {task!r}"
                )
            self._task_of.extend(array(_ID, [task]) * n)
        else:
            assert per_node is not None
            if n and max(per_node) >= tasks:
                i = next(i for i, t in enumerate(per_node) if t >= tasks)
                raise InvalidValueError(
                    f"task[{i}] must be an index into the {tasks} task(s) of the dataflow, got "
                    f"{per_node[i]}"
                )
            self._task_of.extend(per_node)
        first = len(self._task_of) - n
        if n:
            self._blocks.append(_Block(first, n, prefix, names))
            self._firsts.append(first)
        self._changed()
        return range(first, first + n)

    def connect(
        self, sources: Sequence[int], targets: Sequence[int], param: str | Sequence[str]
    ) -> None:
        """Declares edges: node ``sources[i]``'s value is passed to node ``targets[i]`` as the
        parameter ``param`` (one name for every edge here, or one per edge).

        :raises InvalidValueError: for arrays of unequal length, a value that is not an id, a
            parameter name that is not a non-empty str. Ids are checked against the nodes
            (and cycles looked for) when the dataflow is built, before any run.
        """
        self._check_still()
        src = _ids("sources", sources)
        dst = _ids("targets", targets)
        if isinstance(param, str):
            n = _count("connect()", ("sources", len(src)), ("targets", len(dst)))
            ids = array(_ID, [self._param(param)]) * n
        else:
            names = list(param)
            _count("connect()", ("sources", len(src)), ("targets", len(dst)), ("param", len(names)))
            ids = array(_ID, map(self._param, names))
        self._sources.extend(src)
        self._targets.extend(dst)
        self._params.extend(ids)
        self._changed()

    def feed(self, input: str, targets: Sequence[int], param: str | None = None) -> None:
        """Declares that the run's external input ``input`` is passed to each node of
        ``targets`` as the parameter ``param`` (default: ``input``). Every declared input must be
        given to :meth:`kiq_dataflow`.

        :raises InvalidValueError: for a name that is not a non-empty str, a target that is not
            an id.
        """
        self._check_still()
        if not isinstance(input, str) or not input:
            raise InvalidValueError(f"input must be a non-empty str, got {input!r}")
        dst = _ids("targets", targets)
        self._feed_targets.extend(dst)
        self._feed_params.extend(array(_ID, [self._param(param or input)]) * len(dst))
        input_id = self._input_ids.setdefault(input, len(self._input_ids))
        self._feed_inputs.extend(array(_ID, [input_id]) * len(dst))
        self._changed()

    def _param(self, name: str) -> int:
        ids = self._param_ids
        found = ids.get(name)
        if found is not None:
            return found
        if not isinstance(name, str) or not name:
            raise InvalidValueError(f"a parameter name must be a non-empty str, got {name!r}")
        return ids.setdefault(name, len(ids))

    def _check_still(self) -> None:
        if self._run is not None:
            # The run reads these arrays (its plan is them, not a copy): they hold still.
            raise StateError("a bulk dataflow cannot change while it runs")

    def _changed(self) -> None:
        self._table = None
        self._named = None

    # -- checking --------------------------------------------------------------------------------

    def build(self) -> DataflowTable:
        """Checks the whole declaration and hands it to the core (done by the first run; again
        only after a change).

        :raises InvalidValueError, UnknownIdError: for an id out of range.
        :raises CycleError: for a cycle (``cycle`` lists the nodes' names).
        :raises DataflowError: a parameter given twice, or one the task does not take.
        :raises MissingInputError: a required parameter nothing gives.
        :raises DuplicateOutputError: two nodes with one name.
        """
        if self._table is not None:
            return self._table
        self._check_names()
        params = list(self._param_ids)
        try:
            table = DataflowTable(
                self._task_of.tobytes(),
                len(self._tasks),
                len(params),
                len(self._input_ids),
                self._sources.tobytes(),
                self._targets.tobytes(),
                self._params.tobytes(),
                self._feed_targets.tobytes(),
                self._feed_params.tobytes(),
                self._feed_inputs.tobytes(),
            )
        except CycleError as err:
            names = [self.name_of(v) for v in err.args[1]] if len(err.args) > 1 else []
            raise CycleError(f"nodes are in a cycle: {' -> '.join(names)}", names) from None
        ids = self._param_ids
        required = [[ids[p] for p in info.required if p in ids] for info in self._tasks]
        known = [
            None if info.known is None else [ids[p] for p in info.known if p in ids]
            for info in self._tasks
        ]
        problem = table.check_params(required, known)
        if problem is None:
            # A required parameter no node of the task is given at all (never interned).
            for t, info in enumerate(self._tasks):
                absent = [p for p in info.required if p not in ids]
                if absent and self._task_of.count(t):
                    raise self._missing(self._task_of.index(t), absent[0])
        else:
            kind, node, param = problem
            name = params[param]
            if kind == "missing":
                raise self._missing(node, name)
            info = self._tasks[self._task_of[node]]
            if kind == "twice":
                raise DataflowError(
                    f"node {self.name_of(node)!r} (task {info.name!r}) is given parameter "
                    f"{name!r} more than once"
                )
            takes = ", ".join(sorted(info.known or ())) or "no keywords"
            close = difflib.get_close_matches(name, sorted(info.known or ()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (it takes {takes})"
            raise DataflowError(
                f"node {self.name_of(node)!r} is given parameter {name!r}, which its task "
                f"{info.name!r} does not take{hint}"
            )
        self._table = table
        return table

    def _missing(self, node: int, param: str) -> MissingInputError:
        info = self._tasks[self._task_of[node]]
        return MissingInputError(
            f"node {self.name_of(node)!r} (task {info.name!r}) is not given its parameter "
            f"{param!r}: no edge and no external input feeds it"
        )

    def _check_names(self) -> None:
        """Two blocks must not name a node alike."""
        prefixed = [b for b in self._blocks if b.prefix is not None]
        for a in prefixed:
            for b in prefixed:
                assert a.prefix is not None and b.prefix is not None
                if a is b or not b.prefix.startswith(a.prefix):
                    continue
                rest = b.prefix[len(a.prefix) :]
                # b's names are a.prefix + rest + str(k), a's too when that is a's str(m), m <
                # a.count; the smallest such m is int(rest + "0").
                digits = rest.isascii() and rest.isdigit() and rest[:1] != "0"
                if rest == "" or (digits and int(rest) * 10 < a.count):
                    if rest == "" and a.first > b.first:
                        continue  # reported once, from the earlier block
                    raise DuplicateOutputError(
                        f"output {b.prefix + '0'!r} is the name of two nodes: node {b.first} "
                        f"(block {b.prefix!r}) and node {a.first + int(rest + '0')} "
                        f"(block {a.prefix!r}); give the blocks prefixes that cannot meet"
                    )
        explicit: dict[str, int] = {}
        for block in self._blocks:
            if block.names is None:
                continue
            for k, name in enumerate(block.names):
                other = explicit.setdefault(name, block.first + k)
                if other != block.first + k:
                    raise DuplicateOutputError(
                        f"output {name!r} is the name of two nodes: {other} and {block.first + k}"
                    )
                for b in prefixed:
                    assert b.prefix is not None
                    index = _index_in(b.prefix, name)
                    if index is not None and index < b.count:
                        raise DuplicateOutputError(
                            f"output {name!r} is the name of two nodes: {block.first + k} and "
                            f"{b.first + index} (block {b.prefix!r})"
                        )

    # -- names -----------------------------------------------------------------------------------

    def name_of(self, node: int) -> str:
        """The name of node ``node`` (made now).

        :raises IndexError: for a node that does not exist.
        """
        if not isinstance(node, int) or not 0 <= node < len(self._task_of):
            raise IndexError(f"no node {node!r} (the dataflow has {len(self._task_of)})")
        block = self._blocks[bisect.bisect_right(self._firsts, node) - 1]
        if block.names is not None:
            return block.names[node - block.first]
        return f"{block.prefix}{node - block.first}"

    def node(self, name: str) -> int:
        """The id of the node named ``name``.

        :raises KeyError: for a name no node has.
        """
        if not isinstance(name, str):
            raise KeyError(name)
        if self._named is None:
            self._named = {
                name: block.first + k
                for block in self._blocks
                if block.names is not None
                for k, name in enumerate(block.names)
            }
        found = self._named.get(name)
        if found is not None:
            return found
        for block in self._blocks:
            if block.prefix is not None:
                index = _index_in(block.prefix, name)
                if index is not None and index < block.count:
                    return block.first + index
        raise KeyError(name)

    # -- running ---------------------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Checks a run's external inputs: every declared one given, nothing else, each one
        something the broker can send.

        :raises MissingInputError: naming what is missing (and what is unknown).
        :raises DataflowError: for an input that no node takes.
        :raises UnserializableError: naming the input the broker cannot send.
        """
        declared = self._input_ids
        missing = [name for name in declared if name not in inputs]
        unknown = [name for name in inputs if name not in declared]
        said = unknown_inputs(unknown, declared, "node") if unknown else ""
        if missing:
            also = f"; also given {said}" if said else ""
            shown = ", ".join(repr(m) for m in missing)
            raise MissingInputError(f"the run needs the external inputs {shown}{also}")
        if unknown:
            raise DataflowError(said)
        try:
            check_serializable(self.broker, "inputs", (), inputs)
        except UnserializableError:
            for name, value in inputs.items():
                check_serializable(self.broker, "inputs", (), {name: value}, f"input {name!r}")
            raise

    def _plan(self, table: DataflowTable, inputs: Mapping[str, Any]) -> Plan:
        call = table.bind(
            list(self._param_ids),
            [inputs.get(name, _MISSING) for name in self._input_ids],
            _MISSING,
        )
        steps = [
            StepSpec(
                info.name,
                info.task.task_name,
                info.task.labels,
                timeout=attempt_timeout(info.task.labels, info.name),
                # How many nodes the step has (one count over the packed array per task).
                tasks=self._task_of.count(t),
                resources=resources_of(info.task),
            )
            for t, info in enumerate(self._tasks)
        ]
        return Plan(len(self._task_of), self._sources, self._targets, steps, call, self._task_of)

    async def kiq_dataflow(self, **inputs: Any) -> BulkResults:
        """Runs the dataflow and returns every node's value, read by name or by id.

        :raises CycleError, MissingInputError, DataflowError, UnserializableError,
            DuplicateOutputError: before any task is sent.
        :raises StepFailedError: a task failed for good (``results`` is a :class:`BulkResults`
            of what finished).
        """
        table = self.build()
        self.check_inputs(inputs)
        run = Runner(
            self.broker,
            self._plan(table, inputs),
            self.settings,
            pipeline_id=uuid.uuid4().hex,
            inputs=inputs,
        )
        self._run = self.last_run = run
        self.pipeline_id = run.pipeline_id
        try:
            values = await run.execute()
        except Exception as err:
            if hasattr(err, "results"):
                err.results = BulkResults(self, run.results, run.has_result)
            raise
        finally:
            self._run = None
        return BulkResults(self, values)

    def cancel(self) -> None:
        """Cancels the run in progress, if any: :meth:`kiq_dataflow` raises
        :class:`~taskiq_flow.exceptions.PipelineCancelledError`."""
        if self._run is not None:
            self._run.cancel()

    def explain(self, node_or_step: int | str) -> str:
        """Why a node (by id) or a task's nodes (by the task's name) of the run in progress (or
        the last run) are where they are, in one sentence.

        :raises DataflowError: if there has been no run.
        :raises UnknownIdError: for a node or task the dataflow does not have.
        """
        if self.last_run is None:
            raise DataflowError("no run to explain: the dataflow has not run yet")
        return self.last_run.explain(node_or_step)


class BulkResults(Mapping[str, Any]):
    """The values of a bulk dataflow's nodes: ``results[name]``, ``results.at(node)``.

    A mapping from node names to values that makes no name until one is asked for; ``dict(
    results)`` builds the full dict when that is what is wanted. After a failed run it holds the
    nodes that finished.
    """

    __slots__ = ("_finished", "_flow", "_values")

    def __init__(
        self,
        flow: BulkDataflow,
        values: Sequence[Any],
        finished: Callable[[int], bool] | None = None,
    ) -> None:
        self._flow = flow
        self._values = values
        self._finished = finished

    def at(self, node: int) -> Any:
        """The value of node ``node`` (by id).

        :raises IndexError: for a node that does not exist.
        :raises KeyError: for a node that did not finish.
        """
        if not isinstance(node, int) or not 0 <= node < len(self._values):
            raise IndexError(f"no node {node!r} (the dataflow has {len(self._values)})")
        if self._finished is not None and not self._finished(node):
            raise KeyError(self._flow.name_of(node))
        return self._values[node]

    @property
    def by_node(self) -> Sequence[Any]:
        """Every node's value by id (after a failed run, unfinished entries are placeholders:
        use :meth:`at`)."""
        return self._values

    def __getitem__(self, name: str) -> Any:
        return self.at(self._flow.node(name))

    def __iter__(self) -> Iterator[str]:
        name_of = self._flow.name_of
        finished = self._finished
        for node in range(len(self._values)):
            if finished is None or finished(node):
                yield name_of(node)

    def __len__(self) -> int:
        if self._finished is None:
            return len(self._values)
        return sum(1 for node in range(len(self._values)) if self._finished(node))

    def __repr__(self) -> str:
        return f"<BulkResults of {len(self)} nodes>"
