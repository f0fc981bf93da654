"""Former home of the engine, kept so that ``from taskiq_flow.engine import ...`` keeps working;
importing it warns (:class:`DeprecationWarning`). Its names live in :mod:`taskiq_flow.run` now:

- ``Runner`` (``FlowRun`` was its name here), ``run_single``: :mod:`taskiq_flow.run.runner`;
- ``Plan``, ``StepSpec``, ``task_display_name``, ``task_identity``, ``OnError``, ``Settings``,
  ``check_max_parallel``, ``check_rate``: :mod:`taskiq_flow.run`.
"""

import warnings

from taskiq_flow.run.plan import Plan, StepSpec, task_display_name, task_identity
from taskiq_flow.run.runner import Runner, run_single
from taskiq_flow.run.settings import OnError, Settings, check_max_parallel, check_rate

warnings.warn(
    "taskiq_flow.engine is deprecated: import Runner (formerly FlowRun) and run_single from "
    "taskiq_flow.run.runner; Plan, StepSpec, task_display_name, task_identity, OnError, "
    "Settings, check_max_parallel and check_rate from taskiq_flow.run",
    DeprecationWarning,
    stacklevel=2,
)

#: The runner under its former name.
FlowRun = Runner

__all__ = [
    "FlowRun",
    "OnError",
    "Plan",
    "Runner",
    "Settings",
    "StepSpec",
    "check_max_parallel",
    "check_rate",
    "run_single",
    "task_display_name",
    "task_identity",
]
