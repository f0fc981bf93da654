"""Benchmark workloads: each runs taskiq-flow's core and its peers on the same input.

A workload is a function returning a :class:`Workload`: named contenders (zero-argument callables
that do the measured work once, on fresh state) plus a check that each produced a correct answer.
The runner interleaves contenders and reports every peer's time as a ratio to ours.
"""

from __future__ import annotations

import asyncio
import functools
import graphlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from taskiq_flow import (
    CapacityLimiter,
    RateLimiter,
    ResourceAwareWorkerPool,
    TaskResources,
    TopologicalSorter,
)
from taskiq_flow.bench.peers import (
    BestFitScorer,
    FirstFitScanner,
    KahnSorter,
    NamedPool,
    NumpyBestFit,
    NumpyFirstFit,
    PythonTokenBucket,
    first_fit_decreasing,
    smallest_first,
)
from taskiq_flow.core import DagSorter, Placer

OURS = "taskiq_flow"

#: A contender: setup (untimed) returning the timed callable; the callable's result is checked.
Contender = Callable[[], Callable[[], Any]]


@dataclass
class Workload:
    """One measured job and the contenders that do it."""

    group: str
    name: str
    units: int
    unit_name: str
    contenders: dict[str, Contender]
    check: Callable[[Any], bool] = lambda _: True
    #: Says what a contender's answer was, where quality matters as well as time.
    describe: Callable[[Any], str] | None = None
    #: The contender every other one is compared with.
    reference: str = OURS


def optional(module: str) -> Any:
    """Imports a peer library, or returns ``None`` when it is not installed."""
    try:
        return __import__(module)
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------------


@dataclass
class Edges:
    """A DAG as edge lists on ids ``0..n``, with predecessor lists for graphlib-style input."""

    n: int
    src: list[int]
    dst: list[int]

    def predecessors(self) -> list[list[int]]:
        preds: list[list[int]] = [[] for _ in range(self.n)]
        for s, d in zip(self.src, self.dst):
            preds[d].append(s)
        return preds


