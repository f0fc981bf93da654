"""The one way a duration is written for people, in every table, sentence and report.

``12.3 ms`` under a second, ``4.5 s`` (one decimal) under a minute, then whole units:
``3 min 5 s``, ``2 h 10 min``.
"""

from __future__ import annotations

__all__ = ["duration", "duration_ms"]


def duration(seconds: float | None, missing: str = "-") -> str:
    """``seconds`` for people: ``0.0 ms``, ``900.0 ms``, ``4.5 s``, ``59.9 s``, ``3 min 5 s``,
    ``2 h 10 min``; a negative duration with a minus sign.

    :param seconds: the duration, or ``None`` if there is none.
    :param missing: what stands for ``None``.
    """
    if seconds is None:
        return missing
    if seconds < 0:
        return f"-{duration(-seconds)}"
    if round(seconds * 1000, 1) < 1000:
        return f"{seconds * 1000:.1f} ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def duration_ms(ms: float | None, missing: str = "-") -> str:
    """:func:`duration` of ``ms`` milliseconds (a record's ``duration_ms``)."""
    return duration(None if ms is None else ms / 1000.0, missing)
