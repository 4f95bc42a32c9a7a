"""Quick modes of `sernet bench model|frontend|pipeline --json` end with one parseable JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_json(*args: str, timeout: float = 240) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "sernet.cli", "bench", *args, "--quick", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


@pytest.fixture(scope="module")
def artifact() -> Path:
    pytest.importorskip("torch", reason="the bench fixture artifact is exported with torch")
    from bench.fixture import committed_or_fixture

    return committed_or_fixture()


def test_bench_model_quick_json(artifact: Path) -> None:
    # the TFLite peer needs TensorFlow (the [bench] extra, minutes to convert): not in the suite
    out = run_json("model", "--artifact", str(artifact), "--no-peer")
    assert out["bench"] == "model"
    for key in ("int8_vs_tflite_dynamic_b1", "int8_vs_tflite_dynamic_b1_steady",
                "int8_opt_vs_tflite_dynamic_b1", "ratios", "models",
                "peer", "peer_reason", "agreement", "targets", "machine"):
        assert key in out
    assert {"ort_fp32", "ort_int8", "ort_int8_opt"} <= set(out["models"])
    lat = out["models"]["ort_int8"]["threads_1"]["latency_ms_b1"]
    assert 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert out["models"]["ort_int8"]["threads_1"]["windows_per_s_b8"]["median"] > 0
    assert out["peer"] is None
    assert out["peer_reason"] and out["int8_vs_tflite_dynamic_b1"] is None
    assert out["int8_vs_tflite_dynamic_b1_steady"] is None
    steady = out["models"]["ort_int8"]["threads_1"]["latency_ms_b1_steady"]
    assert 0 < steady["min"] <= steady["median"] <= steady["max"]
    assert out["agreement"]["ort_int8_opt"]["max_abs_diff_vs_fp32"] < 0.05


def test_bench_frontend_quick_json() -> None:
    out = run_json("frontend")
    assert out["bench"] == "frontend"
    for key in ("streaming_vs_plain", "streaming_vs_plain_aligned_hop", "hops", "max_abs_diff",
                "plain_default_blas_vs_plain", "targets"):
        assert key in out
    assert out["max_abs_diff"] == 0.0  # both streaming paths are bit-identical to the plain one
    assert out["worker"]["windows_per_round"] == 8 * 3
    assert 0 < out["worker_streaming_vs_plain"] < 1
    # the floor transforms 63 of a window's 184 frames (not all of them) and logs all 184 rows
    assert 0.15 < out["worker_floor_vs_plain"] < 0.7
    assert out["worker"]["cpu_ms_per_window"]["log_dct"]["median"] > 0
    aligned = out["hops"]["aligned"]
    assert aligned["hop_samples"] % 256 == 0
    assert aligned["windows_per_s"]["streaming"]["median"] > 0


def test_bench_pipeline_fixed_n_json(artifact: Path) -> None:
    """Real tansu + a real worker process, 4 speakers: every window scored, and the run says
    what else loaded the machine (worker, bench process, whole machine)."""
    out = run_json("pipeline", "--artifact", str(artifact), "--speakers", "4", "--chunk-ms", "500",
                   "--audio-s", "5", "--repeats", "1", "--producer-linger-ms", "5",
                   "--partitions", "3", timeout=300)
    assert out["producer_linger_ms"] == 5  # the load generator's batching, echoed for the record
    assert out["partitions"] == 3  # the topics' partitions (tansu's fetch cost grows with them)
    (run,) = out["per_chunk_ms"]["500"]["runs"]
    assert run["complete"] and run["events"] == run["expected_events"] > 0
    assert run["expected_events"] % 4 == 0  # the same full windows for each speaker
    assert run["latency_ms"]["p99"] > 0
    assert 0 < run["worker_cpu_share_of_wall"] <= run["machine_cores_busy"] + 0.05
    assert run["bench_process_cores"] > 0
    assert run["broker_cores"] > 0  # tansu shares the machine's cores with the workers
    assert out["bare_batch"]["model_batch"] == 1
    assert out["efficiency_at_capacity"] == {}  # a fixed-N run searches no capacity
    # each run is compared with the bare cost measured right after it, not once per command
    assert run["bare_cpu_ms_per_window"] > 0 and run["efficiency"] == pytest.approx(
        run["worker_cpu_ms_per_window"] / run["bare_cpu_ms_per_window"], rel=1e-3)
    assert out["efficiency_runs"]["n"] == 1 and out["efficiency"] == run["efficiency"]
    assert out["bare_cpu_ms_per_window"] == run["bare_cpu_ms_per_window"]
    # the bare figure is the median of a few measurements, plain and streaming alike
    blocks = run["bare_blocks_ms"]
    assert len(blocks["plain"]) == len(blocks["streaming"]) == 3
    assert run["bare_cpu_ms_per_window"] == sorted(blocks["plain"])[1]
    assert run["bare_streaming_cpu_ms_per_window"] == sorted(blocks["streaming"])[1]
    # the worker's own batch histogram: every event's window went through its scoring thread
    fed = run["scorer_batches"]
    assert fed["windows"] >= run["events"] and fed["batches"] >= 1
    assert fed["wall_ms_per_window"] > 0
    # rates per second of the step's wall time (one worker here)
    assert fed["windows_per_s_per_worker"] == pytest.approx(fed["windows"] / run["wall_s"], rel=0.01,
                                                          abs=0.01)
    # and its own latency histogram: the worker's part of the end-to-end latency
    own = run["worker_latency"]
    assert own["windows"] >= run["events"] and 0 < own["mean_ms"] < run["latency_ms"]["max"]
    paced = run["paced_bare"]
    assert paced["batch"] >= 1 and paced["gap_ms"] > 0 and paced["cpu_ms_per_window"] > 0


def test_bench_help_names_env_vars() -> None:
    proc = subprocess.run([sys.executable, "-m", "sernet.cli", "bench", "model", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "SERNET_BENCH_ARTIFACT" in proc.stdout and "SERNET_BENCH_JSON" in proc.stdout


def _table_search(p99s: dict[int, list[float]], **kw) -> tuple[dict, list[int]]:
    """``search_capacity`` over a table of p99s per N, each N's runs answered in order (the
    last one repeats): a stand-in for real pipeline runs, whose p99 is a noisy sample."""
    from bench.pipeline import P99_LIMIT_MS, search_capacity

    calls: dict[int, int] = {}
    order: list[int] = []

    def step(n: int) -> dict:
        seq = p99s.get(n) or p99s[max(k for k in p99s if k <= n)]
        i = calls.get(n, 0)
        calls[n] = i + 1
        order.append(n)
        entry = seq[min(i, len(seq) - 1)]  # a p99, or (p99, cores other processes took)
        p99, other = entry if isinstance(entry, tuple) else (entry, 0.0)
        return {"speakers": n, "p99": p99, "machine_cores_busy": 1.0 + other,
                "worker_cpu_share_of_wall": 0.6, "bench_process_cores": 0.15, "broker_cores": 0.25}

    found = search_capacity(step, lambda r: r["p99"] <= P99_LIMIT_MS, start=32, limit=2048, **kw)
    assert [r["speakers"] for r in found["steps"]] == order
    return found, order


def test_capacity_search_bisects_between_last_pass_and_first_fail() -> None:
    # p99 rises with N: 32..256 pass, 512 fails; bisection stops within 352 // 8 = 44
    table = {32: [50], 64: [60], 128: [80], 256: [120], 320: [200], 384: [300], 512: [900]}
    found, order = _table_search(table)
    assert order == [32, 64, 128, 256, 512, 384, 320, 352]
    assert found["max_speakers"] == 352 and found["first_failing"] == 384
    assert found["rejected"] == []


def test_capacity_search_rejects_a_candidate_that_passed_by_luck() -> None:
    # 256 passes once, then fails both confirmations: the answer is 128, confirmed by repeats
    table = {32: [50], 64: [60], 128: [100, 110, 240], 256: [200, 300, 400], 512: [900]}
    found, order = _table_search(table, bisect=False, confirm=2)
    assert order == [32, 64, 128, 256, 512, 256, 256, 128, 128]
    assert found["max_speakers"] == 128 and found["first_failing"] == 256
    assert found["rejected"] == [{"speakers": 256, "passed": 1, "runs": 3}]


def test_capacity_search_keeps_a_candidate_most_of_whose_runs_pass() -> None:
    table = {32: [50], 64: [60], 128: [100], 256: [200, 260, 240], 512: [900]}
    found, order = _table_search(table, bisect=False, confirm=2)
    assert order == [32, 64, 128, 256, 512, 256, 256]
    assert found["max_speakers"] == 256 and found["rejected"] == []


def test_capacity_search_bisects_again_below_a_rejected_candidate() -> None:
    # 320 and 352 pass in the search but fail their repeats: each is rejected in turn and the
    # search goes on below them, between 256 and 320
    table = {32: [50], 256: [120], 288: [230], 320: [240, 300, 300], 352: [245, 280, 300],
             384: [300], 512: [900]}
    found, order = _table_search(table, confirm=2)
    assert order[:8] == [32, 64, 128, 256, 512, 384, 320, 352]
    assert order[8:] == [352, 352, 320, 320, 288, 288, 288]  # 288 is within 288 // 8 of 320
    assert found["max_speakers"] == 288 and found["first_failing"] == 320
    assert found["rejected"] == [{"speakers": 352, "passed": 1, "runs": 3},
                                 {"speakers": 320, "passed": 1, "runs": 3}]


def test_capacity_search_goes_below_its_start_and_reports_zero_if_nothing_passes() -> None:
    found, order = _table_search({1: [100], 16: [400]}, confirm=1)
    assert order == [32, 16, 8, 8] and found["max_speakers"] == 8
    found, order = _table_search({1: [400]}, confirm=2)
    assert order == [32, 16, 8] and found["max_speakers"] == 0 and found["first_failing"] == 8


def test_capacity_search_runs_again_a_step_that_failed_under_outside_load() -> None:
    # 128 fails while other processes keep 0.4 cores busy; the clean rerun decides
    from bench.pipeline import disturbed

    table = {32: [50], 64: [60], 128: [(300, 0.4), 100], 256: [900]}
    found, order = _table_search(table, bisect=False, disturbed=disturbed)
    assert order == [32, 64, 128, 128, 256]
    assert found["max_speakers"] == 128 and found["first_failing"] == 256
    assert found["disturbed"] == [128]
    assert found["steps"][2]["counted"] is False and "counted" not in found["steps"][3]


def test_capacity_search_counts_clean_failures_and_disturbed_passes_at_once() -> None:
    from bench.pipeline import disturbed

    # a failure with no outside load is final; a pass under outside load counts too
    table = {32: [50], 64: [(60, 0.5)], 128: [300, 100], 256: [900]}
    found, order = _table_search(table, bisect=False, disturbed=disturbed)
    assert order == [32, 64, 128] and found["max_speakers"] == 64 and found["disturbed"] == []


def test_capacity_search_reruns_a_disturbed_failure_at_most_retries_times() -> None:
    from bench.pipeline import disturbed

    table = {32: [50], 64: [60], 128: [(300, 0.4)], 256: [900]}
    found, order = _table_search(table, bisect=False, disturbed=disturbed, retries=2)
    assert order == [32, 64, 128, 128, 128]  # the third run counts whatever it saw
    assert found["max_speakers"] == 64 and found["first_failing"] == 128
    assert found["disturbed"] == [128, 128]


def test_other_cores_is_the_machine_less_the_runs_own_processes() -> None:
    from bench.pipeline import OTHER_LOAD_LIMIT_CORES, disturbed, other_cores

    # a 128 x 100 ms step on the Intel VM beside 0.34 cores of something else (steal)
    run = {"machine_cores_busy": 1.459, "worker_cpu_share_of_wall": 0.574,
           "bench_process_cores": 0.185, "broker_cores": 0.358}
    assert other_cores(run) == 0.342 and disturbed(run)
    run["machine_cores_busy"] = 1.117 + OTHER_LOAD_LIMIT_CORES
    assert not disturbed(run)
    assert other_cores({"speakers": 8}) is None and not disturbed({"speakers": 8})


def test_metric_total_sums_one_metric_over_its_labels_only() -> None:
    from bench.pipeline import metric_total

    text = ("# HELP sernet_batch_size Windows per inference batch.\n"
            "sernet_batch_size_count 12.0\n"
            "sernet_batch_size_sum 30.0\n"
            'sernet_windows_total{kind="full"} 7.0\n'
            'sernet_windows_total{kind="final"} 2.0\n'
            "sernet_windows_total_created 1.7e9\n")
    assert metric_total(text, "sernet_batch_size_count") == 12.0
    assert metric_total(text, "sernet_windows_total") == 9.0
    assert metric_total(text, "sernet_missing") == 0.0
    assert metric_total(text, "sernet_windows_total", kind="final") == 2.0
    assert metric_total(text, "sernet_windows_total", kind="other") == 0.0


def test_scoring_on_the_loop_moves_its_counted_cpu_from_the_loop_to_scoring() -> None:
    from bench.pipeline import with_scoring_on_loop

    split = {"event_loop": 3.0, "scoring": 0.05, "other": 0.01}  # one busy thread per worker
    texts = ['sernet_scoring_cpu_seconds_total{thread="loop"} 1.5\n',
             'sernet_scoring_cpu_seconds_total{thread="loop"} 0.5\n']
    assert with_scoring_on_loop(split, texts, windows=1000) == {
        "event_loop": 1.0, "scoring": 2.0, "other": 0.06}
    executor = ['sernet_scoring_cpu_seconds_total{thread="executor"} 2.0\n']
    assert with_scoring_on_loop(split, executor, windows=1000) == split  # thread split stands


def test_scorer_batches_rates_are_per_second_of_the_step_and_wall_per_window() -> None:
    from bench.pipeline import scorer_batches
    from worker.metrics import Metrics

    a, b = Metrics(), Metrics()
    for m, sizes in ((a, (4, 6)), (b, (10,))):
        for n in sizes:
            m.batch_size.observe(n)
            m.inference_s.observe(0.002 * n)  # 2 ms of scoring-thread wall time per window
    out = scorer_batches([a.render().decode(), b.render().decode()], wall_s=10.0)
    assert out["batches"] == 3 and out["windows"] == 20 and out["mean_batch"] == 6.67
    assert out["wall_ms_per_window"] == pytest.approx(2.0)
    assert out["batches_per_s_per_worker"] == 0.15 and out["windows_per_s_per_worker"] == 1.0
    assert scorer_batches([Metrics().render().decode()], wall_s=10.0) is None


def test_worker_latency_reads_the_workers_histograms_together() -> None:
    from bench.pipeline import worker_latency
    from worker.metrics import Metrics

    a, b = Metrics(), Metrics()
    for seconds in (0.02, 0.03, 0.2):
        a.event_latency_s.observe(seconds)
    b.event_latency_s.observe(0.4)
    out = worker_latency([a.render().decode(), b.render().decode()])
    assert out["windows"] == 4
    assert out["mean_ms"] == pytest.approx(1000 * (0.02 + 0.03 + 0.2 + 0.4) / 4, abs=0.1)
    assert out["share_over_100ms"] == 0.5 and out["share_over_250ms"] == 0.25
    assert worker_latency([Metrics().render().decode()]) is None  # no windows scored


def test_plots_and_budget_read_committed_results_by_default(tmp_path: Path) -> None:
    """The files ``python -m bench.plots`` and ``python -m bench.budget`` read without
    ``--prefix`` are in bench/results/, and both produce their whole output from them."""
    from bench import budget, plots
    from bench.common import RESULTS

    src = plots.sources()
    assert src["model"].name == f"{plots.PASS_PREFIX}model.json"
    assert src["frontend"].name == f"{plots.PASS_PREFIX}frontend.json"
    assert src["pipeline"] and all(p.name.startswith(plots.PASS_PREFIX) for p in src["pipeline"])
    written = plots.main(out_dir=tmp_path)
    assert sorted(p.name for p in written) == ["frontend_cpu.png", "model_latency_b1.png",
                                               "pipeline_budget.png", "pipeline_knee.png",
                                               "pipeline_latency.png", "pipeline_rss.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    assert all((RESULTS / p.name).is_file() for p in written)  # the committed PNGs are these
    report = budget.analyse(plots.PASS_PREFIX)
    assert report["knee"]["knee_cores"] is not None
    assert {row["chunk_ms"] for row in report["budget"]} == {100, 500}
