"""What taskiq logs of a pipeline task that skipped or was cut, said at INFO, not as an error.

taskiq's receiver logs every exception a task raised with ``logger.exception``: an ERROR with a
traceback. For a task that raised :class:`~taskiq_flow.Skip` (nothing to do: not a failure) or one
cut by its run's cancel, that is noise a user takes for a fault. :func:`install` adds a filter to
taskiq's receiver logger that turns those two records into one INFO line each, without the
traceback; every other record passes unchanged.
"""

from __future__ import annotations

import asyncio
import logging

from taskiq_flow import cancelling
from taskiq_flow.exceptions import Skip

__all__ = ["RECEIVER_LOGGER", "install"]

#: The logger taskiq's receiver reports a task's exception to.
RECEIVER_LOGGER = "taskiq.receiver.receiver"


class _PipelineOutcomes(logging.Filter):
    """Says a skip or a cut at INFO; lets everything else through unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, Skip):
            _restate(record, "A pipeline task skipped: %s", (error.reason or "no reason given",))
        elif isinstance(error, asyncio.CancelledError) and cancelling.was_cut():
            _restate(record, "A pipeline task was cut: its run was cancelled", ())
        return True


def _restate(record: logging.LogRecord, msg: str, args: tuple[object, ...]) -> None:
    record.levelno = logging.INFO
    record.levelname = logging.getLevelName(logging.INFO)
    record.msg = msg
    record.args = args
    record.exc_info = None
    record.exc_text = None


_FILTER = _PipelineOutcomes()


def install() -> None:
    """Adds the filter to taskiq's receiver logger (once, however often called)."""
    logger = logging.getLogger(RECEIVER_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