def make_graph(shape: str, n: int, seed: int = 7) -> Edges:
    """Builds a graph of ``n`` nodes: ``wide`` (one source, n-2 parallel nodes, one sink),
    ``chain``, ``layered`` (random, 4 predecessors per node from the previous layer) or
    ``reduce`` (a binary reduction tree: leaves first, every pair feeds its parent)."""
    src: list[int] = []
    dst: list[int] = []
    if shape == "wide":
        for v in range(1, n - 1):
            src += (0, v)
            dst += (v, n - 1)
    elif shape == "chain":
        src = list(range(n - 1))
        dst = list(range(1, n))
    elif shape == "layered":
        rnd = random.Random(seed)
        width = max(8, int(n**0.5))
        for v in range(width, n):
            layer_start = (v // width - 1) * width
            for p in rnd.sample(range(layer_start, layer_start + width), 4):
                src.append(p)
                dst.append(v)
    elif shape == "reduce":
        # Node i's parent is (i - 1) // 2; edges point from children to parents.
        src = list(range(n - 1, 0, -1))
        dst = [(c - 1) // 2 for c in src]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return Edges(n, src, dst)


def _respects(edges: Edges, order: Sequence[int]) -> bool:
    if len(order) != edges.n:
        return False
    position = [0] * edges.n
    for i, v in enumerate(order):
        position[v] = i
    return all(position[s] < position[d] for s, d in zip(edges.src, edges.dst))


def dag_build(shape: str, n: int) -> Workload:
    """Time to build and prepare the sorter from edge lists."""
    g = make_graph(shape, n)
    preds = g.predecessors()
    rx = optional("rustworkx")

    def ours() -> Callable[[], Any]:
        def run() -> Any:
            s = DagSorter(g.n)
            s.add_edges(g.src, g.dst)
            s.prepare()
            return s

        return run

    def stdlib() -> Callable[[], Any]:
        def run() -> Any:
            ts: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
            add = ts.add
            for v in range(g.n):
                add(v, *preds[v])
            ts.prepare()
            return ts

        return run

    def kahn() -> Callable[[], Any]:
        return lambda: KahnSorter(g.n, g.src, g.dst)

    contenders: dict[str, Contender] = {OURS: ours, "graphlib": stdlib, "python_kahn": kahn}
    if rx is not None:

        def rustworkx() -> Callable[[], Any]:
            pairs = list(zip(g.src, g.dst))

            def run() -> Any:
                graph = rx.PyDiGraph()
                graph.add_nodes_from(range(g.n))
                graph.add_edges_from_no_data(pairs)
                return rx.TopologicalSorter(graph)

            return run

        contenders["rustworkx"] = rustworkx
    return Workload("dag_build", f"{shape} n={n:,}", g.n, "node", contenders)


def _prepared_sorters(g: Edges) -> dict[str, Callable[[], Any]]:
    """Fresh, prepared sorters of every contender on ``g`` (setup, untimed)."""
    preds = g.predecessors()
    rx = optional("rustworkx")

    def ours() -> DagSorter:
        s = DagSorter(g.n)
        s.add_edges(g.src, g.dst)
        s.prepare()
        return s

    def stdlib() -> graphlib.TopologicalSorter[int]:
        ts: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
        for v in range(g.n):
            ts.add(v, *preds[v])
        ts.prepare()
        return ts

    makers: dict[str, Callable[[], Any]] = {
        OURS: ours,
        "graphlib": stdlib,
        "python_kahn": lambda: KahnSorter(g.n, g.src, g.dst),
    }
    if rx is not None:

        def rustworkx() -> Any:
            graph = rx.PyDiGraph()
            graph.add_nodes_from(range(g.n))
            graph.add_edges_from_no_data(list(zip(g.src, g.dst)))
            return rx.TopologicalSorter(graph)

        makers["rustworkx"] = rustworkx
    return makers


def _done_then_ready(ts: Any) -> list[Any]:
    """Runs a prepared graphlib-style sorter as its users do, one node at a time, depth first:
    ``done(node)`` then ``get_ready()``; returns the nodes in the order finished."""
    order: list[Any] = []
    stack = list(ts.get_ready())
    pop, extend, record = stack.pop, stack.extend, order.append
    done, get_ready = ts.done, ts.get_ready
    while stack:
        node = pop()
        record(node)
        done(node)
        extend(get_ready())
    return order


def _one_at_a_time(sorter: Any) -> Callable[[], list[int]]:
    """Finishes one node at a time and learns what it released: ``complete(node)`` where the
    sorter has it (ours, the Kahn sorter), else ``done(node)`` then ``get_ready()``."""
    complete = getattr(sorter, "complete", None)
    if complete is None:
        return lambda: _done_then_ready(sorter)

    def run() -> list[int]:
        order: list[int] = []
        stack = list(sorter.get_ready())
        pop, extend, record = stack.pop, stack.extend, order.append
        while stack:
            node = pop()
            record(node)
            extend(complete(node))
        return order

    return run


def _in_batches(name: str, sorter: Any) -> Callable[[], list[int]]:
    """Takes every ready node, marks them all done, repeats, each with its sorter's batch call."""

    def run() -> list[int]:
        order: list[int] = []
        if name == "python_kahn":
            ready, complete = sorter.get_ready(), sorter.complete
            while ready:
                order += ready
                ready = [s for v in ready for s in complete(v)]
            return order
        if name == "graphlib":
            done: Callable[[Any], Any] = lambda batch: sorter.done(*batch)  # noqa: E731
        else:
            done = sorter.done_many if name == OURS else sorter.done  # rustworkx takes a list
        while ready := sorter.get_ready():
            order += ready
            done(ready)
        return order

    return run


def _sorter_loop(
    group: str, unit: str, shape: str, n: int, drive: Callable[[str, Any], Callable[[], list[int]]]
) -> Workload:
    """Every sorter of :func:`_prepared_sorters`, prepared on a ``shape`` graph of ``n`` nodes and
    run by ``drive(name, sorter)``; the order it returns is checked against the graph."""
    g = make_graph(shape, n)
    contenders: dict[str, Contender] = {
        name: functools.partial(lambda name, make: drive(name, make()), name, make)
        for name, make in _prepared_sorters(g).items()
    }
    return Workload(
        group, f"{shape} n={n:,}", g.n, unit, contenders, lambda order: _respects(g, order)
    )


def dag_event_loop(shape: str, n: int) -> Workload:
    """One completion at a time, as an orchestrator sees them:
    finish a node, get what it released."""
    return _sorter_loop(
        "dag_event_loop", "completion", shape, n, lambda _name, sorter: _one_at_a_time(sorter)
    )


def dag_batch_loop(shape: str, n: int) -> Workload:
    """The batch loop: take every ready node, mark them all done, repeat."""
    return _sorter_loop("dag_batch_loop", "node", shape, n, _in_batches)


def dag_dropin(node_type: str, n: int) -> Workload:
    """The graphlib drop-in as its users drive it, on a layered graph (4 predecessors per node):
    build with ``add(node, *predecessors)``, ``prepare()``, then per completion ``done(node)`` and
    ``get_ready()``; ``int`` or ``str`` nodes. Timed per node, build and event loop together.

    rustworkx has no ``add(node, *preds)``: its contender does what a user of its
    ``TopologicalSorter`` must, as cheaply as that goes: ``int`` nodes are used as its indices
    directly (they are ``0..n-1`` in insertion order here, the case most favourable to it), ``str``
    nodes go through a dict to indices and back; the graph is built in bulk
    (``add_nodes_from`` + ``add_edges_from_no_data``).
    """
    g = make_graph("layered", n)
    names: list[Any] = list(range(g.n)) if node_type == "int" else [f"node-{i}" for i in range(g.n)]
    preds = [[names[p] for p in ps] for ps in g.predecessors()]
    items = list(zip(names, preds))
    rx = optional("rustworkx")

    def drop_in(cls: Any) -> Contender:
        def setup() -> Callable[[], list[Any]]:
            def run() -> list[Any]:
                ts = cls()
                add = ts.add
                for node, ps in items:
                    add(node, *ps)
                ts.prepare()
                return _done_then_ready(ts)

            return run

        return setup

    contenders: dict[str, Contender] = {
        OURS: drop_in(TopologicalSorter),
        "graphlib": drop_in(graphlib.TopologicalSorter),
    }
    if rx is not None:

        def rustworkx() -> Callable[[], list[Any]]:
            def run_int() -> list[Any]:
                pairs = [(p, v) for v, ps in items for p in ps]
                graph = rx.PyDiGraph()
                graph.add_nodes_from(names)
                graph.add_edges_from_no_data(pairs)
                return _done_then_ready(rx.TopologicalSorter(graph))

            def run_mapped() -> list[Any]:
                index: dict[Any, int] = {}
                nodes: list[Any] = []
                pairs: list[tuple[int, int]] = []
                for node, ps in items:
                    v = index.get(node)
                    if v is None:
                        v = index[node] = len(nodes)
                        nodes.append(node)
                    for p in ps:
                        u = index.get(p)
                        if u is None:
                            u = index[p] = len(nodes)
                            nodes.append(p)
                        pairs.append((u, v))
                graph = rx.PyDiGraph()
                graph.add_nodes_from(nodes)
                graph.add_edges_from_no_data(pairs)
                ts = rx.TopologicalSorter(graph)
                order: list[Any] = []
                stack = list(ts.get_ready())
                pop, extend, record = stack.pop, stack.extend, order.append
                done, get_ready = ts.done, ts.get_ready
                while stack:
                    i = pop()
                    record(nodes[i])
                    done(i)
                    extend(get_ready())
                return order

            return run_int if node_type == "int" else run_mapped

        contenders["rustworkx"] = rustworkx
    position = {name: i for i, name in enumerate(names)}

    def check(order: list[Any]) -> bool:
        return _respects(g, [position[x] for x in order])

    return Workload(
        "dag_dropin", f"{node_type} nodes, layered n={n:,}", g.n, "node", contenders, check
    )


# --------------------------------------------------------------------------------------------------
# Admission
# --------------------------------------------------------------------------------------------------


def _pairs(make: Callable[[], Any], n: int) -> Contender:
    """``n`` uncontended ``async with limiter`` in one task, on a limiter ``make()`` builds."""

    def setup() -> Callable[[], Any]:
        async def body() -> int:
            limiter = make()
            count = 0
            for _ in range(n):
                async with limiter:
                    count += 1
            return count

        return lambda: asyncio.run(body())

    return setup


def admission_pairs(n: int) -> Workload:
    """Uncontended acquire/release pairs (``async with limiter``) in one task."""

    def runner(make: Callable[[], Any]) -> Contender:
        return _pairs(make, n)

    contenders: dict[str, Contender] = {
        OURS: runner(lambda: CapacityLimiter(16)),
        "asyncio.Semaphore": runner(lambda: asyncio.Semaphore(16)),
        "anyio.CapacityLimiter": runner(lambda: anyio.CapacityLimiter(16)),
    }
    return Workload("admission", f"uncontended n={n:,}", n, "pair", contenders, lambda c: c == n)


def rate_pairs(n: int) -> Workload:
    """Uncontended rate-limited acquisitions (``async with limiter``) in one task: the rate is so
    high that a token is always there, so this is the cost of asking."""
    aiolimiter = optional("aiolimiter")
    rate = 1e12

    def runner(make: Callable[[], Any]) -> Contender:
        return _pairs(make, n)

    contenders: dict[str, Contender] = {
        OURS: runner(lambda: RateLimiter(rate, burst=1_000)),
        "python_token_bucket": runner(lambda: PythonTokenBucket(rate, burst=1_000)),
    }
    if aiolimiter is not None:
        period = 1_000 / rate  # 1,000 tokens per period: the same rate and burst as the others
        contenders["aiolimiter"] = runner(lambda: aiolimiter.AsyncLimiter(1_000, period))
    return Workload(
        "admission", f"rate uncontended n={n:,}", n, "pair", contenders, lambda c: c == n
    )


class _Composed:
    """Two caps and a rate limit entered together, as a pipeline step under a run cap, a global
    cap and a rate limit is admitted: ``async with`` takes all three, innermost last."""

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: Any) -> None:
        self._limiters = limiters

    async def run(self, n: int) -> int:
        outer, inner, rate = self._limiters
        count = 0
        for _ in range(n):
            async with outer, inner, rate:
                count += 1
        return count


def admission_composed(n: int) -> Workload:
    """Uncontended admission through two caps and a token bucket at once, ours against the same
    three built from asyncio.Semaphore and a plain Python token bucket."""
    rate = 1e12

    def runner(make: Callable[[], _Composed]) -> Contender:
        def setup() -> Callable[[], Any]:
            return lambda: asyncio.run(make().run(n))

        return setup

    contenders: dict[str, Contender] = {
        OURS: runner(
            lambda: _Composed(
                CapacityLimiter(64), CapacityLimiter(16), RateLimiter(rate, burst=1_000)
            )
        ),
        "python": runner(
            lambda: _Composed(
                asyncio.Semaphore(64), asyncio.Semaphore(16), PythonTokenBucket(rate, 1_000)
            )
        ),
    }
    return Workload(
        "admission", f"two caps + rate n={n:,}", n, "admission", contenders, lambda c: c == n
    )


def admission_contended(n: int, cap: int = 16) -> Workload:
    """``n`` tasks through a cap of ``cap``; checks that the cap held."""

    def runner(make: Callable[[], Any]) -> Contender:
        def setup() -> Callable[[], Any]:
            async def body() -> bool:
                limiter = make()
                running = peak = 0

                async def job() -> None:
                    nonlocal running, peak
                    async with limiter:
                        running += 1
                        peak = max(peak, running)
                        await asyncio.sleep(0)
                        running -= 1

                await asyncio.gather(*(job() for _ in range(n)))
                return peak == cap

            return lambda: asyncio.run(body())

        return setup

    contenders: dict[str, Contender] = {
        OURS: runner(lambda: CapacityLimiter(cap)),
        "asyncio.Semaphore": runner(lambda: asyncio.Semaphore(cap)),
        "anyio.CapacityLimiter": runner(lambda: anyio.CapacityLimiter(cap)),
    }
    return Workload(
        "admission", f"contended n={n:,} cap={cap}", n, "task", contenders, lambda ok: ok is True
    )


def rate_accuracy(rate: float, seconds: float, burst: int, consumers: int) -> dict[str, float]:
    """Delivered rate as a fraction of the configured one, after the initial burst is spent."""
    aiolimiter = optional("aiolimiter")
    total = int(rate * seconds) + burst

    def measure(make: Callable[[], Any]) -> float:
        async def body() -> float:
            limiter = make()
            remaining = total
            loop = asyncio.get_running_loop()
            start = loop.time()

            async def consumer() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    async with limiter:
                        pass

            await asyncio.gather(*(consumer() for _ in range(consumers)))
            elapsed = loop.time() - start
            return (total - burst) / elapsed / rate

        return asyncio.run(body())

    result = {OURS: measure(lambda: RateLimiter(rate, burst))}
    if aiolimiter is not None:
        period = burst / rate
        result["aiolimiter"] = measure(lambda: aiolimiter.AsyncLimiter(burst, period))
    return result


# --------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------


#: Cluster shapes: ``oversubscribed`` (random workers that fill up early, most tasks then find no
#: room) and ``fitting`` (the same workers with capacities scaled so that every task has room).
SHAPES = ("fitting", "oversubscribed")


def make_cluster(
    workers: int, tasks: int, seed: int = 11, shape: str = "oversubscribed"
) -> tuple[list[list[int]], list[list[int]]]:
    """Random heterogeneous workers (cpu milli-units, RAM MB, GPUs) and task demands.

    ``oversubscribed``: about four tasks fit on a worker. ``fitting``: capacities are scaled so
    that the whole batch fits with room to spare.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    rnd = random.Random(seed)
    scale = max(1, -(-tasks // workers)) if shape == "fitting" else 1
    caps = [
        [
            rnd.choice([2000, 4000, 8000, 16000]) * scale,
            rnd.choice([4096, 8192, 16384, 65536]) * scale,
            rnd.choice([0, 0, 1, 2]) * scale,
        ]
        for _ in range(workers)
    ]
    demands = [
        [
            rnd.randrange(100, 4000, 100),
            rnd.randrange(128, 8192, 128),
            1 if rnd.random() < 0.05 else 0,
        ]
        for _ in range(tasks)
    ]
    demands = [d for d in demands if any(all(x <= c for x, c in zip(d, cap)) for cap in caps)]
    return caps, demands


#: Above this many worker-task pairs a pure-Python scan of every worker takes minutes per run; the
#: numpy peer (the fastest) stands in alone there.
_PYTHON_SCAN_LIMIT = 10**7


def _placer_peers(
    policy: str, caps: list[list[int]], python_too: bool
) -> dict[str, Callable[[], Any]]:
    """The peers of ``policy`` (``first_fit``, else best fit) on ``caps``, by contender name: the
    Python one where ``python_too`` (its scan of every worker is quick enough at this size), the
    numpy one where numpy is installed."""
    python: Callable[[list[list[int]]], Any]
    numpy: Callable[[list[list[int]]], Any]
    if policy == "first_fit":
        python, numpy, kind = FirstFitScanner, NumpyFirstFit, "first_fit"
    else:
        python, numpy, kind = BestFitScorer, NumpyBestFit, "best_fit"
    makers: dict[str, Callable[[], Any]] = {}
    if python_too:
        makers[f"python_{kind}"] = lambda: python(caps)
    if optional("numpy") is not None:
        makers[f"numpy_{kind}"] = lambda: numpy(caps)
    return makers


def placement_online(
    workers: int, tasks: int, shape: str = "oversubscribed", policy: str = "best_fit"
) -> Workload:
    """Online placement with releases: each task placed, every third placed one released again.

    ``policy`` is ``best_fit`` (peers: Python and numpy best fit, same choices) or ``first_fit``
    (peers: Python and numpy first fit, same choices). Records tasks placed and workers used.
    """
    caps, demands = make_cluster(workers, tasks, shape=shape)

    def ours() -> Callable[[], Any]:
        def run() -> tuple[int, int]:
            p = Placer(["cpu", "ram_mb", "gpu"], policy)  # type: ignore[arg-type]
            for c in caps:
                p.add_worker(c)
            placed = 0
            for i, d in enumerate(demands):
                if p.place(i, d) is not None:
                    placed += 1
                    if i % 3 == 0:
                        p.release(i)
            return placed, sum(p.task_count(w) > 0 for w in range(len(caps)))

        return run

    def peer(make: Callable[[], Any]) -> Contender:
        def setup() -> Callable[[], Any]:
            def run() -> tuple[int, int]:
                scorer = make()
                placed = 0
                for i, d in enumerate(demands):
                    w = scorer.place(d)
                    if w is not None:
                        placed += 1
                        if i % 3 == 0:
                            scorer.release(w, d)
                return placed, _used(scorer)

            return run

        return setup

    def _used(scorer: Any) -> int:
        if isinstance(scorer, FirstFitScanner):
            return scorer.workers_used(caps)
        return int(scorer.workers_used())

    contenders: dict[str, Contender] = {OURS: ours}
    small = workers * len(demands) <= _PYTHON_SCAN_LIMIT
    for name, make in _placer_peers(policy, caps, small).items():
        contenders[name] = peer(make)
    return Workload(
        "placement",
        f"{policy} {shape} workers={workers:,} tasks={len(demands):,}",
        len(demands),
        "placement",
        contenders,
        describe=_placed_and_used,
    )


#: Task kinds in :func:`placement_pool`: a program declares resources per task function, so it
#: places many runs of a few profiles.
TASK_KINDS = 100


def placement_pool(workers: int, tasks: int, shape: str = "oversubscribed") -> Workload:
    """``ResourceAwareWorkerPool.place`` and ``release`` as a program calls them: runs of
    :data:`TASK_KINDS` task kinds (each a declared :class:`TaskResources`), placed one by one, every
    third placed one released again; against :class:`NamedPool` (the same API in Python) over a
    Python and a numpy best fit. Records tasks placed and workers used."""
    caps, demands = make_cluster(workers, tasks, shape=shape)
    rnd = random.Random(5)
    profiles = [
        TaskResources(cpu_milli=d[0], ram_mb=d[1], extra={"gpu": d[2]} if d[2] else {})
        for d in demands[:TASK_KINDS]
    ]
    runs = [profiles[rnd.randrange(len(profiles))] for _ in demands]
    names = [f"w{i}" for i in range(len(caps))]
    specs = [
        {"name": name, "cpu_cores": c[0] / 1000, "ram_mb": c[1], "gpu": c[2]}
        for name, c in zip(names, caps)
    ]

    def place_all(pool: ResourceAwareWorkerPool | NamedPool) -> int:
        """Every run placed in turn, every third placed one released again; how many placed."""
        placed = 0
        for i, task in enumerate(runs):
            if pool.place(task, i) is not None:
                placed += 1
                if i % 3 == 0:
                    pool.release(i)
        return placed

    def ours() -> Callable[[], Any]:
        def run() -> tuple[int, int]:
            pool = ResourceAwareWorkerPool(specs)
            placed = place_all(pool)
            return placed, sum(pool.core.task_count(w) > 0 for w in range(len(caps)))

        return run

    def peer(make: Callable[[], Any]) -> Contender:
        def setup() -> Callable[[], Any]:
            def run() -> tuple[int, int]:
                pool = NamedPool(names, make())
                return place_all(pool), int(pool.scorer.workers_used())

            return run

        return setup

    contenders: dict[str, Contender] = {OURS: ours}
    small = workers * len(runs) <= _PYTHON_SCAN_LIMIT
    for name, make in _placer_peers("best_fit", caps, small).items():
        contenders[name] = peer(make)
    return Workload(
        "placement",
        f"pool {shape} workers={workers:,} tasks={len(runs):,}",
        len(runs),
        "placement",
        contenders,
        describe=_placed_and_used,
    )


def placement_plan(workers: int, tasks: int, shape: str = "oversubscribed") -> Workload:
    """Offline packing of a batch onto empty workers, against Python first-fit-decreasing and
    smallest-first; records tasks placed and workers used."""
    caps, demands = make_cluster(workers, tasks, shape=shape)

    def ours() -> Callable[[], Any]:
        p = Placer(["cpu", "ram_mb", "gpu"])
        for c in caps:
            p.add_worker(c)
        batch: list[tuple[list[int], list[int]]] = [(d, []) for d in demands]

        def run() -> tuple[int, int]:
            _, placed, used, _ = p.plan(batch)
            return placed, used

        return run

    def python(heuristic: Callable[..., list[int | None]]) -> Contender:
        def setup() -> Callable[[], Any]:
            def run() -> tuple[int, int]:
                a = heuristic(caps, demands)
                return sum(x is not None for x in a), len({x for x in a if x is not None})

            return run

        return setup

    return Workload(
        "placement",
        f"plan {shape} workers={workers:,} tasks={len(demands):,}",
        len(demands),
        "task",
        {
            OURS: ours,
            "python_ffd": python(first_fit_decreasing),
            "python_smallest_first": python(smallest_first),
        },
        describe=_placed_and_used,
    )


def _placed_and_used(result: tuple[int, int]) -> str:
    return f"{result[0]:,} placed on {result[1]:,} workers"


# -- a million nodes, declared in bulk ------------------------------------------------------------

_BULK_SCALE_SCRIPT = """
import asyncio, json, random, time
from array import array
import taskiq_flow
from taskiq import InMemoryBroker
from taskiq_flow.bulk import BulkDataflow
{status}
after_import = status("VmRSS")
broker = InMemoryBroker()  # its default: completions travel as events, not results

@broker.task(task_name="bench_combine")
async def combine(a: int = 0, b: int = 0, c: int = 0, d: int = 0, seed: int = 0) -> int:
    return 0

n = {n}
rnd = random.Random(5)
width = max(8, int(n ** 0.5))

async def main():
    await broker.startup()
    # The wiring, made as a user's code would make arrays (timed apart: it is not ours). Node v
    # past the first layer takes 4 distinct nodes of the layer before as a, b, c, d; the first
    # layer takes the external input "seed".
    # Made from generators, so that no list of 10^6 ints outlives it (the RSS would keep it).
    started = time.perf_counter()
    targets = array("I", range(width, n))
    quarter = width // 4
    pick = array("I", (rnd.randrange(width) for _ in targets))
    parents = [
        array("I", ((v // width - 1) * width + (p + k * quarter) % width
                    for v, p in zip(targets, pick)))
        for k in range(4)
    ]
    del pick
    wired, wired_cpu = time.perf_counter(), time.process_time()
    flow = BulkDataflow(broker, [combine], max_parallel=16)
    flow.add_nodes(n, task=0, output="v")
    flow.feed("seed", range(width), param="seed")
    for k, param in enumerate("abcd"):
        flow.connect(parents[k], targets, param)
    flow.build()
    built, built_cpu = time.perf_counter(), time.process_time()
    del parents, targets
    held = status("VmRSS")
    out = await flow.kiq_dataflow(seed=1)
    done, done_cpu = time.perf_counter(), time.process_time()
    assert len(out) == n and out["v%d" % (n - 1)] == 0
    await broker.shutdown()
    print(json.dumps([wired - started, built - wired, done - built, after_import, held,
                      status("VmHWM"), built_cpu - wired_cpu, done_cpu - built_cpu]))

asyncio.run(main())
"""


def bulk_dataflow_scale(n: int) -> dict[str, float]:
    """The layered no-op dataflow of ``pipelines.dataflow_scale`` (``max_parallel=16``), declared
    with :class:`~taskiq_flow.bulk.BulkDataflow` in a fresh interpreter: the time to make the
    wiring arrays in plain Python (the user's code, reported apart), to declare and build it
    (checks included) per node, to run it per node (each also as time on a CPU, which a loaded
    machine does not inflate), and the peak RSS above the RSS right after ``import taskiq_flow``."""
    from taskiq_flow.bench.pipelines import _STATUS, _in_fresh_interpreter

    script = _BULK_SCALE_SCRIPT.replace("{status}", _STATUS)
    out = _in_fresh_interpreter(script, n, timeout=7200)
    wiring, build, run, after_import, held, peak, build_cpu, run_cpu = out
    return {
        "nodes": n,
        "wiring_us_per_node": wiring / n * 1e6,
        "build_us_per_node": build / n * 1e6,
        "build_cpu_us_per_node": build_cpu / n * 1e6,
        "run_us_per_node": run / n * 1e6,
        "run_cpu_us_per_node": run_cpu / n * 1e6,
        "run_s": run,
        "built_rss_over_import_mib": (held - after_import) / 1024,
        "peak_rss_over_import_mib": (peak - after_import) / 1024,
        "peak_rss_mib": peak / 1024,
    }
