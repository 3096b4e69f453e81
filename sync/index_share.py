"""A device's index changes, sent up through the outbox to the regional index.

``IndexSharer.share()`` exports each collection's changes since the version it last shared,
as deltas small enough for one outbox record each, on the ``index`` stream: the outbox keeps
them through network loss and the regional commit ack says when they are in. What leaves the
device is ids and vectors, plus the labels and metadata keys the policy names; never sources
or documents.

The version shared is noted after the enqueue is durable: a crash in between sends the same
changes again, which the regional index applies once (each row keeps its delta's version).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.runtime.durable_file import replace_durably
from edgeloop.runtime.retrieval import VectorIndex, export_delta_chunks

from .codec import MAX_BODY_BYTES
from .outbox import Outbox
from .topics import INDEX_STREAM

log = logging.getLogger("edgeloop.index")


@dataclass(frozen=True)
class SharePolicy:
    """What of the index leaves the device: always ids and vectors; ``labels`` and the
    ``metadata`` keys named here only when asked. ``collections``: which (empty: all those
    that name their embedding model)."""

    labels: bool = False
    metadata: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    chunk_bytes: int = MAX_BODY_BYTES // 2


@dataclass
class Shared:
    deltas: int = 0
    collections: dict[str, int] = field(default_factory=dict)  # name -> version now shared
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why not


class IndexSharer:
    def __init__(self, index: VectorIndex, outbox: Outbox, state_path: str | Path,
                 policy: SharePolicy = SharePolicy()) -> None:
        self.index, self.outbox, self.policy = index, outbox, policy
        self.state_path = Path(state_path)
        self._said: set[str] = set()

    def _state(self) -> dict[str, int]:
        try:
            data = json.loads(self.state_path.read_text())
            return {k: int(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:  # damaged: share everything again (applied once)
            log.warning("index share: %s is unreadable (%s); sharing every collection from the start",
                        self.state_path, exc)
            return {}

    def _save(self, state: dict[str, int]) -> None:
        replace_durably(self.state_path, json.dumps(state).encode())

    def share(self) -> Shared:
        """Enqueue what changed since the last share; returns what was sent and skipped."""
        state = self._state()
        out = Shared()
        names = self.policy.collections or tuple(self.index.names())
        for name in names:
            collection = self.index.collection(name)
            spec = collection.spec
            if not spec.model or not spec.model_version:
                out.skipped[name] = "the collection names no embedding model and version"
                if name not in self._said:  # said once, not every period
                    self._said.add(name)
                    log.warning("index share: '%s' is not shared: %s (vectors of unknown models are not "
                                "comparable regionally)", name, out.skipped[name])
                continue
            since = state.get(name, 0)
            if spec.version <= since:
                continue
            keys = tuple(k for k in self.policy.metadata if k in spec.metadata)
            version, chunks = export_delta_chunks(collection, since=since, metadata_keys=keys,
                                                  labels=self.policy.labels, max_bytes=self.policy.chunk_bytes)
            self.outbox.enqueue_many((INDEX_STREAM, chunk) for chunk in chunks)  # durable on return
            state[name] = version
            self._save(state)
            out.deltas += len(chunks)
            out.collections[name] = version
        return out

    def stats(self) -> dict[str, Any]:
        return {"shared_versions": self._state(), "policy": {"labels": self.policy.labels,
                                                             "metadata": list(self.policy.metadata)}}
