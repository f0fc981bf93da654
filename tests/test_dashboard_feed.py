"""The dashboard's feed: one tracking read per tick however many pages watch, and bytes per tick
that grow with what changed, not with the run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from taskiq_flow.dashboard.feed import Feed, Subscription
from taskiq_flow.retry import DeadLetter, DeadLetterQueue
from taskiq_flow.tracking import InMemoryPipelineStorage, PipelineStatus, PipelineTrackingManager


class CountingStorage(InMemoryPipelineStorage):
    """The in-memory storage, counting how often it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.listings = 0

    async def load(self, pipeline_id: str) -> PipelineStatus | None:
        self.loads += 1
        return await super().load(pipeline_id)

    async def ids(self) -> list[str]:
        self.listings += 1
        return await super().ids()


def drain(sub: Subscription) -> list[tuple[str, Any]]:
    out = []
    while not sub.queue.empty():
        event, data = sub.queue.get_nowait().split("\n", 1)
        out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_one_read_per_tick_however_many_pages_are_open() -> None:
    storage = CountingStorage()
    tracking = PipelineTrackingManager(storage)
    for n in range(3):  # three finished runs
        await tracking.begin(f"done{n}", "etl", [("a", 1), ("b", 1)])
        await tracking.end(f"done{n}", "done")
    await tracking.begin("live", "etl", [("a", 1), ("b", 1)])
    storage.loads = storage.listings = 0  # (begin reads a run's earlier record)
    feed = Feed(tracking)
    pages = [feed.subscribe(Subscription()) for _ in range(3)]  # three runs lists
    pages += [feed.subscribe(Subscription(run_id="live")) for _ in range(4)]
    pages += [feed.subscribe(Subscription(run_id="done1")) for _ in range(4)]
    for _ in range(5):
        await feed.tick()
    assert feed.ticks == 5 and feed.reads == 5
    assert storage.listings == 5  # one listing per tick, not one per list page
    # Each finished run read once (records in this process change only by running again); the
    # live one never read from storage at all (its live record is read in place).
    assert storage.loads == 3
    for page in pages:
        kinds = [event for event, _ in drain(page)]
        assert kinds == ["snapshot"]  # nothing changed after it
    # A step finishes: every page of that run is told, once, and the lists see the change.
    live = tracking.live("live")
    assert live is not None
    live.steps[0].tasks_done = 1
    live.steps[0].settle_status()
    await feed.tick()
    assert storage.loads == 3
    for page in pages[3:7]:
        [(event, data)] = drain(page)
        assert event == "delta" and list(data["steps"]) == ["0"]
        assert data["steps"]["0"][0] == "done"
    for page in pages[:3]:
        [(event, data)] = drain(page)
        assert event == "delta" and data["rows"]["live"]["steps_done"] == 1
    assert all(drain(page) == [] for page in pages[7:])
    # A deleted run: its pages are told it is gone; the lists drop it.
    await tracking.delete_pipeline("done1")
    await feed.tick()
    assert all(drain(page) == [("gone", {"id": "done1"})] for page in pages[7:])
    for page in pages[:3]:
        [(_, data)] = drain(page)
        assert "done1" not in data["order"] and data["total"] == 3


@pytest.mark.parametrize("changed", [1, 10])
async def test_bytes_per_tick_grow_with_what_changed_not_with_the_run(
    changed: int, record_property: Any
) -> None:
    sizes = {}
    for steps in (100, 10_000):
        tracking = PipelineTrackingManager()
        await tracking.begin("run", "big", [(f"step{i}", 1) for i in range(steps)])
        feed = Feed(tracking)
        page = feed.subscribe(Subscription(run_id="run"))
        await feed.tick()
        snapshot = page.sent_bytes
        live = tracking.live("run")
        assert live is not None
        for i in range(changed):  # steps in the middle of the run start
            step = live.steps[50 + i]
            step.tasks_running, step.attempts = 1, 1
            step.settle_status()
        await feed.tick()
        sizes[steps] = (snapshot, page.sent_bytes - snapshot)
    record_property("bytes", sizes)
    (small_snap, small_tick), (big_snap, big_tick) = sizes[100], sizes[10_000]
    assert big_snap > 50 * small_snap  # the snapshot is the run
    assert small_tick == big_tick  # a tick is what changed (same step indices, same bytes)
    assert big_tick < 120 * changed + 60


async def test_the_poller_runs_only_while_a_page_is_open() -> None:
    tracking = PipelineTrackingManager()
    await tracking.begin("run", "etl", [("a", 1)])
    feed = Feed(tracking, interval=0.05)
    feed.start()
    try:
        await asyncio.sleep(0)
        assert feed.ticks == 0
        page = feed.subscribe(Subscription(run_id="run"))
        message = await asyncio.wait_for(page.queue.get(), 5)
        assert message.startswith("event: snapshot")
        feed.unsubscribe(page)
        ticks = feed.ticks
        live = tracking.live("run")
        assert live is not None
        live.steps[0].tasks_running = 1
        live.steps[0].settle_status()
        other = feed.subscribe(Subscription())  # wakes it again
        await asyncio.wait_for(other.queue.get(), 5)
        assert feed.ticks > ticks
    finally:
        await feed.stop()


