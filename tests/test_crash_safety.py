"""Crash safety (issue 5, point 1): at-least-once with identical duplicates, nothing committed
that an unscored window needs.

Unit level (no broker):

* faust-streaming #312, tested rather than assumed: Faust 0.15.3's ``Consumer._new_offset``
  given acks with a hole commits past the un-acked message (committed offset None/0, and the
  off-by-one ``min(acked) - committed > 1`` check);
* the worker's :class:`OffsetTracker` in front of it (hypothesis, any completion order): what
  Faust would commit never passes the lowest message still pending.

Integration (tansu + real ``sernet worker`` processes):

* the group's committed offset (read with aiokafka ``committed()``) stays at or below the first
  chunk a pending window needs while later messages on the same partition (dead letters and a
  whole other speaker) are done: the #312 scenario end to end; it advances once the window is
  scored;
* ``kill -9`` of one of two workers mid-stream, and ``kill -9`` of a worker while the group
  rebalances (a third worker joining): every expected window of every speaker is emitted at
  least once, duplicates carry the same event id and scores within 1e-6; recovery time (kill ->
  first event of a speaker the dead worker owned, from its replacement) is printed and bounded.
"""

from __future__ import annotations

import os
import signal
import time
import types
import uuid
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from helpers.artifact import committed_or_fixture
from helpers.reliability import committed_offsets_sync, read_topic_sync, send_raw_sync, wait_for
from helpers.scale import EventCollector, StreamProducer, WorkerFleet, build_speakers, check_coverage, covered
from schemas import AudioChunk, encode, message_key
from sernet.settings import Settings
from worker.app import OffsetTracker

SR = 16000
DUPLICATE_ATOL = 1e-6
RECOVERY_BOUND_S = 30.0  # session timeout 6 s + tansu's ~3 s JoinGroup + replay, with margin


# --------------------------------------------------------------------------- #312, unit level


def faust_consumer_state(committed):
    """The attributes ``faust.transport.consumer.Consumer._new_offset`` reads, for one tp."""
    from collections import defaultdict

    from intervaltree import IntervalTree

    return types.SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                                 _gap=defaultdict(IntervalTree), _committed_offset={"tp": committed})


def faust_new_offset(state):
    from faust.transport.consumer import Consumer

    return Consumer._new_offset(state, "tp")


@pytest.mark.parametrize("committed,acked,unacked", [
    (None, [5, 6, 7], 0),   # nothing committed yet: no gap check at all
    (0, [5, 6, 7], 0),      # committed 0 is falsy: no gap check either
    (10, [11, 12, 13], 10),  # off by one: 10 is un-acked, 11.. acked, min - committed == 1
])
def test_faust_312_commits_past_unacked_message(committed, acked, unacked):
    """Faust itself, fed acks with a hole, returns a commit offset beyond an un-acked message:
    the bug the worker's tracker exists for (if this starts failing, Faust fixed #312)."""
    state = faust_consumer_state(committed)
    state._acked["tp"].extend(acked)
    state._acked_index["tp"].update(acked)
    new = faust_new_offset(state)
    assert new is not None and new > unacked, "Faust would commit past the un-acked message"


@hsettings(max_examples=200, deadline=None)
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(st.just(n), st.permutations(range(n)))),
       st.sampled_from([None, 0]))
def test_tracker_keeps_faust_commits_behind_pending(n_order, committed0):
    """Messages finish in any order; the tracker acks Faust only the done prefix, so Faust's own
    commit computation never passes the lowest pending message."""
    n, order = n_order
    base = 0 if committed0 is None else committed0
    state = faust_consumer_state(committed0)
    tracker = OffsetTracker()

    def ack(offset):
        state._acked["tp"].append(offset)
        state._acked_index["tp"].add(offset)

    for off in range(base, base + n):
        tracker.register("tp", off, lambda o=off: ack(o))
    committed = committed0
    for off in order:
        tracker.done("tp", base + off)
        new = faust_new_offset(state)
        if new is not None:
            committed = new
            state._committed_offset["tp"] = new
        pending = tracker.committable("tp")
        if pending is not None and committed is not None:
            assert committed <= pending, f"commit {committed} passes pending {pending}"
    assert committed == base + n
    assert tracker.uncommitted() == 0


