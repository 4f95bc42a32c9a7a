"""The wire contract: roundtrips, typed errors for every kind of bad input, G.711 tables."""

from __future__ import annotations

import math
import warnings

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas import (
    AudioChunk,
    DeadLetter,
    EmotionEvent,
    InvalidField,
    InvalidSamples,
    MalformedMessage,
    MissingField,
    ModelInfo,
    PayloadTooLarge,
    SchemaError,
    UnsupportedVersion,
    WrongKind,
    decode,
    encode,
)
from schemas.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR
from schemas.limits import MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_CHUNK

SHA = "0123456789abcdef" * 4
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs", "Cf", "Co", "Cn"),
                            blacklist_characters="/"), min_size=1, max_size=20)


def chunk(**kw) -> AudioChunk:
    base = dict(stream_id="call-1", speaker_id="agent", seq=0, capture_ts=0.0,
                sample_rate_hz=16000, encoding="pcm_s16le", samples=b"\x00\x01" * 10)
    base.update(kw)
    return AudioChunk(**base)


def event(**kw) -> EmotionEvent:
    model = ModelInfo("light-sernet", "1.0", SHA)
    base = dict(event_id=schemas.make_event_id("call-1", "agent", 0, SHA), stream_id="call-1",
                speaker_id="agent", window_start_s=1.0, window_end_s=4.0, label="angry",
                scores={"angry": 0.6, "neutral": 0.4}, speech=True, gap=False, model=model,
                latency_ms=12.5, emitted_at=1.7e9)
    base.update(kw)
    return EmotionEvent(**base)


@st.composite
def chunks(draw) -> AudioChunk:
    encoding = draw(st.sampled_from(schemas.ENCODINGS))
    n = draw(st.integers(0, 300))
    if encoding == "f32le":
        values = draw(st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n))
        samples = np.asarray(values, dtype="<f4").tobytes()
    else:
        samples = draw(st.binary(min_size=n * schemas.SAMPLE_WIDTH_BYTES[encoding],
                                 max_size=n * schemas.SAMPLE_WIDTH_BYTES[encoding]))
    return AudioChunk(stream_id=draw(ids), speaker_id=draw(ids), seq=draw(st.integers(0, 2**63 - 1)),
                      capture_ts=draw(st.floats(-1e9, 1e12, allow_nan=False)),
                      sample_rate_hz=draw(st.integers(4000, 192000)), encoding=encoding,
                      samples=samples, end_of_stream=draw(st.booleans()))


# --------------------------------------------------------------------------- roundtrips


@FAST
@given(chunks())
def test_any_valid_chunk_roundtrips(c: AudioChunk) -> None:
    data = encode(c)
    assert decode(data, AudioChunk) == c
    assert decode(data) == c  # kind picks the class
    pcm = c.pcm()
    assert pcm.dtype == np.float32 and pcm.shape == (c.num_samples,)
    assert np.all(np.abs(pcm) <= 1.0)


def test_event_and_dead_letter_roundtrip() -> None:
    e = event()
    assert schemas.decode_emotion_event(encode(e)) == e
    dl = DeadLetter.from_error(InvalidSamples("nan"), key=b"k", value=b"v" * 10, topic="sernet.audio",
                               partition=3, offset=42)
    back = schemas.decode_dead_letter(encode(dl))
    assert back == dl and back.reason == "invalid_samples" and back.value_len == 10


def test_dead_letter_truncates_original_bytes() -> None:
    dl = DeadLetter.build("malformed", "x" * 10_000, value=b"\x00" * 1_000_000, key=b"k" * 5000)
    assert len(dl.value) == 64 * 1024 and dl.value_len == 1_000_000
    assert len(dl.key) == 1024 and len(dl.detail) == 2000
    assert decode(encode(dl)) == dl
    assert DeadLetter.from_error(KeyError("x")).reason == "error:KeyError"


def test_event_id_is_deterministic_and_distinct() -> None:
    a = schemas.make_event_id("s", "spk", 16000, SHA)
    assert a == schemas.make_event_id("s", "spk", 16000, SHA)
    assert a != schemas.make_event_id("s", "spk", 32000, SHA)
    assert a != schemas.make_event_id("s", "spk2", 16000, SHA)
    assert a != schemas.make_event_id("s", "spk", 16000, "f" * 64)


