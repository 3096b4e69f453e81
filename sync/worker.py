"""The agent's sync worker: the outbox, its link to the broker and the local retrieval index
in a child process.

Draining at tens of thousands of records a second and writing vectors are Python work; in the
inference process they would hold the GIL and the model's p99 would wait for it (11.7× its
p99 alone, measured). In a child process run at a lower CPU priority (``nice``, 10 by
default) they take what the inference leaves.

``SyncWorker`` is the agent's end and has the outbox's calls (``enqueue``, ``enqueue_many``,
``stats``), each answered over a socketpair; ``enqueue`` still returns only once the record is
durable (the child answers from the outbox's group commit). ``index_add`` hands vectors to the
index without waiting. If the child dies, callers waiting get ``OutboxError`` and the next call
starts a new child on the same files (logged, counted in ``restarts``).

The child ignores SIGINT and SIGTERM (the agent decides when to stop); it finishes and closes
its files when told to stop or when the socket closes because the agent is gone.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import msgpack

from edgeloop.runtime import logs
from edgeloop.runtime.errors import EdgeloopError

from .outbox import Enqueued, OutboxError
from .sink import Item

log = logging.getLogger("edgeloop.sync-worker")

# A record's stream decides its fate when space runs out: inferences are the bulk and the least
# precious (capped, evicted first); events are kept longest; hard examples are a bounded local
# store that uploads when the link allows.
STREAM_POLICIES = {
    "inferences": {"priority": 0, "max_rows": 100_000},
    "telemetry": {"priority": 1, "max_rows": 20_000},
    "events": {"priority": 5},
    "hard-examples": {"priority": -1, "max_rows": 1000, "max_bytes": 16 * 1024 * 1024},
}


INDEX_BATCH = 256  # vectors stored in one transaction, or
INDEX_GATHER_S = 0.2  # after this long with none arriving


@dataclass(frozen=True)
class SyncSettings:
    data_dir: str
    device: str
    fleet: str
    broker: str = ""  # HOST[:PORT]; empty: records wait in the outbox
    nice: int = 10  # added to the child's niceness: inference keeps the CPU first
    index_max_items: int = 50_000  # per collection; the oldest go first
    drain_per_s: float = 0.0  # a cap on the drain's records per second (0: none)
    protocol: str = "5"  # the link's MQTT version, TLS and credentials (sent over the socket, never argv)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    index_share_every_s: float = 0.0  # > 0: the index's changes go up to the regional index this often
    index_share_labels: bool = False  # labels go up too (ids and vectors always)

    def __repr__(self) -> str:  # never a password in a log line
        return f"SyncSettings({self.data_dir}, {self.fleet}/{self.device}, broker {self.broker or 'none'})"


def _error(exc: BaseException) -> list[Any]:
    if isinstance(exc, EdgeloopError):
        return [type(exc).__name__, exc.problem, exc.fix]
    return [type(exc).__name__, str(exc), None]


def error_class(name: str) -> type[EdgeloopError]:
    """The EdgeloopError subclass called ``name`` (EdgeloopError itself when none is)."""
    # The modules whose errors can come back from the worker, so that their classes exist here.
    import edgeloop.runtime.retrieval.errors  # noqa: F401
    import edgeloop.sync.codec  # noqa: F401
    import edgeloop.sync.outbox  # noqa: F401

    todo: list[type[EdgeloopError]] = [EdgeloopError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return EdgeloopError


def _raised(name: str, problem: str, fix: str | None) -> EdgeloopError:
    """The error the worker sent, as its own type: found by name over the EdgeloopError tree."""
    cls = error_class(name)
    if cls is EdgeloopError and name != "EdgeloopError":
        return EdgeloopError(f"{name}: {problem}", fix)
    try:
        return cls(problem, fix)
    except TypeError:  # a subclass with a constructor of its own
        error = EdgeloopError.__new__(cls)
        EdgeloopError.__init__(error, problem, fix)
        return error


# -- the child ---------------------------------------------------------------------------------


class _Server:
    """In the child: one loop reads requests; the outbox's writer answers enqueues."""

    def __init__(self, conn: Any, settings: SyncSettings) -> None:
        from edgeloop.runtime.retrieval import VectorIndex
        from edgeloop.sync.outbox import Outbox, StreamPolicy

        self.conn = conn
        self.settings = settings
        self.send_lock = threading.Lock()
        data = Path(settings.data_dir)
        self.outbox = Outbox(data / "outbox.db", settings.device,
                             streams={k: StreamPolicy(**v) for k, v in STREAM_POLICIES.items()})
        self.link: Any = None
        if settings.broker:
            from edgeloop.sync.link import LinkConfig, MqttLink
            from edgeloop.sync.mqtt_client import parse_broker

            host, port, fallbacks = parse_broker(settings.broker)
            self.link = MqttLink(self.outbox, LinkConfig(
                host, port, fallbacks=fallbacks, fleet=settings.fleet, device=settings.device,
                max_records_per_s=settings.drain_per_s, protocol=settings.protocol, username=settings.username,
                password=settings.password, ca_file=settings.ca_file, cert_file=settings.cert_file,
                key_file=settings.key_file))
            self.link.start()
        self.index = VectorIndex(data / "index.db")
        self.index_pending: dict[tuple[str, str, str, int], tuple[list[Any], ...]] = {}
        self.index_waiting = 0
        self.index_errors = 0
        self.sharer: Any = None
        self.share_errors = 0
        self.next_share = time.monotonic() + settings.index_share_every_s
        if settings.index_share_every_s > 0:
            from edgeloop.sync.index_share import IndexSharer, SharePolicy

            self.sharer = IndexSharer(self.index, self.outbox, data / "index-shared.json",
                                      SharePolicy(labels=settings.index_share_labels))

    def send(self, message: list[Any]) -> None:
        data = msgpack.packb(message, use_bin_type=True)
        with self.send_lock:
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError):  # the agent is gone; the records are stored all the same
                pass

    def serve(self) -> None:
        self.send([0, True, {"salvage": self.outbox.salvage}])
        while True:
            try:
                # Index writes wait here to be stored together: one transaction for many.
                if self.index_waiting and not self.conn.poll(INDEX_GATHER_S):
                    self.flush_index()
                    continue
                if self.sharer is not None:  # due even while requests keep coming
                    if time.monotonic() >= self.next_share or not self.conn.poll(self.next_share - time.monotonic()):
                        self.share_index()
                        continue
                op, rid, *args = msgpack.unpackb(self.conn.recv_bytes(), raw=False)
            except (EOFError, OSError):
                self.close()  # the agent is gone: store and close what we hold
                return
            if op == "stop":
                self.close()
                self.send([rid, True, None])
                return
            try:
                getattr(self, f"op_{op}")(rid, *args)
            except Exception as exc:  # one bad request is answered; the worker goes on
                self.send([rid, False, _error(exc)])

    def op_enqueue(self, rid: int, items: list[list[Any]], priority: int | None, ttl_s: float | None,
                   trace: str | None) -> None:
        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                self.send([rid, False, _error(result)])
            else:
                self.send([rid, True, [list(r) for r in result]])

        self.outbox.enqueue_then([tuple(item) for item in items], done, priority=priority, ttl_s=ttl_s, trace=trace)

    def op_index(self, rid: int, name: str, model: str, version: str, ids: list[str], vectors: bytes,
                 dim: int, labels: list[str | None], metadata: list[dict[str, Any]]) -> None:
        batch = self.index_pending.setdefault((name, model, version, dim), ([], [], [], []))
        for part, values in zip(batch, (ids, [vectors[i * dim * 4:(i + 1) * dim * 4] for i in range(len(ids))],
                                        labels, metadata)):
            part.extend(values)
        self.index_waiting += len(ids)
        if self.index_waiting >= INDEX_BATCH:
            self.flush_index()

    def flush_index(self) -> None:
        import numpy as np

        from edgeloop.runtime.retrieval.errors import ModelVersionMismatch, UnknownCollection

        pending, self.index_pending, self.index_waiting = self.index_pending, {}, 0
        for (name, model, version, dim), (ids, vectors, labels, metadata) in pending.items():
            try:
                try:
                    collection = self.index.collection(name, model=model, model_version=version)
                except ModelVersionMismatch:
                    if self.index.collection(name).spec.model != model:
                        raise  # another model's collection: not this one's to extend
                    # Another version of the model (a rollout): its embeddings live in another
                    # space, so in a collection of their own beside the first version's.
                    name = versioned_collection(name, version)
                    try:
                        collection = self.index.collection(name, model=model, model_version=version)
                    except UnknownCollection:
                        log.info("index: %s %s embeds into '%s'", model, version, name)
                        collection = self.index.create(name, dim, model=model, model_version=version)
                except UnknownCollection:
                    collection = self.index.create(name, dim, model=model, model_version=version)
                collection.upsert(ids, np.frombuffer(b"".join(vectors), np.float32).reshape(len(ids), dim),
                                  labels=labels, metadata=metadata)
                over = len(collection) - self.settings.index_max_items
                if over > 0:
                    collection.delete(collection.oldest(over))
            except Exception as exc:  # not waited for: said in the log and counted in stats
                self.index_errors += 1
                log.error("index: %d vector(s) for '%s' not stored: %s", len(ids), name, exc)

    def share_index(self) -> None:
        """The index's changes since the last share, into the outbox for the regional index."""
        self.next_share = time.monotonic() + self.settings.index_share_every_s
        self.flush_index()
        try:
            shared = self.sharer.share()
            if shared.deltas:
                log.info("index: %d delta(s) queued for the regional index (%s)", shared.deltas,
                         ", ".join(f"{k} v{v}" for k, v in shared.collections.items()))
        except Exception as exc:  # the outbox full, a damaged index: said, counted, tried next period
            self.share_errors += 1
            log.error("index: sharing with the regional index failed: %s; trying again in %.0f s", exc,
                      self.settings.index_share_every_s)

    def op_stats(self, rid: int) -> None:
        self.flush_index()
        self.send([rid, True, {
            "outbox": self.outbox.stats(),
            "link": self.link.stats() if self.link is not None else None,
            "index": {name: len(self.index.collection(name)) for name in self.index.names()},
            "index_errors": self.index_errors,
            "index_share": dict(self.sharer.stats(), errors=self.share_errors) if self.sharer is not None else None}])

    def close(self) -> None:
        self.flush_index()
        if self.link is not None:
            self.link.stop()
        self.outbox.close()
        self.index.close()


