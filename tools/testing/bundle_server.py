"""A static HTTP server on loopback for TUF repositories and bundles, with fault knobs.

It serves a directory as any static server would (``Range``, ``If-Range`` against its
``ETag``, ``206`` with ``Content-Range``), and on command misbehaves the ways real servers and
links do: a response cut after N bytes, a wrong ``Content-Range``, a ``200`` for a range,
a status (``404``, ``503`` with ``Retry-After``) for some requests, a slow link. It counts
what it sent, per path, so a test can hold the client to its byte budget.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Knobs:
    cuts: deque[int] = field(default_factory=deque)  # the next responses end after this many body bytes
    statuses: deque[int] = field(default_factory=deque)  # the next requests answered with these statuses
    always_status: dict[str, int] = field(default_factory=dict)  # path suffix -> status, every time
    wrong_content_range: int = 0  # the next N ranged responses claim a range off by one
    ignore_range: int = 0  # the next N ranged requests get the whole file (200)
    slow_bps: float | None = None  # throttle every body to this rate
    retry_after_s: float | None = None  # sent with a 503 or 429
    etag_salt: str = ""  # change it and every ETag changes (the file "changed")


class BundleServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.knobs = Knobs()
        self.sent: Counter[str] = Counter()  # body bytes sent per path
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                server._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="bundle-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "BundleServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def etag(self, path: Path) -> str:
        st = path.stat()
        return '"' + hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{self.knobs.etag_salt}".encode()).hexdigest()[:16] + '"'

    def _take(self, attr: str) -> Any:
        with self._lock:
            value = getattr(self.knobs, attr)
            if isinstance(value, deque):
                return value.popleft() if value else None
            if value:
                setattr(self.knobs, attr, value - 1)
                return True
            return False

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        rel = h.path.split("?", 1)[0].lstrip("/")
        path = (self.root / rel).resolve()
        ranged = h.headers.get("Range")
        status = self._take("statuses")
        for suffix, code in self.knobs.always_status.items():
            if rel.endswith(suffix):
                status = code
        if status is None and (self.root not in path.parents or not path.is_file()):
            status = 404
        if status is not None:
            self._record(rel, ranged, status)
            h.send_response(status)
            if status in (429, 503) and self.knobs.retry_after_s is not None:
                h.send_header("Retry-After", f"{self.knobs.retry_after_s:g}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = path.read_bytes()
        etag = self.etag(path)
        start, code = 0, 200
        if ranged and ranged.startswith("bytes=") and ranged.endswith("-") and not self._take("ignore_range"):
            if_range = h.headers.get("If-Range")
            if if_range is None or if_range == etag:
                try:
                    start = int(ranged[6:-1])
                except ValueError:
                    start = -1
                if not 0 <= start < len(data):
                    self._record(rel, ranged, 416)
                    h.send_response(416)
                    h.send_header("Content-Range", f"bytes */{len(data)}")
                    h.send_header("Content-Length", "0")
                    h.end_headers()
                    return
                code = 206
        body = data[start:]
        h.send_response(code)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        if code == 206:
            shown = start + 1 if self._take("wrong_content_range") else start
            h.send_header("Content-Range", f"bytes {shown}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        self._record(rel, ranged, code)
        cut = self._take("cuts")
        if cut is not None:
            body = body[:cut]
        self._send(h, rel, body)
        if cut is not None:
            h.close_connection = True
            try:
                h.wfile.flush()
                h.connection.shutdown(2)  # the link drops mid-body
            except OSError:
                pass

    def _send(self, h: BaseHTTPRequestHandler, rel: str, body: bytes) -> None:
        slow = self.knobs.slow_bps
        # A slow link trickles: about ten pieces a second, not one burst and a long silence.
        step = 16 * 1024 if not slow else int(max(256, min(16 * 1024, slow / 10)))
        for at in range(0, len(body), step):
            piece = body[at:at + step]
            try:
                h.wfile.write(piece)
            except OSError:
                return
            with self._lock:
                self.sent[rel] += len(piece)
            if self.knobs.slow_bps:
                time.sleep(len(piece) / self.knobs.slow_bps)

    def _record(self, rel: str, ranged: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((rel, ranged, status))
