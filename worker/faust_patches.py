"""Five narrow patches to faust-streaming, applied by :func:`worker.app.create_app`.

* :func:`patch_fetch_max_wait`: the worker consumer's fetch wait and minimum fetch size become
  settings (Faust hard-codes a 1.5 s wait, which tansu holds in full when no data is there).
* :func:`patch_eager_delivery`: Faust hands every consumed message to the streams through
  ``await self.wait_first(callback(message), self.suspend_flow.wait())``
  (``Consumer._drain_messages``), so that a rebalance that suspends the flow cancels a delivery
  stuck on a full stream buffer. ``mode``'s ``wait_first`` makes four tasks for it (the two
  coroutines plus the consumer's stopped/crashed events), an ``asyncio.wait`` and three
  cancellations, per message: about half of Faust's delivery cost. Almost every delivery
  finishes without waiting (the message is put on a stream queue with room), so the patch
  runs the callback's first step inline and takes ``wait_first``'s path only for a callback
  that has to wait; it then continues from where it stopped, with the same cancellation on a
  suspended flow. Delivery CPU per 16 KB message, Faust alone: 250 -> 135 us
  (bench/README.md).
* :func:`patch_stream_yield`: Faust's compiled stream iterator (``faust/_cython/streams.pyx``,
  ``StreamIterator.next``) runs ``await asyncio.sleep(0)`` before *every* message it takes, one
  full event-loop turn (a ``select`` and every ready callback) per chunk, where Faust's fetcher
  yields every 100 messages. The patch keeps a yield every ``every`` messages or ``max_ms``
  milliseconds, whichever comes first, so the loop stays fair, and otherwise hands back an
  awaitable that is already done.
* :func:`patch_direct_delivery`: a topic named in ``app.sernet_direct`` (``{topic: handler}``)
  has its messages handed by the conductor straight to ``handler(message)``, the way an
  agent's loop body would get them, without Faust's per-message Event, key/value
  deserialisation, channel queue and stream iterator. Flow control, the generation check
  (messages fetched before a rebalance are skipped, to be replayed from the committed offset)
  and the consumer's ack tracking are Faust's, as in the stream; the handler acks each message
  (``message.ack(consumer)``) when it is done with it. The agent that subscribes the topic
  stays, so the subscription, start-up and rebalances are unchanged; it just sees no messages.
* :func:`patch_consumer_in_loop`: Faust runs its aiokafka consumer in a thread of its own, with
  its own event loop; every fetch, commit and seek from the app is a call through a method
  queue into that thread and a future set back across it (``call_thread``), and aiokafka's
  fetch and record parsing run there, beside the app's loop, switching the GIL with it. With
  ``app.sernet_consumer_in_loop`` set, ``InLoopConsumerThread`` keeps Faust's consumer
  service and its interface but starts it on the app's loop, without a thread, and awaits each
  call directly; rebalance callbacks reach the app's consumer directly instead of through the
  method queue.

The patches are idempotent (the stream yield's pacing is whatever it was last set to), leave
every other use of the patched code alone, and are tested against the real classes
(tests/test_faust_patches.py).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Coroutine


def patch_fetch_max_wait() -> None:
    """Let ``app.sernet_fetch_max_wait_ms`` / ``app.sernet_fetch_min_bytes`` set the worker
    consumer's ``fetch_max_wait_ms`` / ``fetch_min_bytes``.

    faust-streaming hard-codes ``fetch_max_wait_ms=1500`` in
    ``AIOKafkaConsumerThread._create_worker_consumer`` (and offers no ``fetch_min_bytes``), and
    tansu holds a fetch for the whole wait when no data is there: a latency floor of ~750 ms on
    average. The consumer is built there and started later, so setting aiokafka's attributes
    before ``start()`` is enough. Idempotent; apps without the attributes keep Faust's values."""
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    if getattr(cls, "_sernet_fetch_wait_patched", False):
        return
    original = cls._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = original(self, transport)
        wait_ms = getattr(self.app, "sernet_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)
        min_bytes = getattr(self.app, "sernet_fetch_min_bytes", None)
        if min_bytes is not None:
            consumer._fetch_min_bytes = int(min_bytes)
        return consumer

    cls._create_worker_consumer = _create_worker_consumer
    cls._sernet_fetch_wait_patched = True


class Resumed:
    """The rest of coroutine ``coro`` after a first step taken by hand yielded ``first``.

    Awaiting it re-yields ``first`` to the awaiting task (which then waits on that future, as
    it would have had it taken the step itself) and forwards every later value, exception and
    cancellation to ``coro``; its result is ``coro``'s."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self):
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # thrown in by the task: cancellation, mostly
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def eager_wait_first(service, original, *coros, timeout=None):
    """``service.wait_first(*coros)`` that runs a delivery callback's first step inline.

    Applies to the consumer's delivery call only: a coroutine and the ``wait()`` of the
    service's ``suspend_flow``, no timeout, flow not suspended, service neither stopped nor
    crashed. If the callback finishes in that step, its result is returned as ``wait_first``
    would (``WaitResults([callback], [result], False)``) without a task; an exception it raises
    propagates, as from ``wait_first``. If it has to wait, ``original`` (mode's
    ``wait_first``) waits for the rest of it against the suspension, unchanged."""
    from mode.services import WaitResults

    if (timeout is None and len(coros) == 2 and asyncio.iscoroutine(coros[0])
            and _is_wait_of(coros[1], getattr(service, "suspend_flow", None))
            and not service.suspend_flow.is_set()
            and not service._stopped.is_set() and not service._crashed.is_set()):
        callback, suspended = coros
        try:
            first = callback.send(None)
        except StopIteration as stop:
            suspended.close()  # never started: closing it is silent
            return WaitResults([callback], [stop.value], False)
        except BaseException:
            suspended.close()
            raise
        return await original(service, Resumed(callback, first), suspended)
    return await original(service, *coros, timeout=timeout)


def _is_wait_of(coro: Any, event: Any) -> bool:
    """Whether ``coro`` is an unstarted ``event.wait()`` coroutine."""
    if event is None or not asyncio.iscoroutine(coro) or coro.cr_frame is None:
        return False
    return (coro.cr_code is type(event).wait.__code__
            and coro.cr_frame.f_locals.get("self") is event)


def patch_eager_delivery() -> None:
    """Install :func:`eager_wait_first` as faust's ``Consumer.wait_first``. Idempotent."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer, "_sernet_eager_delivery", False):
        return
    original = Consumer.wait_first

    async def wait_first(self, *coros, timeout=None):
        return await eager_wait_first(self, original, *coros, timeout=timeout)

    wait_first.__doc__ = eager_wait_first.__doc__
    Consumer.wait_first = wait_first
    Consumer._sernet_eager_delivery = True


class _Done:
    """An awaitable that completes at once with ``None``, without a loop turn."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_DONE = _Done()


def paced_sleep(real_sleep, every: int, max_ms: float, clock):
    """A stand-in for ``asyncio.sleep`` whose ``sleep(0)`` yields to the loop only every
    ``every``-th call, or once ``max_ms`` has passed since the last yield; any other delay is
    ``real_sleep``'s. ``every <= 1`` is ``real_sleep`` itself (the plain behaviour)."""
    if every <= 1:
        return real_sleep
    state = [0, clock()]
    limit_s = max_ms / 1000.0

    def sleep(delay, *args, **kwargs):
        if delay or args or kwargs:
            return real_sleep(delay, *args, **kwargs)
        state[0] += 1
        now = clock()
        if state[0] >= every or now - state[1] >= limit_s:
            state[0] = 0
            state[1] = now
            return real_sleep(0)
        return _DONE

    sleep.sernet_paced = (every, max_ms)
    return sleep


def patch_stream_yield(every: int, max_ms: float = 2.0) -> bool:
    """Replace the ``sleep`` that Faust's compiled ``StreamIterator`` awaits before each message
    with :func:`paced_sleep`. Returns whether the compiled iterator is there: without it, or with
    ``NO_CYTHON`` set, Faust's pure-Python iterator keeps its turn per message (it holds its own
    reference to ``asyncio.sleep``) and nothing changes. Setting it again replaces the pacing;
    ``every <= 1`` restores ``asyncio.sleep``."""
    import time

    try:
        from faust._cython import streams as cstreams
    except ImportError:  # pragma: no cover - the extension is optional
        return False
    from faust import streams as pystreams

    if getattr(pystreams, "_CStreamIterator", None) is None:
        return False
    cstreams.sleep = paced_sleep(asyncio.sleep, every, max_ms, time.monotonic)
    return True


def direct_handler(app, handler):
    """The conductor's per-partition callback for a direct topic: what Faust's stream does to a
    message before the agent sees it (flow control, the producer buffer's ebb, the stale-
    generation skip, ref count and ack tracking), then ``await handler(message)``."""
    acquire_flow_control = app.flow_control.acquire
    flow_active = app.flow_control.is_active
    wait_until_producer_ebb = app.producer.buffer.wait_until_ebb
    track_message = app.consumer.track_message
    acks_enabled_for = app.topics.acks_enabled_for

    async def on_message(message) -> None:
        await acquire_flow_control()
        await wait_until_producer_ebb()
        if not flow_active() or message.generation_id != app.consumer_generation_id:
            return  # fetched for an assignment that has ended: the new one replays it
        message.incref()
        if not message.tracked and acks_enabled_for(message.topic):
            message.tracked = True
            track_message(message)  # pending until acked: shutdown waits for it
        await handler(message)

    on_message.sernet_direct = handler
    return on_message


def patch_direct_delivery() -> None:
    """Make ``Conductor._build_handler`` return :func:`direct_handler` for partitions of the
    topics in ``app.sernet_direct``; every other topic keeps Faust's handler. Idempotent."""
    from faust.transport.conductor import Conductor

    if getattr(Conductor, "_sernet_direct_delivery", False):
        return
    original = Conductor._build_handler

    def _build_handler(self, tp, channels):
        handler = (getattr(self.app, "sernet_direct", None) or {}).get(tp.topic)
        if handler is None:
            return original(self, tp, channels)
        return direct_handler(self.app, handler)

    Conductor._build_handler = _build_handler
    Conductor._sernet_direct_delivery = True


@functools.cache
def in_loop_consumer_thread_class():
    """``InLoopConsumerThread``, built on first use (Faust is imported lazily)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from mode.utils.futures import maybe_async
    from mode.utils.loops import get_event_loop

    class InLoopConsumerThread(AIOKafkaConsumerThread):
        """Faust's aiokafka consumer service on the app's own loop: no thread, no method queue.

        ``mode``'s ``ServiceThread`` takes a ``thread_loop``; giving it the app's loop makes the
        service's events, futures and tasks live there. ``start`` then does what the thread
        would have done (``_default_start``), ``stop`` what the thread's shutdown would have
        (``_shutdown_thread``: stop the aiokafka consumer, the children, the futures), and
        ``call_thread`` awaits the call in place."""

        def __init__(self, consumer, *, loop=None, **kwargs) -> None:
            loop = loop or get_event_loop()
            super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

        async def start(self) -> None:
            self._thread_started.set()
            await self._default_start()

        async def maybe_start(self) -> bool:
            if self._thread_started.is_set():
                return False
            await self.start()
            return True

        async def stop(self) -> None:
            if not self._started.is_set() or self._stopped.is_set():
                return
            self._stopped.set()
            await self.on_stop()
            await self._shutdown_thread()  # the aiokafka consumer, children, futures, stacks
            await self.on_shutdown()

        def set_shutdown(self) -> None:
            self._shutdown.set()  # same loop: no hand-off to schedule

        async def call_thread(self, fun, *args, **kwargs):
            # what the thread's method queue does with the call (some, like aiokafka's
            # ``subscribe``, are plain functions), without the queue and the cross-thread future
            return await maybe_async(fun(*args, **kwargs))

        async def cast_thread(self, fun, *args, **kwargs) -> None:
            result = fun(*args, **kwargs)
            if inspect.isawaitable(result):
                self.add_future(result)

        async def on_partitions_revoked(self, revoked) -> None:
            await self.consumer.on_partitions_revoked(revoked)

        async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
            await self.consumer.on_partitions_assigned(assigned, generation_id)

    return InLoopConsumerThread


def patch_consumer_in_loop() -> None:
    """Make faust's aiokafka ``Consumer`` build an :class:`InLoopConsumerThread` for apps with
    ``app.sernet_consumer_in_loop`` set; other apps keep Faust's thread. Idempotent."""
    from faust.transport.drivers.aiokafka import Consumer

    if getattr(Consumer, "_sernet_consumer_in_loop", False):
        return
    original = Consumer._new_consumer_thread

    def _new_consumer_thread(self):
        if getattr(self.app, "sernet_consumer_in_loop", False):
            return in_loop_consumer_thread_class()(self, loop=self.loop, beacon=self.beacon)
        return original(self)

    Consumer._new_consumer_thread = _new_consumer_thread
    Consumer._sernet_consumer_in_loop = True
