"""The in-process lane (:mod:`taskiq_flow.run.local`) against taskiq's own ``kiq()``: what the
broker's middlewares, the task's arguments, its labels, its timeout, its dependencies and the
values between steps look like must not tell them apart; the lane leaves out only the result
backend write that nothing reads (kept when a ``post_save`` middleware or ``keep_results``
reads it). Each test runs a pipeline once per lane and compares."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pytest
from lanes import went_through_kiq
from pydantic import BaseModel
from taskiq import (
    Context,
    InMemoryBroker,
    TaskiqDepends,
    TaskiqMessage,
    TaskiqMiddleware,
    TaskiqResult,
)

from taskiq_flow import (
    DataflowPipeline,
    FlowMiddleware,
    MapReduce,
    StepFailedError,
    pipeline_task,
)
from taskiq_flow.run.local import ENV_VAR

Seen = list[tuple[Any, ...]]


class Recorder(TaskiqMiddleware):
    """Records what each execute hook of the broker's middlewares is given."""

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        assert type(message) is TaskiqMessage
        self.seen.append(("pre", message.task_name, _labels(message), message.args, message.kwargs))
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        assert type(result) is TaskiqResult
        self.seen.append(("post", message.task_name, result.is_err, repr(result.return_value)))

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        self.seen.append(("error", message.task_name, type(exception).__name__, str(exception)))


def _labels(message: TaskiqMessage) -> dict[str, Any]:
    """The labels, the run-specific one (run id, node, attempt) cut to its node and attempt."""
    labels = dict(message.labels)
    labels["taskiq_flow"] = labels["taskiq_flow"].split(":", 1)[1]
    return {k: (type(v).__name__, v) for k, v in sorted(labels.items())}


async def on_both(
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[InMemoryBroker, Seen], Awaitable[Any]],
    middlewares: Callable[[Seen], list[TaskiqMiddleware]] = lambda seen: [Recorder(seen)],
    stored: bool = False,
) -> tuple[tuple[Any, Seen], tuple[Any, Seen]]:
    """Runs ``make(broker, seen)`` on a fresh broker once per lane: ``(fast, kiq)``, each the
    outcome (a value, or the error's type and text) and what was recorded. The fast one is
    checked to have taken the lane (unless ``stored``: a middleware reads results back)."""
    outcomes = []
    for setting in ("1", "0"):
        monkeypatch.setenv(ENV_VAR, setting)
        broker = InMemoryBroker(max_stored_results=-1)
        seen: Seen = []
        broker.add_middlewares(*middlewares(seen))
        await broker.startup()
        try:
            try:
                outcome: Any = await make(broker, seen)
            except Exception as exc:
                outcome = (type(exc).__name__, str(exc).split(" (run ")[0])
        finally:
            await broker.shutdown()
        if not stored:  # the lane stores nothing (unless something reads it back)
            assert went_through_kiq(broker) == (setting == "0")
        outcomes.append((outcome, seen))
    return outcomes[0], outcomes[1]


