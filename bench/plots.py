"""PNG plots of the newest bench/results/*.json: ``python -m bench.plots`` (matplotlib).

* ``model_latency_b1.png``: batch-1 latency of every model, round-robin and steady state;
* ``frontend_cpu.png``: CPU per window, plain vs streaming (worker path and single speaker);
* ``pipeline_latency.png``: p50/p99 chunk-to-event latency against speakers, per chunk size,
  worker count and load-generator linger (capacity searches; a dot per run, the line through
  the medians), with the 250 ms target;
* ``pipeline_rss.png``: peak worker RSS against speakers, with the 200 MB target;
* ``pipeline_knee.png``: every pipeline run's p99 against the machine's busy cores;
* ``pipeline_budget.png``: CPU per real-time speaker (workers, tansu, load generator) per
  capacity search, against what 500 speakers under that knee allow (:mod:`bench.budget`).

The files are one machine's current results, named by their prefix (:data:`PASS_PREFIX`, the
Intel Xeon VM of bench/README.md, current results: ``intel_e_model.json``,
``intel_e_frontend.json``, ``intel_e_pipeline_workers*.json``); ``--prefix`` picks another.
Without a prefix's files, the highest ``_vN`` of each older family (``model_artifact_v6.json``
over ``model_artifact_v5.json``). Either way a fresh clone plots the same files as the author.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench import budget
from bench.common import RESULTS
PASS_PREFIX = "intel_e_"  # the Intel Xeon VM (bench/README.md, current results)


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
    out: dict[int, list[dict[str, Any]]] = {}
    for chunk, run in budget.runs(result):
        out.setdefault(chunk, []).append(run)
    return {chunk: sorted(steps, key=lambda s: s["speakers"]) for chunk, steps in out.items()}


def _medians(steps: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per number of speakers (ascending), the median p50, p99 and peak RSS of its runs."""
    import statistics

    out: dict[int, dict[str, float]] = {}
    for n in sorted({s["speakers"] for s in steps}):
        runs = [s for s in steps if s["speakers"] == n]
        out[n] = {"p50": statistics.median(s["latency_ms"]["p50"] for s in runs),
                  "p99": statistics.median(s["latency_ms"]["p99"] for s in runs),
                  "rss": statistics.median(s["peak_rss_mb"] for s in runs)}
    return out


def sources(prefix: str = PASS_PREFIX) -> dict[str, Any]:
    """The results files the plots read: ``model`` and ``frontend`` (a path or None) and
    ``pipeline`` (capacity searches, a list), the prefix's own where it has them."""
    def pick(name: str, legacy: str) -> Path | None:
        own = RESULTS / f"{prefix}{name}.json"
        return own if own.is_file() else newest(legacy)

    searches = sorted(RESULTS.glob(f"{prefix}pipeline_workers*.json"))
    if not searches:  # older passes: the newest search per worker count
        latest: dict[int, tuple[int, Path]] = {}
        for path in sorted(RESULTS.glob("pipeline_v*_workers*.json")):
            r = _load(path)
            if r and r.get("per_chunk_ms"):
                if r["workers"] not in latest or _version(path) >= latest[r["workers"]][0]:
                    latest[r["workers"]] = (_version(path), path)
        searches = [path for _, path in sorted(latest.values())]
    return {"model": pick("model", "model_artifact_v*.json"),
            "frontend": pick("frontend", "frontend_v*.json"), "pipeline": searches}