def test_tracker_revoke_forgets_partition():
    t = OffsetTracker()
    acked = []
    t.register("a", 0, lambda: acked.append(0))
    t.register("a", 1, lambda: acked.append(1))
    t.revoke(["a"])
    assert t.done("a", 1) == 0 and t.done("a", 0) == 0 and acked == []


# --------------------------------------------------------------------------- integration


def fresh_settings(broker, artifact_dir, tag: str, partitions: int) -> Settings:
    from sernet.kafka import create_topics_sync

    s = Settings(broker_url=broker.url, input_topic=f"{tag}.audio", output_topic=f"{tag}.events",
                 dlq_topic=f"{tag}.dlq", consumer_group=f"{tag}-workers", partitions=partitions,
                 model_dir=str(artifact_dir), threads=1, batch_wait_ms=10.0, idle_timeout_s=30.0)
    create_topics_sync(s)
    return s


def chunks(stream: str, speaker: str, audio: np.ndarray, chunk_s: float, first_seq: int = 0,
           eos: bool = False) -> list[AudioChunk]:
    n = int(chunk_s * SR)
    pieces = [audio[i:i + n] for i in range(0, len(audio), n)]
    return [AudioChunk.from_pcm(p, stream_id=stream, speaker_id=speaker, seq=first_seq + i,
                                capture_ts=(first_seq + i) * chunk_s, sample_rate_hz=SR,
                                end_of_stream=eos and i == len(pieces) - 1)
            for i, p in enumerate(pieces)]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_repeated_sigterm_during_shutdown_still_exits_cleanly(broker, artifact, tmp_path):
    """A supervisor that re-sends SIGTERM while the worker shuts down (the scale test's fleet
    does) must not turn a clean drain into death by signal (exit code -15)."""
    import signal

    s = fresh_settings(broker, artifact[0], f"term-{uuid.uuid4().hex[:6]}", partitions=1)
    fleet = WorkerFleet(s, tmp_path / "logs")
    try:
        (w,) = fleet.start(1)
        fleet.wait_ready([w], 90)
        proc = fleet.workers[w].proc
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)  # every 20 ms until it has exited
            time.sleep(0.02)
        assert proc.poll() == 0, fleet.workers[w].log_tail()
    finally:
        fleet.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_commit_held_while_window_pending(broker, artifact, tmp_path):
    """#312 end to end: done messages after a pending one never move the commit past it."""
    from sernet.kafka import aiokafka_kwargs

    artifact_dir, art = artifact
    window_s = art.frontend.window_s
    tag = f"hold-{uuid.uuid4().hex[:6]}"
    s = fresh_settings(broker, artifact_dir, tag, partitions=1)
    kw = aiokafka_kwargs(s)
    rng = np.random.default_rng(0)
    fleet = WorkerFleet(s, tmp_path / "logs")
    try:
        (w,) = fleet.start(1)
        fleet.wait_ready([w], 90)
        # speaker A: window_s - 1 s of audio in 0.5 s chunks, no full window yet
        a_audio = (0.2 * rng.standard_normal(int((window_s - 1.0) * SR))).astype(np.float32)
        a_first = chunks("hold", "a", a_audio, 0.5)
        metas = send_raw_sync(kw, s.input_topic, [(message_key("hold", "a"), encode(c)) for c in a_first])
        a_offsets = [m.offset for m in metas]
        # after it on the same partition: 20 dead letters and a whole speaker B (end of stream)
        b_audio = (0.2 * rng.standard_normal(int((window_s + 1.5) * SR))).astype(np.float32)
        later = [(b"hold/x", b"\xc1 garbage %d" % i) for i in range(20)]
        later += [(message_key("hold", "b"), encode(c)) for c in chunks("hold", "b", b_audio, 0.5, eos=True)]
        later_metas = send_raw_sync(kw, s.input_topic, later)
        last_offset = later_metas[-1].offset
        read_topic_sync(kw, s.dlq_topic, until=lambda r: len(r) >= 20, idle_s=0.2, timeout_s=60)
        events = read_topic_sync(kw, s.output_topic, until=lambda r: any(x.key == b"hold/b" for x in r),
                                 idle_s=0.5, timeout_s=60)
        assert not any(x.key == b"hold/a" for x in events)
        time.sleep(3.0)  # several commit intervals (1 s)
        committed = committed_offsets_sync(kw, s.consumer_group, s.input_topic, 1)[0]
        m = fleet.metrics(w)
        print(f"\nwhile A's window is pending: committed {committed}, A needs offsets {a_offsets}, "
              f"{last_offset - a_offsets[-1]} later messages done; uncommitted chunks "
              f"{m.get('sernet_uncommitted_chunks')}")
        assert committed is None or committed <= a_offsets[0], \
            f"offset {committed} committed while offsets {a_offsets} are still needed"
        assert m.get("sernet_uncommitted_chunks", 0) >= last_offset - a_offsets[0]

        # A completes: its windows are scored, then everything is committed
        a_rest = (0.2 * rng.standard_normal(int(2.0 * SR))).astype(np.float32)
        rest = chunks("hold", "a", a_rest, 0.5, first_seq=len(a_first), eos=True)
        end = send_raw_sync(kw, s.input_topic, [(message_key("hold", "a"), encode(c)) for c in rest])[-1].offset
        wait_for(lambda: (committed_offsets_sync(kw, s.consumer_group, s.input_topic, 1)[0] or 0) == end + 1,
                 30, 0.5, "the commit to reach the end once A's windows were scored")
    finally:
        fleet.close()


