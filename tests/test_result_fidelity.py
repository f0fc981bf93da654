"""What a task returns reaches its run, or the attempt fails saying why: never a hang, never a
silent change. Hypothesis builds the return values (JSON values, hostile ones, one-shot iterators
of any length); every attempt must end in a completion, in process and over Redis with real
`taskiq worker` processes.

Over Redis a value travels as JSON: it must arrive equal to what it was (tuples and iterators as
lists, NaN as NaN), or the attempt fails with ``PayloadTooLargeError`` naming the task and why.
In process the value itself arrives.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import until
from hypothesis import given, settings
from hypothesis import strategies as st
from lanes import lane  # noqa: F401 - the fixture: in-process tests on both lanes

from taskiq_flow import (
    DeadLetterQueue,
    MapReduce,
    RetryPolicy,
    StepFailedError,
    UnserializableError,
)

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import fidelity_app  # noqa: E402
from test_argument_fidelity import as_json, faithful  # noqa: E402
from test_argument_fidelity import same as same_typed  # noqa: E402
from test_argument_fidelity import values as argument_values  # noqa: E402

#: The channel's default size limit (1 MiB of JSON).
LIMIT = 1 << 20

# -- recipes: plain JSON describing a value, built where the task runs --------------------------

leaves = st.one_of(
    st.just(["none"]),
    st.booleans().map(lambda b: ["bool", int(b)]),
    st.integers().map(lambda i: ["int", str(i)]),
    st.sampled_from([3, 4_299, 4_300, 1_000_000]).map(lambda e: ["bigint", e]),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: ["float", repr(f)]),
    st.text(max_size=20).map(lambda s: ["str", s]),
    st.just(["badrepr"]),
    st.just(["badencoder"]),
    st.sampled_from([0, 1, 1_000, 300_000]).map(lambda n: ["count", n]),
)
keys = st.one_of(
    st.text(max_size=8).map(lambda s: ["str", s]),  # mostly str keys, as JSON has them
    st.text(max_size=8).map(lambda s: ["str", s]),
    st.integers(-5, 5).map(lambda i: ["int", str(i)]),
    st.just(["none"]),
    st.floats(allow_nan=False).map(lambda f: ["float", repr(f)]),
)


def _containers(children: st.SearchStrategy[list[Any]]) -> st.SearchStrategy[list[Any]]:
    items = st.lists(children, max_size=5)
    return st.one_of(
        items.map(lambda xs: ["list", xs]),
        items.map(lambda xs: ["tuple", xs]),
        st.lists(st.tuples(keys, children), max_size=4).map(
            lambda kv: ["dict", [list(p) for p in kv]]
        ),
        items.map(lambda xs: ["gen", xs]),
        items.map(lambda xs: ["iter", xs]),
        items.map(lambda xs: ["badgen", xs]),
        items.map(lambda xs: ["selfref", xs]),
    )


recipes = st.recursive(leaves, _containers, max_leaves=12)


# -- the oracles --------------------------------------------------------------------------------


class Refused(Exception):
    """JSON cannot carry this value unchanged."""


def over_json(value: Any, path: frozenset[int] = frozenset()) -> Any:
    """What must arrive over Redis: the value as JSON gives it back (tuples and iterators as
    lists); :class:`Refused` if JSON would change it or cannot write it."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        try:
            str(value)
        except ValueError:
            raise Refused from None  # more digits than CPython writes as text
        return value
    if id(value) in path:
        raise Refused  # contains itself
    inner = path | {id(value)}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise Refused  # JSON would turn the key into a str
        return {k: over_json(v, inner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [over_json(v, inner) for v in value]
    if isinstance(value, Iterator):
        try:
            items = list(value)
        except KeyError:
            raise Refused from None  # the iterator raised
        return [over_json(v, inner) for v in items]
    raise Refused  # an object JSON does not know, or one whose encoder raises


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (NaN equal to NaN, -0.0 not to 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def as_returned(recipe: list[Any], value: Any) -> bool:
    """In process: ``value`` is what the task returned (the same kinds, the same contents)."""
    kind, *rest = recipe
    if kind in ("badrepr", "badencoder"):
        return type(value) is type(fidelity_app.build(recipe))
    if kind == "selfref":
        return (
            type(value) is list
            and value[-1] is value
            and all(as_returned(r, v) for r, v in zip(rest[0], value[:-1]))
        )
    if kind in ("list", "tuple"):
        expected = list if kind == "list" else tuple
        return (
            type(value) is expected
            and len(value) == len(rest[0])
            and all(as_returned(r, v) for r, v in zip(rest[0], value))
        )
    if kind in ("gen", "iter", "badgen", "count"):
        if not isinstance(value, Iterator):
            return False
        if kind == "count":
            return list(value) == list(range(rest[0]))
        items = []
        try:
            for item in value:
                items.append(item)
        except KeyError:
            if kind != "badgen":
                return False
        return len(items) == len(rest[0]) and all(as_returned(r, v) for r, v in zip(rest[0], items))
    if kind == "dict":
        built = fidelity_app.build(recipe)  # keys may collide (1 and True): compare the built
        return type(value) is dict and list(value) == list(built)
    return same(value, fidelity_app.build(recipe))


# -- in process ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("lane")
@settings(max_examples=150)
@given(recipe=recipes)
def test_in_process_every_attempt_completes_with_the_value_itself(recipe: list[Any]) -> None:
    async def run() -> list[Any]:
        await fidelity_app.broker.startup()
        try:
            return await asyncio.wait_for(
                MapReduce.map(fidelity_app.broker, fidelity_app.produce, [recipe]), 30
            )
        finally:
            await fidelity_app.broker.shutdown()

    [value] = asyncio.run(run())
    assert as_returned(recipe, value)


@pytest.mark.usefixtures("lane")
def test_in_process_an_exception_that_cannot_be_shown_fails_its_step_readably() -> None:
    async def run() -> None:
        await fidelity_app.broker.startup()
        try:
            await asyncio.wait_for(
                MapReduce.map(fidelity_app.broker, fidelity_app.produce, [["raise"]]), 30
            )
        finally:
            await fidelity_app.broker.shutdown()

    with pytest.raises(StepFailedError, match=r"BadStrError: <its str\(\) raised RuntimeError>"):
        asyncio.run(run())


# -- over Redis, with real `taskiq worker` processes --------------------------------------------


@pytest.fixture(scope="module")
def redis_workers(redis_url: str) -> Iterator[dict[str, str]]:
    """Two `taskiq worker` processes serving tests/fidelity_app.py, once for the module."""
    env = {
        **os.environ,
        "TASKIQ_FLOW_FIDELITY_REDIS": redis_url,
        "TASKIQ_FLOW_FIDELITY_QUEUE": f"fidelity-{uuid.uuid4().hex[:8]}",
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [sys.executable, "-m", "taskiq", "worker", "fidelity_app:broker"]
    proc = subprocess.Popen(
        [*command, "--workers", "2", "--log-level", "ERROR", "--shutdown-timeout", "2"],
        cwd=TESTS,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Orchestrator:
    """The test process as an orchestrator of the Redis app: one event loop for the module,
    its broker started once a worker answered."""

    def __init__(self, env: dict[str, str]) -> None:
        for name in ("TASKIQ_FLOW_FIDELITY_REDIS", "TASKIQ_FLOW_FIDELITY_QUEUE"):
            os.environ[name] = env[name]
        sys.modules.pop("fidelity_app", None)
        import fidelity_app as app

        for name in ("TASKIQ_FLOW_FIDELITY_REDIS", "TASKIQ_FLOW_FIDELITY_QUEUE"):
            del os.environ[name]
        self.url = env["TASKIQ_FLOW_FIDELITY_REDIS"]
        self.queue = env["TASKIQ_FLOW_FIDELITY_QUEUE"]
        self.app = app
        self.runner = asyncio.Runner()
        self.runner.run(self._start())

    async def _start(self) -> None:
        from taskiq_flow.run.runner import run_single

        async def answered() -> bool:
            try:
                await run_single(self.app.broker, self.app.ping.task_name, (), {}, timeout=2)
            except Exception:
                return False  # workers read only what is sent after their consumer group exists
            return True

        await self.app.broker.startup()
        await until(answered, 60, "a worker to answer a ping")

    def sent(self) -> int:
        """Messages ever added to the app's queue (Redis counts them; acknowledged ones are
        deleted, so the stream's length would not do)."""
        from redis.asyncio import Redis

        async def added() -> int:
            client = Redis.from_url(self.url)
            try:
                if not await client.exists(self.queue):
                    return 0
                info = await client.xinfo_stream(self.queue)
                return int(info["entries-added"])
            finally:
                await client.aclose()

        return self.runner.run(added())

    def map(self, items: list[Any], **options: Any) -> list[Any]:
        return self.runner.run(
            asyncio.wait_for(MapReduce.map(self.app.broker, self.app.produce, items, **options), 60)
        )

    def close(self) -> None:
        self.runner.run(self.app.broker.shutdown())
        self.runner.close()
        sys.modules.pop("fidelity_app", None)
        sys.modules["fidelity_app"] = fidelity_app


@pytest.fixture(scope="module")
def orchestrator(redis_workers: dict[str, str]) -> Iterator[Orchestrator]:
    orchestrator = Orchestrator(redis_workers)
    try:
        yield orchestrator
    finally:
        orchestrator.close()


@settings(max_examples=40)
@given(recipe=recipes)
def test_over_redis_every_attempt_completes_unchanged_or_fails_saying_why(
    orchestrator: Orchestrator, recipe: list[Any]
) -> None:
    try:
        expected = over_json(fidelity_app.build(recipe))
        if len(json.dumps(expected)) > LIMIT:
            raise Refused
    except Refused:
        with pytest.raises(StepFailedError) as failed:
            orchestrator.map([recipe])
        message = str(failed.value)
        assert "PayloadTooLargeError" in message and "fidelity_app:produce" in message, message
        return
    [value] = orchestrator.map([recipe])
    assert same(value, expected), (recipe, value, expected)


def test_over_redis_a_result_cpython_cannot_write_fails_each_attempt_by_name(
    orchestrator: Orchestrator,
) -> None:
    """The reproducer of the hang: an int of 10**6 digits, with a retry policy that applies."""
    dead = DeadLetterQueue()
    policy = RetryPolicy(max_attempts=2, delay=0.01)
    with pytest.raises(StepFailedError) as failed:
        orchestrator.map([["bigint", 1_000_000], ["int", "5"]], retry=policy, dead_letters=dead)
    message = str(failed.value)
    assert "fidelity_app:produce" in message and "4,300 digits" in message, message
    [letter] = dead.list()
    assert letter.attempts == 2 and letter.error_type == "PayloadTooLargeError"


def test_over_redis_an_exception_that_cannot_be_shown_fails_its_step_readably(
    orchestrator: Orchestrator,
) -> None:
    with pytest.raises(StepFailedError, match=r"BadStrError.*<its str\(\) raised RuntimeError>"):
        orchestrator.map([["raise"]])


@pytest.mark.parametrize(
    ("recipe", "why"),
    [
        (["dict", [[["int", "1"], ["str", "a"]]]], "the dict key 1 (int) is not a str"),
        (["selfref", [["int", "1"]]], "a list that contains itself"),
        (["badrepr"], "fidelity_app.BadRepr is not a JSON value"),
        (["badencoder"], "this encoder refuses"),
        (["badgen", [["int", "1"]]], "KeyError"),
        (["count", 600_000], "more than 524,289 items"),
    ],
)
def test_over_redis_each_hostile_kind_is_refused_naming_where_and_why(
    orchestrator: Orchestrator, recipe: list[Any], why: str
) -> None:
    with pytest.raises(StepFailedError) as failed:
        orchestrator.map([["list", [["int", "0"], recipe]]])
    message = str(failed.value)
    assert "fidelity_app:produce" in message and "at [1]" in message and why in message, message


def test_over_redis_nan_and_infinities_arrive_as_themselves(orchestrator: Orchestrator) -> None:
    [value] = orchestrator.map([["list", [["float", "nan"], ["float", "-inf"], ["float", "inf"]]]])
    assert math.isnan(value[0]) and value[1:] == [-math.inf, math.inf]


async def test_a_completion_whose_value_cannot_be_read_back_fails_its_attempt(
    redis_url: str,
) -> None:
    """A worker that lifted CPython's digit limit (``sys.set_int_max_str_digits(0)``) writes an
    int this process cannot read: the attempt fails by node, instead of never reporting back."""
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisCompletionChannel
    from taskiq_flow.exceptions import CorruptRecordError

    client = Redis.from_url(redis_url)
    channel = RedisCompletionChannel(client)
    run_id = f"unreadable-{uuid.uuid4().hex[:8]}"
    try:
        inbox = channel.open(run_id)
        head = json.dumps(
            {"node": 3, "attempt": 2, "ok": True, "error": None, "duration_ms": 1, "started_at": 0}
        )
        await client.xadd(channel.key(run_id), {"c": f'{head[:-1]}, "value": {"7" * 5000}}}'})
        await asyncio.wait_for(inbox.wait(), 10)
        [completion] = inbox.drain()
        assert (completion.node, completion.attempt, completion.ok) == (3, 2, False)
        assert isinstance(completion.error, CorruptRecordError)
        assert "node 3" in str(completion.error) and "digits" in str(completion.error)
        channel.close(run_id)
        await channel.aclose()
    finally:
        await client.aclose()


@settings(max_examples=40)
@given(value=argument_values)
def test_over_redis_an_argument_arrives_as_given_or_is_refused_before_sending(
    orchestrator: Orchestrator, value: Any
) -> None:
    """The argument half of the property, over Redis with real workers: what the workers'
    ``echo`` task received (sent back as its result) equals what was given, or the map was
    refused before anything was sent (see tests/test_argument_fidelity.py, in process)."""
    sends = orchestrator.sent()
    try:
        [echoed] = orchestrator.runner.run(
            asyncio.wait_for(
                MapReduce.map(orchestrator.app.broker, orchestrator.app.echo, [value]), 60
            )
        )
    except UnserializableError:
        assert not faithful(value)
        assert orchestrator.sent() == sends, "something was sent before the refusal"
        return
    assert faithful(value), f"sent a value JSON alters: it arrived as {echoed!r}"
    assert same_typed(echoed, as_json(value))
