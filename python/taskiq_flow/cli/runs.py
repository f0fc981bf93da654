"""``taskiq-flow runs``: list, show, delete, report on and explain tracked runs.

Runs are read from the tracking storage that outlives a process: Redis
(``--redis redis://host:6379/0 --prefix taskiq_flow``, the same prefix as the
:class:`~taskiq_flow.distributed.RedisPipelineStorage` the runs were recorded with). Output is a
table sized to the terminal (``rich``; the run id is always whole on one line, the other columns
give way), or JSON with ``--json``. ``--dag module:name`` is imported from the current directory
first, as ``runs resume --pipeline`` and ``taskiq worker`` do (:mod:`taskiq_flow.cli._imports`).

::

    taskiq-flow runs list --redis redis://localhost:6379/0 [--status failed] [--limit 20]
    taskiq-flow runs show RUN --redis URL
    taskiq-flow runs delete RUN [RUN ...] --redis URL
    taskiq-flow runs report RUN --redis URL -o run.html [--dag myapp.flows:pipeline]
    taskiq-flow runs explain RUN [STEP] --redis URL
    taskiq-flow runs dead-letters [RUN] --redis URL
    taskiq-flow runs replay ID --redis URL --broker myapp.tasks:broker [--run-timeout 60]

``dead-letters`` lists the steps that failed for good, kept in Redis beside the runs
(:class:`~taskiq_flow.distributed.RedisDeadLetterQueue`); ``replay`` sends one again through the
application's broker (imported as ``--broker module:attribute``): a replay that succeeds prints
the task's value and removes the record; one that fails again keeps it (exit 1).

Wiring (in :mod:`taskiq_flow.cli`)::

    add_runs_commands(commands, top_level=True)   # commands = parser.add_subparsers(...)
    if args.command in ("runs", "report", "explain"):
        return asyncio.run(main_runs(args))

Exit codes: 0 done, 1 a run, a dead letter (or Redis) was not found or reached, a report could not
be written, a dead letter could not be read back or its replay failed again, 2 bad input (checked
before any connection is made: the URL, the prefix, the ``--dag`` and ``--broker`` imports, the
``--output`` path, the dead letter's id).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as _dt
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import IO, Any, cast, get_args

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskiq_flow._backoff import Backoff
from taskiq_flow._duration import duration, duration_ms
from taskiq_flow.cancelling import send_cancel
from taskiq_flow.cli._help import (
    COLUMNS,
    HelpFormatter,
    number,
    paragraphs,
    whole_number,
    writable_file,
)
from taskiq_flow.cli._imports import check_import_path, import_object
from taskiq_flow.exceptions import (
    CorruptRecordError,
    InvalidValueError,
    PipelineError,
    UnknownIdError,
)
from taskiq_flow.pictures import GraphView
from taskiq_flow.report import recorded_graph, write_report
from taskiq_flow.retry import (
    DeadLetter,
    DeadLetterStore,
    default_dead_letters,
    replay_dead_letter,
)
from taskiq_flow.tracking import PipelineStatus, PipelineTrackingManager, RunState, StepStatus

__all__ = [
    "add_runs_commands",
    "dead_letters_table",
    "explain_line",
    "load_graph",
    "main_runs",
    "run_to_json",
    "runs_table",
    "steps_table",
]

_URL = re.compile(r"^(redis|rediss|unix)://\S+$")

#: How long the ``runs`` commands wait for Redis to connect or answer one command, by default and
#: at most (``--timeout``). Set here, not left to the redis client's own default, which differs
#: between its versions (none before 8, 5 s since).
DEFAULT_WAIT = 10.0
MAX_WAIT = 3600.0
#: How long ``runs replay`` waits for the replayed task, by default and at most
#: (``--run-timeout``).
DEFAULT_REPLAY_WAIT = 300.0
MAX_REPLAY_WAIT = 7 * 86_400.0


def redis_client(url: str, timeout: float) -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` that waits at most ``timeout`` seconds to connect and
    for each answer (no connection is made until its first command)."""
    from redis.asyncio import Redis

    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def add_runs_commands(
    subparsers: argparse._SubParsersAction[Any],
    top_level: bool = False,
    redis_required: bool = True,
) -> argparse.ArgumentParser:
    """Registers ``runs`` (with ``list``, ``show``, ``delete``, ``report``, ``explain``) on a
    sub-command set; returns the ``runs`` parser. The parsed namespace goes to
    :func:`main_runs`.

    :param top_level: also register ``report`` and ``explain`` directly on ``subparsers``
        (``taskiq-flow report RUN -o run.html``, ``taskiq-flow explain RUN STEP``), the same
        actions as under ``runs``.
    :param redis_required: ``--redis`` is required (as on the command line); ``False`` for a
        caller that passes its own tracking to :func:`main_runs`.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        metavar="URL",
        required=redis_required,
        help="Redis URL of the tracking storage: redis://, rediss:// or unix:// (required: "
        "runs kept in memory die with their process)",
    )
    common.add_argument(
        "--prefix",
        default="taskiq_flow",
        help="key prefix the runs were tracked under (default: %(default)s)",
    )
    common.add_argument(
        "--timeout",
        type=number(0.001, MAX_WAIT),
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help="how long to wait for Redis to connect or answer one command (default: %(default)g)",
    )
    common.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (default: a table)"
    )
    url = "redis://host:6379"

    def add(
        place: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        *examples: str,
    ) -> argparse.ArgumentParser:
        return place.add_parser(
            name,
            parents=[common],
            help=summary,
            description=paragraphs(summary[0].upper() + summary[1:] + "."),
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
            formatter_class=HelpFormatter,
        )

    runs: argparse.ArgumentParser = subparsers.add_parser(
        "runs",
        help="list, show, delete, report on, explain, cancel and resume tracked runs; list "
        "and replay their dead letters",
        description=paragraphs(
            "List, show, delete, report on, explain, cancel and resume the runs tracked in Redis "
            "(RedisPipelineStorage); list and replay their dead letters (the steps that failed "
            "for good). Exit status: 0 done, 1 a run, a dead letter or Redis not found (or a "
            "replay failed again), 2 bad input (checked before any connection)."
        ),
        epilog=(
            "examples:\n"
            f"  taskiq-flow runs list --redis {url} --status failed\n"
            f"  taskiq-flow runs show RUN --redis {url}\n"
            "  taskiq-flow runs ACTION --help"
        ),
        formatter_class=HelpFormatter,
    )
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="action")
    listing = add(
        actions,
        "list",
        "the tracked runs, newest last",
        f"taskiq-flow runs list --redis {url}",
        f"taskiq-flow runs list --redis {url} --status abandoned --limit 20",
    )
    listing.add_argument(
        "--status",
        choices=get_args(RunState),
        metavar="STATE",
        help="only runs in this state: " + ", ".join(get_args(RunState)) + " (default: any)",
    )
    listing.add_argument(
        "--limit", type=whole_number(1), metavar="N", help="only the newest N runs (default: all)"
    )
    show = add(
        actions,
        "show",
        "one run and its steps",
        f"taskiq-flow runs show RUN --redis {url}",
        f"taskiq-flow runs show RUN --redis {url} --json",
    )
    show.add_argument("run", help="the run's pipeline id")
    delete = add(
        actions,
        "delete",
        "delete runs' tracking records",
        f"taskiq-flow runs delete RUN1 RUN2 --redis {url}",
    )
    delete.add_argument("runs", nargs="+", metavar="run", help="pipeline ids")
    cancel = add(
        actions,
        "cancel",
        "cancel a live run from any process: nothing new is sent and its running attempts are "
        "cut where they run; waits until its orchestrator records the end",
        f"taskiq-flow runs cancel RUN --redis {url}",
    )
    cancel.add_argument("run", help="the run's pipeline id")
    letters = add(
        actions,
        "dead-letters",
        "the steps that failed for good (dead letters) kept in Redis, oldest first",
        f"taskiq-flow runs dead-letters --redis {url}",
        f"taskiq-flow runs dead-letters RUN --redis {url} --json",
    )
    letters.add_argument("run", nargs="?", help="only this run's (default: every run's)")
    replay = add(
        actions,
        "replay",
        "send a dead letter's task again with its arguments, through the application's "
        "broker: on success print its value and remove the record; if it fails again, keep it "
        "(exit 1)",
        f"taskiq-flow runs replay ID --redis {url} --broker app.tasks:broker",
    )
    replay.add_argument("id", help="the dead letter's id (from runs dead-letters)")
    replay.add_argument(
        "--broker",
        required=True,
        metavar="MODULE:NAME",
        help="the taskiq broker of the application that ran it, imported (required; a "
        "taskiq-flow Redis broker, whose FlowMiddleware channel is in Redis)",
    )
    replay.add_argument(
        "--run-timeout",
        type=number(0.001, MAX_REPLAY_WAIT),
        default=DEFAULT_REPLAY_WAIT,
        metavar="SECONDS",
        help="how long the replayed task may take (default: %(default)g)",
    )
    resume = add(
        actions,
        "resume",
        "run an abandoned run to the end (a dataflow pipeline, the inputs stored with it)",
        f"taskiq-flow runs resume RUN --redis {url} --pipeline app:pipeline",
    )
    resume.add_argument("run", help="the run's pipeline id")
    resume.add_argument(
        "--pipeline",
        required=True,
        metavar="MODULE:NAME",
        help="the pipeline it was made with, imported (required)",
    )
    resume.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help=(
            "an input of the run as JSON, a string in JSON quotes: folder='\"/data\"' "
            "(repeatable; default: the inputs stored with the run)"
        ),
    )
    resume.add_argument(
        "--inputs-changed-ok",
        action="store_true",
        help="run with inputs other than the stored ones (default: refused)",
    )
    places = [actions, subparsers] if top_level else [actions]
    for place in places:
        report = add(
            place,
            "report",
            "write a run's self-contained HTML report",
            f"taskiq-flow report RUN --redis {url} -o run.html",
            f"taskiq-flow runs report RUN --redis {url} --dag app.flows:pipeline",
        )
        report.add_argument("run", help="the run's pipeline id")
        report.add_argument(
            "-o", "--output", default="run.html", help="file to write (default: %(default)s)"
        )
        report.add_argument(
            "--dag",
            metavar="MODULE:NAME",
            help="a pipeline (or DAG) to draw, e.g. myapp.flows:pipeline, imported (default: "
            "the graph between the steps the run's record keeps)",
        )
        report.set_defaults(runs_command="report")
        explain = add(
            place,
            "explain",
            "why a run's step waits",
            f"taskiq-flow explain RUN --redis {url}",
            f"taskiq-flow runs explain RUN 'map(resize)' --redis {url}",
        )
        explain.add_argument("run", help="the run's pipeline id")
        explain.add_argument("step", nargs="?", help="a step name (default: every unfinished step)")
        explain.set_defaults(runs_command="explain")
    return runs


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    moment = _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def run_to_json(status: PipelineStatus, steps: bool = True) -> dict[str, Any]:
    """A run as JSON-serializable data: the record's fields, ``duration_ms``, and (with
    ``steps``) every step's fields; without, ``steps`` is the number of steps."""
    data = dataclasses.asdict(status)
    data["duration_ms"] = status.duration_ms
    if not steps:
        data["steps"] = len(status.steps)
        data["steps_done"] = sum(1 for s in status.steps if s.status == "done")
    return data


