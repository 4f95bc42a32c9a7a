"""The messages on the wire: frozen dataclasses with explicit ``to_dict`` / ``from_dict``.

Constructing a message validates it, so an invalid message cannot be built, sent or returned by
the codec. ``from_dict`` raises the typed errors of :mod:`schemas.errors`; unknown extra keys are
ignored (additive changes within a version stay compatible), an unknown ``v`` is refused.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np

from schemas import g711
from schemas.errors import (
    InvalidField,
    InvalidSamples,
    MissingField,
    PayloadTooLarge,
    UnsupportedVersion,
    WrongKind,
)
from schemas.limits import (
    MAX_DEAD_LETTER_KEY_BYTES,
    MAX_DEAD_LETTER_VALUE_BYTES,
    MAX_DETAIL_CHARS,
    MAX_ID_CHARS,
    MAX_LABELS,
    MAX_SAMPLE_RATE_HZ,
    MAX_SAMPLES_PER_CHUNK,
    MIN_SAMPLE_RATE_HZ,
    SCHEMA_VERSION,
    SUPPORTED_VERSIONS,
)

Encoding = Literal["pcm_s16le", "f32le", "mulaw", "alaw"]
ENCODINGS: tuple[str, ...] = ("pcm_s16le", "f32le", "mulaw", "alaw")
SAMPLE_WIDTH_BYTES: dict[str, int] = {"pcm_s16le": 2, "f32le": 4, "mulaw": 1, "alaw": 1}
KEY_SEPARATOR = "/"
# uuid5 namespace of EmotionEvent.event_id (a fixed random UUID: never change it).
EVENT_ID_NAMESPACE = uuid.UUID("6f1d8f0e-5b8a-4c55-9a57-3c1f0b7e2d41")


# --------------------------------------------------------------------------- field checks


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"{name} must be a string, got {type(value).__name__}", field=name)
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidField(f"{name} must have 1..{MAX_ID_CHARS} characters", field=name)
    if KEY_SEPARATOR in value or not value.isprintable():
        raise InvalidField(f"{name} must be printable and must not contain {KEY_SEPARATOR!r}",
                           field=name)
    return value


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int subclass: refuse it
        raise InvalidField(f"{name} must be an integer, got {type(value).__name__}", field=name)
    if not lo <= value <= hi:
        raise InvalidField(f"{name} must be in [{lo}, {hi}], got {value}", field=name)
    return value


def _check_float(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if type(value) not in (int, float):
        raise InvalidField(f"{name} must be a number, got {type(value).__name__}", field=name)
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidField(f"{name} must be finite and in [{lo}, {hi}], got {value}", field=name)
    return value


def _check_bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise InvalidField(f"{name} must be a boolean, got {type(value).__name__}", field=name)
    return value


def _check_str(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"{name} must be a string, got {type(value).__name__}", field=name)
    if len(value) > max_chars:
        raise PayloadTooLarge(f"{name} longer than {max_chars} characters", field=name)
    return value


def _check_optional_bytes(name: str, value: Any, max_len: int) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidField(f"{name} must be bytes or null, got {type(value).__name__}", field=name)
    value = bytes(value)
    if len(value) > max_len:
        raise PayloadTooLarge(f"{name} longer than {max_len} bytes", field=name)
    return value


def _check_optional_int(name: str, value: Any) -> int | None:
    return None if value is None else _check_int(name, value, -1, 2**63 - 1)


def _require(d: Mapping[str, Any], name: str) -> Any:
    try:
        return d[name]
    except KeyError:
        raise MissingField(f"missing field {name!r}", field=name) from None


def _check_header(d: Any, kind: str) -> None:
    if not isinstance(d, Mapping):
        raise InvalidField(f"{kind} must be a map, got {type(d).__name__}")
    v = _require(d, "v")
    if type(v) is not int or v not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"unsupported {kind} schema version {v!r}; "
                                 f"this code reads {sorted(SUPPORTED_VERSIONS)}", field="v")
    got = d.get("kind", kind)  # `kind` is optional in dicts, always written by the codec
    if got != kind:
        raise WrongKind(f"expected a {kind} message, got {got!r}", field="kind")


def message_key(stream_id: str, speaker_id: str) -> bytes:
    """The Kafka message key of a speaker: ``b"stream/speaker"`` (UTF-8).

    Producers key every AudioChunk with it (one speaker stays on one partition, in order) and the
    worker keys the speaker's EmotionEvents with it.
    """
    return f"{_check_id('stream_id', stream_id)}{KEY_SEPARATOR}" \
           f"{_check_id('speaker_id', speaker_id)}".encode()


def parse_message_key(key: bytes) -> tuple[str, str]:
    """Inverse of :func:`message_key`; raises :class:`InvalidField` for a foreign key."""
    try:
        stream_id, speaker_id = bytes(key).decode("utf-8").split(KEY_SEPARATOR)
    except (UnicodeDecodeError, ValueError, TypeError):
        raise InvalidField(f"not a stream/speaker key: {key!r:.80}", field="key") from None
    return _check_id("stream_id", stream_id), _check_id("speaker_id", speaker_id)


# --------------------------------------------------------------------------- AudioChunk


@dataclass(frozen=True)
class AudioChunk:
    """A run of mono audio samples of one speaker of one stream.

    ``capture_ts`` is the time of the chunk's first sample on the stream's own clock (seconds);
    consecutive chunks of a speaker have ``seq`` 0, 1, 2, ... The last chunk of a speaker has
    ``end_of_stream=True`` (it may hold no samples).
    """

    KIND: ClassVar[str] = "audio_chunk"

    stream_id: str
    speaker_id: str
    seq: int
    capture_ts: float
    sample_rate_hz: int
    encoding: Encoding
    samples: bytes = field(repr=False)
    end_of_stream: bool = False
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_id("speaker_id", self.speaker_id)
        _check_int("seq", self.seq, 0, 2**63 - 1)
        object.__setattr__(self, "capture_ts", _check_float("capture_ts", self.capture_ts))
        _check_int("sample_rate_hz", self.sample_rate_hz, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
        if self.encoding not in ENCODINGS:
            raise InvalidField(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}",
                               field="encoding")
        _check_bool("end_of_stream", self.end_of_stream)
        if self.v not in SUPPORTED_VERSIONS or type(self.v) is not int:
            raise UnsupportedVersion(f"unsupported schema version {self.v!r}", field="v")
        samples = self.samples
        if not isinstance(samples, (bytes, bytearray, memoryview)):
            raise InvalidSamples(f"samples must be bytes, got {type(samples).__name__}",
                                 field="samples")
        samples = bytes(samples)
        object.__setattr__(self, "samples", samples)
        width = SAMPLE_WIDTH_BYTES[self.encoding]
        if len(samples) % width:
            raise InvalidSamples(f"{len(samples)} bytes is not a whole number of "
                                 f"{width}-byte {self.encoding} samples", field="samples")
        if len(samples) // width > MAX_SAMPLES_PER_CHUNK:
            raise PayloadTooLarge(f"{len(samples) // width} samples in one chunk; the limit is "
                                  f"{MAX_SAMPLES_PER_CHUNK}", field="samples")
        if self.encoding == "f32le" and samples:
            if not np.isfinite(np.frombuffer(samples, dtype="<f4")).all():
                raise InvalidSamples("f32le samples contain NaN or infinity", field="samples")

    @property
    def num_samples(self) -> int:
        return len(self.samples) // SAMPLE_WIDTH_BYTES[self.encoding]

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    @property
    def end_ts(self) -> float:
        """Stream-clock time just after the last sample (== next chunk's ``capture_ts``)."""
        return self.capture_ts + self.duration_s

    def pcm(self) -> np.ndarray:
        """The samples as float32 in [-1, 1] (f32le values outside are clipped)."""
        native = self.pcm_native()
        return native if native.dtype == np.float32 else pcm16_to_float32(native)

    def pcm_native(self) -> np.ndarray:
        """The samples without loss in their smallest form: int16 for s16le, mu-law and A-law
        (``pcm()`` is these / 32768), float32 clipped to [-1, 1] for f32le. For s16le a
        read-only view of the message bytes."""
        if self.encoding == "pcm_s16le":
            return np.frombuffer(self.samples, dtype="<i2")
        if self.encoding == "mulaw":
            return g711.ulaw_decode(self.samples).astype(np.int16, copy=False)
        if self.encoding == "alaw":
            return g711.alaw_decode(self.samples).astype(np.int16, copy=False)
        return np.clip(np.frombuffer(self.samples, dtype="<f4"), -1.0, 1.0).astype(np.float32)

    @classmethod
    def from_pcm(cls, pcm: np.ndarray, *, stream_id: str, speaker_id: str, seq: int,
                 capture_ts: float, sample_rate_hz: int, encoding: Encoding = "pcm_s16le",
                 end_of_stream: bool = False) -> AudioChunk:
        """Build a chunk from float samples in [-1, 1] (clipped), encoded as ``encoding``."""
        return cls(stream_id=stream_id, speaker_id=speaker_id, seq=seq, capture_ts=capture_ts,
                   sample_rate_hz=sample_rate_hz, encoding=encoding,
                   samples=encode_samples(pcm, encoding), end_of_stream=end_of_stream)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "kind": self.KIND, "stream_id": self.stream_id,
                "speaker_id": self.speaker_id, "seq": self.seq, "capture_ts": self.capture_ts,
                "sample_rate_hz": self.sample_rate_hz, "encoding": self.encoding,
                "samples": self.samples, "end_of_stream": self.end_of_stream}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AudioChunk:
        _check_header(d, cls.KIND)
        return cls(stream_id=_require(d, "stream_id"), speaker_id=_require(d, "speaker_id"),
                   seq=_require(d, "seq"), capture_ts=_require(d, "capture_ts"),
                   sample_rate_hz=_require(d, "sample_rate_hz"), encoding=_require(d, "encoding"),
                   samples=_require(d, "samples"), end_of_stream=_require(d, "end_of_stream"),
                   v=d["v"])


