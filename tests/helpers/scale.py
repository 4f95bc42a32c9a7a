"""A harness for tests on real processes: a fleet of ``sernet worker`` subprocesses in one
consumer group, the real producer streaming EMO-DB speakers in a background thread, a tail of
the event topic in another, a poller of every worker's partition assignment, and the checks
(every expected window emitted at least once, duplicates identical, emission gaps).

Written for the scale test (``tests/test_scale.py``) and meant to be reused by the crash-safety
tests: :meth:`WorkerFleet.kill` sends SIGKILL, every timeline is on one wall clock
(``time.time()``), and nothing here assumes how many workers run or why they changed.

Assignment source: Faust's built-in ``GET /assignment/`` page on each worker's web port (the
worker exposes no assignment metric of its own); readiness: the worker's ``/readyz`` (503
while Faust is rebalancing). Nothing relies on end offsets or lag from tansu (its ListOffsets
"latest" is wrong).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sernet.settings import Settings

SAMPLE_RATE_HZ = 16_000
Key = tuple[str, str]


# --------------------------------------------------------------------------- speakers


def partition_of(key: bytes, partitions: int) -> int:
    """The partition aiokafka's default partitioner (murmur2, like the Java client) picks."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Speaker:
    """One keyed speaker stream: a wav of concatenated EMO-DB clips of one EMO-DB speaker."""

    stream_id: str
    speaker_id: str
    path: Path
    n_samples: int
    clips: tuple[str, ...]
    partition: int

    @property
    def key(self) -> Key:
        return (self.stream_id, self.speaker_id)

    @property
    def duration_s(self) -> float:
        return self.n_samples / SAMPLE_RATE_HZ