def _child_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        settings = SyncSettings(**json.loads(conn.recv_bytes()))  # first message: the settings
    except (EOFError, OSError):
        return
    if settings.nice:
        os.nice(settings.nice)
    logs.configure(prefix="edgeloop sync-worker")
    try:
        server = _Server(conn, settings)
    except Exception as exc:  # e.g. an outbox that cannot be opened: the agent hears why
        conn.send_bytes(msgpack.packb([0, False, _error(exc)], use_bin_type=True))
        return
    server.serve()


# -- the agent's end -----------------------------------------------------------------------------


class _Call:
    __slots__ = ("event", "ok", "value", "callback")

    def __init__(self, callback: Any = None) -> None:
        self.event = threading.Event()
        self.ok = False
        self.value: Any = None
        self.callback = callback  # called on the reader thread instead of waking a waiter

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value = ok, value
        self.event.set()
        if self.callback is not None:
            try:
                self.callback(ok, value)
            except Exception:  # a caller's bug must not stop the reader
                log.exception("sync worker: a completion callback failed")


def versioned_collection(name: str, version: str | None) -> str:
    """The collection for another version of a model: ``digits`` at 1.1.0 is ``digits_v1_1_0``."""
    import re

    return f"{name}_v{re.sub(r'[^a-z0-9_]', '_', (version or 'none').lower())}"[:64]


