"""Orchestrators: taskiq-flow against Dask and Ray on the same three workloads, per task.

``taskiq-flow bench --group orchestrators`` (``--full``: three fresh runs each, the median and the
spread). The peers come with ``pip install 'taskiq-flow[peers]'``; any that is missing is left out
(the command says which), ours always run.

The workloads (every task a no-op on small ints; every answer checked):

- ``layered N``: a DAG of ``N`` tasks in 32 layers, each task past the first layer fed by 1-4
  random tasks of the layer before (seeded, the same graph for everyone); a task returns one more
  than the largest of its inputs, so every value must equal its layer's number, plus one;
- ``map N``: ``N`` items doubled, at most 16 in flight, then one task that sums them all
  (``N + 1`` tasks);
- ``chain N``: ``N`` dependent steps, each adding one to the previous step's value.

The contenders, each in a fresh process: started, warmed up on each workload at a tenth of its
size, then timed (building the graph, running it, getting the values back; a workload that takes
less than a second is timed again, up to 5 times in all, and the best kept). ``--full`` runs 3 such
processes per contender and reports the median and the spread:

- in process: ``taskiq-flow`` (``InMemoryBroker``; ``DataflowPipeline`` for the DAG and the chain,
  ``MapReduce.map`` with ``max_parallel=16`` and one reduce task), against ``dask threaded``
  (``dask.threaded.get`` on a task-graph dict: the fastest way into Dask's local scheduler,
  without ``dask.delayed``'s tokenizing; its default pool of one thread per CPU, at most 16);
- two worker processes: ``taskiq-flow redis`` (the same calls on taskiq-redis: a reliable stream
  broker, completions through Redis streams, 2 ``taskiq worker`` processes and a ``redis-server``
  on 127.0.0.1 started for the run; its fastest configuration has ``orjson`` and ``hiredis``
  installed, which it uses when present), against ``ray`` (``ray.init(num_cpus=2)``: 2 worker
  processes; ``@ray.remote`` functions chained by object references and submitted all at once,
  one ``ray.get`` for the values; dashboard off) and ``dask distributed`` (``LocalCluster`` of 2
  worker processes with one thread each, the whole graph sent in one ``Client.get``).

"At most 16 in flight" is ``max_parallel=16`` for ours; a peer's executor runs at most as many
tasks at once as it has slots (2 here, at most 16), which is how Dask and Ray bound concurrency.
A ratio is the peer's time divided by ours in the same section: above 1, taskiq-flow is faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskiq import AsyncBroker

__all__ = [
    "CONTENDERS",
    "Contender",
    "Outcome",
    "Spec",
    "available",
    "check",
    "layered_parents",
    "register_tasks",
    "report",
    "run_orchestrators",
    "specs",
]

#: Layers of the layered DAG.
LAYERS = 32
#: Most tasks of the map in flight at once.
MAP_CAP = 16
#: The layered DAG's random seed (the same graph in every process).
SEED = 20
#: In a contender's process, a workload is timed again while its timings add up to less than
#: this many seconds, at most :data:`MAX_REPEATS` times; the best timing is the process's.
REPEAT_UNDER = 1.0
MAX_REPEATS = 5


@dataclass(frozen=True)
class Spec:
    """One workload at one size."""

    kind: str  # "layered", "map" or "chain"
    n: int

    @property
    def name(self) -> str:
        """Its name in the tables."""
        return f"{self.kind} {self.n:,}"

    @property
    def tasks(self) -> int:
        """How many tasks it runs (the map's reduce included)."""
        return self.n + 1 if self.kind == "map" else self.n


def specs(scale: float = 1.0) -> list[Spec]:
    """The workloads of a run; ``scale`` multiplies their sizes (with a floor that keeps their
    shape: at least two nodes a layer, a map wider than its cap)."""

    def size(n: int, least: int) -> int:
        return max(least, int(n * scale))

    return [
        Spec("layered", size(1_000, 2 * LAYERS)),
        Spec("layered", size(10_000, 2 * LAYERS)),
        Spec("map", size(10_000, 2 * MAP_CAP)),
        Spec("chain", size(1_000, 4)),
    ]


# --------------------------------------------------------------------------------------------------
# The workloads: their graph, their tasks, their answers
# --------------------------------------------------------------------------------------------------


def layered_parents(n: int, layers: int = LAYERS, seed: int = SEED) -> list[tuple[int, ...]]:
    """The layered DAG: ``parents[v]`` for nodes numbered layer by layer (the first layers one
    node wider when ``layers`` does not divide ``n``); 1-4 distinct parents in the layer before."""
    rnd = random.Random(seed)
    sizes = [n // layers + (1 if i < n % layers else 0) for i in range(layers)]
    parents: list[tuple[int, ...]] = []
    start = 0
    previous: range | None = None
    for width in sizes:
        for _ in range(width):
            if previous is None:
                parents.append(())
            else:
                k = min(rnd.randint(1, 4), len(previous))
                parents.append(tuple(sorted(rnd.sample(previous, k))))
        previous = range(start, start + width)
        start += width
    return parents


def layer_value(*parents: int) -> int:
    """A layered node: one more than the largest input (1 for a root)."""
    return 1 + max(parents, default=0)


def double(x: int) -> int:
    """A map item."""
    return 2 * x


def total(values: list[int]) -> int:
    """The map's one reduce."""
    return sum(values)


def add_up(*values: int) -> int:
    """The map's one reduce, its inputs as arguments (Ray resolves references in arguments)."""
    return sum(values)


def step(x: int) -> int:
    """A chain link."""
    return x + 1


def expected(spec: Spec) -> Any:
    """The right answer of ``spec``."""
    if spec.kind == "layered":
        depth: list[int] = []
        for ps in layered_parents(spec.n):
            depth.append(1 + max((depth[p] for p in ps), default=0))
        return depth
    if spec.kind == "map":
        return spec.n * (spec.n - 1)
    return spec.n


def check(spec: Spec, out: Any) -> bool:
    """Whether ``out`` is ``spec``'s right answer (every node's value of a DAG, the map's sum,
    the chain's last value)."""
    return bool(out == expected(spec))


@dataclass
class Tasks:
    """The workloads' tasks registered on one taskiq broker."""

    layer: Any
    double: Any
    total: Any
    step: Any


def register_tasks(broker: AsyncBroker) -> Tasks:
    """Registers the workloads' tasks on ``broker`` (``async def``: taskiq's fast path)."""

    @broker.task(task_name="bench_orch_layer")
    async def layer(a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
        return 1 + max(a, b, c, d)

    @broker.task(task_name="bench_orch_double")
    async def double_(x: int) -> int:
        return 2 * x

    @broker.task(task_name="bench_orch_total")
    async def total_(values: list[int]) -> int:
        return sum(values)

    @broker.task(task_name="bench_orch_step")
    async def step_(x: int) -> int:
        return x + 1

    return Tasks(layer, double_, total_, step_)


# --------------------------------------------------------------------------------------------------
# The contenders (each one lives in the child process that measures it)
# --------------------------------------------------------------------------------------------------


class _Ours:
    """taskiq-flow on a broker: in process, or over Redis with worker processes."""

    def __init__(self, redis: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.ExitStack()
        if redis:
            self._start_redis()
        else:
            from taskiq import InMemoryBroker

            self.broker: Any = InMemoryBroker()
            self.tasks = register_tasks(self.broker)
        self.loop.run_until_complete(self.broker.startup())
        if redis:
            self.loop.run_until_complete(self._wait_for_workers())

    def _start_redis(self) -> None:
        from taskiq_flow.bench import redis as redis_bench
        from taskiq_flow.testing import redis_server

        url = self.stack.enter_context(redis_server())
        queue = f"bench-orch-{uuid.uuid4().hex[:8]}"
        os.environ["TASKIQ_FLOW_BENCH_REDIS"] = url
        os.environ["TASKIQ_FLOW_BENCH_QUEUE"] = queue
        sys.modules.pop("taskiq_flow.bench.redis_app", None)
        app = importlib.import_module("taskiq_flow.bench.redis_app")
        proc = redis_bench._start_workers(url, queue, 2)
        self.stack.callback(redis_bench._stop, proc)
        self.broker = app.broker
        self.tasks = app.orchestrator_tasks

    async def _wait_for_workers(self) -> None:
        from taskiq_flow.run.runner import run_single

        deadline = time.monotonic() + 60
        while True:  # workers see only what is sent after their consumer group exists
            try:
                await run_single(self.broker, self.tasks.step.task_name, (0,), {}, timeout=2)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise

    def run(self, spec: Spec) -> Any:
        return self.loop.run_until_complete(self._run(spec))

    async def _run(self, spec: Spec) -> Any:
        from taskiq_flow import DataflowPipeline, MapReduce
        from taskiq_flow.run.runner import run_single

        t = self.tasks
        if spec.kind == "map":
            values = await MapReduce.map(self.broker, t.double, range(spec.n), MAP_CAP)
            return await run_single(self.broker, t.total.task_name, (values,), {})
        pipeline = DataflowPipeline(self.broker)
        if spec.kind == "layered":
            for v, ps in enumerate(layered_parents(spec.n)):
                inputs = {p: f"v{s}" for p, s in zip("abcd", ps)} if ps else {"a": "seed"}
                pipeline.add_dataflow_task(t.layer, output=f"v{v}", inputs=inputs)
            out = await pipeline.kiq_dataflow(seed=0)
            return [out[f"v{v}"] for v in range(spec.n)]
        for v in range(spec.n):
            pipeline.add_dataflow_task(
                t.step, output=f"v{v}", inputs={"x": f"v{v - 1}" if v else "seed"}
            )
        out = await pipeline.kiq_dataflow(seed=0)
        return out[f"v{spec.n - 1}"]

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.broker.shutdown())
            # As asyncio.run ends: what a run's clean-up still has in flight is cancelled.
            self.loop.run_until_complete(_cancel_the_rest())
            self.loop.close()
        finally:
            self.stack.close()


async def _cancel_the_rest() -> None:
    """Cancels every other task of the running loop and waits for them."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _graph(spec: Spec) -> tuple[dict[Any, Any], Any]:
    """``spec`` as a Dask task graph (a dict of tuples) and the key(s) to compute."""
    if spec.kind == "layered":
        layered = {
            ("n", v): (layer_value, *(("n", p) for p in ps))
            for v, ps in enumerate(layered_parents(spec.n))
        }
        return layered, [("n", v) for v in range(spec.n)]
    if spec.kind == "map":
        mapped: dict[Any, Any] = {("m", i): (double, i) for i in range(spec.n)}
        mapped["total"] = (total, [("m", i) for i in range(spec.n)])
        return mapped, "total"
    chain: dict[Any, Any] = {("c", 0): (step, 0)}
    for i in range(1, spec.n):
        chain[("c", i)] = (step, ("c", i - 1))
    return chain, ("c", spec.n - 1)


class _DaskThreaded:
    """Dask's local threaded scheduler on a raw task graph."""

    def __init__(self) -> None:
        self.threaded = importlib.import_module("dask.threaded")

    def run(self, spec: Spec) -> Any:
        graph, keys = _graph(spec)
        out = self.threaded.get(graph, keys)
        return list(out) if isinstance(keys, list) else out

    def close(self) -> None:
        pass


class _DaskDistributed:
    """dask.distributed: a LocalCluster of 2 worker processes, one thread each."""

    def __init__(self) -> None:
        distributed = importlib.import_module("distributed")
        self.cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = distributed.Client(self.cluster)

    def run(self, spec: Spec) -> Any:
        graph, keys = _graph(spec)
        out = self.client.get(graph, keys)
        return list(out) if isinstance(keys, list) else out

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class _Ray:
    """Ray on this machine: ``ray.init(num_cpus=2)``, 2 worker processes."""

    def __init__(self) -> None:
        self.ray = importlib.import_module("ray")
        self.ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        remote = self.ray.remote
        self.layer = remote(layer_value)
        self.double = remote(double)
        self.step = remote(step)
        self.reduce = remote(add_up)

    def run(self, spec: Spec) -> Any:
        ray = self.ray
        if spec.kind == "layered":
            refs: list[Any] = []
            for ps in layered_parents(spec.n):
                refs.append(self.layer.remote(*(refs[p] for p in ps)))
            return ray.get(refs)
        if spec.kind == "map":
            return ray.get(self.reduce.remote(*(self.double.remote(i) for i in range(spec.n))))
        ref = self.step.remote(0)
        for _ in range(spec.n - 1):
            ref = self.step.remote(ref)
        return ray.get(ref)

    def close(self) -> None:
        self.ray.shutdown()


@dataclass(frozen=True)
class Contender:
    """A contender: its name in the tables, its section, what it needs, how it is made."""

    name: str
    section: str
    needs: tuple[str, ...]
    make: Callable[[], Any]
    ours: bool = False


IN_PROCESS = "in process"
TWO_WORKERS = "2 worker processes"

#: Every contender by name, ours first in each section (the section's reference).
CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("taskiq-flow", IN_PROCESS, (), lambda: _Ours(redis=False), ours=True),
        Contender("dask threaded", IN_PROCESS, ("dask",), _DaskThreaded),
        Contender(
            "taskiq-flow redis",
            TWO_WORKERS,
            ("taskiq_redis", "redis-server"),
            lambda: _Ours(redis=True),
            ours=True,
        ),
        Contender("ray", TWO_WORKERS, ("ray",), _Ray),
        Contender("dask distributed", TWO_WORKERS, ("dask", "distributed"), _DaskDistributed),
    )
}


def available(contender: Contender) -> str | None:
    """``None`` if ``contender`` can run here, else what it lacks and how to get it."""
    import shutil

    extra = "redis" if contender.ours else "peers"
    for need in contender.needs:
        if need == "redis-server":
            if shutil.which("redis-server") is None:
                return "redis-server is not installed (Debian: apt-get install redis-server)"
        elif importlib.util.find_spec(need) is None:
            return f"{need} is not installed (pip install 'taskiq-flow[{extra}]')"
    return None


def _measure(name: str, todo: list[Spec]) -> None:
    """The child process: makes the contender, warms it up on each workload at a tenth of its
    size, times it (the best of several timings under a second), and prints one JSON line per
    workload."""
    contender = CONTENDERS[name].make()
    try:
        for spec in todo:
            warm = Spec(spec.kind, max(min(spec.n, 2 * LAYERS), spec.n // 10))
            if not check(warm, contender.run(warm)):
                raise AssertionError(f"{name} gave a wrong answer on {warm.name}")
            times: list[float] = []
            ok = True
            # Short workloads are timed again (the best kept) while they add up to under a
            # second: one timing of a 0.1 s run is at the mercy of a busy neighbour.
            while not times or (sum(times) < REPEAT_UNDER and len(times) < MAX_REPEATS):
                gc.collect()
                start = time.perf_counter()
                out = contender.run(spec)
                times.append(time.perf_counter() - start)
                ok = ok and check(spec, out)
                del out
            line = {"kind": spec.kind, "n": spec.n, "seconds": min(times), "ok": ok}
            print(json.dumps(line), flush=True)
    finally:
        contender.close()


# --------------------------------------------------------------------------------------------------
# The parent: fresh processes, medians, the tables
# --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Every contender's times on every workload, and the contenders that could not run."""

    times: dict[tuple[str, Spec], list[float]] = field(default_factory=dict)
    ok: dict[tuple[str, Spec], bool] = field(default_factory=dict)
    #: contender -> why it did not run (not installed) or did not finish (its error).
    missing: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    runs: int = 1
    versions: dict[str, str] = field(default_factory=dict)


def machine() -> str:
    """This machine in one line: CPU model, CPUs, memory (Linux's /proc; ``?`` elsewhere)."""
    model, memory = "?", "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as f:
        kib = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    return f"{model}, {os.cpu_count()} CPUs, {memory}, Python {sys.version.split()[0]}"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def run_orchestrators(
    runs: int = 1,
    scale: float = 1.0,
    only: Iterable[str] | None = None,
    say: Callable[[str], None] = lambda _text: None,
) -> Outcome:
    """Runs every available contender ``runs`` times, each time in a fresh process, in an order
    that rotates from run to run.

    :param only: these contenders only (default: all).
    :param say: told one line as each contender process finishes.
    """
    todo = specs(scale)
    outcome = Outcome(runs=runs)
    names = []
    for name in only if only is not None else CONTENDERS:
        lacking = available(CONTENDERS[name])
        if lacking is None:
            names.append(name)
        else:
            outcome.missing[name] = lacking
    for module in ("taskiq", "dask", "distributed", "ray"):
        if importlib.util.find_spec(module) is not None:
            outcome.versions[module] = _version(module)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)] if names else []:
            if name in outcome.failed:
                continue
            arg = json.dumps([[s.kind, s.n] for s in todo])
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "taskiq_flow.bench.orchestrators", name, arg],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
            for line in lines:
                key = (name, Spec(line["kind"], line["n"]))
                outcome.times.setdefault(key, []).append(line["seconds"])
                outcome.ok[key] = outcome.ok.get(key, True) and line["ok"]
            if proc.returncode != 0 or len(lines) != len(todo):
                last = [x for x in proc.stderr.strip().splitlines() if x.strip()]
                outcome.failed[name] = last[-1] if last else f"exit status {proc.returncode}"
            say(f"  run {run + 1}/{runs}: {name} ({time.perf_counter() - started:.0f} s)")
    return outcome


