"""``taskiq-flow dashboard``: serve the live dashboard of the runs tracked in Redis.

::

    taskiq-flow dashboard --redis redis://127.0.0.1:6379 [--prefix taskiq_flow]
        [--host 127.0.0.1] [--port 8000] [--token T] [--dag NAME=module:pipeline]
        [--origin https://ops.example.com] [--interval 0.5]
        [--broker myapp.tasks:broker [--replay-timeout 300]]

It listens on 127.0.0.1 unless told otherwise (and warns when told otherwise), and prints the
address to open with the token in it; without ``--token`` a new one is made for each start. The
page is read-only without the token. With ``--broker`` (the application's taskiq broker, imported
as ``runs replay --broker`` imports it), a run's page replays its dead letters. Bad input (the
URL, the prefix, the port, a ``--dag`` or ``--broker`` import) is refused with one line, exit
status 2, before anything connects or listens.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from taskiq_flow.cli._help import HelpFormatter, OneLineParser, number, paragraphs, whole_number
from taskiq_flow.cli._imports import check_import_path
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.pictures import GraphView

if TYPE_CHECKING:
    from taskiq_flow.tracking import PipelineTrackingManager

__all__ = ["build_parser", "main"]

_URL = re.compile(r"^(redis|rediss|unix)://\S+$")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_TOKEN = re.compile(r"[A-Za-z0-9_.~\-]{16,256}")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = OneLineParser(
        prog="taskiq-flow dashboard",
        description=paragraphs(
            "Serve a live dashboard of the runs tracked in Redis: the runs list, each run's "
            "DAG, steps, timeline and why each step waits, updated a few times a second.\n\n"
            "Anyone who reaches the server can read; acting (cancel, delete, and with --broker "
            "replay a dead letter) needs the token (printed at start, in the address to open)."
        ),
        epilog=(
            "examples:\n"
            "  taskiq-flow dashboard --redis redis://127.0.0.1:6379\n"
            "  taskiq-flow dashboard --redis redis://r:6379/0 --port 8000 "
            "--dag ingest=app.flows:pipeline"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        required=True,
        help="Redis URL of the tracking storage: redis://, rediss:// or unix://",
    )
    parser.add_argument(
        "--prefix",
        default="taskiq_flow",
        help="key prefix the runs were tracked under (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; anything else "
        "is warned about)",
    )
    parser.add_argument(
        "--port",
        type=whole_number(0, 65535),
        default=8000,
        help="port to listen on (default: %(default)s; 0: a free one)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="what allows actions (16+ letters, digits, _ . ~ -); default: a new one, printed",
    )
    parser.add_argument(
        "--dag",
        action="append",
        default=[],
        metavar="[NAME=]MODULE:ATTR",
        help="a pipeline (or graph) whose runs' DAG to draw, for runs named NAME (default: the "
        "pipeline's own name); repeatable",
    )
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="URL",
        help="another origin allowed to act, e.g. a reverse proxy's https://ops.example.com; "
        "repeatable",
    )
    parser.add_argument(
        "--broker",
        default=None,
        metavar="MODULE:NAME",
        help="the taskiq broker of the application that ran the runs, imported: a run's page "
        "then replays its dead letters (with the token); default: no replay",
    )
    parser.add_argument(
        "--replay-timeout",
        type=number(0.001, 7 * 86_400.0),
        default=300.0,
        metavar="SECONDS",
        help="how long a replayed task may take (default: %(default)g)",
    )
    parser.add_argument(
        "--interval",
        type=number(0.05, 60.0),
        default=0.5,
        metavar="SECONDS",
        help="seconds between two reads of Redis (default: %(default)g)",
    )
    return parser


def _problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the input, before anything connects or listens."""
    if not _URL.match(args.redis):
        return f"--redis must be a redis://, rediss:// or unix:// URL, got {args.redis!r}"
    from redis import connection

    parse_url = cast("Callable[[str], object]", connection.parse_url)  # untyped in redis-py
    try:
        parse_url(args.redis)
    except ValueError as err:
        return f"--redis {args.redis}: {err}"
    if not _PREFIX.fullmatch(args.prefix or ""):
        return f"--prefix may hold only letters, digits and _ . - (got {args.prefix!r})"
    if args.token is not None and not _TOKEN.fullmatch(args.token):
        return "--token must be 16 to 256 letters, digits or _ . ~ - (it was not)"
    for spec in args.dag:
        path = spec.split("=", 1)[1] if "=" in spec else spec
        problem = check_import_path(path, "--dag")
        if problem is not None:
            return problem
    if args.broker is not None:
        problem = check_import_path(args.broker, "--broker")
        if problem is not None:
            return problem
    for origin in args.origin:
        if not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
            return (
                f"--origin must be a scheme and host like https://ops.example.com, got {origin!r}"
            )
    return None


