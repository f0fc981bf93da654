"""taskiq-flow: pipeline and DAG orchestration for taskiq, on a Rust scheduling core.

The public names are re-exported here; ``taskiq_flow._core`` (the compiled core) is private.

Pipelines (all on one engine, driven by the Rust scheduler):

- :class:`Pipeline` — sequential steps (a drop-in for taskiq-pipelines), with ``map``, ``filter``,
  ``group``.
- :class:`DataflowPipeline`, :func:`pipeline_task`, :class:`DataflowRegistry`,
  :class:`ExecutionEngine` — tasks wired by the names of their inputs and outputs.
- :class:`MapReduce` — fan-out, fan-in, and streaming over any iterable.
- :class:`PipelineTrackingManager` — status and per-step timing of every run.
- :class:`CPUProfile`, :class:`RAMProfile`, :class:`ResourceProfile`,
  :class:`ResourceAwareWorkerPool` — resource-aware placement of tasks on workers.

- :func:`set_max_parallel_tasks`, :func:`get_max_parallel_tasks` — one cap over every pipeline
  task in flight in the process (or, through Redis, across processes).

The scheduling core, for services that embed it:

- :class:`TopologicalSorter` — a drop-in :class:`graphlib.TopologicalSorter`.
- :class:`CapacityLimiter`, :class:`RateLimiter` — async admission limiters.
- :mod:`taskiq_flow.core` — the classes on integer ids: ``DagGraph``, ``DagSorter``,
  ``DagScheduler`` (DAG analysis and state machines) and ``Placer`` (resource placement). Their
  former top-level names still work, with a :class:`DeprecationWarning`.
"""

import typing as _typing

from taskiq_flow import core
from taskiq_flow._moved import moved as _moved
from taskiq_flow.bulk import BulkDataflow, BulkResults
from taskiq_flow.dataflow import (
    DAG,
    DataflowPipeline,
    DataflowRegistry,
    ExecutionEngine,
    TaskNode,
    pipeline_task,
)
from taskiq_flow.events import FlowMiddleware
from taskiq_flow.exceptions import (
    AbortPipeline,
    CycleError,
    DataflowError,
    DuplicateOutputError,
    InternalError,
    InvalidValueError,
    MissingInputError,
    NotATaskError,
    PipelineCancelledError,
    PipelineError,
    PipelineTimeoutError,
    PoisonMessageError,
    Skip,
    StateError,
    StepFailedError,
    TaskiqFlowError,
    TaskTimeoutError,
    UnknownIdError,
    UnschedulableError,
    UnserializableError,
)
from taskiq_flow.growth import Expand
from taskiq_flow.handle import RunHandle, start
from taskiq_flow.limits import CapacityLimiter, RateLimiter
from taskiq_flow.mapreduce import MapReduce
from taskiq_flow.once import IdempotencyKey, InMemoryKeyStore, KeyStore, RedisKeyStore
from taskiq_flow.optimization.parallel import get_max_parallel_tasks, set_max_parallel_tasks
from taskiq_flow.pipeline import Pipeline, PipelineMiddleware, PipelineRun
from taskiq_flow.resources import (
    CPUProfile,
    RAMProfile,
    ResourceAwareWorkerPool,
    ResourceProfile,
    TaskResources,
)
from taskiq_flow.retry import DeadLetter, DeadLetterQueue, DeadLetterStore, RetryPolicy
from taskiq_flow.schedule import PipelineSchedule
from taskiq_flow.sorter import TopologicalSorter
from taskiq_flow.tracking import (
    InMemoryPipelineStorage,
    PipelineStatus,
    PipelineTrackingManager,
    StepStatus,
)

__all__ = [
    "DAG",
    "AbortPipeline",
    "BulkDataflow",
    "BulkResults",
    "CPUProfile",
    "CapacityLimiter",
    "CycleError",
    "DataflowError",
    "DataflowPipeline",
    "DataflowRegistry",
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLetterStore",
    "DuplicateOutputError",
    "ExecutionEngine",
    "Expand",
    "FlowMiddleware",
    "IdempotencyKey",
    "InMemoryKeyStore",
    "InMemoryPipelineStorage",
    "InternalError",
    "InvalidValueError",
    "KeyStore",
    "MapReduce",
    "MissingInputError",
    "NotATaskError",
    "Pipeline",
    "PipelineCancelledError",
    "PipelineError",
    "PipelineMiddleware",
    "PipelineRun",
    "PipelineSchedule",
    "PipelineStatus",
    "PipelineTimeoutError",
    "PipelineTrackingManager",
    "PoisonMessageError",
    "RAMProfile",
    "RateLimiter",
    "RedisKeyStore",
    "ResourceAwareWorkerPool",
    "ResourceProfile",
    "RetryPolicy",
    "RunHandle",
    "Skip",
    "StateError",
    "StepFailedError",
    "StepStatus",
    "TaskNode",
    "TaskResources",
    "TaskTimeoutError",
    "TaskiqFlowError",
    "TopologicalSorter",
    "UnknownIdError",
    "UnschedulableError",
    "UnserializableError",
    "get_max_parallel_tasks",
    "pipeline_task",
    "set_max_parallel_tasks",
    "start",
]

__version__ = "0.1.0"

#: Names that moved, and the module each lives in now.
_MOVED = {name: "taskiq_flow.core" for name in core.__all__}


def __getattr__(name: str) -> _typing.Any:
    return _moved(__name__, name, _MOVED)