def test_message_key() -> None:
    assert schemas.message_key("call-1", "agent") == b"call-1/agent"
    assert schemas.parse_message_key(b"call-1/agent") == ("call-1", "agent")
    assert event().key == b"call-1/agent"
    with pytest.raises(InvalidField):
        schemas.message_key("a/b", "c")
    with pytest.raises(InvalidField):
        schemas.parse_message_key(b"\xff\xfe")


def test_pcm16_to_float32_is_exact_into_a_new_or_a_given_array() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    new = schemas.pcm16_to_float32(every)
    assert new.dtype == np.float32 and np.array_equal(new.astype(np.float64), every / 32768.0)
    scratch = np.full(every.shape[0] + 5, np.nan, dtype=np.float32)
    into = schemas.pcm16_to_float32(every, out=scratch[: every.shape[0]])
    assert np.shares_memory(into, scratch) and np.array_equal(into, new)


def test_pcm_decodes_each_encoding() -> None:
    assert chunk(samples=np.array([0, 16384, -32768], "<i2").tobytes()).pcm().tolist() == [0, 0.5, -1]
    f = chunk(encoding="f32le", samples=np.array([0.25, 2.0, -3.0], "<f4").tobytes()).pcm()
    assert f.tolist() == [0.25, 1.0, -1.0]  # clipped to [-1, 1]
    assert chunk(encoding="mulaw", samples=b"\xff\x00").pcm().tolist() == [0.0, -32124 / 32768]
    assert chunk(encoding="alaw", samples=b"\xd5\x55").pcm().tolist() == [8 / 32768, -8 / 32768]


@pytest.mark.parametrize("encoding", schemas.ENCODINGS)
def test_pcm_native_is_lossless(encoding: str) -> None:
    """int16 for the integer encodings (pcm() is exactly these / 32768), float32 for f32le."""
    x = (0.9 * np.sin(np.linspace(0, 40, 4000))).astype(np.float32)
    c = AudioChunk.from_pcm(x, stream_id="s", speaker_id="p", seq=0, capture_ts=0.0,
                            sample_rate_hz=16000, encoding=encoding)
    native = c.pcm_native()
    assert native.dtype == (np.float32 if encoding == "f32le" else np.int16)
    scale = 1.0 if encoding == "f32le" else 1 / 32768
    assert np.array_equal(native.astype(np.float32) * np.float32(scale), c.pcm())


@pytest.mark.parametrize("encoding", schemas.ENCODINGS)
def test_from_pcm_roundtrip_close(encoding: str) -> None:
    x = (0.5 * np.sin(np.linspace(0, 40, 4000))).astype(np.float32)
    c = AudioChunk.from_pcm(x, stream_id="s", speaker_id="p", seq=0, capture_ts=0.0,
                            sample_rate_hz=8000, encoding=encoding)
    tol = {"f32le": 1e-7, "pcm_s16le": 1 / 32768, "mulaw": 0.02, "alaw": 0.02}[encoding]
    np.testing.assert_allclose(c.pcm(), x, atol=tol)
    assert c.duration_s == pytest.approx(0.5) and c.end_ts == pytest.approx(0.5)


# --------------------------------------------------------------------------- typed errors


