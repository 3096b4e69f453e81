"""Token buckets for inference requests: one per requester and one for all of them, so that a
flood from one asker, or from many, costs the device a dictionary lookup per request and never
the model's time that the camera needs.

The requester is named by the response topic it asks to be answered on (under an ACL that is the
asker's own, see tools/pki/acl.py); the table of buckets is bounded, the longest idle dropped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    per_requester_per_s: float = 20.0
    per_requester_burst: float = 40.0
    total_per_s: float = 50.0
    total_burst: float = 100.0
    max_requesters: int = 1024


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RequestLimiter:
    def __init__(self, limits: RateLimits = RateLimits(), clock=time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._total = _Bucket(limits.total_burst, clock())
        self._lock = threading.Lock()
        self.limited = 0  # requests refused by a bucket
        self.limited_requesters: set[str] = set()  # the last few names refused (for the log)

    def allow(self, requester: str) -> bool:
        """Whether this request may be answered now (one token from both buckets)."""
        lim = self.limits
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(requester)
            if bucket is None:
                bucket = self._buckets[requester] = _Bucket(lim.per_requester_burst, now)
                while len(self._buckets) > lim.max_requesters:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(requester)
            # The requester's own bucket first: a flooder spends its own tokens, not everyone's.
            ok = bucket.take(lim.per_requester_per_s, lim.per_requester_burst, now) and \
                self._total.take(lim.total_per_s, lim.total_burst, now)
            if not ok:
                self.limited += 1
                if len(self.limited_requesters) < 16:
                    self.limited_requesters.add(requester)
            return ok
