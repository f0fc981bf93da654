"""Runs that grow: a task that adds tasks (:class:`Expand`), a step that skips
(:class:`~taskiq_flow.exceptions.Skip`), and a dataflow step mapped over another's output item by
item (``pipeline_task(each=...)``).

A task returns ``Expand(child, items)``: its step's value becomes the list of ``child(item)``'s
results in item order (or ``then``'s result over that list). Each child is a node of the same run
(one scheduler, every cap above it counted, explained and retried like any node), and a child
may return ``Expand`` in turn::

    @broker.task
    async def crawl(url: str) -> Expand | str:
        links = await fetch_links(url)
        if not links:
            return url
        return Expand(crawl, links, max_parallel=32)

Over Redis the expansion travels back with the completion as JSON
(``{"__taskiq_flow__": "expand", ...}``; a task result of that shape is read as an expansion),
the child named by its task name: the orchestrator's broker must know that task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskiq import AsyncBroker
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.kicker import AsyncKicker

from taskiq_flow.exceptions import InvalidValueError, NotATaskError, Skip
from taskiq_flow.run.settings import check_max_parallel

__all__ = ["MARKER", "Expand", "Skip", "expansion_of"]

#: The key that marks a value as one of ours on the wire (a dict with it is read as such).
MARKER = "__taskiq_flow__"


def _task_name(task: object, what: str) -> str:
    if isinstance(task, str) and task:
        return task
    if isinstance(task, (AsyncTaskiqDecoratedTask, AsyncKicker)):
        return task.task_name
    name = getattr(task, "__name__", None) or type(task).__name__
    raise NotATaskError(
        f"Expand {what} must be a taskiq task (decorated with @broker.task) or a task name, "
        f"got {name}"
    )


@dataclass(frozen=True, slots=True, init=False)
class Expand:
    """What a task returns to add tasks to its run: ``task(item)`` for each of ``items``.

    :param task: the child task (a taskiq task, or its task name).
    :param items: one child per item, in order; each item is the child's one argument.
    :param max_parallel: most of these children (and their own descendants) in flight at once;
        every cap above (their step's, the run's, the process-wide one) still counts.
    :param then: a task given the list of the children's results (skipped children left out);
        its result is the expanding step's value. Default: the list itself.
    :raises InvalidValueError: ``items`` not a list or tuple, or a bad ``max_parallel``.
    :raises NotATaskError: ``task`` or ``then`` is not a task.
    """

    task: str
    items: list[Any]
    max_parallel: int | None
    then: str | None

    def __init__(
        self,
        task: object,
        items: Sequence[Any],
        max_parallel: int | None = None,
        then: object = None,
    ) -> None:
        if not isinstance(items, (list, tuple)):
            raise InvalidValueError(
                f"Expand items must be a list or a tuple (one child per item), got "
                f"{type(items).__name__}"
            )
        object.__setattr__(self, "task", _task_name(task, "task"))
        object.__setattr__(self, "items", list(items))
        object.__setattr__(
            self, "max_parallel", check_max_parallel(max_parallel, "Expand max_parallel")
        )
        object.__setattr__(self, "then", None if then is None else _task_name(then, "then"))

    def to_wire(self) -> dict[str, Any]:
        """The expansion as the JSON its completion carries."""
        return {
            MARKER: "expand",
            "task": self.task,
            "items": self.items,
            "max_parallel": self.max_parallel,
            "then": self.then,
        }

    def child(self, broker: AsyncBroker) -> AsyncTaskiqDecoratedTask[Any, Any]:
        """The child task, found by name on ``broker``.

        :raises NotATaskError: the broker has no such task.
        """
        return _find(broker, self.task)

    def reducer(self, broker: AsyncBroker) -> AsyncTaskiqDecoratedTask[Any, Any] | None:
        """The ``then`` task, found by name on ``broker`` (``None`` without one)."""
        return None if self.then is None else _find(broker, self.then)


def _find(broker: AsyncBroker, name: str) -> AsyncTaskiqDecoratedTask[Any, Any]:
    task = broker.find_task(name)
    if task is None:
        raise NotATaskError(
            f"Expand names task {name!r}, which the orchestrator's broker does not know: import "
            "the module defining it where the pipeline runs"
        )
    return task


def expansion_of(value: Any) -> Expand | None:
    """The :class:`Expand` a task's value stands for (itself, or its wire form), else ``None``.

    :raises InvalidValueError: a value marked as an expansion whose fields are wrong.
    """
    if isinstance(value, Expand):
        return value
    if type(value) is not dict or value.get(MARKER) != "expand":
        return None
    try:
        return Expand(value["task"], value["items"], value.get("max_parallel"), value.get("then"))
    except (KeyError, NotATaskError) as err:
        raise InvalidValueError(f"a malformed expansion came back from a task: {err}") from None
