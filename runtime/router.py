"""The router: each request goes to a model slot by its task and context.

- A slot is anything with ``serve(source) -> Served`` (a ``Ladder``, a ``Cascade``).
- Per task, in order: a pinned version (``request.version``), a domain tag that needs its
  own fine-tuned model (``request.domain``), a canary share, then the primary.
- Canary and A/B by percentage with stable hashing of the request's key (a device or
  request id): the same key always lands on the same side.
- Blue-green: ``switch(task, slot)`` replaces the task's whole route in one reference
  assignment; a request reads the route once, so it never sees a half-switched state.
- Shadow: a candidate slot gets a sample of live requests on a background thread (bounded
  queue; what does not fit is dropped and counted); agreement with the answer returned and
  the candidate's latency are recorded; its answers are never returned.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .errors import ConfigError


class Slot(Protocol):
    def serve(self, source: Any) -> Any: ...


@dataclass(frozen=True)
class Route:
    primary: str
    canary: tuple[str, float] | None = None  # (slot, share 0..1)
    domains: dict[str, str] = field(default_factory=dict)  # domain tag -> slot
    versions: dict[str, str] = field(default_factory=dict)  # pinned version -> slot
    shadow: tuple[str, float] | None = None  # (slot, sampled share 0..1)


@dataclass(frozen=True)
class Request:
    task: str
    source: Any
    key: str = ""  # stable key for canary/A-B and shadow sampling (device or request id)
    domain: str | None = None
    version: str | None = None
    inline: bool = False  # the slot's models may run on the caller's thread (a supervised stage)


def bucket(key: str, salt: str) -> float:
    """A stable number in [0, 1) for a key: the same key, the same side of every split."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def top1(result: Any) -> Any:
    """The answer two slots agree on: a classification's first class, else the result."""
    top = getattr(result, "top", None)
    return top[0].index if top else result


