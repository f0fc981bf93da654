"""The exceptions of taskiq-flow: one tree, rooted at :class:`TaskiqFlowError`.

::

    TaskiqFlowError                      (Exception)
    ├── CycleError          graphlib.CycleError (a ValueError): the graph has a cycle
    ├── StateError          ValueError: an operation the current state forbids
    ├── UnknownIdError      ValueError: a node, worker, task or key never registered
    ├── InvalidValueError   ValueError: a cap < 1, a rate <= 0, NaN, a negative demand
    ├── UnschedulableError  ValueError: no worker could ever take the task
    └── InternalError       a bug in the scheduling core (a Rust panic), caught

Errors raised by the Rust core are instances of these classes (the core imports them from here).
Domain errors also derive from what the peer they mirror raises, so ``except graphlib.CycleError``
and ``except ValueError`` keep working for code written against :mod:`graphlib`.

These classes deliberately do not derive from ``taskiq.TaskiqError``: its constructor takes keyword
arguments only, so it cannot be raised with a message from Rust.
"""

from __future__ import annotations

import graphlib

__all__ = [
    "CycleError",
    "InternalError",
    "InvalidValueError",
    "StateError",
    "TaskiqFlowError",
    "UnknownIdError",
    "UnschedulableError",
]


class TaskiqFlowError(Exception):
    """Root of every error taskiq-flow raises on purpose."""


class CycleError(TaskiqFlowError, graphlib.CycleError):
    """The graph has a cycle.

    As with :class:`graphlib.CycleError`, ``args[1]`` is the cycle: a list of nodes in which each
    node is a predecessor of the next and the first node is repeated at the end.
    """

    @property
    def cycle(self) -> list[object]:
        """The nodes of the cycle, first node repeated at the end."""
        return list(self.args[1]) if len(self.args) > 1 else []


class StateError(TaskiqFlowError, ValueError):
    """An operation the object's current state does not allow (done twice, not started, ...)."""


class UnknownIdError(TaskiqFlowError, ValueError):
    """A node, worker, task, label or key that was never registered."""


class InvalidValueError(TaskiqFlowError, ValueError):
    """An argument outside its valid range: a cap below 1, a rate of 0, NaN, a negative demand."""


class UnschedulableError(TaskiqFlowError, ValueError):
    """No worker could ever run the task; the message names the missing resource or label."""


class InternalError(TaskiqFlowError):
    """A bug inside the scheduling core (a Rust panic), surfaced as an exception.

    The object whose method raised it may be in an inconsistent state and should be discarded.
    """
