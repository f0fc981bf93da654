"""A handle on a run of any shape: its id, ``cancel()``, ``explain()`` and its result.

``Pipeline.kiq()`` returns such a handle already (:class:`~taskiq_flow.pipeline.PipelineRun`);
the calls that return values — ``DataflowPipeline.kiq_dataflow``, ``MapReduce.map`` and the
others — keep doing so, and :func:`start` runs any of them in the background with a handle::

    run = start(MapReduce.map, broker, resize, images, max_parallel=16)
    await run.started()          # the run exists: run.run_id is its pipeline id
    print(run.explain("resize"))
    run.cancel()                 # nothing new is sent; running attempts are cut where they run
    await run                    # raises PipelineCancelledError, naming the steps cut
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskiq_flow import cancelling
from taskiq_flow.exceptions import StateError

if TYPE_CHECKING:
    from taskiq_flow.run.runner import Runner

__all__ = ["RunHandle", "start"]

T = TypeVar("T")


class RunHandle(Generic[T]):
    """A run started by :func:`start`. Await it (or :meth:`result`) for what the call returns.

    The run is the first one the call starts (a run started inside one of its tasks is that
    task's business).
    """

    def __init__(self) -> None:
        self._runner: Runner | None = None
        self._attached = asyncio.Event()
        self._cancelled = False
        self._task: asyncio.Task[T] | None = None

    def _attach(self, runner: Runner) -> None:
        if self._runner is not None:
            return
        self._runner = runner
        self._attached.set()
        if self._cancelled:
            runner.cancel()

    @property
    def run_id(self) -> str | None:
        """The run's pipeline id (what tracking and ``taskiq-flow runs`` know it by); ``None``
        until the run has started (:meth:`started`)."""
        return self._runner.pipeline_id if self._runner is not None else None

    async def started(self) -> str:
        """Waits until the run exists; returns its pipeline id.

        :raises StateError: the call ended (or failed its checks) without starting a run.
        """
        assert self._task is not None
        attached = asyncio.ensure_future(self._attached.wait())
        try:
            await asyncio.wait({attached, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            attached.cancel()
        if self._runner is None:
            if self._task.done() and self._task.exception() is not None:
                raise StateError(f"the run never started: {self._task.exception()}")
            raise StateError("the call ended without starting a run")
        return self._runner.pipeline_id

    def cancel(self) -> None:
        """Cancels the run: nothing new is sent, every attempt running is cut where it runs, and
        the call raises :class:`~taskiq_flow.exceptions.PipelineCancelledError` (a run not started
        yet is cancelled as it starts)."""
        self._cancelled = True
        if self._runner is not None:
            self._runner.cancel()

    def explain(self, step: int | str) -> str:
        """Why ``step`` (a name, or a node id) is where it is, in one sentence.

        :raises StateError: before the run has started.
        """
        if self._runner is None:
            raise StateError("the run has not started yet: await handle.started() first")
        return self._runner.explain(step)

    def done(self) -> bool:
        """Whether the call has ended."""
        return self._task is not None and self._task.done()

    async def result(self) -> T:
        """What the call returns (or raises)."""
        assert self._task is not None
        return await asyncio.shield(self._task)

    def __await__(self) -> Generator[Any, None, T]:
        return self.result().__await__()


def start(call: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> RunHandle[T]:
    """Starts ``call(*args, **kwargs)`` (any call that runs a pipeline: ``kiq_dataflow``,
    ``MapReduce.map``, ...) as a task of the running loop, and returns a handle on its run."""
    handle: RunHandle[T] = RunHandle()
    context = contextvars.copy_context()
    context.run(cancelling.HANDLE.set, handle._attach)

    async def run() -> T:
        return await call(*args, **kwargs)

    handle._task = asyncio.get_running_loop().create_task(run(), context=context)
    return handle
