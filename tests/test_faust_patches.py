"""worker.faust_patches: the eager delivery keeps mode's ``wait_first`` semantics.

The patched function is exercised against a real ``mode.Service`` with a real
``mode.utils.locks.Event`` as its ``suspend_flow`` (what faust's consumer has); the worker's
integration tests (rebalances, takeovers, restarts) run it inside the real consumer.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings

import pytest
from mode import Service
from mode.utils.locks import Event

from worker.faust_patches import eager_wait_first, patch_eager_delivery


class FakeConsumer(Service):
    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()


ORIGINAL = Service.wait_first


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_a_callback_that_finishes_runs_inline_without_a_task():
    async def main():
        svc = FakeConsumer()
        outer = asyncio.current_task()
        seen = {}

        async def callback():
            seen["task"] = asyncio.current_task()
            return 42

        res = await eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait())
        assert seen["task"] is outer  # inline: mode's wait_first runs it in a task of its own
        assert res.results == [42] and not res.stopped and len(res.done) == 1
        return res

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused suspend_flow.wait() must be closed quietly
        run(main)
        gc.collect()


def test_a_callback_that_waits_is_resumed_and_its_result_returned():
    async def main():
        svc = FakeConsumer()
        fut = asyncio.get_running_loop().create_future()
        steps = []

        async def callback():
            steps.append("first")
            value = await fut
            steps.append(("after", value, asyncio.current_task() is not outer))
            await asyncio.sleep(0)  # a bare yield to the loop is forwarded too
            return value * 2

        outer = asyncio.current_task()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, 5)
        res = await eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait())
        assert steps == ["first", ("after", 5, True)]
        assert 10 in res.results and not res.stopped

    run(main)


def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended():
    async def main():
        svc = FakeConsumer()
        blocker = asyncio.get_running_loop().create_future()  # never resolved
        events = []

        async def callback():
            events.append("started")
            try:
                await blocker
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, svc.suspend_flow.set)
        res = await asyncio.wait_for(
            eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait()), 5)
        await asyncio.sleep(0)  # let the cancellation reach the callback
        assert events == ["started", "cancelled"]
        assert res.results == [True]  # suspend_flow.wait() won, as with mode's wait_first

    run(main)


def test_an_exception_in_the_first_step_propagates():
    async def main():
        svc = FakeConsumer()

        async def callback():
            raise ValueError("bad message")

        with pytest.raises(ValueError, match="bad message"):
            await eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(main)
        gc.collect()


@pytest.mark.parametrize("case", ["suspended", "other_event", "timeout"])
def test_other_calls_take_modes_path(case):
    async def main():
        svc = FakeConsumer()
        other = Event()
        outer = asyncio.current_task()
        seen = {}

        async def callback():
            seen["inline"] = asyncio.current_task() is outer
            return 1

        if case == "suspended":
            svc.suspend_flow.set()
            await eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait())
        elif case == "other_event":
            await eager_wait_first(svc, ORIGINAL, callback(), other.wait())
        else:
            await eager_wait_first(svc, ORIGINAL, callback(), svc.suspend_flow.wait(), timeout=5)
        if "inline" in seen:  # a suspended flow may cancel the callback before it starts
            assert seen["inline"] is False

    run(main)


def test_patch_installs_once_on_faust_consumer_whose_delivery_call_it_matches():
    from faust.transport.consumer import Consumer

    patch_eager_delivery()
    patched = Consumer.wait_first
    patch_eager_delivery()
    assert Consumer.wait_first is patched and Consumer._sernet_eager_delivery
    # the call the patch recognises is still faust's delivery call: a faust upgrade that
    # changes it makes this fail rather than silently losing the fast path
    source = inspect.getsource(Consumer._drain_messages)
    assert "self.wait_first(" in source and "self.suspend_flow.wait()" in source


def test_drop_monitor_sensor():
    import faust

    from worker.app import drop_monitor_sensor

    app = faust.App("sernet-test-monitor", broker="kafka://127.0.0.1:1")
    app.sensors.add(app.monitor)  # what the app does when it starts
    other = faust.Sensor()
    app.sensors.add(other)
    assert drop_monitor_sensor(app) is True
    assert app.monitor not in set(app.sensors) and other in set(app.sensors)
    assert drop_monitor_sensor(app) is False  # idempotent
