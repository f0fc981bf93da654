"""A run that grows while it runs: what the runner does with an :class:`~taskiq_flow.Expand` a task
returned, with a node that maps over items (:class:`~taskiq_flow.run.plan.EachSpec`), and with the
nodes the core closes.

The core holds the grown run (one scheduler whose node count grows, every cap above a new node
counted); this module says what to add: the nodes, their steps and admission keys, how each new
node's call is built, and what value a node that had children ends with. It also keeps the
growth log tracking stores, so that a resumed run grows again into the same node ids.

A node given children is *open*: the core closes it when its children (and its own inputs) are
finished; its value is then the list of its children's values in order (a skipped child left
out), or the value of its ``then`` node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taskiq_flow.exceptions import DataflowError, InvalidValueError
from taskiq_flow.growth import Expand
from taskiq_flow.pictures import SimpleGraph, SimpleNode
from taskiq_flow.resources import resources_of
from taskiq_flow.run.checks import check_calls
from taskiq_flow.run.plan import MISSING, EachSpec, StepSpec, attempt_timeout, task_display_name

if TYPE_CHECKING:
    from taskiq.decor import AsyncTaskiqDecoratedTask

    from taskiq_flow._core import DagScheduler
    from taskiq_flow.run.plan import Plan
    from taskiq_flow.run.runner import Runner

__all__ = ["Grower"]

_META = "__taskiq_flow_dataflow__"


@dataclass(slots=True)
class _Opened:
    """A node that was given children: ids ``first`` .. ``first + count - 1`` (the last is the
    ``then`` node when ``then``); ``value`` makes its value from ``items`` and theirs."""

    first: int
    count: int
    then: bool = False
    items: list[Any] | None = None
    value: Callable[[list[Any], list[Any]], Any] | None = None


def _declared(task: object) -> Any:
    """A task's ``pipeline_task`` declaration, if it has one."""
    return getattr(task, _META, None) or getattr(getattr(task, "original_func", None), _META, None)


