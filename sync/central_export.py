"""The central export: what the regional tier hands the central cloud, aggregated and
de-identified, as Parquet (``edgeloop regional export``).

One file per region and window, ``{out}/{region}/{window start}-{window end}.parquet``. A row
counts the records of one device, stream and label in one time bucket:

    region, window_start, bucket_start, stream, label, device_key, records

- ``device_key`` is a keyed hash (HMAC-SHA256 with the region's secret, 16 bytes as hex) of the
  device id: stable within a region, so the central side can follow a device's counts, but
  not the id, and not joinable across regions with different secrets.
- ``bucket_start``: device time cut to ``bucket_s`` (5 minutes by default): no exact times.
- k-suppression: a group (bucket, stream, label) that fewer than ``k`` distinct devices
  contributed to is left out entirely; what was left out is counted in the file's metadata.
- ``label``: the body's ``label`` when it has one (inferences, events), else empty. No other
  body field leaves the region.

Idempotent per region and window: the rows are sorted and the file is written whole and
renamed into place, so an export run again over the same records writes the same file (and
says "unchanged"); records that came late make it "replaced". A window that has not closed
yet (its end plus ``grace_s`` still ahead) is refused: it would change as records arrive.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from edgeloop.runtime.durable_file import replace_durably
from edgeloop.runtime.errors import ConfigError

SCHEMA_FIELDS = ("region", "window_start", "bucket_start", "stream", "label", "device_key", "records")


@dataclass
class Exported:
    path: Path
    outcome: str  # "written", "unchanged", "replaced"
    rows: int
    records: int
    suppressed_groups: int
    suppressed_records: int


def device_key(secret: bytes, device: str) -> str:
    return hmac.new(secret, device.encode(), hashlib.sha256).hexdigest()[:32]


def _label(body: bytes) -> str:
    try:
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return ""
    label = value.get("label") if isinstance(value, dict) else None
    return label[:64] if isinstance(label, str) else ""


def read_secret(path: str | Path) -> bytes:
    p = Path(path)
    try:
        mode = p.stat().st_mode
        secret = p.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"--secret-file: {p} cannot be read ({exc.strerror})",
                          "make one: head -c 32 /dev/urandom | base64 > regional.secret; chmod 600 it") from exc
    if mode & 0o077:
        raise ConfigError(f"--secret-file: {p} is readable by others (mode {mode & 0o777:o})", f"chmod 600 {p}")
    if len(secret) < 16:
        raise ConfigError(f"--secret-file: {p} holds {len(secret)} bytes; a keyed hash wants at least 16",
                          "make one: head -c 32 /dev/urandom | base64 > regional.secret")
    return secret


def last_closed_window(window_s: float, grace_s: float, now: float | None = None) -> float:
    """The start of the latest window that has closed."""
    now = time.time() if now is None else now
    return ((now - grace_s) // window_s) * window_s - window_s


def export_window(store: Any, out: str | Path, region: str, secret: bytes, window_start: float,
                  window_s: float = 3600.0, bucket_s: float = 300.0, k: int = 5, grace_s: float = 300.0,
                  now: float | None = None) -> Exported:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .topics import check_name

    check_name("--region", region)  # a folder name too
    if window_s <= 0 or bucket_s <= 0 or window_s % bucket_s:
        raise ConfigError(f"window {window_s:g} s, bucket {bucket_s:g} s: the window must be a whole number "
                          "of buckets", "for example --window-s 3600 --bucket-s 300")
    if window_start % window_s:
        raise ConfigError(f"window start {window_start:g} is not on a {window_s:g}-second boundary",
                          f"use a multiple of {window_s:g} (e.g. {window_start - window_start % window_s:.0f})")
    if k < 2:
        raise ConfigError(f"k = {k}: a group of one device identifies it", "use k of 2 or more (default 5)")
    end = window_start + window_s
    now = time.time() if now is None else now
    if end + grace_s > now:
        raise ConfigError(f"the window ending {end:.0f} has not closed (records may still arrive until "
                          f"{end + grace_s:.0f})", "export closed windows only, or lower --grace-s")
    counts: dict[tuple[float, str, str, str], int] = defaultdict(int)
    keys: dict[str, str] = {}
    for device, stream, ts, body in store.records_between(window_start, end):
        key = keys.get(device) or keys.setdefault(device, device_key(secret, device))
        counts[(window_start + ((ts - window_start) // bucket_s) * bucket_s, stream, _label(body), key)] += 1
    devices_in: dict[tuple[float, str, str], int] = defaultdict(int)
    for bucket, stream, label, _ in counts:
        devices_in[(bucket, stream, label)] += 1
    kept = sorted(item for item in counts.items() if devices_in[item[0][:3]] >= k)
    suppressed = [n for group, n in devices_in.items() if n < k]
    suppressed_records = sum(n for key, n in counts.items() if devices_in[key[:3]] < k)
    table = pa.table({
        "region": pa.array([region] * len(kept), pa.string()),
        "window_start": pa.array([window_start] * len(kept), pa.float64()),
        "bucket_start": pa.array([g[0] for g, _ in kept], pa.float64()),
        "stream": pa.array([g[1] for g, _ in kept], pa.string()),
        "label": pa.array([g[2] for g, _ in kept], pa.string()),
        "device_key": pa.array([g[3] for g, _ in kept], pa.string()),
        "records": pa.array([n for _, n in kept], pa.int64()),
    }).replace_schema_metadata({
        "edgeloop.export": "1", "region": region, "window_start": f"{window_start:.0f}", "window_s": f"{window_s:g}",
        "bucket_s": f"{bucket_s:g}", "k": str(k), "suppressed_groups": str(len(suppressed)),
        "suppressed_records": str(suppressed_records)})
    folder = Path(out) / region
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{window_start:.0f}-{end:.0f}.parquet"
    outcome = "written"
    if path.exists():
        try:
            old = pq.read_table(path)
            outcome = "unchanged" if old.equals(table) and old.schema.metadata == table.schema.metadata else "replaced"
        except (OSError, pa.ArrowInvalid):
            outcome = "replaced"  # a damaged file from an interrupted copy elsewhere: written again
    if outcome != "unchanged":
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        replace_durably(path, sink.getvalue().to_pybytes())
    return Exported(path, outcome, len(kept), sum(n for _, n in kept), len(suppressed), suppressed_records)