def results(outcome: Outcome) -> list[Any]:
    """The outcome as the bench's :class:`~taskiq_flow.bench.Result` rows (the median time of
    each contender; ``ratio`` the peer's over ours in the same section, ``None`` for ours)."""
    from taskiq_flow.bench import Result

    rows = []
    for (name, spec), times in outcome.times.items():
        contender = CONTENDERS[name]
        median = statistics.median(times)
        reference = next(
            (c.name for c in CONTENDERS.values() if c.ours and c.section == contender.section),
            name,
        )
        ours = outcome.times.get((reference, spec))
        ratio = None if contender.ours or not ours else median / statistics.median(ours)
        rows.append(
            Result(
                "orchestrators",
                spec.name,
                name,
                median,
                median / spec.tasks * 1e9,
                "task",
                outcome.ok[(name, spec)],
                ratio,
                f"{contender.section}; {len(times)} run(s), {_spread(times)} spread",
            )
        )
    return rows


def _spread(times: list[float]) -> str:
    """(slowest - fastest) / median, as a percentage; ``-`` for one run."""
    if len(times) < 2:
        return "-"
    return f"{(max(times) - min(times)) / statistics.median(times):.0%}"


def report(outcome: Outcome) -> str:
    """One table per section: per task, the median time, the spread and the ratio to ours."""
    from taskiq_flow.bench import _table

    todo = sorted({spec for _, spec in outcome.times}, key=lambda s: ("lmc".index(s.kind[0]), s.n))
    runs = f"median of {outcome.runs} fresh processes" if outcome.runs > 1 else "1 fresh process"
    out = [
        f"\norchestrators, time per task, {runs} per contender",
        f"  in a process: the best of up to {MAX_REPEATS} timings "
        f"while under {REPEAT_UNDER:g} s in all",
        "  spread: (slowest - fastest) / median; peer÷ours above 1: taskiq-flow faster",
        f"  map N: N items, at most {MAP_CAP} in flight, then one reduce (N + 1 tasks)",
    ]
    for section in (IN_PROCESS, TWO_WORKERS):
        names = [c.name for c in CONTENDERS.values() if c.section == section]
        ours = names[0]
        rows = [["workload", "contender", "per task", "spread", "peer÷ours", "ok"]]
        for spec in todo:
            for name in names:
                times = outcome.times.get((name, spec))
                if not times:
                    continue
                median = statistics.median(times) / spec.tasks * 1e6
                mine = outcome.times.get((ours, spec))
                ratio = (
                    "-"
                    if name == ours or not mine
                    else f"{statistics.median(times) / statistics.median(mine):.2f}x"
                )
                rows.append(
                    [
                        spec.name,
                        name,
                        f"{median:,.1f} us",
                        _spread(times),
                        ratio,
                        "yes" if outcome.ok[(name, spec)] else "NO",
                    ]
                )
        if len(rows) > 1:
            title = section + (" (ours over Redis)" if section == TWO_WORKERS else "")
            out.append(f"\n{title}:\n" + _table(rows, numeric=range(2, 5)))
    for name, why in outcome.missing.items():
        out.append(f"{name}: not run, {why}")
    for name, why in outcome.failed.items():
        out.append(f"{name}: did not finish: {why}")
    out.append("machine: " + machine())
    if outcome.versions:
        out.append("versions: " + ", ".join(f"{k} {v}" for k, v in outcome.versions.items()))
    return "\n".join(out)


def _child(argv: list[str]) -> int:
    name, todo = argv
    try:
        _measure(name, [Spec(kind, n) for kind, n in json.loads(todo)])
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    # Through the module's own name, so that the functions Dask and Ray ship to their workers
    # are found there by reference (not pickled by value from ``__main__``).
    from taskiq_flow.bench import orchestrators

    sys.exit(orchestrators._child(sys.argv[1:]))
