"""Batched inference across speakers with a bounded wait.

Two layers (STYLE.md): :class:`WindowScorer` is the synchronous frontend + model call on a list
of windows (the same functions the offline ``predict`` uses: ``batch_features`` then
``EmotionModel.scores``); :class:`BatchScorer` collects windows of every speaker from an
asyncio queue, cuts a batch when ``batch_size`` windows are waiting or ``batch_wait_s`` after
the first one arrived, runs the scorer and hands the scores to an async callback. The scorer
runs on the event loop's own thread by default (``in_loop``: the loop waits for the batch, a
few to a few tens of milliseconds, and nothing crosses threads), or in a one-thread executor
beside the loop (bench/README.md).

Batches are processed one after another and the callback is awaited before the next batch
starts, so when the callback returns, every window of this batch *and of all earlier batches*
has been handled; the worker relies on that to release chunk offsets in order.

A batch whose scoring fails is tried ``max_tries`` times with back-off; then each of its
windows is scored on its own once, and the windows that still fail go to ``on_failed`` with the
error (the worker dead-letters them): one bad window or a broken model costs a bounded delay,
never a stalled worker.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

import numpy as np

from worker.aio import bounded
from worker.frontend import FrontendConfig, batch_features, features_from_mel
from worker.logs import get_logger
from worker.streaming_frontend import WindowMelCache
from worker.windowing import Lead, Window, as_float32

log = get_logger("sernet.worker")


# full windows taken through the streaming frontend at a time: their float32 audio (192 KB
# each) and mel rows (94 KB each) are scratch for one step, so a 32-window batch holds 4.5 MB
# of them, not 9 MB (8 at a time cost 3 % more CPU; bench/README.md)
FEATURE_WINDOWS = 16


class WindowScorer:
    """Frontend + model for a batch of windows (each at most one window long, padded here).

    With ``hop_samples`` a multiple of the frontend's frame hop, full windows go through the
    streaming frontend (:class:`WindowMelCache`: each frame's mel energies computed once per
    speaker) and are finished in one vectorised log/DCT per ``FEATURE_WINDOWS`` windows;
    final partial windows (and every window without ``hop_samples``) take the plain
    ``batch_features`` path. Both equal ``window_features`` of the window's samples bit for
    bit. Runs in one executor thread, which owns the cache.
    """

    def __init__(self, model, frontend: FrontendConfig, hop_samples: int | None = None,
                 max_speakers: int = 4096) -> None:
        self.model = model
        self.frontend = frontend
        self.cache = (WindowMelCache(frontend, hop_samples, max_entries=max_speakers)
                      if hop_samples else None)
        if self.cache is not None and not self.cache.enabled:
            self.cache = None
        self._scratch = np.empty((0, frontend.window_samples), dtype=np.float32)

    def features(self, windows: Sequence[Window]) -> np.ndarray:
        cfg = self.frontend
        n = cfg.window_samples
        if self.cache is None:
            return batch_features([w.samples for w in windows], cfg)
        out = np.empty((len(windows),) + cfg.input_shape, dtype=np.float32)
        rows = [i for i, w in enumerate(windows) if w.n_samples == n and not w.final]
        plain = [i for i, w in enumerate(windows) if w.n_samples != n or w.final]
        for at in range(0, len(rows), FEATURE_WINDOWS):  # in order: a backlog's rows chain
            part = rows[at : at + FEATURE_WINDOWS]
            audio = self._as_float(windows, part)
            mel, gains = self.cache.mel_and_gain(
                [(windows[i].key, windows[i].stream_gen, windows[i].start_sample, audio[j])
                 for j, i in enumerate(part)])
            out[part] = features_from_mel(mel, gains, cfg)
        for i in plain:
            self.cache.forget(windows[i].key)  # a final window: the speaker's stream ended
        if plain:
            out[plain] = batch_features([windows[i].samples for i in plain], cfg)
        return out

    def _as_float(self, windows: Sequence[Window], idx: list[int]) -> list[np.ndarray]:
        """The full windows ``idx`` as float32: int16 PCM converted exactly (as
        :attr:`Window.samples` would) into rows of one scratch array reused batch after batch,
        not a new 192 KB array per window; float32 windows as they are. Valid until the next
        call."""
        if self._scratch.shape[0] < len(idx):
            self._scratch = np.empty((len(idx), self.frontend.window_samples), dtype=np.float32)
        return [as_float32(windows[i].pcm, out=self._scratch[j]) for j, i in enumerate(idx)]

    def forget(self, keys) -> None:
        """Drop cached rows of speakers (call from the executor thread)."""
        if self.cache is not None:
            for k in keys:
                self.cache.forget(k)

    def lead(self, leads: Sequence[Lead]) -> None:
        """Transform the frames of first windows ahead (:class:`Lead`); no-op without the
        streaming frontend."""
        if self.cache is not None and leads:
            self.cache.lead([(x.key, x.stream_gen, x.start_sample, x.samples) for x in leads])

    def score(self, windows: Sequence[Window]) -> np.ndarray:
        return self.model.scores(self.features(windows))

    def lead_and_score(self, items: Sequence[Window | Lead]) -> tuple[list[Window], np.ndarray]:
        """The batch's leads first, then its windows' scores (windows in their order)."""
        self.lead([x for x in items if isinstance(x, Lead)])
        windows = [x for x in items if not isinstance(x, Lead)]
        if not windows:
            return windows, np.zeros((0, len(self.model.labels)), dtype=np.float32)
        return windows, self.score(windows)


ScoredCallback = Callable[[list[Window], np.ndarray], Awaitable[None]]
FailedCallback = Callable[[list[Window], str], Awaitable[None]]


class BatchScorer:
    def __init__(self, scorer: WindowScorer, on_scored: ScoredCallback, *, batch_size: int = 32,
                 batch_wait_s: float = 0.02, max_pending: int | None = None, metrics=None,
                 in_loop: bool = False, max_tries: int = 3,
                 on_failed: FailedCallback | None = None, retry_delay_s: float = 0.1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_tries < 1:
            raise ValueError("max_tries must be >= 1")
        self.scorer = scorer
        self.on_scored = on_scored
        self.on_failed = on_failed
        self.max_tries = max_tries
        self.retry_delay_s = retry_delay_s
        self.batch_size = batch_size
        self.batch_wait_s = max(0.0, batch_wait_s)
        # Backpressure: the consumer awaits put() when this many windows wait for the model.
        self.queue: asyncio.Queue[Window] = asyncio.Queue(maxsize=max_pending or 4 * batch_size)
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sernet-infer")
        self.in_loop = in_loop  # score on the event loop's thread; else in the executor
        self._task: asyncio.Task | None = None
        self._busy = False

    async def put(self, window: Window | Lead) -> None:
        """Queue a window, or a :class:`Lead` (frames transformed ahead, no event)."""
        await self.queue.put(window)
        if self.metrics is not None:
            self.metrics.pending_windows.set(self.queue.qsize())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def idle(self) -> bool:
        return self.queue.empty() and not self._busy

    async def _next_batch(self) -> list[Window]:
        batch = [await self.queue.get()]
        self._busy = True  # assembling a batch counts as busy (``idle`` must not flicker)
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await bounded(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def run(self) -> None:
        """Forever: a batch, its scores, the callback (:meth:`_handle`)."""
        while True:
            batch = await self._next_batch()
            self._busy = True
            try:
                await self._handle(batch)
            finally:
                self._busy = False

    async def _score(self, items) -> tuple[list[Window], np.ndarray]:
        """One scoring try of ``items``, timed and counted."""
        t0 = time.perf_counter()
        if self.in_loop:
            windows, scores, cpu_s = self._timed(items)
        else:
            loop = asyncio.get_running_loop()
            windows, scores, cpu_s = await loop.run_in_executor(self.executor, self._timed, items)
        if self.metrics is not None:
            self.metrics.labelled(self.metrics.scoring_cpu_s, self._where).inc(cpu_s)
            self.metrics.inference_s.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(windows))
            self.metrics.pending_windows.set(self.queue.qsize())
        return windows, scores

    async def _handle(self, batch) -> None:
        """Score ``batch`` (``max_tries`` tries, then window by window) and hand the scores to
        ``on_scored``. A failing callback (e.g. an unreachable broker) is retried with back-off
        until it succeeds: its windows' events must not be lost."""
        delay_s = self.retry_delay_s
        for attempt in range(1, self.max_tries + 1):
            try:
                windows, scores = await self._score(batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("scoring_failed", windows=len(batch), attempt=attempt,
                              max_tries=self.max_tries)
                if self.metrics is not None:
                    self.metrics.scoring_errors.inc()
                if attempt == self.max_tries:
                    await self._one_by_one(batch, exc)
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        await self._deliver(windows, scores)

    async def _one_by_one(self, batch, first_error: BaseException) -> None:
        """After ``max_tries`` failed tries: each item once on its own; the windows that still
        fail go to ``on_failed`` with their error, the others are delivered as usual."""
        failed: list[Window] = []
        reason = f"{type(first_error).__name__}: {first_error}"
        for item in batch:
            try:
                windows, scores = await self._score([item])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if not isinstance(item, Lead):  # a lead only saves work: nothing to report
                    failed.append(item)
                continue
            await self._deliver(windows, scores)
        if failed:
            log.error("windows_not_scored", windows=len(failed), tries=self.max_tries,
                      error=reason[:200])
            if self.on_failed is not None:
                await self._retrying(self.on_failed, failed, f"{reason} ({self.max_tries} tries)")

    async def _deliver(self, windows: list[Window], scores: np.ndarray) -> None:
        if windows:
            await self._retrying(self.on_scored, windows, scores)

    async def _retrying(self, callback, *args) -> None:
        delay_s = self.retry_delay_s
        while True:
            try:
                await callback(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scored_callback_failed_retrying", retry_in_s=delay_s)
                if self.metrics is not None:
                    self.metrics.scoring_errors.inc()
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    @property
    def _where(self) -> str:
        return "loop" if self.in_loop else "executor"

    def _timed(self, batch) -> tuple[list[Window], np.ndarray, float]:
        """``lead_and_score`` and the CPU time it took on the calling thread."""
        t0 = time.thread_time()
        windows, scores = self.scorer.lead_and_score(batch)
        return windows, scores, time.thread_time() - t0

    async def score_now(self, windows: list[Window]) -> np.ndarray:
        """Score outside the queue (tests, tools), where the batches are scored."""
        if self.in_loop:
            return self.scorer.score(windows)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.scorer.score, windows)