class Saved(TaskiqMiddleware):
    """Records every result the broker's result backend saved."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[Any] = []

    def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.saved.append(result.return_value)


async def test_the_result_backend_gets_a_result_only_when_something_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = InMemoryBroker()

    @broker.task
    async def double(x: int) -> int:
        return 2 * x

    await broker.startup()
    assert await MapReduce.map(broker, double, [1, 2, 3]) == [2, 4, 6]
    assert broker.result_backend.results == {}  # nothing reads a pipeline task's stored result
    monkeypatch.setenv(ENV_VAR, "0")  # the escape hatch: every task through kiq()
    assert await MapReduce.map(broker, double, [4]) == [8]
    assert [r.return_value for r in broker.result_backend.results.values()] == [8]
    await broker.shutdown()

    # A post_save middleware, or keep_results on the broker's FlowMiddleware: stored, on both.
    for setting in ("1", "0"):
        monkeypatch.setenv(ENV_VAR, setting)
        for middleware in (Saved(), FlowMiddleware(keep_results=True)):
            broker = InMemoryBroker()
            broker.add_middlewares(middleware)
            broker.register_task(double.original_func, "lane_double")
            await broker.startup()
            assert await MapReduce.map(broker, broker.find_task("lane_double"), [1, 2]) == [2, 4]
            stored = sorted(r.return_value for r in broker.result_backend.results.values())
            assert stored == [2, 4]
            if isinstance(middleware, Saved):
                assert sorted(middleware.saved) == [2, 4]
            await broker.shutdown()


async def test_middlewares_see_the_same_messages_and_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        @broker.task(task_name="lane_load", tier="gold", weight=3, ratio=0.5, on=True)
        @pipeline_task(output="loaded")
        async def load(seed: int) -> dict[str, Any]:
            return {"seed": seed, "pair": (1, 2)}

        @broker.task(task_name="lane_use", meta={"a": 1}, timeout=5)
        @pipeline_task(output="used")
        async def use(loaded: dict[str, Any]) -> list[Any]:
            return [loaded["seed"], loaded["pair"]]

        @broker.task(task_name="lane_boom")
        @pipeline_task(output="boom")
        async def boom(used: list[Any]) -> int:
            raise ValueError(f"boom on {used!r}")

        pipeline = DataflowPipeline.from_tasks(broker, [load, use, boom])
        return await pipeline.kiq_dataflow(seed=7)

    fast, kiq = await on_both(monkeypatch, make)
    assert fast == kiq
    outcome, seen = fast
    assert outcome[0] == "StepFailedError"
    pre_use = next(s for s in seen if s[:2] == ("pre", "lane_use"))
    # A tuple crosses as a list; a label taskiq sends as text arrives as text, numbers as numbers.
    assert pre_use[4] == {"loaded": {"seed": 7, "pair": [1, 2]}}
    labels = dict(pre_use[2])
    assert labels["meta"] == ("str", "{'a': 1}") and labels["timeout"] == ("float", 5.0)
    pre_load = dict(next(s for s in seen if s[:2] == ("pre", "lane_load"))[2])
    assert pre_load["weight"] == ("int", 3) and pre_load["ratio"] == ("float", 0.5)
    assert pre_load["on"] == ("bool", True) and pre_load["tier"] == ("str", "gold")
    assert ("error", "lane_boom", "ValueError", "boom on [7, [1, 2]]") in seen


class Point(BaseModel):
    x: int
    y: int


class Opaque:
    """A value JSON cannot carry."""


@pytest.mark.parametrize(
    ("produced", "annotation"),
    [
        ((1, 2, (3, 4)), Any),
        ((1, 2), tuple[int, int]),
        (float("nan"), Any),
        (float("inf"), float),
        ({1: "a", "b": 2}, Any),
        (2**70, Any),
        (10**5000, Any),
        ("surrogate \ud800", Any),
        ("naïve ✓", str),
        ("12", int),
        ({"x": "1", "y": 2}, Point),
        (Point(x=1, y=2), Any),
        ([Point(x=1, y=2)], Any),
        (Opaque(), Any),
        ([1, Opaque()], Any),
        (True, int),
        (-0.0, Any),
    ],
    ids=[
        "nested-tuple",
        "tuple-annotated",
        "nan",
        "inf-annotated",
        "int-key",
        "int-64-plus",
        "int-too-long",
        "lone-surrogate",
        "non-ascii",
        "str-to-int",
        "dict-to-model",
        "model",
        "list-of-models",
        "opaque",
        "list-with-opaque",
        "bool-as-int",
        "minus-zero",
    ],
)
async def test_a_value_crosses_to_the_next_step_as_it_does_through_kiq(
    monkeypatch: pytest.MonkeyPatch, produced: Any, annotation: Any
) -> None:
    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        @broker.task(task_name="lane_produce")
        @pipeline_task(output="value")
        async def produce() -> Any:
            return produced

        async def consume(value: Any) -> str:
            seen.append(("got", type(value).__name__, _shown(value)))
            if isinstance(value, list):
                value.append("mutated")  # never reaches the producer's value
            return "ok"

        consume.__annotations__["value"] = annotation
        task = broker.task(task_name="lane_consume")(pipeline_task(output="done")(consume))
        out = await DataflowPipeline.from_tasks(broker, [produce, task]).kiq_dataflow()
        return _shown(out["value"]), out["done"]

    fast, kiq = await on_both(monkeypatch, make, lambda seen: [])
    assert fast == kiq


def tier_of(context: Annotated[Context, TaskiqDepends()]) -> str:
    """A dependency: the ``tier`` label of the message being run."""
    return str(context.message.labels.get("tier"))


def _shown(value: Any) -> str:
    try:
        return repr(value)
    except ValueError:  # an int too long for text
        return f"<int of {value.bit_length()} bits>"


async def test_annotations_and_dependencies_as_taskiq_gives_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        @broker.task(task_name="lane_deps", tier="gold")
        async def with_deps(
            x: int, point: Point, label: Annotated[str, TaskiqDepends(tier_of)]
        ) -> list[Any]:
            return [type(x).__name__, x, type(point).__name__, point.x, label]

        return await MapReduce.map(broker, with_deps, ["5", 6], kwargs={"point": {"x": 3, "y": 4}})

    fast, kiq = await on_both(monkeypatch, make, lambda seen: [])
    assert fast == kiq
    assert fast[0] == [["int", 5, "Point", 3, "gold"], ["int", 6, "Point", 3, "gold"]]


async def test_a_synchronous_task_runs_in_the_broker_pool_with_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        @broker.task(task_name="lane_sync")
        def work(x: int) -> list[Any]:
            return [x, threading.current_thread() is threading.main_thread(), marker.get()]

        marker.set("set")
        return await MapReduce.map(broker, work, [1, 2])

    fast, kiq = await on_both(monkeypatch, make, lambda seen: [])
    assert fast == kiq
    assert fast[0] == [[1, False, "set"], [2, False, "set"]]


async def test_a_timeout_label_cuts_the_task_on_both_lanes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        never = asyncio.Event()

        @broker.task(task_name="lane_slow", timeout=0.05)
        async def slow(x: int) -> int:
            await never.wait()
            return x

        return await MapReduce.map(broker, slow, [1])

    fast, kiq = await on_both(monkeypatch, make)
    assert fast == kiq
    assert fast[0][0] == StepFailedError.__name__
    assert [s[:3] for s in fast[1] if s[0] == "error"] == [("error", "lane_slow", "TimeoutError")]


async def test_pre_send_middlewares_see_what_kiq_gives_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Stamp(TaskiqMiddleware):
        def __init__(self, seen: Seen) -> None:
            super().__init__()
            self.seen = seen

        def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
            self.seen.append(("send", message.task_name, message.args, message.kwargs))
            message.labels["stamped"] = "yes"
            return message

        async def post_send(self, message: TaskiqMessage) -> None:
            self.seen.append(("sent", message.task_name))

    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        @broker.task(task_name="lane_stamped")
        async def stamped(x: Any, context: Annotated[Context, TaskiqDepends()]) -> Any:
            return [x, context.message.labels.get("stamped")]

        return await MapReduce.map(broker, stamped, [(1, 2), math.pi])

    fast, kiq = await on_both(monkeypatch, make, lambda seen: [Stamp(seen)])
    assert fast == kiq
    assert fast[0] == [[[1, 2], "yes"], [math.pi, "yes"]]


def _counting_ids(broker: InMemoryBroker) -> list[str]:
    """Makes ``broker`` hand out task ids from a counter; returns the ids handed out (one per
    message made: a bare attempt makes none)."""
    given: list[str] = []

    def next_id() -> str:
        given.append(f"id-{len(given)}")
        return given[-1]

    broker.with_id_generator(next_id)
    return given


async def test_a_bare_attempt_takes_arguments_as_taskiq_would_parse_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a middleware of the user's, an attempt whose arguments its annotations leave as
    they are is bare (no message made); one whose arguments taskiq would parse goes through the
    receiver's parsing. Both lanes give each task the same values."""
    ids: dict[str, list[str]] = {}

    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        given = ids.setdefault(str(len(ids)), _counting_ids(broker))

        @broker.task(task_name="lane_typed")
        async def typed(n: int, x: float, flag: bool, text: str, anything: Any = None) -> Any:
            return [type(v).__name__ for v in (n, x, flag, text)] + [n, x, flag, text, anything]

        plain = await MapReduce.map(
            broker, typed, [1], kwargs={"x": 1.5, "flag": True, "text": "a"}
        )
        made = len(given)
        cast = await MapReduce.map(broker, typed, ["7"], kwargs={"x": 2, "flag": 1, "text": "b"})
        return plain, made, cast, len(given) - made

    fast, kiq = await on_both(monkeypatch, make, lambda seen: [])
    assert fast[0][0] == kiq[0][0] == [["int", "float", "bool", "str", 1, 1.5, True, "a", None]]
    assert fast[0][2] == kiq[0][2] == [["int", "float", "bool", "str", 7, 2.0, True, "b", None]]
    assert fast[0][1] == 0  # bare: no message for nobody to see
    assert fast[0][3] == 1  # parsed: through the receiver's way, with a message
    assert kiq[0][1] == kiq[0][3] == 1


