"""worker/frontend.py against computations written independently here (slow loops, formulas)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import get_window

from worker import frontend as F
from worker.frontend import FrontendConfig

CFG = FrontendConfig()
SR = 16000
N_MEL = 128


def htk_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def band_centres_mel(n_mel=N_MEL, low=80.0, high=7600.0) -> list[float]:
    lo, hi = htk_mel(low), htk_mel(high)
    step = (hi - lo) / (n_mel + 1)
    return [lo + (m + 1) * step for m in range(n_mel)]


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("window_s, expected", [(3.0, 184), (7.0, 434)])
def test_frame_count(window_s, expected):
    n = int(window_s * SR)
    assert expected == 1 + (n - 1024) // 256
    cfg = FrontendConfig(window_s=window_s)
    assert cfg.window_samples == n and cfg.num_frames == expected
    assert F.frames(np.zeros(n, np.float32)).shape == (expected, 1024)
    assert F.window_features(np.zeros(10, np.float32), cfg).shape == (expected, 40)


@pytest.mark.parametrize("input_type, dim", [("mfcc", 40), ("mel", 128), ("spectrogram", 513)])
def test_input_shape_per_type(input_type, dim):
    cfg = FrontendConfig(input_type=input_type)
    assert cfg.input_shape == (184, dim)
    feats = F.window_features(noise(2.0), cfg)
    assert feats.shape == cfg.input_shape and feats.dtype == np.float32
    assert F.batch_features([noise(1.0), noise(3.0, 1)], cfg).shape == (2, 184, dim)
    assert F.batch_features([], cfg).shape == (0, 184, dim)


def test_frames_are_views_at_hop_offsets():
    x = np.arange(5000, dtype=np.float32)
    fr = F.frames(x, 1024, 256)
    assert fr.shape == (1 + (5000 - 1024) // 256, 1024)
    for i in (0, 3, fr.shape[0] - 1):
        np.testing.assert_array_equal(fr[i], x[i * 256 : i * 256 + 1024])
    assert np.shares_memory(fr, x)


def test_hann_is_periodic():
    np.testing.assert_allclose(F.hann_periodic(1024), get_window("hann", 1024, fftbins=True),
                               atol=1e-7)


# --------------------------------------------------------------------------- mel filterbank


def slow_htk_mel_matrix(n_mel=N_MEL, fft_length=1024, sr=SR, low=80.0, high=7600.0):
    """tf.signal.linear_to_mel_weight_matrix, written as the textbook loop."""
    lo, hi = htk_mel(low), htk_mel(high)
    edges = [lo + i * (hi - lo) / (n_mel + 1) for i in range(n_mel + 2)]
    n_bins = fft_length // 2 + 1
    out = np.zeros((n_bins, n_mel))
    for k in range(1, n_bins):  # the DC bin carries no weight
        m = htk_mel(k * sr / fft_length)
        for b in range(n_mel):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= centre:
                out[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                out[k, b] = (right - m) / (right - centre)
    return out


def test_mel_matrix_matches_slow_htk_triangles():
    mine = F.mel_matrix(N_MEL, 1024, SR, 80.0, 7600.0)
    assert mine.shape == (513, N_MEL)
    np.testing.assert_allclose(mine, slow_htk_mel_matrix(), atol=1e-6)
    assert not mine[0].any()
    assert (mine.max(axis=0) > 0).all()  # no empty band at 1024-point resolution
    small = F.mel_matrix(20, 512, 8000, 100.0, 3000.0)
    np.testing.assert_allclose(small, slow_htk_mel_matrix(20, 512, 8000, 100.0, 3000.0), atol=1e-6)


@pytest.mark.parametrize("freq_hz", [200.0, 440.0, 1000.0, 3000.0, 6000.0])
def test_tone_peaks_in_nearest_mel_band(freq_hz, tone):
    cfg = FrontendConfig(input_type="mel")
    feats = F.window_features(tone(freq_hz, 3.0), cfg)
    centres = np.array(band_centres_mel())
    expected = int(np.abs(centres - htk_mel(freq_hz)).argmin())
    peaks = feats.argmax(axis=1)
    assert (peaks == expected).all(), (expected, np.unique(peaks))


# --------------------------------------------------------------------------- DCT


def test_dct_matrix_identities():
    n = N_MEL
    m = F.dct_matrix(n, 40).astype(np.float64)
    assert m.shape == (n, 40)
    # TF: mfccs = dct(log_mel, type=2) * rsqrt(2N), with the unnormalised DCT-II
    # y_k = 2 * sum_n x_n cos(pi k (2n + 1) / (2N)) (scipy.fftpack's and TF's convention)
    slow = np.array([[2 * math.cos(math.pi * k * (2 * i + 1) / (2 * n)) / math.sqrt(2 * n)
                      for k in range(40)] for i in range(n)])
    np.testing.assert_allclose(m, slow, atol=1e-6)
    # columns orthogonal; unit norm except c0, which is sqrt(2) (HTK's "almost orthonormal")
    gram = m.T @ m
    np.testing.assert_allclose(gram, np.diag([2.0] + [1.0] * 39), atol=1e-5)
    # a constant log-mel c: c0 = 2 N c / sqrt(2N) = c sqrt(2N), every other coefficient 0
    c = -1.7
    coeffs = np.full(n, c) @ m
    assert coeffs[0] == pytest.approx(c * math.sqrt(2 * n), rel=1e-6)
    np.testing.assert_allclose(coeffs[1:], 0.0, atol=1e-5)


def test_mfcc_is_dct_of_log_mel_clipped():
    x = noise(3.0)
    log_mel = F.window_features(x, FrontendConfig(input_type="mel")).astype(np.float64)
    expected = np.clip(log_mel @ F.dct_matrix(N_MEL, 40), -10.0, 10.0)
    np.testing.assert_allclose(F.window_features(x), expected, atol=1e-4)


# --------------------------------------------------------------------------- normalisation, padding


@pytest.mark.parametrize("input_type", ["mfcc", "mel", "spectrogram"])
def test_gain_invariance(input_type):
    cfg = FrontendConfig(input_type=input_type)
    x = noise(3.0)
    np.testing.assert_allclose(F.window_features(0.1 * x, cfg), F.window_features(x, cfg),
                               atol=1e-4)


def test_spectrum_rows_do_not_depend_on_the_batch_and_match_float64():
    """Each frame's float32 transform is the same whatever else shares the call (batched,
    streamed and single-window callers get identical rows) and within 1e-5 of numpy's float64."""
    cfg = FrontendConfig()
    x = np.random.default_rng(3).normal(0, 0.2, 40000).astype(np.float32)
    fr = F.frames(x)
    whole = F.magnitude_spectrum(fr, cfg)
    assert whole.dtype == np.float32
    parts = np.concatenate([F.magnitude_spectrum(fr[a:b], cfg) for a, b in ((0, 1), (1, 63), (63, len(fr)))])
    assert np.array_equal(whole, parts)
    reference = np.abs(np.fft.rfft(fr.astype(np.float64) * F.hann_periodic(1024), axis=-1))
    assert np.max(np.abs(whole - reference)) < 1e-5 * max(1.0, reference.max())


