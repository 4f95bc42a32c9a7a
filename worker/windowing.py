"""Per-speaker windowing on the stream's clock: pure code, no Kafka, an injectable clock.

The worker feeds every decoded audio chunk to :meth:`Windower.push` and calls
:meth:`Windower.tick` periodically; both return :class:`Window` objects ready for the frontend
and the model, plus the *tokens* (opaque: the worker uses Kafka ``(partition, offset)``) of
chunks whose audio no window still needs. The worker commits a chunk's offset only after its
token is released **and** the events of every window emitted before the release are delivered.

Stream clock and windows
------------------------
Audio is resampled to 16 kHz (:class:`StreamingResampler`, exactly ``resample_poly`` of the
whole stream, whatever the chunking). Sample ``i`` of the 16 kHz stream is at ``i / 16000`` s.
With ``W`` = window samples and ``H`` = hop samples (``0 < H <= W``; ``H`` is
:func:`effective_hop_samples`: in the worker ``hop_s`` rounded to a multiple of the frontend's
256-sample frame hop, 1.0 s -> 1.008 s), window ``k`` covers
``[k*H, k*H + W)``. A stream of ``N`` samples yields exactly :func:`expected_windows`:

* every *full* window ``k`` with ``k*H + W <= N``, emitted as soon as its last sample arrives;
* at end of stream, one *final partial* window ``K`` (the next index) covering ``[K*H, N)``
  when audio after the last full window exists (``N > (K-1)*H + W``, or ``N > 0`` when no full
  window fits): zero-padded at the end by the frontend's ``pad_window``, as in training.

Chunks and sequence numbers
---------------------------
``seq`` counts a speaker's chunks from 0. ``seq < expected`` is a duplicate (dropped, counted).
A chunk ahead of ``expected`` waits in a bounded reorder buffer (``max_reorder_chunks`` chunks,
``reorder_timeout_s`` of wall clock); then each missing chunk is filled with silence as long as
the chunk before it (producers send fixed-length chunks) and every window overlapping the fill
carries ``gap=True``. A jump whose fill would exceed ``max_buffer_s`` is rejected
(:class:`WindowingError`, reason ``seq_out_of_range``): the worker dead-letters it.

The first chunk seen for a speaker with ``seq > 0`` (a worker resuming from a committed offset
after a restart or a rebalance) starts the stream at ``offset_samples`` if the chunk carries it,
else at ``seq * len(chunk)`` (fixed-length chunks); windows resume at the first index whose
start is at or after that position. For 16 kHz input the resumed windows are bit-identical; for
other rates the resampler restarts with empty history, so the first ~1 ms after the resume point
differs slightly.

End of stream, idle speakers, caps
----------------------------------
``end_of_stream`` flushes the speaker (final partial window) and forgets it; a speaker silent for
``idle_timeout_s`` is flushed the same way. Live speakers are capped at ``max_speakers``: a new
speaker beyond the cap flushes the least recently active one (reason ``evicted``). A small
bounded memory of finished speakers (``next seq`` and position) drops late duplicates after an
end of stream and lets an idle-flushed speaker continue on the same clock. Memory per speaker is
bounded by one window plus one chunk, plus the reorder buffer (``max_buffer_s``); int16 PCM
chunks are kept as int16 (2 bytes a sample) as long as every chunk of the speaker is one.

Voice activity
--------------
``speech`` is True when any 30 ms frame (480 samples, non-overlapping, real samples only: not
padding, not gap fill) has an RMS level above ``vad_threshold_dbfs`` dBFS (full scale = 1.0).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Hashable, Iterable

import numpy as np

from schemas import pcm16_to_float32

SAMPLE_RATE_HZ = 16000
VAD_FRAME_MS = 30.0


class WindowingError(ValueError):
    """A chunk the windowing cannot accept; ``reason`` goes into the dead letter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        # What the call did before refusing the chunk (e.g. a speaker evicted to make room):
        # its windows and released tokens must still be handled, or offsets stay held forever.
        self.result: StepResult | None = None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class WindowingConfig:
    sample_rate_hz: int = SAMPLE_RATE_HZ
    window_s: float = 3.0
    hop_s: float = 1.0
    max_reorder_chunks: int = 16
    reorder_timeout_s: float = 2.0
    idle_timeout_s: float = 10.0
    max_buffer_s: float = 30.0
    max_speakers: int = 2000
    vad_threshold_dbfs: float = -45.0
    finished_memory: int = 10_000  # finished speakers remembered (late duplicates, resume)
    # hop rounded to a multiple of this many samples (the frontend's frame hop, 256, in the
    # worker: consecutive windows then share frames); 0 keeps round(hop_s * rate)
    hop_align_samples: int = 0
    # a speaker's first window is announced once this share of it has arrived (``Lead``): the
    # scorer transforms those frames early instead of all of them when the window completes
    # (0: off). Later windows reuse the previous window's frames anyway.
    lead_fraction: float = 2 / 3

    def __post_init__(self) -> None:
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise ValueError("window and hop must be positive")
        if self.hop_samples > self.window_samples:
            raise ValueError(f"hop {self.hop_s} s exceeds window {self.window_s} s")
        if self.max_reorder_chunks < 1 or self.max_speakers < 1:
            raise ValueError("max_reorder_chunks and max_speakers must be >= 1")

    @functools.cached_property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate_hz))

    @functools.cached_property
    def hop_samples(self) -> int:
        return effective_hop_samples(self.hop_s, self.sample_rate_hz, self.hop_align_samples,
                                     self.window_samples)

    @property
    def lead_samples(self) -> int:
        """Samples of a first window that trigger its :class:`Lead` (0: no leads)."""
        return int(self.window_samples * self.lead_fraction) if self.lead_fraction > 0 else 0

    @property
    def max_buffer_samples(self) -> int:
        return int(round(self.max_buffer_s * self.sample_rate_hz))

    @classmethod
    def from_settings(cls, settings: Any, window_s: float,
                      hop_align_samples: int = 0) -> "WindowingConfig":
        """The worker passes the frontend's ``hop_length`` as ``hop_align_samples``."""
        return cls(window_s=window_s, hop_s=settings.hop_s, hop_align_samples=hop_align_samples,
                   max_reorder_chunks=settings.max_reorder_chunks,
                   reorder_timeout_s=settings.reorder_timeout_s,
                   idle_timeout_s=settings.idle_timeout_s, max_buffer_s=settings.max_buffer_s,
                   max_speakers=settings.max_speakers,
                   vad_threshold_dbfs=settings.vad_threshold_dbfs)


