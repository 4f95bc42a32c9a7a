"""``sernet bench model``: per-window latency and throughput of the artifact's models, the
optimised int8 graph and the TFLite peer, all timed interleaved in one run.

Every configuration (threads x batch) runs ``repeats`` rounds; within a round the models are
called round-robin so that each ratio compares the same moments of a noisy machine. Ratios are
computed per round, then summarised (median, min, max). Round-robin means every call starts
with caches another model filled; batch 1 at one thread is also timed in steady state
(``*_steady``: blocks of back-to-back calls per model, as the worker calls its one model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.common import blocked, interleaved, machine, summary
from worker.artifact import load_artifact
from worker.model import EmotionModel

BATCHES = (1, 8, 32)
THREADS = (1, 2)
OPT_VARIANT = "int8_qdq_allops_dwpool"  # ort_int8_opt (bench/README.md, model)


def _features(n: int, seed: int = 0) -> np.ndarray:
    from bench.fixture import calibration_features

    return calibration_features(n, seed)


def load_models(artifact_dir: Path, threads: int, calibration: np.ndarray,
                peer: dict[str, Any], extra: dict[str, Path]) -> dict[str, Any]:
    art = load_artifact(artifact_dir)
    models: dict[str, Any] = {
        "ort_fp32": EmotionModel(art.model_path("fp32"), art.labels, threads=threads),
        "ort_int8": EmotionModel(art.model_path("int8"), art.labels, threads=threads),
    }
    for name, path in extra.items():
        models[f"ort_{name}"] = EmotionModel(path, art.labels, threads=threads)
    if peer.get("paths"):
        from bench.tflite_peer import TFLiteModel

        for kind, path in peer["paths"].items():
            models[f"tflite_{kind}"] = TFLiteModel(path, threads=threads)
    return models


def build_peer(fp32_path: Path, calibration: np.ndarray) -> dict[str, Any]:
    """``{"paths": {...}}`` or ``{"paths": None, "reason": ...}``."""
    from bench.tflite_peer import PeerUnavailable, convert

    try:
        import ai_edge_litert  # noqa: F401
    except ImportError as exc:
        return {"paths": None, "reason": f"ai-edge-litert not installed ({exc})"}
    try:
        return {"paths": {k: v for k, v in convert(fp32_path, calibration).items()}}
    except PeerUnavailable as exc:
        return {"paths": None, "reason": str(exc)}
    except Exception as exc:  # conversion is TensorFlow's; report, don't crash the bench
        return {"paths": None, "reason": f"conversion failed: {type(exc).__name__}: {exc}"}


def run(artifact_dir: Path, *, quick: bool = False, repeats: int = 5, peer: bool = True,
        optimised: bool = True) -> dict[str, Any]:
    artifact_dir = Path(artifact_dir)
    art = load_artifact(artifact_dir)
    calibration = _features(8 if quick else 32)
    batches = (1, 8) if quick else BATCHES
    threads_list = (1,) if quick else THREADS
    repeats = min(repeats, 2) if quick else repeats
    peer_info = build_peer(art.model_path("fp32"), calibration) if peer else {
        "paths": None, "reason": "disabled (--no-peer)"}
    extra: dict[str, Path] = {}
    if optimised:
        from bench.ort_variants import build_variants

        extra = build_variants(art.model_path("fp32"), calibration, [OPT_VARIANT])
        extra = {"int8_opt": extra[OPT_VARIANT]}

    x_all = _features(max(batches), seed=1)
    results: dict[str, Any] = {}
    rounds: dict[tuple[int, int], list[dict[str, float]]] = {}
    agreement: dict[str, dict[str, float]] = {}
    for threads in threads_list:
        models = load_models(artifact_dir, threads, calibration, peer_info, extra)
        if threads == threads_list[0]:
            ref = models["ort_fp32"].scores(x_all)
            for name, m in models.items():
                s = np.concatenate([m.scores(x_all[i : i + 1]) for i in range(len(x_all))])
                agreement[name] = {"max_abs_diff_vs_fp32": float(np.abs(s - ref).max()),
                                   "argmax_agreement": float(np.mean(s.argmax(1) == ref.argmax(1)))}
        for batch in batches:
            x = np.ascontiguousarray(x_all[:batch])
            calls = (10 if quick else 40) if batch == 1 else (3 if quick else max(4, 64 // batch))
            rounds[(threads, batch)] = [
                interleaved({k: (lambda m=m: m.scores(x)) for k, m in models.items()}, calls)
                for _ in range(repeats)]
        if threads == 1:  # steady state: each model's block of calls back to back
            x1 = np.ascontiguousarray(x_all[:1])
            steady = [blocked({k: (lambda m=m: m.scores(x1)) for k, m in models.items()},
                              block=10 if quick else 50) for _ in range(repeats)]
        for name in models:
            r = results.setdefault(name, {})
            r[f"threads_{threads}"] = {
                "latency_ms_b1": summary([rd[name] * 1e3 for rd in rounds[(threads, 1)]]),
                **({"latency_ms_b1_steady": summary([rd[name] * 1e3 for rd in steady])}
                   if threads == 1 else {}),
                **{f"windows_per_s_b{b}": summary([b / rd[name] for rd in rounds[(threads, b)]], 1)
                   for b in batches if b > 1}}

    def ratio(a: str, b: str, threads: int, batch: int) -> dict[str, float] | None:
        rds = rounds.get((threads, batch))
        if not rds or a not in rds[0] or b not in rds[0]:
            return None
        return summary([rd[a] / rd[b] for rd in rds])

    def steady_ratio(a: str, b: str) -> dict[str, float] | None:
        if a not in steady[0] or b not in steady[0]:
            return None
        return summary([rd[a] / rd[b] for rd in steady])

    ratios = {
        "int8_vs_tflite_dynamic_b1": ratio("ort_int8", "tflite_dynamic", 1, 1),
        # the same in steady state (blocks of back-to-back calls: the worker's pattern)
        "int8_vs_tflite_dynamic_b1_steady": steady_ratio("ort_int8", "tflite_dynamic"),
        "int8_opt_vs_tflite_dynamic_b1": ratio("ort_int8_opt", "tflite_dynamic", 1, 1),
        "int8_vs_tflite_int8_b1": ratio("ort_int8", "tflite_int8", 1, 1),
        "int8_opt_vs_tflite_int8_b1": ratio("ort_int8_opt", "tflite_int8", 1, 1),
        # throughput ratios (time fp32 / time int8): >= 1.5 is the target
        "fp32_vs_int8_throughput_b8": ratio("ort_fp32", "ort_int8", 1, 8),
        "fp32_vs_int8_opt_throughput_b8": ratio("ort_fp32", "ort_int8_opt", 1, 8),
    }
    out: dict[str, Any] = {
        "bench": "model", "quick": quick, "repeats": repeats,
        "artifact": str(artifact_dir), "artifact_name": art.name, "artifact_version": art.version,
        "input_shape": list(art.frontend.input_shape),
        "int8_vs_tflite_dynamic_b1": (ratios["int8_vs_tflite_dynamic_b1"] or {}).get("median"),
        "int8_opt_vs_tflite_dynamic_b1": (ratios["int8_opt_vs_tflite_dynamic_b1"] or {}).get("median"),
        "int8_vs_tflite_dynamic_b1_steady": (ratios["int8_vs_tflite_dynamic_b1_steady"] or {}).get("median"),
        "ratios": ratios,
        "peer": None if not peer_info.get("paths") else {
            "runtime": "ai-edge-litert", "kinds": sorted(peer_info["paths"])},
        "peer_reason": peer_info.get("reason"),
        "models": results, "agreement": agreement, "machine": machine(),
    }
    out["targets"] = {
        "int8_vs_tflite_dynamic_b1<=1.0": _le(out["int8_vs_tflite_dynamic_b1"], 1.0),
        "int8_opt_vs_tflite_dynamic_b1<=1.0": _le(out["int8_opt_vs_tflite_dynamic_b1"], 1.0),
        "int8_vs_tflite_dynamic_b1_steady<=1.0": _le(out["int8_vs_tflite_dynamic_b1_steady"], 1.0),
        "int8_throughput_b8>=1.5x_fp32": _ge(ratios["fp32_vs_int8_throughput_b8"], 1.5),
        "int8_opt_throughput_b8>=1.5x_fp32": _ge(ratios["fp32_vs_int8_opt_throughput_b8"], 1.5),
    }
    return out


def _le(v: float | None, limit: float) -> bool | None:
    return None if v is None else bool(v <= limit)


def _ge(r: dict | None, limit: float) -> bool | None:
    return None if r is None else bool(r["median"] >= limit)


def table(result: dict[str, Any]) -> str:
    """Markdown table of a model result."""
    lines = ["| model | threads | b1 latency ms (min-max) | b8 windows/s | b32 windows/s |",
             "|---|---|---|---|---|"]
    for name, per in result["models"].items():
        for tkey, r in per.items():
            b1 = r["latency_ms_b1"]
            cells = [f"{b1['median']:.2f} ({b1['min']:.2f}-{b1['max']:.2f})"]
            for b in (8, 32):
                v = r.get(f"windows_per_s_b{b}")
                cells.append(f"{v['median']:.0f} ({v['min']:.0f}-{v['max']:.0f})" if v else "-")
            lines.append(f"| {name} | {tkey.split('_')[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
