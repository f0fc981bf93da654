"""One frozen settings value per run, and the one rule for each option.

Every pipeline shape takes its options from the user in its own way (constructor arguments,
``with_*`` methods, keyword arguments of ``MapReduce``), but each option is checked by the one
function below that owns it, when it comes in, with the same message whichever API received it.
The runner receives a :class:`Settings` that is already valid and never checks again.

What each word means (the table in the README):

- ``max_parallel`` of a pipeline (``Settings.max_parallel``) bounds that pipeline's tasks in flight,
  all its steps together; of a step (``StepSpec.max_parallel``) bounds that step;
  ``set_max_parallel_tasks`` bounds every pipeline of the process (or of a named Redis group).
- ``run_timeout`` (``Settings.run_timeout``) bounds the whole run; a task's own ``timeout``
  (taskiq's label, or ``pipeline_task(timeout=)``; ``StepSpec.timeout``) bounds one attempt of it.
  A run's bound was once called ``timeout`` too: that name still works, with a
  :class:`DeprecationWarning` naming ``run_timeout``.

Where each is checked, once, on the way in: ``max_parallel`` by :func:`check_max_parallel` (the
core's ``check_cap``) in :meth:`Settings.build` / :meth:`Settings.evolve` for a run, and where a
step is declared (``Pipeline.map/filter/group``) for a step; ``run_timeout`` by
:func:`check_timeout` in :meth:`Settings.build` / :meth:`Settings.evolve`; a task's ``timeout`` by
:func:`check_timeout` in ``pipeline_task`` or, for taskiq's label, in
:func:`taskiq_flow.run.plan.attempt_timeout` when the task is added.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import TypedDict

from taskiq_flow._core import check_cap
from taskiq_flow._core import check_rate as _core_check_rate
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.retry import DeadLetterStore, RetryPolicy

if TYPE_CHECKING:
    from taskiq_flow.resources import ResourceAwareWorkerPool
    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = [
    "RENAMED",
    "OnError",
    "RunOptionValues",
    "Settings",
    "check_max_parallel",
    "check_on_error",
    "check_rate",
    "check_timeout",
    "option_names",
    "renamed_warning",
    "unknown_option",
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


def _instance(value: object, what: str, expected: type) -> Any:
    """``value`` if it is ``None`` or an ``expected``."""
    if value is not None and not isinstance(value, expected):
        raise InvalidValueError(
            f"{what} must be a {expected.__name__} or None, got {type(value).__name__}"
        )
    return value


def _check_tracking(value: object) -> PipelineTrackingManager | None:
    from taskiq_flow.tracking import PipelineTrackingManager  # here: it imports the run layer

    return _instance(value, "tracking", PipelineTrackingManager)  # type: ignore[no-any-return]


def _check_dead_letters(value: object) -> DeadLetterStore | None:
    return _instance(value, "dead_letters", DeadLetterStore)  # type: ignore[no-any-return]


def _check_worker_pool(value: object) -> ResourceAwareWorkerPool | None:
    from taskiq_flow.resources import ResourceAwareWorkerPool  # here: as above

    return _instance(value, "worker_pool", ResourceAwareWorkerPool)  # type: ignore[no-any-return]


def _check_run_timeout(value: object) -> float | None:
    return check_timeout(value, "run_timeout")


#: The rule of each setting; :meth:`Settings.build` and :meth:`Settings.evolve` apply exactly these.
_RULES: dict[str, Callable[[Any], Any]] = {
    "max_parallel": check_max_parallel,
    "on_error": check_on_error,
    "retry": _check_retry,
    "run_timeout": _check_run_timeout,
    "tracking": _check_tracking,
    "dead_letters": _check_dead_letters,
    "worker_pool": _check_worker_pool,
    "on_progress": _check_progress,
    "name": _check_name,
}


#: Former names of options: ``{old: (new, what the new one means)}``. Given to a user-facing API
#: (:meth:`Settings.given`), an old name works and warns.
RENAMED: dict[str, tuple[str, str]] = {
    "timeout": (
        "run_timeout",
        "it bounds the whole run; a task's own timeout (taskiq's label, or "
        "pipeline_task(timeout=)) bounds one attempt",
    ),
}

#: Every name a run option is given by (:func:`option_names`).
_OPTION_NAMES = frozenset(_RULES) | frozenset(RENAMED)


class RunOptionValues(TypedDict, total=False):
    """The options of a run given as keywords (``Pipeline(...)``, ``DataflowPipeline(...)``,
    ``ExecutionEngine(...)``, ``MapReduce.*``); ``max_parallel`` is each shape's own parameter.
    Each is checked by the rule of :class:`Settings` of that name."""

    on_error: OnError
    retry: RetryPolicy | None
    run_timeout: float | None
    #: Deprecated: ``run_timeout``.
    timeout: float | None
    tracking: PipelineTrackingManager | None
    dead_letters: DeadLetterStore | None
    worker_pool: ResourceAwareWorkerPool | None
    on_progress: Callable[[int, int], None] | None
    name: str


def option_names() -> frozenset[str]:
    """Every name a run option is given by, the former names included."""
    return _OPTION_NAMES


def unknown_option(where: str, key: str, known: Collection[str] = ()) -> TypeError:
    """The error for an option ``where`` does not take, naming the closest one it does.

    :param known: the options of ``where`` besides the run options.
    """
    names = sorted({*_RULES, *known})
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (its options: {', '.join(names)})"
    return TypeError(f"{where} got an unknown option {key!r}{hint}")


def renamed_warning(old: str, where: str, stacklevel: int) -> None:
    """Warns that option ``old`` given to ``where`` has a new name (the one message per option).

    :param stacklevel: the frame warned about: 1 is the caller's line, 2 its caller's.
    """
    new, meaning = RENAMED[old]
    warnings.warn(
        f"{where}: option {old!r} is deprecated, use {new!r} ({meaning})",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


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
    #: Seconds the whole run may take (a task's own ``timeout`` bounds one attempt of it).
    run_timeout: float | None = None
    tracking: PipelineTrackingManager | None = None
    dead_letters: DeadLetterStore | None = None
    worker_pool: ResourceAwareWorkerPool | None = None
    #: Called with ``(finished, total)`` as the run progresses.
    on_progress: Callable[[int, int], None] | None = None
    name: str = "pipeline"

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """Settings from keyword values, each checked by its option's rule.

        :raises InvalidValueError: for a bad value (the message names the option).
        :raises TypeError: for an unknown option (naming the closest).
        """
        return cls(**_checked(values))

    def evolve(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (checked like :meth:`build`)."""
        if not changes:
            return self
        return dataclasses.replace(self, **_checked(changes))

    def given(self, where: str, options: Mapping[str, Any], *, stacklevel: int = 2) -> Settings:
        """A copy with ``options`` as a user gave them to ``where`` (``"Pipeline()"``): a former
        name works and warns (naming the new one; ``stacklevel`` 1 is the caller's line, 2 its
        caller's); an unknown one is refused naming the closest; each value is checked by its
        option's rule.

        :raises InvalidValueError: for a bad value (the message names the option).
        :raises TypeError: for an unknown option, or one given under both names.
        """
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key in RENAMED:
                new = RENAMED[key][0]
                if new in options:
                    raise TypeError(f"{where} got both {key!r} and {new!r}: give {new!r} only")
                renamed_warning(key, where, stacklevel + 1)
                key = new
            elif key not in _RULES:
                raise unknown_option(where, key)
            values[key] = value
        return self.evolve(**values)


def _checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` under the field names, each checked by its option's rule."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        rule = _RULES.get(key)
        if rule is None:
            raise unknown_option("Settings", key)
        checked[key] = rule(value)
    return checked
