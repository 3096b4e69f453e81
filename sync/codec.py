"""The msgpack envelope and batches that carry records from the device to the regional edge.

A record travels as ``{v, device, epoch, seq, id, ts, stream, trace, body}``; ``id`` is the
idempotency key the regional edge dedupes on, and ``(device, epoch, seq)`` orders a device's
records (``epoch`` names the outbox file that numbered them; older senders have none). Many
records share one MQTT message: a batch is a msgpack array of envelopes, up to a byte budget.
Bodies are encoded once, at enqueue, and spliced into batches as they are. Unknown envelope
fields are tolerated; sizes are limited on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import msgpack

from edgeloop.runtime.errors import EdgeloopError

VERSION = 1
MAX_BODY_BYTES = 256 * 1024
MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_RECORDS = 10_000
FIELDS = ("v", "device", "epoch", "seq", "id", "ts", "stream", "trace", "body")


class CodecError(EdgeloopError):
    """A body cannot be serialized, or is larger than the limit."""


class MalformedEnvelope(EdgeloopError):
    """A received batch or envelope does not decode or lacks required fields."""


@dataclass(frozen=True)
class Envelope:
    device: str
    seq: int
    id: str
    ts: float
    stream: str
    trace: str | None
    body: Any
    v: int = VERSION
    epoch: str | None = None


def encode_body(body: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """msgpack bytes of ``body``; CodecError naming what cannot be serialized."""
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"body cannot be serialized: {exc}",
                         "send dicts, lists, str, bytes, int, float, bool or None") from exc
    if len(data) > limit:
        raise CodecError(f"body is {len(data)} bytes, over the {limit}-byte limit",
                         "send less per record, or split it across records")
    return data


def encode_batch(device: str, records: Iterable[Mapping[str, Any]]) -> bytes:
    """One MQTT payload: a msgpack array of envelopes. Each record has seq, id, ts, stream,
    trace, epoch and ``body`` as already-encoded msgpack bytes, spliced in without re-encoding."""
    rows = list(records)
    packer = msgpack.Packer(use_bin_type=True)
    # Every envelope is a map of len(FIELDS) entries: the constant head, then the per-record
    # entries (packed as one small map whose own header is cut off), then the body as it is.
    head = packer.pack_map_header(len(FIELDS)) + packer.pack("v") + packer.pack(VERSION) \
        + packer.pack("device") + packer.pack(device)
    pack = packer.pack
    body_key, seq_key, id_key, ts_key = pack("body"), pack("seq"), pack("id"), pack("ts")
    parts = [packer.pack_array_header(len(rows))]
    # The per-record entries, in the order epoch, seq, id, ts, stream, trace; epoch, stream and
    # trace are nearly always the same across a batch, so their bytes are packed once each.
    same: dict[tuple[Any, str, Any], tuple[bytes, bytes]] = {}
    for r in rows:
        key = (r.get("epoch"), r["stream"], r["trace"])
        ends = same.get(key)
        if ends is None:
            ends = same[key] = (head + pack("epoch") + pack(key[0]),
                                pack("stream") + pack(key[1]) + pack("trace") + pack(key[2]) + body_key)
        parts += (ends[0], seq_key, pack(r["seq"]), id_key, pack(r["id"]), ts_key, pack(r["ts"]), ends[1], r["body"])
    return b"".join(parts)


MAX_SEQ = (1 << 63) - 1  # a signed 64-bit integer in every store


def _field(env: Mapping[str, Any], key: str, kind: type | tuple[type, ...], n: int) -> Any:
    value = env.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedEnvelope(f"envelope {n}: field '{key}' is {type(value).__name__}, expected "
                                f"{kind.__name__ if isinstance(kind, type) else ' or '.join(k.__name__ for k in kind)}",
                                "the sender is not an edgeloop device of this version")
    # What every store can hold: no NUL in text (PostgreSQL refuses it), a 64-bit seq, a finite time.
    if (isinstance(value, str) and "\0" in value) or (key == "seq" and not 0 <= value <= MAX_SEQ) \
            or (key == "ts" and not math.isfinite(value)):
        raise MalformedEnvelope(f"envelope {n}: field '{key}' is out of range ({value!r:.40})",
                                "the sender is not an edgeloop device of this version")
    return value


def decode_batch(data: bytes, max_bytes: int = MAX_BATCH_BYTES,
                 max_records: int = MAX_BATCH_RECORDS) -> list[Envelope]:
    """Envelopes from one payload; MalformedEnvelope for anything that is not one."""
    if len(data) > max_bytes:
        raise MalformedEnvelope(f"batch is {len(data)} bytes, over the {max_bytes}-byte limit",
                                "lower the device's batch byte budget")
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=max_records,
                                max_map_len=64, max_bin_len=max_bytes, max_str_len=max_bytes)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedEnvelope(f"batch does not decode as msgpack: {exc}", "check the sender") from exc
    if not isinstance(items, list):
        raise MalformedEnvelope(f"batch is a {type(items).__name__}, expected an array of envelopes",
                                "check the sender")
    out = []
    for n, env in enumerate(items):
        if not isinstance(env, dict):
            raise MalformedEnvelope(f"envelope {n} is a {type(env).__name__}, expected a map", "check the sender")
        if "body" not in env:
            raise MalformedEnvelope(f"envelope {n}: field 'body' is missing", "check the sender")
        trace, epoch = env.get("trace"), env.get("epoch")
        trace = _field(env, "trace", str, n) if isinstance(trace, str) else None
        epoch = _field(env, "epoch", str, n) if isinstance(epoch, str) else None
        out.append(Envelope(
            device=_field(env, "device", str, n), seq=_field(env, "seq", int, n), id=_field(env, "id", str, n),
            ts=float(_field(env, "ts", (int, float), n)), stream=_field(env, "stream", str, n),
            trace=trace, body=env["body"], v=_field(env, "v", int, n), epoch=epoch))
    return out


def decode_fields(data: bytes) -> list[tuple[Any, ...]]:
    """``decode_batch`` for the regional receiver's hot path: one tuple per envelope,
    ``(device, epoch, seq, id, ts, stream, trace, body)``, checked with the same rules but
    without an object per record. Anything off goes through ``decode_batch`` for its error."""
    if len(data) > MAX_BATCH_BYTES:
        return [_as_fields(e) for e in decode_batch(data)]  # raises with the reason
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_BATCH_RECORDS,
                                max_map_len=64, max_bin_len=MAX_BATCH_BYTES, max_str_len=MAX_BATCH_BYTES)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        items = None
    out = []
    for env in items if type(items) is list else ():
        if type(env) is not dict:
            break
        try:
            device, seq, rid, ts, stream, body, v = (env["device"], env["seq"], env["id"], env["ts"], env["stream"],
                                                     env["body"], env["v"])
        except KeyError:
            break
        if type(device) is not str or type(seq) is not int or type(rid) is not str or type(stream) is not str \
                or type(v) is not int or (type(ts) is not float and type(ts) is not int) \
                or not 0 <= seq <= MAX_SEQ or not math.isfinite(ts):
            break
        trace, epoch = env.get("trace"), env.get("epoch")
        if "\0" in device or "\0" in rid or "\0" in stream or (type(trace) is str and "\0" in trace) \
                or (type(epoch) is str and "\0" in epoch):
            break
        out.append((device, epoch if type(epoch) is str else None, seq, rid, float(ts), stream,
                    trace if type(trace) is str else None, body))
    else:
        if type(items) is list:
            return out
    return [_as_fields(e) for e in decode_batch(data)]  # raises MalformedEnvelope naming the problem


def _as_fields(e: Envelope) -> tuple[Any, ...]:
    return (e.device, e.epoch, e.seq, e.id, e.ts, e.stream, e.trace, e.body)
