"""BatchScorer's batching: a batch is cut when ``batch_size`` windows wait or ``batch_wait_s``
after its first window, whichever comes first; nothing is lost or reordered."""

from __future__ import annotations

import asyncio

import numpy as np

from worker.scoring import BatchScorer


class _Scorer:
    def lead_and_score(self, items):
        return list(items), np.zeros((len(items), 7), dtype=np.float32)


def _run(feed, *, batch_size: int, batch_wait_s: float, seen_at: list | None = None,
         scorer=None, in_loop: bool = False) -> list[list]:
    """Batches the scorer saw for ``feed``: (delay before the put, item) pairs; ``seen_at``
    gets each batch's callback time, seconds from the start."""
    seen_at = [] if seen_at is None else seen_at
    batches: list[list] = []
    t0 = None

    async def on_scored(windows, scores):
        assert scores.shape == (len(windows), 7)
        batches.append(windows)
        seen_at.append(asyncio.get_running_loop().time() - t0)

    async def go():
        nonlocal t0
        t0 = asyncio.get_running_loop().time()
        bs = BatchScorer(scorer or _Scorer(), on_scored, batch_size=batch_size,
                         batch_wait_s=batch_wait_s, in_loop=in_loop)
        bs.start()
        for delay, item in feed:
            if delay:
                await asyncio.sleep(delay)
            await bs.put(item)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if bs.idle:
                break
        await bs.stop()

    asyncio.run(go())
    return batches


def test_windows_arriving_within_the_wait_share_one_batch() -> None:
    batches = _run([(0, "a"), (0.01, "b"), (0.01, "c")], batch_size=32, batch_wait_s=0.3)
    assert batches == [["a", "b", "c"]]


def test_a_full_batch_is_cut_at_once_and_the_rest_follows_in_order() -> None:
    seen_at: list[float] = []
    batches = _run([(0, i) for i in range(6)], batch_size=4, batch_wait_s=0.5, seen_at=seen_at)
    assert batches == [[0, 1, 2, 3], [4, 5]]
    assert seen_at[0] < 0.25 <= 0.5 <= seen_at[1]  # the full one did not wait, the rest did


def test_a_window_after_the_wait_starts_a_new_batch() -> None:
    batches = _run([(0, "a"), (0.25, "b")], batch_size=32, batch_wait_s=0.05)
    assert batches == [["a"], ["b"]]


def test_in_loop_scoring_runs_on_the_loops_thread_and_the_executor_mode_does_not() -> None:
    import threading

    def threads_seen(in_loop: bool) -> set[int]:
        seen: set[int] = set()

        class Recording(_Scorer):
            def lead_and_score(self, items):
                seen.add(threading.get_ident())
                return super().lead_and_score(items)

        batches = _run([(0, i) for i in range(5)], batch_size=2, batch_wait_s=0.01,
                       scorer=Recording(), in_loop=in_loop)
        assert batches == [[0, 1], [2, 3], [4]]  # the same batches either way
        return seen

    here = threading.get_ident()
    assert threads_seen(in_loop=True) == {here}
    assert here not in threads_seen(in_loop=False)


def _run_failing(scorer, items, max_tries=3):
    """(delivered items, failed (items, reason) pairs, scoring tries) for ``items`` fed at once."""
    delivered, failed = [], []

    async def on_scored(windows, scores):
        delivered.extend(windows)

    async def on_failed(windows, reason):
        failed.append((list(windows), reason))

    async def go():
        bs = BatchScorer(scorer, on_scored, batch_size=8, batch_wait_s=0.01, in_loop=True,
                         max_tries=max_tries, on_failed=on_failed, retry_delay_s=0.001)
        bs.start()
        for item in items:
            await bs.put(item)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if bs.idle:
                break
        assert bs.idle, "the scorer is stuck on a failing batch"
        await bs.stop()

    asyncio.run(go())
    return delivered, failed


class _Failing(_Scorer):
    """Fails every call that includes one of ``poison`` (every call when ``poison`` is None)."""

    def __init__(self, poison=None):
        self.poison, self.calls = poison, 0

    def lead_and_score(self, items):
        self.calls += 1
        if self.poison is None or any(x in self.poison for x in items):
            raise RuntimeError("model exploded")
        return super().lead_and_score(items)


def test_a_batch_that_always_fails_is_bounded_and_its_windows_reported() -> None:
    scorer = _Failing()
    delivered, failed = _run_failing(scorer, ["a", "b", "c"], max_tries=3)
    assert delivered == []
    assert [w for ws, _ in failed for w in ws] == ["a", "b", "c"]
    assert "RuntimeError: model exploded" in failed[0][1] and "3 tries" in failed[0][1]
    assert scorer.calls == 3 + 3  # three tries of the batch, then one per window


def test_only_the_poisoned_window_fails_and_the_others_flow() -> None:
    delivered, failed = _run_failing(_Failing(poison={"bad"}), ["a", "bad", "c", "d"], max_tries=2)
    assert delivered == ["a", "c", "d"]
    assert [ws for ws, _ in failed] == [["bad"]]
    # later batches are unaffected
    delivered, failed = _run_failing(_Failing(poison={"bad"}), ["x", "y"], max_tries=2)
    assert delivered == ["x", "y"] and failed == []
