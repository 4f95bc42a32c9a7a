"""``sernet bench pipeline``: N simulated real-time speakers through tansu and real
``sernet worker`` processes (issue 6 items 3-4, issue 4 item 6).

One embedded tansu broker (``worker.broker.EmbeddedBroker``); the worker(s) as subprocesses
(``worker.demo.WorkerProcess``, ready on ``/readyz``); in this process an aiokafka producer
sends every speaker's next chunk on an absolute real-time schedule (``capture_ts`` = the wall
time of the chunk's first sample), and a consumer reads the events.

* latency of a window = event received - the chunk that completed the window was sent;
* worker CPU (psutil, user + system of the worker process) per speaker-second of audio and per
  window; peak RSS sampled every 0.25 s;
* efficiency = worker CPU per window / bare ``batch_features`` + int8 ``EmotionModel`` CPU per
  window at batch ``batch_size``, measured in this process right after the run: with
  ``--speakers`` after *each* run (``runs[i]["efficiency"]``; the top-level figure is their
  median, ``efficiency_runs`` the median/min/max), so a machine whose speed drifts between
  runs compares each run with its own moment; a capacity search measures it once, at the end;
* capacity: the largest N whose p99 <= 250 ms with every window scored, searched upward
  geometrically then bisected, each step a short run on the same worker(s) (each step's
  speakers are new and end with ``end_of_stream``); the candidate is then run ``confirm``
  more times and must pass most of its runs, else the search goes on below it
  (:func:`search_capacity`).

The producer, consumer, broker and worker share this machine's cores: a capacity measured
here is a lower bound of a worker's capacity on its own machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.common import machine, speaker_windows, summary

P99_LIMIT_MS = 250.0
# CPU of processes outside the run (the machine's busy cores less the workers', tansu's and the
# load generator's) above which a failing step is run again: in 308 runs on the Zen 4 VMs it
# stayed within -0.05..+0.08 cores (99 % below 0.043); the Intel VM's hypervisor steal took
# 0.34-0.40 for minutes (bench/README.md, reading the noise)
OTHER_LOAD_LIMIT_CORES = 0.15
DISTURBED_RETRIES = 2


def passed(run: dict[str, Any]) -> bool:
    """A step's verdict in the capacity search: every window scored and p99 <= 250 ms."""
    p99 = run["latency_ms"]["p99"]
    return bool(run["complete"] and p99 is not None and p99 <= P99_LIMIT_MS)


def other_cores(run: dict[str, Any]) -> float | None:
    """Cores that something other than the run's own processes kept busy during it: other
    processes, the kernel's own threads, and on a VM the hypervisor's steal (``steal_cores``,
    recorded per run; on the Intel VM it was most of it)."""
    try:
        return round(run["machine_cores_busy"] - run["worker_cpu_share_of_wall"]
                     - run["bench_process_cores"] - run["broker_cores"], 3)
    except (KeyError, TypeError):
        return None


def counted(run: dict[str, Any]) -> bool:
    """Whether the capacity search counted the run (it leaves out a failure that outside load
    disturbed, :func:`search_capacity`)."""
    return run.get("counted", True)


