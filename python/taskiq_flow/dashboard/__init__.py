"""A live dashboard of runs in a browser (the ``dashboard`` extra: Starlette and uvicorn).

Runs are read from tracking (in memory in one process, or Redis from anywhere) by one shared
poller a few times a second, and pushed to every open page as server-sent events: first a
snapshot, then only what changed. Reading never drives a run; the one action today, deleting a
run's records, goes through :meth:`~taskiq_flow.tracking.PipelineTrackingManager.delete_pipeline`
like any user's call, and only with the token.

::

    from taskiq_flow.dashboard import serve

    async with await serve(tracking, graphs={"ingest": pipeline}) as dashboard:
        print("open", dashboard.url)
        await pipeline.kiq_dataflow(path="a.wav")

From a shell, over Redis: ``taskiq-flow dashboard --redis redis://127.0.0.1:6379``.

- :mod:`.app` — the ASGI app (:func:`create_app`): pages, feeds, the token and CSRF checks;
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
