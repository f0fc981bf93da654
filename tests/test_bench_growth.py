"""The ``growth`` group of ``taskiq-flow bench``: a three-level ``Expand`` tree against the same
tree declared up front, at a small scale. What is checked is the answers and what the report
says, never the speed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from taskiq_flow.bench import growth, main


def test_the_tree_shrinks_with_scale_and_counts_every_task() -> None:
    assert growth.tree_levels(1.0) == (100, 100, 10)
    assert growth.tasks_of(growth.tree_levels(1.0)) == 110_101  # 10^5 leaves + 10,101 expanding
    assert growth.tree_levels(0.01) == (10, 10, 10)
    assert growth.tree_levels(0.000001) == (2, 2, 10)


@pytest.mark.parametrize("name", growth.CONTENDERS)
def test_each_contender_runs_the_whole_tree_and_checks_its_answer(name: str) -> None:
    levels = (3, 4, 5)
    assert growth._contender(name, levels)() is True


def test_the_group_reports_the_ratio_and_the_memory_with_right_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "bench.json"
    assert main(["--group", "growth", "--scale", "0.001", "--json", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "runs that grow: an Expand tree 3 x 3 x 10 (103 tasks, 90 leaves)" in out
    for name in growth.CONTENDERS:
        assert re.search(rf"{re.escape(name)} +[\d.]+ us +[\d.]+ us +yes$", out, re.M), name
    assert re.search(r"grown / declared, wall time per task: \d+\.\d\dx \(target <= 1\.15x", out)
    assert re.search(r"grown / declared, CPU time per task: \d+\.\d\dx \(target <= 1\.15x", out)
    assert re.search(r"peak RSS: \d+ MiB above import taskiq_flow \(target <= 150 MiB", out)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert not [line for line in out.splitlines() if line.startswith("    ")], out  # not wrapped

    saved = json.loads(out_file.read_text())["growth"]
    assert saved["levels"] == [3, 3, 10]
    assert saved["tasks"] == 103
    assert saved["correct"] is True
    assert set(saved["contenders"]) == set(growth.CONTENDERS)
    for row in saved["contenders"].values():
        assert row["correct"] is True
        assert row["wall_s"] > 0 and row["cpu_s"] > 0
    grown, declared = (saved["contenders"][n] for n in (growth.GROWN, growth.DECLARED))
    assert saved["ratio_wall"] == pytest.approx(grown["wall_s"] / declared["wall_s"])
    assert saved["memory"]["correct"] is True
    assert 0 <= saved["memory"]["peak_rss_over_import_mib"] < saved["memory"]["peak_rss_mib"]


def test_a_wrong_answer_makes_the_bench_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A grown tree whose leaves come back out of order is reported as wrong, and the command
    fails."""
    real = growth._leaves
    monkeypatch.setattr(growth, "_leaves", lambda tree: real(tree)[::-1])
    assert main(["--group", "growth", "--scale", "0.001"]) == 1
    assert re.search(r"Expand tree \(grown\) .* NO$", capsys.readouterr().out, re.M)
