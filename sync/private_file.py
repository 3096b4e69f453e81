"""Secrets on disk (TLS private keys, MQTT password files, the operator's signing key) are
refused when another user may read them."""

from __future__ import annotations

import stat
from pathlib import Path

from edgeloop.runtime.errors import ConfigError


def check_private_file(path: Path, key: str) -> None:
    """A private key that group or others may read (or that is missing) is refused: a key once
    read by another user is not private any more."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{key}: {path} cannot be read ({exc.strerror})", "give the path of the private key") \
            from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{key}: {path} may be read or changed by others (mode {stat.S_IMODE(mode):03o})",
                          f"chmod 600 {path}, and replace the secret if others may have read it")
