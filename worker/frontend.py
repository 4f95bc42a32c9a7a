"""The Light-SERNet input pipeline, written once.

Training (``training/``) and the streaming worker both import this module; the model
artifact's manifest records :meth:`FrontendConfig.to_dict` and the validation gate refuses an
artifact whose recorded parameters differ from the runtime ones.

Pipeline for one window (Aftab et al., ICASSP 2022, and their published TF code):

1. take ``window_s`` seconds of 16 kHz audio; a shorter clip is zero-padded at the end,
   a longer one is cut into windows by :func:`window_starts`;
2. peak-normalise by the 99.9th percentile of ``|x|`` over the real (unpadded) samples;
3. frame with 1024-sample periodic-Hann frames, hop 256, no padding (184 frames for 3 s);
4. ``|rfft|`` with 1024 points, 128 triangular HTK-mel bands from 80 to 7600 Hz;
5. ``log(mel + 1e-6)``, DCT-II scaled as ``tf.signal.mfccs_from_log_mel_spectrograms``,
   keep 40 coefficients, clip to +-10.

Steps 3-4 are linear in the signal's scale, so the gain of step 2 is applied to the mel
energies (:func:`features_from_mel`), in every path: the streaming frontend computes each
frame's mel energies once per speaker and gets bit for bit what computing the window from
scratch gives (:func:`raw_window_features`).

Everything here is pure numpy/scipy: no torch, no onnxruntime.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from worker import scipy_kernels

INPUT_TYPES = ("mfcc", "mel", "spectrogram")
SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter of the input pipeline; the manifest stores exactly these fields."""

    sample_rate_hz: int = SAMPLE_RATE_HZ
    window_s: float = 3.0
    frame_length: int = 1024
    hop_length: int = 256
    fft_length: int = 1024
    window_fn: str = "hann_periodic"
    num_mel_bins: int = 128
    lower_edge_hz: float = 80.0
    upper_edge_hz: float = 7600.0
    mel_scale: str = "htk"
    log_offset: float = 1e-6
    num_mfcc: int = 40
    dct_norm: str = "tf_mfcc"  # DCT-II * 1/sqrt(2 * num_mel_bins), as TensorFlow computes MFCCs
    clip: float = 10.0
    peak_percentile: float = 99.9
    pad_mode: str = "zeros_end"
    input_type: str = "mfcc"

    def __post_init__(self) -> None:
        if self.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {self.input_type!r}")
        if self.window_samples < self.frame_length:
            raise ValueError("window_s is shorter than one frame")
        if not 0 < self.lower_edge_hz < self.upper_edge_hz <= self.sample_rate_hz / 2:
            raise ValueError("mel band edges must satisfy 0 < lower < upper <= Nyquist")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate_hz))

    @property
    def num_frames(self) -> int:
        return num_frames(self.window_samples, self.frame_length, self.hop_length)

    @property
    def feature_dim(self) -> int:
        return {"mfcc": self.num_mfcc, "mel": self.num_mel_bins,
                "spectrogram": self.fft_length // 2 + 1}[self.input_type]

    @property
    def input_shape(self) -> tuple[int, int]:
        """Model input per window: (frames, features)."""
        return (self.num_frames, self.feature_dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrontendConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown frontend parameters: {sorted(unknown)}")
        return cls(**data)

    def mismatches(self, data: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{name: (recorded, runtime)}`` for every parameter that differs from ``data``."""
        mine = self.to_dict()
        out = {}
        for key in sorted(set(mine) | set(data)):
            if mine.get(key) != data.get(key):
                out[key] = (data.get(key), mine.get(key))
        return out


def num_frames(n_samples: int, frame_length: int = 1024, hop_length: int = 256) -> int:
    """Frames of a signal framed without padding (TensorFlow ``stft`` with ``pad_end=False``)."""
    if n_samples < frame_length:
        return 0
    return 1 + (n_samples - frame_length) // hop_length


# --------------------------------------------------------------------------- signal pieces


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_matrix(num_mel_bins: int = 128, fft_length: int = 1024, sample_rate_hz: int = 16000,
               lower_edge_hz: float = 80.0, upper_edge_hz: float = 7600.0) -> np.ndarray:
    """(fft_length//2+1, num_mel_bins) triangular HTK-mel weights, DC bin zeroed.

    Same construction as ``tf.signal.linear_to_mel_weight_matrix``: triangles are evaluated in
    the mel domain at each linear FFT bin's centre frequency.
    """
    n_bins = fft_length // 2 + 1
    bin_hz = np.linspace(0.0, sample_rate_hz / 2.0, n_bins)[1:]
    bin_mel = hz_to_mel(bin_hz)[:, None]
    edges = np.linspace(hz_to_mel(lower_edge_hz), hz_to_mel(upper_edge_hz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (centre - lower)
    falling = (upper - bin_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights = np.vstack([np.zeros((1, num_mel_bins)), weights])
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def hann_periodic(frame_length: int) -> np.ndarray:
    n = np.arange(frame_length)
    out = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / frame_length)).astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def dct_matrix(num_mel_bins: int = 128, num_mfcc: int = 40) -> np.ndarray:
    """(num_mel_bins, num_mfcc) matrix M with ``log_mel @ M`` = TF-scaled DCT-II, first coefs."""
    eye = np.eye(num_mel_bins)
    basis = scipy_kernels.dct2(eye) / np.sqrt(2.0 * num_mel_bins)
    out = basis[:, :num_mfcc].astype(np.float32)
    out.setflags(write=False)
    return out


def top_k_count(n: int, percentile: float) -> int:
    """How many of the largest of ``n`` values decide numpy's linear ``percentile``."""
    lo = int(math.floor(percentile / 100.0 * (n - 1)))
    return n - lo


def percentile_from_top(candidates: np.ndarray, n: int, percentile: float) -> float:
    """numpy's linear-interpolated ``percentile`` of ``n`` values, given a superset of their
    ``top_k_count(n, percentile)`` largest values (``candidates``, any order; all ``n`` values
    will do). Two order statistics from one ``np.partition``: ~2x cheaper than
    ``np.percentile`` on a whole window, and the streaming frontend's candidate subsets give the
    same two values, so both paths compute the identical gain."""
    k = top_k_count(n, percentile)
    m = candidates.shape[0]
    virtual = percentile / 100.0 * (n - 1)
    lo = int(math.floor(virtual))
    frac = virtual - lo
    if k == 1:  # the maximum itself
        return float(candidates.max())
    part = np.partition(candidates, (m - k, m - k + 1))
    a, b = float(part[m - k]), float(part[m - k + 1])
    return a + (b - a) * frac if frac < 0.5 else b - (b - a) * (1.0 - frac)


def gain_from_peak(peak: float) -> float:
    """The gain that maps ``peak`` to 1; 1.0 for silence (peak < 1e-8) or a non-finite peak."""
    if not math.isfinite(peak) or peak < 1e-8:
        return 1.0
    return 1.0 / peak


# samples per block of the peak-gain search (:func:`percentile_from_block_maxima`): a 3 s
# window is 375 blocks. Finer blocks bound the deciding values more tightly (fewer samples to
# search) but cost more maxima: 128 is the cheapest of 32-256 here (bench/README.md)
GAIN_BLOCK = 128


def block_maxima(samples: np.ndarray, block: int, *, magnitudes: bool = False) -> np.ndarray:
    """``max |x|`` of each ``block``-sample block of ``samples`` (a whole number of blocks;
    ``magnitudes``: ``samples`` already hold ``|x|``). ``maximum.reduceat`` over the flat
    array: ~2x faster than ``max(axis=1)`` on 256-sample rows."""
    if samples.shape[0] % block:
        raise ValueError(f"{samples.shape[0]} samples are not whole {block}-sample blocks")
    if samples.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    mag = samples if magnitudes else np.abs(samples)
    return np.maximum.reduceat(mag, _block_starts(samples.shape[0], block))


@functools.lru_cache(maxsize=64)
def _block_starts(n: int, block: int) -> np.ndarray:
    return np.arange(0, n, block)


def percentile_from_block_maxima(samples: np.ndarray, maxima: np.ndarray, block: int,
                                 percentile: float, *, magnitudes: bool = False) -> float:
    """numpy's linear ``percentile`` of ``|samples|`` (bit for bit what
    ``percentile_from_top(np.abs(samples), n, percentile)`` gives) from the maxima of its whole
    ``block``-sample blocks (:func:`block_maxima`; the samples after the last whole block are
    read directly). ``magnitudes``: ``samples`` already hold ``|x|``.

    The block maxima and the tail samples are distinct samples, so their k-th largest (``k``
    from :func:`top_k_count`) is a lower bound of the k-th largest of all: every value that can
    decide the percentile lies in a block whose maximum reaches the bound. Only those blocks
    (about ``k`` of them) are searched instead of every sample."""
    n = samples.shape[0]
    whole = maxima.shape[0] * block
    tail = samples[whole:] if magnitudes else np.abs(samples[whole:])
    firsts = np.concatenate([maxima, tail]) if tail.shape[0] else maxima
    k = top_k_count(n, percentile)
    if k > firsts.shape[0]:  # too few blocks to bound the k-th largest: search everything
        return percentile_from_top(samples if magnitudes else np.abs(samples), n, percentile)
    bound = np.partition(firsts, firsts.shape[0] - k)[firsts.shape[0] - k]
    hit = np.flatnonzero(maxima >= bound)
    values = samples[:whole].reshape(-1, block)[hit].reshape(-1)
    if not magnitudes:
        values = np.abs(values)
    candidates = values[values >= bound]
    if tail.shape[0]:
        candidates = np.concatenate([candidates, tail[tail >= bound]])
    return percentile_from_top(candidates, n, percentile)


def peak_scale(samples: np.ndarray, percentile: float = 99.9) -> float:
    """Gain that maps the ``percentile``-th percentile of ``|samples|`` to 1 (1.0 for silence).

    The percentile comes from the block-maximum search (:func:`percentile_from_block_maxima`,
    blocks of ``GAIN_BLOCK``): for a 3 s window ~5x cheaper than one partition of all 48,000
    magnitudes (bench/README.md), with the same two order statistics. A NaN
    anywhere gives what the exhaustive partition gives (its NaNs sort last)."""
    if samples.size == 0:
        return 1.0
    mag = np.abs(np.asarray(samples).reshape(-1))
    whole = (mag.shape[0] // GAIN_BLOCK) * GAIN_BLOCK
    maxima = block_maxima(mag[:whole], GAIN_BLOCK, magnitudes=True)
    if math.isnan(float(maxima.max() if whole else 0.0)) or np.isnan(mag[whole:]).any():
        return gain_from_peak(percentile_from_top(mag, mag.shape[0], percentile))
    return gain_from_peak(percentile_from_block_maxima(mag, maxima, GAIN_BLOCK, percentile,
                                                       magnitudes=True))


def frames(samples: np.ndarray, frame_length: int = 1024, hop_length: int = 256) -> np.ndarray:
    """(n_frames, frame_length) read-only view of ``samples`` (last axis), no copy."""
    n = num_frames(samples.shape[-1], frame_length, hop_length)
    view = np.lib.stride_tricks.sliding_window_view(samples, frame_length, axis=-1)
    return view[..., : (n - 1) * hop_length + 1 : hop_length, :]


def magnitude_spectrum(frames_: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """|rFFT| of Hann-windowed frames, in float32 throughout.

    ``scipy.fft`` transforms float32 in single precision (``numpy.fft`` always works in float64);
    for a 3 s window that is ~8x faster at batch 184 frames and differs by < 1e-6 relative.
    Each frame's transform is independent of how many frames share the call (tested), so batched
    and streaming callers get bit-identical rows.
    """
    windowed = frames_.astype(np.float32, copy=False) * hann_periodic(cfg.frame_length)
    return np.abs(scipy_kernels.rfft(windowed, cfg.fft_length))


def mel_energies(samples: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Un-normalised mel energies per frame, (..., n_frames, num_mel_bins).

    Linear in the signal's scale, so a gain applied to the signal can equally be applied here.
    The filterbank is applied as a sparse matrix: each FFT bin feeds at most two triangles, so
    ~1,000 of the 65,664 weights are non-zero and the product is ~4.5x cheaper than the dense
    one (within 1e-7 relative of it). Each frame's row is summed in the same order however many
    frames share the call, so batched and streaming callers get bit-identical rows.
    """
    spec = magnitude_spectrum(frames(samples, cfg.frame_length, cfg.hop_length), cfg)
    flat = spec.reshape(-1, spec.shape[-1])
    mel = _mel_sparse_t(cfg).times_transposed(flat)
    return mel.reshape(spec.shape[:-1] + (cfg.num_mel_bins,))


@functools.lru_cache(maxsize=16)
def _mel_sparse_t_for(num_mel_bins: int, fft_length: int, sample_rate_hz: int,
                      lower_edge_hz: float, upper_edge_hz: float):
    return scipy_kernels.CsrRows(mel_matrix(num_mel_bins, fft_length, sample_rate_hz,
                                            lower_edge_hz, upper_edge_hz).T)


def _mel_sparse_t(cfg: FrontendConfig):
    """The (num_mel_bins, fft_length//2+1) filterbank, transposed, as a CSR matrix."""
    return _mel_sparse_t_for(cfg.num_mel_bins, cfg.fft_length, cfg.sample_rate_hz,
                             cfg.lower_edge_hz, cfg.upper_edge_hz)


def features_from_mel(mel: np.ndarray, scale: float | np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Finish the pipeline from un-normalised mel energies and the window's peak gain."""
    if cfg.input_type == "spectrogram":
        raise ValueError("input_type 'spectrogram' is not computed from mel energies")
    scale = np.asarray(scale, dtype=np.float32)
    if scale.ndim:
        scale = scale.reshape(scale.shape + (1,) * (mel.ndim - scale.ndim))
    log_mel = mel * scale  # in place from here: the same float32 operations, fewer temporaries
    log_mel += np.float32(cfg.log_offset)
    np.log(log_mel, out=log_mel)
    if cfg.input_type == "mel":
        return log_mel
    mfcc = log_mel @ dct_matrix(cfg.num_mel_bins, cfg.num_mfcc)
    return np.clip(mfcc, -cfg.clip, cfg.clip, out=mfcc)


# --------------------------------------------------------------------------- public entry points


def fit_window(samples: np.ndarray, cfg: FrontendConfig) -> tuple[np.ndarray, float]:
    """Normalise ``samples`` (at most one window) and zero-pad them to the window length.

    Returns the padded float32 window and the gain applied. Longer input is an error: cut it
    with :func:`window_starts` first.
    """
    padded, gain = pad_window(samples, cfg)
    return padded * np.float32(gain), gain


def window_features(samples: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Model input for one window of 16 kHz audio: (num_frames, feature_dim) float32."""
    return batch_features([samples], cfg)[0]


def pad_window(samples: np.ndarray, cfg: FrontendConfig) -> tuple[np.ndarray, float]:
    """``samples`` (at most one window) zero-padded to the window length, *not* normalised,
    and the peak gain of their real samples: the inputs of :func:`raw_window_features`."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {samples.shape}")
    n = cfg.window_samples
    if samples.shape[0] > n:
        raise ValueError(f"{samples.shape[0]} samples exceed the {n}-sample window")
    if not np.all(np.isfinite(samples)):
        raise ValueError("samples contain NaN or inf")
    out = np.zeros(n, dtype=np.float32)
    out[: samples.shape[0]] = samples
    return out, peak_scale(samples, cfg.peak_percentile)


# windows per numpy pass: the frames of one 3 s window are 0.75 MB, so a pass over 32 windows
# (24 MB) outgrows the CPU caches and costs ~1.7x more per window than 1-2 at a time
# (bench/README.md); every frame's result is the same whatever shares the pass
WINDOWS_PER_PASS = 2


def raw_window_features(windows: np.ndarray, gains, cfg: FrontendConfig) -> np.ndarray:
    """Features of full-length, un-normalised windows (B, window_samples) and their peak
    gains (B,) -> (B, T, F).

    The gain is applied to the mel energies (steps 3-4 are linear in it) rather than to the
    samples: every path -- this one, the worker's streaming frontend, the training cache --
    then does the same float32 arithmetic for a frame whatever else shares the call, so they
    agree bit for bit."""
    gains = np.asarray(gains, dtype=np.float32).reshape(-1)
    if windows.shape[0] > WINDOWS_PER_PASS:
        out = np.empty((windows.shape[0],) + cfg.input_shape, dtype=np.float32)
        for i in range(0, windows.shape[0], WINDOWS_PER_PASS):
            out[i : i + WINDOWS_PER_PASS] = raw_window_features(
                windows[i : i + WINDOWS_PER_PASS], gains[i : i + WINDOWS_PER_PASS], cfg)
        return out
    if cfg.input_type == "spectrogram":
        return normalised_window_features(windows * gains[:, None], cfg)
    return features_from_mel(mel_energies(windows, cfg), gains, cfg)


def normalised_window_features(windows: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Features of already normalised, full-length windows (B, window_samples) -> (B, T, F)."""
    if cfg.input_type == "spectrogram":
        spec = magnitude_spectrum(frames(windows, cfg.frame_length, cfg.hop_length), cfg)
        return np.log(spec + np.float32(cfg.log_offset)).astype(np.float32)
    return features_from_mel(mel_energies(windows, cfg), 1.0, cfg)


def batch_features(windows: list[np.ndarray], cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Features for several windows (each at most one window long) -> (B, T, F)."""
    if not windows:
        return np.zeros((0,) + cfg.input_shape, dtype=np.float32)
    padded, gains = zip(*(pad_window(w, cfg) for w in windows))
    return raw_window_features(np.stack(padded), gains, cfg)


def window_starts(n_samples: int, window_samples: int, hop_samples: int) -> list[int]:
    """Start offsets that cover a clip of ``n_samples`` with windows every ``hop_samples``.

    A clip no longer than a window gives ``[0]`` (it is padded). Otherwise windows start every
    hop; if the last one stops short of the end, one more window is aligned to the end so that
    every sample is scored.
    """
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError("window and hop must be positive")
    if n_samples <= window_samples:
        return [0]
    last = n_samples - window_samples
    starts = list(range(0, last + 1, hop_samples))
    if starts[-1] != last:
        starts.append(last)
    return starts


def clip_windows(samples: np.ndarray, cfg: FrontendConfig, hop_s: float = 1.0) -> list[np.ndarray]:
    """Cut a whole clip into the windows :func:`window_starts` gives (views, not copies)."""
    n = cfg.window_samples
    hop = max(1, int(round(hop_s * cfg.sample_rate_hz)))
    return [samples[s : s + n] for s in window_starts(samples.shape[0], n, hop)]


def clip_features(samples: np.ndarray, cfg: FrontendConfig = FrontendConfig(),
                  hop_s: float = 1.0) -> np.ndarray:
    """All windows of a whole clip -> (n_windows, T, F)."""
    return batch_features(clip_windows(np.asarray(samples, dtype=np.float32), cfg, hop_s), cfg)
