"""The topic convention (``edgeloop/v1/{fleet}/{device}/{kind}``) and the names that go in it.

A device, fleet or group name is one topic level: letters, digits, ``.``, ``_`` and ``-``, at
most 64, starting with a letter or digit. ``/`` would move a device's topics where no receiver
listens, ``+`` and ``#`` are wildcards a broker refuses in a publish, and ``group`` is the level
that group documents use; all are refused before anything starts.
"""

from __future__ import annotations

import re

from edgeloop.runtime.errors import ConfigError

DEFAULT_FLEET = "demo"  # the agent's, the receiver's and `outbox drain`'s default alike
INDEX_STREAM = "index"  # the outbox stream that carries a device's index deltas to the regional index
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = ("group",)


def check_name(key: str, value: object) -> str:
    """``value`` if it is a valid topic level, else ConfigError naming ``key`` and the fix."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or value in RESERVED:
        why = "is reserved" if value in RESERVED else "cannot be one MQTT topic level"
        raise ConfigError(f"{key}: {value!r} {why}",
                          "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                          f"(not {', '.join(repr(r) for r in RESERVED)})")
    return value


def topic(fleet: str, device: str, kind: str) -> str:
    """``edgeloop/v1/{fleet}/{device}/{kind}``, the convention of the design handbook."""
    return f"edgeloop/v1/{fleet}/{device}/{kind}"


def has_wildcard(name: str) -> bool:
    """A topic a client may not publish to (MQTT forbids wildcards and NUL in a topic name)."""
    return not name or "+" in name or "#" in name or "\0" in name
