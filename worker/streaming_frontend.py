"""Streaming twin of :mod:`worker.frontend`: each frame's mel energies computed once per speaker.

With a 1 s hop and 3 s windows, two thirds of every window's 184 frames were already in the
previous window. :class:`StreamingFrontend` (one per speaker) frames the stream as it arrives
(frames start at multiples of ``hop_length`` counted from the first pushed sample), caches the
un-normalised mel energies of each frame, and builds a window's features from the cached rows
and the window's own peak gain: mel energies are linear in the signal's gain, so
``features_from_mel(mel(x), gain)`` equals the plain ``window_features(x)``
(:func:`worker.frontend.features_from_mel`).

The peak gain is the ``peak_percentile``-th percentile of ``|x|`` over the window's real samples.
Only the top ``k`` values of a window decide it (``k = n - floor(q (n - 1))``, 49 for 48,000
samples). The maximum of each ``GAIN_BLOCK``-sample block (128: two per frame hop) is kept,
computed once per block; the k-th largest of a window's block maxima bounds its k-th largest
sample from below, so only the blocks whose maximum reaches that bound (about ``k`` of the
375) are searched (:func:`gain_from_block_maxima`; the plain ``peak_scale`` does the same
search from scratch).

Windows whose start is not a multiple of ``hop_length``, and end-of-stream partial windows,
fall back to the plain path (``window_features``: zero-padded by ``pad_window``).

Memory is bounded: :meth:`window` promises that no later window starts before it, so samples,
mel rows and block maxima before that start are dropped (:meth:`discard_before` does the same
explicitly). Per speaker this holds about one window of samples and mel rows (~0.3 MB).

Usage (per speaker)::

    fe = StreamingFrontend(cfg)
    fe.push(chunk)                      # float32 16 kHz mono, any chunk size
    while fe.available(next_start):     # a whole window has arrived
        feats = fe.window(next_start)   # (184, 40), == window_features(samples[next_start:...])
        next_start += hop_samples
    feats = fe.window(start, length=n)  # end of stream: a partial window, zero-padded
"""

from __future__ import annotations

import math

import numpy as np

from worker.frontend import (GAIN_BLOCK, FrontendConfig, block_maxima, features_from_mel,
                             gain_from_peak, mel_energies, percentile_from_block_maxima,
                             percentile_from_top, top_k_count, window_features)

__all__ = ["StreamingFrontend", "WindowMelCache", "block_maxima", "gain_block",
           "gain_from_block_maxima", "percentile_from_top", "top_k_count"]