def _killed_speakers(speakers, assignment):
    return {sp.key for sp in speakers if sp.partition in (assignment or ())}


def _run_crash(broker, artifact, emodb_root, tmp_path, *, during_rebalance: bool = False,
               restart: bool = False):
    artifact_dir, art = artifact
    partitions = 4
    tag = f"crash{'rb' if during_rebalance else ''}-{uuid.uuid4().hex[:6]}"
    s = fresh_settings(broker, artifact_dir, tag, partitions=partitions)
    speakers = build_speakers(emodb_root / "wav", tmp_path / "audio", count=4, seconds=16.0,
                              partitions=partitions, tag=tag)
    fleet = WorkerFleet(s, tmp_path / "logs")
    collector = EventCollector(s, keys=[sp.key for sp in speakers])
    producer = None
    try:
        names = fleet.start(1 if restart else 2)
        fleet.wait_ready(names, 120)
        wait_for(lambda: all(fleet.assignment(n) for n in names), 60, 0.25, "workers assigned")
        collector.start()
        producer = StreamProducer(s, speakers, realtime=True).start()
        time.sleep(5.0)
        victim, survivor = names[0], names[-1]
        owned = fleet.assignment(victim)
        rebalancing = None
        if during_rebalance:
            (third,) = fleet.start(1)
            # kill as soon as the group is rebalancing for the newcomer
            wait_for(lambda: fleet.ready(survivor) is False or fleet.ready(victim) is False, 60, 0.05,
                     "the group to start rebalancing")
            rebalancing = {n: fleet.ready(n) for n in (victim, survivor)}
        t_kill = fleet.kill([victim])
        if restart:  # a supervisor restarts the crashed worker at once
            fleet.start(1)
        victim_keys = _killed_speakers(speakers, owned)
        producer.join(90)
        expected = producer.expected(art.frontend, s.hop_s)
        ok = collector.wait_for(covered({k: {w.start for w in v} for k, v in expected.items()}), 120)
        time.sleep(1.0)
        received = collector.snapshot()
        after = sorted(r.emitted_at for r in received if r.key in victim_keys and r.emitted_at > t_kill)
        recovery_s = after[0] - t_kill if after else None
        coverage = check_coverage(received, expected, atol=DUPLICATE_ATOL)
        figures = {**coverage.summary(), "victim_partitions": sorted(owned or ()),
                   "recovery_s": None if recovery_s is None else round(recovery_s, 2),
                   "rebalancing_at_kill": rebalancing, "exit_code": fleet.exit_codes.get(victim)}
        what = "during a rebalance" if during_rebalance else "single worker, restarted" if restart else "mid-stream"
        print(f"\nkill -9 {what}: {figures}")
        assert ok and not coverage.missing, f"missing windows {coverage.missing[:10]}\n{fleet.log_tails()}"
        assert not coverage.inconsistent, coverage.inconsistent[:5]
        assert not coverage.bad_event_ids and not coverage.unexpected
        assert fleet.exit_codes.get(victim) == -signal.SIGKILL
        assert owned, "the victim held partitions"
        assert recovery_s is not None and recovery_s < RECOVERY_BOUND_S
        return figures
    finally:
        if producer is not None:
            producer.stop()
        collector.stop()
        fleet.close()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_kill9_mid_stream_takeover(broker, artifact, emodb_root, tmp_path):
    _run_crash(broker, artifact, emodb_root, tmp_path, during_rebalance=False)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_kill9_during_rebalance(broker, artifact, emodb_root, tmp_path):
    _run_crash(broker, artifact, emodb_root, tmp_path, during_rebalance=True)