def build_speakers(emodb_wav: Path, out_dir: Path, *, count: int, seconds: float,
                   partitions: int, tag: str) -> list[Speaker]:
    """``count`` speakers of at least ``seconds`` each, spread evenly over ``partitions``.

    Speaker ``i`` uses the clips of EMO-DB speaker ``i mod 10``, starting at a different
    emotion per ``i`` (interleaved speakers differ in voice and emotion). Stream ids are chosen
    so the keys land round-robin on the partitions (deterministic, every partition gets work).
    """
    import soundfile as sf

    by_speaker: dict[str, list[str]] = defaultdict(list)
    for name in sorted(os.listdir(emodb_wav)):
        if name.endswith(".wav"):
            by_speaker[name[:2]].append(name)
    ids = sorted(by_speaker)
    if not ids:
        raise FileNotFoundError(f"no EMO-DB wavs in {emodb_wav}")
    out_dir.mkdir(parents=True, exist_ok=True)
    speakers = []
    for i in range(count):
        spk = ids[i % len(ids)]
        names = by_speaker[spk]
        # rotate by emotion letter so speaker i starts with a different emotion
        emotions = sorted({n[5] for n in names})
        first = emotions[(i // len(ids) + i) % len(emotions)]
        ordered = sorted(names, key=lambda n: (n[5] != first, n))
        parts, total, used = [], 0, []
        for n in ordered * 10:
            if total >= seconds * SAMPLE_RATE_HZ:
                break
            audio, sr = sf.read(str(emodb_wav / n), dtype="int16")
            if sr != SAMPLE_RATE_HZ:
                raise ValueError(f"{n}: {sr} Hz, expected {SAMPLE_RATE_HZ}")
            parts.append(audio)
            used.append(n)
            total += len(audio)
        target = i % partitions
        j = 0
        while True:
            stream_id = f"{tag}-c{i:02d}" + (f"-{j}" if j else "")
            speaker_id = f"emodb{spk}"
            if partition_of(f"{stream_id}/{speaker_id}".encode(), partitions) == target:
                break
            j += 1
        path = out_dir / f"{stream_id}.wav"
        sf.write(str(path), np.concatenate(parts), SAMPLE_RATE_HZ, subtype="PCM_16")
        speakers.append(Speaker(stream_id, speaker_id, path, total, tuple(used), target))
    return speakers


# --------------------------------------------------------------------------- producer


class StreamProducer:
    """The real producer API (``open_file`` sources, ``ChunkSender``, ``run_sources``) in a
    background thread with its own event loop.

    ``stop()`` ends every unfinished speaker the way ``sernet produce`` does on SIGTERM (an
    empty ``end_of_stream`` chunk, then a flush); :attr:`sent_samples` counts the samples each
    speaker actually sent, so the expected windows follow what was streamed.
    """

    def __init__(self, settings: Settings, speakers: Sequence[Speaker], *, realtime: bool,
                 chunk_ms: float = 250.0) -> None:
        self.settings = settings
        self.speakers = list(speakers)
        self.realtime = realtime
        self.chunk_ms = chunk_ms
        self.sent_samples: dict[Key, int] = {s.key: 0 for s in self.speakers}
        self.chunks_sent = 0
        self.ended: set[Key] = set()
        self.error: BaseException | None = None
        self.stats: Any = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-producer", daemon=True)

    def start(self) -> "StreamProducer":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("producer thread did not start")
        if self.error is not None:
            raise RuntimeError(f"producer failed to start: {self.error!r}")
        return self

    def _on_chunk(self, source, chunk) -> None:  # noqa: ARG002
        key = (chunk.stream_id, chunk.speaker_id)
        self.sent_samples[key] += chunk.num_samples
        self.chunks_sent += 1
        if chunk.end_of_stream:
            self.ended.add(key)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by join()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        from producers.config import ProducerSettings
        from producers.runner import run_sources
        from producers.sender import ChunkSender, make_aiokafka_producer
        from producers.sources import open_file

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        psettings = ProducerSettings(kafka=self.settings)
        sources = []
        for s in self.speakers:
            sources += open_file(s.path, speakers=[s.speaker_id], stream_id=s.stream_id,
                                 chunk_ms=self.chunk_ms)
        producer = make_aiokafka_producer(psettings)
        sender = ChunkSender(producer, psettings.topic, max_pending_bytes=psettings.max_pending_bytes)
        await producer.start()
        self.started_at = time.time()
        self._ready.set()
        try:
            await run_sources(sources, sender, realtime=self.realtime, stop=self._stop,
                              on_chunk=self._on_chunk)
        finally:
            self.stats = sender.stats
            await producer.stop()
            self.finished_at = time.time()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)

    def join(self, timeout_s: float = 60.0) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"producer still running after {timeout_s} s")
        if self.error is not None:
            raise RuntimeError(f"producer failed: {self.error!r}") from self.error
        if self.stats is not None and not self.stats.ok:
            raise RuntimeError(f"producer could not deliver everything: {self.stats}")

    def expected(self, frontend: Any, hop_s: float) -> dict[Key, list]:
        """Expected windows per speaker for the audio sent so far (call after :meth:`join`)."""
        from worker.windowing import expected_windows

        return {k: expected_windows(n, frontend, hop_s) for k, n in self.sent_samples.items()}


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Received:
    event: Any  # schemas.EmotionEvent
    partition: int
    offset: int
    emitted_at: float  # the record's timestamp (set by the worker's producer), wall clock
    received_at: float  # when this tail read it, wall clock

    @property
    def key(self) -> Key:
        return (self.event.stream_id, self.event.speaker_id)

    @property
    def start_sample(self) -> int:
        return int(round(self.event.window_start_s * SAMPLE_RATE_HZ))


