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

The scheduling core, for services that embed it:

- :class:`TopologicalSorter` — a drop-in :class:`graphlib.TopologicalSorter`.
- :class:`DagGraph`, :class:`DagSorter`, :class:`DagScheduler` — DAG analysis and state machines on
  integer node ids.
- :class:`CapacityLimiter`, :class:`RateLimiter` — async admission limiters.
- :class:`Placer` — resource placement of tasks onto workers.
"""

from taskiq_flow._core import DagGraph, DagScheduler, DagSorter, Placer
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
    StateError,
    StepFailedError,
    TaskiqFlowError,
    TaskTimeoutError,
    UnknownIdError,
    UnschedulableError,
    UnserializableError,
)
from taskiq_flow.limits import CapacityLimiter, RateLimiter
from taskiq_flow.mapreduce import MapReduce
from taskiq_flow.pipeline import Pipeline, PipelineMiddleware, PipelineRun
from taskiq_flow.resources import (
    CPUProfile,
    RAMProfile,
    ResourceAwareWorkerPool,
    ResourceProfile,
    TaskResources,
)
from taskiq_flow.retry import DeadLetter, DeadLetterQueue, RetryPolicy
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
    "CPUProfile",
    "CapacityLimiter",
    "CycleError",
    "DagGraph",
    "DagScheduler",
    "DagSorter",
    "DataflowError",
    "DataflowPipeline",
    "DataflowRegistry",
    "DeadLetter",
    "DeadLetterQueue",
    "DuplicateOutputError",
    "ExecutionEngine",
    "FlowMiddleware",
    "InMemoryPipelineStorage",
    "InternalError",
    "InvalidValueError",
    "MapReduce",
    "MissingInputError",
    "NotATaskError",
    "Pipeline",
    "PipelineCancelledError",
    "PipelineError",
    "PipelineMiddleware",
    "PipelineRun",
    "PipelineStatus",
    "PipelineTimeoutError",
    "PipelineTrackingManager",
    "Placer",
    "PoisonMessageError",
    "RAMProfile",
    "RateLimiter",
    "ResourceAwareWorkerPool",
    "ResourceProfile",
    "RetryPolicy",
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
    "pipeline_task",
]

__version__ = "0.1.0"
