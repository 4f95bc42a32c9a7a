"""``sernet bench frontend``: windows/s of the plain MFCC frontend (``batch_features``, every
window from scratch) vs :class:`worker.streaming_frontend.StreamingFrontend` (each frame once
per speaker), 3 s windows every 1 s, audio pushed in 100 ms chunks; and the same comparison for
what the worker runs (``WindowScorer`` with its ``WindowMelCache``, batches of 32 speakers'
windows at the worker's frame-aligned hop), with the floor of any exact streaming frontend
timed beside it (the new frames' transforms and the log/DCT of every row: ``floor_vs_plain``).

Both are timed interleaved window by window in steady state (the streaming frontend's first
window, which computes all 184 frames, is excluded like the plain path's warm-up); CPU time per
window: of the calling thread (``time.thread_time``) for the one-thread paths, of the process
(``time.process_time``) for the default-BLAS one. Also reported: the plain frontend with
OpenBLAS's default thread pool vs one BLAS thread (on a busy 2-core machine the pool's
spinning makes the 184 x 513 x 128 mel matmul ~10x slower).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from bench.common import machine, summary
from worker.frontend import FrontendConfig, batch_features, features_from_mel, window_features
from worker.streaming_frontend import StreamingFrontend


def speech_like(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * sig + rng.normal(0, 0.01, t.shape)).astype(np.float32)


def _blas_limit(threads: int | None):
    from contextlib import nullcontext

    if threads is None:
        return nullcontext()
    controller = _controller()
    return nullcontext() if controller is None else controller.limit(limits=threads, user_api="blas")


@functools.lru_cache(maxsize=1)
def _controller():
    """One ``ThreadpoolController`` for the run: ``threadpool_limits`` re-scans the loaded
    libraries (``/proc/self/maps``) on every entry, ~0.6 ms, and it is entered once per window."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def one_round(audio: np.ndarray, cfg: FrontendConfig, chunk_s: float, hop_s: float,
              warmup_windows: int = 2, blas_threads: int | None = 1) -> dict[str, float]:
    """CPU seconds per window: plain (1 BLAS thread), plain (default BLAS), streaming."""
    n, hop = cfg.window_samples, int(round(hop_s * cfg.sample_rate_hz))
    chunk = int(round(chunk_s * cfg.sample_rate_hz))
    fe = StreamingFrontend(cfg)
    pushed, nxt = 0, 0
    t_plain = t_plain_blas = t_stream = 0.0
    counted = 0
    diffs = 0.0
    while nxt + n <= audio.shape[0]:
        # one-thread paths on this thread's CPU clock: the process clock would also count the
        # default-BLAS call's pool threads, which keep spinning into the next timed section
        with _blas_limit(blas_threads):
            c0 = time.thread_time()
            while not fe.available(nxt):
                fe.push(audio[pushed : pushed + chunk])
                pushed += chunk
            feats = fe.window(nxt)
            c1 = time.thread_time()
            ref = batch_features([audio[nxt : nxt + n]], cfg)[0]
            c2 = time.thread_time()
        p2 = time.process_time()
        ref_blas = batch_features([audio[nxt : nxt + n]], cfg)[0]
        c3 = time.process_time()
        if nxt // hop >= warmup_windows:
            t_stream += c1 - c0
            t_plain += c2 - c1
            t_plain_blas += c3 - p2
            counted += 1
        diffs = max(diffs, float(np.abs(feats - ref).max()), float(np.abs(ref_blas - ref).max()))
        nxt += hop
    return {"plain": t_plain / counted, "plain_default_blas": t_plain_blas / counted,
            "streaming": t_stream / counted, "windows": counted, "max_abs_diff": diffs}