class Grower:
    """What a :class:`~taskiq_flow.run.runner.Runner` adds to its run, and the values of the
    nodes the core closes.

    :param run: the runner (its plan, results, scheduler, events).
    :param keys: each static node's admission key (``None``: all 0).
    """

    def __init__(self, run: Runner, keys: Sequence[int] | None) -> None:
        self.run = run
        self.plan: Plan = run.plan
        #: Nodes from this id on were added while the run lived.
        self.base = run.plan.node_count
        #: Per node, its admission key (so that a child's key can chain under its parent's).
        self.keys: list[int] = list(keys) if keys is not None else [0] * run.plan.node_count
        self.opened: dict[int, _Opened] = {}
        #: Growth records not yet written to tracking (in order), and all of them so far.
        self.log: list[dict[str, Any]] = []
        self.pending_log: list[dict[str, Any]] = []
        #: Nodes closed since the runner last took them (their values are set).
        self.closed: list[int] = []
        #: ``(root step, task name) -> step`` for the steps children of other tasks run in.
        self._child_steps: dict[tuple[int, str], int] = {}
        #: Each step's top-level step (steps added for children point at their root).
        self._root: dict[int, int] = {}
        #: Steps added while the run grew, to tell tracking.
        self.new_steps: list[int] = []
        #: Edges added (``source, target``), for a resume's restored set.
        self.edges: list[tuple[int, int]] = []
        #: The admission keys of expansions with their own cap, and the node that expanded.
        self.expansion_keys: dict[int, int] = {}

    @property
    def scheduler(self) -> DagScheduler:
        scheduler = self.run.scheduler
        assert scheduler is not None
        return scheduler

    # -- what comes out of the core -------------------------------------------------------------

    def admitted(self, nodes: list[int], now: float) -> list[int]:
        """The nodes the core admitted, minus those that map over items, which are given their
        items as children here (their admitted children are in the list returned)."""
        each = self.plan.each
        if not each:
            return nodes
        out: list[int] = []
        queue = list(nodes)
        i = 0
        while i < len(queue):
            node = queue[i]
            i += 1
            spec = each.get(node)
            if spec is None or node in self.opened:
                out.append(node)
                continue
            self.take_closed()  # an earlier expansion here may have closed what it reads
            try:
                queue += self._map(node, spec, now)
            except DataflowError as err:
                self.run.fail_unsent(node, err)
        return out

    def take_closed(self) -> None:
        """Sets the value of every node the core closed (children before parents)."""
        if not self.log:
            return  # the run never grew: the core closes only nodes that grew children
        closed = self.scheduler.take_closed()
        if not closed:
            return
        results = self.run.results
        for node in closed:
            opened = self.opened.get(node)
            if opened is None:  # an expansion with nothing in it: nothing recorded
                results[node] = []
            elif opened.value is not None:
                first = opened.first
                own = results[first : first + opened.count]
                results[node] = opened.value(opened.items or [], own)
            elif opened.then:
                results[node] = results[opened.first + opened.count - 1]
            else:
                first = opened.first
                results[node] = [
                    v for v in results[first : first + opened.count] if v is not MISSING
                ]
        self.closed += closed

    # -- a node that maps over items --------------------------------------------------------------

    def _items(self, node: int, spec: EachSpec) -> tuple[int, dict[str, list[Any]]]:
        """The items of each mapped parameter of ``node`` (checked: lists of one length)."""
        if spec.items is not None:
            found = spec.items(self.run.results)
            return len(found), {"": found}
        _, kwargs = self.plan.build(node, self.run.results)
        lists: dict[str, list[Any]] = {}
        step = self.plan.step(node).name
        for param in spec.params:
            value = kwargs.get(param, MISSING)
            if not isinstance(value, (list, tuple)):
                shown = "no value" if value is MISSING else type(value).__name__
                raise DataflowError(
                    f"step {step!r} maps over {param!r} item by item, which must be a list; "
                    f"got {shown}"
                )
            lists[param] = list(value)
        lengths = {len(v) for v in lists.values()}
        if len(lengths) > 1:
            shown = ", ".join(f"{p!r} has {len(v)}" for p, v in lists.items())
            raise DataflowError(
                f"step {step!r} zips its item-by-item parameters, which must be as long as each "
                f"other: {shown}"
            )
        return (lengths.pop() if lengths else 0), lists

    def _map(self, node: int, spec: EachSpec, now: float) -> list[int]:
        """Gives ``node`` one child per item; steps mapping over its items one by one (whose
        other inputs are done) are given theirs in the same growth: item ``i`` of each goes on
        as soon as item ``i`` before it is done, with no barrier between the steps."""
        count, lists = self._items(node, spec)
        group = [node, *self._chained(node, count)]
        return self._grow_group(group, count, lists, now)

    def _chained(self, node: int, count: int) -> list[int]:
        """The waiting steps that map item by item over ``node``'s items (transitively), whose
        other inputs are all done."""
        each = self.plan.each
        assert each is not None
        scheduler = self.scheduler
        group = [node]
        found: list[int] = []
        changed = True
        while changed:
            changed = False
            for other, spec in each.items():
                if other in group or other in self.opened or scheduler.state(other) != "waiting":
                    continue
                fed = [p for p in spec.producers if p is not None and p in group]
                if not fed or len(fed) != len(spec.producers):  # items from elsewhere: later
                    continue
                plain = [u for u in self.run.inputs_of(other) if u not in group]
                if all(scheduler.state(u) == "done" for u in plain):
                    group.append(other)
                    found.append(other)
                    changed = True
        return found

    def _grow_group(
        self, group: list[int], count: int, lists: dict[str, list[Any]], now: float
    ) -> list[int]:
        """Grows ``count`` children under each node of ``group`` (the first maps over
        ``lists``; each next one over the children of the one it names)."""
        plan = self.plan
        each = plan.each
        assert each is not None
        first = plan.node_count
        position = {parent: g for g, parent in enumerate(group)}
        sources: list[int] = []
        targets: list[int] = []
        for g, parent in enumerate(group[1:], start=1):
            for producer in each[parent].producers:
                assert producer is not None
                base = first + position[producer] * count
                sources += range(base, base + count)
                targets += range(first + g * count, first + (g + 1) * count)
        for g, parent in enumerate(group):
            start = first + g * count
            self._record(parent, start, count)
            if each[parent].value is not None and g == 0:
                self.opened[parent].items = lists[""]
                self.opened[parent].value = each[parent].value
            # The mapping node stands for its items: they are its step's tasks, it is none.
            plan.step(parent).tasks += count - 1
            spec = each[parent]
            own = lists if g == 0 else None
            plan.grow([plan.step_index(parent)] * count, self._each_call(parent, spec, start, own))
            self.keys += [self.keys[parent]] * count
        self.edges += zip(sources, targets)
        self._log({"each": group, "count": count, "first": first})
        self.run.nodes_added(first, count * len(group))
        if count == 0:  # no items: each node of the group closes once its inputs are done
            admitted = []
            for parent in group:
                admitted += self.scheduler.expand(parent, 0, now=now)[0]
            return admitted
        parents: list[int | None] = [p for p in group for _ in range(count)]
        admitted, skipped, skipped_by, failed = self.scheduler.grow(
            count * len(group),
            parents=parents,
            sources=sources,
            targets=targets,
            keys=self.keys[first:],
            classes=self._classes_like(group, count),
            now=now,
        )
        self.run.outcome(skipped, skipped_by, failed)
        return admitted

    def _each_call(
        self, parent: int, spec: EachSpec, first: int, lists: dict[str, list[Any]] | None
    ) -> Callable[[int, Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]:
        plan = self.plan
        params = spec.params
        producers = spec.producers
        offsets: list[int] = []
        item_call = spec.item_call
        if item_call is not None:
            assert lists is not None
            found = lists[""]

            def one(node: int, _results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
                return item_call(found[node - first])

            return one
        if lists is None:  # item i of each parameter is the value of item i of its producer
            for producer in producers:
                assert producer is not None
                offsets.append(self.opened[producer].first - first)

        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            args, kwargs = plan.build(parent, results)
            i = node - first
            if lists is not None:
                for param in params:
                    kwargs[param] = lists[param][i]
            else:
                for param, offset in zip(params, offsets):
                    kwargs[param] = results[node + offset]
            return args, kwargs

        return call

    def _record(self, parent: int, first: int, count: int, then: bool = False) -> None:
        self.opened[parent] = _Opened(first, count, then)

    def _classes_like(self, group: Sequence[int], count: int) -> list[int] | None:
        """Per new node, the worker-pool class of its parent's step (``None`` without a pool)."""
        pool = self.run.worker_pool
        if pool is None:
            return None
        plan = self.plan
        classes: list[int] = []
        for parent in group:
            classes += [pool.class_of(plan.step(parent).resources)] * count
        return classes

    # -- a task that adds tasks ------------------------------------------------------------------

    def expand(self, node: int, expansion: Expand, now: float) -> list[int]:
        """``node``'s task returned ``expansion``: its children (and ``then``) join the run.

        :return: the nodes the core admitted now.
        :raises NotATaskError: a task the orchestrator's broker does not know.
        """
        broker = self.run.broker
        child = expansion.child(broker)
        then = expansion.reducer(broker)
        plan = self.plan
        step = plan.step_index(node)
        child_step = self._step_for(step, child)
        then_step = self._step_for(step, then) if then is not None else None
        items = expansion.items
        # Items are the children's arguments: refused as any argument is (a generator, an int
        # past the digit limit, an object the broker cannot send), naming the item, before any
        # child is added.
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((item,), {}) for item in items]
        check_calls(broker, child.task_name, calls, plan.step(node).name)
        count = len(items)
        total = count + (then is not None)
        key = self.keys[node]
        if expansion.max_parallel is not None:
            key = self.scheduler.add_key(
                max_parallel=expansion.max_parallel, parent=key if key else None
            )
            self.expansion_keys[key] = node
        first = plan.node_count
        steps = [child_step] * count
        if then_step is not None:
            steps.append(then_step)
        keys = [key] * total
        plan.grow(steps, self._expand_call(first, count, items))
        for s in steps:
            plan.steps[s].tasks += 1
        self.keys += keys
        self._record(node, first, total, then is not None)
        sources: list[int] = []
        targets: list[int] = []
        if then is not None:
            sources = list(range(first, first + count))
            targets = [first + count] * count
            self.edges += zip(sources, targets)
        self._log({"expand": node, "first": first, "value": expansion.to_wire()})
        self.run.nodes_added(first, total)
        admitted, skipped, skipped_by, failed = self.scheduler.expand(
            node,
            total,
            sources=sources,
            targets=targets,
            optional=[True] * len(sources) if sources else None,
            keys=keys,
            classes=self._classes_of(steps),
            now=now,
        )
        self.run.outcome(skipped, skipped_by, failed)
        return admitted

    def _expand_call(
        self, first: int, count: int, items: list[Any]
    ) -> Callable[[int, Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]:
        def call(node: int, results: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            i = node - first
            if i < count:
                return (items[i],), {}
            # The ``then`` node: the children's values in order, the skipped ones left out.
            return ([v for v in results[first : first + count] if v is not MISSING],), {}

        return call

    def _classes_of(self, steps: Sequence[int]) -> list[int] | None:
        pool = self.run.worker_pool
        if pool is None:
            return None
        spec = self.plan.steps
        return [pool.class_of(spec[s].resources) for s in steps]

    def _step_for(self, step: int, task: AsyncTaskiqDecoratedTask[Any, Any]) -> int:
        """The step children running ``task`` under a node of ``step`` are in: that step when
        it runs the same task, else ``<top-level step>/<task>`` (one per top-level step and
        task, however deep the children)."""
        plan = self.plan
        if plan.steps[step].task_name == task.task_name:
            return step
        root = self._root.get(step, step)
        if plan.steps[root].task_name == task.task_name:
            return root
        known = self._child_steps.get((root, task.task_name))
        if known is not None:
            return known
        name = task_display_name(task)
        meta = _declared(task)
        # Its task's retry and attempt timeout apply; its admission is its parent's (the
        # expansion's cap, and every cap above the parent).
        spec = StepSpec(
            f"{plan.steps[root].name}/{name}",
            task.task_name,
            dict(task.labels),
            retry=getattr(meta, "retry", None),
            timeout=(getattr(meta, "timeout", None) or attempt_timeout(dict(task.labels), name)),
            resources=resources_of(task),
            tasks=0,
        )
        index = plan.add_step(spec)
        self._child_steps[(root, task.task_name)] = index
        self._root[index] = root
        self.new_steps.append(index)
        return index

    def shape(self) -> SimpleGraph:
        """The run as it grew: a node per node, named by its step (``collapse=True`` draws a
        step's nodes as one), its edges, and each added node's edge to the node that added it."""
        plan = self.plan
        names = [plan.step(v).name for v in range(plan.node_count)]
        nodes = [SimpleNode(name, name) for name in names]
        sources = list(plan.sources)
        targets = list(plan.targets)
        for a, b in self.edges:
            sources.append(a)
            targets.append(b)
        for parent, opened in self.opened.items():
            sources += range(opened.first, opened.first + opened.count)
            targets += [parent] * opened.count
        return SimpleGraph(nodes, sources, targets)

    # -- the log a resume grows from -------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.log.append(record)
        self.pending_log.append(record)

    def take_log(self) -> list[dict[str, Any]]:
        """Growth records not yet written to tracking, in order."""
        pending, self.pending_log = self.pending_log, []
        return pending

    def replay(self, records: Sequence[dict[str, Any]]) -> None:
        """Grows the run again as an earlier run of it grew (before the start: a resume), so
        that every node has the id it had.

        :raises CorruptRecordError: a record that does not fit this run.
        """
        from taskiq_flow.exceptions import CorruptRecordError

        run = self.run
        for record in records:
            try:
                if record.get("first") != self.plan.node_count:
                    raise ValueError(f"it starts at node {record.get('first')}")
                if "expand" in record:
                    node = int(record["expand"])
                    expansion = Expand(
                        record["value"]["task"],
                        record["value"]["items"],
                        record["value"].get("max_parallel"),
                        record["value"].get("then"),
                    )
                    self.expand(node, expansion, 0.0)
                else:
                    group = [int(v) for v in record["each"]]
                    count = int(record["count"])
                    each = self.plan.each or {}
                    spec = each[group[0]]
                    _, lists = self._items(group[0], spec)
                    if any(len(v) != count for v in lists.values()):
                        raise ValueError("its items changed")
                    self._grow_group(group, count, lists, 0.0)
            except (KeyError, TypeError, ValueError, InvalidValueError, DataflowError) as err:
                raise CorruptRecordError(
                    f"run {run.pipeline_id} cannot grow again as it did: a growth record does "
                    f"not fit ({err})"
                ) from None
        self.pending_log.clear()

    def restorable(self, restored: dict[int, Any]) -> dict[int, Any]:
        """The part of ``restored`` the core can take back: nodes whose inputs are all restored
        too (a node after a skipped one, never restored, runs again)."""
        plan = self.plan
        preds: dict[int, list[int]] = {}
        for a, b in zip(plan.sources, plan.targets):
            preds.setdefault(b, []).append(a)
        for a, b in self.edges:
            preds.setdefault(b, []).append(a)
        for parent, opened in self.opened.items():
            preds.setdefault(parent, []).extend(range(opened.first, opened.first + opened.count))
        kept = dict(restored)
        changed = True
        while changed:
            changed = False
            for node in list(kept):
                if any(u not in kept for u in preds.get(node, ())):
                    del kept[node]
                    changed = True
        return kept


def failed_completion(event: Any, error: BaseException) -> Any:
    """``event`` (a :class:`~taskiq_flow.events.Completion`) as a failure with ``error``."""
    return replace(event, ok=False, value=None, error=error)
