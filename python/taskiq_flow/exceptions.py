"""The exceptions of taskiq-flow: one tree, rooted at :class:`TaskiqFlowError`.

::

    TaskiqFlowError                      (Exception)
    ├── CycleError          graphlib.CycleError (a ValueError): the graph has a cycle
    ├── StateError          ValueError: an operation the current state forbids
    ├── UnknownIdError      ValueError: a node, worker, task or key never registered
    ├── InvalidValueError   ValueError: a cap < 1, a rate <= 0, NaN, a negative demand
    ├── UnschedulableError  ValueError: no worker could ever take the task
    ├── DataflowError       ValueError: a pipeline that cannot run as declared
    │   ├── MissingInputError      an input no task produces and the caller did not give
    │   ├── DuplicateOutputError   two tasks produce the same output
    │   ├── NotATaskError          (also TypeError) something that is not a taskiq task
    │   └── UnserializableError    (also TypeError) an argument the broker cannot send
    ├── PayloadTooLargeError ValueError: a value or record over the limits, or not JSON-faithful
    ├── CorruptRecordError  ValueError: a stored record that cannot be read back
    ├── RemoteTaskError     a task failed in another process (its type name and message)
    ├── PipelineError       a run that did not finish
    │   ├── StepFailedError        a step failed for good (fail-fast, or after the others ran)
    │   ├── AbortPipeline          raised by a task to stop its pipeline
    │   ├── PipelineCancelledError the run was cancelled
    │   ├── PoisonMessageError     a step's every delivery killed its worker
    │   │   └── UndeliverableMessageError  no worker can run the message (unknown task,
    │   │                                  undecodable, missing field, malformed label)
    │   ├── ChannelLostError       (also ConnectionError) completions unreadable for too long
    │   │   └── RunStateLostError  the run's state vanished from Redis (restarted, data lost)
    │   ├── WorkerLostError        the worker a step was placed on went away (re-placed, resent)
    │   ├── TaskTimeoutError       (also TimeoutError) one attempt exceeded its step's timeout
    │   └── PipelineTimeoutError   (also TimeoutError) the run exceeded its timeout
    └── InternalError       a bug in the scheduling core (a Rust panic), caught

Errors raised by the Rust core are instances of these classes (the core imports them from here).
Domain errors also derive from what the peer they mirror raises, so ``except graphlib.CycleError``
and ``except ValueError`` keep working for code written against :mod:`graphlib`.

These classes deliberately do not derive from ``taskiq.TaskiqError``: its constructor takes keyword
arguments only, so it cannot be raised with a message from Rust.
"""

from __future__ import annotations

import graphlib
from typing import Any