def disturbed(run: dict[str, Any]) -> bool:
    """Whether other processes took more than ``OTHER_LOAD_LIMIT_CORES`` during the run."""
    other = other_cores(run)
    return other is not None and other > OTHER_LOAD_LIMIT_CORES


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _machine_busy_s() -> tuple[float, float]:
    """CPU seconds all cores spent busy since boot (psutil: total minus idle and iowait), and
    of those the steal (0 where the kernel does not report it), from one read. On a VM, steal
    is time the vCPUs wanted but the hypervisor gave to someone else, which the run loses as
    surely as time another process took, so busy includes it."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0), getattr(t, "steal", 0.0)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class _Sampler:
    """Peak RSS and CPU seconds of processes, sampled in a thread."""

    def __init__(self, pids: list[int], period_s: float = 0.25) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.period_s = period_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            t = p.cpu_times()
            total += t.user + t.system
        return total

    def thread_cpu(self) -> dict[tuple[int, int], float]:
        """CPU seconds of every thread of the processes, ``{(pid, thread id): s}``."""
        out = {}
        for p in self.procs:
            try:
                for t in p.threads():
                    out[(p.pid, t.id)] = t.user_time + t.system_time
            except Exception:  # a worker exiting
                pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.peak_rss = max(self.peak_rss, max(p.memory_info().rss for p in self.procs))
            except Exception:  # a worker exiting mid-sample
                return

    def __enter__(self) -> "_Sampler":
        self.peak_rss = max(p.memory_info().rss for p in self.procs)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(2)


@contextmanager
def _workers(base, workers: int, log_dir: Path, extra_env: dict[str, str] | None):
    """``workers`` fresh ``sernet worker`` processes in ``base``'s consumer group, ready and
    assigned; stopped on exit. Logs go to ``log_dir``, named by the group (one per step)."""
    from worker.broker import free_port
    from worker.demo import WorkerProcess

    procs = []
    try:
        for w in range(workers):
            procs.append(WorkerProcess(base.replace(web_port=free_port()),
                                       log_path=log_dir / f"{base.consumer_group}-worker{w}.log",
                                       extra_env=extra_env).start())
        for p in procs:
            p.wait_ready(120)
        time.sleep(2.0)  # let the group settle (assignment of all partitions)
        yield procs
    finally:
        for p in procs:
            p.stop()


async def _step(settings, n: int, chunk_ms: int, audio_s: float, audio: np.ndarray,
                sampler: _Sampler, window_s: float, hop_s: float,
                broker_pid: int, lockstep: bool = False,
                producer_linger_ms: int = 2) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from schemas.codec import decode_emotion_event, encode
    from schemas.messages import AudioChunk, message_key
    from sernet.kafka import aiokafka_kwargs

    stream = "b" + uuid.uuid4().hex[:8]
    sr = 16000
    chunk = int(sr * chunk_ms / 1000)
    n_chunks = int(audio_s * sr) // chunk
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    offsets = [(i * 7919 * 16) % max(1, pcm.shape[0] - n_chunks * chunk) for i in range(n)]
    from worker.frontend import FrontendConfig
    from worker.windowing import expected_windows

    # the worker's windows (its hop is frame-aligned: effective_hop_samples, 1.0 s -> 1.008 s)
    w_samples = int(round(window_s * sr))
    full_windows = sum(1 for w in expected_windows(n_chunks * chunk, FrontendConfig(window_s=window_s), hop_s)
                       if w.end - w.start == w_samples)
    expected = n * full_windows
    sent_at: dict[tuple[str, int], float] = {}
    lat: list[float] = []
    got = 0
    done = asyncio.Event()
    kw = aiokafka_kwargs(settings)
    consumer = AIOKafkaConsumer(settings.output_topic, group_id=None, auto_offset_reset="latest",
                                fetch_max_wait_ms=20, **kw)
    producer = AIOKafkaProducer(linger_ms=producer_linger_ms, max_batch_size=1 << 20, acks=1, **kw)
    await consumer.start()
    await producer.start()
    # make sure the consumer is positioned before the first event can exist
    await consumer.getmany(timeout_ms=200)
    t0 = time.time() + 0.5
    # Real speakers do not start in lockstep: by default each one starts at its own phase,
    # spread evenly over one hop, so windows complete evenly over time. ``lockstep`` starts
    # them all at t0 (every speaker completes a window at the same moment: the worst burst).
    phase = [0.0 if lockstep else (i / n) * hop_s for i in range(n)]

    async def consume() -> None:
        nonlocal got
        while not done.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for records in batches.values():
                for rec in records:
                    ev = decode_emotion_event(rec.value)
                    if ev.stream_id != stream or ev.window_end_s - ev.window_start_s < window_s - 1e-3:
                        continue
                    end_sample = round((ev.window_end_s - t0 - phase[int(ev.speaker_id[1:])]) * sr)
                    seq = max(0, math.ceil(end_sample / chunk) - 1)
                    t_sent = sent_at.get((ev.speaker_id, seq))
                    if t_sent is not None:
                        lat.append((now - t_sent) * 1000.0)
                    got += 1
            if got >= expected:
                done.set()

    consumer_task = asyncio.create_task(consume())
    broker = _Sampler([broker_pid])  # CPU only; not started
    cpu0, threads0 = sampler.cpu(), sampler.thread_cpu()
    (machine0, steal0), own0 = _machine_busy_s(), _own_cpu_s()
    broker0 = broker.cpu()
    late_sends = 0
    # a chunk is sent when its last sample was captured: speaker i's chunk seq at
    # t0 + phase[i] + (seq + 1) * chunk; sent in 5 ms slots
    schedule = sorted((t0 + phase[i] + (seq + 1) * chunk / sr, i, seq)
                      for i in range(n) for seq in range(n_chunks + 1))
    try:
        j = 0
        while j < len(schedule):
            due = schedule[j][0]
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -chunk / sr:
                late_sends += 1
            now = time.time() + 0.005
            while j < len(schedule) and schedule[j][0] <= now:
                _, i, seq = schedule[j]
                j += 1
                eos = seq == n_chunks
                spk = f"s{i}"
                a = offsets[i] + seq * chunk
                data = b"" if eos else pcm[a : a + chunk].tobytes()
                msg = AudioChunk(stream_id=stream, speaker_id=spk, seq=seq,
                                 capture_ts=t0 + phase[i] + seq * chunk / sr, sample_rate_hz=sr,
                                 encoding="pcm_s16le", samples=data, end_of_stream=eos)
                await producer.send(settings.input_topic, encode(msg), key=message_key(stream, spk))
                sent_at[(spk, seq)] = time.time()
        await producer.flush()
        t_end = time.time()
        try:
            await asyncio.wait_for(done.wait(), timeout=max(5.0, 2 * window_s))
        except asyncio.TimeoutError:
            pass
        cpu1, threads1 = sampler.cpu(), sampler.thread_cpu()
        (machine1, steal1), own1 = _machine_busy_s(), _own_cpu_s()
        broker1 = broker.cpu()
        wall = time.time() - t0
    finally:
        done.set()
        await consumer_task
        await producer.stop()
        await consumer.stop()
    speaker_s = n * n_chunks * chunk / sr
    cpu_s = cpu1 - cpu0
    return {
        "speakers": n, "chunk_ms": chunk_ms, "audio_s": n_chunks * chunk / sr, "lockstep": lockstep,
        "events": got, "expected_events": expected, "complete": got >= expected,
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                       "max": max(lat) if lat else None, "n": len(lat)},
        "worker_cpu_s": round(cpu_s, 3),
        "worker_cpu_ms_per_speaker_s": round(1000 * cpu_s / speaker_s, 3),
        "worker_cpu_ms_per_window": round(1000 * cpu_s / max(1, got), 3),
        "worker_cpu_share_of_wall": round(cpu_s / wall, 3),
        # what else ran: the whole machine's busy cores and this (producer + consumer) process
        "machine_cores_busy": round((machine1 - machine0) / wall, 3),
        # of which the hypervisor's steal: the vCPUs were runnable, another guest ran
        "steal_cores": round((steal1 - steal0) / wall, 3),
        "worker_thread_cpu_ms_per_window": _thread_split(threads0, threads1, max(1, got)),
        "bench_process_cores": round((own1 - own0) / wall, 3),
        # tansu shares the cores too (a deployment's Kafka runs elsewhere)
        "broker_cores": round((broker1 - broker0) / wall, 3),
        "producer_late_sends": late_sends, "send_s": round(t_end - t0, 2),
        "wall_s": round(wall, 3),
    }


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` in a Prometheus text exposition: any labels, or only
    samples carrying every ``label="value"`` given."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            if wanted and not all(w in line.rsplit(" ", 1)[0] for w in wanted):
                continue
            total += float(line.rsplit(" ", 1)[1])
    return total


def bucket_counts(text: str, name: str) -> dict[float, float]:
    """Cumulative counts of histogram ``name`` by upper bound (``le``), summed over label sets."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix) and 'le="' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _scrape(web_ports: list[int]) -> list[str] | None:
    """Each worker's /metrics text; None if one did not answer."""
    import urllib.request

    texts = []
    for port in web_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                texts.append(resp.read().decode())
        except OSError:
            return None
    return texts


