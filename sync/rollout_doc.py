"""The desired rollout of a fleet group: a retained JSON document on
``edgeloop/v1/{fleet}/group/{group}/rollout``.

    {"id": "r-2026-12-04-1", "model": "digits", "version": "1.1.0", "previous": "1.0.0",
     "pct": 5, "salt": "r-2026-12-04-1", "paused": false, "cancelled": false,
     "deadline": 1796500000, "issued": 1796400000}

Each device computes its own cohort: ``blake2b(salt, device) mod 10000 < pct x 100``, so a
rollout widens by republishing the document with a larger ``pct`` (a device in at 5 % is in at
25 %: the same salt keeps the same order). ``paused``: devices not yet switching wait;
``cancelled``: devices stop what they are doing and go back to (or stay on) ``previous``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from edgeloop.runtime.errors import EdgeloopError

MAX_BYTES = 4096
_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class RolloutDocError(EdgeloopError):
    """A rollout document is malformed; the message names the field."""


@dataclass(frozen=True)
class RolloutDoc:
    id: str
    model: str
    version: str
    pct: float
    salt: str
    previous: str | None = None
    paused: bool = False
    cancelled: bool = False
    deadline: float | None = None  # wall time: a device not committed by then counts as failed
    issued: float | None = None

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True).encode()


def cohort_point(device: str, salt: str) -> int:
    """The device's place in 0..9999 for this salt: stable, uniform, its own to compute."""
    digest = hashlib.blake2b(f"{salt}\0{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


def in_cohort(device: str, doc: RolloutDoc) -> bool:
    return cohort_point(device, doc.salt) < round(doc.pct * 100)


def _text(doc: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _TEXT.fullmatch(value):
        raise RolloutDocError(f"rollout document: '{key}' is {value!r:.60}", "give 1-64 letters, digits, '.', '_', "
                              "'+' or '-'")
    return value


def _bool(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise RolloutDocError(f"rollout document: '{key}' is {value!r:.60}", "give true or false")
    return value


def _time(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise RolloutDocError(f"rollout document: '{key}' is {value!r:.60}", "give seconds since the epoch")
    return float(value)


def parse_rollout(payload: bytes) -> RolloutDoc:
    """The document in ``payload``; RolloutDocError naming the field that is wrong."""
    if len(payload) > MAX_BYTES:
        raise RolloutDocError(f"rollout document is {len(payload)} bytes, over {MAX_BYTES}", "publish a smaller one")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RolloutDocError(f"rollout document is not JSON: {exc}", "publish it with `edgeloop fleet rollout`") \
            from None
    if not isinstance(doc, dict):
        raise RolloutDocError("rollout document is not a JSON object", "publish it with `edgeloop fleet rollout`")
    pct = doc.get("pct")
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) or not 0 <= pct <= 100:
        raise RolloutDocError(f"rollout document: 'pct' is {pct!r:.60}", "give a percentage within 0..100")
    rid = _text(doc, "id")
    return RolloutDoc(id=rid, model=_text(doc, "model"), version=_text(doc, "version"), pct=float(pct),
                      salt=_text(doc, "salt", required=False) or rid, previous=_text(doc, "previous", required=False),
                      paused=_bool(doc, "paused"), cancelled=_bool(doc, "cancelled"),
                      deadline=_time(doc, "deadline"), issued=_time(doc, "issued"))
