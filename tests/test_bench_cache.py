"""The memoized steps' rows of the ``once`` bench group: run at a tiny scale, in memory and on a
real redis-server, they report every row with sane figures and right answers (speed is the
bench's business, not the tests')."""

from __future__ import annotations

import json

from taskiq_flow.bench import once
from taskiq_flow.run.caching import default_cache


def test_the_cache_rows_report_sane_figures_and_right_answers() -> None:
    results = once.run_cache_bench(runs=5, repeats=2)
    assert set(results) == {"in memory", "redis"}  # redis-server is installed here
    for where, figures in results.items():
        assert figures["correct"] is True, where  # answers right; a hit ran no step
        for shape, _ in once.CACHE_SHAPES:
            row = figures[shape]
            assert set(row) == set(once.CACHE_CONTENDERS)
            for name, spread in row.items():
                assert 0 < spread["min"] <= spread["median"] <= spread["max"] < 1e6, (where, name)
    assert not default_cache()._values  # the bench leaves the process's cache empty
    json.dumps(results)  # what --json writes

    text = once.cache_report(results)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    rows = [line for line in lines if line.startswith(("  in memory, ", "  redis, "))]
    assert len(rows) == 4 and all(line.endswith(" yes") for line in rows), text


def test_a_wrong_answer_shows_as_no_and_a_missing_redis_says_why() -> None:
    row = {name: {"median": 10.0, "min": 9.0, "max": 12.0} for name in once.CACHE_CONTENDERS}
    results = {
        "in memory": {"1 step": row, "3 steps": row, "correct": False},
        "redis": "skipped: redis-server is not installed",
    }
    text = once.cache_report(results)
    assert "in memory, 1 step" in text and text.count("  NO") == 2
    assert "10 +-30%" in text
    assert "  cache redis: skipped: redis-server is not installed" in text


def test_the_once_report_carries_the_cache_rows() -> None:
    row = {name: {"median": 10.0, "min": 9.0, "max": 12.0} for name in once.CACHE_CONTENDERS}
    figures = {"no key": 100.0, "new key": 150.0, "finished key": 20.0}
    text = once.report(
        {
            "in memory": figures,
            "cache": {"in memory": {"1 step": row, "3 steps": row, "correct": True}},
        }
    )
    assert "keys in memory: no key 100 us" in text and "memoized steps" in text
    assert "in memory, 3 steps" in text
