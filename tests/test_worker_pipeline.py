"""The worker pipeline without a broker: events, DLQ, in-order offset acks, batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.artifact import committed_or_fixture
from schemas import AudioChunk, decode, encode, message_key, DeadLetter, EmotionEvent
from sernet.settings import Settings
from worker.app import Incoming, OffsetTracker, Pipeline, load_model
from worker.frontend import batch_features
from worker.windowing import expected_windows

SR = 16000


@pytest.fixture(scope="module")
def bundle():
    return load_model(Settings(model_dir=str(committed_or_fixture())))


class Harness:
    def __init__(self, bundle, **overrides):
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.acked: list[tuple[int, int]] = []
        self.settings = Settings(**{"batch_size": 4, "batch_wait_ms": 5.0, **overrides})
        model, frontend, info = bundle

        async def send(topic, key, value):
            self.sent.append((topic, key, value))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        self.pipeline = Pipeline(self.settings, model, frontend, send, model_info=info)
        self.offsets = {}

    async def feed(self, chunk: AudioChunk | None, partition: int = 0, key=None, value=None):
        off = self.offsets.get(partition, 0)
        self.offsets[partition] = off + 1
        if chunk is not None:
            key = key or message_key(chunk.stream_id, chunk.speaker_id)
            value = value or encode(chunk)
        await self.pipeline.handle(Incoming(key, value, "sernet.audio", partition, off,
                                            ack=lambda p=partition, o=off: self.acked.append((p, o))))

    async def settle(self):
        for _ in range(500):
            await asyncio.sleep(0.01)
            if self.pipeline.scorer.idle:
                return
        raise AssertionError("scorer did not settle")

    def events(self):
        return [(k, decode(v, EmotionEvent)) for t, k, v in self.sent if t == self.settings.output_topic]

    def dead(self):
        return [decode(v, DeadLetter) for t, k, v in self.sent if t == self.settings.dlq_topic]


def chunks_of(audio, stream, speaker, chunk_s=0.25):
    n = int(chunk_s * SR)
    pieces = [audio[i:i + n] for i in range(0, len(audio), n)]
    return [AudioChunk.from_pcm(p, stream_id=stream, speaker_id=speaker, seq=i, capture_ts=i * n / SR,
                                sample_rate_hz=SR, end_of_stream=i == len(pieces) - 1)
            for i, p in enumerate(pieces)]


def test_two_speakers_interleaved_events_match_offline(bundle):
    rng = np.random.default_rng(0)
    audio = {"a": (0.3 * rng.standard_normal(int(4.6 * SR))).clip(-1, 1).astype(np.float32),
             "b": (0.2 * rng.standard_normal(int(2.2 * SR))).clip(-1, 1).astype(np.float32)}
    h = Harness(bundle)

    async def run():
        h.pipeline.start()
        streams = {s: chunks_of(a, "call", s) for s, a in audio.items()}
        for i in range(max(map(len, streams.values()))):
            for s, cs in streams.items():
                if i < len(cs):
                    await h.feed(cs[i], partition=0 if s == "a" else 1)
        await h.settle()
        await h.pipeline.stop()

    asyncio.run(run())
    model, frontend, _ = bundle
    for s, a in audio.items():
        # what the producer sent: s16 quantised
        sent = np.round(a * 32768).clip(-32768, 32767) / 32768
        evs = [e for k, e in h.events() if e.speaker_id == s]
        spans = expected_windows(len(sent), frontend, 1.0)
        assert [(e.window_start_s, e.window_end_s) for e in evs] == \
            [(sp.start / SR, sp.end / SR) for sp in spans]
        offline = model.scores(batch_features([sent[sp.start:sp.end].astype(np.float32) for sp in spans],
                                              frontend))
        got = np.array([[e.scores[l] for l in model.labels] for e in evs])
        np.testing.assert_allclose(got, offline, atol=1e-5)
        assert {k for k, e in h.events() if e.speaker_id == s} == {message_key("call", s)}
        assert len({e.event_id for e in evs}) == len(evs)
    # every message acked exactly once, in offset order per partition
    for p in (0, 1):
        offs = [o for q, o in h.acked if q == p]
        assert offs == list(range(h.offsets[p]))


def test_offsets_held_while_window_pending(bundle):
    h = Harness(bundle)

    async def run():
        h.pipeline.start()
        x = np.full(SR // 2, 0.1, np.float32)
        for seq in range(4):  # 2 s: no full 3 s window yet
            await h.feed(AudioChunk.from_pcm(x, stream_id="s", speaker_id="a", seq=seq,
                                             capture_ts=seq / 2, sample_rate_hz=SR))
        await h.settle()
        assert h.acked == []  # all audio still needed by window 0
        await h.feed(None, key=b"s/b", value=b"\x00garbage")  # dead letter: done, but behind pending
        await h.settle()
        assert h.acked == [] and len(h.dead()) == 1
        for seq in range(4, 7):
            await h.feed(AudioChunk.from_pcm(x, stream_id="s", speaker_id="a", seq=seq,
                                             capture_ts=seq / 2, sample_rate_hz=SR))
        await h.settle()
        # window 0 [0,3) and window 1 [1,4)? only 3.5 s so far: window 0 emitted, hop 1 s ->
        # chunks wholly before 1 s (seq 0, 1) are free
        assert h.acked == [(0, 0), (0, 1)]
        await h.pipeline.stop()

    asyncio.run(run())


def test_invalid_messages_dead_lettered_with_reason(bundle):
    h = Harness(bundle)
    x = np.zeros(1600, np.float32)

    async def run():
        h.pipeline.start()
        await h.feed(None, key=b"s/a", value=b"\xc1not msgpack")
        c = AudioChunk.from_pcm(x, stream_id="s", speaker_id="a", seq=0, capture_ts=0.0, sample_rate_hz=SR)
        await h.feed(c, key=b"s/other")
        await h.feed(c)
        c8 = AudioChunk.from_pcm(x, stream_id="s", speaker_id="a", seq=1, capture_ts=0.1, sample_rate_hz=8000)
        await h.feed(c8)
        await h.feed(None, key=None, value=encode(c))
        await h.settle()
        await h.pipeline.stop()

    asyncio.run(run())
    reasons = [d.reason for d in h.dead()]
    assert reasons == ["malformed", "key_mismatch", "sample_rate_changed", "key_mismatch"]
    assert all(d.partition == 0 and d.offset is not None for d in h.dead())
    assert h.pipeline.metrics.dlq.labels("key_mismatch")._value.get() == 2


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(12))))
def test_offset_tracker_acks_only_contiguous_prefix(order):
    acked = []
    t = OffsetTracker()
    for off in range(12):
        t.register("tp", off, lambda o=off: acked.append(o))
    done = set()
    for off in order:
        t.done("tp", off)
        done.add(off)
        prefix = 0
        while prefix in done:
            prefix += 1
        assert acked == list(range(prefix))
    assert t.uncommitted() == 0


def test_chunk_size_does_not_change_events_8khz(bundle):
    """Same 8 kHz audio in 100 ms and 370 ms chunks: same windows, same scores (streaming
    resampler == resample_poly of the whole stream)."""
    rng = np.random.default_rng(3)
    audio = (0.3 * rng.standard_normal(int(4.3 * 8000))).clip(-1, 1).astype(np.float32)
    runs = []
    for chunk_s in (0.1, 0.37):
        h = Harness(bundle)
        n = int(chunk_s * 8000)
        pieces = [audio[i:i + n] for i in range(0, len(audio), n)]

        async def run():
            h.pipeline.start()
            for i, p in enumerate(pieces):
                await h.feed(AudioChunk.from_pcm(p, stream_id="s", speaker_id="a", seq=i,
                                                 capture_ts=i * n / 8000, sample_rate_hz=8000,
                                                 encoding="f32le", end_of_stream=i == len(pieces) - 1))
            await h.settle()
            await h.pipeline.stop()

        asyncio.run(run())
        runs.append([e for _, e in h.events()])
    a, b = runs
    assert [(e.window_start_s, e.window_end_s) for e in a] == [(e.window_start_s, e.window_end_s) for e in b]
    assert len(a) == len(expected_windows(len(audio) * 2, bundle[1], 1.0))
    for x, y in zip(a, b):
        assert x.event_id == y.event_id
        assert max(abs(x.scores[k] - y.scores[k]) for k in x.scores) < 1e-4


def test_unconfirmed_delivery_is_sent_again_not_awaited_forever(bundle, monkeypatch):
    """A send whose future never resolves (seen after a broker restart) is re-sent after the
    delivery timeout instead of blocking the worker; a delivered one is not re-sent."""
    import worker.app as app_module

    monkeypatch.setattr(app_module, "DELIVERY_TIMEOUT_S", 0.05)
    h = Harness(bundle)
    calls: list[bytes] = []

    async def send(topic, key, value):
        calls.append(value)
        fut = asyncio.get_running_loop().create_future()
        if value == b"ok" or calls.count(value) > 1:
            fut.set_result(None)  # delivered (the hung one: on its second send)
        return fut                # else: never resolved

    h.pipeline.send = send

    async def go():
        await asyncio.wait_for(h.pipeline._publish([("t", b"k", b"hung"), ("t", b"k", b"ok")]), 5)

    asyncio.run(go())
    assert calls == [b"hung", b"ok", b"hung"]


def test_send_that_never_enqueues_is_bounded_and_sent_again(bundle, monkeypatch):
    """A send that does not even return its delivery future (the producer waiting on a broker
    that is gone) is abandoned after the delivery timeout and sent again, with the events
    after it (not enqueued yet), in their order."""
    import worker.app as app_module

    monkeypatch.setattr(app_module, "DELIVERY_TIMEOUT_S", 0.05)
    h = Harness(bundle)
    calls: list[bytes] = []

    async def send(topic, key, value):
        calls.append(value)
        if value == b"stuck" and calls.count(value) == 1:
            await asyncio.sleep(30)  # cancelled by the timeout
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    h.pipeline.send = send

    async def go():
        await asyncio.wait_for(h.pipeline._publish([("t", b"k", b"stuck"), ("t", b"k", b"next")]), 5)

    asyncio.run(go())
    assert calls == [b"stuck", b"stuck", b"next"]


def test_revoked_partition_replay_of_finished_speaker_is_scored_again(bundle):
    """A speaker that ended just before its partition was revoked: the new assignment replays
    its uncommitted chunks (the broker lost the commit, as tansu's in-memory restart does) and
    they must be scored again, not dropped as late duplicates of the finished stream."""
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal(int(3.5 * SR))).astype(np.float32)
    chunks = chunks_of(audio, "s", "done", chunk_s=0.5)
    want = len(expected_windows(len(audio), bundle[1], 1.0))
    h = Harness(bundle)

    async def run():
        h.pipeline.start()
        for c in chunks:
            await h.feed(c, partition=1)
        await h.settle()
        assert len(h.events()) == want
        h.pipeline.on_revoked({("sernet.audio", 1)})
        h.offsets[1] = 0  # the new assignment starts again at the first uncommitted offset
        for c in chunks:
            await h.feed(c, partition=1)
        await h.settle()
        await h.pipeline.stop()

    asyncio.run(run())
    events = h.events()
    assert len(events) == 2 * want  # at-least-once: the replay is scored again
    assert {e.event_id for _, e in events[:want]} == {e.event_id for _, e in events[want:]}


def test_a_model_that_always_fails_dead_letters_windows_and_releases_offsets(bundle):
    """A broken model no longer stalls the worker: after scoring_max_tries its windows go to
    the dead-letter topic (reason scoring_failed, counted) and their chunks are acked."""
    model, frontend, info = bundle

    class Broken:
        labels = model.labels

        def scores(self, features):
            raise RuntimeError("onnxruntime says no")

    h = Harness((Broken(), frontend, info), scoring_max_tries=2)

    async def run():
        h.pipeline.scorer.retry_delay_s = 0.001
        h.pipeline.start()
        audio = np.full(int(3.5 * SR), 0.1, np.float32)
        for chunk in chunks_of(audio, "s", "a", chunk_s=0.5):
            await h.feed(chunk)
        await h.settle()
        await h.pipeline.stop()

    asyncio.run(run())
    dead = h.dead()
    assert h.events() == [] and dead and all(d.reason == "scoring_failed" for d in dead)
    assert "onnxruntime says no" in dead[0].detail and "2 tries" in dead[0].detail
    assert h.acked == [(0, i) for i in range(7)]  # every chunk released, in order
    assert h.pipeline.metrics.dlq.labels("scoring_failed")._value.get() == len(dead)
