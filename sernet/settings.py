"""The one settings object every side shares (producers, worker, events tail, demo, deploy/).

Every environment-variable name lives here, in :data:`FIELDS`. ``BROKER_URL`` is Faust's own
name; the rest are ``SERNET_*``. A CLI flag for a setting always falls back to the variable
named in its ``--help`` (:func:`click_options`), and :meth:`Settings.from_env` reads the same
variables for code that has no CLI.

Import cost is the standard library only: an edge node with the producer install imports this
without numpy, onnxruntime or Faust.

Secrets: ``sasl_password`` is ``repr=False`` and :meth:`Settings.safe_dict` masks it, so a
logged settings object never carries it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting has an invalid value (the message names the environment variable)."""


@dataclass(frozen=True)
class Settings:
    """Frozen; build with :meth:`from_env` / :meth:`replace`, never mutate."""

    # -- Kafka
    broker_url: str = "kafka://127.0.0.1:9092"
    input_topic: str = "sernet.audio"
    output_topic: str = "sernet.events"
    dlq_topic: str = "sernet.dlq"
    partitions: int = 6
    consumer_group: str = "sernet-worker"
    session_timeout_s: float = 6.0
    heartbeat_s: float = 1.0
    fetch_max_wait_ms: int = 50
    fetch_min_bytes: int = 65536
    producer_linger_ms: float = 0.0
    stream_yield_every: int = 32
    stream_fast_path: int = 1
    direct_delivery: int = 1
    consumer_in_loop: int = 1
    score_in_loop: int = 1
    # -- security (every Kafka client: producers, worker, events tail)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # -- windowing and model
    window_s: float | None = None  # None: the artifact manifest's frontend window
    hop_s: float = 1.0
    batch_size: int = 32
    batch_wait_ms: float = 5.0
    scoring_max_tries: int = 3
    model_batch: int = 1
    streaming_frontend: int = 1
    model_dir: str | None = None  # None: the repository's model_artifacts/
    threads: int = 1
    idle_timeout_s: float = 10.0
    max_speakers: int = 2000
    max_buffer_s: float = 30.0
    max_reorder_chunks: int = 16
    reorder_timeout_s: float = 2.0
    vad_threshold_dbfs: float = -45.0
    # -- operations
    web_port: int = 6066
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        def bad(name: str, msg: str) -> SettingsError:
            return SettingsError(f"{FIELDS[name].env}: {msg}")

        if not self.broker_url:
            raise bad("broker_url", "must not be empty")
        if self.stream_yield_every < 1:
            raise bad("stream_yield_every", "must be >= 1")
        if self.stream_fast_path not in (0, 1):
            raise bad("stream_fast_path", "must be 0 or 1")
        if self.direct_delivery not in (0, 1):
            raise bad("direct_delivery", "must be 0 or 1")
        if self.consumer_in_loop not in (0, 1):
            raise bad("consumer_in_loop", "must be 0 or 1")
        if self.score_in_loop not in (0, 1):
            raise bad("score_in_loop", "must be 0 or 1")
        if self.fetch_max_wait_ms < 0:
            raise bad("fetch_max_wait_ms", "must be >= 0")
        if self.fetch_min_bytes < 1:
            raise bad("fetch_min_bytes", "must be >= 1")
        if self.producer_linger_ms < 0:
            raise bad("producer_linger_ms", "must be >= 0")
        for name in ("partitions", "batch_size", "model_batch", "threads", "max_speakers", "max_reorder_chunks"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("session_timeout_s", "heartbeat_s", "hop_s", "idle_timeout_s", "max_buffer_s",
                     "reorder_timeout_s"):
            if not getattr(self, name) > 0:
                raise bad(name, f"must be > 0, got {getattr(self, name)}")
        if self.window_s is not None and not self.window_s > 0:
            raise bad("window_s", f"must be > 0, got {self.window_s}")
        if self.window_s is not None and self.hop_s > self.window_s:
            raise bad("hop_s", f"hop {self.hop_s} s exceeds the window {self.window_s} s")
        if self.batch_wait_ms < 0:
            raise bad("batch_wait_ms", "must be >= 0")
        if self.scoring_max_tries < 1:
            raise bad("scoring_max_tries", "must be >= 1")
        if self.heartbeat_s >= self.session_timeout_s:
            raise bad("heartbeat_s", "must be shorter than the session timeout")
        if not 0 <= self.web_port < 65536:
            raise bad("web_port", f"not a port: {self.web_port}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise bad("security_protocol", f"one of {SECURITY_PROTOCOLS}, got {self.security_protocol!r}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in SASL_MECHANISMS:
            raise bad("sasl_mechanism", f"one of {SASL_MECHANISMS}, got {self.sasl_mechanism!r}")
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise bad("security_protocol", f"{self.security_protocol} needs SERNET_SASL_MECHANISM, "
                      "SERNET_SASL_USERNAME and SERNET_SASL_PASSWORD")
        if self.log_level.upper() not in LOG_LEVELS:
            raise bad("log_level", f"one of {LOG_LEVELS}, got {self.log_level!r}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults <- environment <- ``overrides`` (``None`` overrides are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, spec in FIELDS.items():
            raw = env.get(spec.env)
            if raw is not None and raw != "":
                values[name] = spec.parse(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise SettingsError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived

    @property
    def bootstrap_servers(self) -> str:
        """``kafka://h1:9092;kafka://h2:9092`` -> ``h1:9092,h2:9092`` (aiokafka's form)."""
        hosts = []
        for part in self.broker_url.replace(",", ";").split(";"):
            part = part.strip()
            if "://" in part:
                part = part.split("://", 1)[1]
            if part:
                hosts.append(part.rstrip("/"))
        return ",".join(hosts)

    @property
    def artifact_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else Path(__file__).resolve().parent.parent / "model_artifacts"

    def safe_dict(self) -> dict[str, Any]:
        """For logs: every field, the password masked."""
        out = dataclasses.asdict(self)
        if out.get("sasl_password"):
            out["sasl_password"] = "***"
        return out

    def env(self) -> dict[str, str]:
        """The environment that reproduces these settings (e.g. for a worker subprocess)."""
        out = {}
        for name, spec in FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                out[spec.env] = str(value)
        return out


# ---------------------------------------------------------------------- the env-name table


def _opt_str(raw: str) -> str | None:
    return raw or None


def _upper(raw: str) -> str:
    return raw.strip().upper()


@dataclass(frozen=True)
class FieldSpec:
    env: str
    parse: Callable[[str], Any]
    help: str


FIELDS: dict[str, FieldSpec] = {
    "broker_url": FieldSpec("BROKER_URL", str, "Kafka bootstrap URL(s), Faust form: kafka://host:port[;kafka://...]"),
    "input_topic": FieldSpec("SERNET_INPUT_TOPIC", str, "Topic of audio chunks."),
    "output_topic": FieldSpec("SERNET_OUTPUT_TOPIC", str, "Topic of emotion events."),
    "dlq_topic": FieldSpec("SERNET_DLQ_TOPIC", str, "Dead-letter topic for invalid chunks."),
    "partitions": FieldSpec("SERNET_PARTITIONS", int, "Partitions when creating topics."),
    "consumer_group": FieldSpec("SERNET_CONSUMER_GROUP", str, "Kafka consumer group of the workers."),
    "session_timeout_s": FieldSpec("SERNET_SESSION_TIMEOUT_S", float, "Consumer-group session timeout, seconds."),
    "heartbeat_s": FieldSpec("SERNET_HEARTBEAT_S", float, "Consumer-group heartbeat interval, seconds."),
    "fetch_max_wait_ms": FieldSpec("SERNET_FETCH_MAX_WAIT_MS", int, "Longest time the broker may hold a worker's fetch, milliseconds (Faust hard-codes 1500)."),
    "fetch_min_bytes": FieldSpec("SERNET_FETCH_MIN_BYTES", int, "Bytes the broker should gather before answering a worker's fetch (up to fetch_max_wait_ms): fewer, larger fetches under load (~5 % less worker CPU at 320-512 speakers); 1 answers at once (lowest latency when idle)."),
    "producer_linger_ms": FieldSpec("SERNET_PRODUCER_LINGER_MS", float, "How long the worker's producer gathers emotion events into one produce request, milliseconds (Faust's default 0: a request per event)."),
    "stream_yield_every": FieldSpec("SERNET_STREAM_YIELD_EVERY", int, "The worker's stream gives the event loop a turn every this many chunks (or 2 ms); 1 is Faust's own turn per chunk."),
    "stream_fast_path": FieldSpec("SERNET_STREAM_FAST_PATH", int, "1: Faust's opt-in cython_optimizations (the stream takes queued chunks without awaiting the channel per chunk); 0: Faust's default."),
    "direct_delivery": FieldSpec("SERNET_DIRECT_DELIVERY", int, "1: the consumer hands each audio chunk to the pipeline directly (no Faust Event, channel queue or stream per chunk); 0: through Faust's agent stream."),
    "consumer_in_loop": FieldSpec("SERNET_CONSUMER_IN_LOOP", int, "1: the worker's Kafka consumer runs on its event loop (no consumer thread, no cross-thread call per fetch); 0: in Faust's consumer thread."),
    "score_in_loop": FieldSpec("SERNET_SCORE_IN_LOOP", int, "1: frontend and model run on the worker's event loop thread (one thread, no hand-off per batch; the loop waits while a batch is scored); 0: in a scoring thread beside the loop."),
    "security_protocol": FieldSpec("SERNET_SECURITY_PROTOCOL", _upper, "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."),
    "sasl_mechanism": FieldSpec("SERNET_SASL_MECHANISM", lambda r: _upper(r) or None, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."),
    "sasl_username": FieldSpec("SERNET_SASL_USERNAME", _opt_str, "SASL user name."),
    "sasl_password": FieldSpec("SERNET_SASL_PASSWORD", _opt_str, "SASL password (never logged)."),
    "ssl_cafile": FieldSpec("SERNET_SSL_CAFILE", _opt_str, "CA bundle to verify the broker (TLS)."),
    "ssl_certfile": FieldSpec("SERNET_SSL_CERTFILE", _opt_str, "Client certificate (mutual TLS)."),
    "ssl_keyfile": FieldSpec("SERNET_SSL_KEYFILE", _opt_str, "Client key (mutual TLS)."),
    "window_s": FieldSpec("SERNET_WINDOW_S", float, "Window length, seconds (default: the artifact manifest's)."),
    "hop_s": FieldSpec("SERNET_HOP_S", float, "Hop between windows, seconds."),
    "batch_size": FieldSpec("SERNET_BATCH_SIZE", int, "Most windows handed to the scoring thread at once (across speakers)."),
    "batch_wait_ms": FieldSpec("SERNET_BATCH_WAIT_MS", float, "Longest wait to fill a batch, milliseconds."),
    "scoring_max_tries": FieldSpec("SERNET_SCORING_MAX_TRIES", int, "Tries of a failing model batch before its windows are scored one by one and those still failing are dead-lettered (reason scoring_failed)."),
    "model_batch": FieldSpec("SERNET_MODEL_BATCH", int, "Most windows per onnxruntime call within a batch; 1 is the fastest per window and the smallest in memory for the int8 model on CPU."),
    "streaming_frontend": FieldSpec("SERNET_STREAMING_FRONTEND", int, "1: reuse each speaker's mel frames across windows, bit-identical to computing each window from scratch (0), about half the frontend CPU."),
    "model_dir": FieldSpec("SERNET_MODEL_DIR", _opt_str, "Model artifact directory (default: model_artifacts/)."),
    "threads": FieldSpec("SERNET_THREADS", int, "onnxruntime intra-op threads."),
    "idle_timeout_s": FieldSpec("SERNET_IDLE_TIMEOUT_S", float, "Flush a speaker silent for this long, seconds."),
    "max_speakers": FieldSpec("SERNET_MAX_SPEAKERS", int, "Live speakers per worker; the least recent is flushed beyond."),
    "max_buffer_s": FieldSpec("SERNET_MAX_BUFFER_S", float, "Per-speaker cap on buffered and gap-filled audio, seconds."),
    "max_reorder_chunks": FieldSpec("SERNET_MAX_REORDER_CHUNKS", int, "Out-of-order chunks held per speaker before a gap is filled."),
    "reorder_timeout_s": FieldSpec("SERNET_REORDER_TIMEOUT_S", float, "Wait this long for a missing chunk before filling silence, seconds."),
    "vad_threshold_dbfs": FieldSpec("SERNET_VAD_DBFS", float, "Energy VAD: a 30 ms frame above this RMS level (dBFS) is speech."),
    "web_port": FieldSpec("SERNET_WEB_PORT", int, "Port of /metrics, /healthz and /readyz (0: none)."),
    "log_level": FieldSpec("SERNET_LOG_LEVEL", _upper, "DEBUG, INFO, WARNING or ERROR."),
}

assert set(FIELDS) == {f.name for f in dataclasses.fields(Settings)}, "FIELDS and Settings disagree"


def click_options(*names: str):
    """Decorator adding ``--flag`` options for the named settings, each with its env fallback.

    The command receives them as keyword arguments; pass them to :meth:`Settings.from_env`
    (``None`` means "not given": the environment or the default applies, and click shows the
    variable name in ``--help``).
    """
    import click

    def decorate(func):
        for name in reversed(names):
            spec = FIELDS[name]
            default = getattr(Settings, name, None) if name != "sasl_password" else None
            kind = {int: int, float: float}.get(spec.parse, str)
            flag = "--" + name.replace("_", "-")
            func = click.option(
                flag, name, type=kind, default=None, envvar=spec.env, show_envvar=True,
                help=f"{spec.help}" + (f" [default: {default}]" if default is not None else ""),
                hide_input=name == "sasl_password")(func)
        return func

    return decorate


KAFKA_OPTIONS = ("broker_url", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile")
