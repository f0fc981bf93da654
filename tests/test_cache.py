"""Memoized steps: a chain of cached steps re-run with the same input sends nothing, a changed
input re-runs only what depends on it, two runs needing one key at once send it once, values
JSON cannot carry are never cached, and explain/tracking say what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, InvalidValueError, PipelineTrackingManager, pipeline_task
from taskiq_flow.run.caching import default_cache
from tests.conftest import until


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    default_cache().clear()
    yield
    default_cache().clear()


def chain(
    broker: InMemoryBroker, sent: list[str], gate: asyncio.Event | None = None
) -> DataflowPipeline:
    @broker.task
    @pipeline_task(output="clean", cache=True)
    async def clean(raw: list[int]) -> list[int]:
        sent.append("clean")
        if gate is not None:
            await gate.wait()
        return sorted(raw)

    @broker.task
    @pipeline_task(output="total", cache=True)
    async def total(clean: list[int]) -> int:
        sent.append("total")
        return sum(clean)

    @broker.task
    @pipeline_task(output="label", cache=True, cache_version=2)
    async def label(total: int, unit: str) -> str:
        sent.append("label")
        return f"{total} {unit}"

    return DataflowPipeline.from_tasks(broker, [clean, total, label])


async def test_a_cached_chain_rerun_sends_nothing_and_a_change_reruns_what_depends_on_it(
    broker: InMemoryBroker,
) -> None:
    sent: list[str] = []
    tracking = PipelineTrackingManager()
    pipeline = chain(broker, sent).with_tracking(tracking)
    first = await pipeline.kiq_dataflow(raw=[3, 1, 2], unit="kg")
    assert first == {"clean": [1, 2, 3], "total": 6, "label": "6 kg"}
    assert sent == ["clean", "total", "label"]
    assert pipeline.explain("clean") == (
        "done: step 'clean' (cache missed: no value stored for this step (first run, or expired))"
    )
    first_id = pipeline.pipeline_id
    sent.clear()
    assert await pipeline.kiq_dataflow(raw=[3, 1, 2], unit="kg") == first
    assert sent == []  # every step came from the cache
    assert pipeline.explain("total") == f"done: cached (from run {first_id})"
    status = await tracking.get_status(pipeline.pipeline_id or "")
    assert [s.counts_text() for s in status.steps] == ["1 done, 1 cached"] * 3
    # A changed input: only what depends on it runs again.
    assert await pipeline.kiq_dataflow(raw=[3, 1, 2], unit="t") == {**first, "label": "6 t"}
    assert sent == ["label"]
    assert pipeline.explain("label") == "done: step 'label' (cache missed: input 'unit' changed)"


async def test_two_runs_needing_one_key_at_once_send_it_once(broker: InMemoryBroker) -> None:
    sent: list[str] = []
    gate = asyncio.Event()
    pipeline = chain(broker, sent, gate)
    other = DataflowPipeline.from_tasks(broker, [n.task for n in pipeline.dag.nodes])
    runs = [
        asyncio.ensure_future(pipeline.kiq_dataflow(raw=[2, 1], unit="m")),
        asyncio.ensure_future(other.kiq_dataflow(raw=[2, 1], unit="m")),
    ]
    await until(lambda: "clean" in sent, what="the first run to send clean")
    gate.set()
    a, b = await asyncio.gather(*runs)
    assert a == b == {"clean": [1, 2], "total": 3, "label": "3 m"}
    assert sent.count("clean") == 1 and sent.count("total") == 1 and sent.count("label") == 1


async def test_values_json_would_change_are_never_cached(
    broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []

    @broker.task
    @pipeline_task(output="pair", cache=True)
    async def pair(x: int) -> tuple[int, int]:
        runs.append(x)
        return (x, x)

    pipeline = DataflowPipeline.from_tasks(broker, [pair])
    assert await pipeline.kiq_dataflow(x=1) == {"pair": (1, 1)}
    assert await pipeline.kiq_dataflow(x=1) == {"pair": (1, 1)}  # a tuple, never a list
    assert runs == [1, 1]
    assert "cannot be stored faithfully as JSON" in caplog.text


def test_bad_cache_options_are_refused() -> None:
    for bad, match in (
        ({"cache": "yes"}, "cache must be True or False"),
        ({"cache": True, "cache_ttl": 0}, "cache_ttl must be a finite number"),
        ({"cache": True, "cache_ttl": float("inf")}, "cache_ttl must be a finite number"),
        ({"cache": True, "cache_version": 1.5}, "cache_version must be a str or an int"),
    ):
        with pytest.raises(InvalidValueError, match=match):
            pipeline_task(**bad)  # type: ignore[arg-type]


async def test_the_cache_lives_in_redis_when_completions_do(redis_url: str) -> None:
    from taskiq_flow import FlowMiddleware
    from taskiq_flow.distributed import RedisCompletionChannel

    sent: list[str] = []
    first_id = ""
    for attempt in range(2):  # two orchestrators, each with its own broker and channel
        channel = RedisCompletionChannel(redis_url, prefix="cachetest")
        broker = InMemoryBroker().with_middlewares(FlowMiddleware(channel))
        await broker.startup()
        try:
            pipeline = chain(broker, sent)
            assert await pipeline.kiq_dataflow(raw=[5, 4], unit="s") == {
                "clean": [4, 5],
                "total": 9,
                "label": "9 s",
            }
            if attempt == 0:
                first_id = pipeline.pipeline_id or ""
            else:
                assert pipeline.explain("label") == f"done: cached (from run {first_id})"
        finally:
            await broker.shutdown()
    assert sent == ["clean", "total", "label"]  # the second orchestrator sent nothing
