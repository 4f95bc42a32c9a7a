"""Prometheus metrics of the worker (one registry per process, served at ``/metrics``).

Names carry units (``_seconds``, ``_total``); label values are small closed sets (no speaker
ids: an unbounded key space would be unbounded memory in the registry).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the web page)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.chunks = Counter("sernet_chunks_total", "Audio chunks received, by outcome "
                              "(accepted, duplicate, reordered, late_after_end, dead_lettered).",
                              ["outcome"], registry=r)
        self.windows = Counter("sernet_windows_total", "Windows cut, by kind (full, final).",
                               ["kind"], registry=r)
        self.window_flags = Counter("sernet_window_flags_total",
                                    "Windows flagged gap (silence filled) or no_speech (energy VAD).",
                                    ["flag"], registry=r)
        self.events = Counter("sernet_events_total", "Emotion events published.", registry=r)
        self.dlq = Counter("sernet_dlq_total", "Messages sent to the dead-letter topic, by reason.",
                           ["reason"], registry=r)
        self.windowing = Counter("sernet_windowing_total", "Windowing actions (gap_filled_chunks, "
                                 "flushed_idle, evicted, ...).", ["action"], registry=r)
        self.inference_s = Histogram("sernet_inference_seconds",
                                     "Frontend + model time per batch.", buckets=LATENCY_BUCKETS_S,
                                     registry=r)
        self.scoring_cpu_s = Counter("sernet_scoring_cpu_seconds",
                                     "CPU time of the frontend + model calls, by the thread they "
                                     "ran on (loop: the event loop's; executor: the scoring "
                                     "thread).", ["thread"], registry=r)
        self.batch_size = Histogram("sernet_batch_size", "Windows per inference batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.event_latency_s = Histogram("sernet_event_latency_seconds",
                                         "Receipt of the chunk completing a window -> event published.",
                                         buckets=LATENCY_BUCKETS_S, registry=r)
        self.live_speakers = Gauge("sernet_live_speakers", "Speakers with buffered state.", registry=r)
        self.speaker_cap_hits = Counter("sernet_speaker_cap_hits_total",
                                        "Speakers flushed because the live-speaker cap was reached.",
                                        registry=r)
        self.buffered_s = Gauge("sernet_buffered_audio_seconds",
                                "Audio held in speaker buffers and reorder buffers.", registry=r)
        self.pending_windows = Gauge("sernet_pending_windows", "Windows waiting to be scored.",
                                     registry=r)
        self.uncommitted = Gauge("sernet_uncommitted_chunks",
                                 "Chunks whose offsets cannot be committed yet (audio still needed).",
                                 registry=r)
        self.scoring_errors = Counter("sernet_scoring_errors_total",
                                      "Failed scoring attempts (model or publish bug); the batch is retried.",
                                      registry=r)
        self.assigned_partitions = Gauge("sernet_assigned_partitions",
                                         "Input-topic partitions assigned to this worker.", registry=r)
        self.consumer_lag = Gauge("sernet_consumer_lag_messages",
                                  "High watermark minus next offset, per input partition.",
                                  ["partition"], registry=r)

        self._children: dict[tuple[int, str], object] = {}

    def labelled(self, metric, value: str):
        """``metric.labels(value)``, cached: ``labels()`` takes ~1 us a call (a lock, label
        validation), and the worker calls it for every chunk. Label values are small closed
        sets, so the cache is too."""
        key = (id(metric), value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    def unlabel(self, metric, value: str) -> None:
        """Drop the series ``value`` of ``metric`` (and its cached child), if it exists."""
        self._children.pop((id(metric), value), None)
        try:
            metric.remove(value)
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
