"""``taskiq-flow bench --group orchestrators``: ours against whichever of Dask and Ray are
installed, each contender in its own process, every answer checked, the tables in 80 columns; and
the bench's ``--scale`` checked before anything runs."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from taskiq_flow.bench import main
from taskiq_flow.bench import orchestrators as o

PEERS = {"dask threaded": "dask", "dask distributed": "distributed", "ray": "ray"}
INSTALLED = [name for name, module in PEERS.items() if importlib.util.find_spec(module)]
OURS = ["taskiq-flow", "taskiq-flow redis"]
#: What ``--scale 0.001`` makes of the workloads (each at its floor).
TINY = ["layered 64", "map 32", "chain 4"]


def test_the_layered_dag_has_32_layers_of_1_to_4_parents_from_the_layer_before() -> None:
    parents = o.layered_parents(1_000)
    assert parents == o.layered_parents(1_000)  # seeded: one graph for every process
    depth = o.expected(o.Spec("layered", 1_000))
    assert Counter(depth) == {
        d: (32 if d <= 8 else 31) for d in range(1, 33)
    }  # 1,000 = 8 x 32 + ...
    counts = Counter(len(ps) for ps in parents[32:])
    assert set(counts) == {1, 2, 3, 4}, counts
    assert all(depth[p] == depth[v] - 1 for v, ps in enumerate(parents) for p in ps)
    assert parents[:32] == [()] * 32


@pytest.mark.parametrize("kind", ["layered", "map", "chain"])
def test_a_wrong_answer_is_not_taken_for_a_right_one(kind: str) -> None:
    spec = o.Spec(kind, 100)
    right = o.expected(spec)
    assert o.check(spec, right)
    wrong = [*right[:-1], right[-1] + 1] if isinstance(right, list) else right + 1
    assert not o.check(spec, wrong)
    assert not o.check(spec, None)


def test_a_wrong_answer_shows_no_in_the_table() -> None:
    spec = o.Spec("chain", 4)
    outcome = o.Outcome(runs=1)
    outcome.times[("taskiq-flow", spec)] = [0.001]
    outcome.ok[("taskiq-flow", spec)] = False
    row = next(ln for ln in o.report(outcome).splitlines() if ln.startswith("chain 4"))
    assert row.split()[-1] == "NO", row


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, object]]]:
    out_json = tmp_path / "out.json"
    status = main(["--group", "orchestrators", "--scale", "0.001", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert status == 0, out
    return out, json.loads(out_json.read_text())["results"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "peers", [[], *([INSTALLED] if INSTALLED else [])], ids=lambda p: "+".join(p) or "ours only"
)
def test_ours_and_the_peers_given_give_right_answers_in_80_columns(
    peers: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The peers not given are hidden from the bench (as if not installed).
    hidden = {PEERS[name] for name in PEERS if name not in peers}
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    out, results = _run(tmp_path, capsys)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    ran = {(r["contender"], r["workload"]) for r in results}
    assert ran == {(c, w) for c in OURS + peers for w in TINY}, ran
    assert all(r["correct"] for r in results), results
    for r in results:
        assert r["seconds"] > 0 and (r["ratio"] is None) == (r["contender"] in OURS), r
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(tuple(TINY))]
    assert len(rows) == len(results)
    assert all(row[-1] == "yes" for row in rows), out
    for name in peers:
        line = next(ln for ln in out.splitlines() if ln.startswith("chain 4") and name in ln)
        assert line.split()[-2].endswith("x") and math.isfinite(float(line.split()[-2][:-1]))
    for name in set(PEERS) - set(peers):
        assert f"{name}: not run, " in out and "pip install 'taskiq-flow[peers]'" in out
    assert "did not finish" not in out
    assert "machine: " in out and "CPUs" in out


@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf", "x", ""])
def test_a_bad_scale_is_one_line_and_exit_status_2(scale: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "taskiq_flow.cli", "bench", "--scale", scale],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("taskiq-flow bench: argument --scale: ")
    assert repr(scale) in proc.stderr