def worker_round(audio: np.ndarray, cfg: FrontendConfig, speakers: int = 32, steps: int = 8,
                 blas_threads: int | None = 1) -> dict[str, float]:
    """CPU seconds per window of what the worker runs: ``WindowScorer.features`` (its
    ``WindowMelCache``: mel rows and block peaks shared by consecutive windows of a speaker) on
    batches of ``speakers`` speakers' windows at the worker's frame-aligned 1.008 s hop, vs
    ``batch_features`` on the same windows, interleaved batch by batch (first batch excluded:
    it fills the cache)."""
    from bench.common import speaker_windows
    from worker.scoring import WindowScorer
    from worker.windowing import effective_hop_samples

    n = cfg.window_samples
    hop = effective_hop_samples(1.0, cfg.sample_rate_hz, cfg.hop_length, n)
    scorer = WindowScorer(None, cfg, hop_samples=hop)
    batches = [speaker_windows(audio, speakers, s, hop, n, steps + 1) for s in range(steps + 1)]
    t_stream = t_plain = t_new = t_log = 0.0
    diff = 0.0
    new_from = (cfg.num_frames - hop // cfg.hop_length) * cfg.hop_length  # where new frames start
    with _blas_limit(blas_threads):
        scorer.features(batches[0])
        for batch in batches[1:]:
            c0 = time.process_time()
            feats = scorer.features(batch)
            c1 = time.process_time()
            ref = batch_features([w.samples for w in batch], cfg)
            c2 = time.process_time()
            mel = _new_frames_only(batch, new_from, cfg)
            c3 = time.process_time()
            rows = np.concatenate([mel] * 3, axis=1)[:, : cfg.num_frames]  # 184 rows a window
            c3b = time.process_time()
            features_from_mel(rows, np.ones(len(batch), dtype=np.float32), cfg)
            c4 = time.process_time()
            t_stream += c1 - c0
            t_plain += c2 - c1
            t_new += c3 - c2
            t_log += c4 - c3b
            diff = max(diff, float(np.abs(feats - ref).max()))
    windows = steps * speakers
    return {"plain": t_plain / windows, "streaming": t_stream / windows, "windows": windows,
            "new_frames": t_new / windows, "log_dct": t_log / windows, "max_abs_diff": diff}


def _new_frames_only(batch, new_from: int, cfg: FrontendConfig) -> np.ndarray:
    """Mel rows of only the frames a window adds at the hop (63 of 184 at 1.008 s), batched
    by the worker cache's own :func:`worker.streaming_frontend.mel_passes`: the transform work
    no exact streaming frontend can skip. With the per-window log/DCT of all 184 rows (it needs
    the window's own peak gain) it is the floor of ``streaming`` (bench/README.md, targets)."""
    from worker.streaming_frontend import mel_passes

    return np.concatenate([rows for _, rows in mel_passes([w.samples[new_from:] for w in batch], cfg)])


def aligned_hop_s(hop_s: float, cfg: FrontendConfig) -> float:
    """``hop_s`` as the worker rounds it (``effective_hop_samples``: 1 s -> 63 x 256 samples =
    1.008 s), so the bench times the hop the worker runs."""
    from worker.windowing import effective_hop_samples

    hop = effective_hop_samples(hop_s, cfg.sample_rate_hz, cfg.hop_length, cfg.window_samples)
    return hop / cfg.sample_rate_hz


def _hop_result(cfg: FrontendConfig, repeats: int, seconds: float, chunk_ms: int,
                hop_s: float) -> dict[str, Any]:
    rounds = [one_round(speech_like(seconds, seed=r), cfg, chunk_ms / 1000, hop_s)
              for r in range(repeats)]
    ms = lambda key: summary([r[key] * 1e3 for r in rounds], 3)  # noqa: E731
    wps = lambda key: summary([1.0 / r[key] for r in rounds], 1)  # noqa: E731
    return {
        "hop_s": hop_s, "hop_samples": int(round(hop_s * cfg.sample_rate_hz)),
        "windows_per_round": rounds[0]["windows"],
        "cpu_ms_per_window": {k: ms(k) for k in ("plain", "plain_default_blas", "streaming")},
        "windows_per_s": {k: wps(k) for k in ("plain", "plain_default_blas", "streaming")},
        "streaming_vs_plain": summary([r["streaming"] / r["plain"] for r in rounds], 3),
        "plain_default_blas_vs_plain": summary(
            [r["plain_default_blas"] / r["plain"] for r in rounds], 3),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds),
    }


def run(*, quick: bool = False, repeats: int = 5, chunk_ms: int = 100, hop_s: float = 1.0) -> dict[str, Any]:
    """Two hops: ``hop_s`` as given (1 s = 16,000 samples = 62.5 frame hops: every other window
    starts off the frame grid and takes the plain path) and ``hop_s`` rounded to whole frame
    hops (1.008 s: every window reuses cached frames)."""
    cfg = FrontendConfig()
    repeats = min(repeats, 2) if quick else repeats
    seconds = 8 if quick else 25
    hops = {"given": hop_s, "aligned": aligned_hop_s(hop_s, cfg)}
    per_hop = {name: _hop_result(cfg, repeats, seconds, chunk_ms, h) for name, h in hops.items()}
    speakers = 8 if quick else 32
    rounds = [worker_round(speech_like(30 if quick else 60, seed=r), cfg, speakers=speakers,
                           steps=3 if quick else 8) for r in range(repeats)]
    worker = {
        "speakers_per_batch": speakers, "windows_per_round": rounds[0]["windows"],
        "cpu_ms_per_window": {k: summary([r[k] * 1e3 for r in rounds], 3)
                              for k in ("plain", "streaming", "new_frames", "log_dct")},
        "streaming_vs_plain": summary([r["streaming"] / r["plain"] for r in rounds], 3),
        # what an exact streaming frontend cannot skip: the new frames' transforms and the
        # log/DCT of all rows (the window's own gain is inside the log)
        "floor_vs_plain": summary([(r["new_frames"] + r["log_dct"]) / r["plain"]
                                   for r in rounds], 3),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds),
    }
    out = {
        "bench": "frontend", "quick": quick, "repeats": repeats, "chunk_ms": chunk_ms,
        "window_s": cfg.window_s,
        "streaming_vs_plain": per_hop["given"]["streaming_vs_plain"]["median"],
        "streaming_vs_plain_aligned_hop": per_hop["aligned"]["streaming_vs_plain"]["median"],
        "worker_streaming_vs_plain": worker["streaming_vs_plain"]["median"],
        "worker_floor_vs_plain": worker["floor_vs_plain"]["median"],
        "plain_default_blas_vs_plain": per_hop["given"]["plain_default_blas_vs_plain"]["median"],
        "max_abs_diff": max([h["max_abs_diff"] for h in per_hop.values()] + [worker["max_abs_diff"]]),
        "hops": per_hop, "worker": worker, "machine": machine(),
    }
    out["targets"] = {
        "streaming_vs_plain<=1/3": bool(out["streaming_vs_plain"] <= 1 / 3),
        "streaming_vs_plain_aligned_hop<=1/3": bool(out["streaming_vs_plain_aligned_hop"] <= 1 / 3),
        "worker_streaming_vs_plain<=1/3": bool(out["worker_streaming_vs_plain"] <= 1 / 3),
    }
    return out


def check_equal(cfg: FrontendConfig = FrontendConfig()) -> float:
    audio = speech_like(6)
    fe = StreamingFrontend(cfg)
    fe.push(audio)
    return max(float(np.abs(fe.window(s, keep=True) - window_features(audio[s : s + cfg.window_samples], cfg)).max())
               for s in (0, 256 * 17, 16000, 16000 + 100))