def test_an_interval_below_a_twentieth_of_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match=r"interval must be at least 0\.05"):
        Feed(PipelineTrackingManager(), interval=0.01)


async def _redis_stats(redis: Any) -> tuple[int, int]:
    """``(commands processed, bytes sent)`` by the server so far."""
    info = await redis.info("stats")
    return int(info["total_commands_processed"]), int(info["total_net_output_bytes"])


async def test_over_redis_a_tick_reads_only_what_changed(
    redis: Any, redis_url: str, record_property: Any
) -> None:
    """A run written by one manager, watched through another (as from another process): a tick
    reads each run's change counter, all in one round trip, then only the steps that changed;
    Redis's commands and bytes per tick do not grow with the run."""
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisPipelineStorage

    figures: dict[int, dict[str, int]] = {}
    for steps in (100, 1_000, 10_000):
        await redis.flushdb()
        writer = PipelineTrackingManager(RedisPipelineStorage(redis, prefix="feed"))
        await writer.begin("run", "big", [(f"step{i}", 1) for i in range(steps)])
        reading = Redis.from_url(redis_url)  # the dashboard's own client
        feed = Feed(PipelineTrackingManager(RedisPipelineStorage(reading, prefix="feed")))
        page = feed.subscribe(Subscription(run_id="run"))
        await feed.tick()  # the snapshot: the whole run, read once
        [(event, data)] = drain(page)
        assert event == "snapshot" and len(data["steps"]) == steps
        before = await _redis_stats(redis)
        await feed.tick()  # nothing changed
        idle = await _redis_stats(redis)
        assert drain(page) == []
        live = writer.live("run")
        assert live is not None
        live.steps[50].tasks_running, live.steps[50].attempts = 1, 1
        live.steps[50].settle_status()
        await writer.save_steps("run", {50})
        written = await _redis_stats(redis)
        await feed.tick()  # one step changed
        after = await _redis_stats(redis)
        [(event, data)] = drain(page)
        assert event == "delta" and list(data["steps"]) == ["50"]
        assert data["steps"]["50"][0] == "running"
        figures[steps] = {
            "idle_commands": idle[0] - before[0] - 1,  # (less the INFO that measures)
            "idle_bytes": idle[1] - before[1],
            "changed_commands": after[0] - written[0] - 1,
            "changed_bytes": after[1] - written[1],
        }
        await writer.end("run", "done")
        await reading.aclose()
    record_property("redis_per_tick", figures)
    small, big = figures[100], figures[10_000]
    # Commands per tick: the same whatever the run's size (the counter's two, its lease, the
    # changed step's HMGET).
    assert small["idle_commands"] == big["idle_commands"] == 3
    assert small["changed_commands"] == big["changed_commands"] == 4
    # Bytes per tick (INFO's own reply included, ~1.3 KB): within a few bytes, not 100x.
    assert abs(big["idle_bytes"] - small["idle_bytes"]) < 64
    assert abs(big["changed_bytes"] - small["changed_bytes"]) < 64
    assert big["changed_bytes"] - big["idle_bytes"] < 1_000  # the one step's record


class CountingLetters(DeadLetterQueue):
    """An in-memory dead-letter store, counting how often it is listed."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    async def alist(self, pipeline_id: str | None = None, corrupt: Any = None) -> Any:
        self.listings += 1
        return await super().alist(pipeline_id, corrupt)


async def test_a_runs_dead_letters_are_read_when_its_failures_change_not_every_tick() -> None:
    tracking = PipelineTrackingManager()
    await tracking.begin("live", "etl", [("a", 1), ("b", 1)])
    store = CountingLetters()
    feed = Feed(tracking, dead_letters=store)
    pages = [feed.subscribe(Subscription(run_id="live")) for _ in range(3)]
    lister = feed.subscribe(Subscription())  # a runs list: never reads dead letters
    for _ in range(4):
        await feed.tick()
    assert store.listings == 1  # with the first snapshot, once for the three pages
    for page in pages:  # the snapshot, then the (empty) list of dead letters
        assert [event for event, _ in drain(page)] == ["snapshot", "letters"]
    # Step a fails for good: a dead letter; the tick that sees the failure reads it, once.
    live = tracking.live("live")
    assert live is not None
    store.add(DeadLetter("live", "a", "app:a", (1,), {}, "RuntimeError: <b>no</b>", "E", 3))
    live.steps[0].tasks_failed = 1
    live.steps[0].settle_status()
    await feed.tick()
    await feed.tick()
    assert store.listings == 2
    for page in pages:
        [(event, data)] = [m for m in drain(page) if m[0] == "letters"]
        assert event == "letters" and data["total"] == 1 and data["problems"] == []
        [row] = data["letters"]
        assert (row["step"], row["task"], row["attempts"]) == ("a", "app:a", 3)
        assert row["error"] == "RuntimeError: <b>no</b>" and "args" not in row
    # A replay removed it: the pages are told at the next tick.
    [record] = store.list("live")
    store.remove(record.id)
    feed.letters_changed("live")
    await feed.tick()
    assert store.listings == 3
    for page in pages:
        [(_, data)] = [m for m in drain(page) if m[0] == "letters"]
        assert data == {"letters": [], "total": 0, "problems": []}
    await feed.tick()
    assert store.listings == 3
    assert [e for e, _ in drain(lister) if e == "letters"] == []
