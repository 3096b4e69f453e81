"""Resumable download of one bundle file, verified against the length and hashes TUF signed.

python-tuf's ``download_target`` starts over on every cut; a camera on a cellular link
fetching a 20 MB model must not. The file grows as ``NAME.part`` beside a small state file
(``NAME.part.json``: the URL, the server's validator, the durable offset and what the file
must hash to). A later attempt, in this process or after a restart, asks for the rest:

- ``Range: bytes=OFFSET-`` with ``If-Range: VALIDATOR``; only a ``206`` whose
  ``Content-Range`` is exactly ``bytes OFFSET-(LENGTH-1)/LENGTH`` is appended. A ``200`` means
  the server sent the whole file (it ignored the range, or the file changed): start over
  with it. Anything else is discarded.
- Errors are classified: ``404``/``410``/``401``/``403`` fail for good after a few tries;
  ``5xx``, ``429``, timeouts and cuts back off (doubling, capped, jittered; ``Retry-After``
  honoured up to the cap). A download that stays under ``low_speed_bps`` for
  ``low_speed_s`` is cut and retried.
- A budget per deployment: bytes and attempts. Past it the fetch fails, with the reason.
- The offset is made durable (fsync of the data, then of the state) every
  ``sync_every_bytes``; after a power cut the file is cut back to the last durable offset.
- Done: length and sha256 checked, fsync, ``os.replace`` to the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import urllib3

from edgeloop.runtime.durable_file import replace_durably
from edgeloop.runtime.errors import EdgeloopError

log = logging.getLogger("edgeloop.rollout")

PERMANENT_STATUSES = frozenset({401, 403, 404, 410})
CHUNK = 64 * 1024


class FetchError(EdgeloopError):
    """A download failed. ``permanent``: asking again will not help (404, a budget spent)."""

    def __init__(self, problem: str, fix: str | None = None, permanent: bool = False, reason: str = "fetch") -> None:
        super().__init__(problem, fix)
        self.permanent = permanent
        self.reason = reason  # a short code for the reported document


class FetchCancelled(FetchError):
    """The deployment was cancelled while downloading; the partial file is kept."""


@dataclass(frozen=True)
class FetchPolicy:
    permanent_tries: int = 3  # a 404 (or 410, 401, 403) this many times in a row: failed
    max_attempts: int = 50  # requests per deployment
    byte_budget_factor: float = 3.0  # bytes fetched per deployment at most, x the file's length
    byte_budget_extra: int = 1 << 20
    backoff_s: float = 0.5
    backoff_cap_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    low_speed_bps: float = 1024.0  # slower than this ...
    low_speed_s: float = 30.0  # ... for this long: cut and retried
    sync_every_bytes: int = 1 << 20
    sync_every_s: float = 1.0


@dataclass
class Progress:
    """What a fetch has done so far: in metrics and ``edgeloop status``."""

    length: int
    have: int = 0  # bytes of the file on disk
    fetched: int = 0  # bytes received over the network for this deployment (resends included)
    attempts: int = 0
    restarts: int = 0  # times the file started over from byte 0
    rate_bps: float = 0.0
    last_error: str | None = None

    def eta_s(self) -> float | None:
        return (self.length - self.have) / self.rate_bps if self.rate_bps > 0 else None

    def as_dict(self) -> dict[str, object]:
        eta = self.eta_s()
        return {"length": self.length, "have": self.have, "fetched": self.fetched, "attempts": self.attempts,
                "restarts": self.restarts, "rate_bps": round(self.rate_bps, 1),
                "eta_s": round(eta, 1) if eta is not None else None, "last_error": self.last_error}


class _Retry(Exception):
    """This attempt failed; try again after a back-off (``wait_s`` when the server said)."""

    def __init__(self, reason: str, wait_s: float | None = None, permanent_status: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s
        self.permanent_status = permanent_status


@dataclass
class _Download:
    """One file being fetched: where it grows, its durable state, its running hash."""

    url: str
    part: Path
    state_path: Path
    length: int
    state: dict
    digest: "hashlib._Hash"
    progress: Progress
    budget: int

    def restart(self) -> None:
        with open(self.part, "wb"):
            pass
        self.state["offset"], self.state["validator"] = 0, None
        self.digest = hashlib.sha256()
        self.progress.have = 0
        self.progress.restarts += 1
        _write_state(self.state_path, self.state)

    def sync(self, f) -> None:
        f.flush()
        os.fsync(f.fileno())  # the data first: the state must never claim bytes not on disk
        self.state["offset"] = self.progress.have
        _write_state(self.state_path, self.state)


class Fetcher:
    def __init__(self, policy: FetchPolicy | None = None, pool: urllib3.PoolManager | None = None) -> None:
        self.policy = policy or FetchPolicy()
        self.pool = pool or urllib3.PoolManager(retries=False)
        self._cancel = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None

    def cancel(self) -> None:
        """Stop the fetch under way (it raises FetchCancelled; the partial file stays), at once:
        a read waiting on a slow link is woken by shutting its socket down."""
        self._cancel.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # noqa: BLE001 (already closed: nothing left to wake)
                pass

    def fetch(self, url: str, dest: Path, length: int, sha256: str, progress: Progress | None = None) -> Path:
        """``url`` to ``dest``, resuming a ``dest.part`` of the same target. Returns ``dest``."""
        dest = Path(dest)
        p = self.policy
        part, state_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
        state = _resume_state(part, state_path, url, length, sha256)
        progress = progress or Progress(length)
        progress.have = state["offset"]
        d = _Download(url, part, state_path, length, state, _hash_prefix(part, state["offset"]), progress,
                      int(length * p.byte_budget_factor) + p.byte_budget_extra)
        permanent_in_a_row, backoff = 0, p.backoff_s
        while progress.have < length:
            if self._cancel.is_set():
                raise FetchCancelled(f"download of {url} cancelled at {progress.have} of {length} bytes",
                                     "the partial file is kept for a later deployment", reason="cancelled")
            if progress.attempts >= p.max_attempts:
                raise FetchError(f"download of {url}: {progress.attempts} attempts without the whole file "
                                 f"(last: {progress.last_error})", "check the server; the deployment has failed",
                                 permanent=True, reason="attempt budget")
            if progress.fetched >= d.budget:
                raise FetchError(f"download of {url}: {progress.fetched} bytes fetched for a {length}-byte file, "
                                 f"over the budget of {d.budget}", "check the server or the link", permanent=True,
                                 reason="byte budget")
            progress.attempts += 1
            try:
                self._attempt(d)
                permanent_in_a_row, backoff = 0, p.backoff_s
            except _Retry as exc:
                progress.last_error = exc.reason
                permanent_in_a_row = permanent_in_a_row + 1 if exc.permanent_status else 0
                if permanent_in_a_row >= p.permanent_tries:
                    raise FetchError(f"download of {url}: {exc.reason} ({permanent_in_a_row} times)",
                                     "publish the file, or fix the repository URL", permanent=True,
                                     reason=f"http {exc.reason.split(' ')[0]}") from None
                if exc.wait_s is not None:
                    wait = min(p.backoff_cap_s, exc.wait_s)
                else:
                    wait = min(p.backoff_cap_s, backoff) * random.uniform(0.5, 1.0)
                    backoff = min(p.backoff_cap_s, backoff * 2)
                if wait:
                    log.info("rollout: %s; retrying in %.1f s", exc.reason, wait)
                    self._cancel.wait(wait)
        if d.digest.hexdigest() != sha256:
            d.restart()  # what is on disk is not the file: nothing of it is worth resuming
            raise FetchError(f"download of {url}: sha256 {d.digest.hexdigest()[:16]}… is not the signed "
                             f"{sha256[:16]}…", "the repository serves another file than it signed",
                             permanent=False, reason="hash mismatch")
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        state_path.unlink(missing_ok=True)
        return dest

    def _attempt(self, d: _Download) -> None:
        p = self.policy
        offset, length = d.state["offset"], d.length
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if d.state.get("validator"):
                headers["If-Range"] = d.state["validator"]
        try:
            response = self.pool.request("GET", d.url, headers=headers, preload_content=False, redirect=True,
                                         timeout=urllib3.Timeout(connect=p.connect_timeout_s, read=p.read_timeout_s))
        except urllib3.exceptions.HTTPError as exc:
            raise _Retry(f"connection failed: {type(exc).__name__}") from None
        self._response = response
        try:
            status = response.status
            if status in PERMANENT_STATUSES:
                raise _Retry(f"{status} {response.reason}", permanent_status=True)
            if status == 429 or status >= 500:
                raise _Retry(f"{status} {response.reason}", wait_s=_retry_after(response.headers.get("Retry-After")))
            if status == 416:  # the part is not a prefix of what the server has now
                d.restart()
                raise _Retry("416: the partial file does not fit the server's; starting over", wait_s=0.0)
            if status == 206:
                expected = f"bytes {offset}-{length - 1}/{length}"
                got = (response.headers.get("Content-Range") or "").strip()
                if not offset or got != expected:
                    d.restart()
                    raise _Retry(f"206 with Content-Range '{got[:60]}', expected '{expected}'; starting over",
                                 wait_s=0.0)
            elif status == 200:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) != length:
                    raise _Retry(f"200 of {declared} bytes, the signed length is {length}")
                if offset:  # the whole file: the range was ignored, or the file changed
                    log.info("rollout: %s sent the whole file for a range request; starting over", d.url)
                    d.restart()
            else:
                raise _Retry(f"unexpected {status} {response.reason}")
            d.state["validator"] = response.headers.get("ETag") or response.headers.get("Last-Modified")
            self._receive(response, d)
        except BaseException:
            response.close()  # a body not read to its end: the connection cannot be used again
            raise
        finally:
            self._response = None
        if d.progress.have == d.length:
            response.release_conn()
        else:
            response.close()

    def _receive(self, response: urllib3.BaseHTTPResponse, d: _Download) -> None:
        p, progress = self.policy, d.progress
        unsynced = 0
        rate_start, rate_bytes = time.monotonic(), 0  # the rate shown, over about a second
        slow_start, slow_bytes = rate_start, 0  # the low-speed check, over low_speed_s
        synced_at = rate_start
        with open(d.part, "ab") as f:
            try:
                while progress.have < d.length and not self._cancel.is_set():
                    try:
                        chunk = response.read1(min(CHUNK, d.length - progress.have))  # what came, kept on a cut
                    except (urllib3.exceptions.HTTPError, OSError) as exc:
                        raise _Retry(f"cut after {progress.have} bytes: {type(exc).__name__}") from None
                    if not chunk:
                        raise _Retry(f"cut after {progress.have} of {d.length} bytes")
                    f.write(chunk)
                    d.digest.update(chunk)
                    n = len(chunk)
                    progress.have += n
                    progress.fetched += n
                    unsynced += n
                    rate_bytes += n
                    slow_bytes += n
                    now = time.monotonic()
                    if now - rate_start >= 1.0:
                        progress.rate_bps = rate_bytes / (now - rate_start)
                        rate_start, rate_bytes = now, 0
                    if now - slow_start >= p.low_speed_s:
                        if slow_bytes / (now - slow_start) < p.low_speed_bps:
                            raise _Retry(f"under {p.low_speed_bps:.0f} B/s for {p.low_speed_s:.0f} s")
                        slow_start, slow_bytes = now, 0
                    # Durable every sync_every_bytes or every sync_every_s: on a slow link a kill
                    # -9 must not cost what minutes brought in (seen: a 31 KB file at 10 KB/s
                    # fetched again whole after a kill, its offset never written).
                    if unsynced >= p.sync_every_bytes or (unsynced and now - synced_at >= p.sync_every_s):
                        d.sync(f)
                        unsynced, synced_at = 0, now
                    if progress.fetched >= d.budget and progress.have < d.length:
                        raise _Retry("byte budget reached", wait_s=0.0)
            finally:
                d.sync(f)


def _resume_state(part: Path, state_path: Path, url: str, length: int, sha256: str) -> dict:
    """The durable state of a partial download of this very file, else a fresh one."""
    try:
        state = json.loads(state_path.read_text())
        ok = isinstance(state, dict) and state.get("sha256") == sha256 and state.get("length") == length \
            and type(state.get("offset")) is int and 0 <= state["offset"] <= length
    except (OSError, ValueError):
        ok = False
    if not ok or not part.exists():
        state = {"url": url, "length": length, "sha256": sha256, "validator": None, "offset": 0}
    else:
        state["url"] = url
        # Bytes past the last durable offset may be anything after a power cut.
        state["offset"] = min(state["offset"], part.stat().st_size)
    with open(part, "ab") as f:
        f.truncate(state["offset"])
    return state


def _write_state(path: Path, state: dict) -> None:
    replace_durably(path, json.dumps(state).encode())


def _hash_prefix(part: Path, offset: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        left = offset
        while left:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the normal back-off


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