@pytest.mark.parametrize("kw, error, reason", [
    (dict(stream_id=""), InvalidField, "invalid_field"),
    (dict(stream_id="x" * 129), InvalidField, "invalid_field"),
    (dict(speaker_id="a/b"), InvalidField, "invalid_field"),
    (dict(speaker_id=7), InvalidField, "invalid_field"),
    (dict(seq=-1), InvalidField, "invalid_field"),
    (dict(seq=True), InvalidField, "invalid_field"),
    (dict(seq=1.0), InvalidField, "invalid_field"),
    (dict(capture_ts=math.nan), InvalidField, "invalid_field"),
    (dict(capture_ts="0"), InvalidField, "invalid_field"),
    (dict(sample_rate_hz=3999), InvalidField, "invalid_field"),
    (dict(sample_rate_hz=192001), InvalidField, "invalid_field"),
    (dict(encoding="pcm_s24le"), InvalidField, "invalid_field"),
    (dict(samples=b"\x00"), InvalidSamples, "invalid_samples"),
    (dict(samples="text"), InvalidSamples, "invalid_samples"),
    (dict(encoding="f32le", samples=b"\x00" * 6), InvalidSamples, "invalid_samples"),
    (dict(encoding="f32le", samples=np.array([0, np.nan], "<f4").tobytes()), InvalidSamples,
     "invalid_samples"),
    (dict(encoding="f32le", samples=np.array([np.inf], "<f4").tobytes()), InvalidSamples,
     "invalid_samples"),
    (dict(encoding="mulaw", samples=b"\x00" * (MAX_SAMPLES_PER_CHUNK + 1)), PayloadTooLarge,
     "too_large"),
    (dict(end_of_stream=1), InvalidField, "invalid_field"),
    (dict(v=2), UnsupportedVersion, "unsupported_version"),
])
def test_invalid_chunks_raise_typed_errors(kw, error, reason) -> None:
    with pytest.raises(error) as info:
        chunk(**kw)
    assert info.value.reason == reason
    # and the same dict arriving over the wire
    d = chunk().to_dict()
    d.update(kw)
    try:
        data = msgpack.packb(d, use_bin_type=True)
    except TypeError:
        return
    with pytest.raises(SchemaError) as info:
        decode(data, AudioChunk)
    assert info.value.reason in (reason, "too_large")


def test_unknown_version_missing_field_wrong_kind() -> None:
    d = chunk().to_dict()
    for v in (0, 2, "1", None, 1.0):
        with pytest.raises(UnsupportedVersion):
            decode(msgpack.packb({**d, "v": v}), AudioChunk)
    del d["seq"]
    with pytest.raises(MissingField) as info:
        decode(msgpack.packb(d), AudioChunk)
    assert info.value.reason == "missing_field" and info.value.field == "seq"
    with pytest.raises(WrongKind):
        decode(encode(event()), AudioChunk)
    with pytest.raises(WrongKind):
        decode(msgpack.packb({"v": 1, "kind": "nope"}))
    with pytest.raises(MissingField):
        decode(msgpack.packb({"kind": "audio_chunk"}), AudioChunk)  # no v at all


def test_extra_fields_are_ignored() -> None:
    d = {**chunk().to_dict(), "future_field": [1, 2]}
    assert decode(msgpack.packb(d, use_bin_type=True), AudioChunk) == chunk()


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x91\x01", b"\x01", b"\xa3abc", b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\x7f\xff\xff\xff",  # bin32 of 2 GiB: refused by max_bin_len before allocation
    b"\xdd\xff\xff\xff\xff",  # array32 of 4G elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 4G entries
    b"\x91" * 5000 + b"\x00",  # deep nesting
    b"\x81\x01\x02",  # int map key
    b"\x81\xa1v\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x00",  # timestamp ext
    b"\x81\xa1v\xd4\x05\x00",  # other ext
    b"\x81\xa2\xff\xfe\x01",  # invalid UTF-8 key
    b"\x80\x80",  # trailing data
])
def test_garbage_raises_malformed(data: bytes) -> None:
    with pytest.raises(SchemaError) as info:
        decode(data, AudioChunk)
    assert info.value.reason in ("malformed", "unsupported_version", "missing_field")


def test_oversized_payload() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(b"\x00" * (MAX_PAYLOAD_BYTES + 1))
    big = DeadLetter.build("x", "y", value=b"\x00" * 10)
    assert len(encode(big)) < MAX_PAYLOAD_BYTES
    with pytest.raises(MalformedMessage):
        decode("not bytes")  # type: ignore[arg-type]


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_schema_errors(data: bytes) -> None:
    try:
        decode(data)
    except SchemaError as exc:
        assert exc.reason and isinstance(exc.reason, str)


@FAST
@given(chunks(), st.data())
def test_truncated_or_mutated_chunks_only_raise_schema_errors(c: AudioChunk, data) -> None:
    raw = bytearray(encode(c))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(SchemaError):
        decode(bytes(raw[:cut]), AudioChunk)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(raw), AudioChunk)
    except SchemaError:
        pass


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@FAST
@given(st.sampled_from([AudioChunk, EmotionEvent, DeadLetter]), st.data())
def test_wrong_types_in_any_field_raise_schema_errors(cls, data) -> None:
    d = (chunk() if cls is AudioChunk else event() if cls is EmotionEvent
         else DeadLetter.build("r", "d")).to_dict()
    name = data.draw(st.sampled_from(sorted(d)))
    d[name] = data.draw(wire_values)
    try:
        decode(msgpack.packb(d, use_bin_type=True), cls)
    except SchemaError:
        pass