def _started(epoch: float | None, short: bool) -> str:
    if epoch is None or not short:
        return _when(epoch)
    return _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc).strftime("%m-%d %H:%M")


#: Columns between two of the runs table: a blank divider and one blank of padding.
_GAP = 2


def runs_table(records: Sequence[PipelineStatus], width: int = COLUMNS) -> Table:
    """The table of ``runs list``, fitted to ``width`` columns. The run id, which every other
    command takes, is always shown whole on one line: at narrow widths the other columns give way
    first (the error, then the time taken, then the start time, shortened then dropped, then the
    name, then the step count). Names and errors are shown as text, never as markup.

    :param width: the terminal's width in columns.
    """
    ids = [r.pipeline_id for r in records]
    names = [r.name for r in records]
    statuses: list[str] = [r.status for r in records]
    steps = [f"{sum(1 for s in r.steps if s.status == 'done')}/{len(r.steps)}" for r in records]
    tooks = [duration_ms(r.duration_ms) for r in records]
    errors = [(r.error or "").splitlines()[0] if r.error else "" for r in records]

    def widest(header: str, cells: list[str], cap: int | None = None) -> int:
        most = max([len(header), *(len(c) for c in cells)])
        return most if cap is None else min(most, max(cap, len(header)))

    # key: (header, the width it needs at least, the width it can use); in the order shown.
    columns: dict[str, tuple[str, int, int]] = {
        "id": ("run id", widest("run id", ids), widest("run id", ids)),
        "name": ("name", widest("name", names, 10), widest("name", names)),
        "status": ("status", widest("status", statuses), widest("status", statuses)),
        "steps": ("steps", widest("steps", steps), widest("steps", steps)),
        "started": ("started UTC", 19, 19),
        "took": ("took", widest("took", tooks), widest("took", tooks)),
    }
    if any(errors):
        columns["error"] = ("error", widest("error", errors, 16), widest("error", errors))
    # What gives way first, in order; "short" shortens the start time to 11 columns.
    give_way = ["error", "took", "short", "started", "name", "steps", "status"]
    shown = list(columns)
    short = False

    def needed() -> int:
        least = [11 if k == "started" and short else columns[k][1] for k in shown]
        return sum(least) + _GAP * (len(shown) - 1)

    for what in give_way:
        if needed() <= width:
            break
        if what == "short":
            short = "started" in shown
        elif what in shown:
            shown.remove(what)
    # What is left widens the name and the error alike, each up to what it holds.
    widths = {k: 11 if k == "started" and short else columns[k][1] for k in shown}
    spare = max(0, width - needed())
    while spare > 0:
        growing = [k for k in ("name", "error") if k in shown and widths[k] < columns[k][2]]
        if not growing:
            break
        for grown in growing[:spare]:
            widths[grown] += 1
            spare -= 1
    table = Table(
        title=f"{len(records)} run{'s' if len(records) != 1 else ''}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        expand=False,
    )
    for key in shown:
        table.add_column(
            columns[key][0],
            no_wrap=True,
            overflow="fold" if key == "id" else "ellipsis",
            min_width=widths[key] if key in ("id", "name", "error") else None,
            max_width=widths[key],
            justify="right" if key in ("steps", "took") else "left",
        )
    for i, r in enumerate(records):
        cells = {
            "id": Text(ids[i]),
            "name": Text(names[i]),
            "status": Text(statuses[i]),
            "steps": Text(steps[i]),
            "started": Text(_started(r.started_at, short)),
            "took": Text(tooks[i]),
            "error": Text(errors[i]) if "error" in columns else Text(""),
        }
        table.add_row(*(cells[k] for k in shown))
    return table


