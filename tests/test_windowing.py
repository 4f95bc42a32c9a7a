"""Windowing without a broker: exact windows, chunking invariance, seq handling, tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.signal import resample_poly

from worker.frontend import FrontendConfig
from worker.windowing import (effective_hop_samples, StreamingResampler, WindowingConfig, Windower, WindowingError,
                              WindowSpan, expected_windows, vad_speech)

# A small clock: 0.25 s windows, 0.1 s hop keep the property tests fast.
SMALL = WindowingConfig(window_s=0.25, hop_s=0.1, reorder_timeout_s=1.0, idle_timeout_s=5.0)
W, H = SMALL.window_samples, SMALL.hop_samples  # 4000, 1600
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def split(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = sorted({0, n, *[c % (n + 1) for c in cuts]})
    return [(a, b) for a, b in zip(edges, edges[1:])] or [(0, 0)]


def run_stream(win: Windower, key, audio: np.ndarray, rate: int, spans, order=None, eos=True):
    out, released = [], []
    order = list(range(len(spans))) if order is None else order
    for i in order:
        a, b = spans[i]
        r = win.push(key, i, audio[a:b], rate, end_of_stream=eos and i == len(spans) - 1, token=(key, i))
        out += r.windows
        released += r.release
    for w in out:
        released += w.release
    return out, released


# ------------------------------------------------------------------ expected_windows


def test_effective_hop_is_frame_aligned_for_the_frontend():
    assert effective_hop_samples(1.0) == 16000  # no alignment asked
    assert effective_hop_samples(1.0, 16000, 256) == 16128  # 62.5 frames -> 63 (half up)
    assert effective_hop_samples(0.5, 16000, 256) == 7936  # 31.25 frames -> 31
    assert effective_hop_samples(0.992, 16000, 256) == 15872
    assert effective_hop_samples(3.0, 16000, 256, 48000) == 47872  # never past the window
    assert effective_hop_samples(0.001, 16000, 256) == 256  # at least one frame hop
    assert WindowingConfig(hop_s=1.0, hop_align_samples=256).hop_samples == 16128
    # expected_windows with a FrontendConfig uses the worker's (aligned) hop
    assert expected_windows(80000, FrontendConfig(), 1.0)[1].start == 16128


def test_expected_windows_cases():
    cfg = FrontendConfig()  # 3 s window
    sr = 16000
    hop = effective_hop_samples(1.0, sr, cfg.hop_length)  # 16128: the worker's hop
    assert expected_windows(0, cfg, 1.0) == []
    assert expected_windows(2 * sr, cfg, 1.0) == [WindowSpan(0, 0, 2 * sr)]
    assert expected_windows(3 * sr, cfg, 1.0) == [WindowSpan(0, 0, 3 * sr)]
    assert expected_windows(int(3.5 * sr), cfg, 1.0) == [WindowSpan(0, 0, 3 * sr),
                                                        WindowSpan(1, hop, int(3.5 * sr))]
    assert [w.index for w in expected_windows(5 * sr, cfg, 1.0)] == [0, 1, 2]
    # resumed at 2.5 s: windows start at or after it
    assert [w.index for w in expected_windows(6 * sr, cfg, 1.0, first_sample=int(2.5 * sr))] == [3]
    with pytest.raises(ValueError):
        expected_windows(sr, cfg, 4.0)


@FAST
@given(n=st.integers(0, 12 * H))
def test_expected_windows_cover_every_sample_once_in_order(n):
    spans = expected_windows(n, SMALL)
    covered = np.zeros(n, dtype=bool)
    for s in spans:
        covered[s.start:s.end] = True
    assert covered.all()
    assert [s.index for s in spans] == list(range(len(spans)))
    assert all(s.end - s.start <= W for s in spans)
    assert sum(1 for s in spans if s.end - s.start < W) <= 1


# ------------------------------------------------------------------ chunking invariance


@FAST
@given(n=st.integers(0, 10 * H), cuts=st.lists(st.integers(0, 10 * H), max_size=12),
       seed=st.integers(0, 2**16))
def test_16k_windows_match_expected_for_any_chunking(n, cuts, seed):
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    win = Windower(SMALL, clock=FakeClock())
    spans = split(n, cuts)
    out, released = run_stream(win, "s", audio, 16000, spans)
    assert [(w.index, w.start_sample, w.start_sample + len(w.samples)) for w in out] == \
        [(s.index, s.start, s.end) for s in expected_windows(n, SMALL)]
    for w in out:
        np.testing.assert_array_equal(w.samples, audio[w.start_sample:w.start_sample + len(w.samples)])
        assert not w.gap
    assert sorted(released) == [("s", i) for i in range(len(spans))]  # each token exactly once
    assert len(win) == 0


@FAST
@given(rate=st.sampled_from([8000, 11025, 22050, 44100, 48000]),
       cuts=st.lists(st.integers(0, 9000), max_size=10), seed=st.integers(0, 2**16))
def test_streaming_resampler_equals_resample_poly(rate, cuts, seed):
    n = 9000
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    r = StreamingResampler(rate, 16000)
    parts = [r.push(x[a:b]) for a, b in split(n, cuts)] + [r.flush()]
    y = np.concatenate(parts)
    from fractions import Fraction
    f = Fraction(16000, rate)
    ref = resample_poly(x.astype(np.float64), f.numerator, f.denominator)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_resampled_windows_independent_of_chunk_size():
    rate = 8000
    x = np.random.default_rng(1).uniform(-0.5, 0.5, rate).astype(np.float32)  # 1 s
    results = []
    for chunk in (160, 800, 1237, rate):
        win = Windower(SMALL, clock=FakeClock())
        spans = [(a, min(a + chunk, rate)) for a in range(0, rate, chunk)]
        out, _ = run_stream(win, "k", x, rate, spans)
        results.append(out)
    ref = resample_poly(x.astype(np.float64), 2, 1)
    assert [w.index for w in results[0]] == [s.index for s in expected_windows(len(ref), SMALL)]
    for out in results[1:]:
        assert [w.index for w in out] == [w.index for w in results[0]]
        for a, b in zip(out, results[0]):
            np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)


# ------------------------------------------------------------------ sequence handling


@FAST
@given(seed=st.integers(0, 2**16), n_chunks=st.integers(2, 14), dup=st.integers(0, 5))
def test_reordered_and_duplicated_chunks_give_the_same_windows(seed, n_chunks, dup):
    rng = np.random.default_rng(seed)
    chunk = 700
    n = n_chunks * chunk
    audio = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    spans = [(i * chunk, (i + 1) * chunk) for i in range(n_chunks)]
    order = list(range(n_chunks))
    # local shuffles within the reorder window, plus duplicates; the first chunk seen defines
    # where the stream starts (seq > 0 first means a resumed stream), so chunk 0 stays first
    for i in range(1, n_chunks - 1, 3):
        if rng.random() < 0.7:
            order[i], order[i + 1] = order[i + 1], order[i]
    order += [int(rng.integers(0, n_chunks)) for _ in range(dup)]
    win = Windower(SMALL, clock=FakeClock())
    out, released = [], []
    for i in order:
        a, b = spans[i]
        r = win.push("s", i, audio[a:b], 16000, end_of_stream=i == n_chunks - 1, token=i)
        out += r.windows
        released += r.release
        released += [t for w in r.windows for t in w.release]
    ref = expected_windows(n, SMALL)
    # a duplicate arriving after end of stream is dropped as late
    assert [(w.index, w.start_sample) for w in out] == [(s.index, s.start) for s in ref]
    for w in out:
        np.testing.assert_array_equal(w.samples, audio[w.start_sample:w.start_sample + len(w.samples)])
    assert sorted(set(released)) == list(range(n_chunks))
    assert len(released) == len(order)  # every message's token released exactly once


def test_gap_filled_with_silence_after_timeout_and_flagged():
    clock = FakeClock()
    win = Windower(SMALL, clock=clock)
    chunk = 800
    audio = np.full(20 * chunk, 0.3, dtype=np.float32)
    out = []
    for i in range(20):
        if i == 5:
            continue  # lost
        out += win.push("s", i, audio[i * chunk:(i + 1) * chunk], 16000, end_of_stream=i == 19).windows
        if i == 8:
            clock.t += 2.0
            out += win.tick().windows
    assert [w.index for w in out] == [s.index for s in expected_windows(len(audio), SMALL)]
    gap_lo, gap_hi = 5 * chunk, 6 * chunk
    for w in out:
        overlaps = w.start_sample < gap_hi and w.start_sample + len(w.samples) > gap_lo
        assert w.gap == overlaps
        if overlaps:
            assert np.all(w.samples[gap_lo - w.start_sample:gap_hi - w.start_sample][:max(0, gap_hi - w.start_sample)] == 0)


def test_gap_filled_when_reorder_buffer_full():
    win = Windower(WindowingConfig(window_s=0.25, hop_s=0.1, max_reorder_chunks=3), clock=FakeClock())
    x = np.ones(400, dtype=np.float32) * 0.1
    r = None
    for seq in (0, 2, 3, 4, 5):  # seq 1 never comes
        r = win.push("s", seq, x, 16000)
    assert r.counts.get("gap_filled_chunks") == 1
    assert win.speakers["s"].next_seq == 6


def test_huge_seq_jump_is_rejected():
    win = Windower(SMALL, clock=FakeClock())
    win.push("s", 0, np.zeros(1600, np.float32), 16000)
    with pytest.raises(WindowingError) as err:
        win.push("s", 10**9, np.zeros(1600, np.float32), 16000)
    assert err.value.reason == "seq_out_of_range"


def test_sample_rate_switch_and_bad_samples_rejected():
    win = Windower(SMALL, clock=FakeClock())
    win.push("s", 0, np.zeros(800, np.float32), 16000)
    with pytest.raises(WindowingError) as err:
        win.push("s", 1, np.zeros(400, np.float32), 8000)
    assert err.value.reason == "sample_rate_changed"
    with pytest.raises(WindowingError) as err:
        win.push("s", 1, np.array([0.0, np.nan], np.float32), 16000)
    assert err.value.reason == "invalid_samples"
    with pytest.raises(WindowingError):
        win.push("s", -1, np.zeros(4, np.float32), 16000)


def test_idle_speaker_flushed_and_continues_on_same_clock():
    clock = FakeClock()
    win = Windower(SMALL, clock=clock)
    x = np.full(5000, 0.2, np.float32)
    out = win.push("s", 0, x, 16000).windows
    assert [w.index for w in out] == [0]
    clock.t += 10.0
    r = win.tick()
    assert r.counts.get("flushed_idle") == 1 and len(win) == 0
    assert [(w.index, w.final) for w in r.windows] == [(1, True)]
    assert [t for w in r.windows for t in w.release] == []  # the push above had no token
    # late duplicate dropped, continuation resumes at the next hop boundary after 5000
    assert win.push("s", 0, x, 16000).counts == {"late_after_end": 1}
    out = win.push("s", 1, np.full(8000, 0.2, np.float32), 16000, end_of_stream=True).windows
    assert out[0].start_sample >= 5000 and out[0].start_sample % H == 0


def test_resume_mid_stream_uses_seq_times_chunk_length():
    win = Windower(SMALL, clock=FakeClock())
    x = np.full(1000, 0.2, np.float32)
    out = []
    for seq in range(5, 15):
        out += win.push("s", seq, x, 16000, end_of_stream=seq == 14).windows
    ref = expected_windows(15000, SMALL, first_sample=5000)
    assert [(w.index, w.start_sample) for w in out] == [(s.index, s.start) for s in ref]


def test_live_speakers_capped_lru_flushed():
    win = Windower(WindowingConfig(window_s=0.25, hop_s=0.1, max_speakers=2), clock=FakeClock())
    x = np.full(800, 0.2, np.float32)
    win.push("a", 0, x, 16000)
    win.push("b", 0, x, 16000)
    win.push("a", 1, x, 16000)
    r = win.push("c", 0, x, 16000)
    assert r.counts.get("evicted") == 1 and set(win.speakers) == {"a", "c"}
    assert [w.key for w in r.windows] == ["b"]


def test_tokens_released_only_after_last_window_needing_them():
    win = Windower(SMALL, clock=FakeClock())
    chunk = 1000
    audio = np.zeros(12 * chunk, np.float32)
    emitted = []
    for i in range(12):
        r = win.push("s", i, audio[i * chunk:(i + 1) * chunk], 16000, end_of_stream=i == 11, token=i)
        emitted += r.windows
        for w in r.windows:
            later = [v for v in emitted if v.index > w.index]
            assert not later
            for t in w.release:  # no later window overlaps a released chunk
                nxt = (w.index + 1) * H
                assert (t + 1) * chunk <= nxt or i == 11  # end of stream: nothing follows


def test_vad_finds_one_loud_frame_anywhere_in_a_window():
    """The first quarter of the frames is judged before the rest: a single loud 30 ms frame
    is found at every position (both blocks, their boundary, the short trailing frame)."""
    n, frame = 48000 + 200, 480  # 100 full frames and a 200-sample tail
    for dtype, loud in ((np.int16, 400), (np.float32, 0.02)):
        quiet = np.zeros(n, dtype)
        assert not vad_speech(quiet, -45.0)
        for start in [i * frame for i in range(n // frame)] + [n - 200]:
            x = quiet.copy()
            x[start:start + frame] = loud
            assert vad_speech(x, -45.0), (dtype, start)


def test_vad():
    t = np.arange(16000) / 16000
    assert vad_speech(0.1 * np.sin(2 * np.pi * 200 * t).astype(np.float32), -45.0)
    assert not vad_speech(np.zeros(16000, np.float32), -45.0)
    assert not vad_speech(np.full(16000, 1e-4, np.float32), -45.0)
    level = 10 ** (-45.0 / 20)  # RMS of the threshold
    assert vad_speech(np.full(16000, 1.01 * level, np.float32), -45.0)
    assert not vad_speech(np.full(16000, 0.99 * level, np.float32), -45.0)
    one_frame = np.zeros(16000, np.float32)
    one_frame[4800:5280] = 0.02  # one 30 ms frame of speech in silence
    assert vad_speech(one_frame, -45.0)
    tail = np.zeros(16100, np.float32)
    tail[-100:] = 0.02  # only the short trailing frame is loud
    assert vad_speech(tail, -45.0) and not vad_speech(tail[:-100], -45.0)
    # int16 PCM is judged without a conversion, as its float32 values x / 32768 would be: the
    # threshold's RMS is 184.3 in int16 units, so 184 is silence and 185 speech
    for value in (183, 184, 185, 186, -185, 32767, -32768):
        pcm = np.full(16000, value, np.int16)
        assert vad_speech(pcm, -45.0) == vad_speech(pcm.astype(np.float32) / 32768, -45.0)
        assert vad_speech(pcm, -45.0) == (abs(value) >= 185)
        short = np.zeros(16100, np.int16)
        short[-100:] = value  # only the short trailing frame: 100 samples
        assert vad_speech(short, -45.0) == vad_speech(short.astype(np.float32) / 32768, -45.0)
    win = Windower(SMALL, clock=FakeClock())
    out = win.push("s", 0, np.zeros(W, np.float32), 16000, end_of_stream=True).windows
    assert [w.speech for w in out] == [False]


def test_int16_pcm_buffers_give_the_same_windows_in_half_the_memory():
    """int16 chunks are kept as int16: the windows (and their order, flags, tokens) are
    bit-identical to the float32 path, a float chunk mid-stream switches the speaker to float32
    exactly, and gaps filled with silence stay int16."""
    rng = np.random.default_rng(5)
    pcm = rng.integers(-32768, 32768, size=W * 4, dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    chunks = [(i, slice(i * 800, (i + 1) * 800)) for i in range(audio.shape[0] // 800)]
    held: list = []  # dtype each window holds its audio in until scored

    def windows(pcm16_of, skip=()):
        win = Windower(SMALL, clock=FakeClock())
        out, sizes = [], []
        held.clear()
        for i, span in chunks:
            if i in skip:
                continue
            x = pcm[span] if pcm16_of(i) else audio[span]
            r = win.push("s", i, x, 16000, end_of_stream=i == len(chunks) - 1, token=i)
            out += [(w.start_sample, w.samples, w.final, w.gap, w.speech, w.release) for w in r.windows]
            held.extend(w.pcm.dtype for w in r.windows)
            if "s" in win.speakers:
                sizes.append((win.speakers["s"].pcm16, win.speakers["s"]._store.nbytes))
            if i == 7 and skip:  # the reorder timeout: fill the missing chunk with silence
                r = win.tick(now=SMALL.reorder_timeout_s + 0.5)
                out += [(w.start_sample, w.samples, w.final, w.gap, w.speech, w.release) for w in r.windows]
        return out, sizes

    ref, ref_sizes = windows(lambda i: False)
    got, sizes = windows(lambda i: True)
    assert held and set(held) == {np.dtype(np.int16)}  # a queued window holds 2 bytes a sample
    mixed, mixed_sizes = windows(lambda i: i < 9)  # a float32 chunk from chunk 9 on
    for other in (got, mixed):
        assert len(other) == len(ref)
        for a, b in zip(ref, other):
            assert a[0] == b[0] and a[2:] == b[2:]
            assert a[1].dtype == b[1].dtype == np.float32 and np.array_equal(a[1], b[1])
    assert all(p for p, _ in sizes) and not any(p for p, _ in ref_sizes)
    assert max(n for _, n in sizes) * 2 == max(n for _, n in ref_sizes)
    assert mixed_sizes[5][0] and not mixed_sizes[-1][0]
    gapped, gapped_sizes = windows(lambda i: True, skip={5})
    assert any(w[3] for w in gapped) and all(p for p, _ in gapped_sizes)