@pytest.mark.parametrize("n", [1, 2, 999, 1000, 48000])
def test_peak_percentile_equals_numpy(n):
    a = np.abs(np.random.default_rng(n).normal(size=n)).astype(np.float32)
    assert F.percentile_from_top(a, n, 99.9) == pytest.approx(float(np.percentile(a, 99.9)), rel=1e-6)


def test_peak_normalisation_uses_real_samples():
    x = noise(1.0)
    window, gain = F.fit_window(x, CFG)
    assert gain == pytest.approx(1.0 / np.percentile(np.abs(x), 99.9), rel=1e-6)
    assert np.percentile(np.abs(window[: x.size]), 99.9) == pytest.approx(1.0, rel=1e-5)
    assert F.peak_scale(np.zeros(100, np.float32)) == 1.0
    assert F.peak_scale(np.zeros(0, np.float32)) == 1.0


@pytest.mark.parametrize("n_real", [100, 16000, 47999])
def test_short_clips_are_zero_padded_at_the_end(n_real):
    cfg = FrontendConfig(input_type="mel")
    x = noise(n_real / SR + 1e-9)[:n_real]
    window, _ = F.fit_window(x, cfg)
    assert window.shape == (48000,)
    assert not window[n_real:].any()
    np.testing.assert_allclose(window[:n_real], x / np.percentile(np.abs(x), 99.9), rtol=1e-5)
    feats = F.window_features(x, cfg)
    all_pad = [t for t in range(184) if t * 256 >= n_real]  # frames of nothing but padding
    np.testing.assert_allclose(feats[all_pad], np.log(np.float32(1e-6)), rtol=1e-6)
    with pytest.raises(ValueError, match="exceed"):
        F.fit_window(noise(3.5), cfg)


