"""Tasks of runs that grow, on the Redis app of tests/redis_app.py: imported by `taskiq worker`
processes (``growth_app:broker``) and by the tests and orchestrators that run them."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis_app import URL, broker

from taskiq_flow import DataflowPipeline, Expand, Skip, pipeline_task

__all__ = ["broker"]


async def _incr(key: str) -> int:
    client = Redis.from_url(URL)
    try:
        return int(await client.incr(key))
    finally:
        await client.aclose()


async def _held(key: str, until_peak: int = 0) -> None:
    """Counts this task among those running at once (``<key>:running``), keeping the peak; with
    ``until_peak``, holds on until the peak has reached it (at most 10 s), so that a cap of that
    many is filled however slowly a loaded machine starts the tasks."""
    client = Redis.from_url(URL)
    try:
        running = await client.incr(f"{key}:running")
        await client.eval(
            "if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
            "redis.call('SET', KEYS[1], ARGV[1]) end",
            1,
            f"{key}:peak",
            running,
        )
        await asyncio.sleep(0.01)
        for _ in range(1000):
            if int(await client.get(f"{key}:peak") or 0) >= until_peak:
                break
            await asyncio.sleep(0.01)
        await client.decr(f"{key}:running")
    finally:
        await client.aclose()


@broker.task
@pipeline_task(output="pages")
async def list_pages(site: str, count: int) -> list[str]:
    return [f"{site}/{i}" for i in range(count)]


@broker.task
@pipeline_task(output="html", each={"url": "pages"}, max_parallel=3)
async def fetch(url: str) -> str:
    await _held("fetch", until_peak=3)
    if url.endswith("/4"):
        raise Skip("page 4 is gone")
    return url.upper()


@broker.task
@pipeline_task(output="words", each={"page": "html"})
async def count_words(page: str) -> int:
    return len(page)


@broker.task
@pipeline_task(output="total")
async def total_words(words: list[int]) -> int:
    return sum(words)


site = DataflowPipeline.from_tasks(broker, [list_pages, fetch, count_words, total_words])


@broker.task
async def crawl(link: list[int]) -> Any:
    """Page ``link[0]`` of a tree of ``link[1]`` pages, three links a page: a crawl that
    expands into the pages it links to."""
    page, pages = link
    await _held("crawl")
    await _incr(f"crawl:{page}:runs")
    links = [c for c in range(3 * page + 1, 3 * page + 4) if c < pages]
    if not links:
        return page
    return Expand(crawl, [[c, pages] for c in links], max_parallel=4)


@broker.task
@pipeline_task(output="site")
async def crawl_from(pages: int) -> Expand:
    return Expand(crawl, [[0, pages]], max_parallel=4)


crawler = DataflowPipeline.from_tasks(broker, [crawl_from])


@broker.task
async def leaf(i: int) -> int:
    """Counts its runs per item; items from 20 on wait for ``leaf:go`` (a minute at most)."""
    await _incr(f"leaf:{i}:runs")
    if i >= 20:
        client = Redis.from_url(URL)
        try:
            for _ in range(6000):
                if await client.exists("leaf:go"):
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
    return i * i


@broker.task
async def add_up(values: list[int]) -> int:
    return sum(values)


@broker.task
@pipeline_task(output="squares")
async def fan_out(n: int) -> Expand:
    return Expand(leaf, list(range(n)), max_parallel=4, then=add_up)


fan = DataflowPipeline.from_tasks(broker, [fan_out])