def scorer_batches(texts: list[str], wall_s: float) -> dict[str, float] | None:
    """How the workers' scoring threads were fed in a step (``sernet_batch_size`` of each
    worker's /metrics): batches, windows, mean windows per batch and batches per second per
    worker; None without batches."""
    batches = sum(metric_total(t, "sernet_batch_size_count") for t in texts)
    windows = sum(metric_total(t, "sernet_batch_size_sum") for t in texts)
    if not batches:
        return None
    # wall time of the scoring thread's calls (``sernet_inference_seconds``): against its CPU
    # time per window, what it spent waiting for a core or the GIL
    scoring_s = sum(metric_total(t, "sernet_inference_seconds_sum") for t in texts)
    return {"batches": int(batches), "windows": int(windows),
            "mean_batch": round(windows / batches, 2),
            "wall_ms_per_window": round(1000 * scoring_s / max(1.0, windows), 3),
            "batches_per_s_per_worker": round(batches / len(texts) / wall_s, 2),
            "windows_per_s_per_worker": round(windows / len(texts) / wall_s, 2)}


def worker_latency(texts: list[str]) -> dict[str, float] | None:
    """The workers' own share of the latency (``sernet_event_latency_seconds``: receipt of the
    chunk completing a window -> its event handed to the producer), all windows of the step:
    mean, and the shares over 100 and 250 ms (the histogram's bucket bounds). What the
    end-to-end figures add to it is the broker, the network, the load generator's linger and
    its event consumer."""
    count = sum(metric_total(t, "sernet_event_latency_seconds_count") for t in texts)
    if not count:
        return None
    total = sum(metric_total(t, "sernet_event_latency_seconds_sum") for t in texts)
    buckets = bucket_counts("\n".join(texts), "sernet_event_latency_seconds")
    return {"windows": int(count), "mean_ms": round(1000 * total / count, 1),
            "share_over_100ms": round(1 - buckets.get(0.1, 0.0) / count, 4),
            "share_over_250ms": round(1 - buckets.get(0.25, 0.0) / count, 4)}