# --------------------------------------------------------------------------- faults in scoring


def _pipeline_with(model_override=None, **settings_kw):
    import asyncio  # noqa: F401

    from helpers.reliability import FakeKafka
    from worker.app import Pipeline, load_model

    model, frontend, info = load_model(Settings(model_dir=str(committed_or_fixture())))
    kafka = FakeKafka()
    s = Settings(batch_size=4, batch_wait_ms=1.0, **settings_kw)
    p = Pipeline(s, model_override or model, frontend, kafka.send, model_info=info)
    return p, kafka, s


def _feed_speaker(p, acked, seconds=4.0):
    import asyncio

    from worker.app import Incoming

    async def run():
        p.start()
        audio = (0.2 * np.random.default_rng(5).standard_normal(int(seconds * SR))).astype(np.float32)
        for i, c in enumerate(chunks("f", "a", audio, 0.5, eos=True)):
            await p.handle(Incoming(message_key("f", "a"), encode(c), "sernet.audio", 0, i,
                                    ack=lambda o=i: acked.append(o)))
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if p.scorer.idle and p.offsets.uncommitted() == 0:
                break
        await p.stop()
        return i + 1

    return asyncio.run(run())


def test_failing_model_batch_is_retried_not_dropped():
    from schemas import EmotionEvent, decode

    p, kafka, s = _pipeline_with()
    real = p.scorer.scorer.model
    calls = {"n": 0}

    class Flaky:
        labels = real.labels

        def scores(self, feats):
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("injected onnxruntime failure")
            return real.scores(feats)

    p.scorer.scorer.model = Flaky()
    acked = []
    n = _feed_speaker(p, acked)
    events = [decode(v, EmotionEvent) for _, v in kafka.on(s.output_topic)]
    assert p.metrics.scoring_errors._value.get() == 2
    assert len(events) == 2 and acked == list(range(n))  # 4 s: windows [0,3) and final [1,4)


def test_unbuildable_event_dead_lettered_and_offsets_released():
    from schemas import DeadLetter, EmotionEvent, decode

    p, kafka, s = _pipeline_with()
    real = p.scorer.scorer.model

    class NaNScores:
        labels = real.labels

        def scores(self, feats):
            out = real.scores(feats)
            out[0, 0] = np.nan  # the first window of each batch gets a non-finite score
            return out

    p.scorer.scorer.model = NaNScores()
    acked = []
    n = _feed_speaker(p, acked)
    dead = [decode(v, DeadLetter) for _, v in kafka.on(s.dlq_topic)]
    events = [decode(v, EmotionEvent) for _, v in kafka.on(s.output_topic)]
    assert dead and all(d.reason == "event_invalid" and "scores" in d.detail for d in dead)
    assert len(events) + len(dead) == 2
    assert acked == list(range(n)), "the window's audio is released, the partition keeps committing"
    assert p.scorer._task is None or not p.scorer._task.done()


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.skipif(os.environ.get("SERNET_LONG") != "1", reason="long run: SERNET_LONG=1 (CI runs the takeover variants)")
def test_kill9_single_worker_restarted(broker, artifact, emodb_root, tmp_path):
    _run_crash(broker, artifact, emodb_root, tmp_path, restart=True)
