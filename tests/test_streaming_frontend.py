"""StreamingFrontend == the plain frontend, chunk-size independent, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from worker.frontend import FrontendConfig, window_features
from worker.frontend import GAIN_BLOCK, gain_from_peak, peak_scale
from worker.streaming_frontend import (StreamingFrontend, block_maxima, gain_from_block_maxima,
                                         percentile_from_top, top_k_count)

CFG = FrontendConfig()
N = CFG.window_samples
HOP = CFG.hop_length


def audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + rng.normal(0, 0.03, t.shape)
    x[16000:20000] *= 1e-3          # a quiet stretch
    x[30000:30010] = 0.95           # a click: the percentile must see single samples
    return x.astype(np.float32)


def pushed(x: np.ndarray, chunk: int) -> StreamingFrontend:
    fe = StreamingFrontend(CFG)
    for i in range(0, len(x), chunk):
        fe.push(x[i : i + chunk])
    return fe


@pytest.mark.parametrize("start", [0, HOP, 17 * HOP, 63 * HOP, 125 * HOP, 200 * HOP])
def test_aligned_windows_equal_plain(start: int) -> None:
    x = audio(7)
    fe = pushed(x, 1600)
    # bit for bit: the gain is applied to the mel energies in both paths (frontend docstring)
    np.testing.assert_array_equal(fe.window(start, keep=True), window_features(x[start : start + N], CFG))


@pytest.mark.parametrize("start", [1, 128, 16000, 16000 + 77])
def test_unaligned_windows_fall_back_to_plain(start: int) -> None:
    x = audio(5)
    fe = pushed(x, 4000)
    np.testing.assert_array_equal(fe.window(start, keep=True), window_features(x[start : start + N], CFG))


def test_silence_and_batch_windows() -> None:
    x = np.zeros(5 * 16000, dtype=np.float32)
    x[-16000:] = audio(1)
    fe = pushed(x, 1000)
    starts = [0, 63 * HOP, 124 * HOP]
    batch = fe.windows(starts, keep=True)
    ref = np.stack([window_features(x[s : s + N], CFG) for s in starts])
    np.testing.assert_array_equal(batch, ref)


def test_percentile_from_top_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in (48000, 1000, 7):
        v = np.abs(rng.normal(size=n)).astype(np.float32)
        k = top_k_count(n, 99.9)
        top = np.sort(v)[-k - 5 :]
        assert percentile_from_top(rng.permutation(top), n, 99.9) == pytest.approx(
            float(np.percentile(v, 99.9)), rel=1e-6)


def exhaustive_gain(x: np.ndarray, pct: float) -> float:
    """The gain from one partition of every magnitude (what ``peak_scale`` did before the
    block search)."""
    return gain_from_peak(percentile_from_top(np.abs(x), x.size, pct))


CASES = ["speech", "int16_ties", "silence", "constant", "one_spike", "loud_tail",
         "short_window", "odd_length"]


def gain_case(case: str) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(3)
    # short window at the median: k = 500 values decide it, more than its 3 blocks + tail bound
    n, pct = {"short_window": (1000, 50.0), "odd_length": (N - 77, 99.9)}.get(case, (N, 99.9))
    x = {"speech": lambda: audio(3.0)[:n],
         "int16_ties": lambda: (np.round(rng.normal(0, 0.01, n) * 32768) / 32768),  # many equal values
         "silence": lambda: np.zeros(n),
         "constant": lambda: np.full(n, 0.25),
         "one_spike": lambda: np.where(np.arange(n) == 777, 0.9, rng.normal(0, 1e-3, n)),
         "loud_tail": lambda: np.where(np.arange(n) >= n - 100, 0.8, rng.normal(0, 0.1, n)),
         "short_window": lambda: rng.normal(0, 0.1, n),
         "odd_length": lambda: audio(3.0)[:n]}[case]().astype(np.float32)
    return x, pct


@pytest.mark.parametrize("block", [HOP, GAIN_BLOCK])
@pytest.mark.parametrize("case", CASES)
def test_gain_from_block_maxima_equals_exhaustive(case: str, block: int) -> None:
    """The block-maximum search gives numpy's percentile gain exactly, ties and edges included."""
    x, pct = gain_case(case)
    whole = (x.size // block) * block
    got = gain_from_block_maxima(x, block_maxima(x[:whole], block), block, pct)
    assert got == exhaustive_gain(x, pct)


@pytest.mark.parametrize("case", CASES)
def test_peak_scale_equals_exhaustive(case: str) -> None:
    x, pct = gain_case(case)
    assert peak_scale(x, pct) == exhaustive_gain(x, pct)


@pytest.mark.parametrize("where", [5, N - 80])  # in a whole block, in the 51-sample tail
def test_peak_scale_with_nan_matches_exhaustive(where: int) -> None:
    x = audio(3.0)[: N - 77].copy()
    x[where] = np.nan
    assert peak_scale(x) == exhaustive_gain(x, 99.9)  # NaN sorts last in the partition


def test_block_maxima_rejects_partial_blocks() -> None:
    with pytest.raises(ValueError, match="whole"):
        block_maxima(np.zeros(300, dtype=np.float32), HOP)


def test_chunk_size_independence() -> None:
    x = audio(8, seed=1)
    starts = list(range(0, len(x) - N + 1, 63 * HOP))
    results = []
    for chunk in (160, 1600, 8000, 12345, len(x)):
        fe = StreamingFrontend(CFG)
        out, pos = [], 0
        for s in starts:
            while not fe.available(s):
                fe.push(x[pos : pos + chunk])
                pos += chunk
            out.append(fe.window(s))
        results.append(np.stack(out))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_end_of_stream_partial_window_is_zero_padded() -> None:
    x = audio(4.5)
    fe = pushed(x, 1600)
    start = 126 * HOP
    length = len(x) - start        # < one window
    assert length < N
    np.testing.assert_array_equal(fe.window(start, length), window_features(x[start:], CFG))
    with pytest.raises(ValueError):
        fe.window(start + HOP)      # the full window was never pushed


def test_memory_is_bounded() -> None:
    fe = StreamingFrontend(CFG)
    x = audio(2)
    nxt, sizes = 0, []
    for i in range(60):                         # 2 minutes of audio, 1 s pushes
        fe.push(x[(i % 2) * 16000 : (i % 2 + 1) * 16000])
        while fe.available(nxt):
            fe.window(nxt)
            nxt += 63 * HOP
        sizes.append(fe.nbytes)
    assert max(sizes[10:]) < 2 * N * 4 + 400 * (CFG.num_mel_bins + 60) * 4
    assert max(sizes[10:]) <= 1.2 * max(sizes[5:10])
    with pytest.raises(ValueError):
        fe.window(0)                            # discarded


def test_bad_input_raises() -> None:
    fe = StreamingFrontend(CFG)
    with pytest.raises(ValueError):
        fe.push(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError):
        fe.push(np.array([np.nan], dtype=np.float32))


def test_window_scorer_mel_cache_equals_plain_features():
    """The worker's path: Windower (frame-aligned hop) -> WindowScorer with WindowMelCache gives
    window_features of each window bit for bit and really reuses frames; a new speaker
    generation (resume) never reuses rows of the old buffer."""
    from worker.scoring import WindowScorer
    from worker.windowing import Windower, WindowingConfig

    cfg = FrontendConfig()
    wcfg = WindowingConfig(window_s=3.0, hop_s=1.0, hop_align_samples=cfg.hop_length)
    assert wcfg.hop_samples == 16128
    rng = np.random.default_rng(3)
    win = Windower(wcfg)
    windows = []
    for spk in ("a", "b"):
        audio = (0.3 * rng.standard_normal(16000 * 8)).astype(np.float32)
        for i in range(0, audio.shape[0], 1600):
            r = win.push(("s", spk), i // 1600, audio[i:i + 1600], 16000,
                         end_of_stream=i + 1600 >= audio.shape[0])
            windows += r.windows
    scorer = WindowScorer(model=None, frontend=cfg, hop_samples=wcfg.hop_samples)
    got = np.concatenate([scorer.features(windows[i:i + 3]) for i in range(0, len(windows), 3)])
    ref = np.stack([window_features(w.samples, cfg) for w in windows])
    np.testing.assert_array_equal(got, ref)
    assert any(w.final for w in windows)
    assert scorer.cache.reused_rows > scorer.cache.computed_rows  # 121 of 184 rows reused
    assert len(scorer.cache) == 0  # final windows forgot both speakers
    # all of both speakers' windows in one batch (a backlog): taken in rounds, each window
    # reusing its predecessor's rows, exactly as one batch per window would
    one_batch = WindowScorer(model=None, frontend=cfg, hop_samples=wcfg.hop_samples)
    np.testing.assert_array_equal(one_batch.features(windows), ref)
    full = sum(not w.final for w in windows)
    assert one_batch.cache.reused_rows == 121 * (full - 2)  # all but each speaker's first
    assert len(one_batch.cache) == 0
    # same key, new generation at the same position: rows are recomputed, not reused
    w0 = windows[1]
    before = scorer.cache.reused_rows
    scorer.features([w0])
    w_new = type(w0)(**{**w0.__dict__, "stream_gen": w0.stream_gen + 1000,
                        "pcm": (w0.samples * 0.5).astype(np.float32)})
    feats = scorer.features([w_new])
    assert scorer.cache.reused_rows == before
    np.testing.assert_array_equal(feats[0], window_features(w_new.samples, cfg))


def test_window_scorer_int16_backlog_in_steps_equals_plain_features():
    """int16 PCM speakers: windows keep int16 until scored, the scorer converts them exactly;
    a backlog larger than one feature step (FEATURE_WINDOWS) is taken step by step in order,
    each window still reusing its predecessor's rows."""
    from worker.scoring import FEATURE_WINDOWS, WindowScorer
    from worker.windowing import Windower, WindowingConfig

    cfg = FrontendConfig()
    wcfg = WindowingConfig(window_s=3.0, hop_s=1.0, hop_align_samples=cfg.hop_length)
    rng = np.random.default_rng(11)
    win = Windower(wcfg)
    windows = []
    for spk in ("a", "b", "c"):
        pcm = (9000 * rng.standard_normal(16000 * 10)).clip(-32768, 32767).astype(np.int16)
        for i in range(0, pcm.shape[0], 8000):
            windows += win.push(("s", spk), i // 8000, pcm[i:i + 8000], 16000,
                                end_of_stream=i + 8000 >= pcm.shape[0]).windows
    assert {w.pcm.dtype for w in windows} == {np.dtype(np.int16)}
    full = sum(not w.final for w in windows)
    assert full > FEATURE_WINDOWS
    scorer = WindowScorer(model=None, frontend=cfg, hop_samples=wcfg.hop_samples)
    ref = np.stack([window_features(w.pcm.astype(np.float32) / 32768, cfg) for w in windows])
    np.testing.assert_array_equal(scorer.features(windows), ref)
    assert scorer.cache.reused_rows == 121 * (full - 3)  # all but each speaker's first
    assert len(scorer.cache) == 0


def test_leads_transform_first_windows_ahead_bit_for_bit():
    """A speaker's first window is announced (``Lead``) once 2/3 of it has arrived; the scorer
    transforms those frames then, and the window reuses them: same features bit for bit, and
    every full window (the first too) reuses at least 121 of its 184 rows."""
    from worker.scoring import WindowScorer
    from worker.windowing import Windower, WindowingConfig

    cfg = FrontendConfig()
    rng = np.random.default_rng(4)
    streams = []
    for spk, chunk in (("a", 1600), ("b", 8000), ("c", 7001)):
        audio = (0.3 * rng.standard_normal(16000 * 7)).astype(np.float32)
        pcm = np.round(audio * 3000).astype(np.int16)  # one int16 speaker too
        streams.append((spk, chunk, pcm if spk == "c" else audio))

    def run(lead_fraction: float):
        wcfg = WindowingConfig(window_s=3.0, hop_s=1.0, hop_align_samples=cfg.hop_length,
                               lead_fraction=lead_fraction)
        win = Windower(wcfg)
        scorer = WindowScorer(model=None, frontend=cfg, hop_samples=wcfg.hop_samples)
        got, ref, leads, full = [], [], [], 0
        for spk, chunk, x in streams:
            for i in range(0, x.shape[0], chunk):
                r = win.push(("s", spk), i // chunk, x[i:i + chunk], 16000,
                             end_of_stream=i + chunk >= x.shape[0])
                scorer.lead(r.leads)
                leads += r.leads
                if r.windows:
                    got.append(scorer.features(r.windows))
                    ref += [window_features(w.samples, cfg) for w in r.windows]
                    full += sum(not w.final for w in r.windows)
        np.testing.assert_array_equal(np.concatenate(got), np.stack(ref))
        return wcfg, leads, full, scorer.cache.reused_rows

    wcfg, leads, full, reused = run(2 / 3)
    assert [lead.key for lead in leads] == [("s", "a"), ("s", "b"), ("s", "c")]
    assert all(wcfg.lead_samples <= lead.samples.shape[0] < wcfg.window_samples for lead in leads)
    assert reused >= 121 * full  # the first windows too
    off, no_leads, full_off, reused_off = run(0)
    assert off.lead_samples == 0 and not no_leads and full_off == full
    assert reused_off == 121 * (full - 3)  # each speaker's first window computed all 184 rows