def steps_table(status: PipelineStatus) -> Table:
    """The table of ``runs show``: one row per step (a mapped step is one row with its count);
    an error column only if some step has an error."""
    times = len(status.resumes)
    resumed = f" · resumed {times} time{'s' if times > 1 else ''}" if times else ""
    table = Table(
        title=Text(f"{status.name} · {status.pipeline_id} · {status.status}{resumed}"),
        expand=False,
    )
    table.add_column("step", overflow="fold", ratio=1, min_width=10)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    errors = any(s.error for s in status.steps)
    if errors:
        table.add_column("error", overflow="ellipsis", max_width=50)
    for s in status.steps:
        cells: list[Text | str] = [
            Text(s.name),
            Text(s.status),
            s.counts_text() if s.tasks > 1 else f"{s.tasks_done}/{s.tasks}",
            str(s.attempts),
            duration_ms(s.duration_ms),
        ]
        if errors:
            cells.append(Text(s.error.splitlines()[0] if s.error else ""))
        table.add_row(*cells)
    return table


def explain_line(status: PipelineStatus, step: str | None = None) -> str:
    """One sentence on why a run (or one of its steps) is where it is: for a live run, what it
    last recorded from the core's reasons (at most a second old); for a finished step, how it
    ended; for a run, its unfinished steps.

    :raises UnknownIdError: if the run has no step of that name.
    """
    if step is not None:
        matches = [s for s in status.steps if s.name == step]
        if not matches:
            raise UnknownIdError(f"run {status.pipeline_id!r} has no step named {step!r}")
        s = matches[0]
        if s.status in ("done", "failed", "skipped", "cancelled"):
            extra = f": {s.error.splitlines()[0]}" if s.error and s.status == "failed" else ""
            waited = _waited(s)
            return f"step {s.name!r} is {s.status} ({s.counts_text()}){extra}{waited}"
        if s.waiting is not None and status.status == "running":
            return f"step {s.name!r}: {s.waiting}"
        return (
            f"step {s.name!r} is {s.status} ({s.counts_text()}); "
            f"its run is {status.status}, so nothing explains it now"
        )
    if status.status != "running":
        return f"run {status.pipeline_id!r} is {status.status}; nothing waits"
    open_steps = [s for s in status.steps if s.status in ("pending", "running", "retrying")]
    said = [f"{s.name!r}: {s.waiting}" for s in open_steps if s.waiting is not None]
    shown = "; ".join(said[:5]) + (f"; and {len(said) - 5} more" if len(said) > 5 else "")
    return f"run {status.pipeline_id!r} is running with {len(open_steps)} unfinished step(s)" + (
        f" — {shown}" if shown else ""
    )