@pytest.mark.parametrize("kw", [
    dict(window_end_s=0.5), dict(label="happy"), dict(scores={}), dict(scores={"angry": math.nan}),
    dict(speech=1), dict(latency_ms=-1.0), dict(event_id=""), dict(model="m"),
])
def test_invalid_events(kw) -> None:
    with pytest.raises(InvalidField):
        event(**kw)


def test_bad_model_sha() -> None:
    with pytest.raises(InvalidField):
        ModelInfo("m", "1", "ABC")


# --------------------------------------------------------------------------- G.711


def test_g711_known_table_values() -> None:
    assert ULAW_TO_LINEAR[0xFF] == 0 and ULAW_TO_LINEAR[0x7F] == 0
    assert ULAW_TO_LINEAR[0x00] == -32124 and ULAW_TO_LINEAR[0x80] == 32124
    assert ULAW_TO_LINEAR[0xFE] == 8 and ULAW_TO_LINEAR[0x7E] == -8
    assert ALAW_TO_LINEAR[0xD5] == 8 and ALAW_TO_LINEAR[0x55] == -8
    assert ALAW_TO_LINEAR[0xAA] == 32256 and ALAW_TO_LINEAR[0x2A] == -32256
    assert schemas.ulaw_encode(np.array([0, 32767, -32768], np.int16)) == b"\xff\x80\x00"
    assert schemas.alaw_encode(np.array([0, 32767, -32768], np.int16)) == b"\xd5\xaa\x2a"


def test_g711_encode_inverts_decode() -> None:
    codes = bytes(range(256))
    assert schemas.alaw_encode(schemas.alaw_decode(codes)) == codes
    u = schemas.ulaw_encode(schemas.ulaw_decode(codes))
    # 0x7F (-0) encodes back as 0xFF (+0); every other code is its own inverse
    assert u == codes.replace(b"\x7f", b"\xff")


def test_g711_matches_audioop_bit_exactly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop was removed in Python 3.13")
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert schemas.ulaw_encode(x) == audioop.lin2ulaw(x.tobytes(), 2)
    assert schemas.alaw_encode(x) == audioop.lin2alaw(x.tobytes(), 2)
    codes = bytes(range(256))
    assert schemas.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert schemas.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_g711_monotonic() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert np.all(np.diff(schemas.ulaw_decode(schemas.ulaw_encode(x)).astype(int)) >= 0)
    assert np.all(np.diff(schemas.alaw_decode(schemas.alaw_encode(x)).astype(int)) >= 0)


# --------------------------------------------------------------------------- JSON Schema


def _json_schema(cls) -> dict:
    import json

    return json.loads((schemas.JSON_SCHEMA_DIR / f"{cls.KIND}.v1.schema.json").read_text())


@pytest.mark.parametrize("cls", [AudioChunk, EmotionEvent, DeadLetter])
def test_json_schema_matches_dataclasses(cls) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _json_schema(cls)
    jsonschema.Draft202012Validator.check_schema(schema)
    sample = {AudioChunk: chunk(), EmotionEvent: event(),
              DeadLetter: DeadLetter.build("malformed", "x", value=b"\x00")}[cls]
    d = sample.to_dict()
    assert set(schema["properties"]) == set(d), "JSON Schema and to_dict() drifted apart"
    jsonschema.validate(d, schema)
    for name in schema["required"]:
        broken = {k: v for k, v in d.items() if k != name}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
        with pytest.raises(MissingField):
            cls.from_dict(broken)


def test_json_schema_rejects_what_python_rejects() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _json_schema(AudioChunk)
    for bad in (dict(v=2), dict(seq=-1), dict(speaker_id="a/b"), dict(encoding="opus"),
                dict(sample_rate_hz=1000), dict(stream_id="")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**chunk().to_dict(), **bad}, schema)
