"""The tracking manager: status, listing, deletion, cleanup by age."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow import InvalidValueError, PipelineTrackingManager, UnknownIdError


async def test_lifecycle_listing_deletion_and_cleanup() -> None:
    tracking = PipelineTrackingManager()
    await tracking.begin("run-1", "etl", [("load", 1), ("map(clean)", 10)])
    live = await tracking.get_status("run-1")
    assert (live.status, [s.name for s in live.steps]) == ("running", ["load", "map(clean)"])
    assert live.steps[1].tasks == 10
    await tracking.end("run-1", "done")
    await tracking.begin("run-2", "etl", [("load", 1)])
    await tracking.end("run-2", "failed", "boom")
    assert [s.pipeline_id for s in await tracking.list_pipelines()] == ["run-1", "run-2"]
    assert [s.pipeline_id for s in await tracking.list_pipelines("failed")] == ["run-2"]
    failed = await tracking.get_status("run-2")
    assert failed.error == "boom" and failed.duration_ms is not None
    assert failed.steps[0].status == "cancelled"  # never finished
    assert await tracking.delete_pipeline("run-1")
    assert not await tracking.delete_pipeline("run-1")
    with pytest.raises(UnknownIdError, match="no pipeline run with id 'run-1'"):
        await tracking.get_status("run-1")
    assert await tracking.cleanup(older_than=3600) == 0
    await asyncio.sleep(0.01)
    assert await tracking.cleanup(older_than=0) == 1
    assert await tracking.list_pipelines() == []
    with pytest.raises(InvalidValueError):
        await tracking.cleanup(older_than=-1)
