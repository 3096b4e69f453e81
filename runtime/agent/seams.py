"""The seams between the agent's stages, each as narrow as it can be.

- A camera **source** gives ``Frame``s (``read() -> Frame | None``; None: nothing now).
- The **router** serves a frame or a request for a task and says which slot and rung answered:
  an ``Inference``.
- A **decision** is a pure function ``(Inference, AgentConfig) -> actions``: ``Record`` (to an
  outbox stream), ``IndexVector`` (to the local retrieval index) or ``Command`` (to the MCU).
- A **sink** takes actions without waiting (``RecordSink.put``): the hot path never waits on
  disk or on the sync worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Union

import numpy as np


@dataclass(frozen=True)
class Frame:
    name: str  # the file's name, or the camera's frame counter
    pixels: np.ndarray  # HxW (GRAY) or HxWx3 (RGB/BGR), uint8
    fmt: str = "RGB"
    path: Path | None = None  # the file, for a replayed folder

    def raw(self) -> bytes:
        """The frame's bytes as they came (the file), else as PNG."""
        if self.path is not None:
            try:
                return self.path.read_bytes()
            except OSError:
                pass  # gone since it was read: the pixels we have
        import io

        from PIL import Image

        pixels = self.pixels[..., ::-1] if self.fmt == "BGR" else self.pixels
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
        return buf.getvalue()


class CameraSource(Protocol):
    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Inference:
    """One answer: what was asked (``source``: a file name, ``mqtt``, ``mcu``), for which task,
    by which slot (model) and rung, with the trace id made where the input came in."""

    source: str
    task: str
    slot: str
    served: Any  # watchdog.Served
    trace: str
    version: str = ""
    prepared: Any = None  # the PreparedFrame (camera and image requests)
    frame: Frame | None = None
    primary: bool = False  # the slot's first rung answered: its embedding is in the slot's space
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The answering slot's model name (a rollout's slot is ``model@version``)."""
        return self.slot.partition("@")[0]

    @property
    def features(self) -> dict[str, float]:
        """The drift features (brightness from the frame already decoded, the top score), made
        when a decision or the drift monitor asks: most frames of a model without a baseline
        never need them."""
        cached = self.__dict__.get("_features")
        if cached is None:
            top = self.top
            brightness = self.prepared.brightness() if self.prepared is not None else 0.0
            cached = {"brightness": brightness, "confidence": float(top.score) if top else 0.0}
            object.__setattr__(self, "_features", cached)
        return cached

    @property
    def embedding(self) -> np.ndarray | None:
        """The primary model's embedding from the same invoke (None from a fallback rung, whose
        embedding lives in another space)."""
        if not self.primary:
            return None
        e = getattr(self.served.result, "embedding", None)
        return e.vector if e is not None else None

    @property
    def top(self) -> Any:
        result = self.served.result
        top = getattr(result, "top", None) if result is not None else None
        return top[0] if top else None

    def record(self) -> dict[str, Any]:
        """The body of its ``inferences`` record."""
        top = self.top
        return {"source": self.source, **self.extra, "task": self.task, "slot": self.slot, "version": self.version,
                "rung": self.served.rung, "latency_ms": round(self.served.latency_ms, 3),
                "label": top.label if top else None, "score": round(top.score, 4) if top else None}


@dataclass(frozen=True)
class Record:
    """A record for an outbox stream. ``body`` may be a function that makes it: called only if
    the stream's queue rules take the record (a hard example past the stream's rate is never
    built)."""

    stream: str
    body: dict[str, Any] | Callable[[], dict[str, Any]]
    trace: str | None = None


@dataclass(frozen=True)
class IndexVector:
    collection: str
    model: str
    version: str
    id: str
    vector: np.ndarray
    label: str | None = None


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any]


Action = Union[Record, IndexVector, Command]


class Decision(Protocol):
    """A module in ``decisions/`` with ``KEY`` and ``decide``."""

    def __call__(self, inference: Inference, config: Any) -> Iterable[Action]: ...


class RecordSink(Protocol):
    """Where records go; ``put`` never waits (a full queue follows the stream's rule)."""

    def put(self, record: Record) -> None: ...