def test_silence_is_finite():
    for input_type in ("mfcc", "mel", "spectrogram"):
        feats = F.window_features(np.zeros(48000, np.float32), FrontendConfig(input_type=input_type))
        assert np.isfinite(feats).all()
    mfcc = F.window_features(np.zeros(48000, np.float32))
    # log-mel is log(1e-6) everywhere: c0 = log(1e-6) sqrt(256) ~ -221, clipped to -10
    np.testing.assert_allclose(mfcc[:, 0], -10.0)
    np.testing.assert_allclose(mfcc[:, 1:], 0.0, atol=1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    x = noise(1.0)
    x[123] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        F.window_features(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        F.clip_features(np.concatenate([noise(5.0), x]))


def test_stereo_input_raises():
    with pytest.raises(ValueError, match="mono"):
        F.window_features(np.zeros((2, 16000), np.float32))


# --------------------------------------------------------------------------- windows of a clip


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200_000), window=st.integers(1, 60_000), hop_frac=st.floats(0.01, 1.0))
def test_window_starts_properties(n, window, hop_frac):
    hop = max(1, int(window * hop_frac))  # hop <= window: see test below for hop > window
    starts = F.window_starts(n, window, hop)
    assert starts[0] == 0
    if n <= window:
        assert starts == [0]
        return
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert starts[-1] + window == n  # the last window ends at the clip's end
    assert all(s + window <= n for s in starts)
    gaps = np.diff(starts)
    assert (gaps[:-1] == hop).all() and 0 < gaps[-1] <= hop  # hop respected, last one aligned
    # every sample is inside some window: no gap between one window's end and the next start
    assert all(b <= a + window for a, b in zip(starts, starts[1:]))


def test_window_starts_rejects_bad_sizes():
    with pytest.raises(ValueError):
        F.window_starts(100, 0, 10)
    with pytest.raises(ValueError):
        F.window_starts(100, 10, 0)


def test_clip_features_shape_and_windows():
    x = noise(7.5)
    feats = F.clip_features(x, CFG, hop_s=1.0)
    # starts 0,1,2,3,4 s, plus one aligned to the end at 4.5 s
    assert feats.shape == (6, 184, 40)
    np.testing.assert_allclose(feats[5], F.window_features(x[-48000:]), atol=1e-5)
    np.testing.assert_allclose(feats[2], F.window_features(x[32000:80000]), atol=1e-5)
    assert F.clip_features(noise(1.0)).shape == (1, 184, 40)
    assert F.clip_features(noise(7.0), FrontendConfig(window_s=7.0)).shape == (1, 434, 40)


# --------------------------------------------------------------------------- streaming identity


@pytest.mark.parametrize("input_type", ["mfcc", "mel"])
@pytest.mark.parametrize("start_frame", [0, 37, 250])
def test_streaming_mel_once_equals_window_from_scratch(input_type, start_frame):
    cfg = FrontendConfig(input_type=input_type)
    x = noise(20.0, seed=3) * np.linspace(0.1, 1.0, 20 * SR, dtype=np.float32)
    mel_all = F.mel_energies(x, cfg)  # every frame of the stream, computed once
    start = start_frame * cfg.hop_length
    window = x[start : start + cfg.window_samples]
    mel_slice = mel_all[start_frame : start_frame + cfg.num_frames]
    streamed = F.features_from_mel(mel_slice, F.peak_scale(window, cfg.peak_percentile), cfg)
    np.testing.assert_allclose(streamed, F.window_features(window, cfg), atol=1e-4)


def test_features_from_mel_refuses_spectrogram_config():
    # spectrogram features are not a function of mel energies: this used to return MFCCs
    cfg = FrontendConfig(input_type="spectrogram")
    with pytest.raises(ValueError, match="spectrogram"):
        F.features_from_mel(F.mel_energies(noise(3.0), cfg), 1.0, cfg)


# --------------------------------------------------------------------------- config


def test_config_roundtrip_and_mismatches():
    cfg = FrontendConfig(window_s=7.0, input_type="mel")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert FrontendConfig.from_dict(data) == cfg
    assert cfg.mismatches(data) == {}
    recorded = dict(data, hop_length=512, num_mfcc=13)
    assert cfg.mismatches(recorded) == {"hop_length": (512, 256), "num_mfcc": (13, 40)}
    missing = dict(data)
    del missing["clip"]
    assert cfg.mismatches(missing) == {"clip": (None, 10.0)}
    assert cfg.mismatches(dict(data, extra=1)) == {"extra": (1, None)}
    with pytest.raises(ValueError, match="unknown"):
        FrontendConfig.from_dict(dict(data, extra=1))


@pytest.mark.parametrize("kwargs", [{"input_type": "wav2vec"}, {"window_s": 0.05},
                                    {"upper_edge_hz": 9000.0}, {"lower_edge_hz": 0.0}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FrontendConfig(**kwargs)
