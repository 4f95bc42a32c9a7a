"""Feature cache: every utterance's windows computed once by the shared frontend.

Two sets per corpus:

* ``train``: for each utterance and augmentation variant, windows every ``train_hop_s``
  (0.25 s) over the whole utterance -- not one centre crop -- and, for clips shorter than a
  window, a few placements inside the zero-padded window. Training samples one of them per
  utterance per epoch.
* ``eval``: the clean windows that ``predict`` and the worker use (hop 1 s, end-aligned last
  window), to score each utterance by the mean of its windows' probabilities.

Stored as float16 ``.npz`` under ``.cache/features/`` keyed by a hash of the frontend, the
corpus fingerprint and the cache settings, so re-runs skip the frontend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.augment import VARIANTS
from training.corpora import Utterance
from worker.audio import load_mono_16k
from worker.frontend import FrontendConfig, peak_scale, raw_window_features, window_starts

CACHE_VERSION = 5  # 3: float32 scipy.fft; 4: sparse mel filterbank; 5: gain on the mel energies
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "features"


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, T, F) float16
    utt: np.ndarray       # (N,) utterance index
    variant: np.ndarray   # (N,) index into variants

    def select(self, mask: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.features[mask], self.utt[mask], self.variant[mask])


def placements(n: int, cfg: FrontendConfig, hop_s: float, max_shifts: int) -> list[tuple[int, int]]:
    """(source start, offset inside the window) pairs covering a clip of ``n`` samples."""
    w = cfg.window_samples
    hop = int(round(hop_s * cfg.sample_rate_hz))
    if n >= w:
        return [(s, 0) for s in window_starts(n, w, hop)]
    room = w - n
    shifts = sorted({0, *[int(k * hop) for k in range(1, max_shifts) if k * hop <= room]})
    return [(0, off) for off in shifts]


def windows_of(samples: np.ndarray, cfg: FrontendConfig,
               spots: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded, un-normalised windows (B, window_samples) at the given placements and the
    peak gain of each one's real samples (the inputs of ``raw_window_features``)."""
    w = cfg.window_samples
    out = np.zeros((len(spots), w), dtype=np.float32)
    gains = np.ones(len(spots), dtype=np.float32)
    for i, (start, offset) in enumerate(spots):
        piece = samples[start : start + w - offset]
        out[i, offset : offset + piece.shape[0]] = piece
        gains[i] = peak_scale(piece, cfg.peak_percentile)
    return out, gains


def _key(kind: str, utterances: list[Utterance], cfg: FrontendConfig, extra: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "kind": kind, "cfg": cfg.to_dict(), "extra": extra,
                       "utts": [(u.path.name, u.path.stat().st_size, u.label, u.speaker)
                                for u in utterances]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(utterances: list[Utterance], cfg: FrontendConfig, kind: str = "train",
          variants: tuple[str, ...] = tuple(VARIANTS), train_hop_s: float = 0.25,
          eval_hop_s: float = 1.0, max_shifts: int = 4, seed: int = 0,
          cache_dir: Path | None = DEFAULT_CACHE, progress: bool = True,
          eval_variant: str = "clean") -> FeatureSet:
    """Compute (or load from cache) the ``train`` or ``eval`` windows of ``utterances``.

    ``eval`` windows are of one variant: ``clean`` (the corpus as recorded), or a channel
    (``telephone``, ``noisy``) to measure how a model holds up on audio unlike its training."""
    if kind == "eval":
        variants = (eval_variant,)
    extra = {"variants": list(variants), "train_hop_s": train_hop_s, "eval_hop_s": eval_hop_s,
             "max_shifts": max_shifts, "seed": seed}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-{_key(kind, utterances, cfg, extra)}.npz"
        if path.is_file():
            data = np.load(path)
            return FeatureSet(data["features"], data["utt"], data["variant"])

    rng = np.random.default_rng(seed)
    feats, utt_idx, var_idx = [], [], []
    from rich.progress import track

    items = track(list(enumerate(utterances)), description=f"features ({kind})",
                  disable=not progress, transient=True)
    for i, u in items:
        audio = load_mono_16k(u.path)
        for v, name in enumerate(variants):
            x = VARIANTS[name](audio, rng)
            if kind == "eval":
                spots = [(s, 0) for s in window_starts(x.shape[0], cfg.window_samples,
                                                       int(round(eval_hop_s * cfg.sample_rate_hz)))]
            else:
                spots = placements(x.shape[0], cfg, train_hop_s, max_shifts)
            f = raw_window_features(*windows_of(x, cfg, spots), cfg)
            feats.append(f.astype(np.float16))
            utt_idx.append(np.full(len(spots), i, dtype=np.int32))
            var_idx.append(np.full(len(spots), v, dtype=np.int8))
    fs = FeatureSet(np.concatenate(feats), np.concatenate(utt_idx), np.concatenate(var_idx))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, features=fs.features, utt=fs.utt, variant=fs.variant)
        tmp.rename(path)
    return fs
