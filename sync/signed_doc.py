"""Desired documents signed by the fleet operator: ed25519 over the exact bytes of a payload
that names its kind, its topic and a version that only grows.

On the wire (a retained MQTT payload)::

    {"edgeloop_signed": 1, "keyid": "3f2a…", "sig": "<base64>", "payload": "<base64 of JSON>"}

    payload: {"kind": "config", "topic": "edgeloop/v1/demo/gw-1/config", "version": 1796400000123456,
              "issued": 1796400000.1, "body": {...}}   (a null body withdraws the document)

The signature covers ``DOMAIN + payload``; the payload binds the document to the topic it must
arrive on (a group's config replayed onto a device, or a config onto the rollout topic, is
refused) and the version to the ``VersionBook`` (an older document, or a different one under a
version already seen, is a replay). The device holds only public keys; the private key stays
with the operator, off the broker, so neither the broker nor anyone the ACL lets publish there
can reconfigure a device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeloop.runtime.durable_file import replace_durably
from edgeloop.runtime.errors import ConfigError, EdgeloopError
from edgeloop.sync.private_file import check_private_file

log = logging.getLogger("edgeloop.desired")

DOMAIN = b"edgeloop desired document v1\0"
MAX_ENVELOPE = 96 * 1024  # a 64 KiB config in base64 and the envelope around it
MAX_VERSION = 2**63 - 1
KINDS = ("config", "rollout")


class SignatureError(EdgeloopError):
    """A desired document is not signed, signed by a key the device does not trust, altered,
    meant for another topic, or older than the one in force; the message says which."""


@dataclass(frozen=True)
class Opened:
    """A verified document: its body (None: withdrawn) and where it came from."""
    kind: str
    topic: str
    version: int
    issued: float
    body: dict[str, Any] | None
    keyid: str
    digest: str  # sha256 of the payload: the same version twice must be the same document

    def body_bytes(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def is_signed(payload: bytes) -> bool:
    """Looks like an envelope (cheap: for tools that read documents of either kind)."""
    return payload[:1] == b"{" and b'"edgeloop_signed"' in payload[:200]


def sign(key: Ed25519PrivateKey, kind: str, topic: str, body: dict[str, Any] | None, version: int,
         issued: float | None = None) -> bytes:
    """The envelope of ``body`` for ``topic`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version {version} is out of range")
    payload = json.dumps({"kind": kind, "topic": topic, "version": version,
                          "issued": time.time() if issued is None else issued, "body": body},
                         sort_keys=True, separators=(",", ":")).encode()
    envelope = {"edgeloop_signed": 1, "keyid": key_id(key.public_key()),
                "sig": base64.b64encode(key.sign(DOMAIN + payload)).decode(),
                "payload": base64.b64encode(payload).decode()}
    return json.dumps(envelope).encode()


def next_version(previous: int | None) -> int:
    """Microseconds since the epoch, or one past ``previous`` when the clock is behind it."""
    now = time.time_ns() // 1000
    return now if previous is None or now > previous else previous + 1


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"the signed document's '{what}' is not text", "publish it with `edgeloop fleet`")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"the signed document's '{what}' is not base64", "publish it with `edgeloop fleet`") \
            from None


def _envelope(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_ENVELOPE:
        raise SignatureError(f"the document is {len(payload)} bytes, over {MAX_ENVELOPE}", "send a smaller one")
    try:
        envelope = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        envelope = None
    if not isinstance(envelope, dict) or envelope.get("edgeloop_signed") != 1:
        raise SignatureError("the document is not signed",
                             "sign it with the fleet operator's key (`edgeloop fleet … --key`)")
    return envelope


def _payload(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SignatureError("the signed payload is not JSON", "publish it with `edgeloop fleet`") from None
    if not isinstance(doc, dict):
        raise SignatureError("the signed payload is not a JSON object", "publish it with `edgeloop fleet`")
    return doc


def read_unverified(payload: bytes) -> tuple[int | None, bytes]:
    """(version, body bytes) of an envelope without checking its signature, for the operator's
    own tools reading back what is retained; an unsigned document is (None, itself)."""
    if not is_signed(payload):
        return None, payload
    try:
        doc = _payload(_b64(_envelope(payload).get("payload"), "payload"))
    except SignatureError:
        return None, payload
    version = doc.get("version") if isinstance(doc.get("version"), int) else None
    body = doc.get("body")
    return version, (b"" if body is None else json.dumps(body).encode())


class Verifier:
    """The operator's public keys, and the check of one document against them."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        if not keys:
            raise ValueError("a verifier needs at least one key")
        self.keys = {key_id(k): k for k in keys}

    def open(self, topic: str, payload: bytes) -> Opened:
        """The verified document that ``payload`` carries for ``topic``; SignatureError otherwise."""
        envelope = _envelope(payload)
        keyid = envelope.get("keyid")
        key = self.keys.get(keyid) if isinstance(keyid, str) else None
        if key is None:
            raise SignatureError(f"the document is signed by key {str(keyid)[:16]!r}, which this device does not "
                                 f"trust (it trusts {', '.join(sorted(self.keys))})",
                                 "sign it with the fleet operator's key, or add its public key to mqtt.operator_keys")
        raw = _b64(envelope.get("payload"), "payload")
        try:
            key.verify(_b64(envelope.get("sig"), "sig"), DOMAIN + raw)
        except InvalidSignature:
            raise SignatureError(f"the signature by key {keyid} does not match the document (altered on the way?)",
                                 "publish it again, signed, with `edgeloop fleet`") from None
        doc = _payload(raw)
        kind, where, version, body = doc.get("kind"), doc.get("topic"), doc.get("version"), doc.get("body")
        if where != topic:
            raise SignatureError(f"the document was signed for {str(where)[:120]!r}, not {topic!r}",
                                 "publish each document on the topic it was signed for")
        if kind not in KINDS:
            raise SignatureError(f"the signed document's kind is {str(kind)[:20]!r}", f"use one of {KINDS}")
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
            raise SignatureError(f"the signed document's version is {str(version)[:30]!r}",
                                 "give a whole number that grows")
        if body is not None and not isinstance(body, dict):
            raise SignatureError("the signed document's body is not a JSON object or null",
                                 "publish it with `edgeloop fleet`")
        issued = doc.get("issued")
        issued = float(issued) if isinstance(issued, (int, float)) and not isinstance(issued, bool) else 0.0
        return Opened(kind, topic, version, issued, body, keyid, hashlib.sha256(raw).hexdigest())


class VersionBook:
    """The newest version taken per topic, kept in a small file replaced durably, so that a
    restart does not reopen the door to an older document."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, tuple[int, str]] = {}
        self.problem = ""
        try:
            table = json.loads(path.read_text())
            self.seen = {t: (int(v[0]), str(v[1])) for t, v in table.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            # Refusing every document until someone mends a file would strand the device. Started
            # afresh, it takes the newest signed document the broker holds; an older one could be
            # replayed only by someone who could also damage this file.
            self.problem = f"{path} was unreadable ({exc}); the versions are learnt again"
            log.error("desired documents: %s", self.problem)

    def check(self, doc: Opened) -> bool:
        """True for a newer document, False for the one taken already; SignatureError for a replay."""
        seen = self.seen.get(doc.topic)
        if seen is None or doc.version > seen[0]:
            return True
        if doc.version == seen[0] and doc.digest == seen[1]:
            return False
        if doc.version == seen[0]:
            raise SignatureError(f"version {doc.version} on {doc.topic} was taken already for another document",
                                 "publish with `edgeloop fleet`, which gives every document a new version")
        raise SignatureError(f"version {doc.version} on {doc.topic} is older than version {seen[0]}, in force (a replay?)",
                             "publish a newer document with `edgeloop fleet`")

    def take(self, doc: Opened) -> None:
        self.seen[doc.topic] = (doc.version, doc.digest)
        replace_durably(self.path, json.dumps({t: list(v) for t, v in self.seen.items()}).encode())


class Gate:
    """What a device does with each desired document: verified, of the kind its topic carries,
    and not older than the newest taken (which it becomes)."""

    def __init__(self, verifier: Verifier, book: VersionBook) -> None:
        self.verifier = verifier
        self.book = book
        self.refused = 0
        self.last_refusal = ""

    def open(self, topic: str, payload: bytes, kind: str) -> Opened:
        try:
            doc = self.verifier.open(topic, payload)
            if doc.kind != kind:
                raise SignatureError(f"a {doc.kind} document arrived on {topic}, which carries {kind} documents",
                                     "publish it with `edgeloop fleet`")
            if self.book.check(doc):
                self.book.take(doc)
        except SignatureError as exc:
            self.refused += 1
            self.last_refusal = str(exc)
            raise
        return doc


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The operator's key (PEM, unencrypted), refused when others may read it."""
    path = Path(path).expanduser()
    check_private_file(path, "--key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--key: {path} is not a PEM private key ({exc})",
                          "make one with `edgeloop fleet keygen`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key: {path} is not an ed25519 key", "make one with `edgeloop fleet keygen`")
    return key


def load_public_key(path: str | Path, key: str = "mqtt.operator_keys") -> Ed25519PublicKey:
    path = Path(path).expanduser()
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {path} is not a PEM public key ({exc})",
                          "give the .pub file that `edgeloop fleet keygen` wrote") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigError(f"{key}: {path} is not an ed25519 public key",
                          "give the .pub file that `edgeloop fleet keygen` wrote")
    return public


def write_keypair(private_path: Path) -> tuple[Path, str]:
    """A new ed25519 key: ``private_path`` (mode 600, refused if it exists) and ``.pub`` beside."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{private_path} exists", "give another path; an operator key is never overwritten") \
            from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path = private_path.with_name(private_path.name.removesuffix(".key") + ".pub")
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path, key_id(key.public_key())