def _waited(step: StepStatus) -> str:
    """``; its tasks waited 1.2 s for step_cap, 100.0 ms for ready`` from what tracking recorded,
    or nothing."""
    parts = [f"{duration(s)} for {reason}" for reason, s in step.waited.items() if s]
    return f"; its tasks waited {', '.join(parts)}" if parts else ""


def load_graph(path: str) -> GraphView:
    """Imports ``module:name``, from the current directory first (as ``runs resume --pipeline``
    and ``taskiq worker`` do): a pipeline (its ``dag``) or a graph with nodes and edges.

    :raises InvalidValueError: for a malformed path, a module that cannot be imported, a missing
        name, or an object that is neither.
    """
    obj = import_object(path, "--dag")
    graph = getattr(obj, "dag", obj)
    if not all(hasattr(graph, a) for a in ("nodes", "sources", "targets")):
        raise InvalidValueError(
            f"--dag {path}: a {type(obj).__name__}, neither a pipeline nor a DAG"
        )
    view: GraphView = graph
    return view


def load_broker(path: str) -> Any:
    """Imports ``module:name`` (from the current directory first, as ``--dag`` is): a taskiq
    broker.

    :raises InvalidValueError: for a malformed path, a module that cannot be imported, a missing
        name, or an object that is not a taskiq broker.
    """
    from taskiq import AsyncBroker

    obj = import_object(path, "--broker")
    if not isinstance(obj, AsyncBroker):
        raise InvalidValueError(f"--broker {path}: a {type(obj).__name__}, not a taskiq broker")
    return obj


