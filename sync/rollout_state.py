"""The device's rollout state, in SQLite so a kill -9 in any state resumes or rolls back.

    idle -> downloading -> verified -> staged -> switching -> probation -> committed
                                                    |             |
                                                    +-> rolling_back -> rolled_back
    (downloading, verified, staged) -> failed | idle (cancelled) | downloading (again)
    verified -> rolling_back (its golden set failed on this device)

Two slots, ``a`` and ``b``: ``serving`` is the one the router answers from, ``standby`` the
other (the previous version after a switch, the candidate while it is staged). After a
restart, ``switching`` and ``probation`` roll back: a candidate that was serving when the
process died is not trusted again; ``rolling_back`` finishes. A version rolled back is marked
bad with its bundle's hash and is not tried again until a bundle with another hash comes.
Every transition is counted per rollout; past ``MAX_TRANSITIONS`` the rollout is failed
(a loop breaker).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import apsw

from edgeloop.runtime.errors import EdgeloopError

STATES = ("idle", "downloading", "verified", "staged", "switching", "probation", "committed", "rolling_back",
          "rolled_back", "failed")
_REST = ("idle", "committed", "rolled_back", "failed")  # nothing under way
ALLOWED: dict[str, tuple[str, ...]] = {
    "idle": ("downloading",),
    # A download, verification or staging interrupted (a restart, a changed document) starts
    # again from the download; files already here and verified are not fetched again.
    "downloading": ("downloading", "verified", "failed", "idle"),
    "verified": ("downloading", "staged", "rolling_back", "failed", "idle"),  # rolling_back: the golden set failed
    "staged": ("downloading", "switching", "failed", "idle"),
    "switching": ("probation", "rolling_back"),
    "probation": ("committed", "rolling_back"),
    "rolling_back": ("rolled_back",),
    "committed": ("downloading", "idle"),
    "rolled_back": ("downloading", "idle"),
    "failed": ("downloading", "idle"),
}
MAX_TRANSITIONS = 24
SLOTS = ("a", "b")


class RolloutStateError(EdgeloopError):
    """A transition the state machine does not allow (a bug, or a loop broken)."""


@dataclass(frozen=True)
class RolloutState:
    state: str = "idle"
    rollout: str | None = None  # the rollout document's id
    target: str | None = None  # the version being rolled out
    target_sha256: str | None = None  # of its bundle.toml
    serving: str = "a"  # the slot the router answers from
    serving_version: str | None = None
    standby_version: str | None = None
    reason: str | None = None  # why the last failure or rollback happened (a short code and text)
    attempts: int = 0  # downloads started for this rollout
    transitions: int = 0  # for this rollout
    since: float = 0.0  # wall time of the last transition
    bytes: int = 0  # fetched for this rollout
    clock_floor: float = 0.0  # the latest wall time this device trusted (a Pi without RTC boots in 1970)

    @property
    def standby(self) -> str:
        return SLOTS[1 - SLOTS.index(self.serving)]

    @property
    def busy(self) -> bool:
        return self.state not in _REST

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "standby": self.standby}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (one INTEGER PRIMARY KEY CHECK (one = 1), doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bad (version TEXT NOT NULL, sha256 TEXT NOT NULL, reason TEXT NOT NULL,
                                at REAL NOT NULL, PRIMARY KEY (version, sha256));
"""


class RolloutStore:
    def __init__(self, path: Path, initial_version: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = apsw.Connection(str(self.path))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a transition is a promise about what serves
        with self._db:
            self._db.execute(_SCHEMA)
        row = self._db.execute("SELECT doc FROM state").fetchone()
        if row is None:
            self._state = RolloutState(serving_version=initial_version, since=time.time())
            self._save(self._state)
        else:
            fields = RolloutState.__dataclass_fields__
            self._state = RolloutState(**{k: v for k, v in json.loads(row[0]).items() if k in fields})

    @property
    def state(self) -> RolloutState:
        return self._state

    def _save(self, state: RolloutState) -> None:
        doc = json.dumps(asdict(state))
        with self._db:
            self._db.execute("INSERT INTO state VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET doc = excluded.doc",
                             (doc,))

    def move(self, to: str, **changes: Any) -> RolloutState:
        """One transition, durable before it returns; ``changes`` update the other fields."""
        now = self._state
        if to not in ALLOWED.get(now.state, ()):
            raise RolloutStateError(f"rollout: {now.state} -> {to} is not a transition", "report this")
        new_rollout = changes.get("rollout", now.rollout) != now.rollout or changes.get("target", now.target) != now.target
        transitions = 1 if new_rollout else now.transitions + 1
        if transitions > MAX_TRANSITIONS and to not in ("failed", "rolling_back", "rolled_back"):
            # The loop breaker: a candidate serving is rolled back, anything else is given up.
            to = "rolling_back" if now.state in ("switching", "probation") else "failed"
            changes = {**changes, "reason": f"loop: {transitions} transitions for one rollout"}
        state = replace(now, state=to, transitions=transitions, since=time.time(), **changes)
        self._save(state)
        self._state = state
        return state

    def recover(self) -> RolloutState:
        """After a restart: what was serving when the process died is settled. A candidate that
        was switching or on probation is rolled back (and marked bad); a rollback finishes."""
        s = self._state
        if s.state in ("switching", "probation"):
            reason = f"restarted during {s.state}"
            if s.target and s.target_sha256:
                self.mark_bad(s.target, s.target_sha256, reason)
            # The candidate may have been serving: the standby slot holds the previous version.
            if s.state == "probation" or s.serving_version == s.target:
                s = self.move("rolling_back", reason=reason)
                s = self.move("rolled_back", serving=s.standby, serving_version=s.standby_version,
                              standby_version=s.serving_version)
            else:
                s = self.move("rolling_back", reason=reason)
                s = self.move("rolled_back")
        elif s.state == "rolling_back":
            if s.serving_version == s.target and s.target is not None:  # the candidate had taken the slot
                s = self.move("rolled_back", serving=s.standby, serving_version=s.standby_version,
                              standby_version=s.serving_version)
            else:
                s = self.move("rolled_back")
        return s

    def note(self, **changes: Any) -> RolloutState:
        """Fields that change without a transition (bytes so far, the clock's high-water mark)."""
        state = replace(self._state, **changes)
        self._save(state)
        self._state = state
        return state

    def mark_bad(self, version: str, sha256: str, reason: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO bad VALUES (?, ?, ?, ?)", (version, sha256, reason, time.time()))

    def is_bad(self, version: str, sha256: str) -> str | None:
        row = self._db.execute("SELECT reason FROM bad WHERE version = ? AND sha256 = ?", (version, sha256)).fetchone()
        return row[0] if row else None

    def bad_versions(self) -> dict[str, str]:
        return {f"{v} ({sha[:12]})": r for v, sha, r in self._db.execute("SELECT version, sha256, reason FROM bad")}

    def close(self) -> None:
        self._db.close()