def main(out_dir: Path = RESULTS, prefix: str = PASS_PREFIX) -> list[Path]:
    """Write the PNGs into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = sources(prefix)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)

    model = _load(src["model"])
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
        save(fig, "model_latency_b1.png")

    fe = _load(src["frontend"])
    if fe:
        worker_ms = fe["worker"]["cpu_ms_per_window"]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar(["worker path\nplain", "worker path\nstreaming"],
               [worker_ms[k]["median"] for k in ("plain", "streaming")], color=["C0", "C1"])
        if "new_frames" in worker_ms:  # what no exact streaming frontend skips (README, targets)
            new, log_dct = worker_ms["new_frames"]["median"], worker_ms["log_dct"]["median"]
            ax.bar(["worker path\nexact floor"], [new], color="C2", label="new frames' transforms")
            ax.bar(["worker path\nexact floor"], [log_dct], bottom=[new], color="C3",
                   label="log/DCT of all 184 rows")
            ax.axhline(worker_ms["plain"]["median"] / 3, color="k", ls="--", lw=1,
                       label="target: 1/3 of plain (worker path)")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.15, 0.98))  # over the low bars
        labels, vals = [], []
        for name, h in fe["hops"].items():
            for k in ("plain", "streaming"):
                labels.append(f"1 speaker, {k}\nhop {h['hop_s']:.3f} s")
                vals.append(h["cpu_ms_per_window"][k]["median"])
        ax.bar(labels, vals, color=["C0", "C1"] * (len(vals) // 2))
        ax.set_ylabel("CPU ms per window (median)")
        ax.set_title(f"MFCC frontend: worker path streaming/plain = {fe['worker_streaming_vs_plain']}"
                     + (f", exact floor {fe['worker_floor_vs_plain']}"
                        if "worker_floor_vs_plain" in fe else ""))
        plt.xticks(fontsize=8)
        fig.tight_layout()
        save(fig, "frontend_cpu.png")

    searches = [(p, r) for p, r in ((p, _load(p)) for p in src["pipeline"])
                if r and r.get("per_chunk_ms")]
    if searches:
        fig_l, ax_l = plt.subplots(figsize=(8, 4.5))
        fig_r, ax_r = plt.subplots(figsize=(8, 4.5))
        for path, r in searches:
            workers = r["workers"]
            linger = r.get("producer_linger_ms")
            # several searches of one pass: each named by its file
            which = f" ({Path(path).stem})" if len(searches) > 1 else ""
            for chunk, steps in sorted(_steps(r).items()):
                label = (f"{workers} worker{'s' if workers > 1 else ''}, {chunk} ms chunks"
                         + (f", linger {linger} ms" if linger is not None else "") + which)
                # every run a dot; the line through the median of the runs at each N
                n = [s["speakers"] for s in steps]
                by_n = _medians(steps)
                p99 = [s["latency_ms"]["p99"] for s in steps]
                line, = ax_l.plot(list(by_n), [m["p99"] for m in by_n.values()], "-",
                                  label=f"{label}: p99")
                ax_l.plot(n, p99, "o", color=line.get_color(), ms=4)
                ax_l.plot(list(by_n), [m["p50"] for m in by_n.values()], ":",
                          color=line.get_color(), label=f"{label}: p50")
                ax_r.plot(list(by_n), [m["rss"] for m in by_n.values()], "o-", label=label)
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
            save(fig, name)
    loaded = budget.load(prefix, RESULTS)
    report = budget.analyse(prefix, loaded=loaded)
    if report["knee"]["runs"]:
        save(_knee_figure(plt, prefix, loaded, report), "pipeline_knee.png")
    if report["budget"]:
        save(_budget_figure(plt, report), "pipeline_budget.png")
    return written


def _knee_figure(plt, prefix: str, loaded: dict[str, dict[str, Any]], report: dict[str, Any]):
    """Every pipeline run of the pass (``loaded``: :func:`bench.budget.load`): p99 against the
    whole machine's busy cores."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in loaded.values():
        for chunk, r in budget.runs(result):
            if r.get("machine_cores_busy") is None or r["latency_ms"]["p99"] is None:
                continue
            ax.plot(r["machine_cores_busy"], r["latency_ms"]["p99"],
                    "o" if budget.passed(r) else "x", color="C0" if chunk == 100 else "C1", ms=5)
    for chunk, color in ((100, "C0"), (500, "C1")):
        ax.plot([], [], "o", color=color, label=f"{chunk} ms chunks")
    ax.plot([], [], "x", color="grey", label="failed (p99 > 250 ms or windows missing)")
    ax.axhline(budget.P99_LIMIT_MS, color="red", lw=1, ls="--", label="target p99 250 ms")
    k = report["knee"]
    if k["knee_cores"] is not None:
        ax.axvspan(k["all_pass_below"], k["none_pass_above"], color="grey", alpha=0.2,
                   label=f"knee: all passed below {k['all_pass_below']}, "
                         f"none above {k['none_pass_above']}")
    ax.set_yscale("log")
    ax.set_xlabel("machine cores busy (workers + tansu + load generator), of 2")
    ax.set_ylabel("chunk-to-event p99, ms")
    ax.set_title(f"The latency target is a CPU budget ({k['runs']} runs, {prefix}*)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _budget_figure(plt, report: dict[str, Any]):
    """CPU per real-time speaker by who spends it, per capacity search, against what 500
    speakers under the knee allow."""
    rows = sorted(report["budget"], key=lambda r: (r["chunk_ms"], r["producer_linger_ms"] or 0))
    labels = [f"{r['chunk_ms']} ms chunks\nlinger {r['producer_linger_ms']} ms\n"
              f"fits {r['speakers_at_knee']}, measured {r['measured_capacity']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for part, name in (("workers", "workers"), ("broker", "tansu (test broker)"),
                       ("load_generator", "load generator")):
        vals = [r["cpu_ms_per_speaker_s"][part] for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    allowed = 1000.0 * report["knee"]["knee_cores"] / 500
    ax.axhline(allowed, color="red", lw=1, ls="--",
               label=f"500 speakers under the knee: {allowed:.2f} ms per speaker-s")
    ax.set_ylabel("CPU-ms per speaker per second of audio")
    ax.set_title("What a real-time speaker costs the 2-core machine (runs near capacity)")
    ax.legend(fontsize=7)
    plt.xticks(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=PASS_PREFIX,
                        help=f"results of which pass (file-name prefix; default {PASS_PREFIX})")
    for path in main(prefix=parser.parse_args().prefix):
        print(path)