def _thread_split(before: dict, after: dict, windows: int) -> dict[str, float]:
    """Worker CPU per window by thread, summed over the workers: ``event_loop`` (the main
    thread: Faust's agent, the windowing, sends), ``scoring`` (each worker's busiest other
    thread: the executor running frontend + model) and ``other`` (Faust's Kafka consumer
    thread and the rest)."""
    per: dict[int, list[tuple[float, bool]]] = {}
    for (pid, tid), cpu in after.items():
        per.setdefault(pid, []).append((cpu - before.get((pid, tid), 0.0), tid == pid))
    split = {"event_loop": 0.0, "scoring": 0.0, "other": 0.0}
    for threads in per.values():
        rest = sorted((c for c, main in threads if not main), reverse=True)
        split["event_loop"] += sum(c for c, main in threads if main)
        split["scoring"] += rest[0] if rest else 0.0
        split["other"] += sum(rest[1:])
    return {k: round(1000 * v / windows, 3) for k, v in split.items()}


def with_scoring_on_loop(split: dict[str, float], texts: list[str], windows: int) -> dict[str, float]:
    """``split`` (:func:`_thread_split`) for workers that score on their event loop
    (``SERNET_SCORE_IN_LOOP=1``): the frontend + model CPU they counted on that thread
    (``sernet_scoring_cpu_seconds_total{thread="loop"}``) moves from ``event_loop`` to
    ``scoring``, and the busiest other thread, which did not score, to ``other``. Unchanged
    when no scoring ran on a loop."""
    loop_s = sum(metric_total(t, "sernet_scoring_cpu_seconds_total", thread="loop") for t in texts)
    if not loop_s:
        return split
    moved = 1000 * loop_s / max(1, windows)
    return {"event_loop": round(split["event_loop"] - moved, 3), "scoring": round(moved, 3),
            "other": round(split["other"] + split["scoring"], 3)}


def bare_cpu_per_window(artifact_dir: Path, batch: int, audio: np.ndarray, calls: int = 6,
                        streaming: bool = False, run_batch: int | None = None,
                        gap_s: float = 0.0) -> float:
    """CPU seconds per window of the bare frontend + int8 ``EmotionModel`` at ``batch``
    (``run_batch`` windows per onnxruntime call, 1 onnxruntime thread, BLAS limited to 1 thread
    like the worker): ``batch_features``, or with ``streaming`` the worker's ``WindowScorer``
    (mel rows shared by consecutive windows of each of ``batch`` speakers, frame-aligned hop).
    ``gap_s``: sleep before each batch (the *paced* bare cost: on shared VMs a call after a
    pause costs up to 1.5x one right after another, bench/README.md, reading the noise)."""
    from worker.frontend import FrontendConfig, batch_features
    from worker.model import EmotionModel
    from worker.scoring import WindowScorer
    from worker.windowing import effective_hop_samples

    cfg = FrontendConfig()
    model = EmotionModel.from_artifact(artifact_dir, threads=1, run_batch=run_batch)
    n = cfg.window_samples
    hop = effective_hop_samples(1.0, cfg.sample_rate_hz, cfg.hop_length, n)
    scorer = WindowScorer(model, cfg, hop_samples=hop)
    batches = [speaker_windows(audio, batch, step, hop, n, calls + 1) for step in range(calls + 1)]

    def one(step: int) -> None:
        if streaming:
            scorer.score(batches[step])
        else:
            model.scores(batch_features([w.samples for w in batches[step]], cfg))

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # bench extra not installed: the caller's BLAS setting applies
        threadpool_limits = None
    ctx = threadpool_limits(1) if threadpool_limits else None
    try:
        one(0)
        cpu = 0.0
        for step in range(1, calls + 1):
            if gap_s:
                time.sleep(gap_s)
            c0 = time.process_time()
            one(step)
            cpu += time.process_time() - c0
        return cpu / (calls * batch)
    finally:
        if ctx is not None:
            ctx.unregister()


# bare measurements of each kind per run (~0.4 s each), plain and streaming taking turns; the
# efficiency divides by their median: one such measurement moved 1.77-2.39 ms per window
# between back-to-back repeats on the Intel VM (bench/README.md, reading the noise)
BARE_BLOCKS = 3


def bare_costs(artifact_dir: Path, batch: int, audio: np.ndarray, run_batch: int | None,
               blocks: int = BARE_BLOCKS) -> dict[str, list[float]]:
    """``blocks`` bare CPU seconds per window of each kind, ``{"plain": [...], "streaming":
    [...]}`` (:func:`bare_cpu_per_window`), measured in turns so that a slow spell of the
    machine touches both kinds alike."""
    out: dict[str, list[float]] = {"plain": [], "streaming": []}
    for _ in range(blocks):
        for kind in out:
            out[kind].append(bare_cpu_per_window(artifact_dir, batch, audio, run_batch=run_batch,
                                                 streaming=kind == "streaming"))
    return out