class EventCollector:
    """Tails the output topic from the beginning (no consumer group) in a background thread."""

    def __init__(self, settings: Settings, keys: Iterable[Key] | None = None) -> None:
        self.settings = settings
        self.keys = set(keys) if keys is not None else None
        self.received: list[Received] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scale-events", daemon=True)

    def start(self) -> "EventCollector":
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        from worker.events_tail import tail

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()

        def on(msg, record) -> None:
            key = (msg.stream_id, msg.speaker_id)
            if self.keys is not None and key not in self.keys:
                return
            now = time.time()
            ts = record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else now
            with self._lock:
                self.received.append(Received(msg, record.partition, record.offset, ts, now))

        await tail(self.settings, on, stop=self._stop, with_record=True, on_error=self.errors.append)

    def snapshot(self) -> list[Received]:
        if self._failure is not None:
            raise RuntimeError(f"event tail failed: {self._failure!r}") from self._failure
        with self._lock:
            return list(self.received)

    def wait_for(self, done: Callable[[list[Received]], bool], timeout_s: float,
                 poll_s: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(self.snapshot()):
                return True
            time.sleep(poll_s)
        return done(self.snapshot())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(10)


# --------------------------------------------------------------------------- coverage


@dataclass
class Coverage:
    expected: int
    emitted: int
    missing: list[tuple[Key, int]] = field(default_factory=list)
    duplicates: int = 0  # events beyond the first for a window
    duplicate_events: list[Received] = field(default_factory=list, repr=False)
    inconsistent: list[str] = field(default_factory=list)  # duplicates that differ
    unexpected: list[tuple[Key, int]] = field(default_factory=list)
    bad_event_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> dict[str, Any]:
        return {"expected_windows": self.expected, "events": self.emitted,
                "missing": len(self.missing), "duplicates": self.duplicates,
                "inconsistent_duplicates": len(self.inconsistent),
                "unexpected_windows": len(self.unexpected), "bad_event_ids": len(self.bad_event_ids)}


def check_coverage(received: Sequence[Received], expected: dict[Key, list],
                   atol: float = 1e-5) -> Coverage:
    """Every expected window (``worker.windowing.expected_windows`` spans) emitted at least once;
    duplicates carry the same event id, window end and scores (within ``atol``); every event id
    is the deterministic ``make_event_id`` of its window."""
    from schemas import make_event_id

    by_window: dict[tuple[Key, int], list[Received]] = defaultdict(list)
    for r in received:
        by_window[(r.key, r.start_sample)].append(r)
    want = {(k, span.start): span for k, spans in expected.items() for span in spans}
    cov = Coverage(expected=len(want), emitted=len(received))
    cov.missing = sorted(w for w in want if w not in by_window)
    cov.unexpected = sorted(w for w in by_window if w not in want)
    for (key, start), rs in by_window.items():
        first = rs[0].event
        if first.event_id != make_event_id(key[0], key[1], start, first.model.sha256):
            cov.bad_event_ids.append(first.event_id)
        span = want.get((key, start))
        if span is not None and int(round(first.window_end_s * SAMPLE_RATE_HZ)) != span.end:
            cov.inconsistent.append(f"{key} @{start}: window end {first.window_end_s} != {span.end}")
        cov.duplicates += len(rs) - 1
        cov.duplicate_events += rs[1:]
        for other in rs[1:]:
            e = other.event
            if e.event_id != first.event_id:
                cov.inconsistent.append(f"{key} @{start}: event id {e.event_id} != {first.event_id}")
            if e.window_end_s != first.window_end_s or e.label != first.label:
                cov.inconsistent.append(f"{key} @{start}: window end/label differ")
            labels = sorted(first.scores)
            if sorted(e.scores) != labels or not np.allclose(
                    [e.scores[x] for x in labels], [first.scores[x] for x in labels], atol=atol, rtol=0):
                cov.inconsistent.append(f"{key} @{start}: scores differ: {e.scores} vs {first.scores}")
    return cov


def covered(expected_keys_windows: dict[Key, set[int]]) -> Callable[[list[Received]], bool]:
    """A predicate for :meth:`EventCollector.wait_for`: every (key, start sample) seen."""
    need = {(k, s) for k, starts in expected_keys_windows.items() for s in starts}

    def done(received: list[Received]) -> bool:
        return need <= {(r.key, r.start_sample) for r in received}

    return done


def emission_gaps(received: Sequence[Received], t0: float, t1: float) -> dict[str, Any]:
    """Longest stretch without any event emitted (``emitted_at``) overlapping ``[t0, t1]``, and
    per speaker the longest gap between consecutive events overlapping it (the stall a
    downstream consumer of one speaker sees; steady state is one event per hop)."""

    def longest(times: list[float]) -> tuple[float, float | None]:
        best, at = 0.0, None
        for a, b in zip(times, times[1:]):
            if b >= t0 and a <= t1 and b - a > best:
                best, at = b - a, a
        return best, at

    all_times = sorted(r.emitted_at for r in received)
    gap, at = longest(all_times)
    per: dict[Key, list[float]] = defaultdict(list)
    for r in received:
        per[r.key].append(r.emitted_at)
    per_gap = {k: longest(sorted(v))[0] for k, v in per.items()}
    values = sorted(per_gap.values())
    return {"max_gap_all_s": round(gap, 3), "gap_starts_at": at,
            "max_gap_per_speaker_s": round(values[-1], 3) if values else None,
            "median_gap_per_speaker_s": round(statistics.median(values), 3) if values else None}


def steady_figures(received: Sequence[Received], t0: float, t1: float) -> dict[str, Any]:
    """Baseline in ``[t0, t1]`` (no scaling): the mean and longest interval between a speaker's
    consecutive events (the hop on average when keeping up) and the longest stretch without any
    event (speakers streamed in lockstep emit in bursts, so about one hop)."""
    per: dict[Key, list[float]] = defaultdict(list)
    for r in received:
        if t0 <= r.emitted_at <= t1:
            per[r.key].append(r.emitted_at)
    intervals = [b - a for v in per.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    times = sorted(t for v in per.values() for t in v)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"mean_interval_per_speaker_s": round(statistics.fmean(intervals), 3) if intervals else None,
            "max_interval_per_speaker_s": round(max(intervals), 3) if intervals else None,
            "max_gap_all_s": round(max(gaps), 3) if gaps else None}


# --------------------------------------------------------------------------- workers


def _get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


class WorkerFleet:
    """Named ``sernet worker`` subprocesses (``worker.demo.WorkerProcess``) sharing one
    consumer group, each with its own web port and JSON log file."""

    def __init__(self, settings: Settings, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # One onnxruntime/BLAS thread per worker: the machine is small and shared.
        # APP_WEB_STATS_ENABLED (Faust's own setting, read from the environment) serves
        # /assignment/: which partitions, by name (the worker's own sernet_assigned_partitions
        # gauge only counts them).
        self.extra_env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                          "APP_WEB_STATS_ENABLED": "true", **(extra_env or {})}
        self.workers: dict[str, Any] = {}
        self.exit_codes: dict[str, int | None] = {}
        self.started_at: dict[str, float] = {}
        self._n = 0

    def start(self, count: int = 1) -> list[str]:
        from worker.broker import free_port
        from worker.demo import WorkerProcess

        names = []
        for _ in range(count):
            name = f"w{self._n}"
            self._n += 1
            s = self.settings.replace(web_port=free_port(), threads=1)
            self.workers[name] = WorkerProcess(s, log_path=self.log_dir / f"{name}.log",
                                               extra_env=self.extra_env).start()
            self.started_at[name] = time.time()
            names.append(name)
        return names

    @property
    def live(self) -> list[str]:
        return [n for n, w in self.workers.items() if w.proc is not None and w.proc.poll() is None]

    def wait_ready(self, names: Sequence[str], timeout_s: float = 90.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        out = {}
        for name in names:
            self.workers[name].wait_ready(max(1.0, deadline - time.monotonic()))
            out[name] = time.time() - self.started_at[name]
        return out

    def signal(self, names: Sequence[str], sig: int = signal.SIGTERM) -> float:
        """Send ``sig`` to each (no waiting); returns the wall time it was sent."""
        t = time.time()
        for name in names:
            proc = self.workers[name].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
        return t

    def stop(self, names: Sequence[str], timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM all of ``names`` at once, then wait for each (SIGKILL after ``timeout_s``)."""
        self.signal(names, signal.SIGTERM)
        for name in names:
            self.exit_codes[name] = self.workers[name].stop(timeout_s)
        return {n: self.exit_codes[n] for n in names}

    def kill(self, names: Sequence[str]) -> float:
        """SIGKILL (crash): no commit, no LeaveGroup; the group notices after the session timeout."""
        t = self.signal(names, signal.SIGKILL)
        for name in names:
            self.exit_codes[name] = self.workers[name].stop(5)
        return t

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.workers[name].settings.web_port}{path}"

    def assignment(self, name: str) -> frozenset[int] | None:
        """Input partitions the worker holds (Faust's ``/assignment/`` actives); None: no answer."""
        try:
            status, body = _get(self.url(name, "/assignment/"))
        except OSError:
            return None
        if status != 200:
            return None
        actives = json.loads(body).get("actives", {})
        return frozenset(actives.get(self.settings.input_topic, []))

    def ready(self, name: str) -> bool | None:
        """True/False from ``/readyz`` (False while rebalancing); None when it does not answer."""
        try:
            status, _ = _get(self.url(name, "/readyz"))
        except OSError:
            return None
        return status == 200

    def metrics(self, name: str) -> dict[str, float]:
        status, body = _get(self.url(name, "/metrics"), timeout_s=3.0)
        return parse_metrics(body.decode()) if status == 200 else {}

    def consumed_partitions(self, name: str) -> frozenset[int]:
        """Partitions the worker has consumed from (labels of its
        ``sernet_consumer_lag_messages`` gauge: refreshed every 0.5 s from the last message of
        each partition, removed when the partition is revoked)."""
        return frozenset(int(m.group(1)) for k in self.metrics(name)
                         if (m := re.match(r'sernet_consumer_lag_messages\{partition="(\d+)"\}', k)))

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The worker's structlog JSON lines (non-JSON lines skipped)."""
        path = self.log_dir / f"{name}.log"
        out = []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {n}.log\n{w.log_tail(chars)}" for n, w in self.workers.items())

    def close(self) -> None:
        live = self.live
        if live:
            self.stop(live, timeout_s=15)


def describe_group(settings: Settings) -> tuple[str, int]:
    """(state, member count) of the consumer group from the broker (tansu's DescribeGroups
    answers members but empty assignments, so assignments come from the workers)."""

    async def main() -> tuple[str, int]:
        from aiokafka.admin import AIOKafkaAdminClient

        from sernet.kafka import aiokafka_kwargs

        admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings))
        await admin.start()
        try:
            (resp,) = await admin.describe_consumer_groups([settings.consumer_group])
            group = resp.groups[0]
            return group[2], len(group[5])
        finally:
            await admin.close()

    return asyncio.run(main())


def spread_ok(assignments: dict[str, frozenset[int] | None], partitions: int) -> bool:
    """Every worker holds >= 1 partition, no partition twice, all ``partitions`` covered."""
    sets = list(assignments.values())
    if not sets or any(not s for s in sets):
        return False
    union = frozenset().union(*sets)
    return len(union) == partitions == sum(len(s) for s in sets)


@dataclass(frozen=True)
class Sample:
    t: float
    worker: str
    ready: bool | None
    partitions: frozenset[int] | None


class FleetMonitor:
    """Polls ``/readyz`` and ``/assignment/`` of every live worker every ``interval_s`` in a
    background thread; the timeline measures rebalances (when the group stopped consuming, when
    every member was consuming again with a complete assignment)."""

    def __init__(self, fleet: WorkerFleet, interval_s: float = 0.25) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-monitor", daemon=True)

    def start(self) -> "FleetMonitor":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.is_set():
            for name in self.fleet.live:
                ready = self.fleet.ready(name)
                parts = self.fleet.assignment(name) if ready is not None else None
                with self._lock:
                    self.samples.append(Sample(time.time(), name, ready, parts))
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        if self._thread.ident is not None:
            self._thread.join(5)

    def timeline(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def state_at(self, t: float, names: Sequence[str]) -> dict[str, Sample | None]:
        latest: dict[str, Sample | None] = {n: None for n in names}
        for s in self.timeline():
            if s.t <= t and s.worker in latest:
                latest[s.worker] = s
        return latest

    def first(self, after: float, cond: Callable[[Sample], bool], names: Sequence[str] | None = None
              ) -> float | None:
        for s in self.timeline():
            if s.t >= after and (names is None or s.worker in names) and cond(s):
                return s.t
        return None

    def settled_at(self, after: float, names: Sequence[str], partitions: int) -> float | None:
        """First time >= ``after`` at which the latest sample of every worker in ``names`` is
        ready with an assignment such that together they hold all partitions exactly once."""
        latest: dict[str, Sample] = {}
        for s in self.timeline():
            if s.worker not in names:
                continue
            latest[s.worker] = s
            if s.t < after or len(latest) < len(names):
                continue
            if all(x.ready and x.t >= after for x in latest.values()) and \
                    spread_ok({n: x.partitions for n, x in latest.items()}, partitions):
                return s.t
        return None

    def wait_settled(self, after: float, names: Sequence[str], partitions: int,
                     timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t = self.settled_at(after, names, partitions)
            if t is not None:
                return t
            time.sleep(self.interval_s)
        last = self.state_at(time.time(), names)
        raise AssertionError(f"workers {list(names)} did not settle on a complete assignment of "
                             f"{partitions} partitions in {timeout_s} s; last: {last}")


def rebalance_figures(monitor: FleetMonitor, received: Sequence[Received], *, action_at: float,
                      settled_at: float, watched: Sequence[str], margin_s: float = 3.0) -> dict[str, Any]:
    """Figures of one scaling step: from the action (workers launched / SIGTERM sent) the moment
    a watched, already-running worker stopped consuming (``/readyz`` 503), the moment every
    member was consuming again, and the longest gaps in event emission around it."""
    paused = monitor.first(action_at, lambda s: s.ready is False, names=watched)
    out = {
        "action_to_settled_s": round(settled_at - action_at, 3),
        "rebalance_pause_s": round(settled_at - paused, 3) if paused is not None else None,
        "action_to_pause_start_s": round(paused - action_at, 3) if paused is not None else None,
    }
    out.update(emission_gaps(received, action_at, settled_at + margin_s))
    if out["gap_starts_at"] is not None:
        out["gap_starts_after_action_s"] = round(out.pop("gap_starts_at") - action_at, 3)
    else:
        out.pop("gap_starts_at")
    return out
