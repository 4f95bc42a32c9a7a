"""The wire contract of sernet-stream (msgpack; depends only on numpy and msgpack).

Messages (frozen dataclasses, validated on construction)::

    AudioChunk    producers -> worker   (topic sernet.audio, key message_key(stream, speaker))
    EmotionEvent  worker -> consumers   (same key)
    DeadLetter    worker -> DLQ topic   (reason = SchemaError.reason or "error:<Class>")

Codec: ``encode(msg) -> bytes``; ``decode(data, expect=AudioChunk)`` raises only
``SchemaError`` subclasses. Field tables: docs/schemas.md; JSON Schema: schemas/json/.
"""

from pathlib import Path

from schemas.codec import (
    decode,
    decode_audio_chunk,
    decode_dead_letter,
    decode_emotion_event,
    encode,
    unpack,
)
from schemas.errors import (
    InvalidField,
    InvalidSamples,
    MalformedMessage,
    MissingField,
    PayloadTooLarge,
    SchemaError,
    UnsupportedVersion,
    WrongKind,
)
from schemas.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from schemas.limits import (
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLE_RATE_HZ,
    MAX_SAMPLES_PER_CHUNK,
    MIN_SAMPLE_RATE_HZ,
    SCHEMA_VERSION,
    SUPPORTED_VERSIONS,
)
from schemas.messages import (
    ENCODINGS,
    SAMPLE_WIDTH_BYTES,
    AudioChunk,
    DeadLetter,
    EmotionEvent,
    Encoding,
    ModelInfo,
    encode_samples,
    make_event_id,
    message_key,
    parse_message_key,
    pcm16_to_float32,
)

JSON_SCHEMA_DIR = Path(__file__).with_name("json")
"""``<kind>.v<version>.schema.json`` for non-Python consumers."""

__all__ = [
    "JSON_SCHEMA_DIR",
    "AudioChunk", "DeadLetter", "EmotionEvent", "Encoding", "ENCODINGS", "InvalidField",
    "InvalidSamples", "MAX_PAYLOAD_BYTES", "MAX_SAMPLE_RATE_HZ", "MAX_SAMPLES_PER_CHUNK",
    "MIN_SAMPLE_RATE_HZ", "MalformedMessage", "MissingField", "ModelInfo", "PayloadTooLarge",
    "SAMPLE_WIDTH_BYTES", "SCHEMA_VERSION", "SUPPORTED_VERSIONS", "SchemaError",
    "UnsupportedVersion", "WrongKind", "alaw_decode", "alaw_encode", "decode",
    "decode_audio_chunk", "decode_dead_letter", "decode_emotion_event", "encode",
    "encode_samples", "make_event_id", "message_key", "parse_message_key", "pcm16_to_float32",
    "ulaw_decode",
    "ulaw_encode", "unpack",
]
