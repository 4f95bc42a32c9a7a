"""What a pipeline capacity is made of: ``python -m bench.budget [--prefix genoa4_] [--json]``.

Reads saved ``sernet bench pipeline`` results (no new runs) and prints two markdown tables:

* **the knee**: every run's p99 verdict against the whole machine's busy cores
  (``machine_cores_busy``: workers, tansu, the load generator and everything else). On the
  2-vCPU VMs measured (bench/README.md, how capacity is budgeted) every run below ~70-75 % busy
  met p99 <= 250 ms and none above ~80 % did, whatever the chunk size or linger: the latency
  target is a CPU budget.
* **the budget**: per capacity search (chunk size, load-generator linger), the CPU each
  real-time speaker costs per second of audio, split into the workers, the broker and the load
  generator (all three share the cores here), and the speakers that fit under the knee at that
  cost, beside the capacity the search measured.

Pure functions over the results' dicts, so tests build runs by hand.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Iterator

from bench.common import RESULTS
from bench.pipeline import P99_LIMIT_MS, counted, passed  # the capacity search's own verdicts
# machine busy-core edges of the knee table (2-vCPU machines)
EDGES = (0.0, 1.3, 1.4, 1.5, 1.6, float("inf"))


def runs(result: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(chunk_ms, run)`` for every run of a pipeline result: a capacity search's steps and
    its runs at 25/50/75 % of the capacity, the runs of a fixed-N result, or every run of an
    A/B (``--compare``)."""
    if result.get("bench") == "pipeline_ab":
        for item in result.get("runs", []):
            yield int(result["chunk_ms"]), item["run"]
        return
    for chunk, entry in result.get("per_chunk_ms", {}).items():
        fractions = entry.get("at_fraction") or []
        fractions = list(fractions.values()) if isinstance(fractions, dict) else list(fractions)
        for r in entry.get("search", []) + fractions or entry.get("runs", []):
            yield int(chunk), r


def cpu_per_speaker(run: dict[str, Any]) -> dict[str, float] | None:
    """CPU-ms per second per real-time speaker, by who spends it (cores x 1000 / speakers);
    ``machine`` is the whole machine (the rest is the kernel and other processes)."""
    busy = run.get("machine_cores_busy")
    if busy is None or run.get("broker_cores") is None:
        return None
    n = run["speakers"]
    parts = {"workers": run["worker_cpu_share_of_wall"], "broker": run["broker_cores"],
             "load_generator": run["bench_process_cores"], "machine": busy}
    return {k: round(1000.0 * v / n, 3) for k, v in parts.items()}


def knee(all_runs: list[dict[str, Any]], edges: tuple[float, ...] = EDGES) -> dict[str, Any]:
    """Runs and passes per band of machine busy cores, and where the verdicts change in the
    data: ``all_pass_below`` (the least busy failing run: every run below it passed),
    ``none_pass_above`` (the busiest passing run: none busier passed), ``knee_cores`` their
    midpoint (None without both a failing and a passing run)."""
    rated = [(r["machine_cores_busy"], passed(r)) for r in all_runs
             if r.get("machine_cores_busy") is not None]
    bands = []
    for lo, hi in zip(edges, edges[1:]):
        inside = [ok for busy, ok in rated if lo <= busy < hi]
        bands.append({"lo": lo, "hi": hi, "runs": len(inside), "passed": sum(inside)})
    failing = [busy for busy, ok in rated if not ok]
    passing = [busy for busy, ok in rated if ok]
    all_pass_below = min(failing) if failing else None
    none_pass_above = max(passing) if passing else None
    mid = (None if all_pass_below is None or none_pass_above is None
           else round((all_pass_below + none_pass_above) / 2, 3))
    return {"bands": bands, "runs": len(rated), "all_pass_below": all_pass_below,
            "none_pass_above": none_pass_above, "knee_cores": mid}


