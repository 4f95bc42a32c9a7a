"""The Faust worker: audio chunks in, emotion events out.

Flow per message (the agent consumes with ``noack``: *we* decide when an offset may be
committed)::

    decode (schemas) -> key check -> Windower.push -> BatchScorer queue
        -> frontend + model (on the loop, or in an executor) -> publish events (awaited)
        -> release offsets

Offsets (at-least-once, designed for crash safety)
--------------------------------------------------
Every consumed message is registered with :class:`OffsetTracker` under its partition. It
becomes *done* when nothing needs it any more:

* a dead-lettered message: after the dead letter is delivered;
* a duplicate / late chunk: at once;
* an accepted chunk: when the windowing releases its token (no window that is still to be cut
  overlaps its audio) **and** the events of the windows cut up to that point were delivered
  (tokens ride on the window whose emission freed them; batches are published in order).

The tracker acks messages to Faust strictly in offset order, only the contiguous done prefix of
each partition. Faust's commit (``Consumer._new_offset``) therefore only ever sees gap-free acks
starting at the committed offset, which sidesteps faust-streaming #312 (offsets committed past
un-acked messages when acks have gaps, e.g. ``committed`` None/0 or the off-by-one in its gap
check). A crash replays from the committed offset: at most the audio of unscored windows plus
chunks of other speakers sharing the partition; replayed windows get the same ``event_id``
(``make_event_id`` on the stream-clock start sample) and, for 16 kHz input, the same scores.

Nothing here uses Faust tables or end offsets (tansu's ListOffsets "latest" is unreliable).
On a partition revocation the speakers of that partition are dropped without emitting (the new
owner replays their uncommitted chunks); ``stream_wait_empty`` is off because held offsets are
the design, not a stall.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable

import numpy as np

from schemas import (AudioChunk, DeadLetter, EmotionEvent, ModelInfo, SchemaError, decode_audio_chunk,
                     encode, make_event_id, message_key, parse_message_key)
from sernet.settings import Settings
from worker.aio import bounded
from worker.faust_patches import (patch_consumer_in_loop, patch_direct_delivery, patch_eager_delivery,
                                  patch_fetch_max_wait, patch_stream_yield)
from worker.frontend import FrontendConfig
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.scoring import BatchScorer, WindowScorer
from worker.windowing import Window, Windower, WindowingConfig, WindowingError

log = get_logger("sernet.worker")

# (topic, key, value) -> enqueues in call order and returns an awaitable of the delivery
SendFn = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[Any]]]


GAUGE_PERIOD_S = 0.5  # live speakers / buffered audio / uncommitted gauges refresh
SHUTDOWN_DRAIN_S = 10.0  # longest wait for pending windows at SIGTERM (k8s grace: 30 s)
DELIVERY_TIMEOUT_S = 15.0  # a send not enqueued/confirmed by then is sent again (at-least-once)


class KeyMismatch(SchemaError):
    reason = "key_mismatch"


# --------------------------------------------------------------------------- offsets


class OffsetTracker:
    """Acks consumed messages to the consumer in offset order, only when done.

    ``register(tp, offset, ack)`` on receipt (offsets of a partition arrive in increasing
    order); ``done(tp, offset)`` when the message is no longer needed. ``ack`` callbacks run for
    the contiguous done prefix of each partition, never past a pending message.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, OrderedDict[int, list]] = {}

    def register(self, tp: Any, offset: int, ack: Callable[[], Any]) -> None:
        self._pending.setdefault(tp, OrderedDict())[offset] = [ack, False]

    def done(self, tp: Any, offset: int) -> int:
        """Mark done; returns how many messages were acked as a result."""
        queue = self._pending.get(tp)
        if queue is None or offset not in queue:
            return 0  # partition revoked meanwhile: the new owner replays it
        queue[offset][1] = True
        acked = 0
        while queue:
            first = next(iter(queue))
            ack, is_done = queue[first]
            if not is_done:
                break
            del queue[first]
            ack()
            acked += 1
        return acked

    def revoke(self, tps) -> None:
        for tp in tps:
            self._pending.pop(tp, None)

    def uncommitted(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def committable(self, tp: Any) -> int | None:
        """Lowest offset still pending for ``tp`` (None: nothing pending)."""
        q = self._pending.get(tp)
        return next(iter(q)) if q else None


# --------------------------------------------------------------------------- pipeline


@dataclass
class Incoming:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    ack: Callable[[], Any]
    tp: Any = None
    received_at: float = 0.0

    def __post_init__(self) -> None:
        if self.tp is None:
            self.tp = (self.topic, self.partition)


class Pipeline:
    """Broker-agnostic processing; the Faust app feeds it (tests feed it directly)."""

    def __init__(self, settings: Settings, model, frontend: FrontendConfig, send: SendFn, *,
                 model_info: ModelInfo, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.model = model
        self.send = send
        self.metrics = metrics or Metrics()
        self.clock = clock
        window_s = settings.window_s or frontend.window_s
        if window_s != frontend.window_s:
            log.warning("window_differs_from_training", window_s=window_s, trained=frontend.window_s)
            frontend = FrontendConfig.from_dict({**frontend.to_dict(), "window_s": window_s})
        self.frontend = frontend
        # the hop is rounded to the frame hop (effective_hop_samples): windows share frames
        self.wcfg = WindowingConfig.from_settings(settings, window_s, hop_align_samples=frontend.hop_length)
        self.windower = Windower(self.wcfg, clock=clock)
        self.offsets = OffsetTracker()
        self.model_info = model_info
        self.labels = list(model.labels)
        self.speaker_tp: dict[Hashable, Any] = {}
        # streaming frontend (default): each speaker's mel frames computed once, features
        # bit-identical to the plain path's (docs/streaming.md)
        cache_hop = self.wcfg.hop_samples if settings.streaming_frontend else None
        self.scorer = BatchScorer(WindowScorer(model, frontend, hop_samples=cache_hop,
                                               max_speakers=self.wcfg.max_speakers + 64),
                                  self._on_scored,
                                  batch_size=settings.batch_size,
                                  batch_wait_s=settings.batch_wait_ms / 1000.0,
                                  metrics=self.metrics,
                                  in_loop=bool(settings.score_in_loop),
                                  max_tries=settings.scoring_max_tries,
                                  on_failed=self._on_failed)
        self.started = False
        self._gauges_at = -1e9
        # more throttled gauges, refreshed with these (the app adds the consumer lag, which
        # needs its Kafka consumer)
        self.gauge_hooks: list[Callable[[], None]] = []

    def start(self) -> None:
        self.scorer.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.scorer.stop()
        self._gauges(force=True)  # the final state, whenever the throttled gauges last ran

    async def drain(self, timeout_s: float = SHUTDOWN_DRAIN_S) -> bool:
        """Wait until every window cut so far is scored and its events are delivered (their
        offsets then acked), at most ``timeout_s``. Called at shutdown after the consumer is
        paused and before the producer stops: the next owner replays less. True if drained."""
        deadline = self.clock() + timeout_s
        idle_since = None
        while self.clock() < deadline:
            if self.scorer.idle:
                # idle twice 20 ms apart: a message the agent was still handling may add windows
                if idle_since is not None:
                    return True
                idle_since = self.clock()
            else:
                idle_since = None
            await asyncio.sleep(0.02)
        return self.scorer.idle

    # ------------------------------------------------------------------ intake

    async def handle(self, msg: Incoming) -> None:
        """Never raises for bad input: it goes to the dead-letter topic."""
        now = msg.received_at or self.clock()
        self.offsets.register(msg.tp, msg.offset, msg.ack)
        try:
            chunk = self._decode(msg)
            key = (chunk.stream_id, chunk.speaker_id)
            result = self.windower.push(key, chunk.seq, chunk.pcm_native(), chunk.sample_rate_hz,
                                        end_of_stream=chunk.end_of_stream,
                                        token=(msg.tp, msg.offset), now=now,
                                        capture_ts=chunk.capture_ts,
                                        check_finite=False)  # decoded values are finite
        except (SchemaError, WindowingError) as exc:
            partial = getattr(exc, "result", None)
            if partial is not None:  # e.g. a speaker evicted before the chunk was refused
                await self._absorb(partial)
            await self._dead_letter(msg, exc)
            return
        except Exception as exc:  # a bug must not kill the worker: dead-letter and log it
            log.exception("unexpected_error", partition=msg.partition, offset=msg.offset)
            await self._dead_letter(msg, exc)
            return
        self.speaker_tp[key] = msg.tp
        outcome = "accepted"
        for name in ("duplicate", "late_after_end"):
            if result.counts.get(name):
                outcome = name
        if result.counts.get("reordered") and outcome == "accepted":
            outcome = "reordered"
        self.metrics.labelled(self.metrics.chunks, outcome).inc()
        await self._absorb(result)

    def _decode(self, msg: Incoming) -> AudioChunk:
        if msg.value is None:
            raise KeyMismatch("message has no value")
        chunk = decode_audio_chunk(msg.value)
        if msg.key is None:
            raise KeyMismatch("message has no key; producers key by stream/speaker")
        try:
            key_ids = parse_message_key(msg.key)
        except SchemaError as exc:  # not even a stream/speaker key: still a key mismatch
            raise KeyMismatch(f"{exc}; payload is {chunk.stream_id}/{chunk.speaker_id}",
                              field="key") from None
        if key_ids != (chunk.stream_id, chunk.speaker_id):
            raise KeyMismatch(f"key {msg.key[:80]!r} does not match payload "
                              f"{chunk.stream_id}/{chunk.speaker_id}", field="key")
        return chunk

    async def _absorb(self, result) -> None:
        for name, n in result.counts.items():
            if name not in ("duplicate", "late_after_end", "reordered"):
                self.metrics.labelled(self.metrics.windowing, name).inc(n)
            if name == "evicted":
                self.metrics.speaker_cap_hits.inc(n)
                log.warning("speaker_cap_reached", max_speakers=self.wcfg.max_speakers, evicted=n)
        for token in result.release:
            self._release(token)
        for lead in result.leads:  # before any window: a first window then finds its frames
            await self.scorer.put(lead)
        for window in result.windows:
            self.metrics.labelled(self.metrics.windows, "final" if window.final else "full").inc()
            if window.gap:
                self.metrics.labelled(self.metrics.window_flags, "gap").inc()
            if not window.speech:
                self.metrics.labelled(self.metrics.window_flags, "no_speech").inc()
            await self.scorer.put(window)
        # A finished speaker keeps its partition here as long as the windower remembers it:
        # on a revoke that memory must go too, or the new assignment's replay of its
        # uncommitted chunks would be dropped as late duplicates (events lost). Pruned,
        # amortised, to the speakers the windower still knows (live or remembered).
        if len(self.speaker_tp) > 2 * (len(self.windower) + len(self.windower.finished)) + 64:
            known = self.windower.speakers.keys() | self.windower.finished.keys()
            self.speaker_tp = {k: tp for k, tp in self.speaker_tp.items() if k in known}
        self._gauges()

    def _release(self, token) -> None:
        if token is not None:
            tp, offset = token
            self.offsets.done(tp, offset)

    def _gauges(self, force: bool = False) -> None:
        # buffered_samples() visits every live speaker: at most once per GAUGE_PERIOD_S, not
        # per message (it was 17 % of the agent's time at 64 speakers)
        now = time.monotonic()
        if not force and now - self._gauges_at < GAUGE_PERIOD_S:
            return
        self._gauges_at = now
        self.metrics.live_speakers.set(len(self.windower))
        self.metrics.buffered_s.set(self.windower.buffered_samples() / self.wcfg.sample_rate_hz)
        self.metrics.uncommitted.set(self.offsets.uncommitted())
        for hook in self.gauge_hooks:
            hook()

    async def _dead_letter(self, msg: Incoming, exc: BaseException) -> None:
        dl = DeadLetter.from_error(exc, key=msg.key, value=msg.value, topic=msg.topic,
                                   partition=msg.partition, offset=msg.offset)
        self.metrics.dlq.labels(dl.reason).inc()
        self.metrics.chunks.labels("dead_lettered").inc()
        log.warning("dead_letter", reason=dl.reason, detail=dl.detail[:200], partition=msg.partition,
                    offset=msg.offset)
        await self._deliver(self.settings.dlq_topic, msg.key, encode(dl))
        self.offsets.done(msg.tp, msg.offset)
        self._gauges()

    async def _deliver(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self._publish([(topic, key, value)])

    async def _publish(self, items: list[tuple[str, bytes | None, bytes]]) -> None:
        """Enqueue every message in order (a speaker's events stay ordered in its partition),
        then await all deliveries; failures are re-sent until delivered, because an undelivered
        event must not release offsets (a retried message may then arrive out of order or twice:
        at-least-once, same event_id). The enqueues share one bound: once it passes, the
        messages not enqueued yet are sent again with the failed ones, in their order."""
        pending = list(items)
        delay = 0.1
        while pending:
            futures: list[Any] = [None] * len(pending)
            outcome: list[Any] = [None] * len(pending)

            async def enqueue_all(batch: list[tuple[str, bytes | None, bytes]]) -> None:
                for i, (topic, key, value) in enumerate(batch):
                    try:
                        futures[i] = await self.send(topic, key, value)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # enqueue failed: retry this one
                        outcome[i] = exc

            try:  # bounded: a send may wait up to the producer's request timeout (20 min);
                # one bound for the batch's enqueues (one timer, not one per event)
                await bounded(enqueue_all(pending), DELIVERY_TIMEOUT_S)
            except asyncio.TimeoutError as exc:  # those not enqueued by then are sent again
                for i, fut in enumerate(futures):
                    if fut is None and outcome[i] is None:
                        outcome[i] = exc
            sent = [f for f in futures if f is not None]
            # a send that stays unconfirmed must not block the agent for good: bound the wait
            # and send the unconfirmed ones again
            late = (await asyncio.wait(sent, timeout=DELIVERY_TIMEOUT_S))[1] if sent else set()
            for i, fut in enumerate(futures):
                if fut is not None:
                    outcome[i] = _delivery_outcome(fut, late)
            failed = [item for item, r in zip(pending, outcome) if isinstance(r, BaseException)]
            if failed:
                log.error("publish_failed_retrying", failed=len(failed), error=repr(
                    next(r for r in outcome if isinstance(r, BaseException))), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            pending = failed

    # ------------------------------------------------------------------ scoring -> events

    def make_event(self, window: Window, scores: np.ndarray, published_at: float) -> EmotionEvent:
        stream_id, speaker_id = window.key
        probs = {label: float(p) for label, p in zip(self.labels, scores)}
        label = self.labels[int(np.argmax(scores))]
        return EmotionEvent(
            event_id=make_event_id(stream_id, speaker_id, window.start_sample, self.model_info.sha256),
            stream_id=stream_id, speaker_id=speaker_id,
            window_start_s=window.start_s, window_end_s=window.end_s, label=label, scores=probs,
            speech=window.speech, gap=window.gap, model=self.model_info,
            latency_ms=max(0.0, (published_at - window.completed_at) * 1000.0))

    async def _on_scored(self, windows: list[Window], scores: np.ndarray) -> None:
        now = self.clock()
        items = []
        for window, row in zip(windows, scores):
            try:
                items.append((self.settings.output_topic, message_key(*window.key),
                              encode(self.make_event(window, row, now))))
            except Exception as exc:  # an event that cannot be built (e.g. non-finite scores)
                # is dead-lettered, not retried forever: its audio is released like any other
                log.exception("event_not_built", stream=window.key[0], speaker=window.key[1],
                              start_sample=window.start_sample)
                dl = DeadLetter.build("event_invalid",
                                      f"window {window.key[0]}/{window.key[1]} @{window.start_sample}: "
                                      f"{type(exc).__name__}: {exc}",
                                      key=message_key(*window.key))
                self.metrics.dlq.labels(dl.reason).inc()
                items.append((self.settings.dlq_topic, message_key(*window.key), encode(dl)))
        await self._publish(items)
        done_at = self.clock()
        self.metrics.events.inc(sum(topic == self.settings.output_topic for topic, _, _ in items))
        for window in windows:
            self.metrics.event_latency_s.observe(max(0.0, done_at - window.completed_at))
            for token in window.release:
                self._release(token)
        self._gauges()

    async def _on_failed(self, windows: list[Window], detail: str) -> None:
        """Windows the model could not score after every try: each goes to the dead-letter
        topic with the error, and its audio is released so the offsets move on."""
        items = []
        for window in windows:
            dl = DeadLetter.build("scoring_failed",
                                  f"window {window.key[0]}/{window.key[1]} @{window.start_sample}: "
                                  f"{detail}", key=message_key(*window.key))
            self.metrics.dlq.labels(dl.reason).inc()
            items.append((self.settings.dlq_topic, message_key(*window.key), encode(dl)))
        await self._publish(items)
        for window in windows:
            for token in window.release:
                self._release(token)
        self._gauges()

    # ------------------------------------------------------------------ time and rebalances

    async def tick(self) -> None:
        result = self.windower.tick(self.clock())
        if result.windows or result.release or result.counts:
            await self._absorb(result)
        self._gauges()

    def on_revoked(self, tps) -> None:
        tps = set(tps)
        keys = [k for k, tp in self.speaker_tp.items() if tp in tps]
        dropped = self.windower.drop(keys)
        for k in keys:
            self.speaker_tp.pop(k, None)
        self.offsets.revoke(tps)
        log.info("partitions_revoked", partitions=len(tps), speakers_dropped=dropped)
        self._gauges(force=True)


def _delivery_outcome(fut: asyncio.Future, late: set) -> Any:
    """A send future's result, or the exception that makes :meth:`Pipeline._publish` retry it."""
    if fut in late:
        return TimeoutError(f"delivery not confirmed within {DELIVERY_TIMEOUT_S:g} s")
    if fut.cancelled():
        return asyncio.CancelledError("delivery cancelled")
    return fut.exception() or fut.result()


# --------------------------------------------------------------------------- Faust app


def load_model(settings: Settings):
    """(model, frontend, ModelInfo) from the artifact; refuses a tampered artifact."""
    from worker.artifact import load_artifact
    from worker.model import EmotionModel

    artifact = load_artifact(settings.artifact_dir)  # verifies every sha256 and the frontend
    # onnxruntime's CPU arena keeps the largest run's activations: one window's (~9 MB, less
    # than malloc keeps without it) at the default model_batch 1, and 4 % less CPU per call;
    # ~100 MB for 32-window calls, so larger model batches run without it (bench/README.md)
    model = EmotionModel.from_artifact(artifact, threads=settings.threads,
                                       run_batch=settings.model_batch,
                                       memory_arena=settings.model_batch == 1)
    info = ModelInfo(name=artifact.name, version=artifact.version, sha256=model.sha256)
    return model, artifact.frontend, info


def drop_monitor_sensor(app) -> bool:
    """Take Faust's ``Monitor`` out of the app's sensors (added when the app starts): it keeps
    per-message statistics for Faust's own web views (an event state object, timestamps and
    deques per message, through six sensor calls per chunk) that nothing here reads; the
    worker's metrics are its own (``worker/metrics.py``). Event-loop CPU per window -5 %,
    worker -3 % at 100 ms chunks (bench/README.md). Returns whether it was there."""
    if app.monitor in set(app.sensors):
        app.sensors.remove(app.monitor)
        return True
    return False


def create_app(settings: Settings, model_bundle=None):
    """Build the Faust app and its :class:`Pipeline` (not started)."""
    import faust

    from sernet.kafka import faust_kwargs
    from worker.metrics import CONTENT_TYPE_LATEST

    model, frontend, info = model_bundle or load_model(settings)
    datadir = tempfile.mkdtemp(prefix="sernet-faust-")
    app = faust.App(
        settings.consumer_group,
        **faust_kwargs(settings),
        autodiscover=False,
        datadir=datadir,
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        stream_wait_empty=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        topic_partitions=settings.partitions,
        broker_commit_interval=1.0,
        blocking_timeout=10.0,  # report an event-loop stall longer than this
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",
        web_in_thread=False,
        cython_optimizations=bool(settings.stream_fast_path),
    )
    audio = app.topic(settings.input_topic, value_serializer="raw", key_serializer="raw",
                      allow_empty=True)

    async def send(topic: str, key: bytes | None, value: bytes):
        # Faust's producer (started at boot, before the agents) rather than ``Topic.send``:
        # the same aiokafka send, partitioner and delivery future, without Faust's per-message
        # PendingMessage/FutureMessage, serializer lookups, sensors and callbacks
        # (bench/README.md); the topics exist already (``run_worker`` or the topic job)
        return await app.producer.send(topic, key, value, partition=None, timestamp=None,
                                       headers=None)  # a future of RecordMetadata

    metrics = Metrics()
    pipeline = Pipeline(settings, model, frontend, send, model_info=info, metrics=metrics)
    app.sernet_pipeline = pipeline  # for tests and tools
    patch_fetch_max_wait()
    patch_eager_delivery()  # a message's hand-over to the stream without four tasks
    patch_stream_yield(settings.stream_yield_every)  # not a loop turn per chunk
    app.sernet_fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.sernet_fetch_min_bytes = settings.fetch_min_bytes
    app.sernet_consumer_in_loop = bool(settings.consumer_in_loop)
    patch_consumer_in_loop()  # only apps with sernet_consumer_in_loop set drop the thread

    # offset of the last message handed to the pipeline, per partition: the lag gauge is
    # refreshed from it with the pipeline's other gauges (at most every GAUGE_PERIOD_S), not
    # per message (the high-watermark lookup and the gauge cost ~3 % of the event loop at
    # 100 ms chunks, bench/README.md)
    last_offset: dict = {}

    def refresh_lag() -> None:
        for tp, offset in last_offset.items():
            try:
                lag = app.consumer.highwater(tp) - offset - 1
            except Exception:  # highwater unknown before the first fetch response
                continue
            metrics.labelled(metrics.consumer_lag, str(tp.partition)).set(max(0, lag))

    pipeline.gauge_hooks.append(refresh_lag)

    async def deliver(message) -> None:
        tp = message.tp
        last_offset[tp] = message.offset
        # the offset tracker holds the ack until the chunk's windows are delivered: it holds
        # the message, not an event (the ack is what ``Event.ack`` does), and the payload is
        # dropped once handled (the windowing copied the samples or keeps its own view of what
        # it still needs), so ~3 s of every speaker's raw chunks do not stay in memory
        # (bench/README.md)
        await pipeline.handle(Incoming(key=message.key, value=message.value, topic=tp.topic,
                                       partition=tp.partition, offset=message.offset,
                                       ack=lambda m=message: m.ack(app.consumer),
                                       tp=tp, received_at=time.monotonic()))
        message.value = None

    if settings.direct_delivery:
        # the conductor hands each chunk to ``deliver`` itself, without Faust's Event,
        # channel queue and stream per message (worker/faust_patches.py, bench/README.md);
        # the agent below still subscribes the topic and sees no messages
        app.sernet_direct = {settings.input_topic: deliver}
        patch_direct_delivery()

    @app.agent(audio, name="sernet-windows", concurrency=1)
    async def consume(stream):
        async for event in stream.noack().events():
            await deliver(event.message)

    @app.task
    async def start_pipeline() -> None:
        pipeline.start()
        drop_monitor_sensor(app)
        # Faust, aiokafka, onnxruntime and the model leave ~10^5 long-lived objects that every
        # full (generation 2) garbage collection walks: 40-60 ms with the event loop stopped,
        # during the load too. Freezing them once started leaves the collector only what the
        # streams create (bench/README.md).
        gc.collect()
        gc.freeze()
        log.info("worker_started", settings=settings.safe_dict(), model=info.to_dict(),
                 window_s=pipeline.wcfg.window_s, hop_s=pipeline.wcfg.hop_s, pid=os.getpid())

    @app.timer(0.1)
    async def tick() -> None:
        if pipeline.started:
            await pipeline.tick()

    held: set = set()

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs) -> None:  # noqa: ARG001
        for tp in revoked:  # before the pipeline's forced gauge refresh
            last_offset.pop(tp, None)
        pipeline.on_revoked(revoked)
        for tp in revoked:
            held.discard(tp)
            if tp.topic == settings.input_topic:
                # no stale lag series for partitions this worker no longer reads
                metrics.unlabel(metrics.consumer_lag, str(tp.partition))
        metrics.assigned_partitions.set(len(held))

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs) -> None:  # noqa: ARG001
        held.clear()
        held.update(tp for tp in assigned if tp.topic == settings.input_topic)
        metrics.assigned_partitions.set(len(held))

    @app.on_before_shutdown.connect
    async def on_shutdown(app_, **kwargs) -> None:  # noqa: ARG001
        # Faust has paused the consumer; its producer is still up: score and publish what is
        # pending so that its offsets are committed at the consumer's stop
        pending = pipeline.scorer.queue.qsize()
        drained = await pipeline.drain()
        log.info("shutdown_drained", drained=drained, pending_windows_at_signal=pending,
                 uncommitted_chunks=pipeline.offsets.uncommitted())
        await pipeline.stop()

    @app.page("/metrics")
    async def metrics_page(web, request):  # noqa: ARG001
        # aiohttp refuses a charset inside content_type: pass the exposition type as a header
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web, request):  # noqa: ARG001
        return web.json({"ok": True, "live_speakers": len(pipeline.windower)})

    @app.page("/readyz")
    async def readyz(web, request):  # noqa: ARG001
        ready = pipeline.started and not app.rebalancing
        return web.json({"ready": ready}, status=200 if ready else 503)

    return app, pipeline


def _worker_class(faust):
    """``faust.Worker`` that survives a repeated SIGTERM at the very end of its shutdown.

    mode's worker handles SIGTERM through the event loop, and closing the loop restores the
    default action: a second SIGTERM after that (a supervisor or test re-sending it) killed a
    worker that had already drained and committed (exit code -15 instead of 0). Once shutdown
    has begun the signal means nothing more, so it is ignored for the rest of the process."""
    import signal
    from contextlib import suppress

    class Worker(faust.Worker):
        def _shutdown_loop(self) -> None:
            with suppress(Exception):
                self.loop.remove_signal_handler(signal.SIGTERM)  # so close() leaves SIG_IGN
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            super()._shutdown_loop()

    return Worker


def run_worker(settings: Settings, create_topics: bool = True) -> None:
    """Run the worker in this process until SIGINT/SIGTERM."""
    import faust

    from worker.logs import configure_logging

    configure_logging(settings.log_level)
    from worker.artifact import ArtifactError

    try:  # before anything connects: a tampered or mismatched artifact refuses to start
        bundle = load_model(settings)
    except ArtifactError as exc:
        log.error("model_artifact_rejected", model_dir=str(settings.artifact_dir), error=str(exc))
        print(f"Error: refusing to start: model artifact {settings.artifact_dir} rejected: {exc}",
              file=sys.stderr)
        raise SystemExit(2) from None
    log.info("worker_starting", settings=settings.safe_dict(), model=bundle[2].to_dict(), pid=os.getpid())
    if create_topics:
        from sernet.kafka import create_topics_sync

        try:
            created = create_topics_sync(settings)
            if created:
                log.info("topics_created", topics=created, partitions=settings.partitions)
        except Exception as exc:  # the broker may forbid it; the topics may exist already
            log.warning("topic_creation_failed", error=repr(exc))
    app, _ = create_app(settings, model_bundle=bundle)
    worker = _worker_class(faust)(app, loglevel=settings.log_level, override_logging=False)
    # Faust's progress spinner writes a bare "[^Worker]: ... OK ^" line to stdout, the only
    # non-JSON log line; without it Faust logs "Ready" through logging (JSON)
    worker.spinner = None
    worker.execute_from_commandline()
