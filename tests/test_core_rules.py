"""The core's rules for caps and rates, seen from Python: one rule each, one message, one type."""

from __future__ import annotations

import math

import pytest

from taskiq_flow import _core
from taskiq_flow.exceptions import InvalidValueError
from taskiq_flow.run.settings import check_rate

LARGEST = 4294967295  # u32::MAX: the largest cap is a cap like any other


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [(2, None, (2.0, 1)), (0.5, 3, (0.5, 3)), (1e6, LARGEST, (1e6, LARGEST))],
)
def test_check_rate_returns_the_rate_as_the_core_keeps_it(
    rate: float, burst: int | None, expected: tuple[float, int]
) -> None:
    checked = _core.check_rate(rate, burst)
    assert checked == expected
    assert type(checked[0]) is float and type(checked[1]) is int
    assert check_rate(rate, burst) == expected


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, 1, "rate must be a finite number > 0, got 0"),
        (-2.5, 1, "rate must be a finite number > 0, got -2.5"),
        (math.nan, 1, "rate must be a finite number > 0, got NaN"),
        (math.inf, 1, "rate must be a finite number > 0, got inf"),
        ("3", 1, "rate must be a number, got '3'"),
        (True, 1, "rate must be a number, got True"),
        (5.0, 0, "burst must be an integer from 1 to 4294967295, got 0"),
        (5.0, -1, "burst must be an integer from 1 to 4294967295, got -1"),
        (5.0, LARGEST + 1, "burst must be an integer from 1 to 4294967295, got 4294967296"),
        (5.0, 2**64, f"burst must be an integer from 1 to 4294967295, got {2**64}"),
        (5.0, True, "burst must be an integer from 1 to 4294967295, got True"),
        (5.0, 1.5, "burst must be an integer, got 1.5"),
    ],
)
def test_one_rate_rule_one_message_everywhere(rate: object, burst: object, message: str) -> None:
    # The same rule and words from the function, a step's options and the scheduler's key limits.
    with pytest.raises(InvalidValueError) as direct:
        _core.check_rate(rate, burst)
    with pytest.raises(InvalidValueError) as option:
        check_rate(rate, burst)
    scheduler = _core.DagScheduler(1, [], [])
    with pytest.raises(InvalidValueError) as key:
        scheduler.set_key_limits(0, rate=rate, burst=burst)  # type: ignore[arg-type]
    assert str(direct.value) == str(option.value) == str(key.value) == message


def test_no_rate_is_no_limit() -> None:
    assert check_rate(None, 5) == (None, 1)


def test_the_dead_bindings_are_gone() -> None:
    for name in ("ConcurrencyCounter", "TokenBucket"):
        assert not hasattr(_core, name)
        assert name not in dir(_core)


def test_the_largest_cap_reads_back_as_a_cap_not_as_none() -> None:
    assert _core.check_cap(LARGEST) == LARGEST
    assert _core.check_cap(None) is None
    shared = _core.SharedCap(LARGEST)
    assert shared.max_parallel == LARGEST
    shared.set_max_parallel(None)
    assert shared.max_parallel is None
    run = _core.DagScheduler(2, [], [], max_parallel=LARGEST)
    run.set_key_limits(0, max_parallel=LARGEST)
    run.attach(shared_cap=_core.SharedCap(LARGEST))
    why = run.explain(0)
    assert (why["key_cap"], why["run_cap"], why["shared_cap"]) == (LARGEST, LARGEST, LARGEST)
    assert run.start() == [0, 1]
    unbounded = _core.DagScheduler(1, [], []).explain(0)
    assert (unbounded["key_cap"], unbounded["run_cap"], unbounded["shared_cap"]) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "max_parallel must be an integer from 1 to 4294967295, got 0"),
        (-3, "max_parallel must be an integer from 1 to 4294967295, got -3"),
        (LARGEST + 1, "max_parallel must be an integer from 1 to 4294967295, got 4294967296"),
        (2**70, f"max_parallel must be an integer from 1 to 4294967295, got {2**70}"),
        (True, "max_parallel must be an integer from 1 to 4294967295, got True"),
        (2.5, "max_parallel must be an integer, got 2.5"),
        ("4", "max_parallel must be an integer, got '4'"),
    ],
)
def test_one_cap_rule_one_message_everywhere(value: object, message: str) -> None:
    errors = []
    for refuse in (
        lambda: _core.check_cap(value),
        lambda: _core.SharedCap(value),
        lambda: _core.DagScheduler(1, [], [], max_parallel=value),
        lambda: _core.DagScheduler(1, [], []).set_max_parallel(value),
        lambda: _core.DagScheduler(1, [], []).set_key_limits(0, max_parallel=value),
    ):
        with pytest.raises(InvalidValueError) as caught:
            refuse()
        errors.append(str(caught.value))
    assert errors == [message] * len(errors)