def effective_hop_samples(hop_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ,
                          align_samples: int = 0, window_samples: int | None = None) -> int:
    """THE hop of the worker's windows, in samples: every caller (worker, expected windows,
    offline comparisons, benches) goes through here.

    ``round(hop_s * rate)``; with ``align_samples`` (the frontend's frame hop, 256) that is
    rounded half-up to a multiple of it (at least one, at most ``window_samples``), so that
    consecutive windows share their frames and the streaming frontend computes each frame
    once: 1.0 s -> 63 * 256 = 16,128 samples = 1.008 s; 0.5 s -> 7,936 (0.496 s).
    """
    hop = int(round(hop_s * sample_rate_hz))
    if align_samples and align_samples > 0 and hop > 0:
        if window_samples is not None and hop > window_samples:
            return hop  # invalid either way: the caller refuses hop > window
        aligned = max(1, math.floor(hop / align_samples + 0.5)) * align_samples
        if window_samples is not None and aligned > window_samples:
            aligned = (window_samples // align_samples) * align_samples
        hop = aligned if aligned > 0 else hop
    return hop


def hop_align_of(cfg: Any) -> int:
    """Hop alignment implied by a config: a ``WindowingConfig``'s ``hop_align_samples``, a
    ``FrontendConfig``'s frame ``hop_length`` (what the worker uses)."""
    if hasattr(cfg, "hop_align_samples"):
        return int(cfg.hop_align_samples)
    return int(getattr(cfg, "hop_length", 0) or 0)


@dataclass(frozen=True)
class WindowSpan:
    index: int
    start: int  # first sample (16 kHz stream clock)
    end: int  # one past the last real sample; end - start < window for the final partial window


def expected_windows(n_samples: int, cfg: Any, hop_s: float | None = None,
                     first_sample: int = 0) -> list[WindowSpan]:
    """The windows a stream of ``n_samples`` (16 kHz) yields; see the module docstring.

    ``cfg`` is anything with ``window_samples`` and ``sample_rate_hz`` (a ``FrontendConfig`` or
    a :class:`WindowingConfig`); ``hop_s`` defaults to ``cfg.hop_s``. The hop is
    :func:`effective_hop_samples` with the alignment of ``cfg`` (:func:`hop_align_of`): with a
    ``FrontendConfig`` that is the worker's frame-aligned hop. ``first_sample`` is where a
    resumed stream starts (windows start at or after it).
    """
    w = int(cfg.window_samples)
    hop = effective_hop_samples(hop_s if hop_s is not None else cfg.hop_s, cfg.sample_rate_hz,
                                hop_align_of(cfg), w)
    if hop <= 0 or hop > w:
        raise ValueError("need 0 < hop <= window")
    first = -(-first_sample // hop)
    out = []
    k = first
    while k * hop + w <= n_samples:
        out.append(WindowSpan(k, k * hop, k * hop + w))
        k += 1
    if n_samples > k * hop and (k == 0 or n_samples > (k - 1) * hop + w):
        out.append(WindowSpan(k, k * hop, n_samples))
    return out


# --------------------------------------------------------------------------- resampling


class StreamingResampler:
    """Polyphase resampler fed chunk by chunk; output equals ``scipy.signal.resample_poly``
    of the whole stream (same Kaiser(5.0) FIR, ``half_len = 10 * max(up, down)``).

    Output sample ``m`` needs input up to ``(m*down + half_len) // up``, so outputs lag the input
    by ``half_len / up`` input samples (10 samples for 8 kHz -> 16 kHz) until :meth:`flush`.
    """

    def __init__(self, from_hz: int, to_hz: int = SAMPLE_RATE_HZ) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
        ratio = Fraction(to_hz, from_hz)
        self.from_hz, self.to_hz = from_hz, to_hz
        self.up, self.down = ratio.numerator, ratio.denominator
        self.passthrough = self.up == self.down == 1
        self.n_in = 0
        self.n_out = 0
        if not self.passthrough:
            from scipy.signal import firwin

            max_rate = max(self.up, self.down)
            self.half = 10 * max_rate
            self.h = firwin(2 * self.half + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
            self.taps = (2 * self.half) // self.up + 2
            self._x = np.zeros(0, dtype=np.float64)
            self._x_base = 0

    def total_out(self, n_in: int | None = None) -> int:
        n = self.n_in if n_in is None else n_in
        return -(-n * self.up // self.down)

    def last_output_needing(self, n_in_end: int) -> int:
        """Highest output index influenced by input samples before ``n_in_end``."""
        if self.passthrough:
            return n_in_end - 1
        return min(((n_in_end - 1) * self.up + self.half) // self.down, self.total_out(n_in_end) - 1) \
            if n_in_end > 0 else -1

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resampled float32 samples; at an unchanged rate the input itself (any dtype)."""
        if self.passthrough:
            self.n_in += samples.shape[0]
            self.n_out += samples.shape[0]
            return samples
        samples = np.asarray(samples, dtype=np.float32)
        self.n_in += samples.shape[0]
        self._x = np.concatenate([self._x, samples.astype(np.float64)])
        # outputs whose last needed input has arrived: (m*down + half)//up <= n_in - 1
        stop = ((self.n_in - 1) * self.up - self.half) // self.down + 1 if self.n_in else 0
        stop = max(min(stop, self.total_out()), self.n_out)
        return self._emit(stop)

    def flush(self) -> np.ndarray:
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        return self._emit(self.total_out())

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self.n_out:
            return np.zeros(0, dtype=np.float32)
        m = np.arange(self.n_out, stop, dtype=np.int64)
        t = m * self.down + self.half
        k_lo = -((2 * self.half - t) // self.up)  # ceil((t - 2*half) / up)
        ks = k_lo[:, None] + np.arange(self.taps, dtype=np.int64)[None, :]
        hidx = t[:, None] - ks * self.up
        valid = (hidx >= 0) & (hidx <= 2 * self.half) & (ks >= 0) & (ks < self.n_in)
        xi = np.clip(ks - self._x_base, 0, max(self._x.shape[0] - 1, 0))
        xs = self._x[xi] if self._x.shape[0] else np.zeros_like(hidx, dtype=np.float64)
        y = np.where(valid, self.h[np.clip(hidx, 0, 2 * self.half)] * xs, 0.0).sum(axis=1)
        self.n_out = stop
        # drop input no future output needs
        keep_from = max(0, int(-((2 * self.half - (stop * self.down + self.half)) // self.up)))
        drop = keep_from - self._x_base
        if drop > 0:
            self._x = self._x[drop:]
            self._x_base = keep_from
        return y.astype(np.float32)


# --------------------------------------------------------------------------- outputs


def as_float32(pcm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Samples as float32: int16 PCM converted (x / 32768, exact; into ``out`` if given),
    float32 as it is."""
    return pcm16_to_float32(pcm, out) if pcm.dtype == np.int16 else pcm


@dataclass
class Window:
    """One window ready to score: only the real audio (no end padding).

    ``pcm`` is the window's own copy of the audio as the speaker's buffer holds it: int16 PCM
    (half the memory of float32 while the window waits for the scorer, bench/README.md) or
    float32; ``samples`` is it as float32 (converted on each access: the scorer asks once)."""

    key: Hashable
    index: int
    start_sample: int
    pcm: np.ndarray
    sample_rate_hz: int
    final: bool
    gap: bool
    speech: bool
    completed_at: float  # clock time of the chunk (or tick) that completed the window
    release: list[Any] = field(default_factory=list)  # chunk tokens free once this is delivered
    origin_ts: float = 0.0  # producers' capture_ts of stream sample 0
    # which SpeakerState cut it: windows of the same generation come from one continuous
    # buffer, so a scorer may reuse frames between them (a resumed speaker is a new one)
    stream_gen: int = 0

    @property
    def samples(self) -> np.ndarray:
        return as_float32(self.pcm)

    @property
    def n_samples(self) -> int:
        return self.pcm.shape[0]

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.pcm.shape[0]

    @property
    def start_s(self) -> float:
        """Window start on the producers' clock (``capture_ts`` units)."""
        return self.origin_ts + self.start_sample / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        return self.origin_ts + self.end_sample / self.sample_rate_hz


@dataclass
class Lead:
    """The first ``samples.shape[0]`` samples of a speaker's first window, sent ahead of it:
    a streaming scorer transforms their frames while the rest of the window arrives, so a
    first window (which has no predecessor to share frames with) costs no more at completion
    than a later one. Carries no offsets and produces no event."""

    key: Hashable
    start_sample: int
    pcm: np.ndarray  # as the window's ``pcm`` will be (int16 PCM or float32)
    stream_gen: int = 0

    @property
    def samples(self) -> np.ndarray:
        return as_float32(self.pcm)


@dataclass
class StepResult:
    """What one push/tick produced.

    ``windows`` in emission order; ``release`` are tokens free *now* (dropped duplicates), the
    rest ride on ``Window.release``. ``counts`` increments metrics (duplicate, reordered,
    gap_filled_chunks, flushed_idle, evicted, late_after_end). ``leads``: first windows
    announced early (:class:`Lead`), to be handed to the scorer before any window.
    """

    windows: list[Window] = field(default_factory=list)
    release: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    leads: list["Lead"] = field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def extend(self, other: "StepResult") -> None:
        self.windows.extend(other.windows)
        self.leads.extend(other.leads)
        self.release.extend(other.release)
        for k, v in other.counts.items():
            self.count(k, v)


_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2


def _row_dots(x: np.ndarray) -> np.ndarray:
    """Each row's dot product with itself: ``np.vecdot`` (a ufunc, ~2.7x faster than
    ``einsum`` on a 3 s window) where numpy has it, else ``einsum``."""
    return _VECDOT(x, x) if _VECDOT is not None else np.einsum("ij,ij->i", x, x)


def vad_speech(samples: np.ndarray, threshold_dbfs: float, sample_rate_hz: int = SAMPLE_RATE_HZ,
               frame_ms: float = VAD_FRAME_MS) -> bool:
    """True when any non-overlapping ``frame_ms`` frame's RMS exceeds ``threshold_dbfs``.

    A trailing frame shorter than ``frame_ms`` counts too (a short window is still judged).
    Compares each frame's sum of squares (float32 dot products, ``np.vecdot``) with
    ``frame * 10^(dB/10)``: no float64 copy of the window and no square root (it runs on the
    event loop for every window). int16 PCM is judged unscaled against the threshold times
    32768^2: scaling by a power of two is exact, so the decision is the one for x / 32768.
    Speech is the common case: the first quarter of the frames is judged first and most speech
    windows stop there; silence costs one more small call (bench/README.md).
    """
    n = samples.shape[0]
    if n == 0:
        return False
    frame = max(1, int(round(frame_ms * sample_rate_hz / 1000.0)))
    mean_square = 10.0 ** (threshold_dbfs / 10.0)
    if samples.dtype == np.int16:
        mean_square *= 32768.0 ** 2
    full = (n // frame) * frame
    if full:
        frames_ = samples[:full].reshape(-1, frame)
        first = max(1, frames_.shape[0] // 4)
        for block in (frames_[:first], frames_[first:]):
            if block.shape[0]:
                x = np.asarray(block, dtype=np.float32)
                if np.any(_row_dots(x) > mean_square * frame):
                    return True
    if full < n:
        tail = np.asarray(samples[full:], dtype=np.float32)
        return bool(float(np.dot(tail, tail)) > mean_square * (n - full))
    return False


# --------------------------------------------------------------------------- per-speaker state


@dataclass
class _Parked:
    seq: int
    samples: np.ndarray
    end_of_stream: bool
    token: Any
    now: float


_GENERATIONS = itertools.count(1)


class SpeakerState:
    """One speaker's stream: resampler, sample buffer, sequence tracking, window cursor."""

    def __init__(self, key: Hashable, cfg: WindowingConfig, source_rate_hz: int, first_seq: int,
                 start_sample_in: int, now: float, origin_ts: float = 0.0) -> None:
        self.key = key
        self.gen = next(_GENERATIONS)
        self.origin_ts = origin_ts
        self.cfg = cfg
        self.source_rate_hz = source_rate_hz
        self.resampler = StreamingResampler(source_rate_hz, cfg.sample_rate_hz)
        self.next_seq = first_seq
        self.in_pos = start_sample_in  # source-rate samples consumed on the stream clock
        self.out_base = int(round(start_sample_in * cfg.sample_rate_hz / source_rate_hz))
        hop = cfg.hop_samples
        self.next_index = -(-self.out_base // hop)
        # int16 PCM (x / 32768, exactly) is kept as int16: half the memory of float32; the first
        # chunk that is not (float input, resampled audio) turns the buffer float32 for good
        self.buf = np.zeros(0, dtype=np.int16)
        self.buf_start = self.out_base  # stream sample of buf[0]
        self.fills: list[tuple[int, int]] = []  # gap-filled spans (16 kHz stream samples)
        self.parked: dict[int, _Parked] = {}
        self.parked_samples = 0
        self.gap_since: float | None = None
        self.chunks: list[tuple[Any, int]] = []  # (token, last 16 kHz sample it influences)
        self.last_chunk_len = 0
        self.last_activity = now
        self.emitted_any = False
        self.lead_sent = False

    # -- positions
    # The sample buffer is ``_store[_lo:_hi]`` in a preallocated array with slack: a chunk is
    # copied in once, trimming moves ``_lo``; the live samples are moved to the front only when
    # the slack is used up, instead of re-concatenating the whole 2-3 s buffer for every
    # chunk. The array is sized once for a window plus a chunk plus slack (one chunk, at
    # least 1/16 window): at 500 ms chunks the live 2-3 s move about once a second, and a
    # speaker's buffer is not reallocated as it fills (fewer heap holes; bench/README.md).
    @property
    def buf(self) -> np.ndarray:
        return self._store[self._lo:self._hi]

    @buf.setter
    def buf(self, value: np.ndarray) -> None:
        self._store, self._lo, self._hi = value, 0, value.shape[0]

    @property
    def buf_end(self) -> int:
        return self.buf_start + (self._hi - self._lo)

    @property
    def pcm16(self) -> bool:
        """Whether the buffer holds int16 PCM (samples x 32768) rather than float32."""
        return self._store.dtype == np.int16

    def _to_float(self) -> None:
        if self.pcm16:  # exact: every int16 / 32768 is a float32
            self._store = pcm16_to_float32(self._store)

    def _append(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if not n:
            return
        if self._hi + n > self._store.shape[0]:
            live = self._hi - self._lo
            w = self.cfg.window_samples
            size = max(w, live + n) + max(n, w // 16)
            if live + n > self._store.shape[0] or self._store.shape[0] > 2 * size:
                store = np.empty(size, dtype=self._store.dtype)
                store[:live] = self._store[self._lo:self._hi]
                self._store = store
            elif live:
                self._store[:live] = self._store[self._lo:self._hi].copy()
            self._lo, self._hi = 0, live
        self._store[self._hi:self._hi + n] = samples  # accept() matched the dtypes
        self._hi += n

    def _trim_to(self, pos: int) -> None:
        """Forget audio before stream sample ``pos`` (callers keep ``pos <= buf_end``)."""
        drop = pos - self.buf_start
        if drop > 0:
            if drop < self._hi - self._lo:
                self._lo += drop
            else:
                self._lo = self._hi = 0
            self.buf_start = pos
        if self.fills:
            self.fills = [(a, b) for a, b in self.fills if b > pos]

    # -- window emission
    def _window(self, index: int, end: int, final: bool, now: float) -> Window:
        hop, cfg = self.cfg.hop_samples, self.cfg
        start = index * hop
        lo = start - self.buf_start
        pcm = self.buf[lo : lo + (end - start)].copy()
        gap = any(a < end and b > start for a, b in self.fills)
        if gap:  # judge speech on real audio only
            mask = np.ones(pcm.shape[0], dtype=bool)
            for a, b in self.fills:
                s, e = max(a, start) - start, min(b, end) - start
                if e > s:
                    mask[s:e] = False
            speech = vad_speech(pcm[mask], cfg.vad_threshold_dbfs, cfg.sample_rate_hz)
        else:
            speech = vad_speech(pcm, cfg.vad_threshold_dbfs, cfg.sample_rate_hz)
        self.emitted_any = True
        return Window(self.key, index, start, pcm, cfg.sample_rate_hz, final, gap, speech, now,
                      origin_ts=self.origin_ts, stream_gen=self.gen)

    def _lead(self, result: "StepResult") -> None:
        """Announce the first window once ``lead_samples`` of it have arrived (once per
        speaker generation; appended audio never changes, so the lead's samples are the
        window's)."""
        need = self.cfg.lead_samples
        if not need or self.emitted_any or self.lead_sent:
            return
        start = self.next_index * self.cfg.hop_samples
        have = self.buf_end - start
        if need <= have < self.cfg.window_samples and start >= self.buf_start:
            lo = start - self.buf_start
            result.leads.append(Lead(self.key, start, self.buf[lo : lo + have].copy(), self.gen))
            self.lead_sent = True

    def _release_before(self, pos: int) -> list[Any]:
        """Tokens of chunks whose influenced samples all lie before ``pos``."""
        out = []
        keep = []
        for token, last in self.chunks:
            if last < pos:
                if token is not None:
                    out.append(token)
            else:
                keep.append((token, last))
        self.chunks = keep
        return out

    def emit_full(self, now: float, result: StepResult) -> None:
        hop, w = self.cfg.hop_samples, self.cfg.window_samples
        while self.next_index * hop + w <= self.buf_end:
            win = self._window(self.next_index, self.next_index * hop + w, False, now)
            self.next_index += 1
            win.release = self._release_before(self.next_index * hop)
            result.windows.append(win)
            self._trim_to(self.next_index * hop)
        # audio before the next window start is not needed by any window
        if self.buf_start < self.next_index * hop:
            self._trim_to(min(self.next_index * hop, self.buf_end))
        self._lead(result)

    def emit_final(self, now: float, result: StepResult) -> None:
        """End of stream: the final partial window, then release every chunk."""
        tail = self.resampler.flush()
        self._append(tail)
        self.emit_full(now, result)
        hop, w = self.cfg.hop_samples, self.cfg.window_samples
        n, k = self.buf_end, self.next_index
        if n > k * hop and (k == 0 or n > (k - 1) * hop + w):
            win = self._window(k, n, True, now)
            self.next_index += 1
            result.windows.append(win)
        remaining = [t for t, _ in self.chunks if t is not None]
        self.chunks = []
        if result.windows and result.windows[-1].key == self.key:
            result.windows[-1].release.extend(remaining)
        else:
            result.release.extend(remaining)
        self.buf = np.zeros(0, dtype=self._store.dtype)

    # -- chunk intake (in sequence order)
    def accept(self, samples: np.ndarray, token: Any, now: float, result: StepResult,
               fill: bool = False) -> None:
        """``samples``: int16 PCM (kept as int16 while every chunk is, at 16 kHz) or float32."""
        if samples.dtype == np.int16 and not (self.pcm16 and self.resampler.passthrough):
            samples = pcm16_to_float32(samples)
        if samples.dtype != np.int16:
            self._to_float()
        n_in_end = self.resampler.n_in + samples.shape[0]
        out = self.resampler.push(samples)
        if fill:  # nominal 16 kHz span of the silence (resampler smearing ignored)
            a = self.out_base + self.resampler.total_out(n_in_end - samples.shape[0])
            b = self.out_base + self.resampler.total_out(n_in_end)
            self.fills.append((max(a, self.buf_start), b))
        self._append(out)
        self.in_pos += samples.shape[0]
        last = self.out_base + self.resampler.last_output_needing(n_in_end)
        self.chunks.append((token, last))
        if not fill:
            self.last_chunk_len = samples.shape[0]
        self.emit_full(now, result)


# --------------------------------------------------------------------------- the windower


@dataclass
class _Finished:
    next_seq: int
    in_pos: int
    source_rate_hz: int
    origin_ts: float


class Windower:
    """Every live speaker of one worker. Not thread-safe: call from the event loop only."""

    def __init__(self, cfg: WindowingConfig = WindowingConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.speakers: OrderedDict[Hashable, SpeakerState] = OrderedDict()  # LRU order
        self.finished: OrderedDict[Hashable, _Finished] = OrderedDict()

    def __len__(self) -> int:
        return len(self.speakers)

    # ------------------------------------------------------------------ intake

    def push(self, key: Hashable, seq: int, samples: np.ndarray, sample_rate_hz: int,
             end_of_stream: bool = False, token: Any = None, now: float | None = None,
             offset_samples: int | None = None, capture_ts: float = 0.0,
             check_finite: bool = True) -> StepResult:
        """Feed one chunk of mono samples at ``sample_rate_hz``: int16 PCM (as s16le, mu-law
        and A-law decode; the speaker's buffer then stays int16, half the memory of float32,
        and its windows are the same float32 values x / 32768) or float in [-1, 1]
        (``check_finite=False`` skips the NaN/inf check of float samples known to be finite).
        Raises :class:`WindowingError`
        for a chunk that must be dead-lettered (its token is then the caller's to release).

        ``capture_ts`` of a speaker's first chunk fixes the origin of its window times:
        ``origin = capture_ts - position / rate``.

        When it raises, ``exc.result`` holds what the call did before refusing the chunk (a
        speaker evicted to make room emits windows and releases tokens): handle it too."""
        now = self.clock() if now is None else now
        result = StepResult()
        try:
            return self._push(result, key, seq, samples, sample_rate_hz, end_of_stream, token, now,
                              offset_samples, capture_ts, check_finite)
        except WindowingError as exc:
            exc.result = result
            raise

    def _push(self, result: "StepResult", key: Hashable, seq: int, samples: np.ndarray,
              sample_rate_hz: int, end_of_stream: bool, token: Any, now: float,
              offset_samples: int | None, capture_ts: float, check_finite: bool = True) -> StepResult:
        samples = np.asarray(samples)
        if samples.dtype != np.int16:
            samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise WindowingError("invalid_samples", f"expected mono samples, got shape {samples.shape}")
        if seq < 0:
            raise WindowingError("invalid_seq", f"negative sequence number {seq}")
        if check_finite and samples.dtype == np.float32 and not np.isfinite(samples).all():
            raise WindowingError("invalid_samples", "samples contain NaN or inf")
        state = self.speakers.get(key)
        if state is None:
            done = self.finished.get(key)
            if done is not None and seq < done.next_seq:
                result.count("late_after_end")
                result.release.append(token)
                return result
            if done is not None:
                if done.source_rate_hz != sample_rate_hz:
                    start_seq, start_in = seq, int(round(done.in_pos * sample_rate_hz / done.source_rate_hz))
                else:
                    start_seq, start_in = done.next_seq, done.in_pos
                origin = done.origin_ts
                del self.finished[key]
            else:
                start_seq = seq
                start_in = offset_samples if offset_samples is not None else seq * samples.shape[0]
                origin = float(capture_ts) - start_in / sample_rate_hz
            self._make_room(now, result)
            state = SpeakerState(key, self.cfg, sample_rate_hz, start_seq, start_in, now, origin)
            state.last_chunk_len = samples.shape[0]
            self.speakers[key] = state
        elif sample_rate_hz != state.source_rate_hz:
            raise WindowingError("sample_rate_changed",
                                 f"speaker {key} switched from {state.source_rate_hz} Hz to {sample_rate_hz} Hz")
        self.speakers.move_to_end(key)
        state.last_activity = now

        if seq < state.next_seq or seq in state.parked:
            result.count("duplicate")
            result.release.append(token)
            return result
        if seq > state.next_seq:
            gap_samples = (seq - state.next_seq) * max(state.last_chunk_len, 1)
            gap_out = gap_samples * self.cfg.sample_rate_hz / state.source_rate_hz
            if gap_out > self.cfg.max_buffer_samples:
                raise WindowingError(
                    "seq_out_of_range",
                    f"speaker {key}: seq {seq} is {seq - state.next_seq} chunks ahead of {state.next_seq} "
                    f"(~{gap_out / self.cfg.sample_rate_hz:.1f} s of fill > max_buffer_s)")
            state.parked[seq] = _Parked(seq, samples, end_of_stream, token, now)
            state.parked_samples += samples.shape[0]
            result.count("reordered")
            if state.gap_since is None:
                state.gap_since = now
            parked_out = state.parked_samples * self.cfg.sample_rate_hz / state.source_rate_hz
            if len(state.parked) > self.cfg.max_reorder_chunks or parked_out > self.cfg.max_buffer_samples:
                self._fill_gaps(state, now, result)
            return result

        self._accept(state, samples, end_of_stream, token, now, result)
        self._drain(state, now, result)
        return result

    def _accept(self, state: SpeakerState, samples: np.ndarray, end_of_stream: bool, token: Any,
                now: float, result: StepResult) -> None:
        state.accept(samples, token, now, result)
        state.next_seq += 1
        if end_of_stream:
            self._finish(state, now, result)

    def _drain(self, state: SpeakerState, now: float, result: StepResult) -> None:
        while state.key in self.speakers and state.next_seq in state.parked:
            p = state.parked.pop(state.next_seq)
            state.parked_samples -= p.samples.shape[0]
            self._accept(state, p.samples, p.end_of_stream, p.token, now, result)
        if not state.parked:
            state.gap_since = None

    def _fill_gaps(self, state: SpeakerState, now: float, result: StepResult) -> None:
        """Give up on missing chunks: fill silence up to each parked chunk in order."""
        while state.key in self.speakers and state.parked:
            nxt = min(state.parked)
            missing = nxt - state.next_seq
            if missing > 0:
                fill = np.zeros(missing * max(state.last_chunk_len, 1),
                                dtype=np.int16 if state.pcm16 else np.float32)
                state.accept(fill, None, now, result, fill=True)
                state.next_seq = nxt
                result.count("gap_filled_chunks", missing)
            self._drain(state, now, result)
        state.gap_since = None

    def _finish(self, state: SpeakerState, now: float, result: StepResult) -> None:
        # parked chunks beyond an end of stream: nothing follows them, drop them (released)
        for p in state.parked.values():
            result.release.append(p.token)
        state.parked.clear()
        state.emit_final(now, result)
        del self.speakers[state.key]
        self.finished[state.key] = _Finished(state.next_seq, state.in_pos, state.source_rate_hz,
                                             state.origin_ts)
        self.finished.move_to_end(state.key)
        while len(self.finished) > self.cfg.finished_memory:
            self.finished.popitem(last=False)

    def flush(self, key: Hashable, now: float | None = None, reason: str = "flushed") -> StepResult:
        """Treat ``key`` as ended: fill pending gaps, emit its final partial window, forget it."""
        now = self.clock() if now is None else now
        result = StepResult()
        state = self.speakers.get(key)
        if state is not None:
            self._fill_gaps(state, now, result)
            if key in self.speakers:
                self._finish(state, now, result)
            result.count(reason)
        return result

    def _make_room(self, now: float, result: StepResult) -> None:
        while len(self.speakers) >= self.cfg.max_speakers:
            oldest = next(iter(self.speakers))
            result.extend(self.flush(oldest, now, reason="evicted"))

    # ------------------------------------------------------------------ time

    def tick(self, now: float | None = None) -> StepResult:
        """Reorder timeouts (fill gaps) and idle speakers (flush). Call every ~100 ms."""
        now = self.clock() if now is None else now
        result = StepResult()
        for key in list(self.speakers):
            state = self.speakers.get(key)
            if state is None:
                continue
            if state.gap_since is not None and now - state.gap_since >= self.cfg.reorder_timeout_s:
                self._fill_gaps(state, now, result)
            if key in self.speakers and now - state.last_activity >= self.cfg.idle_timeout_s:
                result.extend(self.flush(key, now, reason="flushed_idle"))
        return result

    def drop(self, keys: Iterable[Hashable]) -> int:
        """Forget speakers without emitting (their partition was revoked: the new owner replays
        their uncommitted chunks). Returns how many were dropped."""
        n = 0
        for key in list(keys):
            if self.speakers.pop(key, None) is not None:
                n += 1
            self.finished.pop(key, None)
        return n

    def buffered_samples(self) -> int:
        return sum(s.buf.shape[0] + s.parked_samples for s in self.speakers.values())
