"""How long headless chromium takes to render run reports of N steps.

Not a pytest-benchmark group (there is no peer to compare with): a measurement, run by hand::

    python benches/report_render.py 10000 50000            # distinct step names
    python benches/report_render.py --names 20 100000      # steps of 20 names (mapped work)

For each size it writes a report of a synthetic run (steps over 60 s, each 0-2 s long, a DAG of
chains 10 wide), opens it twice in one browser and prints the file size, the time Python took to
write it and ``rendered_ms``: navigation start to the second painted frame after the load event,
in the page's own clock.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from headless import headless_page

from taskiq_flow.pictures import SimpleGraph
from taskiq_flow.report import write_report
from taskiq_flow.tracking import PipelineStatus, StepStatus


def synthetic_run(steps: int, names: int | None) -> PipelineStatus:
    """A finished run of ``steps`` steps (named ``step-i``, or ``task-(i % names)``)."""
    rnd = random.Random(1)
    t0 = 1_000.0
    records = []
    for i in range(steps):
        start = t0 + rnd.random() * 60
        ms = rnd.random() * 2000
        name = f"step-{i}" if names is None else f"task-{i % names}"
        records.append(StepStatus(name, "done", ms, 1, None, start, start + ms / 1000, 1, 1))
    return PipelineStatus("run", "synthetic", "done", t0, t0 + 62, steps=records)


async def measure(sizes: list[int], names: int | None) -> None:
    """Prints one line per size and load."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with headless_page(folder / "profile") as page:
            for n in sizes:
                status = synthetic_run(n, names)
                graph = SimpleGraph.from_edges(
                    [s.name for s in status.steps], [(i, i + 10) for i in range(n - 10)]
                )
                started = time.perf_counter()
                path = write_report(folder / f"r{n}.html", status, dag=graph)
                written = time.perf_counter() - started
                for _ in range(2):
                    load = await page.open(path.as_uri())
                    print(
                        f"steps={n} names={names or n} bytes={path.stat().st_size} "
                        f"python={written:.2f}s rendered_ms={load.rendered_ms:.0f} "
                        f"problems={len(load.problems)}",
                        flush=True,
                    )


def main() -> None:
    """Command line: sizes, and ``--names K`` for steps of K names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="numbers of steps")
    parser.add_argument("--names", type=int, help="steps share this many names")
    args = parser.parse_args()
    asyncio.run(measure(args.sizes, args.names))


if __name__ == "__main__":
    main()