def paced_bare(artifact_dir: Path, audio: np.ndarray, fed: dict[str, float],
               back_to_back_s: float, run_batch: int | None = None) -> dict[str, float]:
    """The streaming bare cost fed as the run fed a worker's scoring thread: batches of the
    run's mean size (windows per batch; lead-only batches of first windows count too) at the
    run's window rate (the pause before each batch is the interval less the batch's own
    back-to-back cost). Not the efficiency figure, which the issue defines
    against the back-to-back bare cost: this one says how much of the scoring thread's excess
    over it is the machine's price of pausing rather than the worker's code."""
    batch = max(1, round(fed["mean_batch"]))
    interval_s = batch / max(fed["windows_per_s_per_worker"], 1e-3)
    gap_s = max(0.0, interval_s - batch * back_to_back_s)
    calls = max(6, min(40, int(4.0 / interval_s)))  # at most ~4 s of pauses
    cpu = bare_cpu_per_window(artifact_dir, batch, audio, calls=calls, streaming=True,
                              run_batch=run_batch, gap_s=gap_s)
    return {"batch": batch, "interval_ms": round(interval_s * 1000, 2),
            "gap_ms": round(gap_s * 1000, 2), "cpu_ms_per_window": round(cpu * 1000, 3)}


def efficiency_at_capacity(per_size: dict[str, Any], bare_s: float,
                           bare_streaming_s: float) -> dict[str, Any]:
    """Per chunk size: worker CPU per window at the largest N that met the latency bound (the
    operating point; the heaviest step is overloaded) / the bare CPU per window."""
    out = {}
    for size, entry in per_size.items():
        n = entry.get("max_speakers_p99_le_250ms")
        steps = [r for r in entry.get("search", entry.get("runs", []))
                 if r["speakers"] == n and counted(r)]
        if not steps:
            continue
        per_window = statistics.median(r["worker_cpu_ms_per_window"] for r in steps)
        out[size] = {"speakers": n, "worker_cpu_ms_per_window": round(per_window, 3),
                     "vs_bare": round(per_window / (bare_s * 1000), 3),
                     "vs_streaming_bare": round(per_window / (bare_streaming_s * 1000), 3)}
    return out


