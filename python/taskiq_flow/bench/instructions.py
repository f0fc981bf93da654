"""Instructions per task, counted by valgrind's callgrind: the pipelines against the raw floor in
a measure that a loaded, shared machine does not disturb.

Each contender runs in a fresh interpreter under ``valgrind --tool=callgrind`` at two sizes; the
difference divided by the difference in tasks is the cost of one task, start-up excluded. The
ratio to the floor (taskiq's own ``kiq`` + ``wait_result``) is what orchestration adds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CONTENDERS", "instructions_per_task", "report"]

_SCRIPT = """
SMALL, LARGE = {small}, {large}
import asyncio, os, sys
from taskiq import InMemoryBroker
from taskiq_flow import DataflowPipeline, MapReduce, Pipeline

broker = InMemoryBroker(max_stored_results=-1)

@broker.task(task_name="bench_noop")
async def noop(x: int = 0) -> int:
    return x

def chain(n):
    pipeline = DataflowPipeline(broker)
    for i in range(n):
        pipeline.add_dataflow_task(
            noop, output=f"v{i}", inputs={"x": f"v{i - 1}" if i else "seed"}
        )
    pipeline.dag
    return pipeline

async def run(kind, n):
    if kind == "chain floor":
        value = 0
        for _ in range(n):
            value = (await (await noop.kiq(value)).wait_result(check_interval=0)).return_value
    elif kind.startswith("chain"):
        await CHAINS[n].kiq_dataflow(seed=1)
    elif kind == "floor":
        tasks = [await noop.kiq(i) for i in range(n)]
        [(await t.wait_result(check_interval=0)).return_value for t in tasks]
    elif kind.startswith("MapReduce.map"):
        await MapReduce.map(broker, noop, range(n), max_parallel=CAP)
    elif kind.startswith("Pipeline.map"):
        await (await Pipeline(broker).map(noop, range(n), max_parallel=CAP).kiq()).wait_result()
    else:
        pipeline = DataflowPipeline(broker, max_parallel=CAP)
        for i in range(n):
            pipeline.add_dataflow_task(noop, output=f"v{i}", inputs={"x": "seed"})
        await pipeline.kiq_dataflow(seed=1)

kind, n = sys.argv[1], int(sys.argv[2])
if kind.endswith(" (kiq)"):
    kind = kind.removesuffix(" (kiq)")
    os.environ["TASKIQ_FLOW_FAST_PATH"] = "0"
CAP = 16 if kind.endswith("16") else None
# A chain is declared before the count's difference is taken: both sizes declare both chains.
CHAINS = {size: chain(size) for size in (50, SMALL, LARGE)} if kind.startswith("chain") else {}

async def main():
    await broker.startup()
    await run(kind, 50)  # warm: imports and first-use caches are not per-task costs
    await run(kind, n)

asyncio.run(main())
"""

#: The pipelines measured (each on both lanes).
_PIPELINES = (
    "MapReduce.map",
    "MapReduce.map cap16",
    "Pipeline.map",
    "Pipeline.map cap16",
    "DataflowPipeline",
    "DataflowPipeline cap16",
)
#: What is measured, floor first; the chain against its own floor.
CONTENDERS = (
    "floor",
    *(f"{p}{lane}" for p in _PIPELINES for lane in ("", " (kiq)")),
    "chain floor",
    "chain",
    "chain (kiq)",
)
#: Contenders whose count includes declaring the pipeline (one node per task).
BUILD_INCLUDED = frozenset(
    f"{p}{lane}" for p in ("DataflowPipeline", "DataflowPipeline cap16") for lane in ("", " (kiq)")
)


def _count(script: Path, kind: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                str(script),
                kind,
                str(n),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count: {proc.stderr[-500:]}")
    return int(found.group(1))


def instructions_per_task(small: int = 1_000, large: int = 3_000) -> dict[str, float]:
    """Instructions per task of each contender (``{}`` without valgrind)."""
    if shutil.which("valgrind") is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "contender.py"
        script.write_text(_SCRIPT.replace("{small}", str(small)).replace("{large}", str(large)))
        return {
            kind: (_count(script, kind, large) - _count(script, kind, small)) / (large - small)
            for kind in CONTENDERS
        }


def report(per_task: dict[str, float]) -> str:
    """A table of instructions per task and the ratio to the floor."""
    if not per_task:
        return "instructions per task: valgrind not installed (apt-get install valgrind)"
    lines = ["instructions per task (callgrind; same for any machine load), ratio to the floor:"]
    for kind, count in per_task.items():
        floor = per_task["chain floor" if kind.startswith("chain") else "floor"]
        note = "  (build included)" if kind in BUILD_INCLUDED else ""
        lines.append(f"  {kind:29} {count / 1000:8.1f} K   {count / floor:5.2f}x{note}")
    return "\n".join(lines)
