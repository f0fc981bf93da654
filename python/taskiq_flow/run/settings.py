"""One frozen settings value per run, and the one rule for each option.

Every pipeline shape takes its options from the user in its own way (constructor arguments,
``with_*`` methods, keyword arguments of ``MapReduce``), but each option is checked by the one
function below that owns it, when it comes in, with the same message whichever API received it.
The runner receives a :class:`Settings` that is already valid and never checks again.

What each word means (the table in the README):

- ``max_parallel`` of a pipeline (``Settings.max_parallel``) bounds that pipeline's tasks in flight,
  all its steps together; of a step (``StepSpec.max_parallel``) bounds that step;
  ``set_max_parallel_tasks`` bounds every pipeline of the process (or of a named Redis group).
- ``timeout`` of a run (``Settings.timeout``) bounds the whole run; of a task
  (``StepSpec.timeout``) bounds one attempt of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from taskiq_flow._core import check_cap
from taskiq_flow._core import check_rate as _core_check_rate
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.retry import DeadLetterQueue, RetryPolicy

if TYPE_CHECKING:
    from taskiq_flow.resources import ResourceAwareWorkerPool
    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = [
    "OnError",
    "Settings",
    "check_max_parallel",
    "check_on_error",
    "check_rate",
    "check_timeout",
]

OnError = Literal["fail", "continue"]


def check_max_parallel(value: object, what: str = "max_parallel") -> int | None:
    """``None``, or an int from 1 to 4294967295: the core's own rule and message.

    :raises InvalidValueError: otherwise.
    """
    cap: int | None = check_cap(value, what)
    return cap


def check_timeout(value: object, what: str = "timeout") -> float | None:
    """``None``, or a finite number of seconds > 0.

    :raises InvalidValueError: otherwise.
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not value > 0
    ):
        raise InvalidValueError(f"{what} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_rate(rate: object, burst: object) -> tuple[float | None, int]:
    """A step's rate limit (``None``: none): the core's own rule and message.

    :raises InvalidValueError: for a rate <= 0, NaN or infinite, or a burst below 1.
    """
    if rate is None:
        return None, 1
    return _core_check_rate(rate, burst)


def check_on_error(value: object) -> OnError:
    """``"fail"`` or ``"continue"``.

    :raises InvalidValueError: otherwise.
    """
    if value not in ("fail", "continue"):
        raise InvalidValueError(f"on_error must be 'fail' or 'continue', got {value!r}")
    return value


def _check_retry(value: object) -> RetryPolicy | None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise InvalidValueError(f"retry must be a RetryPolicy or None, got {value!r}")
    return value


def _check_progress(value: object) -> Callable[[int, int], None] | None:
    if value is not None and not callable(value):
        raise InvalidValueError(f"on_progress must be callable or None, got {value!r}")
    return value


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValueError(f"name must be a non-empty str, got {value!r}")
    return value


def _any(value: object) -> object:
    return value


#: The rule of each setting; :meth:`Settings.build` and :meth:`Settings.evolve` apply exactly these.
_RULES: dict[str, Callable[[Any], Any]] = {
    "max_parallel": check_max_parallel,
    "on_error": check_on_error,
    "retry": _check_retry,
    "timeout": check_timeout,
    "tracking": _any,
    "dead_letters": _any,
    "worker_pool": _any,
    "on_progress": _check_progress,
    "name": _check_name,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """How one run goes: what bounds it, what happens on failure, where it reports.

    Build it with :meth:`build` (or change one with :meth:`evolve`): each value is checked there,
    once, by the rule of that option.
    """

    #: Most tasks of the run in flight at once, all its steps together (``None``: no bound).
    max_parallel: int | None = None
    on_error: OnError = "fail"
    #: Retry policy of steps without one of their own.
    retry: RetryPolicy | None = None
    #: Seconds the whole run may take.
    timeout: float | None = None
    tracking: PipelineTrackingManager | None = None
    dead_letters: DeadLetterQueue | None = None
    worker_pool: ResourceAwareWorkerPool | None = None
    #: Called with ``(finished, total)`` as the run progresses.
    on_progress: Callable[[int, int], None] | None = None
    name: str = "pipeline"

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """Settings from keyword values, each checked by its option's rule.

        :raises InvalidValueError: for a bad value (the message names the option).
        :raises TypeError: for an unknown option.
        """
        unknown = sorted(set(values) - _RULES.keys())
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(unknown)}")
        return cls(**{key: _RULES[key](value) for key, value in values.items()})

    def evolve(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (checked like :meth:`build`)."""
        if not changes:
            return self
        checked = Settings.build(**changes)
        return dataclasses.replace(self, **{key: getattr(checked, key) for key in changes})
