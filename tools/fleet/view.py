"""The fleet as its devices report it: every retained ``edgeloop/v1/{fleet}/+/state/rollout``
and each group's retained rollout document, kept current from the broker, and a summary.

The topic names the device (what broker ACLs authenticate), not the document's body. A report
that is not a JSON object, or over ``MAX_REPORT``, is counted and left out."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop.runtime.agent.rollout import desired_topic, reported_topic
from edgeloop.sync.mqtt_client import BrokerConfig, Guard, make_client
from edgeloop.sync.rollout_doc import RolloutDoc, RolloutDocError, in_cohort, parse_rollout
from edgeloop.sync.signed_doc import next_version, read_unverified, sign

MAX_REPORT = 64 * 1024
FAILED = ("failed", "rolled_back")


class FleetView:
    def __init__(self, broker: BrokerConfig, fleet: str, client_id: str, key: Ed25519PrivateKey | None = None) -> None:
        """``key``: the fleet operator's, to sign what ``publish`` sends (None: unsigned)."""
        self.fleet = fleet
        self.key = key
        self.versions: dict[str, int | None] = {}  # group -> the signed version of its retained document
        self.reports: dict[str, dict[str, Any]] = {}
        self.docs: dict[str, RolloutDoc | None] = {}  # group -> its retained rollout document
        self.refused = 0
        self.last_message = time.monotonic()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.guard = Guard("fleet-view")
        self.client = make_client(broker, client_id)
        self.client.on_connect = self.guard(self._on_connect)
        self.client.on_subscribe = self.guard(lambda *a: self._subscribed.set())
        self.client.on_message = self.guard(self._on_message)
        self.client.connect_async(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if not reason.is_failure:
            client.subscribe([(reported_topic(self.fleet, "+"), 1), (desired_topic(self.fleet, "+"), 1)])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.last_message = time.monotonic()
        parts = message.topic.split("/")
        if len(parts) == 6 and parts[3] == "group" and parts[5] == "rollout":
            version, body = read_unverified(message.payload)  # the devices check the signature
            try:
                doc = parse_rollout(body) if body else None
            except RolloutDocError:
                self.refused += 1
                return
            with self._lock:
                self.docs[parts[4]] = doc
                self.versions[parts[4]] = version
            return
        device = parts[3]
        try:
            if len(message.payload) > MAX_REPORT:
                raise ValueError("too large")
            report = json.loads(message.payload) if message.payload else None
            if report is not None and not isinstance(report, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            self.refused += 1
            return
        with self._lock:
            if report is None:
                self.reports.pop(device, None)
            else:
                # A live report's arrival vouches for the device whatever its clock says (a Pi
                # without RTC); a retained one is only as fresh as its own "at".
                live = None if message.retain else time.time()
                self.reports[device] = {**report, "device": device, "received_live_at": live}

    def settle(self, quiet_s: float = 0.5, timeout_s: float = 10.0) -> bool:
        """Until the retained documents have arrived (nothing new for ``quiet_s``)."""
        deadline = time.monotonic() + timeout_s
        if not self._subscribed.wait(timeout_s):
            return False
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_message >= quiet_s:
                return True
            time.sleep(0.05)
        return False

    def group_reports(self, group: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {d: r for d, r in self.reports.items() if r.get("group") == group}

    def publish(self, group: str, doc: RolloutDoc | None) -> None:
        """The group's desired rollout, retained (None withdraws it); signed with the view's key."""
        where = desired_topic(self.fleet, group)
        version = None
        if self.key is None:
            payload = doc.to_json() if doc else b""
        else:
            version = next_version(self.versions.get(group))
            payload = sign(self.key, "rollout", where, json.loads(doc.to_json()) if doc else None, version)
        info = self.client.publish(where, payload, qos=1, retain=True)
        info.wait_for_publish(10)
        with self._lock:
            self.docs[group] = doc
            self.versions[group] = version

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


STALE_S = 180.0  # devices report at least once a minute; three missed: stale


def summary(doc: RolloutDoc | None, reports: dict[str, dict[str, Any]], now: float | None = None,
            stale_s: float = STALE_S) -> dict[str, Any]:
    """Counts by state and active version, the devices gone quiet; the cohort's progress under
    ``doc`` (target, committed, failed, rolled back, in progress); each failure's reason."""
    now = time.time() if now is None else now
    def fresh(r: dict[str, Any]) -> bool:
        return any(isinstance(t, (int, float)) and now - t <= stale_s for t in (r.get("at"), r.get("received_live_at")))

    stale = sorted(d for d, r in reports.items() if not fresh(r))
    out: dict[str, Any] = {
        "devices": len(reports), "states": dict(Counter(r.get("state") for r in reports.values())),
        "active": dict(Counter(r.get("active") for r in reports.values())), "stale": stale, "rollout": None,
    }
    if doc is not None:
        cohort = [d for d in reports if in_cohort(d, doc)]
        mine = [reports[d] for d in cohort]
        out["rollout"] = {
            "id": doc.id, "model": doc.model, "version": doc.version, "pct": doc.pct, "paused": doc.paused,
            "cancelled": doc.cancelled, "cohort": len(cohort),
            "target": doc.version,
            "committed": sum(1 for r in mine if r.get("state") == "committed" and r.get("active") == doc.version),
            "failed": sum(1 for r in mine if is_failure(r, doc) and r.get("state") != "rolled_back"),
            "rolled_back": sum(1 for r in mine if is_failure(r, doc) and r.get("state") == "rolled_back"),
            "in_progress": sum(1 for r in mine if r.get("pending") == doc.version),
            "stale": sum(1 for d in cohort if d in stale),
        }
        out["failures"] = {d: reports[d].get("reason") for d in cohort if is_failure(reports[d], doc)}
    return out


def is_failure(report: dict[str, Any], doc: RolloutDoc) -> bool:
    """This device gave up on the rollout's version (rolled back or failed), or refused it."""
    if report.get("target") != doc.version or report.get("rollout") != doc.id:
        return False
    return report.get("state") in FAILED or "marked bad" in (report.get("note") or "")
