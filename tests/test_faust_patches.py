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


def assert_installs_once(patch, cls, method: str, marker: str) -> None:
    """``patch()`` replaces ``cls.method`` once: a second call leaves the first replacement."""
    patch()
    patched = getattr(cls, method)
    patch()
    assert getattr(cls, method) is patched and getattr(cls, marker)


def test_patch_installs_once_on_faust_consumer_whose_delivery_call_it_matches():
    from faust.transport.consumer import Consumer

    assert_installs_once(patch_eager_delivery, Consumer, "wait_first", "_sernet_eager_delivery")
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


# -- patch_stream_yield: Faust's compiled StreamIterator and its per-message sleep(0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_paced_sleep_yields_every_nth_call_or_after_max_ms():
    from worker.faust_patches import _DONE, paced_sleep

    real = []

    def real_sleep(delay, *args, **kwargs):
        real.append(delay)
        return "real"

    clock = FakeClock()
    sleep = paced_sleep(real_sleep, every=4, max_ms=2.0, clock=clock)
    got = [sleep(0) for _ in range(8)]
    assert got == [_DONE] * 3 + ["real"] + [_DONE] * 3 + ["real"]
    clock.now += 0.0025  # over 2 ms since the last yield: the next call yields
    assert sleep(0) == "real"
    assert sleep(0) is _DONE
    assert sleep(0.5) == "real" and real[-1] == 0.5  # a real delay is never skipped
    assert paced_sleep(real_sleep, every=1, max_ms=2.0, clock=clock)(0) == "real"


def test_done_awaitable_finishes_without_an_event_loop_turn():
    from worker.faust_patches import _DONE

    async def main():
        ran = []
        asyncio.get_running_loop().call_soon(ran.append, 1)
        for _ in range(3):
            assert await _DONE is None
        assert ran == []  # no turn of the loop yet
        await asyncio.sleep(0)
        assert ran == [1]

    run(main)


def make_stream(channel, conf):
    """The attributes Faust's compiled StreamIterator reads from a stream, for plain values."""
    from types import SimpleNamespace as NS

    async def on_merge(value):
        return value

    app = NS(topics=NS(acks_enabled_for=None, _acking_topics=set()),
             consumer=NS(_unacked_messages=set()), conf=conf)
    return NS(channel=channel, app=app, loop=None, on_merge=on_merge,
              _on_stream_event_in=None, _on_stream_event_out=None, _on_message_in=None,
              _on_message_out=None, _skipped_value=object(), _processors=[],
              enable_acks=False, _set_current_event=lambda event=None: None)


def loop_turns_while_taking(every: int, n: int, fast_path: bool) -> tuple[list, int]:
    """Take ``n`` queued values through the real compiled iterator with the patch at ``every``;
    returns the values and how many event-loop turns happened meanwhile."""
    import faust
    from faust._cython.streams import StreamIterator

    from worker.faust_patches import patch_stream_yield

    async def main():
        app = faust.App("sernet-test-yield", broker="kafka://127.0.0.1:1",
                        cython_optimizations=fast_path)
        chan = app.channel(maxsize=n + 1).__aiter__()  # what a Stream iterates
        for i in range(n):
            chan.queue.put_nowait(i)
        it = StreamIterator(make_stream(chan, app.conf))
        turns = [0]
        stop = [False]

        def tick():
            turns[0] += 1
            if not stop[0]:
                asyncio.get_running_loop().call_soon(tick)

        asyncio.get_running_loop().call_soon(tick)
        got = [(await it.next())[0] for _ in range(n)]
        stop[0] = True
        return got, turns[0]

    assert patch_stream_yield(every)
    try:
        return run(main)
    finally:
        patch_stream_yield(1)


def test_the_compiled_stream_iterator_takes_the_paced_sleep():
    import faust._cython.streams as cstreams

    plain_values, plain_turns = loop_turns_while_taking(1, 64, fast_path=True)
    paced_values, paced_turns = loop_turns_while_taking(32, 64, fast_path=True)
    assert plain_values == paced_values == list(range(64))  # nothing lost, nothing reordered
    assert plain_turns >= 64  # Faust's own: a loop turn per message
    assert 1 <= paced_turns <= 4  # a turn every 32 messages: the loop still gets its turns
    assert cstreams.sleep is asyncio.sleep  # every=1 put Faust's sleep back


