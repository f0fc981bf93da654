"""The one runner: what every pipeline shape compiles to, and what executes it.

- :mod:`.plan` — :class:`Plan` and :class:`StepSpec`, what a shape compiles to;
- :mod:`.settings` — :class:`Settings`, one frozen value per run, and the one rule per option;
- :mod:`.runner` — :class:`~taskiq_flow.run.runner.Runner`, which sends exactly what the core
  hands out; its parts :mod:`.sending`, :mod:`.failures` and :mod:`.track`.
"""

from taskiq_flow.run.plan import Plan, StepSpec, task_display_name, task_identity
from taskiq_flow.run.settings import (
    OnError,
    Settings,
    check_max_parallel,
    check_on_error,
    check_rate,
    check_timeout,
)

__all__ = [
    "OnError",
    "Plan",
    "Settings",
    "StepSpec",
    "check_max_parallel",
    "check_on_error",
    "check_rate",
    "check_timeout",
    "task_display_name",
    "task_identity",
]
