"""Timing helpers: interleaved rounds so that ratios come from the same moments of a noisy
shared machine, and median/min/max summaries over repeats."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import click

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def summary(values: list[float], digits: int = 4) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of ``values``."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def interleaved(fns: dict[str, Callable[[], Any]], calls: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each ``fn``, calling them round-robin ``calls`` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def blocked(fns: dict[str, Callable[[], Any]], block: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per call of each ``fn``, each timed over ``block`` back-to-back calls
    (after ``warmup``), the functions' blocks one after another: steady state, caches warm
    with one model, as a worker calling one model again and again sees it. Repeat the call to
    interleave rounds."""
    out = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(block):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def cpu_seconds(fn: Callable[[], Any], calls: int) -> float:
    """Process CPU seconds per call (user + system, all threads)."""
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "machine": platform.machine()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def emit(result: dict[str, Any], as_json: bool, save: str | None) -> None:
    """Write ``result`` to ``save`` (if given) and end stdout with it as ONE JSON line."""
    text = json.dumps(result, sort_keys=False)
    if save:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        click.echo(text)


def json_options(fn):
    fn = click.option("--save", type=click.Path(dir_okay=False), default=None,
                      envvar="SERNET_BENCH_SAVE", show_envvar=True,
                      help="Also write the result as indented JSON to this file.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, default=False,
                      envvar="SERNET_BENCH_JSON", show_envvar=True,
                      help="End stdout with the result as one JSON line.")(fn)
    fn = click.option("--quick", is_flag=True, default=False, envvar="SERNET_BENCH_QUICK",
                      show_envvar=True, help="Short run (seconds) for tests and smoke checks.")(fn)
    fn = click.option("--repeats", type=click.IntRange(1, 50), default=5, show_default=True,
                      envvar="SERNET_BENCH_REPEATS", show_envvar=True,
                      help="Repeats; medians with min/max over them are reported.")(fn)
    return fn


def speaker_windows(audio, speakers: int, step: int, hop: int, window: int, steps: int) -> list:
    """The windows the worker's scorer gets at hop ``step`` (of ``steps``) from ``speakers``
    speakers reading ``audio`` at staggered offsets (``worker.windowing.Window``, each its own
    speaker and buffer generation; consecutive steps are consecutive windows of each speaker):
    what the bare-compute baselines score."""
    from worker.windowing import Window

    if not 0 <= step < steps:
        raise ValueError(f"step {step} outside 0..{steps - 1}")
    span = len(audio) - window - steps * hop
    if span <= 0:
        raise ValueError("audio too short for that many hops")
    out = []
    for i in range(speakers):
        start = (i * 16000) % span + step * hop
        out.append(Window(("bench", i), step, start, audio[start : start + window], 16000,
                          False, False, True, 0.0, stream_gen=i + 1))
    return out