def _check(args: argparse.Namespace, tracking: PipelineTrackingManager | None) -> str | None:
    """What is wrong with the input, before any connection; ``None`` if nothing."""
    if tracking is None and args.redis is None:
        return (
            "runs are kept in memory by the process that ran them; "
            "give --redis URL to read runs tracked in Redis"
        )
    if args.redis is not None and not _URL.match(args.redis):
        return f"--redis must be a redis://, rediss:// or unix:// URL, got {args.redis!r}"
    if args.redis is not None:
        from redis import connection

        parse_url = cast("Callable[[str], object]", connection.parse_url)  # untyped in redis-py
        try:  # what Redis.from_url would raise once connecting
            parse_url(args.redis)
        except ValueError as err:
            return f"--redis {args.redis}: {err}"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", args.prefix or ""):
        return f"--prefix may hold only letters, digits and _ . - (got {args.prefix!r})"
    if getattr(args, "dag", None) is not None and check_import_path(args.dag, "--dag"):
        return check_import_path(args.dag, "--dag")
    if getattr(args, "broker", None) is not None and check_import_path(args.broker, "--broker"):
        return check_import_path(args.broker, "--broker")
    for what, value in (("dead letter id", getattr(args, "id", None)),):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", value):
            return f"{what} may hold only letters, digits and _ . - (got {value!r})"
    if getattr(args, "output", None) is not None:
        return writable_file(args.output, "--output")
    return None


def _who(args: argparse.Namespace) -> str:
    """The command the user typed, as error lines name it (``runs``, or the top-level
    ``report``/``explain``)."""
    return f"taskiq-flow {getattr(args, 'command', None) or 'runs'}"


