"""A progress bar for any run, drawn by ``rich``: pass it as ``on_progress``.

::

    from taskiq_flow.progress import progress_bar

    with progress_bar("resize") as bar:
        await MapReduce.map(broker, resize, images, max_parallel=16, on_progress=bar)

    with progress_bar("ingest") as bar:
        await DataflowPipeline(broker, on_progress=bar)...   # or pipeline.with_progress(bar)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    description: str = "tasks", *, console: Any = None, transient: bool = False
) -> Iterator[Callable[[int, int], None]]:
    """A bar of tasks finished out of all, with the elapsed time, that lasts as long as the
    ``with`` block; yields the ``on_progress(finished, total)`` callback that moves it.

    :param console: a ``rich.console.Console`` to draw on (the terminal by default; it fits the
        terminal's width).
    :param transient: remove the bar when the block ends.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(finished: int, total: int) -> None:
            progress.update(task, completed=finished, total=total)

        yield update