class StreamingFrontend:
    """Per-speaker incremental MFCC frontend; see the module docstring."""

    def __init__(self, cfg: FrontendConfig = FrontendConfig()) -> None:
        if cfg.input_type == "spectrogram":
            raise ValueError("the streaming frontend computes mel-based inputs only")
        self.cfg = cfg
        self.hop = cfg.hop_length
        self.n = cfg.window_samples
        self.block = gain_block(self.hop)             # samples per cached block maximum
        self.full_blocks = self.n // self.block        # 375 blocks of 128 in 48,000 samples
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        self.pushed = 0                 # samples pushed since the start of the stream
        self.base = 0                   # absolute index of _raw[0]; a multiple of hop
        self._raw = np.zeros(0, dtype=np.float32)
        self._pending: list[np.ndarray] = []  # pushed, not yet joined to _raw
        self._mel = np.zeros((0, self.cfg.num_mel_bins), dtype=np.float32)  # frames from base/hop
        self._max = np.zeros(0, dtype=np.float32)  # per block, from base/block: max |x|

    @property
    def frames_done(self) -> int:
        return self.base // self.hop + self._mel.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._pending) + self._raw.nbytes + self._mel.nbytes + self._max.nbytes

    def push(self, samples: np.ndarray) -> None:
        """Append 16 kHz mono samples (any length). Cheap: frames are computed lazily, in one
        batch per window, so that 100 ms chunks do not pay numpy's per-call overhead."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {samples.shape}")
        if samples.size == 0:
            return
        # a NaN or inf makes the sum non-finite: the element-wise check only runs then (a sum
        # of large finite values can overflow too, which that check clears)
        if not math.isfinite(float(samples.sum())) and not np.all(np.isfinite(samples)):
            raise ValueError("samples contain NaN or inf")
        self._pending.append(samples)
        self.pushed += samples.shape[0]

    def _join(self) -> None:
        if self._pending:
            self._raw = np.concatenate([self._raw, *self._pending])
            self._pending.clear()

    def _compute_until(self, end_sample: int) -> None:
        """Mel rows of every frame and the maximum of every block that ends at or before
        ``end_sample``. The batches depend only on the windows asked for, never on chunking,
        so features are bit-identical whatever the chunk sizes were."""
        self._join()
        cfg, hop = self.cfg, self.hop
        f0 = self.frames_done
        f1 = (end_sample - cfg.frame_length) // hop + 1 if end_sample >= cfg.frame_length else 0
        if f1 > f0:
            lo = f0 * hop - self.base
            hi = (f1 - 1) * hop + cfg.frame_length - self.base
            self._mel = np.concatenate([self._mel, mel_energies(self._raw[lo:hi], cfg)])
        bl = self.block
        b0 = self.base // bl + self._max.shape[0]
        b1 = end_sample // bl
        if b1 > b0:
            maxima = block_maxima(self._raw[b0 * bl - self.base : b1 * bl - self.base], bl)
            self._max = np.concatenate([self._max, maxima])

    def discard_before(self, sample: int) -> None:
        """Drop everything that only windows starting before ``sample`` would need."""
        cut = (min(sample, self.pushed) // self.hop) * self.hop
        if cut <= self.base:
            return
        self._join()
        drop = (cut - self.base) // self.hop
        self._raw = self._raw[cut - self.base :].copy()
        self._mel = self._mel[drop:].copy()
        self._max = self._max[(cut - self.base) // self.block :].copy()
        self.base = cut

    # ------------------------------------------------------------------ windows

    def available(self, start: int) -> bool:
        """Whether the whole window starting at ``start`` has been pushed."""
        return start + self.n <= self.pushed

    def window(self, start: int, length: int | None = None, *, keep: bool = False) -> np.ndarray:
        """Features (T, F) of the samples ``[start, start + length)`` (default: one window).

        Equals ``window_features(samples[start:start + length])``. Unless ``keep``, data before
        ``start`` is dropped afterwards: later windows must not start earlier.
        """
        feats = self._features(start, self.n if length is None else length)
        if not keep:
            self.discard_before(start)
        return feats

    def windows(self, starts: list[int], *, keep: bool = False) -> np.ndarray:
        """Features of several full windows (B, T, F); one vectorised log/DCT for the batch."""
        if not starts:
            return np.zeros((0,) + self.cfg.input_shape, dtype=np.float32)
        self._compute_until(max(s + self.n for s in starts if s + self.n <= self.pushed)
                            if any(s + self.n <= self.pushed for s in starts) else 0)
        aligned = [s for s in starts if s % self.hop == 0 and s >= self.base and self.available(s)]
        if len(aligned) != len(starts):
            out = np.stack([self._features(s, self.n) for s in starts])
        else:
            t = self.cfg.num_frames
            rows = [(s - self.base) // self.hop for s in starts]
            mel = np.stack([self._mel[r : r + t] for r in rows])
            gains = np.array([self._gain(s) for s in starts], dtype=np.float32)
            out = features_from_mel(mel, gains, self.cfg)
        if not keep:
            self.discard_before(min(starts))
        return out

    def _raw_slice(self, start: int, length: int) -> np.ndarray:
        self._join()
        if start < self.base:
            raise ValueError(f"window start {start} was already discarded (kept from {self.base})")
        if start + length > self.pushed:
            raise ValueError(f"window [{start}, {start + length}) not pushed yet ({self.pushed})")
        return self._raw[start - self.base : start - self.base + length]

    def _features(self, start: int, length: int) -> np.ndarray:
        if length <= 0 or length > self.n:
            raise ValueError(f"window length must be in 1..{self.n}, got {length}")
        raw = self._raw_slice(start, length)
        if length < self.n or start % self.hop:
            return window_features(raw, self.cfg)  # partial or unaligned: the plain path
        self._compute_until(start + self.n)
        row = (start - self.base) // self.hop
        mel = self._mel[row : row + self.cfg.num_frames]
        return features_from_mel(mel, self._gain(start), self.cfg)

    def _gain(self, start: int) -> float:
        """``peak_scale`` of the window's samples from the cached block maxima."""
        block = (start - self.base) // self.block
        lo = start - self.base
        return gain_from_block_maxima(self._raw[lo : lo + self.n],
                                      self._max[block : block + self.full_blocks],
                                      self.block, self.cfg.peak_percentile)


