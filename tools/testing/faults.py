"""A model wrapper that hangs, raises or slows down on command: the suite's fault injection
(and ``edgeloop bench watchdog``'s). Wraps anything with ``run`` / ``infer`` / ``prepare``."""

from __future__ import annotations

import threading
import time
from typing import Any

from edgeloop.runtime.errors import InferenceError


class FaultyModel:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = f"{getattr(model, 'name', 'model')}"
        self._mode = "healthy"
        self._slow_s = 0.0
        self._release = threading.Event()
        self._release.set()

    # -- commands ----------------------------------------------------------------------

    def hang(self) -> None:
        """Every call from now blocks (as a wedged delegate does) until ``heal()``."""
        self._release.clear()
        self._mode = "hang"

    def fail(self) -> None:
        self._mode = "fail"

    def slow(self, extra_s: float) -> None:
        self._mode, self._slow_s = "slow", extra_s

    def heal(self) -> None:
        self._mode = "healthy"
        self._release.set()

    # -- the model's API ---------------------------------------------------------------

    def _fault(self) -> None:
        mode = self._mode
        if mode == "hang":
            self._release.wait()
        elif mode == "fail":
            raise InferenceError(f"injected failure in '{self.name}'", "heal() the fault")
        elif mode == "slow":
            time.sleep(self._slow_s)

    def infer(self, source: Any, top_k: int = 5) -> Any:
        self._fault()
        return self.model.infer(source, top_k)

    def embed(self, source: Any) -> Any:  # a wedged delegate hangs every invoke, not only infer's
        self._fault()
        return self.model.embed(source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
