"""The msgpack envelope and batches: round trip, tolerance of unknown fields, limits, bad input."""

from __future__ import annotations

import msgpack
import pytest

from edgeloop.sync.codec import CodecError, MalformedEnvelope, decode_batch, encode_batch, encode_body


def record(seq: int, body) -> dict:
    return {"seq": seq, "id": f"id{seq}", "ts": 1700000000.5 + seq, "stream": "vib", "trace": None,
            "body": encode_body(body)}


def test_batch_round_trip_keeps_bodies_and_order():
    bodies = [{"rms": 0.5, "peaks": [1, 2, 3]}, b"\x00raw", "text", 7, None]
    batch = encode_batch("cam-1", [record(n, b) for n, b in enumerate(bodies)])
    envs = decode_batch(batch)
    assert [e.body for e in envs] == bodies
    assert [(e.device, e.seq, e.id, e.stream, e.v) for e in envs][0] == ("cam-1", 0, "id0", "vib", 1)
    assert envs[3].ts == 1700000003.5


def test_unknown_fields_are_tolerated():
    env = {"v": 2, "device": "d", "seq": 1, "id": "x", "ts": 1, "stream": "s", "trace": "t", "body": 1,
           "future_field": {"a": 1}}
    assert decode_batch(msgpack.packb([env]))[0].trace == "t"


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", r"batch does not decode as msgpack"),
    (msgpack.packb({"not": "a list"}), r"batch is a dict, expected an array"),
    (msgpack.packb([1]), r"envelope 0 is a int, expected a map"),
    (msgpack.packb([{"v": 1, "device": "d", "seq": "1", "id": "x", "ts": 1, "stream": "s", "body": 1}]),
     r"envelope 0: field 'seq' is str, expected int"),
    (msgpack.packb([{"v": 1, "device": "d", "seq": 1, "id": "x", "ts": 1, "stream": "s"}]),
     r"envelope 0: field 'body' is missing"),
])
def test_malformed_batches_are_typed_errors(payload, message):
    with pytest.raises(MalformedEnvelope, match=message):
        decode_batch(payload)


def test_size_limits_on_both_sides():
    with pytest.raises(CodecError, match=r"body is \d+ bytes, over the 100-byte limit"):
        encode_body(b"x" * 200, limit=100)
    big = encode_batch("d", [record(n, "y" * 100) for n in range(20)])
    with pytest.raises(MalformedEnvelope, match=r"over the 1000-byte limit"):
        decode_batch(big, max_bytes=1000)


def test_unserializable_body_is_refused():
    with pytest.raises(CodecError, match=r"body cannot be serialized: .*send dicts, lists"):
        encode_body({"when": object()})
