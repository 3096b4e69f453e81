"""Frames on the serial line (see PROTOCOL.md for the bytes).

A frame is ``header | payload | crc32``, COBS-encoded and ended by one zero byte:

- header (7 bytes): version (1), type (1), flags (1), sequence number (2, little-endian),
  payload length (2, little-endian);
- payload: msgpack, at most ``MAX_PAYLOAD`` bytes;
- CRC-32 (IEEE 802.3, the one in zlib) over header and payload, little-endian.

COBS removes every zero from the frame, so a zero on the line always ends a frame: after
garbage or a lost byte the reader is back in step at the next zero. CRC-32 rather than
CRC-16: at a bit-error rate of 1e-3 about half of all 80-byte frames arrive damaged, and a
16-bit check would let one in 65,536 of those through (several per million frames);
32 bits make that one in 4 billion.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterator

import msgpack

VERSION = 1
HEADER = struct.Struct("<BBBHH")  # version, type, flags, seq, length
MAX_PAYLOAD = 1024
MAX_FRAME = HEADER.size + MAX_PAYLOAD + 4  # before COBS
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2  # COBS adds a byte per 254, plus the delimiter


class MsgType(IntEnum):
    HELLO = 1  # both ways: version negotiation; the MCU's carries its boot id
    HEARTBEAT = 2
    SENSOR = 3  # MCU -> host: a window of samples of one stream
    COMMAND = 4  # host -> MCU, acknowledged
    ACK = 5  # MCU -> host: header seq = the command's seq
    EVENT = 6  # MCU -> host
    ERROR = 7  # either way


class Flags:
    RETRANSMIT = 0x01  # a command sent again with the same sequence number


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: Any
    flags: int = 0
    version: int = VERSION


class FrameError(ValueError):
    """A frame that cannot be built (payload too large, not serializable)."""


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the same bytes with no zero among them."""
    out = bytearray()
    for block in data.split(b"\0"):
        # each zero-free run becomes code(len+1) + run; runs longer than 254 are cut
        while len(block) >= 254:
            out.append(255)
            out += block[:254]
            block = block[254:]
        out.append(len(block) + 1)
        out += block
    # The split yields one more run than there are zeros: its code already stands for the end.
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """The bytes ``cobs_encode`` was given, or None when ``data`` is not valid COBS."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        out += data[i + 1:end]
        i = end
        if code != 255 and i < n:  # a block shorter than 254 stood before a zero
            out.append(0)
    return bytes(out)


def encode_frame(type_: int, seq: int, payload: Any = None, flags: int = 0) -> bytes:
    """The bytes to write for one frame, delimiter included."""
    try:
        body = msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FrameError(f"payload cannot be serialized: {exc}") from exc
    if len(body) > MAX_PAYLOAD:
        raise FrameError(f"payload is {len(body)} bytes, over the {MAX_PAYLOAD}-byte frame limit")
    raw = HEADER.pack(VERSION, int(type_), flags, seq & 0xFFFF, len(body)) + body
    return cobs_encode(raw + struct.pack("<I", zlib.crc32(raw))) + b"\0"


def decode_frame(encoded: bytes) -> Frame | str:
    """One frame from the bytes between two delimiters, or why it was rejected."""
    if len(encoded) > MAX_ENCODED:
        return "too long"
    raw = cobs_decode(encoded)
    if raw is None:
        return "bad cobs"
    if len(raw) < HEADER.size + 4:
        return "too short"
    body, (crc,) = raw[:-4], struct.unpack("<I", raw[-4:])
    if zlib.crc32(body) != crc:
        return "bad crc"
    version, type_, flags, seq, length = HEADER.unpack_from(body)
    if version != VERSION:
        return "bad version"
    if length != len(body) - HEADER.size:
        return "bad length"
    try:
        payload = msgpack.unpackb(body[HEADER.size:], raw=False, strict_map_key=False,
                                  max_bin_len=MAX_PAYLOAD, max_str_len=MAX_PAYLOAD)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return "bad payload"
    return Frame(type_, seq, payload, flags, version)


class FrameReader:
    """Splits a byte stream at zero bytes and decodes frames; counts what it rejects.
    Resynchronizes by itself: whatever garbage comes, the next zero starts afresh."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.rejected: dict[str, int] = {}

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened)."""
        self._buf.clear()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while True:
            end = self._buf.find(0)
            if end < 0:
                if len(self._buf) > MAX_ENCODED:  # no delimiter in sight: drop, keep reading
                    self._reject("too long")
                    self._buf.clear()
                return
            chunk = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if not chunk:
                continue  # back-to-back delimiters (a sender may start with one)
            frame = decode_frame(chunk)
            if isinstance(frame, str):
                self._reject(frame)
            else:
                self.frames += 1
                yield frame

    def _reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1
