"""Sending a cancel to the orchestrator of a run, wherever it runs (the dashboard's Cancel).

The one place that decides how a cancel travels: with the runs tracked in Redis, the signal is
published on the channel of the tracking's prefix (``<prefix>:cancel``), where the orchestrator
running the run listens (it cancels the run, and its workers cut what runs); with any other
tracking, the run can only be live in this process, which is asked directly
(:func:`taskiq_flow.cancelling.handle_signal`). This module needs neither Starlette nor uvicorn.
"""

from __future__ import annotations

from taskiq_flow import cancelling
from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["send_cancel"]


async def send_cancel(tracking: PipelineTrackingManager, run_id: str) -> int:
    """Asks the orchestrator running ``run_id`` to cancel it; does not wait for the run's end
    (its record turns ``cancelled`` once the orchestrator has stopped it).

    :param tracking: where the run is tracked: a
        :class:`~taskiq_flow.distributed.RedisPipelineStorage` sends the signal over its Redis,
        on ``<its prefix>:cancel``; anything else cancels the live run of this process.
    :param run_id: the run (its pipeline id).
    :return: how many processes the signal reached: over Redis, the subscribers of the channel
        (0: no process listens); in this process, 1 if the run is live here, else 0.
    :raises RedisError: if Redis cannot be reached.
    """
    storage = tracking.storage
    try:
        from taskiq_flow.distributed import RedisCompletionChannel, RedisPipelineStorage
    except ImportError:  # no redis extra: the storage cannot be Redis
        pass
    else:
        if isinstance(storage, RedisPipelineStorage):
            channel = RedisCompletionChannel(storage.redis, prefix=storage.prefix)
            return await channel.send_cancel({"pipeline": run_id})
    live = tracking.live(run_id) is not None
    cancelling.handle_signal({"pipeline": run_id})
    return 1 if live else 0
