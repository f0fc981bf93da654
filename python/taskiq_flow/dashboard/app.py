"""The dashboard's ASGI app: pages, their live feed, and the actions a token allows.

Routes::

    GET  /                         the runs list        GET /events            its feed (SSE)
    GET  /runs/{id}                a run                GET /events/runs/{id}  its feed (SSE)
    POST /api/runs/{id}/cancel     cancel a running run (token and CSRF checks)
    POST /api/runs/{id}/delete     delete a run's records (token and CSRF checks)
    POST /api/runs/{id}/dead-letters/{letter}/replay   replay a dead letter through the
                                   broker given (token and CSRF checks)
    GET  /api/runs/{id}/steps/{i}/why   why step i is where it is, asked now (read-only)
    POST /api/...                  the actions given to :func:`create_app` (same checks)
    GET  /static/dashboard.js|css  the page's script and style

Anyone who reaches the server can read; only a holder of the token can act. The token is given
once, as ``?token=T`` on any page (the server answers with a cookie, ``HttpOnly`` and
``SameSite=Strict``, and a redirect that drops it from the address), or with every request as
``Authorization: Bearer T``. A request that acts through the cookie must also carry the page's
CSRF token (``X-CSRF-Token``, derived from the token; the token itself is never on a page) and,
if it has an ``Origin``, come from the dashboard's own origin: a form on another site can send
neither. Every answer carries a Content-Security-Policy that lets the page load nothing but from
the server, and run no inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskiq_flow.cancelling import send_cancel
from taskiq_flow.dashboard.feed import Feed, Subscription
from taskiq_flow.dashboard.pages import asset, dag_html, run_page, runs_page
from taskiq_flow.exceptions import (
    CorruptRecordError,
    InvalidValueError,
    PipelineError,
    UnknownIdError,
)
from taskiq_flow.pictures import GraphView
from taskiq_flow.report import recorded_graph
from taskiq_flow.retry import DeadLetterStore, replay_dead_letter
from taskiq_flow.tracking import PipelineStatus, PipelineTrackingManager

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "COOKIE",
    "DEFAULT_REPLAY_TIMEOUT",
    "REPLAY_PATH",
    "create_app",
    "new_token",
]

#: What every page may do: load its own script, style and feed, nothing else; no inline script,
#: no frame, no form to elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
logger = logging.getLogger("taskiq_flow.dashboard")

#: The session cookie set once the token is given.
COOKIE = "taskiq_flow_dashboard"
_HEARTBEAT = 15.0
_STATES = ("", "running", "done", "failed", "cancelled", "abandoned")
#: The path of the Replay action, under ``/api/``.
REPLAY_PATH = "runs/{run_id}/dead-letters/{letter}/replay"
#: Seconds a replay from the page may take, by default.
DEFAULT_REPLAY_TIMEOUT = 300.0


def new_token() -> str:
    """A fresh random token (what the CLI prints when none is given)."""
    return secrets.token_urlsafe(24)


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


class _SecurityHeaders:
    """Adds the CSP and its companions to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    """The app's state: tracking, the feed, the token, the graphs it can draw.

    :param tracking: where runs are read (and deleted).
    :param token: what allows actions.
    :param graphs: graphs to draw, by run name (a pipeline, or anything with ``nodes``,
        ``sources`` and ``targets``).
    :param interval: seconds between two reads of tracking.
    :param origins: origins besides the dashboard's own that may act (the public address of a
        reverse proxy that rewrites ``Host``), e.g. ``https://ops.example.com``.
    :param dead_letters: where the runs' dead letters are read (default: as a run tracked in
        ``tracking`` keeps them, :func:`~taskiq_flow.run.failures.dead_letters_for`).
    :param broker: a started broker that replays dead letters (``None``: no replay).
    :param replay_timeout: seconds a replay may take.
    """

    def __init__(
        self,
        tracking: PipelineTrackingManager,
        token: str,
        graphs: Mapping[str, GraphView] | None = None,
        interval: float = 0.5,
        origins: Sequence[str] = (),
        dead_letters: DeadLetterStore | None = None,
        broker: Any = None,
        replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError("the dashboard needs a non-empty token (new_token() makes one)")
        if not (isinstance(replay_timeout, (int, float)) and 0 < replay_timeout < math.inf):
            raise ValueError(
                f"replay_timeout must be a number of seconds > 0, got {replay_timeout!r}"
            )
        self.tracking = tracking
        if dead_letters is None:
            from taskiq_flow.run.failures import dead_letters_for
            from taskiq_flow.run.settings import Settings

            dead_letters = dead_letters_for(Settings.build(tracking=tracking))
        self.dead_letters = dead_letters
        self.broker = broker
        self.replay_timeout = float(replay_timeout)
        #: Dead letters being replayed now (a second click waits for the first's answer).
        self.replaying: set[str] = set()
        self.feed = Feed(tracking, interval, dead_letters)
        self.graphs: dict[str, GraphView] = {
            name: getattr(g, "dag", g) for name, g in (graphs or {}).items()
        }
        self._token = token
        self._session = _derive(token, "session")
        self.csrf = _derive(token, "csrf")
        self.origins = {o.rstrip("/") for o in origins}
        self._dags: dict[tuple[str, int, int], str] = {}

    # -- who asks --------------------------------------------------------------------------------

    def authed(self, request: Request) -> str | None:
        """How the request holds the token: ``"bearer"``, ``"cookie"`` or ``None``."""
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip(), self._token):
            return "bearer"
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie, self._session):
            return "cookie"
        return None

    def refuse_action(self, request: Request) -> Response | None:
        """Why an action is refused (``None``: allowed)."""
        how = self.authed(request)
        if how is None:
            return PlainTextResponse("a token is needed for this action", status_code=401)
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self._own_origins(request):
            return PlainTextResponse("refused: a request from another origin", status_code=403)
        if how == "cookie":
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent, self.csrf):
                return PlainTextResponse("refused: missing or wrong CSRF token", status_code=403)
        return None

    def action(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` as an endpoint that runs only once :meth:`refuse_action` allows it (every
        action goes through this one check)."""

        async def endpoint(request: Request) -> Response:
            refused = self.refuse_action(request)
            if refused is not None:
                return refused
            return await handler(request)

        return endpoint

    def _own_origins(self, request: Request) -> set[str]:
        host = request.headers.get("host", "")
        return {f"{request.url.scheme}://{host}", *self.origins}

    # -- the graph of a run ----------------------------------------------------------------------

    def dag_of(self, name: str, status: PipelineStatus) -> str | None:
        """The run's DAG as HTML: its graph given by name (``graphs``), else the one its record
        keeps (:attr:`PipelineStatus.edges`); ``None`` when neither is known."""
        graph: GraphView | None = self.graphs.get(name)
        key: tuple[str, int, int] = ("name:" + name, len(status.steps), 0)
        if graph is None:
            graph = recorded_graph(status)
            if graph is None:
                return None
            key = ("run:" + status.pipeline_id, len(status.steps), len(status.edges or ()))
        if key not in self._dags:
            if len(self._dags) >= 64:  # a few graphs kept drawn, not every run's
                self._dags.pop(next(iter(self._dags)))
            self._dags[key] = dag_html(graph, status.steps)
        return self._dags[key]


def _with_token(request: Request, dash: Dashboard) -> Response | None:
    """A page opened with ``?token=``: sets the session cookie and drops the token from the
    address (a wrong token: refused)."""
    given = request.query_params.get("token")
    if given is None:
        return None
    if not hmac.compare_digest(given, dash._token):
        return PlainTextResponse("wrong token", status_code=403)
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, dash._session, httponly=True, samesite="strict", path="/")
    return response


async def _sse(request: Request, dash: Dashboard, sub: Subscription) -> AsyncIterator[str]:
    feed = dash.feed
    feed.start()
    feed.subscribe(sub)
    try:
        yield ": connected\n\n"
        while True:
            try:
                message = await asyncio.wait_for(sub.queue.get(), _HEARTBEAT)
            except asyncio.TimeoutError:
                message = ": alive\n\n"
            if not message:  # the dashboard closes
                return
            yield message
    finally:
        feed.unsubscribe(sub)


def _stream(request: Request, dash: Dashboard, sub: Subscription) -> StreamingResponse:
    return StreamingResponse(
        _sse(request, dash, sub),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},  # nginx: pass each event on at once
    )


def create_app(
    tracking: PipelineTrackingManager,
    *,
    token: str,
    graphs: Mapping[str, GraphView] | None = None,
    interval: float = 0.5,
    allowed_hosts: Sequence[str] | None = None,
    origins: Sequence[str] = (),
    actions: Mapping[str, Callable[[Request], Awaitable[Response]]] | None = None,
    dead_letters: DeadLetterStore | None = None,
    broker: Any = None,
    replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
) -> Starlette:
    """The dashboard as an ASGI app (run it with uvicorn, or :func:`taskiq_flow.dashboard.serve`).

    :param tracking: where runs are read.
    :param token: what allows actions (:func:`new_token` makes one).
    :param graphs: graphs to draw, by run name (default: the graph each run's record keeps).
    :param interval: seconds between two reads of tracking (0.5: two a second).
    :param allowed_hosts: ``Host`` values served (``None``: any); a loopback server should list
        its loopback names, so a page of another site cannot reach it by rebinding a name.
    :param origins: other origins that may act (a reverse proxy's public address).
    :param actions: more actions, by path under ``/api/`` (a Starlette path, e.g.
        ``"runs/{run_id}/dead-letters/{letter}/replay"``): each is served for ``POST`` behind
        the same checks as cancel and delete (the token; through the cookie, the page's CSRF
        token and the dashboard's own origin), so a handler only does its work.
    :param dead_letters: where the runs' dead letters are read, listed on each run's page
        (default: where a run tracked in ``tracking`` keeps them: Redis beside its records, or
        this process's :func:`~taskiq_flow.retry.default_dead_letters`).
    :param broker: a started taskiq broker that knows the tasks: with it, a token session's
        page has a Replay button per dead letter (``POST /api/runs/{run_id}/dead-letters/
        {letter}/replay``); without it, that action answers 503.
    :param replay_timeout: seconds a replay may take (then it counts as failed; the record stays).
    :raises ValueError: for an empty token, an interval under 0.05 s, a replay timeout that is
        not a number > 0, or an action whose path is taken.
    """
    dash = Dashboard(
        tracking, token, graphs, interval, origins, dead_letters, broker, replay_timeout
    )
    extra = dict(actions or {})
    for path in extra:
        if path.strip("/") in ("runs/{run_id}/cancel", "runs/{run_id}/delete", REPLAY_PATH):
            raise ValueError(f"the action path /api/{path} is the dashboard's own")

    async def runs(request: Request) -> Response:
        redirect = _with_token(request, dash)
        if redirect is not None:
            return redirect
        csrf = dash.csrf if dash.authed(request) else None
        return HTMLResponse(runs_page(csrf))

    async def run(request: Request) -> Response:
        redirect = _with_token(request, dash)
        if redirect is not None:
            return redirect
        run_id = request.path_params["run_id"]
        status = await dash.feed.read_run(run_id)
        csrf = dash.csrf if dash.authed(request) else None
        dag = dash.dag_of(status.name, status) if status is not None else None
        running = status is not None and status.status == "running"
        page = run_page(
            run_id,
            status.name if status is not None else None,
            csrf,
            dag,
            running,
            replay=dash.broker is not None,
        )
        return HTMLResponse(page, status_code=200 if status is not None else 404)

    async def list_events(request: Request) -> Response:
        q = request.query_params
        status = q.get("status", "")
        if status not in _STATES:
            return PlainTextResponse(f"unknown status {status!r}", status_code=400)
        try:
            page = max(0, int(q.get("page", "0")))
        except ValueError:
            return PlainTextResponse("page must be a whole number", status_code=400)
        sub = Subscription(status=status, name=q.get("name", "")[:200], page=page)
        return _stream(request, dash, sub)

    async def run_events(request: Request) -> Response:
        return _stream(request, dash, Subscription(run_id=request.path_params["run_id"]))

    async def delete(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        deleted = await tracking.delete_pipeline(run_id)
        return JSONResponse({"deleted": deleted, "id": run_id}, status_code=200 if deleted else 404)

    async def cancel(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        status: PipelineStatus | None = tracking.live(run_id)  # in this process: no copy
        if status is None:
            try:
                status = await tracking.get_status(run_id)
            except (UnknownIdError, InvalidValueError):
                return JSONResponse({"error": "no such run", "id": run_id}, status_code=404)
        if status.status != "running":
            said = f"the run is {status.status}: nothing to cancel"
            return JSONResponse(
                {"error": said, "id": run_id, "status": status.status}, status_code=409
            )
        try:
            received = await send_cancel(tracking, run_id)
        except Exception as err:  # Redis unreachable: nothing was sent
            logger.warning("the cancel of run %s could not be sent: %s", run_id, err)
            return JSONResponse(
                {"error": f"the cancel could not be sent: {err}", "id": run_id}, status_code=503
            )
        return JSONResponse({"id": run_id, "sent": True, "received": received}, status_code=202)

    async def replay(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        letter = request.path_params["letter"]
        answer = {"id": letter, "run": run_id}
        if dash.broker is None:
            said = (
                "this dashboard replays nothing: it was started without a broker (give "
                "taskiq-flow dashboard --broker module:attr, or serve(..., broker=))"
            )
            return JSONResponse({**answer, "error": said}, status_code=503)
        store = dash.dead_letters
        try:
            record = await store.aget(letter)
        except (UnknownIdError, InvalidValueError):
            said = f"no dead letter {letter} in run {run_id}"
            return JSONResponse({**answer, "error": said}, status_code=404)
        except CorruptRecordError as err:
            return JSONResponse({**answer, "error": str(err), "kept": True}, status_code=409)
        if record.pipeline_id != run_id:
            said = f"no dead letter {letter} in run {run_id}"
            return JSONResponse({**answer, "error": said}, status_code=404)
        if dash.broker.find_task(record.task_name) is None:  # nothing is sent
            said = (
                f"the dashboard's broker has no task named {record.task_name!r} (give the "
                "broker of the application that ran it); the record is kept"
            )
            return JSONResponse({**answer, "error": said, "kept": True}, status_code=409)
        if letter in dash.replaying:
            said = f"dead letter {letter} is being replayed already"
            return JSONResponse({**answer, "error": said, "kept": True}, status_code=409)
        dash.replaying.add(letter)
        try:
            value = await replay_dead_letter(store, letter, dash.broker, dash.replay_timeout)
        except UnknownIdError:  # replayed meanwhile by another process
            said = f"no dead letter {letter} in run {run_id} (replayed meanwhile)"
            return JSONResponse({**answer, "error": said}, status_code=404)
        except PipelineError as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            said = f"the replay of step {record.step!r} failed again, the record is kept: {first}"
            return JSONResponse({**answer, "error": said, "kept": True}, status_code=409)
        except Exception as err:  # the broker (Redis) could not be reached: kept
            logger.warning("the replay of dead letter %s could not be made: %s", letter, err)
            said = f"the replay could not be made, the record is kept: {type(err).__name__}: {err}"
            return JSONResponse({**answer, "error": said, "kept": True}, status_code=502)
        finally:
            dash.replaying.discard(letter)
            dash.feed.letters_changed(run_id)
        done = {**answer, "replayed": True, "step": record.step}
        try:
            text = json.dumps({**done, "value": value}, default=_shown)
        except ValueError:  # a value JSON cannot carry (an int of 5,000 digits)
            text = json.dumps({**done, "value": f"<a {type(value).__name__} JSON cannot carry>"})
        return Response(text, media_type="application/json")

    async def why(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            index = int(request.path_params["index"])
        except ValueError:
            return JSONResponse({"error": "a step is its index, a whole number"}, status_code=400)
        try:
            asked = tracking.explain_step(run_id, index)
        except UnknownIdError as err:
            return JSONResponse({"error": str(err)}, status_code=404)
        if asked is not None:  # the run is live in this process: its own answer, now
            return JSONResponse({"step": index, "why": asked, "source": "run"})
        status = await dash.feed.read_run(run_id)
        if status is None:
            return JSONResponse({"error": f"no run {run_id}"}, status_code=404)
        if not 0 <= index < len(status.steps):
            return JSONResponse({"error": f"run {run_id} has no step {index}"}, status_code=404)
        step = status.steps[index]
        answer: dict[str, Any] = {"step": index, "why": step.waiting, "source": "stored"}
        if status.status == "running" and step.status in ("pending", "running", "retrying"):
            # Another process runs it: ask its orchestrator, which stores its answer with the
            # step (the feed then brings it).
            answer["asked"] = await tracking.ask_explain(run_id, index)
        return JSONResponse(answer)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        kinds = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
        if name not in kinds:
            return PlainTextResponse("not found", status_code=404)
        return Response(asset(name), media_type=kinds[name])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dash.feed.stop()

    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    app = Starlette(
        routes=[
            Route("/", runs),
            Route("/runs/{run_id}", run),
            Route("/events", list_events),
            Route("/events/runs/{run_id}", run_events),
            Route("/api/runs/{run_id}/cancel", dash.action(cancel), methods=["POST"]),
            Route("/api/runs/{run_id}/delete", dash.action(delete), methods=["POST"]),
            Route(f"/api/{REPLAY_PATH}", dash.action(replay), methods=["POST"]),
            Route("/api/runs/{run_id}/steps/{index}/why", why),
            *(
                Route(f"/api/{path.strip('/')}", dash.action(handler), methods=["POST"])
                for path, handler in extra.items()
            ),
            Route("/static/{name}", static),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.dashboard = dash
    return app


def _shown(value: Any) -> str:
    """What JSON cannot carry of a replay's value: its ``repr`` (at most 1,000 characters)."""
    try:
        text = repr(value)
    except Exception:  # a repr that raises (or a huge int)
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 1_000 else text[:999] + "\u2026"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL (for ``origins``)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