def test_without_the_fast_path_queued_values_still_arrive_in_order():
    values, turns = loop_turns_while_taking(32, 40, fast_path=False)
    assert values == list(range(40)) and turns >= 1


def test_create_app_applies_the_stream_settings():
    import faust._cython.streams as cstreams

    from sernet.settings import Settings
    from worker.app import create_app

    try:
        app, _pipeline = create_app(Settings(stream_yield_every=8, stream_fast_path=1, web_port=0))
        assert app.conf.cython_optimizations is True
        assert cstreams.sleep.sernet_paced == (8, 2.0)
        app, _pipeline = create_app(Settings(stream_yield_every=1, stream_fast_path=0, web_port=0))
        assert app.conf.cython_optimizations is False and cstreams.sleep is asyncio.sleep
    finally:
        from worker.faust_patches import patch_stream_yield

        patch_stream_yield(1)


# --------------------------------------------------------------------------- direct delivery


def _direct_app(handler):
    """A real worker app (not started) whose input topic goes to ``handler``, and a function
    making messages of that topic for the app's current consumer generation."""
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from sernet.settings import Settings
    from worker.app import create_app

    settings = Settings(web_port=0)
    app, _pipeline = create_app(settings)
    app.sernet_direct = {settings.input_topic: handler}
    app.topics._acking_topics.add(settings.input_topic)  # what the subscription sets up
    tp = TP(settings.input_topic, 0)

    def message(offset: int, generation: int | None = None) -> ConsumerMessage:
        gen = app.consumer_generation_id if generation is None else generation
        return ConsumerMessage(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None,
                       tp=tp, generation_id=gen)

    return app, tp, message


def test_create_app_routes_the_input_topic_to_the_pipeline_and_other_topics_to_faust():
    from faust.types import TP

    from sernet.settings import Settings
    from worker.app import create_app

    settings = Settings(web_port=0)
    app, _pipeline = create_app(settings)
    direct = app.topics._build_handler(TP(settings.input_topic, 3), set())
    assert direct.sernet_direct is app.sernet_direct[settings.input_topic]
    other = app.topics._build_handler(TP("some.other.topic", 0), set())
    assert not hasattr(other, "sernet_direct")  # Faust's own (compiled) handler
    app_off, _ = create_app(Settings(web_port=0, direct_delivery=0))
    handler = app_off.topics._build_handler(TP(settings.input_topic, 3), set())
    assert not hasattr(handler, "sernet_direct")  # back through the agent's stream


def test_direct_delivery_hands_over_tracked_messages_and_skips_stale_generations():
    got = []

    async def handler(message):
        got.append(message)

    async def main():
        app, tp, message = _direct_app(handler)
        app.flow_control.resume()
        on_message = app.topics._build_handler(tp, set())
        fresh = message(7)
        await on_message(fresh)
        assert got == [fresh]
        assert fresh.refcount == 1 and fresh.tracked  # one reference, held until acked
        assert fresh in app.consumer._unacked_messages  # shutdown waits for its ack
        stale = message(8, generation=app.consumer_generation_id - 1)
        await on_message(stale)  # fetched before a rebalance: replayed from the commit
        assert got == [fresh] and not stale.tracked and stale.refcount == 0
        assert stale not in app.consumer._unacked_messages

    run(main)


def test_direct_delivery_waits_while_the_flow_is_suspended():
    got = []

    async def handler(message):
        got.append(message.offset)

    async def main():
        app, tp, message = _direct_app(handler)
        app.flow_control.resume()
        on_message = app.topics._build_handler(tp, set())
        app.flow_control.suspend()  # a rebalance in progress
        pending = asyncio.ensure_future(on_message(message(1)))
        await asyncio.sleep(0.05)
        assert not pending.done() and got == []
        app.flow_control.resume()
        await asyncio.wait_for(pending, 1.0)
        assert got == [1]

    run(main)


