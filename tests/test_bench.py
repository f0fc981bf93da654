"""The benchmark workloads: every contender gives a correct answer (sizes kept small here)."""

from __future__ import annotations

import re

import pytest

from taskiq_flow.bench import main, run_workload
from taskiq_flow.bench import workloads as w


@pytest.mark.parametrize("shape", ["wide", "chain", "layered", "reduce"])
def test_graph_shapes(shape: str) -> None:
    g = w.make_graph(shape, 200)
    assert g.n == 200
    assert all(0 <= v < 200 for v in g.src + g.dst)
    if shape == "layered":
        assert len(g.src) == 4 * (200 - 14)  # 4 predecessors for every node past the first layer


@pytest.mark.parametrize("make", [w.dag_build, w.dag_batch_loop, w.dag_event_loop])
@pytest.mark.parametrize("shape", ["wide", "chain", "layered", "reduce"])
def test_dag_contenders_agree(make: object, shape: str) -> None:
    results = run_workload(make(shape, 500), repeats=1)  # type: ignore[operator]
    assert {r.contender for r in results} >= {w.OURS, "graphlib", "python_kahn", "rustworkx"}
    assert all(r.correct for r in results), [r for r in results if not r.correct]


@pytest.mark.parametrize("node_type", ["int", "str"])
def test_drop_in_contenders_agree(node_type: str) -> None:
    results = run_workload(w.dag_dropin(node_type, 500), repeats=1)
    assert {r.contender for r in results} == {w.OURS, "graphlib", "rustworkx"}
    assert all(r.correct for r in results), [r for r in results if not r.correct]


@pytest.mark.parametrize(
    "workload",
    [
        w.admission_pairs(200),
        w.rate_pairs(200),
        w.admission_contended(200, cap=8),
        w.placement_online(10, 300),
        w.placement_plan(10, 300),
        w.admission_composed(200),
    ],
    ids=["pairs", "rate_pairs", "contended", "online", "plan", "composed"],
)
def test_other_contenders_are_correct(workload: w.Workload) -> None:
    assert all(r.correct for r in run_workload(workload, repeats=1))


@pytest.mark.parametrize("shape", w.SHAPES)
@pytest.mark.parametrize("workers", [10, 200])
def test_pool_places_as_the_python_best_fit_does(workers: int, shape: str) -> None:
    workload = w.placement_pool(workers, 3_000, shape)
    answers = {name: make()() for name, make in workload.contenders.items()}
    assert set(answers) == {w.OURS, "python_best_fit", "numpy_best_fit"}
    assert len(set(answers.values())) == 1, answers
    assert answers[w.OURS][0] > 0


def test_plan_places_at_least_as_many_as_ffd() -> None:
    workload = w.placement_plan(10, 2_000)
    ours = workload.contenders[w.OURS]()()
    ffd = workload.contenders["python_ffd"]()()
    assert ours[0] >= ffd[0]


def test_cli_prints_a_ratio_table_in_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    groups = ["placement", "dag_event_loop", "admission"]
    assert main([*(f"--group={g}" for g in groups), "--scale", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "python_best_fit" in out and "rustworkx" in out and "peer÷ours" in out
    assert "two caps + rate" in out and "busy n=200 cap=16" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    # Nothing was wrapped to fit (a wrapped line goes on indented): each row is one line.
    assert not [line for line in out.splitlines() if line.startswith(" ")], out
    ratios = [line for line in out.splitlines() if re.search(r"\d\.\d\dx", line)]
    assert ratios and all(line.endswith(" yes") for line in ratios), ratios


def test_wide_prints_one_table_with_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--group", "admission", "--scale", "0.01", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "peer ÷ ours" in out and "rate uncontended n=1,000" in out


def test_without_peers_the_cli_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = w.optional
    monkeypatch.setattr(w, "optional", lambda name: None if name == "rustworkx" else real(name))
    assert main(["--group", "admission"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "rustworkx" in err and "pip install 'taskiq-flow[bench]'" in err
