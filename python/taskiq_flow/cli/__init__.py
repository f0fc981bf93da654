"""The ``taskiq-flow`` command: :func:`main` parses the command line and hands each command to
its module.

- :mod:`.runs` — ``runs list|show|delete|report|explain|cancel|dead-letters|replay`` (and
  ``report``, ``explain`` at the top);
- :mod:`.resume` — ``runs resume``;
- :mod:`.demo` — ``demo``;
- :mod:`.worker` — ``worker``;
- :mod:`.dashboard` — ``dashboard``;
- ``bench`` is :mod:`taskiq_flow.bench`;
- :mod:`._help` — help text and input checks, :mod:`._imports` — ``module:attribute`` imports,
  shared by the commands.
"""

from __future__ import annotations

import importlib.util
import sys

from taskiq_flow.cli._help import HelpFormatter, OneLineParser


def _version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("taskiq-flow")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


#: What the ``redis`` extra installs (``pip install 'taskiq-flow[redis]'``), by import name.
REDIS_EXTRA = ("redis", "taskiq_redis")
#: What the dashboard serves with, beyond the redis extra.
DASHBOARD_EXTRA = ("starlette", "uvicorn")


def missing_extra(command: str) -> str | None:
    """The one line to print if a command runs without the extra it needs (``redis``; the
    ``dashboard`` also needs ``dashboard``); ``None`` if they are installed. Nothing is imported."""
    extras = [("redis", REDIS_EXTRA)]
    if command == "dashboard":
        extras.append(("dashboard", DASHBOARD_EXTRA))
    for extra, modules in extras:
        for module in modules:
            if importlib.util.find_spec(module) is None:
                return (
                    f"taskiq-flow {command} needs the {extra} extra ({module} is not installed): "
                    f"pip install 'taskiq-flow[{extra}]' (in a source tree: pip install "
                    f"'.[{extra}]')"
                )
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``taskiq-flow <command> ...``; returns the exit status."""
    parser = OneLineParser(
        prog="taskiq-flow",
        description="Pipeline and DAG orchestration for taskiq, with a Rust scheduling core.",
        epilog=(
            "examples:\n"
            "  taskiq-flow demo\n"
            "  taskiq-flow worker app:broker --name w1 --cpu-cores 4 --ram-gb 16\n"
            "  taskiq-flow bench --group admission\n"
            "  taskiq-flow runs list --redis redis://127.0.0.1:6379\n"
            "  taskiq-flow COMMAND --help"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskiq-flow {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser(
        "demo",
        help="run an audio-ingest dataflow on the embedded broker and show its step timings",
        add_help=False,
    )
    commands.add_parser(
        "worker",
        help="run a taskiq worker that advertises its capacity and consumes its own queue",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="compare the scheduling core against its peers (graphlib, rustworkx, ...)",
        add_help=False,
    )
    commands.add_parser(
        "dashboard", help="serve a live dashboard of the runs tracked in Redis", add_help=False
    )
    commands.add_parser(
        "schedule", help="run pipelines on their schedules, each slot exactly once", add_help=False
    )
    from taskiq_flow.cli.runs import add_runs_commands

    add_runs_commands(commands, top_level=True)  # runs list|show|delete|report|explain
    args, rest = parser.parse_known_args(argv)
    if args.command in ("runs", "report", "explain", "worker", "dashboard"):
        missing = missing_extra(args.command)
        if missing is not None:
            print(missing, file=sys.stderr)
            return 2
    if args.command in ("runs", "report", "explain"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        import asyncio

        from taskiq_flow.cli.runs import main_runs

        try:
            return asyncio.run(main_runs(args))
        except KeyboardInterrupt:
            print(f"taskiq-flow {args.command}: interrupted", file=sys.stderr)
            return 130
    if args.command == "demo":
        from taskiq_flow.cli.demo import main as demo_main

        return demo_main(rest)
    if args.command == "worker":
        from taskiq_flow.cli.worker import main as worker_main

        return worker_main(rest)
    if args.command == "bench":
        from taskiq_flow.bench import main as bench_main

        return bench_main(rest)
    if args.command == "schedule":
        from taskiq_flow.cli.schedule import main as schedule_main

        return schedule_main(rest)
    if args.command == "dashboard":
        from taskiq_flow.cli.dashboard import main as dashboard_main

        return dashboard_main(rest)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse exits first