async def main_runs(
    args: argparse.Namespace,
    tracking: PipelineTrackingManager | None = None,
    out: IO[str] | None = None,
    dead_letters: DeadLetterStore | None = None,
) -> int:
    """Runs one ``runs`` action parsed by :func:`add_runs_commands`; returns the exit code.

    :param tracking: the tracking to read (default: Redis storage from ``--redis``/``--prefix``).
    :param out: where output goes (default: standard output); errors are one line on stderr.
    :param dead_letters: the dead letters to read (default: in Redis from ``--redis``/
        ``--prefix``; with ``tracking`` given, the process-wide queue).
    """
    stream = out if out is not None else sys.stdout
    console = Console(file=stream, soft_wrap=False, highlight=False)
    problem = _check(args, tracking)
    if problem is not None:
        print(f"{_who(args)}: {problem}", file=sys.stderr)
        return 2
    if args.runs_command == "resume":
        from taskiq_flow.cli.resume import resume

        return await asyncio.to_thread(
            resume,
            args.redis,
            args.prefix,
            args.run,
            args.pipeline,
            args.input,
            args.inputs_changed_ok,
            args.timeout,
        )
    graph: GraphView | None = None
    if args.runs_command == "report" and args.dag is not None:
        try:  # the user's module, imported before any connection is made
            graph = load_graph(args.dag)
        except InvalidValueError as err:
            print(f"{_who(args)}: {err}", file=sys.stderr)
            return 2
    broker: Any = None
    if args.runs_command == "replay":
        try:  # the user's module, imported before any connection is made
            broker = load_broker(args.broker)
        except InvalidValueError as err:
            print(f"{_who(args)}: {err}", file=sys.stderr)
            return 2
    client: Any = None
    if tracking is None:
        from taskiq_flow.distributed import RedisPipelineStorage
        from taskiq_flow.distributed.deadletters import RedisDeadLetterQueue

        client = redis_client(args.redis, args.timeout)
        tracking = PipelineTrackingManager(RedisPipelineStorage(client, prefix=args.prefix))
        if dead_letters is None:
            dead_letters = RedisDeadLetterQueue(client, prefix=args.prefix)
    if dead_letters is None:
        dead_letters = default_dead_letters()
    body = _act(args, tracking, console, stream, graph, dead_letters, broker)
    try:
        stopped_by, code = await _until_signal(body, client)
        if stopped_by is not None:
            print(f"{_who(args)}: interrupted", file=sys.stderr)
            return 128 + stopped_by
        return code
    except (UnknownIdError, InvalidValueError, CorruptRecordError) as err:
        kind = f"{type(err).__name__}: " if isinstance(err, CorruptRecordError) else ""
        print(f"{_who(args)}: {kind}{err}", file=sys.stderr)
        return 2 if isinstance(err, InvalidValueError) else 1
    except (OSError, ConnectionError) as err:
        print(f"{_who(args)}: cannot reach {args.redis}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        from redis.exceptions import RedisError, TimeoutError

        if isinstance(err, TimeoutError):
            print(
                f"{_who(args)}: Redis at {args.redis} did not answer within "
                f"{args.timeout:g} s (--timeout)",
                file=sys.stderr,
            )
            return 1
        if isinstance(err, RedisError):
            print(f"{_who(args)}: Redis at {args.redis}: {err}", file=sys.stderr)
            return 1
        raise
    finally:
        if client is not None:
            await client.aclose()


async def _until_signal(body: Coroutine[Any, Any, int], client: Any) -> tuple[int | None, int]:
    """Runs ``body`` until it ends or SIGINT/SIGTERM arrives: ``(None, its result)``, or
    ``(signal number, 0)``. On a signal the body is cancelled and the Redis client's connections
    are closed, so that even a read that absorbed the cancellation (redis-py on Python 3.11 can,
    as its socket timeout fires) ends at once instead of waiting out ``--timeout``."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(body)
    received: list[int] = []
    stopped = asyncio.Event()

    def stop(sig: int) -> None:
        received.append(sig)
        stopped.set()

    if threading.current_thread() is not threading.main_thread():
        return None, await task  # signals reach the main thread only: the caller handles them
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    waiter = loop.create_task(stopped.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        waiter.cancel()
    if task.done():
        return None, task.result()
    task.cancel()
    if client is not None:
        await client.connection_pool.disconnect()
    await asyncio.wait({task}, timeout=5)
    # However it ended (cancelled, or a read cut by the closed connection), that was our doing.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return received[0], 0


#: Seconds ``runs cancel`` waits for the run's orchestrator to record its end.
CANCEL_WAIT = 10.0


async def _cancel(
    args: argparse.Namespace,
    tracking: PipelineTrackingManager,
    console: Console,
    stream: IO[str],
) -> int:
    """Publishes a cancel signal for a live run (its orchestrator cancels it and cuts its running
    attempts) and waits for the run's recorded end."""
    status = await tracking.get_status(args.run)
    said: dict[str, Any] = {"run": args.run}
    if status.status == "abandoned":
        said.update(cancelled=False, status=status.status)
        line = (
            f"run {args.run} is abandoned (its orchestrator is gone): nothing runs it to "
            "cancel; `taskiq-flow runs resume` would continue it"
        )
    elif status.status != "running":
        said.update(cancelled=False, status=status.status)
        line = f"run {args.run} already ended ({status.status}): nothing to cancel"
    else:
        received = await send_cancel(tracking, args.run)
        pause = Backoff(0.01, 0.2)
        deadline = time.monotonic() + CANCEL_WAIT
        while status.status == "running" and time.monotonic() < deadline:
            await pause.sleep()
            status = await tracking.get_status(args.run)
        said.update(cancelled=status.status == "cancelled", status=status.status)
        if status.status == "cancelled":
            line = f"cancelled {args.run}: {status.error or 'done'}"
        elif status.status == "running":
            line = (
                f"run {args.run} is {status.status}: the cancel signal reached {received} "
                f"process(es) but no orchestrator recorded its end within {CANCEL_WAIT:g} s"
            )
        else:
            line = f"run {args.run} ended {status.status} before the cancel reached it"
    if args.json:
        json.dump(said, stream)
        stream.write("\n")
    else:
        console.print(Text(line))
    return 0 if said["cancelled"] else 1


def dead_letters_table(
    records: Sequence[DeadLetter], width: int = COLUMNS, run: str | None = None
) -> Table:
    """The table of ``runs dead-letters``, fitted to ``width`` columns: id, run, step, task,
    attempts, the error's first line and when it failed (UTC). The id, which ``runs replay``
    takes, is always whole on one line; at narrow widths the others give way first (the run,
    then the task, then the time shortened, then the attempts, then the time). Every value is
    shown as text, never as markup.

    :param width: the terminal's width in columns.
    :param run: the run they were listed for (its column is left out: it says the same on every
        row).
    """
    cells = {
        "id": [r.id for r in records],
        "run": [r.pipeline_id for r in records],
        "step": [r.step for r in records],
        "task": [r.task_name for r in records],
        "attempts": [str(r.attempts) for r in records],
        "error": [r.error.splitlines()[0] if r.error else "" for r in records],
        "failed": [_when(r.failed_at) for r in records],
    }
    headers = {
        "id": "id",
        "run": "run",
        "step": "step",
        "task": "task",
        "attempts": "attempts",
        "error": "error",
        "failed": "failed at UTC",
    }
    # key: (the width it needs at least, the width it can use)
    caps = {"run": 12, "step": 10, "task": 10, "error": 16}
    sizes: dict[str, tuple[int, int]] = {}
    for key, column in cells.items():
        most = max([len(headers[key]), *(len(c) for c in column)])
        least = min(most, max(caps[key], len(headers[key]))) if key in caps else most
        sizes[key] = (least, most)
    shown = [k for k in cells if not (k == "run" and run is not None)]
    short = False

    def needed() -> int:
        least = [11 if k == "failed" and short else sizes[k][0] for k in shown]
        return sum(least) + _GAP * (len(shown) - 1)

    for what in ("run", "task", "short", "attempts", "failed", "step", "error"):
        if needed() <= width:
            break
        if what == "short":
            short = "failed" in shown
        elif what in shown:
            shown.remove(what)
    widths = {k: 11 if k == "failed" and short else sizes[k][0] for k in shown}
    spare = max(0, width - needed())
    for key in ("error", "step", "task", "run"):  # what is left widens these, in this order
        if key in shown:
            grown = min(spare, sizes[key][1] - widths[key])
            widths[key] += grown
            spare -= grown
    table = Table(
        title=f"{len(records)} dead letter{'s' if len(records) != 1 else ''}"
        + (f" of run {run}" if run is not None else ""),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        expand=False,
    )
    if short:
        headers["failed"] = "failed UTC"
    for key in shown:
        table.add_column(
            headers[key],
            no_wrap=True,
            overflow="fold" if key == "id" else "ellipsis",
            min_width=widths[key],
            max_width=widths[key],
            justify="right" if key == "attempts" else "left",
        )
    for i, r in enumerate(records):
        row = {k: Text(cells[k][i]) for k in cells}
        if short:
            row["failed"] = Text(_started(r.failed_at, True))
        table.add_row(*(row[k] for k in shown))
    return table


async def _dead_letters(
    args: argparse.Namespace, store: DeadLetterStore, console: Console, stream: IO[str]
) -> int:
    """``runs dead-letters``: the table (or JSON); a record that cannot be read back is one line
    on stderr naming its key (exit 1), the others still listed."""
    corrupt: list[CorruptRecordError] = []
    records = await store.alist(args.run, corrupt=corrupt)
    if args.json:
        json.dump([r.to_json() for r in records], stream, indent=2)
        stream.write("\n")
    else:
        console.print(dead_letters_table(records, console.width, args.run))
    for problem in corrupt:
        print(f"{_who(args)}: CorruptRecordError: {problem}", file=sys.stderr)
    return 1 if corrupt else 0


async def _replay(
    args: argparse.Namespace, store: DeadLetterStore, broker: Any, console: Console, stream: IO[str]
) -> int:
    """``runs replay``: the record is read (and its task looked up in the broker) before
    anything is sent; success prints the value and removes the record, a failure keeps it."""
    record = await store.aget(args.id)
    if broker.find_task(record.task_name) is None:
        raise UnknownIdError(
            f"dead letter {args.id}: --broker {args.broker} has no task named "
            f"{record.task_name!r} (give the broker of the application that ran it)"
        )
    # The run's own warning that the step failed would repeat the one line said below.
    runner_log = logging.getLogger("taskiq_flow.run.runner")
    level = runner_log.level
    runner_log.setLevel(logging.ERROR)
    await broker.startup()
    try:
        value = await replay_dead_letter(store, args.id, broker, timeout=args.run_timeout)
    except PipelineError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        print(
            f"{_who(args)}: replay of dead letter {args.id} (step {record.step!r}) failed "
            f"again, the record is kept: {first}",
            file=sys.stderr,
        )
        return 1
    finally:
        runner_log.setLevel(level)
        await broker.shutdown()
    if args.json:
        json.dump({"id": args.id, "replayed": True, "value": value}, stream, default=repr)
        stream.write("\n")
    else:  # as it is, never wrapped to the terminal
        stream.write(json.dumps(value, default=repr) + "\n")
    return 0


async def _act(
    args: argparse.Namespace,
    tracking: PipelineTrackingManager,
    console: Console,
    stream: IO[str],
    graph: GraphView | None = None,
    dead_letters: DeadLetterStore | None = None,
    broker: Any = None,
) -> int:
    action = args.runs_command
    store = dead_letters if dead_letters is not None else default_dead_letters()
    if action == "dead-letters":
        return await _dead_letters(args, store, console, stream)
    if action == "replay":
        return await _replay(args, store, broker, console, stream)
    if action == "list":
        records = await tracking.list_pipelines(args.status)
        if args.limit is not None:
            records = records[-args.limit :]
        if args.json:
            json.dump([run_to_json(r, steps=False) for r in records], stream, indent=2)
            stream.write("\n")
        else:
            console.print(runs_table(records, console.width))
        return 0
    if action == "show":
        status = await tracking.get_status(args.run)
        if args.json:
            json.dump(run_to_json(status), stream, indent=2)
            stream.write("\n")
        else:
            console.print(steps_table(status))
            if status.error:
                console.print(Text(f"error: {status.error}"))
        return 0
    if action == "delete":
        deleted: list[str] = []
        missing: list[str] = []
        delete_run = getattr(store, "delete_run", None)
        for run in args.runs:
            letters = await delete_run(run) if delete_run is not None else 0
            found = await tracking.delete_pipeline(run)
            (deleted if found or letters else missing).append(run)
        if args.json:
            json.dump({"deleted": deleted, "missing": missing}, stream, indent=2)
            stream.write("\n")
        else:
            for run in deleted:
                console.print(Text(f"deleted {run}"))
            for run in missing:
                console.print(Text(f"no run {run}"))
        return 1 if missing else 0
    if action == "cancel":
        return await _cancel(args, tracking, console, stream)
    if action == "report":
        status = await tracking.get_status(args.run)
        try:
            # Without --dag, the graph between the steps the run's record keeps.
            dag = graph if graph is not None else recorded_graph(status)
            path = write_report(args.output, status, dag=dag)
        except OSError as err:  # a full disk, a file that went away: not Redis's doing
            print(f"{_who(args)}: --output {args.output}: {err.strerror or err}", file=sys.stderr)
            return 1
        size = path.stat().st_size
        if args.json:
            json.dump({"path": str(path), "bytes": size, "steps": len(status.steps)}, stream)
            stream.write("\n")
        else:
            console.print(Text(f"wrote {path} ({len(status.steps)} steps, {size:,} bytes)"))
        return 0
    if action == "explain":
        status = await tracking.get_status(args.run)
        line = explain_line(status, args.step)
        if args.json:
            json.dump({"run": status.pipeline_id, "step": args.step, "explain": line}, stream)
            stream.write("\n")
        else:
            console.print(Text(line))
        return 0
    raise InvalidValueError(f"unknown runs action {action!r}")  # pragma: no cover - argparse
