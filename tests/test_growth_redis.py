"""Runs that grow over Redis, with real `taskiq worker` processes: item-by-item steps, tasks that
add tasks (the expansion travels back with the completion), skips, and a resume after the
orchestrator was killed mid-growth."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from taskiq_flow import PipelineTrackingManager
from taskiq_flow.distributed import RedisPipelineStorage
from tests.conftest import until
from tests.test_distributed import TESTS, app_module, supervised_workers

if TYPE_CHECKING:
    from redis.asyncio import Redis


@pytest.fixture
def supervised(redis_url: str) -> Iterator[tuple[dict[str, str], Any]]:
    """Two worker processes consuming tests/growth_app.py, and their taskiq supervisor."""
    with supervised_workers(redis_url, "--workers", "2", app="growth_app:broker") as found:
        yield found


@pytest.fixture
def growth_workers(supervised: tuple[dict[str, str], Any]) -> dict[str, str]:
    return supervised[0]


@pytest.fixture
async def growth(growth_workers: dict[str, str]) -> AsyncIterator[Any]:
    async with app_module(growth_workers, "growth_app") as module:
        yield module


async def test_items_flow_through_workers_with_skips_and_an_exact_cap(
    redis: Redis, growth: Any
) -> None:
    outputs = await growth.site.kiq_dataflow(site="s", count=12)
    pages = [f"S/{i}" for i in range(12) if i != 4]  # page 4 skipped itself: left out
    assert outputs["html"] == pages
    assert outputs["words"] == [len(p) for p in pages]
    assert outputs["total"] == sum(len(p) for p in pages)
    assert int(await redis.get("fetch:peak")) == 3


async def test_a_recursive_crawl_expands_through_workers_under_its_cap(
    redis: Redis, growth: Any
) -> None:
    outputs = await growth.crawler.kiq_dataflow(pages=121)

    def flatten(value: Any) -> list[int]:
        return [value] if isinstance(value, int) else [p for v in value for p in flatten(v)]

    assert sorted(flatten(outputs["site"])) == list(range(40, 121))  # the leaves
    assert 1 < int(await redis.get("crawl:peak")) <= 4
    for page in range(121):
        assert int(await redis.get(f"crawl:{page}:runs")) == 1


async def test_an_orchestrator_killed_mid_growth_resumes_without_rerunning_a_finished_child(
    redis: Redis, growth: Any, growth_workers: dict[str, str]
) -> None:
    orchestrator = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "growth_resume.py"),
        cwd=TESTS,
        env={**growth_workers, "TASKIQ_FLOW_TEST_RUN_LEASE": "1"},
    )
    tracking = PipelineTrackingManager(RedisPipelineStorage(redis, ttl_seconds=600))
    [live] = await until(
        lambda: tracking.list_pipelines(status="running"), 60, "the run to be tracked"
    )

    async def recorded() -> dict[int, Any]:
        results = await tracking.load_results(live.pipeline_id)
        return results if len(results) >= 20 else {}

    await until(recorded, 60, "20 children recorded as finished")
    orchestrator.kill()
    await orchestrator.wait()
    finished = await tracking.load_results(live.pipeline_id)
    [grew] = await tracking.load_growth(live.pipeline_id)
    first = grew["first"]
    children = {node - first: value for node, value in finished.items() if node >= first}
    assert len(children) >= 20
    await redis.set("leaf:go", 1)

    await until(lambda: tracking.list_pipelines(status="abandoned"), 30, "the run abandoned")
    outputs = await growth.fan.with_tracking(tracking).resume(live.pipeline_id)
    assert outputs == {"squares": sum(i * i for i in range(60))}
    for item, value in children.items():
        assert value == item * item
        assert int(await redis.get(f"leaf:{item}:runs")) == 1, item
    assert (await tracking.get_status(live.pipeline_id)).status == "done"


async def test_a_crawl_survives_a_killed_worker_child(
    redis: Redis, growth: Any, supervised: tuple[dict[str, str], Any]
) -> None:
    from taskiq_flow import start
    from tests.test_cli_signals import descendants

    run = start(growth.crawler.kiq_dataflow, pages=364)

    async def crawled() -> bool:
        return len(await redis.keys("crawl:*:runs")) >= 30

    await until(crawled, 60, "30 pages to be crawled")
    child = descendants(supervised[1].pid)[0]  # taskiq's supervisor starts another in its place
    os.kill(child, signal.SIGKILL)
    outputs = await asyncio.wait_for(run.result(), 120)

    def flatten(value: Any) -> list[int]:
        return [value] if isinstance(value, int) else [p for v in value for p in flatten(v)]

    assert sorted(flatten(outputs["site"])) == list(range(121, 364))  # every leaf, once
    for page in range(364):  # each page ran; one killed mid-run ran again
        assert 1 <= int(await redis.get(f"crawl:{page}:runs")) <= 3