def search_capacity(step: Callable[[int], dict[str, Any]], ok: Callable[[dict[str, Any]], bool], *,
                    start: int, limit: int, bisect: bool = True, confirm: int = 0,
                    resolution: Callable[[int], int] = lambda good: max(8, good // 8),
                    disturbed: Callable[[dict[str, Any]], bool] | None = None,
                    retries: int = DISTURBED_RETRIES) -> dict[str, Any]:
    """The largest N for which ``ok(step(N))``: N doubles from ``start`` until a step fails (or
    passes ``limit``), then the gap is bisected down to ``resolution(good)``.

    A step's p99 is one noisy sample, so a bisection can end on an N that passed once by luck
    (seen on shared VMs: 256 passed in a search and failed 4 of 5 repeats). With ``confirm=K``
    the candidate is run K more times and stands only if most of its 1 + K runs pass; otherwise
    it becomes the failing bound and the search goes on below it (from the largest smaller N
    that passed), confirming the next candidate the same way. Pure apart from ``step``: the
    bench's steps are real runs, the tests' a table.

    A failing run that ``disturbed(run)`` says other processes loaded (the machine's busy
    cores beyond the run's own: :func:`other_cores`) does not count: N is run again, at most
    ``retries`` times, and the last run counts whatever it saw. Passing runs always count.

    Returns ``max_speakers`` (0 if no N passed; below ``start`` it bisects too), ``first_failing`` (the smallest N
    known to fail, or None), ``rejected`` (candidates that failed their confirmation, with
    their runs' pass count), ``disturbed`` (the N of each failing run that was not counted)
    and ``steps`` (every run, in order; an uncounted one carries ``"counted": False``)."""
    steps: list[dict[str, Any]] = []
    runs: dict[int, list[bool]] = {}
    not_counted: list[int] = []

    def trial(n: int) -> bool:
        for attempt in range(retries + 1):
            r = step(n)
            steps.append(r)
            verdict = ok(r)
            if verdict or disturbed is None or attempt == retries or not disturbed(r):
                break
            r["counted"] = False
            not_counted.append(n)
        runs.setdefault(n, []).append(verdict)
        return verdict

    good, bad = 0, None
    n = start
    while n <= limit:
        if not trial(n):
            bad = n
            break
        good = n
        n *= 2
    rejected: list[dict[str, int]] = []
    while True:
        while bisect and bad is not None and bad - good > resolution(good):
            mid = (good + bad) // 2
            if trial(mid):
                good = mid
            else:
                bad = mid
        if not good or confirm <= 0:
            break
        for _ in range(1 + confirm - len(runs[good])):
            trial(good)
        passed = sum(runs[good])
        if 2 * passed > len(runs[good]):
            break
        rejected.append({"speakers": good, "passed": passed, "runs": len(runs[good])})
        bad = good
        good = max((m for m, oks in runs.items() if m < bad and all(oks)), default=0)
    return {"max_speakers": good, "first_failing": bad, "rejected": rejected,
            "disturbed": not_counted, "steps": steps}


def run(artifact_dir: Path, *, workers: int = 1, speakers: int | None = None, chunk_ms: int = 100,
        audio_s: float = 12.0, quick: bool = False, repeats: int = 1, confirm: int = 2,
        max_speakers: int = 2048,
        chunk_sizes: tuple[int, ...] | None = None, extra_env: dict[str, str] | None = None,
        lockstep: bool = False, producer_linger_ms: int = 2, partitions: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.frontend import speech_like
    from sernet.kafka import create_topics_sync
    from sernet.settings import Settings
    from worker.artifact import load_artifact
    from worker.broker import EmbeddedBroker

    art = load_artifact(artifact_dir)
    window_s, hop_s = art.frontend.window_s, 1.0
    audio = speech_like(60.0, seed=7)
    if quick:
        audio_s = min(audio_s, 5.0)
    sizes = chunk_sizes or ((chunk_ms,) if (quick or speakers) else (100, 500))
    partitions = partitions or max(2, 2 * workers)  # of the input and output topics
    result: dict[str, Any] = {"bench": "pipeline", "quick": quick, "workers": workers,
                              "artifact": str(artifact_dir), "hop_s": hop_s, "lockstep": lockstep,
                              "producer_linger_ms": producer_linger_ms, "partitions": partitions,
                              "machine": machine()}
    peak_rss = 0.0

    def fresh_step(n: int, size: int, tmp: str) -> dict[str, Any]:
        """One step on a fresh broker and fresh worker process(es): tansu keeps every message
        in memory (no retention) and got slower run after run on one broker (p50 58 -> 108 ms
        over five 144-speaker runs even with the worker restarted each time), so steps must
        not inherit earlier steps' logs; the step's peak RSS is then that load's own."""
        nonlocal peak_rss
        with EmbeddedBroker(port=0) as broker:
            tag = uuid.uuid4().hex[:6]
            base = Settings.from_env(broker_url=broker.url, partitions=partitions,
                                     model_dir=str(artifact_dir), log_level="WARNING", hop_s=hop_s,
                                     input_topic=f"bench.audio.{tag}", output_topic=f"bench.events.{tag}",
                                     dlq_topic=f"bench.dlq.{tag}", consumer_group=f"bench-{tag}",
                                     max_speakers=max(2000, 2 * max_speakers))
            create_topics_sync(base)
            with _workers(base, workers, Path(tmp), extra_env) as procs, \
                    _Sampler([p.proc.pid for p in procs]) as sampler:
                r = asyncio.run(_step(base, n, size, audio_s, audio, sampler, window_s, hop_s,
                                      broker.proc.pid, lockstep,
                                      producer_linger_ms=producer_linger_ms))
                texts = _scrape([p.settings.web_port for p in procs])
                if texts:
                    r["worker_thread_cpu_ms_per_window"] = with_scoring_on_loop(
                        r["worker_thread_cpu_ms_per_window"], texts, max(1, r["events"]))
                r["scorer_batches"] = scorer_batches(texts, r["wall_s"]) if texts else None
                r["worker_latency"] = worker_latency(texts) if texts else None
        r["peak_rss_mb"] = round(sampler.peak_rss / 2**20, 1)
        peak_rss = max(peak_rss, r["peak_rss_mb"])
        return r

    settings = Settings.from_env({**os.environ, **(extra_env or {})})  # what the workers run
    batch, run_batch = settings.batch_size, settings.model_batch

    def with_bare(r: dict[str, Any]) -> dict[str, Any]:
        """The run's efficiency against the bare cost measured right after it (the median of
        :data:`BARE_BLOCKS` measurements)."""
        costs = bare_costs(artifact_dir, batch, audio, run_batch)
        bare, bare_streaming = (statistics.median(costs[k]) for k in ("plain", "streaming"))
        r["bare_blocks_ms"] = {k: [round(v * 1000, 3) for v in vs] for k, vs in costs.items()}
        r["bare_cpu_ms_per_window"] = round(bare * 1000, 3)
        r["bare_streaming_cpu_ms_per_window"] = round(bare_streaming * 1000, 3)
        r["efficiency"] = round(r["worker_cpu_ms_per_window"] / (bare * 1000), 3)
        r["efficiency_vs_streaming_bare"] = round(
            r["worker_cpu_ms_per_window"] / (bare_streaming * 1000), 3)
        log(f"    efficiency {r['efficiency']}: worker {r['worker_cpu_ms_per_window']} / bare "
            f"{r['bare_cpu_ms_per_window']} CPU-ms per window (streaming bare "
            f"{r['bare_streaming_cpu_ms_per_window']}; bare measurements "
            f"{r['bare_blocks_ms']['plain']} / {r['bare_blocks_ms']['streaming']})")
        fed = r.get("scorer_batches")
        if fed:
            r["paced_bare"] = paced = paced_bare(artifact_dir, audio, fed, bare_streaming,
                                                 run_batch)
            scoring = r["worker_thread_cpu_ms_per_window"]["scoring"]
            r["scoring_vs_paced_bare"] = round(scoring / paced["cpu_ms_per_window"], 3)
            log(f"    paced: batches of {paced['batch']} every {paced['interval_ms']} ms cost "
                f"{paced['cpu_ms_per_window']} CPU-ms per window bare; the worker's frontend + "
                f"model {scoring} ({r['scoring_vs_paced_bare']}x)")
        return r

    with tempfile.TemporaryDirectory(prefix="sernet-bench-") as tmp:
        def step(n: int, size: int) -> dict[str, Any]:
            r = fresh_step(n, size, tmp)
            r["other_cores"] = other_cores(r)
            log(f"  N={n:5d} chunk={size} ms: events {r['events']}/{r['expected_events']} "
                f"p50/p99 {r['latency_ms']['p50']}/{r['latency_ms']['p99']} ms, "
                f"worker {r['worker_cpu_ms_per_speaker_s']} CPU-ms/speaker-s, RSS {r['peak_rss_mb']} MB; "
                f"cores busy: worker {r['worker_cpu_share_of_wall']}, bench {r['bench_process_cores']}, "
                f"broker {r['broker_cores']}, other {r['other_cores']} "
                f"(steal {r.get('steal_cores')}), "
                f"machine {r['machine_cores_busy']}"
                + (" (disturbed: run again if it failed)" if disturbed(r) else ""))
            return r

        per_size = {}
        for size in sizes:
            log(f"chunk {size} ms, {workers} worker(s), fresh broker and worker per step")
            if speakers:
                runs = [with_bare(step(speakers, size)) for _ in range(repeats)]
                per_size[str(size)] = {"runs": runs}
                continue
            found = search_capacity(lambda n, size=size: step(n, size), passed, start=4 if quick else 32,
                                    limit=16 if quick else max_speakers, bisect=not quick,
                                    confirm=0 if quick else confirm, disturbed=disturbed)
            good = found["max_speakers"]
            at_max = [r for r in found["steps"] if r["speakers"] == good and counted(r)]
            entry: dict[str, Any] = {
                "max_speakers_p99_le_250ms": good, "first_failing": found["first_failing"],
                "peak_rss_mb_at_max": max((r["peak_rss_mb"] for r in at_max), default=None),
                "confirm": {"runs_at_max": len(at_max), "passed_at_max": sum(map(passed, at_max)),
                            "p99_ms_at_max": [r["latency_ms"]["p99"] for r in at_max],
                            "rejected": found["rejected"]},
                "disturbed_not_counted": found["disturbed"],
                "search": found["steps"]}
            if good and not quick:
                entry["at_fraction"] = {
                    f"{int(f * 100)}%": step(max(1, int(good * f)), size)
                    for f in (0.25, 0.5, 0.75)}
            per_size[str(size)] = entry
    result["peak_rss_mb"] = peak_rss
    result["per_chunk_ms"] = per_size
    all_steps = [r for e in per_size.values() for r in e.get("search", e.get("runs", []))]
    if all_steps:
        heavy = max(all_steps, key=lambda r: r["events"])
        # fixed-N runs carry their own; a search is measured once, at its heaviest step
        measured = [r for r in all_steps if "efficiency" in r] or [with_bare(heavy)]
        bare = statistics.median(r["bare_cpu_ms_per_window"] for r in measured) / 1000
        bare_streaming = statistics.median(
            r["bare_streaming_cpu_ms_per_window"] for r in measured) / 1000
        result["bare_batch"] = {"batch_size": batch, "model_batch": run_batch}
        result["bare_cpu_ms_per_window"] = round(bare * 1000, 3)
        result["bare_streaming_cpu_ms_per_window"] = round(bare_streaming * 1000, 3)
        result["efficiency_step"] = {"speakers": heavy["speakers"], "chunk_ms": heavy["chunk_ms"]}
        result["efficiency_runs"] = summary([r["efficiency"] for r in measured], 3)
        result["efficiency"] = result["efficiency_runs"]["median"]
        result["efficiency_vs_streaming_bare"] = round(
            statistics.median(r["efficiency_vs_streaming_bare"] for r in measured), 3)
        result["worker_cpu_ms_per_speaker_s"] = heavy["worker_cpu_ms_per_speaker_s"]
        result["efficiency_at_capacity"] = efficiency_at_capacity(per_size, bare, bare_streaming)
    result["max_speakers_p99_le_250ms"] = {k: v.get("max_speakers_p99_le_250ms")
                                           for k, v in per_size.items()}
    return result


# --------------------------------------------------------------------------- A/B of a worker setting

# what an A/B compares per round: (name, how to read it from a fixed-N run)
AB_METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "worker_cpu_ms_per_window": lambda r: r["worker_cpu_ms_per_window"],
    "event_loop_cpu_ms_per_window": lambda r: r["worker_thread_cpu_ms_per_window"].get("event_loop"),
    "scoring_cpu_ms_per_window": lambda r: r["worker_thread_cpu_ms_per_window"].get("scoring"),
    "machine_cores_busy": lambda r: r["machine_cores_busy"],
    "broker_cores": lambda r: r["broker_cores"],
    "p99_ms": lambda r: r["latency_ms"]["p99"],
    "peak_rss_mb": lambda r: r["peak_rss_mb"],
}


def parse_compare(spec: str) -> tuple[str, list[str]]:
    """``"VAR=a,b[,c]"`` -> ``("VAR", ["a", "b", "c"])``: a worker environment variable and the
    values to compare (the first is the baseline)."""
    var, sep, values = spec.partition("=")
    var = var.strip()
    vals = [v.strip() for v in values.split(",")]
    if not sep or not var or not var.replace("_", "").isalnum() or var[0].isdigit():
        raise ValueError(f"expected VAR=a,b (an environment variable name), got {spec!r}")
    if len(vals) < 2 or any(v == "" for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"expected at least two distinct, non-empty values in {spec!r}")
    return var, vals


def round_orders(values: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: forward, then reversed, alternately, so a machine that drifts
    during the A/B does not favour whichever value always runs first."""
    return [list(values) if r % 2 == 0 else list(reversed(values)) for r in range(rounds)]


def ab_summary(var: str, values: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-value medians and, per round, each value's ratio to the baseline (``values[0]``) run
    in the same round: ``runs`` = ``[{"round", "value", "run"}, ...]``."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for item in runs:
        by_round.setdefault(item["round"], {})[item["value"]] = item["run"]
    per_value: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for value in values:
        got = [item["run"] for item in runs if item["value"] == value]
        per_value[value] = {
            name: summary([v for v in map(read, got) if v is not None], 3)
            for name, read in AB_METRICS.items() if any(read(r) is not None for r in got)}
        per_value[value]["passed"] = sum(map(passed, got))
        per_value[value]["runs"] = len(got)
        if value == values[0]:
            continue
        ratios[value] = {}
        for name, read in AB_METRICS.items():
            pairs = [(read(rr[value]), read(rr[values[0]])) for rr in by_round.values()
                     if value in rr and values[0] in rr]
            pairs = [(a, b) for a, b in pairs if a is not None and b]
            if pairs:
                ratios[value][name] = summary([a / b for a, b in pairs], 3)
    return {"var": var, "values": values, "baseline": values[0], "per_value": per_value,
            "vs_baseline_same_round": ratios}


def ab_table(result: dict[str, Any]) -> str:
    """Markdown: each metric's median per value and its same-round ratio to the baseline."""
    ab = result["ab"]
    values, base = ab["values"], ab["baseline"]
    head = "| metric | " + " | ".join(f"{ab['var']}={v}" for v in values) + " | " + \
        " | ".join(f"{v} / {base}, same round (min-max)" for v in values[1:]) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(values) - 1)]
    for name in AB_METRICS:
        if name not in ab["per_value"][base]:
            continue
        cells = [str(ab["per_value"][v].get(name, {}).get("median", "")) for v in values]
        for v in values[1:]:
            s = ab["vs_baseline_same_round"].get(v, {}).get(name)
            cells.append(f"{s['median']} ({s['min']}-{s['max']})" if s else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| p99 <= 250 ms | " + " | ".join(
        f"{ab['per_value'][v]['passed']} of {ab['per_value'][v]['runs']}" for v in values)
        + " |" + " |" * (len(values) - 1))
    return "\n".join(lines)