class SyncWorker:
    """The outbox, link and index in a child process; see the module's docstring."""

    def __init__(self, settings: SyncSettings, timeout_s: float = 60.0, wait: bool = True) -> None:
        """``wait=False``: return once the child is started; ``wait_ready()`` before its first call
        (the agent starts its camera meanwhile)."""
        self.settings = settings
        self.timeout_s = timeout_s
        self.restarts = 0
        self.salvage: Any = None
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._calls_lock = threading.Lock()
        self._closed = False
        self._wait_at_start = wait
        self._ready: _Call | None = None
        self._start()
        self._wait_at_start = True  # a replacement worker is waited for

    def _start(self) -> None:
        # A fresh interpreter on this module (not fork: the agent has threads; not
        # multiprocessing's spawn, which re-imports the caller's __main__).
        parent, child = socket.socketpair()
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(child.fileno())],
                                      pass_fds=(child.fileno(),))
        child.close()
        self._conn = Connection(parent.detach())
        self._conn.send_bytes(json.dumps(asdict(self.settings)).encode())
        self._ready = _Call()
        self._calls[0] = self._ready
        self._reader = threading.Thread(target=self._read_loop, args=(self._conn,), name="sync-reader", daemon=True)
        self._reader.start()
        if self._wait_at_start:
            self.wait_ready()

    def wait_ready(self) -> "SyncWorker":
        """Until the child has opened its files (raises its error if it could not)."""
        ready = self._ready
        if ready is None:
            return self
        if not ready.event.wait(self.timeout_s) or not ready.ok:
            self._proc.kill()
            self._proc.wait()
            if ready.value is not None and isinstance(ready.value, list):
                raise _raised(*ready.value)
            raise EdgeloopError(f"the sync worker did not start (exit {self._proc.returncode})",
                                "see the log above for its error")
        self.salvage = ready.value.get("salvage")
        self._ready = None
        return self

    def _read_loop(self, conn: Any) -> None:
        while True:
            try:
                rid, ok, value = msgpack.unpackb(conn.recv_bytes(), raw=False)
            except (EOFError, OSError):
                break
            with self._calls_lock:
                call = self._calls.pop(rid, None)
            if call is not None:
                call.settle(ok, value)
        # The child is gone: nobody will answer those still waiting.
        with self._calls_lock:
            waiting, self._calls = list(self._calls.values()), {}
        for call in waiting:
            call.settle(False, ["OutboxError", "the sync worker exited before answering",
                                "retry: a new worker starts on the next call"])

    def _request(self, op: str, *args: Any, wait: bool = True, callback: Any = None) -> Any:
        if self._closed:
            raise OutboxError("the agent's outbox is closed", "open it again")
        with self._send_lock:
            if self._proc.poll() is not None:
                log.error("sync worker: exited with %s; starting a new one on the same files", self._proc.returncode)
                self.restarts += 1
                self._conn.close()
                self._start()
            rid = next(self._ids)
            call = _Call(callback)
            if wait or callback is not None:
                with self._calls_lock:
                    self._calls[rid] = call
            try:
                self._conn.send_bytes(msgpack.packb([op, rid, *args], use_bin_type=True))
            except OSError as exc:  # it died just now: the next call starts a new one
                with self._calls_lock:
                    self._calls.pop(rid, None)
                raise OutboxError(f"the sync worker exited ({exc}); '{op}' was not done",
                                  "retry: a new worker starts on the next call") from exc
        if not wait or callback is not None:
            return None
        if not call.event.wait(self.timeout_s):
            raise OutboxError(f"the sync worker did not answer '{op}' within {self.timeout_s:.0f} s",
                              "check the disk and the log; the record may or may not be stored")
        if not call.ok:
            raise _raised(*call.value)
        return call.value

    # -- the outbox's calls -------------------------------------------------------------------

    def enqueue(self, stream: str, body: Any, *, priority: int | None = None, ttl_s: float | None = None,
                trace: str | None = None) -> Any:
        """Store one record durably; returns once it is on disk (``Enqueued``)."""
        return self.enqueue_many([(stream, body)], priority=priority, ttl_s=ttl_s, trace=trace)[0]

    def enqueue_many(self, items: Iterable[Item], *, priority: int | None = None,
                     ttl_s: float | None = None, trace: str | None = None) -> list[Enqueued]:
        rows = self._request("enqueue", [list(item) for item in items], priority, ttl_s, trace)
        return [Enqueued(*row) for row in rows]

    def enqueue_then(self, items: Iterable[Item], done: Callable[[Sequence[Enqueued] | BaseException], None], *,
                     priority: int | None = None, ttl_s: float | None = None, trace: str | None = None) -> None:
        """Without waiting: ``done`` gets the stored records, or the typed error, once they are
        durable (on the reader thread: it must be quick). A send that fails raises here."""
        def settled(ok: bool, value: Any) -> None:
            done([Enqueued(*row) for row in value] if ok else _raised(*value))

        self._request("enqueue", [list(item) for item in items], priority, ttl_s, trace, callback=settled)

    def stats(self) -> dict[str, Any]:
        """The outbox's stats; the link's under ``link`` (None without a broker), item counts
        of the index's collections under ``index``, the regional share under ``index_share``
        (None when the index is not shared)."""
        s = self._request("stats")
        return {**s["outbox"], "link": s["link"], "index": s["index"], "index_errors": s["index_errors"],
                "index_share": s["index_share"], "worker_restarts": self.restarts}

    # -- the index ------------------------------------------------------------------------------

    def index_add(self, collection: str, model: str, version: str, ids: list[str], vectors: Any,
                  labels: list[str | None] | None = None, metadata: list[dict[str, Any]] | None = None) -> None:
        """Vectors into the local retrieval index, not waited for (errors: log and stats)."""
        import numpy as np

        array = np.ascontiguousarray(vectors, np.float32).reshape(len(ids), -1)
        self._request("index", collection, model, version, list(ids), array.tobytes(), int(array.shape[1]),
                      list(labels or [None] * len(ids)), list(metadata or [{}] * len(ids)), wait=False)

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used (0 where /proc cannot say)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        """Stop the link (what is in flight stays stored), close the files, end the child."""
        if self._closed:
            return
        try:
            self._request("stop")
        except EdgeloopError as exc:
            log.error("sync worker: did not stop cleanly: %s", exc)
        self._closed = True
        try:
            self._proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
