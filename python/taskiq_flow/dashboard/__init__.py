"""A live dashboard of runs in a browser (the ``dashboard`` extra: Starlette and uvicorn).

Runs are read from tracking (in memory in one process, or Redis from anywhere) by one shared
poller a few times a second, and pushed to every open page as server-sent events: first a
snapshot, then only what changed. Reading never drives a run; its actions go through the calls
a user has, and only with the token: cancelling a running run (the cancel signal, as
``taskiq-flow runs cancel`` sends it: :func:`taskiq_flow.cancelling.send_cancel`), deleting a
run's records (:meth:`~taskiq_flow.tracking.PipelineTrackingManager.delete_pipeline`) and, given a
broker, replaying a dead letter (:func:`taskiq_flow.retry.replay_dead_letter`).

::

    from taskiq_flow.dashboard import serve

    async with await serve(tracking, graphs={"ingest": pipeline}) as dashboard:
        print("open", dashboard.url)
        await pipeline.kiq_dataflow(path="a.wav")

From a shell, over Redis: ``taskiq-flow dashboard --redis redis://127.0.0.1:6379``.

- :mod:`.app` — the ASGI app (:func:`create_app`): pages, feeds, the token and CSRF checks;
- :mod:`.cancel` — how a cancel reaches a run's orchestrator (Redis, or this process);
- :mod:`.feed` — the shared poller and the deltas it sends;
- :mod:`.pages` — the HTML (the script and style are files in ``static/``);
- :mod:`.server` — :func:`serve` in this event loop.
"""

from __future__ import annotations

from taskiq_flow.dashboard.app import CONTENT_SECURITY_POLICY, create_app, new_token
from taskiq_flow.dashboard.feed import Feed
from taskiq_flow.dashboard.server import DashboardServer, serve

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DashboardServer",
    "Feed",
    "create_app",
    "new_token",
    "serve",
]