def _graphs(specs: Sequence[str]) -> dict[str, GraphView]:
    """``--dag`` values imported: by run name.

    :raises InvalidValueError: for an import that fails or is not a graph.
    """
    from taskiq_flow.cli._imports import import_object

    graphs: dict[str, GraphView] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        obj = import_object(path, "--dag")
        graph: Any = getattr(obj, "dag", obj)
        if not all(hasattr(graph, a) for a in ("nodes", "sources", "targets")):
            raise InvalidValueError(
                f"--dag {path}: a {type(obj).__name__}, neither a pipeline nor a DAG"
            )
        own = getattr(getattr(obj, "settings", None), "name", None)
        key = name or (own if isinstance(own, str) else path.rpartition(":")[2])
        graphs[key] = graph
    return graphs


async def _serve(args: argparse.Namespace, graphs: dict[str, GraphView], broker: Any = None) -> int:
    from redis.asyncio import Redis

    from taskiq_flow.distributed import RedisPipelineStorage
    from taskiq_flow.tracking import PipelineTrackingManager as Tracking

    client = Redis.from_url(args.redis, socket_timeout=10, socket_connect_timeout=10)
    try:
        try:
            await client.ping()
        except Exception as err:
            print(f"taskiq-flow dashboard: cannot reach {args.redis}: {err}", file=sys.stderr)
            return 1
        tracking = Tracking(RedisPipelineStorage(client, prefix=args.prefix))
        if broker is not None:
            try:
                await broker.startup()
            except Exception as err:
                print(
                    f"taskiq-flow dashboard: --broker {args.broker} could not start: {err}",
                    file=sys.stderr,
                )
                return 1
        try:
            return await _listen(args, tracking, graphs, broker)
        finally:
            if broker is not None:
                await broker.shutdown()
    finally:
        await client.aclose()


async def _listen(
    args: argparse.Namespace,
    tracking: PipelineTrackingManager,
    graphs: dict[str, GraphView],
    broker: Any,
) -> int:
    from taskiq_flow.dashboard.server import is_loopback, serve

    if not is_loopback(args.host):
        print(
            f"taskiq-flow dashboard: warning: listening on {args.host}, not only on this "
            "machine: anyone who reaches it can read every run (actions need the token)",
            file=sys.stderr,
        )
    try:
        server = await serve(
            tracking,
            host=args.host,
            port=args.port,
            token=args.token,
            graphs=graphs,
            interval=args.interval,
            origins=args.origin,
            broker=broker,
            replay_timeout=args.replay_timeout,
        )
    except OSError as err:
        print(
            f"taskiq-flow dashboard: cannot listen on {args.host}:{args.port}: {err}",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    generated = "" if args.token else " (a new token; give --token to keep one)"
    print(f"taskiq-flow dashboard: serving {server.base_url}", flush=True)
    print(f"open {server.url}{generated}", flush=True)
    try:
        await stop.wait()  # until Ctrl-C or SIGTERM
    finally:
        await server.close()
    print("taskiq-flow dashboard: stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``taskiq-flow dashboard ...``; returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    import importlib.util

    for module in ("starlette", "uvicorn", "redis"):
        if importlib.util.find_spec(module) is None:
            extra = "redis" if module == "redis" else "dashboard"
            print(
                f"taskiq-flow dashboard needs the {extra} extra ({module} is not installed): "
                f"pip install 'taskiq-flow[{extra}]'",
                file=sys.stderr,
            )
            return 2
    problem = _problem(args)
    if problem is not None:
        print(f"taskiq-flow dashboard: {problem}", file=sys.stderr)
        return 2
    try:
        graphs = _graphs(args.dag)
    except InvalidValueError as err:
        print(f"taskiq-flow dashboard: {err}", file=sys.stderr)
        return 2
    broker: Any = None
    if args.broker is not None:
        from taskiq_flow.cli.runs import load_broker

        try:  # the user's module, imported before anything connects or listens
            broker = load_broker(args.broker)
        except InvalidValueError as err:
            print(f"taskiq-flow dashboard: {err}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_serve(args, graphs, broker))
    except KeyboardInterrupt:
        print("taskiq-flow dashboard: stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
