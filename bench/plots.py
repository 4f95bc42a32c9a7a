"""PNG plots of the newest bench/results/*.json: ``python -m bench.plots`` (matplotlib).

* ``model_latency_b1.png``: batch-1 latency of every model, round-robin and steady state;
* ``frontend_cpu.png``: CPU per window, plain vs streaming (worker path and single speaker);
* ``pipeline_latency.png``: p50/p99 chunk-to-event latency against speakers, per chunk size
  and worker count (capacity searches), with the 250 ms target;
* ``pipeline_rss.png``: peak worker RSS against speakers, with the 200 MB target.

"Newest" is the highest ``_vN`` of each file family (``model_artifact_v6.json`` over
``model_artifact_v5.json``), so a fresh clone plots the same files as the author.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _version(path: Path) -> int:
    """The ``N`` of a results file named ``..._vN...`` (-1 without one)."""
    m = re.search(r"_v(\d+)", path.name)
    return int(m.group(1)) if m else -1


def newest(pattern: str) -> Path | None:
    """The file matching ``pattern`` (a glob with one ``_v*``) with the highest version."""
    files = sorted(RESULTS.glob(pattern), key=_version)
    return files[-1] if files else None


def _load(path: Path | None) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path and path.is_file() else None


def _steps(result: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Capacity-search steps per chunk size, sorted by speakers."""
    out = {}
    for chunk, r in result.get("per_chunk_ms", {}).items():
        fractions = r.get("at_fraction") or []
        fractions = list(fractions.values()) if isinstance(fractions, dict) else list(fractions)
        runs = r.get("search", []) + fractions or r.get("runs", [])
        if runs:
            out[int(chunk)] = sorted(runs, key=lambda s: s["speakers"])
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = _load(newest("model_artifact_v*.json"))
    if model:
        names = list(model["models"])
        t1 = [model["models"][n]["threads_1"] for n in names]
        rr = [t["latency_ms_b1"]["median"] for t in t1]
        steady = [t.get("latency_ms_b1_steady", {}).get("median", 0.0) for t in t1]
        x = range(len(names))
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar([i - 0.2 for i in x], rr, width=0.4, label="round-robin (cold caches)")
        ax.bar([i + 0.2 for i in x], steady, width=0.4, label="steady state (back to back)")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("ms per window, batch 1, 1 thread")
        ax.set_title("Light-SERNet latency: onnxruntime vs TFLite (median of rounds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "model_latency_b1.png", dpi=110)
        plt.close(fig)

    fe = _load(newest("frontend_v*.json"))
    if fe:
        labels, vals = [], []
        for k in ("plain", "streaming"):
            labels.append(f"worker path\n{k}")
            vals.append(fe["worker"]["cpu_ms_per_window"][k]["median"])
        for name, h in fe["hops"].items():
            for k in ("plain", "streaming"):
                labels.append(f"1 speaker, {k}\nhop {h['hop_s']:.3f} s")
                vals.append(h["cpu_ms_per_window"][k]["median"])
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar(labels, vals, color=["C0", "C1"] * (len(vals) // 2))
        ax.set_ylabel("CPU ms per window (median)")
        ax.set_title(f"MFCC frontend: worker path streaming/plain = {fe['worker_streaming_vs_plain']}")
        plt.xticks(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "frontend_cpu.png", dpi=110)
        plt.close(fig)

    searches = [(p, _load(p)) for p in sorted(RESULTS.glob("pipeline_v*_workers*.json"))]
    latest = {}
    for path, r in searches:  # per worker count, the newest search
        if r and r.get("per_chunk_ms"):
            key = r["workers"]
            if key not in latest or _version(path) >= latest[key][0]:
                latest[key] = (_version(path), path, r)
    if latest:
        fig_l, ax_l = plt.subplots(figsize=(8, 4.5))
        fig_r, ax_r = plt.subplots(figsize=(8, 4.5))
        for workers, (_, path, r) in sorted(latest.items()):
            for chunk, steps in sorted(_steps(r).items()):
                n = [s["speakers"] for s in steps]
                label = f"{workers} worker{'s' if workers > 1 else ''}, {chunk} ms chunks"
                line, = ax_l.plot(n, [s["latency_ms"]["p99"] for s in steps], "o-", label=f"{label}: p99")
                ax_l.plot(n, [s["latency_ms"]["p50"] for s in steps], "o:", color=line.get_color(),
                          label=f"{label}: p50")
                ax_r.plot(n, [s["peak_rss_mb"] for s in steps], "o-", label=label)
        ax_l.set_yscale("log")
        for fig, ax, target, ylabel, title, name in (
                (fig_l, ax_l, (250, "target p99 250 ms"), "chunk-to-event latency, ms",
                 "Pipeline latency on 2 shared cores (tansu + workers + bench)", "pipeline_latency.png"),
                (fig_r, ax_r, (200, "target 200 MB"), "peak RSS of the larger worker, MB",
                 "Worker memory", "pipeline_rss.png")):
            ax.axhline(target[0], color="red", lw=1, ls="--", label=target[1])
            ax.set_xlabel("real-time speakers")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(RESULTS / name, dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
