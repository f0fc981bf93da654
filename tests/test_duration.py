"""One duration formatter for every table, sentence and report."""

from __future__ import annotations

import pytest

from taskiq_flow._duration import duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 ms"),
        (0.0123, "12.3 ms"),
        (0.9, "900.0 ms"),
        (0.99996, "1.0 s"),  # rounds into the next unit, never "1000.0 ms"
        (1.25, "1.2 s"),
        (1.996, "2.0 s"),
        (59.94, "59.9 s"),
        (59.96, "1 min 0 s"),  # never "60.0 s"
        (119.6, "2 min 0 s"),  # never "1 min 60 s"
        (185.0, "3 min 5 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h 0 min"),
        (7800.0, "2 h 10 min"),
        (-0.25, "-250.0 ms"),
    ],
)
def test_a_duration_for_people(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_no_duration_is_the_missing_mark() -> None:
    assert duration(None) == "-"
    assert duration(None, "\N{EN DASH}") == "\N{EN DASH}"