__all__ = [
    "AbortPipeline",
    "ChannelLostError",
    "CorruptRecordError",
    "CycleError",
    "DataflowError",
    "DuplicateOutputError",
    "InternalError",
    "InvalidValueError",
    "MissingInputError",
    "NotATaskError",
    "PayloadTooLargeError",
    "PipelineCancelledError",
    "PipelineError",
    "PipelineTimeoutError",
    "PoisonMessageError",
    "RemoteTaskError",
    "RunStateLostError",
    "Skip",
    "StateError",
    "StepFailedError",
    "TaskTimeoutError",
    "TaskiqFlowError",
    "UndeliverableMessageError",
    "UnknownIdError",
    "UnschedulableError",
    "UnserializableError",
    "WorkerLostError",
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


class DataflowError(TaskiqFlowError, ValueError):
    """A pipeline that cannot run as declared; raised before any task is sent."""


class MissingInputError(DataflowError):
    """A task needs an input that no task produces and the caller did not pass."""


class DuplicateOutputError(DataflowError):
    """Two tasks declare the same output."""


class NotATaskError(DataflowError, TypeError):
    """Something passed as a task is not a taskiq task (decorate it with ``@broker.task``)."""


class UnserializableError(DataflowError, TypeError):
    """An argument the broker's serializer cannot send."""


class PipelineError(TaskiqFlowError):
    """A pipeline run that did not finish."""


class StepFailedError(PipelineError):
    """A step failed for good.

    :ivar step: the failing step's name.
    :ivar error: the exception it failed with (or its description, if it came from elsewhere).
    :ivar results: what finished before (or despite) the failure: ``{output: value}`` for a
        dataflow, ``{item index: value}`` for ``MapReduce.map``, ``{step name: value}`` for a
        sequential pipeline (a map, filter or group step that failed part way: ``{step name:
        {item index: value}}``).
    :ivar failures: every step that failed for good: ``{step: error}``.
    """

    def __init__(
        self,
        step: str,
        error: BaseException | str | None,
        results: dict[Any, Any] | None = None,
        failures: dict[str, BaseException | str | None] | None = None,
    ) -> None:
        shown = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        super().__init__(f"step {step!r} failed: {shown}")
        self.step = step
        self.error = error
        self.results: dict[Any, Any] = results or {}
        self.failures: dict[str, BaseException | str | None] = failures or {step: error}


class AbortPipeline(PipelineError):
    """Raised by a task to stop its pipeline at once: no retry, nothing after it runs.

    :param reason: why, shown in the error the pipeline raises.
    """

    def __init__(self, reason: str = "No reason provided.") -> None:
        super().__init__(f"Pipeline was aborted. {reason}")
        self.reason = reason


class Skip(TaskiqFlowError):
    """Raised by a task whose output is absent: nothing to do (not a failure, never retried).

    A consumer whose parameter has a default receives the default; one without is skipped too,
    naming this step and ``reason``; in an ``each`` step the item is left out of the list. The
    run still ends done, listing the skipped steps.

    :param reason: why, shown wherever the skip is (tracking, ``explain``).
    """

    def __init__(self, reason: str = "") -> None:
        if not isinstance(reason, str):  # kept as text: a reason must be shown (and travel)
            try:
                reason = str(reason)
            except Exception as exc:
                reason = f"<its str() raised {type(exc).__name__}>"
        super().__init__(reason)
        self.reason = reason


class PipelineCancelledError(PipelineError):
    """The run was cancelled; ``results`` holds what finished before."""

    def __init__(self, message: str, results: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.results: dict[str, Any] = results or {}


class PipelineTimeoutError(PipelineError, TimeoutError):
    """The run exceeded its timeout; ``results`` holds what finished before."""

    def __init__(self, message: str, results: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.results: dict[str, Any] = results or {}


class TaskTimeoutError(PipelineError, TimeoutError):
    """One attempt of a step ran longer than the step's ``timeout``; the message names the step and
    the limit."""


class PoisonMessageError(PipelineError):
    """A step whose every delivery ended with its worker gone (killed, crashed): the broker took
    it out of the queue and the step failed for good. Never retried."""


class WorkerLostError(PipelineError):
    """The worker a step was placed on stopped advertising (died, left). The step's capacity is
    released and the engine places and sends it again; after a few such losses it fails for
    good with this error."""


class UndeliverableMessageError(PoisonMessageError):
    """A message no worker can run: a task the worker does not have, a message that cannot be
    decoded, a stream entry without its ``data`` field. The worker acknowledges it, records it in
    its dead-letter stream and reports the step failed with this error (never retried)."""


class ChannelLostError(PipelineError, ConnectionError):
    """Completions could not be read from Redis for too long: the run stops instead of hanging."""


class RunStateLostError(ChannelLostError):
    """The run's state vanished from Redis (restarted with its data lost, or flushed): what was
    in flight can never report back, so the run fails instead of waiting."""


class RemoteTaskError(TaskiqFlowError):
    """A task failed in another process; its exception arrives as its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class PayloadTooLargeError(TaskiqFlowError, ValueError):
    """A value (a task's result, a tracking record) over the size or nesting-depth limit of
    where it is stored, or one JSON cannot carry unchanged (a non-str key, an int past CPython's
    4300 digits, a value containing itself, an object JSON does not know); the message names the
    step or task, where in the value, and why."""


class CorruptRecordError(TaskiqFlowError, ValueError):
    """A stored record that cannot be read back (not JSON, too deep, missing fields)."""
