"""``sernet bench pipeline --compare``: the A/B's parsing, round order and same-round ratios
(pure functions on saved-run shapes; the runs themselves are what ``bench pipeline`` measures)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.pipeline import ab_summary, ab_table, parse_compare, round_orders


def _run(cpu: float, loop: float, p99: float, busy: float = 1.0) -> dict:
    return {"worker_cpu_ms_per_window": cpu,
            "worker_thread_cpu_ms_per_window": {"event_loop": loop, "scoring": cpu - loop},
            "machine_cores_busy": busy, "broker_cores": 0.4, "peak_rss_mb": 150.0,
            "latency_ms": {"p99": p99}, "complete": True}


def test_parse_compare() -> None:
    assert parse_compare("SERNET_X=1,0") == ("SERNET_X", ["1", "0"])
    assert parse_compare(" SERNET_X = a , b ,c") == ("SERNET_X", ["a", "b", "c"])
    for bad in ("SERNET_X", "=1,2", "SERNET_X=1", "SERNET_X=1,1", "SERNET_X=1,", "1X=1,2",
                "SERNET-X=1,2"):
        with pytest.raises(ValueError):
            parse_compare(bad)


def test_rounds_alternate_order() -> None:
    assert round_orders(["a", "b"], 3) == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert round_orders(["a", "b", "c"], 2) == [["a", "b", "c"], ["c", "b", "a"]]


def test_ratios_pair_runs_of_the_same_round() -> None:
    # the machine is 2x slower in round 1: per-value medians mix that in, same-round ratios do not
    runs = [{"round": 0, "value": "a", "run": _run(2.0, 1.0, 100)},
            {"round": 0, "value": "b", "run": _run(1.8, 0.9, 90)},
            {"round": 1, "value": "b", "run": _run(3.6, 1.8, 400)},
            {"round": 1, "value": "a", "run": _run(4.0, 2.0, 200)}]
    ab = ab_summary("SERNET_X", ["a", "b"], runs)
    ratio = ab["vs_baseline_same_round"]["b"]
    assert ratio["worker_cpu_ms_per_window"] == {"median": 0.9, "min": 0.9, "max": 0.9, "n": 2}
    assert ratio["event_loop_cpu_ms_per_window"]["median"] == 0.9
    assert ratio["p99_ms"]["min"] == 0.9 and ratio["p99_ms"]["max"] == 2.0
    assert ab["per_value"]["a"]["worker_cpu_ms_per_window"]["median"] == 3.0
    assert ab["per_value"]["a"]["passed"] == 2 and ab["per_value"]["b"]["passed"] == 1
    assert "a" not in ab["vs_baseline_same_round"]
    table = ab_table({"ab": ab})
    assert "| worker_cpu_ms_per_window | 3.0 | 2.7 | 0.9 (0.9-0.9) |" in table
    assert "| p99 <= 250 ms | 2 of 2 | 1 of 2 |" in table


def test_a_round_missing_a_value_is_not_paired() -> None:
    runs = [{"round": 0, "value": "a", "run": _run(2.0, 1.0, 100)},
            {"round": 0, "value": "b", "run": _run(1.0, 0.5, 100)},
            {"round": 1, "value": "b", "run": _run(9.0, 4.5, 100)}]
    ratio = ab_summary("V", ["a", "b"], runs)["vs_baseline_same_round"]["b"]
    assert ratio["worker_cpu_ms_per_window"]["n"] == 1
    assert ratio["worker_cpu_ms_per_window"]["median"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--compare", "SERNET_X"], "Invalid value for --compare"),
    (["--compare", "SERNET_X=1,0"], "--compare needs --speakers"),
])
def test_cli_rejects_bad_compare(args: list[str], message: str) -> None:
    from bench.cli import bench

    result = CliRunner().invoke(bench, ["pipeline", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_compare_runs_each_value_with_its_env_and_pairs_them(monkeypatch) -> None:
    import bench.pipeline as bp

    seen = []

    def fake_run(artifact_dir, *, speakers, repeats, extra_env, log, **kw):
        seen.append((extra_env["SERNET_X"], extra_env.get("KEEP"), speakers, repeats))
        cpu = {"1": 2.0, "0": 3.0}[extra_env["SERNET_X"]]
        return {"per_chunk_ms": {"100": {"runs": [{**_run(cpu, cpu / 2, 120), "chunk_ms": 100}]}}}

    monkeypatch.setattr(bp, "run", fake_run)
    out = bp.compare("art", "SERNET_X", ["1", "0"], rounds=3, speakers=64,
                     extra_env={"KEEP": "k"}, log=lambda m: None, workers=2)
    assert [s[0] for s in seen] == ["1", "0", "0", "1", "1", "0"]
    assert all(s[1:] == ("k", 64, 1) for s in seen)
    assert out["bench"] == "pipeline_ab" and out["workers"] == 2 and out["chunk_ms"] == 100
    ratio = out["ab"]["vs_baseline_same_round"]["0"]["worker_cpu_ms_per_window"]
    assert ratio == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 3}
