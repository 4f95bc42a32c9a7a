"""Backpressure and memory (issue 5, point 4).

* windowing: live speakers capped (least recent flushed: ``evicted``), idle speakers flushed,
  per-speaker buffers capped (``max_buffer_s``), finished-speaker memory bounded;
* regression (found by the fuzz test): a speaker evicted to make room for a chunk that is then
  refused (``seq_out_of_range``) used to lose the evicted speaker's window and offset tokens,
  holding its partition's commit back forever;
* pipeline: ``sernet_speaker_cap_hits_total`` and the ``speaker_cap_reached`` log line, the
  scorer queue bounds what waits for the model (the consumer awaits: backpressure);
* real worker process: thousands of speakers sending one chunk each through tansu, worker RSS
  (psutil) stays under a bound, ``sernet_live_speakers`` never exceeds the cap, lag visible in
  ``sernet_consumer_lag_messages``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import numpy as np
import pytest

from helpers.artifact import committed_or_fixture
from helpers.reliability import FakeKafka, metric_sum, metric_value, rss_bytes, send_raw_sync
from schemas import AudioChunk, EmotionEvent, decode, encode, message_key
from sernet.settings import Settings
from worker.app import Incoming, Pipeline, load_model
from worker.windowing import Windower, WindowingConfig, WindowingError

LONG = os.environ.get("SERNET_LONG") == "1"
SR = 16000


def cfg(**kw) -> WindowingConfig:
    return WindowingConfig(**{"window_s": 3.0, "hop_s": 1.0, **kw})


# --------------------------------------------------------------------------- windowing


def test_speaker_cap_evicts_least_recent_and_releases_everything():
    w = Windower(cfg(max_speakers=3), clock=lambda: 0.0)
    x = np.full(1600, 0.1, np.float32)
    tokens = []
    for i in range(10):
        r = w.push(("s", f"p{i}"), 0, x, SR, token=("t", i), now=float(i))
        assert len(w) <= 3
        if i >= 3:
            assert r.counts.get("evicted") == 1
            # the evicted speaker's final window carries its token
            assert [t for win in r.windows for t in win.release] == [("t", i - 3)]
            assert r.windows[0].key == ("s", f"p{i - 3}") and r.windows[0].final
        tokens += [t for win in r.windows for t in win.release] + list(r.release)
    assert len(w) == 3
    assert tokens == [("t", i) for i in range(7)]


def test_idle_speakers_flushed_and_buffers_capped():
    w = Windower(cfg(idle_timeout_s=5.0, max_buffer_s=4.0, max_reorder_chunks=1000), clock=lambda: 0.0)
    x = np.full(1600, 0.1, np.float32)  # 0.1 s chunks
    w.push(("s", "a"), 0, x, SR, now=0.0)
    # far-ahead chunks park in the reorder buffer, never beyond max_buffer_s of audio
    for seq in range(2, 80):
        try:
            w.push(("s", "a"), seq, x, SR, now=0.1)
        except WindowingError as exc:
            assert exc.reason == "seq_out_of_range"
        assert w.buffered_samples() <= 4.0 * SR + 1600 * 2 + 3 * SR
    w.push(("s", "b"), 0, x, SR, now=1.0)
    r = w.tick(now=5.5)  # a idle for 5.5 s, b for 4.5 s
    assert r.counts.get("flushed_idle") == 1 and list(w.speakers) == [("s", "b")]
    r = w.tick(now=7.0)
    assert len(w) == 0 and w.buffered_samples() == 0


def test_finished_speaker_memory_is_bounded():
    w = Windower(cfg(finished_memory=100), clock=lambda: 0.0)
    x = np.zeros(160, np.float32)
    for i in range(1000):
        w.push(("s", f"p{i}"), 0, x, SR, end_of_stream=True, now=0.0)
    assert len(w) == 0 and len(w.finished) == 100


def test_eviction_survives_a_refused_chunk():
    """max_speakers=1: 'old' is live with a token; 'back' (finished earlier) returns with a far
    jump -> room is made (old evicted: window + token) and then the chunk is refused."""
    w = Windower(cfg(max_speakers=1), clock=lambda: 0.0)
    x = np.full(1600, 0.1, np.float32)
    w.push(("s", "back"), 0, x, SR, end_of_stream=True, token="b0", now=0.0)
    w.push(("s", "old"), 0, x, SR, token="o0", now=1.0)
    with pytest.raises(WindowingError) as err:
        w.push(("s", "back"), 10_000, x, SR, token="b1", now=2.0)
    assert err.value.reason == "seq_out_of_range"
    partial = err.value.result
    assert partial is not None and partial.counts.get("evicted") == 1
    assert [t for win in partial.windows for t in win.release] + list(partial.release) == ["o0"]


# --------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def bundle():
    return load_model(Settings(model_dir=str(committed_or_fixture())))


def test_pipeline_cap_metric_log_and_offsets(bundle, caplog):
    import structlog

    kafka = FakeKafka()
    model, frontend, info = bundle
    settings = Settings(max_speakers=20, batch_size=32, batch_wait_ms=1.0)
    now = [0.0]
    p = Pipeline(settings, model, frontend, kafka.send, model_info=info, clock=lambda: now[0])
    acked = []
    logged = []

    def capture(_logger, method, event):
        logged.append(event)
        raise structlog.DropEvent

    structlog.configure(processors=[capture])
    try:
        async def run():
            p.start()
            x = np.full(1600, 0.1, np.float32)
            for i in range(200):
                c = AudioChunk.from_pcm(x, stream_id="cap", speaker_id=f"p{i}", seq=0,
                                        capture_ts=0.0, sample_rate_hz=SR)
                now[0] += 0.001
                await p.handle(Incoming(message_key("cap", f"p{i}"), encode(c), "sernet.audio", 0, i,
                                        ack=lambda o=i: acked.append(o)))
                assert len(p.windower) <= 20
            for _ in range(500):
                await asyncio.sleep(0.01)
                if p.scorer.idle:
                    break
            await p.stop()

        asyncio.run(run())
    finally:
        structlog.reset_defaults()
    assert p.metrics.speaker_cap_hits._value.get() == 180
    assert p.metrics.live_speakers._value.get() == 20
    assert any(e.get("event") == "speaker_cap_reached" and e.get("max_speakers") == 20 for e in logged)
    # the 180 evicted speakers were scored (a final partial window each) and their offsets acked
    events = [decode(v, EmotionEvent) for _, v in kafka.on(settings.output_topic)]
    assert len(events) == 180
    assert acked == list(range(180))
    # per-speaker partition bookkeeping follows the windower's own bounded memory (live speakers
    # and the finished ones it remembers for late duplicates), so a revoke can forget both
    known = p.windower.speakers.keys() | p.windower.finished.keys()
    assert set(p.speaker_tp) <= known, "no bookkeeping for speakers the windower forgot"
    assert len(p.speaker_tp) <= 2 * len(known) + 64


def test_scorer_queue_is_bounded(bundle):
    """The consumer awaits put() once 4 * batch_size windows wait for the model."""
    model, frontend, info = bundle
    settings = Settings(batch_size=2, batch_wait_ms=1.0)
    p = Pipeline(settings, model, frontend, FakeKafka().send, model_info=info)
    assert p.scorer.queue.maxsize == 8


# --------------------------------------------------------------------------- real worker


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_thousands_of_speakers_rss_bounded_and_lag_visible(tmp_path):
    from sernet.kafka import aiokafka_kwargs, create_topics_sync
    from worker.broker import EmbeddedBroker, free_port
    from worker.demo import WorkerProcess

    n_speakers = 20_000 if LONG else 1_000
    cap = 100
    # bytes: measured 2026-12-01 166 MiB peak (20,000 speakers: 257); ~1 GiB would mean a
    # leak per speaker
    rss_bound = (400 if LONG else 300) << 20
    tag = uuid.uuid4().hex[:6]
    with EmbeddedBroker(port=0) as broker:
        s = Settings(broker_url=broker.url, partitions=3, model_dir=str(committed_or_fixture()),
                     web_port=free_port(), batch_wait_ms=10.0, max_speakers=cap, idle_timeout_s=30.0)
        create_topics_sync(s)
        with WorkerProcess(s, log_path=tmp_path / "worker.log") as worker:
            worker.wait_ready(90)
            pid = worker.proc.pid
            rss0 = rss_bytes(pid)
            kw = aiokafka_kwargs(s)
            x = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)  # 0.5 s each
            msgs = []
            for i in range(n_speakers):
                c = AudioChunk.from_pcm(x, stream_id=f"bp{tag}", speaker_id=f"p{i}", seq=0,
                                        capture_ts=0.0, sample_rate_hz=SR)
                msgs.append((message_key(c.stream_id, c.speaker_id), encode(c)))
            t0 = time.monotonic()
            send_raw_sync(kw, s.input_topic, msgs)
            sent_s = time.monotonic() - t0
            peak, max_live, max_lag = rss0, 0.0, 0.0
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                m = worker.metrics()
                peak = max(peak, rss_bytes(pid))
                max_live = max(max_live, metric_value(m, "sernet_live_speakers"))
                max_lag = max(max_lag, metric_sum(m, "sernet_consumer_lag_messages"))
                accepted = metric_value(m, "sernet_chunks_total", 'outcome="accepted"')
                if accepted >= n_speakers:
                    break
                time.sleep(0.5)
            m = worker.metrics()
            hits = metric_value(m, "sernet_speaker_cap_hits_total")
            print(f"\n{n_speakers} speakers x 1 chunk sent in {sent_s:.1f} s; worker RSS "
                  f"{rss0 / 2**20:.0f} MiB at start, peak {peak / 2**20:.0f} MiB; live speakers max "
                  f"{max_live:.0f} (cap {cap}); cap hits {hits:.0f}; max lag seen {max_lag:.0f}")
            assert metric_value(m, "sernet_chunks_total", 'outcome="accepted"') == n_speakers
            assert max_live <= cap
            assert hits >= n_speakers - cap
            assert peak < rss_bound, f"RSS {peak / 2**20:.0f} MiB"
            assert "sernet_consumer_lag_messages{" in m
            assert max_lag > 0, "lag rose while the backlog was consumed"
            assert "speaker_cap_reached" in (tmp_path / "worker.log").read_text()
