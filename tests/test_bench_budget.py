"""bench/budget.py: the knee of p99 against machine busy cores, and CPU per speaker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import budget

REPO = Path(__file__).resolve().parent.parent


def run(n: int, busy: float, p99: float | None, *, workers: float = 0.5, broker: float = 0.2,
        bench: float = 0.1, complete: bool = True) -> dict:
    return {"speakers": n, "machine_cores_busy": busy, "complete": complete,
            "latency_ms": {"p50": 10.0, "p99": p99}, "worker_cpu_share_of_wall": workers,
            "broker_cores": broker, "bench_process_cores": bench}


def test_cpu_per_speaker_is_cores_per_thousand_speakers() -> None:
    out = budget.cpu_per_speaker(run(500, 1.5, 100.0, workers=1.0, broker=0.3, bench=0.2))
    assert out == {"workers": 2.0, "broker": 0.6, "load_generator": 0.4, "machine": 3.0}
    assert budget.cpu_per_speaker({**run(500, 1.5, 100.0), "broker_cores": None}) is None


def test_passed_needs_every_window_and_p99_within_the_limit() -> None:
    assert budget.passed(run(10, 1.0, 250.0))
    assert not budget.passed(run(10, 1.0, 251.0))
    assert not budget.passed(run(10, 1.0, None))
    assert not budget.passed(run(10, 1.0, 100.0, complete=False))


def test_knee_counts_passes_per_band_and_finds_its_edges() -> None:
    runs = [run(1, 1.0, 90.0), run(2, 1.35, 120.0), run(3, 1.45, 300.0), run(4, 1.48, 200.0),
            run(5, 1.55, 400.0), run(6, 1.7, 900.0)]
    k = budget.knee(runs)
    bands = {(b["lo"], b["hi"]): (b["runs"], b["passed"]) for b in k["bands"]}
    assert bands[(0.0, 1.3)] == (1, 1) and bands[(1.3, 1.4)] == (1, 1)
    assert bands[(1.4, 1.5)] == (2, 1) and bands[(1.5, 1.6)] == (1, 0)
    assert bands[(1.6, float("inf"))] == (1, 0)
    assert k["all_pass_below"] == 1.45 and k["none_pass_above"] == 1.48
    assert k["knee_cores"] == pytest.approx(1.465)
    assert k["runs"] == 6


def search(good: int, first_failing: int, steps: list[dict], fractions: dict | None = None) -> dict:
    return {"workers": 2, "producer_linger_ms": 2,
            "per_chunk_ms": {"500": {"max_speakers_p99_le_250ms": good, "first_failing": first_failing,
                                     "search": steps, "at_fraction": fractions or {}}}}


def test_budget_takes_the_runs_near_the_edge_and_predicts_speakers_at_the_knee() -> None:
    steps = [run(32, 0.2, 50.0, workers=1.0, broker=1.0, bench=1.0),   # far below: left out
             run(256, 0.768, 80.0),                                     # 3.0 ms per speaker-s
             run(400, 1.4, 200.0),                                      # 3.5
             run(512, 1.6384, 600.0),                                   # 3.2
             run(1024, 1.9, 900.0)]                                     # past the first failing
    rows = budget.budget(search(400, 512, steps), knee_cores=1.5)
    assert len(rows) == 1
    row = rows[0]
    assert row["chunk_ms"] == 500 and row["runs"] == 3 and row["measured_capacity"] == 400
    assert row["cpu_ms_per_speaker_s"]["machine"] == 3.2  # the median
    assert row["speakers_at_knee"] == int(1500 / 3.2)
    assert budget.budget(search(0, 32, steps[:1]), knee_cores=1.5) == []  # nothing passed


def test_budget_leaves_out_the_steps_the_search_did_not_count() -> None:
    # 512 first failed beside other processes' load (not counted), then ran clean
    disturbed = {**run(512, 1.9, 600.0), "counted": False}                # 3.7 ms per speaker-s
    steps = [run(256, 0.768, 80.0), run(400, 1.4, 200.0), disturbed, run(512, 1.6384, 600.0)]
    row = budget.budget(search(400, 512, steps), knee_cores=1.5)[0]
    assert row["runs"] == 3 and row["cpu_ms_per_speaker_s"]["machine"] == 3.2


def test_analyse_reads_a_pass_and_prints_both_tables(tmp_path: Path) -> None:
    steps = [run(n, 0.003 * n, 100.0 if n <= 400 else 500.0, workers=0.002 * n,
                 broker=0.0007 * n, bench=0.0003 * n) for n in (128, 256, 400, 512)]
    (tmp_path / "x_pipeline_workers2.json").write_text(json.dumps(search(400, 512, steps)))
    (tmp_path / "x_pipeline_w2_n300.json").write_text(json.dumps(
        {"per_chunk_ms": {"100": {"runs": [run(300, 1.45, 300.0)]}}}))
    (tmp_path / "y_pipeline_workers2.json").write_text("not read: another prefix")
    report = budget.analyse("x_", tmp_path)
    assert report["files"] == 2 and report["knee"]["runs"] == 5
    assert report["knee"]["all_pass_below"] == 1.45 and report["knee"]["none_pass_above"] == 1.2
    (row,) = report["budget"]
    assert row["file"] == "x_pipeline_workers2.json"
    assert row["cpu_ms_per_speaker_s"]["machine"] == 3.0
    assert row["speakers_at_knee"] == int(1000 * report["knee"]["knee_cores"] / 3.0)
    text = budget.markdown(report)
    assert "| 1.4-1.5 | 1 | 0 |" in text and "| 500 | 2 | 3 |" in text


def test_budget_cli_reads_the_committed_pass() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.budget", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["knee"]["runs"] > 0 and report["budget"]
    assert {r["chunk_ms"] for r in report["budget"]} == {100, 500}
    assert "| machine cores busy |" in proc.stdout


def test_knee_without_a_failing_run_has_no_edge_and_no_budget(tmp_path: Path) -> None:
    k = budget.knee([run(1, 1.0, 90.0), run(2, 1.2, 100.0)])
    assert k["all_pass_below"] is None and k["none_pass_above"] == 1.2 and k["knee_cores"] is None
    (tmp_path / "z_pipeline_workers2.json").write_text(json.dumps(
        search(2, 4, [run(1, 1.0, 90.0), run(2, 1.2, 100.0)])))
    assert budget.analyse("z_", tmp_path)["budget"] == []


def test_ab_results_count_in_the_knee() -> None:
    ab = {"bench": "pipeline_ab", "chunk_ms": 100,
          "runs": [{"round": 0, "value": "a", "run": run(320, 1.2, 90.0)},
                   {"round": 0, "value": "b", "run": run(320, 1.7, 400.0)}]}
    got = list(budget.runs(ab))
    assert [c for c, _ in got] == [100, 100]
    k = budget.knee([r for _, r in got])
    assert k["runs"] == 2 and k["all_pass_below"] == 1.7 and k["none_pass_above"] == 1.2