async def test_a_bare_attempt_fails_and_logs_as_taskiq_receiver_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's exception on a bare attempt: the step fails with it, and taskiq's receiver logger
    gets the same ERROR with the traceback as through ``kiq()``."""
    logged: list[list[tuple[str, str, bool]]] = []

    async def make(broker: InMemoryBroker, seen: Seen) -> Any:
        ids = _counting_ids(broker)

        @broker.task(task_name="lane_fails")
        async def fails(n: int) -> int:
            raise ValueError(f"bad {n}")

        caplog.clear()
        try:
            await MapReduce.map(broker, fails, [3])
        finally:
            logged.append(
                [
                    (r.levelname, r.getMessage(), r.exc_info is not None)
                    for r in caplog.records
                    if r.name == "taskiq.receiver.receiver" and r.levelno >= logging.WARNING
                ]
            )
            seen.append(("ids", len(ids)))

    with caplog.at_level("INFO"):
        fast, kiq = await on_both(monkeypatch, make, lambda seen: [])
    assert fast[0] == kiq[0]
    assert fast[0][0] == "StepFailedError" and "bad 3" in fast[0][1]
    assert fast[1] == [("ids", 0)]  # the fast lane's attempt was bare
    assert logged[0] == logged[1] == [("ERROR", "Exception found while executing function.", True)]


def test_a_renamed_step_keeps_every_other_field() -> None:
    """``StepSpec.renamed`` is ``dataclasses.replace(spec, name=...)``: every field carried."""
    import dataclasses

    from taskiq_flow.retry import RetryPolicy
    from taskiq_flow.run.plan import CachePolicy, StepSpec

    values: dict[str, Any] = {
        "name": "a",
        "task_name": "t",
        "labels": {"k": 1},
        "max_parallel": 3,
        "retry": RetryPolicy(max_attempts=2),
        "timeout": 1.5,
        "tasks": 4,
        "resources": None,
        "rate": 2.0,
        "burst": 5,
        "limit_group": ("task", "t"),
        "limit_name": "n",
        "skip_errors": True,
        "cache": CachePolicy(ttl=9.0, version="v"),
    }
    assert set(values) == {f.name for f in dataclasses.fields(StepSpec)}
    spec = StepSpec(**values)
    renamed = spec.renamed("b")
    assert renamed == dataclasses.replace(spec, name="b")
    assert renamed.name == "b" and spec.name == "a"


async def test_a_broker_that_awaits_in_place_runs_each_attempt_within_its_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``InMemoryBroker(await_inplace=True)``: the send returns once the task ran, on both lanes
    (a bare attempt too): every attempt runs in the task that sends (one task for all), and the
    run's values are the same."""
    outcomes = []
    order: list[str] = []
    ran_in: set[int] = set()
    for setting in ("1", "0"):
        monkeypatch.setenv(ENV_VAR, setting)
        broker = InMemoryBroker(await_inplace=True)
        order.clear()
        ran_in.clear()

        @broker.task(task_name="lane_inplace")
        async def double(x: int) -> int:
            order.append(f"ran {x}")
            ran_in.add(id(asyncio.current_task()))
            return 2 * x

        await broker.startup()
        try:
            out = await MapReduce.map(broker, double, [1, 2, 3])
        finally:
            await broker.shutdown()
        outcomes.append((out, list(order), len(ran_in)))
    assert outcomes[0] == outcomes[1] == ([2, 4, 6], ["ran 1", "ran 2", "ran 3"], 1)
