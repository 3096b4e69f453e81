"""The regional commit acknowledgement: what the regional store has committed, sent back to the
device on ``edgeloop/v1/{fleet}/{device}/ack`` so that its outbox can delete those records.

One ack names one outbox epoch and the committed seqs as ranges, ``{v, epoch, ranges: [[lo,
hi], ...]}`` in msgpack: a batch of 1,000 consecutive records acks in a few bytes. Acks come
from the network, so decoding is bounded and every field is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import msgpack

from edgeloop.runtime.errors import EdgeloopError

VERSION = 1
MAX_ACK_BYTES = 64 * 1024
MAX_RANGES = 4096
NO_EPOCH = ""  # the epoch of records from a sender that named none


class MalformedAck(EdgeloopError):
    """An ack payload that does not decode, or is not one."""


@dataclass(frozen=True)
class CommitAck:
    epoch: str
    ranges: tuple[tuple[int, int], ...]

    def seqs(self) -> list[int]:
        return [s for lo, hi in self.ranges for s in range(lo, hi + 1)]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``[lo, hi]`` runs of ``seqs``."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def encode_ack(epoch: str | None, seqs: Iterable[int]) -> bytes:
    return msgpack.packb({"v": VERSION, "epoch": epoch or NO_EPOCH, "ranges": [list(r) for r in ranges(seqs)]})


def decode_ack(data: bytes, max_span: int = 1_000_000) -> CommitAck:
    """A CommitAck; MalformedAck naming what is wrong. ``max_span`` bounds the seqs one ack may
    name, so a hostile ack cannot make the device build a list of billions."""
    if len(data) > MAX_ACK_BYTES:
        raise MalformedAck(f"ack is {len(data)} bytes, over {MAX_ACK_BYTES}", "check the regional receiver")
    try:
        doc = msgpack.unpackb(data, raw=False, max_array_len=MAX_RANGES, max_map_len=16, max_str_len=256,
                              max_bin_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedAck(f"ack does not decode as msgpack: {exc}", "check the regional receiver") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("epoch"), str) or not isinstance(doc.get("ranges"), list):
        raise MalformedAck("ack is not a map with 'epoch' (text) and 'ranges' (an array)",
                           "check the regional receiver's version")
    out, span = [], 0
    for r in doc["ranges"]:
        if (not isinstance(r, list) or len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                or not 0 <= r[0] <= r[1]):
            raise MalformedAck(f"ack range {r!r} is not [lo, hi] with 0 <= lo <= hi", "check the regional receiver")
        span += r[1] - r[0] + 1
        if span > max_span:
            raise MalformedAck(f"ack names more than {max_span} seqs", "check the regional receiver")
        out.append((r[0], r[1]))
    return CommitAck(doc["epoch"], tuple(out))
