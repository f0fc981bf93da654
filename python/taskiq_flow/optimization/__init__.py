"""Process-wide performance settings."""

from taskiq_flow.optimization.parallel import get_max_parallel_tasks, set_max_parallel_tasks

__all__ = ["get_max_parallel_tasks", "set_max_parallel_tasks"]