class Router:
    def __init__(self, slots: dict[str, Slot], routes: dict[str, Route], shadow_queue: int = 64) -> None:
        self.slots = dict(slots)
        self._routes = dict(routes)
        for task, route in routes.items():
            self._check(task, route)
        self.counts: dict[str, int] = {}
        self.shadow_stats: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._shadow: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue(shadow_queue)
        self._shadow_thread = threading.Thread(target=self._shadow_loop, name="router-shadow", daemon=True)
        self._shadow_thread.start()

    @staticmethod
    def _named(route: Route) -> list[str]:
        return [route.primary, *route.domains.values(), *route.versions.values(),
                *([route.canary[0]] if route.canary else []), *([route.shadow[0]] if route.shadow else [])]

    def _check(self, task: str, route: Route) -> None:
        for name in self._named(route):
            if name not in self.slots:
                raise ConfigError(f"route '{task}': no slot '{name}'", f"slots are: {', '.join(self.slots)}")
        for part in (route.canary, route.shadow):
            if part is not None and not 0.0 <= part[1] <= 1.0:
                raise ConfigError(f"route '{task}': share {part[1]} is not within 0..1", "give a fraction, e.g. 0.05")

    def pick(self, request: Request) -> str:
        """The slot this request goes to."""
        return self._pick(self._route(request.task), request)

    def _route(self, task: str) -> Route:
        route = self._routes.get(task)  # read once per request: a switch cannot half-apply
        if route is None:
            raise ConfigError(f"no route for task '{task}'", f"tasks are: {', '.join(self._routes)}")
        return route

    @staticmethod
    def _pick(route: Route, request: Request) -> str:
        if request.version is not None and request.version in route.versions:
            return route.versions[request.version]
        if request.domain is not None and request.domain in route.domains:
            return route.domains[request.domain]
        if route.canary is not None and bucket(request.key, request.task) < route.canary[1]:
            return route.canary[0]
        return route.primary

    def serve(self, request: Request) -> tuple[str, Any]:
        """(slot name, what the slot answered)."""
        slots = self.slots  # before the route: a slot leaves only after no route names it
        route = self._route(request.task)
        name = self._pick(route, request)
        slot = slots.get(name) or self.slots[name]  # or it came after the snapshot, with its route
        answer = slot.serve(request.source, inline=True) if request.inline else slot.serve(request.source)
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
        if route.shadow is not None and route.shadow[0] != name \
                and bucket(request.key or str(time.monotonic_ns()), "shadow:" + request.task) < route.shadow[1]:
            try:
                self._shadow.put_nowait((route.shadow[0], request.source, answer))
            except queue.Full:
                self._record(route.shadow[0], dropped=1)
        return name, answer

    def switch(self, task: str, primary: str) -> None:
        """Blue-green: every request from now on goes to ``primary``, atomically."""
        routes = dict(self._routes)
        new = replace(routes[task], primary=primary)
        self._check(task, new)
        routes[task] = new
        self._routes = routes  # one assignment: requests see the old route or the new one

    def add_slot(self, name: str, slot: Slot) -> None:
        """A slot to route to (or one replaced under its name); nothing goes to it until a route says so."""
        self.slots = {**self.slots, name: slot}  # one assignment: a request reads one dict or the other

    def remove_slot(self, name: str) -> None:
        """A slot no route names any more (ConfigError while one does)."""
        for task, route in self._routes.items():
            if name in self._named(route):
                raise ConfigError(f"slot '{name}' is still routed to (task '{task}')", "switch the route away first")
        self.slots = {k: v for k, v in self.slots.items() if k != name}

    def set_route(self, task: str, route: Route) -> None:
        self._check(task, route)
        routes = dict(self._routes)
        routes[task] = route
        self._routes = routes

    def _shadow_loop(self) -> None:
        while True:
            job = self._shadow.get()
            if job is None:
                return
            name, source, answer = job
            start = time.monotonic()
            slot = self.slots.get(name)
            if slot is None:  # removed since the request was queued
                self._record(name, dropped=1)
                continue
            try:
                candidate = slot.serve(source)
            except Exception:  # a failing candidate is recorded, never raised into serving
                self._record(name, errors=1)
                continue
            took_ms = (time.monotonic() - start) * 1000.0
            agree = top1(getattr(candidate, "result", candidate)) == top1(getattr(answer, "result", answer))
            self._record(name, runs=1, agree=int(agree), latency_ms=took_ms)

    def _record(self, name: str, **delta: float) -> None:
        with self._lock:
            s = self.shadow_stats.setdefault(name, {"runs": 0, "agree": 0, "errors": 0, "dropped": 0,
                                                    "latency_ms": 0.0})
            for key, value in delta.items():
                s[key] += value

    def close(self) -> None:
        """End the shadow thread (the slots are their owner's to close)."""
        while True:
            try:
                self._shadow.put(None, timeout=0.1)
                break
            except queue.Full:
                try:
                    self._shadow.get_nowait()
                except queue.Empty:
                    pass
        self._shadow_thread.join(2)

    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    def shadow_report(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: {**s, "agreement": s["agree"] / s["runs"] if s["runs"] else None,
                           "mean_latency_ms": s["latency_ms"] / s["runs"] if s["runs"] else None}
                    for name, s in self.shadow_stats.items()}


class Cascade:
    """The classifier's speculative decoding: the small ``draft`` answers when its top score
    clears ``threshold``; otherwise the large ``target`` decides. Models are loaded models
    (``classify(source)``); ``serve`` returns (result, which model answered)."""

    def __init__(self, draft: Any, target: Any, threshold: float) -> None:
        self.draft = draft
        self.target = target
        self.threshold = threshold
        self.counts = {"draft": 0, "target": 0}

    def serve(self, source: Any) -> tuple[Any, str]:
        first = self.draft.classify(source)
        if first.top and first.top[0].score >= self.threshold:
            self.counts["draft"] += 1
            return first, "draft"
        self.counts["target"] += 1
        return self.target.classify(source), "target"