def gain_from_block_maxima(samples: np.ndarray, maxima: np.ndarray, block: int,
                           percentile: float) -> float:
    """``peak_scale(samples)`` (bit for bit) from the maxima of its whole ``block``-sample
    blocks (:func:`worker.frontend.percentile_from_block_maxima`)."""
    return gain_from_peak(percentile_from_block_maxima(samples, maxima, block, percentile))


def gain_block(frame_hop: int) -> int:
    """Samples per cached block maximum: ``GAIN_BLOCK`` when it divides the frame hop (a
    window that starts on the frame grid then starts on the block grid), else the hop."""
    return GAIN_BLOCK if frame_hop % GAIN_BLOCK == 0 else frame_hop


# windows per FFT call: 63 new frames of 4 windows (1 MB) stay in the CPU caches; 32 windows'
# frames do not and cost ~15 % more per window (bench/README.md)
FFT_WINDOWS = 4


def mel_passes(tails: list[np.ndarray], cfg: FrontendConfig):
    """Mel rows of several windows' not yet transformed samples (``tails``, equal lengths),
    :data:`FFT_WINDOWS` windows per transform call: yields ``(j, rows)`` with ``rows`` those
    of ``tails[j : j + FFT_WINDOWS]``."""
    for j in range(0, len(tails), FFT_WINDOWS):
        yield j, mel_energies(np.stack(tails[j : j + FFT_WINDOWS]), cfg)