def compare(artifact_dir: Path, var: str, values: list[str], *, rounds: int, speakers: int,
            extra_env: dict[str, str] | None = None,
            log: Callable[[str], None] = print, **run_kwargs: Any) -> dict[str, Any]:
    """Interleaved A/B of one worker environment variable: ``rounds`` rounds of one fixed-N run
    per value (fresh broker and workers each, order alternating per round), reported as
    per-value medians and same-round ratios to the first value (:func:`ab_summary`). Two runs
    of the same code can differ by 10 % on a shared VM (bench/README.md, reading the noise); only
    ratios within a round, over several rounds, separate a change from that drift."""
    runs = []
    for r, order in enumerate(round_orders(values, rounds)):
        for value in order:
            log(f"round {r + 1}/{rounds}: {var}={value}")
            res = run(artifact_dir, speakers=speakers, repeats=1,
                      extra_env={**(extra_env or {}), var: value}, log=log, **run_kwargs)
            (size,) = res["per_chunk_ms"]
            runs.append({"round": r, "value": value, "run": res["per_chunk_ms"][size]["runs"][0]})
    first = runs[0]["run"]
    return {"bench": "pipeline_ab", "speakers": speakers, "chunk_ms": first["chunk_ms"],
            "rounds": rounds, "workers": run_kwargs.get("workers", 1),
            "producer_linger_ms": run_kwargs.get("producer_linger_ms", 2),
            "machine": machine(), "ab": ab_summary(var, values, runs), "runs": runs}
