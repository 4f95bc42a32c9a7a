"""``sernet broker | worker | events | demo``. Every option falls back to the environment
variable named in its ``--help`` (the names live in :mod:`sernet.settings`)."""

from __future__ import annotations

import sys
from typing import Any

import click

from sernet.settings import KAFKA_OPTIONS, Settings, SettingsError, click_options

CTX = {"help_option_names": ["-h", "--help"]}
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

WORKER_OPTIONS = (*KAFKA_OPTIONS, "input_topic", "output_topic", "dlq_topic", "partitions",
                  "consumer_group", "session_timeout_s", "heartbeat_s", "fetch_max_wait_ms", "window_s", "hop_s",
                  "batch_size", "batch_wait_ms", "scoring_max_tries", "streaming_frontend", "model_dir", "threads", "idle_timeout_s",
                  "max_speakers", "max_buffer_s", "max_reorder_chunks", "reorder_timeout_s",
                  "vad_threshold_dbfs", "web_port", "log_level")


def _settings(values: dict[str, Any]) -> Settings:
    try:
        return Settings.from_env(**values)
    except SettingsError as exc:
        raise click.BadParameter(str(exc)) from None


def one_malloc_arena() -> bool:
    """Before the worker starts its threads: glibc's malloc gives every thread that allocates
    its own arena, and the worker's threads (the event loop; Faust's Kafka consumer thread and
    the scoring thread where settings keep them) then each keep the memory they freed to
    themselves. One shared arena: peak RSS at 256 speakers per
    worker 191-199 -> 190-191 MB, same CPU (the GIL serialises those threads anyway;
    bench/README.md). Skipped when ``MALLOC_ARENA_MAX`` is set (glibc read it)
    or the C library is not glibc. Returns whether it was applied."""
    import ctypes
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-8, 1))  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


@click.command("worker", context_settings=CTX)
@click_options(*WORKER_OPTIONS)
@click.option("--create-topics/--no-create-topics", default=True, show_default=True,
              help="Create missing topics (input/output with --partitions, DLQ with 1) at start.")
def worker(create_topics: bool, **values: Any) -> None:
    """Run the Faust worker in this process: audio chunks in, emotion events out.

    Scale out by starting more workers with the same consumer group. Serves /metrics,
    /healthz and /readyz on the web port. Stops cleanly on SIGINT/SIGTERM.
    """
    import os

    # Before numpy loads: OpenBLAS/OpenMP pools spinning on a busy machine make the frontend's
    # matmuls 3-10x costlier (bench/README.md); the worker scales with processes instead.
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
    one_malloc_arena()
    from worker.app import run_worker

    run_worker(_settings(values), create_topics=create_topics)


@click.command("broker", context_settings=CTX)
@click.option("--port", type=int, default=9092, show_default=True, envvar="SERNET_BROKER_PORT",
              show_envvar=True, help="Loopback port to listen on (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="SERNET_BROKER_HOST",
              show_envvar=True, help="Listen address (loopback by default: no auth, no TLS).")
@click_options("input_topic", "output_topic", "dlq_topic", "partitions")
@click.option("--create-topics/--no-create-topics", default=True, show_default=True,
              help="Create the input, output and DLQ topics once the broker is up.")
def broker(port: int, host: str, create_topics: bool, **values: Any) -> None:
    """Run the embedded tansu broker (in-memory storage) until Ctrl-C."""
    import signal
    import threading

    from sernet.kafka import create_topics_sync
    from worker.broker import BrokerError, EmbeddedBroker

    try:
        with EmbeddedBroker(port=port, host=host) as b:
            settings = _settings({**values, "broker_url": b.url})
            created = create_topics_sync(settings) if create_topics else []
            click.echo(f"tansu broker ready at {b.url} (in-memory storage)", err=True)
            if created:
                click.echo(f"created topics {', '.join(created)} with {settings.partitions} partitions "
                           f"(DLQ: 1)", err=True)
            click.echo(f"export BROKER_URL={b.url}", err=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(0.5):
                if b.proc is None or b.proc.poll() is not None:
                    raise click.ClickException("tansu exited unexpectedly")
            click.echo("stopping broker", err=True)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("events", context_settings=CTX)
@click_options(*KAFKA_OPTIONS, "output_topic", "dlq_topic")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option("--dlq", is_flag=True, help="Tail the dead-letter topic instead of the events.")
@click.option("--from-beginning/--new-only", default=True, show_default=True,
              help="Start at the oldest retained message, or only show new ones.")
@click.option("--max-events", type=int, default=None, help="Stop after this many messages.")
@click.option("--idle-exit-s", type=float, default=None,
              help="Stop when nothing arrived for this many seconds.")
def events(as_json: bool, dlq: bool, from_beginning: bool, max_events: int | None,
           idle_exit_s: float | None, **values: Any) -> None:
    """Tail the emotion events (or dead letters) of any deployment: a live table or JSON lines."""
    from worker.events_tail import run_tail

    code = run_tail(_settings(values), as_json=as_json, dlq=dlq, from_beginning=from_beginning,
                    max_events=max_events, idle_exit_s=idle_exit_s)
    sys.exit(code)


@click.command("demo", context_settings=CTX)
@click.option("--clips", type=click.IntRange(1, 6), default=4, show_default=True,
              help="How many bundled sample clips to stream (samples/).")
@click.option("--stereo/--no-stereo", default=True, show_default=True,
              help="Also stream the stereo call-center sample (two speakers).")
@click.option("--realtime/--fast", default=True, show_default=True,
              help="Pace the clips in real time, or send as fast as possible.")
@click.option("--chunk-ms", type=float, default=250.0, show_default=True, help="Chunk length, ms.")
@click.option("--timeout-s", type=float, default=90.0, show_default=True,
              help="Give up waiting for events after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines, not a table.")
@click_options("model_dir", "hop_s", "log_level")
def demo(clips: int, stereo: bool, realtime: bool, chunk_ms: float, timeout_s: float, as_json: bool,
         **values: Any) -> None:
    """README command 1: embedded broker + worker + producer over bundled clips, events live.

    Starts tansu on a free loopback port, creates the topics, starts `sernet worker` as a
    subprocess, streams the sample clips through the producer and prints every emotion event
    as it arrives; stops everything and exits 0 once every expected window was scored.
    """
    from worker.demo import run_demo

    sys.exit(run_demo(_settings(values), clips=clips, stereo=stereo, realtime=realtime,
                      chunk_ms=chunk_ms, timeout_s=timeout_s, as_json=as_json))
