"""Former home of the engine; kept so that ``from taskiq_flow.engine import ...`` keeps working.

The runner lives in :mod:`taskiq_flow.run` now.
"""

from taskiq_flow.run.plan import Plan, StepSpec, task_display_name, task_identity
from taskiq_flow.run.runner import Runner, run_single
from taskiq_flow.run.settings import OnError, Settings, check_max_parallel, check_rate

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