class WindowMelCache:
    """The worker's streaming frontend: mel rows and peak statistics shared by consecutive
    windows of a speaker.

    The windowing hands the scorer whole windows (``Window.samples``); with a hop that is a
    multiple of ``hop_length`` (the worker's :func:`worker.windowing.effective_hop_samples`),
    window ``k+1`` starts on window ``k``'s frame grid and its first ``(W - H) / 256`` frames
    were already computed. Per speaker this keeps only those rows (~121 x 128 float32 = 62 KB at
    a 1.008 s hop) and the maxima of the same span's 128-sample blocks (what the peak gain
    needs, as :class:`StreamingFrontend` keeps them: 249 float32), with the stream
    sample of the first one and the generation of the speaker's buffer (``Window.stream_gen``:
    a resumed or re-created speaker never reuses rows of an earlier buffer). A batch's new
    frames are transformed in one call per reuse depth, so 32 speakers' 63 new frames cost one
    FFT call, not 32. Features equal :func:`worker.frontend.window_features` bit for bit.

    Not thread-safe: the one thread that scores (the event loop's or the executor's) owns it.
    Bounded to ``max_entries`` speakers (least recently used dropped), and :meth:`forget` drops
    a finished speaker.
    """

    def __init__(self, cfg: FrontendConfig, hop_samples: int, max_entries: int = 4096) -> None:
        from collections import OrderedDict

        self.cfg = cfg
        self.frame_hop = cfg.hop_length
        self.hop_samples = hop_samples
        self.enabled = (cfg.input_type != "spectrogram" and hop_samples > 0
                        and hop_samples % cfg.hop_length == 0)
        self.keep_from_row = hop_samples // cfg.hop_length if self.enabled else 0
        self.block = gain_block(cfg.hop_length)      # samples per cached block maximum
        self.per_row = cfg.hop_length // self.block  # block maxima per frame hop (2)
        self.full_blocks = cfg.window_samples // self.block   # 375 blocks of 128 in 48,000
        self.max_entries = max_entries
        # key -> (gen, stream sample of rows[0] and maxima[0], mel rows, block maxima)
        self._rows: "OrderedDict[object, tuple[int, int, np.ndarray, np.ndarray]]" = OrderedDict()
        self.reused_rows = 0
        self.computed_rows = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return sum(r[2].nbytes + r[3].nbytes for r in self._rows.values())

    def forget(self, key) -> None:
        self._rows.pop(key, None)

    def clear(self) -> None:
        self._rows.clear()

    def _reusable(self, key, gen: int, start: int) -> int:
        """How many leading frames (= blocks) of the window at ``start`` the cache holds."""
        cached = self._rows.get(key)
        if cached is None:
            return 0
        c_gen, c_start, rows = cached[0], cached[1], cached[2]
        d = start - c_start
        fh = self.frame_hop
        if c_gen != gen or d < 0 or d % fh or d // fh >= rows.shape[0]:
            return 0
        return min(rows.shape[0] - d // fh, self.cfg.num_frames)

    def lead(self, items) -> int:
        """Transform ahead the frames of first windows that have partly arrived: ``items`` =
        ``[(key, gen, start_sample, samples), ...]`` with ``samples`` the window's first
        samples. Their mel rows and block maxima are cached as if a previous window had left
        them, so the window reuses them when it completes. Skipped for a speaker whose stream
        (``gen``) already has cached rows. Returns the rows computed."""
        cfg, fh = self.cfg, self.frame_hop
        if not self.enabled:
            return 0
        done = 0
        for key, gen, start, samples in items:
            cached = self._rows.get(key)
            if cached is not None and cached[0] == gen:
                continue
            frames_in = (samples.shape[0] - cfg.frame_length) // fh + 1
            if frames_in <= 0:
                continue
            rows = mel_energies(samples[: (frames_in - 1) * fh + cfg.frame_length], cfg)
            bl = self.block
            self._remember(key, (gen, start, rows,
                                 block_maxima(samples[: (samples.shape[0] // bl) * bl], bl)))
            done += frames_in
        self.computed_rows += done
        return done

    def mel_and_gain(self, items) -> tuple[np.ndarray, np.ndarray]:
        """Un-normalised mel rows (B, T, mel) and peak gains (B,) of full windows ``items`` =
        ``[(key, gen, start_sample, samples), ...]``; reuses and updates the cached rows.

        Several windows of one speaker (a backlog) are taken in rounds, in order, so each
        reuses the rows its predecessor in the same batch left."""
        rounds: list[list[int]] = []
        seen: dict = {}
        for i, item in enumerate(items):
            r = seen[item[0]] = seen.get(item[0], -1) + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)
        if len(rounds) == 1:
            return self._round(items)
        mel = np.empty((len(items), self.cfg.num_frames, self.cfg.num_mel_bins), dtype=np.float32)
        gains = np.empty(len(items), dtype=np.float32)
        for idx in rounds:
            mel[idx], gains[idx] = self._round([items[i] for i in idx])
        return mel, gains

    def _round(self, items) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`mel_and_gain` of windows of distinct speakers."""
        cfg, fh, t, nb = self.cfg, self.frame_hop, self.cfg.num_frames, self.full_blocks
        bl, per_row = self.block, self.per_row
        n = cfg.window_samples
        mel = np.empty((len(items), t, cfg.num_mel_bins), dtype=np.float32)
        gains = np.empty(len(items), dtype=np.float32)
        depth = [self._reusable(key, gen, start) for key, gen, start, _ in items]
        pct = cfg.peak_percentile
        maxima = []
        for i, (key, gen, start, samples) in enumerate(items):
            m = depth[i]
            if m:
                _, c_start, rows, c_max = self._rows[key]
                d = (start - c_start) // fh
                mel[i, :m] = rows[d : d + m]
                mb = min(m * per_row, nb)
                block_max = np.concatenate([c_max[d * per_row : d * per_row + mb],
                                            block_maxima(samples[mb * bl : nb * bl], bl)])
            else:
                block_max = block_maxima(samples[: nb * bl], bl)
            maxima.append(block_max)
            gains[i] = gain_from_block_maxima(samples[:n], block_max, bl, pct)
        by_depth: dict[int, list[int]] = {}
        for i, m in enumerate(depth):
            if m < t:
                by_depth.setdefault(m, []).append(i)
        for m, idx in by_depth.items():  # one FFT call per few windows that need the same frames
            for j, rows in mel_passes([items[i][3][m * fh :] for i in idx], cfg):
                mel[idx[j : j + FFT_WINDOWS], m:] = rows
        self.reused_rows += sum(depth)
        self.computed_rows += len(items) * t - sum(depth)
        if self.enabled:
            keep = self.keep_from_row
            for i, (key, gen, start, _) in enumerate(items):
                self._remember(key, (gen, start + keep * fh, mel[i, keep:].copy(),  # not views
                                     maxima[i][keep * per_row :].copy()))
        return mel, gains

    def _remember(self, key, entry: tuple) -> None:
        """Cache ``entry`` as ``key``'s rows, most recently used; the least recent beyond
        ``max_entries`` are dropped."""
        self._rows[key] = entry
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)