def budget(result: dict[str, Any], knee_cores: float) -> list[dict[str, Any]]:
    """Per chunk size of a capacity search: the median CPU per speaker of its runs from half
    the capacity up to the first failing step (where the fixed costs are amortised as at the
    edge), and the speakers that ``knee_cores`` busy cores hold at that cost."""
    out = []
    for chunk, entry in result.get("per_chunk_ms", {}).items():
        good = entry.get("max_speakers_p99_le_250ms")
        if not good:
            continue
        top = entry.get("first_failing") or good
        # a step the search did not count ran beside other processes' load (its machine cost
        # is theirs too): left out
        costs = [c for _, r in runs({"per_chunk_ms": {chunk: entry}})
                 if good / 2 <= r["speakers"] <= top and counted(r)
                 and (c := cpu_per_speaker(r)) is not None]
        if not costs:
            continue
        med = {k: round(statistics.median(c[k] for c in costs), 2) for k in costs[0]}
        out.append({"chunk_ms": int(chunk), "workers": result.get("workers"),
                    "producer_linger_ms": result.get("producer_linger_ms"),
                    "runs": len(costs), "cpu_ms_per_speaker_s": med,
                    "speakers_at_knee": int(1000.0 * knee_cores / med["machine"]),
                    "measured_capacity": good})
    return out


def load(prefix: str, results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every pipeline result of a pass (``{prefix}pipeline*.json``), by file name, sorted."""
    return {p.name: json.loads(p.read_text())
            for p in sorted(results.glob(f"{prefix}pipeline*.json"))}


def analyse(prefix: str, results: Path = RESULTS,
            loaded: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The knee over every pipeline result of ``prefix`` and the budget of its capacity
    searches (``{prefix}pipeline_workers*.json``); ``loaded``: those results already read
    (:func:`load`)."""
    if loaded is None:
        loaded = load(prefix, results)
    k = knee([r for res in loaded.values() for _, r in runs(res)])
    rows = []
    if k["knee_cores"] is not None:
        for name, res in loaded.items():
            if name.startswith(f"{prefix}pipeline_workers"):
                rows += [{"file": name, **row} for row in budget(res, k["knee_cores"])]
    return {"prefix": prefix, "files": len(loaded), "knee": k, "budget": rows}


def markdown(report: dict[str, Any]) -> str:
    k = report["knee"]
    lines = [f"Knee ({k['runs']} runs of {report['files']} `{report['prefix']}pipeline*` files):",
             "", "| machine cores busy | runs | p99 <= 250 ms |", "|---|---|---|"]
    for b in k["bands"]:
        hi = "" if b["hi"] == float("inf") else f"{b['hi']:.1f}"
        lines.append(f"| {b['lo']:.1f}-{hi} | {b['runs']} | {b['passed']} |")
    lines += ["", f"Every run below {k['all_pass_below']} busy cores passed; none above "
              f"{k['none_pass_above']}; knee {k['knee_cores']} cores.", "",
              "| chunk ms | linger ms | runs | workers | broker | load generator | machine "
              "(CPU-ms per speaker-s) | speakers at the knee | measured |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["budget"], key=lambda r: (r["chunk_ms"], r["producer_linger_ms"] or 0)):
        c = r["cpu_ms_per_speaker_s"]
        lines.append(f"| {r['chunk_ms']} | {r['producer_linger_ms']} | {r['runs']} | {c['workers']} | "
                     f"{c['broker']} | {c['load_generator']} | {c['machine']} | "
                     f"{r['speakers_at_knee']} | {r['measured_capacity']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    from bench.plots import PASS_PREFIX

    parser = argparse.ArgumentParser(prog="python -m bench.budget",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=PASS_PREFIX,
                        help=f"results of which pass (file-name prefix; default {PASS_PREFIX})")
    parser.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    args = parser.parse_args()
    report = analyse(args.prefix)
    print(markdown(report))
    if args.json:
        print(json.dumps(report))