def pcm16_to_float32(pcm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 PCM as float32 in [-1, 1): x / 32768, exact (a power of two). Into ``out`` (a
    float32 array of the same length, e.g. a reused scratch row) if given, else a new array."""
    if out is not None:
        return np.multiply(pcm, np.float32(1.0 / 32768.0), out=out, casting="unsafe")
    out = pcm.astype(np.float32)
    out *= np.float32(1.0 / 32768.0)
    return out


def encode_samples(pcm: np.ndarray, encoding: Encoding) -> bytes:
    """Float samples in [-1, 1] (clipped; NaN refused) -> bytes in ``encoding``."""
    x = np.asarray(pcm, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise InvalidSamples("samples contain NaN or infinity", field="samples")
    x = np.clip(x, -1.0, 1.0)
    if encoding == "f32le":
        return x.astype("<f4").tobytes()
    if encoding not in ENCODINGS:
        raise InvalidField(f"encoding must be one of {ENCODINGS}, got {encoding!r}",
                           field="encoding")
    pcm16 = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    if encoding == "pcm_s16le":
        return pcm16.tobytes()
    return g711.ulaw_encode(pcm16) if encoding == "mulaw" else g711.alaw_encode(pcm16)


# --------------------------------------------------------------------------- EmotionEvent


@dataclass(frozen=True)
class ModelInfo:
    """Which model scored a window."""

    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        _check_str("model.name", self.name, MAX_ID_CHARS)
        _check_str("model.version", self.version, MAX_ID_CHARS)
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64
                and all(c in "0123456789abcdef" for c in self.sha256)):
            raise InvalidField("model.sha256 must be 64 lowercase hex digits", field="model.sha256")
        if not self.name:
            raise InvalidField("model.name must not be empty", field="model.name")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any) -> ModelInfo:
        if not isinstance(d, Mapping):
            raise InvalidField("model must be a map", field="model")
        return cls(name=_require(d, "name"), version=_require(d, "version"),
                   sha256=_require(d, "sha256"))


def make_event_id(stream_id: str, speaker_id: str, window_start_sample: int,
                  model_sha256: str) -> str:
    """Deterministic event id: the same window of the same speaker scored by the same model
    always gets the same id (consumers deduplicate on it after a worker restart)."""
    name = f"{stream_id}|{speaker_id}|{int(window_start_sample)}|{model_sha256}"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


@dataclass(frozen=True)
class EmotionEvent:
    """The emotion of one window of one speaker.

    ``window_start_s`` / ``window_end_s`` are on the stream's clock (the producers'
    ``capture_ts``). ``scores`` maps every label to its probability; ``label`` is the chosen one.
    ``speech`` is False when the window held no speech (energy VAD); ``gap`` is True when part
    of the window was silence filled in for missing chunks.
    """

    KIND: ClassVar[str] = "emotion_event"

    event_id: str
    stream_id: str
    speaker_id: str
    window_start_s: float
    window_end_s: float
    label: str
    scores: Mapping[str, float]
    speech: bool
    gap: bool
    model: ModelInfo
    latency_ms: float
    emitted_at: float = field(default_factory=time.time)
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_str("event_id", self.event_id, MAX_ID_CHARS)
        if not self.event_id:
            raise InvalidField("event_id must not be empty", field="event_id")
        _check_id("stream_id", self.stream_id)
        _check_id("speaker_id", self.speaker_id)
        start = _check_float("window_start_s", self.window_start_s)
        end = _check_float("window_end_s", self.window_end_s)
        if end < start:
            raise InvalidField("window_end_s is before window_start_s", field="window_end_s")
        object.__setattr__(self, "window_start_s", start)
        object.__setattr__(self, "window_end_s", end)
        if not isinstance(self.scores, Mapping) or not 0 < len(self.scores) <= MAX_LABELS:
            raise InvalidField(f"scores must be a map of 1..{MAX_LABELS} labels", field="scores")
        scores = {}
        for k, val in self.scores.items():
            _check_str("scores label", k, MAX_ID_CHARS)
            scores[k] = _check_float(f"scores[{k!r}]", val)
        object.__setattr__(self, "scores", scores)
        _check_str("label", self.label, MAX_ID_CHARS)
        if self.label not in scores:
            raise InvalidField(f"label {self.label!r} is not a key of scores", field="label")
        _check_bool("speech", self.speech)
        _check_bool("gap", self.gap)
        if not isinstance(self.model, ModelInfo):
            raise InvalidField("model must be a ModelInfo", field="model")
        object.__setattr__(self, "latency_ms", _check_float("latency_ms", self.latency_ms, 0.0))
        object.__setattr__(self, "emitted_at", _check_float("emitted_at", self.emitted_at))
        if self.v not in SUPPORTED_VERSIONS or type(self.v) is not int:
            raise UnsupportedVersion(f"unsupported schema version {self.v!r}", field="v")

    @property
    def key(self) -> bytes:
        return message_key(self.stream_id, self.speaker_id)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "kind": self.KIND, "event_id": self.event_id,
                "stream_id": self.stream_id, "speaker_id": self.speaker_id,
                "window_start_s": self.window_start_s, "window_end_s": self.window_end_s,
                "label": self.label, "scores": dict(self.scores), "speech": self.speech,
                "gap": self.gap, "model": self.model.to_dict(), "latency_ms": self.latency_ms,
                "emitted_at": self.emitted_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmotionEvent:
        _check_header(d, cls.KIND)
        return cls(event_id=_require(d, "event_id"), stream_id=_require(d, "stream_id"),
                   speaker_id=_require(d, "speaker_id"),
                   window_start_s=_require(d, "window_start_s"),
                   window_end_s=_require(d, "window_end_s"), label=_require(d, "label"),
                   scores=_require(d, "scores"), speech=_require(d, "speech"),
                   gap=_require(d, "gap"), model=ModelInfo.from_dict(_require(d, "model")),
                   latency_ms=_require(d, "latency_ms"), emitted_at=_require(d, "emitted_at"),
                   v=d["v"])


# --------------------------------------------------------------------------- DeadLetter


@dataclass(frozen=True)
class DeadLetter:
    """A message the worker could not process, with why and where it came from.

    ``key`` / ``value`` are the original bytes, truncated (``value_len`` is the original size);
    ``topic`` / ``partition`` / ``offset`` are None when unknown.
    """

    KIND: ClassVar[str] = "dead_letter"

    reason: str
    detail: str
    key: bytes | None = field(default=None, repr=False)
    value: bytes | None = field(default=None, repr=False)
    value_len: int = 0
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    failed_at: float = field(default_factory=time.time)
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_str("reason", self.reason, MAX_ID_CHARS)
        if not self.reason:
            raise InvalidField("reason must not be empty", field="reason")
        _check_str("detail", self.detail, MAX_DETAIL_CHARS)
        object.__setattr__(self, "key",
                           _check_optional_bytes("key", self.key, MAX_DEAD_LETTER_KEY_BYTES))
        object.__setattr__(self, "value",
                           _check_optional_bytes("value", self.value, MAX_DEAD_LETTER_VALUE_BYTES))
        _check_int("value_len", self.value_len, 0, 2**63 - 1)
        if self.topic is not None:
            _check_str("topic", self.topic, 255)
        _check_optional_int("partition", self.partition)
        _check_optional_int("offset", self.offset)
        object.__setattr__(self, "failed_at", _check_float("failed_at", self.failed_at))
        if self.v not in SUPPORTED_VERSIONS or type(self.v) is not int:
            raise UnsupportedVersion(f"unsupported schema version {self.v!r}", field="v")

    @classmethod
    def build(cls, reason: str, detail: str, *, key: bytes | None = None,
              value: bytes | None = None, topic: str | None = None,
              partition: int | None = None, offset: int | None = None) -> DeadLetter:
        """A dead letter with the original bytes and detail truncated to the limits."""
        return cls(reason=str(reason)[:MAX_ID_CHARS] or "unknown",
                   detail=str(detail)[:MAX_DETAIL_CHARS],
                   key=None if key is None else bytes(key)[:MAX_DEAD_LETTER_KEY_BYTES],
                   value=None if value is None else bytes(value)[:MAX_DEAD_LETTER_VALUE_BYTES],
                   value_len=0 if value is None else len(value),
                   topic=topic, partition=partition, offset=offset)

    @classmethod
    def from_error(cls, exc: BaseException, **where: Any) -> DeadLetter:
        """From a :class:`~schemas.errors.SchemaError` (its ``reason``) or any exception
        (``reason`` = ``"error:<ExceptionClass>"``); ``where``: key, value, topic, partition,
        offset."""
        reason = getattr(exc, "reason", None) or f"error:{type(exc).__name__}"
        return cls.build(reason, str(exc), **where)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "kind": self.KIND, "reason": self.reason, "detail": self.detail,
                "key": self.key, "value": self.value, "value_len": self.value_len,
                "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "failed_at": self.failed_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeadLetter:
        _check_header(d, cls.KIND)
        return cls(reason=_require(d, "reason"), detail=_require(d, "detail"),
                   key=d.get("key"), value=d.get("value"), value_len=d.get("value_len", 0),
                   topic=d.get("topic"), partition=d.get("partition"), offset=d.get("offset"),
                   failed_at=_require(d, "failed_at"), v=d["v"])

