"""The regional store's seam: what a receiver makes of the messages it takes, and the
backends that commit them (``store_sqlite`` for one site, ``store_postgres`` for real
deployments; ``open_store`` picks one by its target).

The topic is the identity: it is what the broker's ACL authenticates. An envelope that names
another device than its topic is kept aside as spoofed and counted, never stored under either
name. Every record a commit holds (new, or a duplicate the store already had) is acknowledged
to its device by epoch and seq once the commit is made.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import msgpack

from edgeloop.runtime.errors import ConfigError, EdgeloopError

from .acks import NO_EPOCH
from .codec import MalformedEnvelope, decode_fields

DATA_TOPIC = re.compile(r"edgeloop/v1/([^/]+)/([^/]+)/data/([^/]+)")
ROW_FIELDS = ("id", "device", "epoch", "seq", "ts", "stream", "trace", "body", "received")


class StoreUnavailable(EdgeloopError):
    """The store cannot commit now (its server is down or restarting); the batch is kept and
    tried again, unacknowledged."""


@dataclass
class Intake:
    """One commit's worth of messages, sorted: rows to insert (``ROW_FIELDS``), envelopes kept
    aside, and what to acknowledge to whom once committed."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    spoofed: list[tuple[float, str, str, str, bytes]] = field(default_factory=list)  # received, topic, sender, claimed, body
    malformed: list[tuple[float, str, str, bytes]] = field(default_factory=list)  # received, topic, reason, payload
    acks: dict[tuple[str, str], dict[str, list[int]]] = field(default_factory=dict)  # (fleet, device) -> epoch -> seqs


@dataclass
class Committed:
    """What one commit did: counts, and the acks to publish now that it is durable."""

    new: int
    duplicates: int
    spoofed: int
    malformed: int
    acks: dict[tuple[str, str], dict[str, list[int]]]


def sort_messages(messages: Sequence[tuple[str, bytes]], received: float | None = None) -> Intake:
    """Decode each ``(topic, payload)``; the identity comes from the topic."""
    now = time.time() if received is None else received
    out = Intake()
    for topic_name, payload in messages:
        m = DATA_TOPIC.fullmatch(topic_name)
        if m is None:
            out.malformed.append((now, topic_name, "not a data topic edgeloop/v1/{fleet}/{device}/data/{stream}",
                                  bytes(payload)))
            continue
        fleet, device, _ = m.groups()
        try:
            envelopes = decode_fields(payload)
        except MalformedEnvelope as exc:
            out.malformed.append((now, topic_name, exc.problem, bytes(payload)))
            continue
        acks = out.acks.setdefault((fleet, device), {})
        pack = msgpack.Packer(use_bin_type=True).pack
        for claimed, epoch, seq, rid, ts, stream, trace, body in envelopes:
            if claimed != device:
                out.spoofed.append((now, topic_name, device, claimed, pack(body)))
                continue
            epoch = epoch or NO_EPOCH
            out.rows.append((rid, device, epoch, seq, ts, stream, trace, pack(body), now))
            acks.setdefault(epoch, []).append(seq)
        if not acks:
            del out.acks[(fleet, device)]
    return out


class Store(Protocol):
    def commit(self, messages: Sequence[tuple[str, bytes]]) -> Committed:
        """Store a batch of messages in one transaction; StoreUnavailable when it cannot."""

    def keep_aside(self, topic: str, payload: bytes, reason: str) -> None:
        """Keep a message that no commit could take with the malformed ones."""

    def stats(self) -> dict[str, Any]: ...

    def ids(self) -> set[str]: ...

    def records_between(self, start: float, end: float) -> Iterator[tuple[str, str, float, bytes]]:
        """(device, stream, ts, body) of the records whose device time is in [start, end)."""

    def close(self) -> None: ...


def device_stats(rows: Sequence[tuple[str, str, int, int, int]], duplicates: dict[str, int],
                 spoofed: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per device: records, duplicates dropped, envelopes it sent in another's name, and per epoch
    the seq span and its gaps (seqs not, or not yet, here). Rows: (device, epoch, count, lo, hi)."""
    devices: dict[str, dict[str, Any]] = {}
    for device, epoch, n, lo, hi in rows:
        d = devices.setdefault(device, {"records": 0, "first_seq": None, "last_seq": None, "gaps": 0,
                                        "duplicates_dropped": 0, "spoofed": 0, "epochs": {}})
        d["records"] += n
        d["epochs"][epoch] = {"records": n, "first_seq": lo, "last_seq": hi, "gaps": hi - lo + 1 - n}
        d["gaps"] += hi - lo + 1 - n
        d["first_seq"] = lo if d["first_seq"] is None else min(d["first_seq"], lo)
        d["last_seq"] = hi if d["last_seq"] is None else max(d["last_seq"], hi)
    for kind, counts in (("duplicates_dropped", duplicates), ("spoofed", spoofed)):
        for device, count in counts.items():
            devices.setdefault(device, {"records": 0, "first_seq": None, "last_seq": None, "gaps": 0,
                                        "duplicates_dropped": 0, "spoofed": 0, "epochs": {}})[kind] = count
    return devices


def open_store(target: str) -> Store:
    """``postgresql://…`` (or ``postgres://``): PostgreSQL; anything else is a SQLite file."""
    if target.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresStore

        return PostgresStore(target)
    if not target:
        raise ConfigError("--db: empty", "give a database file, or postgresql://USER@HOST/DB")
    from .store_sqlite import SqliteStore

    return SqliteStore(target)
