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
    aligned = out["hops"]["aligned"]
    assert aligned["hop_samples"] % 256 == 0
    assert aligned["windows_per_s"]["streaming"]["median"] > 0


def test_bench_pipeline_fixed_n_json(artifact: Path) -> None:
    """Real tansu + a real worker process, 4 speakers: every window scored, and the run says
    what else loaded the machine (worker, bench process, whole machine)."""
    out = run_json("pipeline", "--artifact", str(artifact), "--speakers", "4", "--chunk-ms", "500",
                   "--audio-s", "5", "--repeats", "1", timeout=300)
    (run,) = out["per_chunk_ms"]["500"]["runs"]
    assert run["complete"] and run["events"] == run["expected_events"] > 0
    assert run["expected_events"] % 4 == 0  # the same full windows for each speaker
    assert run["latency_ms"]["p99"] > 0
    assert 0 < run["worker_cpu_share_of_wall"] <= run["machine_cores_busy"] + 0.05
    assert run["bench_process_cores"] > 0
    assert out["bare_batch"]["model_batch"] == 1
    assert out["efficiency_at_capacity"] == {}  # a fixed-N run searches no capacity
    # each run is compared with the bare cost measured right after it, not once per command
    assert run["bare_cpu_ms_per_window"] > 0 and run["efficiency"] == pytest.approx(
        run["worker_cpu_ms_per_window"] / run["bare_cpu_ms_per_window"], rel=1e-3)
    assert out["efficiency_runs"]["n"] == 1 and out["efficiency"] == run["efficiency"]
    assert out["bare_cpu_ms_per_window"] == run["bare_cpu_ms_per_window"]


def test_bench_help_names_env_vars() -> None:
    proc = subprocess.run([sys.executable, "-m", "sernet.cli", "bench", "model", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "SERNET_BENCH_ARTIFACT" in proc.stdout and "SERNET_BENCH_JSON" in proc.stdout