def test_direct_delivery_patch_installs_once_on_the_conductors_handler_hook():
    from faust.transport.conductor import Conductor

    from worker.faust_patches import patch_direct_delivery

    assert_installs_once(patch_direct_delivery, Conductor, "_build_handler",
                         "_sernet_direct_delivery")
    # the conductor still builds its per-partition callbacks through the patched hook: a faust
    # upgrade that stops doing so makes this fail rather than silently losing the direct path
    assert "self._build_handler(" in inspect.getsource(Conductor._update_callback_map)


# --------------------------------------------------------------------------- consumer in the loop


def test_create_app_runs_the_consumer_on_its_own_loop_only_when_asked():
    from sernet.settings import Settings
    from worker.app import create_app

    app, _ = create_app(Settings(web_port=0, consumer_in_loop=1))
    service = app.consumer._thread
    assert type(service).__name__ == "InLoopConsumerThread"
    assert service.thread_loop is app.loop and service.parent_loop is app.loop
    app_off, _ = create_app(Settings(web_port=0, consumer_in_loop=0))
    service = app_off.consumer._thread
    assert type(service).__name__ == "AIOKafkaConsumerThread"
    assert service.thread_loop is not app_off.loop  # Faust's thread, with a loop of its own


def test_consumer_in_loop_patch_installs_once_on_faust_consumers_thread_factory():
    from faust.transport.drivers.aiokafka import Consumer

    from worker.faust_patches import patch_consumer_in_loop

    assert_installs_once(patch_consumer_in_loop, Consumer, "_new_consumer_thread",
                         "_sernet_consumer_in_loop")


def test_in_loop_consumer_runs_calls_and_rebalance_callbacks_in_place():
    import threading

    from faust.types import TP

    from sernet.settings import Settings
    from worker.app import create_app

    async def main():
        app, _ = create_app(Settings(web_port=0, consumer_in_loop=1))
        service = app.consumer._thread
        here = (threading.get_ident(), asyncio.get_running_loop())
        seen = []

        async def coroutine_call(x):
            seen.append((threading.get_ident(), asyncio.get_running_loop()))
            return x + 1

        def plain_call(x):  # aiokafka's subscribe is one of these
            seen.append((threading.get_ident(), asyncio.get_running_loop()))
            return x * 2

        assert await service.call_thread(coroutine_call, 1) == 2
        assert await service.call_thread(plain_call, 3) == 6
        assert seen == [here, here]
        with pytest.raises(ZeroDivisionError):  # errors reach the caller, as through the queue
            await service.call_thread(lambda: 1 / 0)

        calls = []

        async def revoked(tps):
            calls.append(("revoked", tps))

        async def assigned(tps, generation_id=0):
            calls.append(("assigned", tps, generation_id))

        app.consumer.on_partitions_revoked = revoked
        app.consumer.on_partitions_assigned = assigned
        tps = {TP("sernet.audio", 0)}
        await service.on_partitions_revoked(tps)
        await service.on_partitions_assigned(tps, 7)
        assert calls == [("revoked", tps), ("assigned", tps, 7)]
        assert service._method_queue is None  # no queue was needed for any of it

    run(main)


def test_in_loop_consumer_starts_talks_to_a_real_broker_and_stops_without_a_thread(broker):
    import threading

    from faust.types import TP

    from sernet.settings import Settings
    from worker.app import create_app
    from sernet.kafka import create_topics_sync

    settings = Settings(broker_url=broker.url, web_port=0, partitions=3, consumer_in_loop=1)
    create_topics_sync(settings)

    async def main():
        app, _ = create_app(settings)
        service = app.consumer._thread
        before = threading.active_count()
        await service.start()
        try:
            assert threading.active_count() == before  # no consumer thread
            consumer = service._ensure_consumer()
            tp = TP(settings.input_topic, 0)
            assert await service.earliest_offsets(tp) == {tp: 0}  # a request through the loop
        finally:
            await service.stop()
        assert consumer._closed and service._shutdown.is_set()
        assert threading.active_count() == before

    run(main)
