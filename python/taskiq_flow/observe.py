"""Metrics and traces of runs, as optional extras: off unless installed and enabled.

::

    from taskiq_flow import observe

    observe.enable_prometheus()        # pip install 'taskiq-flow[metrics]'
    observe.enable_opentelemetry()     # pip install 'taskiq-flow[tracing]'

Prometheus (``prometheus_client``): ``taskiq_flow_tasks_in_flight{step}``,
``taskiq_flow_wait_seconds{reason}`` (from becoming ready to being sent, by what held the task last:
``step_cap``, ``run_cap`` (the run's own ``max_parallel``), ``rate``, ``shared_cap``, ``placement``,
or ``ready`` — sent in the round it became ready),
``taskiq_flow_step_duration_seconds{step}`` (measured where the task ran),
``taskiq_flow_retries_total{step}``, ``taskiq_flow_dead_letters_total{step}``.

OpenTelemetry: one trace per run (a ``taskiq_flow.run`` span) with one span per attempt
(``taskiq_flow.attempt``: step, node, attempt, wait reason and time, worker); a node with inputs
links to the spans of all of them, so a fan-in shows where its inputs came from.

Runs started while an observer is enabled report to it; with none enabled, runs pay nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskiq_flow.run.runner import Runner

__all__ = [
    "Observer",
    "OpenTelemetryObserver",
    "PrometheusObserver",
    "disable",
    "enable_opentelemetry",
    "enable_prometheus",
    "observers",
]


class Observer:
    """What a run reports, as it happens; every method does nothing here, and an observer
    overrides those it needs."""

    def run_started(self, run: Runner) -> None:
        """A run starts."""

    def attempt_started(
        self,
        run: Runner,
        node: int,
        step: str,
        attempt: int,
        wait: tuple[str, float] | None,
        worker: str | None,
        inputs: Sequence[int],
    ) -> None:
        """An attempt is sent; ``wait`` is what held it last before and for how long (first
        attempts), ``inputs`` the nodes it consumes."""

    def attempt_ended(
        self, run: Runner, node: int, step: str, ok: bool, duration_s: float, error: Any
    ) -> None:
        """An attempt reported back (``duration_s`` measured where it ran)."""

    def retried(self, run: Runner, step: str) -> None:
        """A failed attempt will be tried again."""

    def dead_lettered(self, run: Runner, step: str) -> None:
        """A node failed for good and was recorded as a dead letter."""

    def run_ended(self, run: Runner, state: str) -> None:
        """A run ended: ``done``, ``failed`` or ``cancelled``."""


_OBSERVERS: list[Observer] = []


def observers() -> list[Observer]:
    """The observers runs report to (a copy)."""
    return list(_OBSERVERS)


def disable() -> None:
    """Stops reporting to every observer (runs already started keep theirs)."""
    _OBSERVERS.clear()


class PrometheusObserver(Observer):
    """Run metrics in a ``prometheus_client`` registry.

    :param registry: where the metrics live (the client's default registry if ``None``).
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        self.in_flight = Gauge(
            "taskiq_flow_tasks_in_flight",
            "Tasks sent and not reported back",
            ["step"],
            registry=registry,
        )
        self.wait = Histogram(
            "taskiq_flow_wait_seconds",
            "Time from ready to sent, by what held the task last",
            ["reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskiq_flow_step_duration_seconds",
            "Attempt duration, measured where the task ran",
            ["step"],
            registry=registry,
        )
        self.retries = Counter(
            "taskiq_flow_retries", "Failed attempts tried again", ["step"], registry=registry
        )
        self.dead_letters = Counter(
            "taskiq_flow_dead_letters", "Tasks failed for good", ["step"], registry=registry
        )

    def attempt_started(
        self,
        run: Runner,
        node: int,
        step: str,
        attempt: int,
        wait: tuple[str, float] | None,
        worker: str | None,
        inputs: Sequence[int],
    ) -> None:
        self.in_flight.labels(step).inc()
        if wait is not None:
            self.wait.labels(wait[0]).observe(wait[1])

    def attempt_ended(
        self, run: Runner, node: int, step: str, ok: bool, duration_s: float, error: Any
    ) -> None:
        self.in_flight.labels(step).dec()
        self.duration.labels(step).observe(duration_s)

    def retried(self, run: Runner, step: str) -> None:
        self.retries.labels(step).inc()

    def dead_lettered(self, run: Runner, step: str) -> None:
        self.dead_letters.labels(step).inc()


class OpenTelemetryObserver(Observer):
    """Traces of runs through an OpenTelemetry tracer.

    :param tracer_provider: the provider to get the tracer from (the global one if ``None``).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.tracer = trace.get_tracer("taskiq_flow", tracer_provider=tracer_provider)
        self._runs: dict[str, Any] = {}
        self._attempts: dict[tuple[str, int], Any] = {}
        self._done: dict[tuple[str, int], Any] = {}

    def run_started(self, run: Runner) -> None:
        span = self.tracer.start_span(
            "taskiq_flow.run",
            attributes={
                "taskiq_flow.pipeline": run.settings.name,
                "taskiq_flow.pipeline_id": run.pipeline_id,
                "taskiq_flow.nodes": run.plan.node_count,
            },
        )
        self._runs[run.run_id] = span

    def attempt_started(
        self,
        run: Runner,
        node: int,
        step: str,
        attempt: int,
        wait: tuple[str, float] | None,
        worker: str | None,
        inputs: Sequence[int],
    ) -> None:
        parent = self._runs.get(run.run_id)
        context = self._trace.set_span_in_context(parent) if parent is not None else None
        links = [
            self._trace.Link(self._done[(run.run_id, p)])
            for p in inputs
            if (run.run_id, p) in self._done
        ]
        attributes: dict[str, Any] = {
            "taskiq_flow.step": step,
            "taskiq_flow.node": node,
            "taskiq_flow.attempt": attempt,
        }
        if wait is not None:
            attributes["taskiq_flow.wait_reason"] = wait[0]
            attributes["taskiq_flow.waited_s"] = wait[1]
        if worker is not None:
            attributes["taskiq_flow.worker"] = worker
        span = self.tracer.start_span(
            "taskiq_flow.attempt", context=context, links=links, attributes=attributes
        )
        previous = self._attempts.pop((run.run_id, node), None)
        if previous is not None:  # superseded without a report (a lost worker): ended here
            previous.end()
        self._attempts[(run.run_id, node)] = span

    def attempt_ended(
        self, run: Runner, node: int, step: str, ok: bool, duration_s: float, error: Any
    ) -> None:
        span = self._attempts.pop((run.run_id, node), None)
        if span is None:
            return
        span.set_attribute("taskiq_flow.duration_s", duration_s)
        if not ok:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        else:
            self._done[(run.run_id, node)] = span.get_span_context()
        span.end()

    def run_ended(self, run: Runner, state: str) -> None:
        for key in [k for k in self._attempts if k[0] == run.run_id]:
            self._attempts.pop(key).end()
        for key in [k for k in self._done if k[0] == run.run_id]:
            del self._done[key]
        span = self._runs.pop(run.run_id, None)
        if span is not None:
            span.set_attribute("taskiq_flow.state", state)
            span.end()


def enable_prometheus(registry: Any = None) -> PrometheusObserver:
    """Reports every run started from now on to Prometheus metrics in ``registry``.

    :raises ImportError: without ``prometheus_client`` (``pip install 'taskiq-flow[metrics]'``).
    """
    observer = PrometheusObserver(registry)
    _OBSERVERS.append(observer)
    return observer


def enable_opentelemetry(tracer_provider: Any = None) -> OpenTelemetryObserver:
    """Traces every run started from now on (one trace per run, one span per attempt).

    :raises ImportError: without OpenTelemetry (``pip install 'taskiq-flow[tracing]'``).
    """
    observer = OpenTelemetryObserver(tracer_provider)
    _OBSERVERS.append(observer)
    return observer
