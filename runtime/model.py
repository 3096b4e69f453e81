"""A loaded model: one interpreter per calling thread, typed inputs and results."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeloop.models.manifest import Artifact, ModelEntry

from . import results
from .backends import BackendInterpreter
from .errors import InferenceError, InputError
from .image_input import frame_writer, image_to_input, load_image, write_frame
from .prepared import PreparedFrame
from .tensors import TensorSpec


@dataclass
class ModelStats:
    invocations: int = 0
    errors: int = 0
    busy_ms: float = 0.0
    interpreters: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"invocations": self.invocations, "errors": self.errors,
                "busy_ms": round(self.busy_ms, 3), "interpreters": self.interpreters}


class LoadedModel:
    """A model ready to run. Thread-safe: each thread gets its own interpreter.

    Call ``close()`` when done; results never point into interpreter memory.
    """

    def __init__(self, entry: ModelEntry, artifact: Artifact, backend_name: str,
                 make_interpreter: Callable[[], BackendInterpreter], first: BackendInterpreter,
                 delegate: str | None, fallback: str | None) -> None:
        self.entry = entry
        self.artifact = artifact
        self.backend = backend_name
        self.delegate = delegate
        self.fallback = fallback  # why this is not the variant that was asked for, if it is not
        self.inputs: tuple[TensorSpec, ...] = first.inputs
        self.outputs: tuple[TensorSpec, ...] = first.outputs
        self.stats = ModelStats(interpreters=1)
        q = self.inputs[0].quantization if self.inputs else None
        # Models whose input 0 takes the same tensor share one conversion of a frame (PreparedFrame).
        self.frame_spec_key = (self.inputs[0].shape, self.inputs[0].dtype.str,
                               None if q is None else (tuple(q.scales.ravel().tolist()),
                                                       tuple(q.zero_points.ravel().tolist())),
                               entry.input) if self.inputs else None
        self._make = make_interpreter
        self._local = threading.local()
        self._local.interp = first
        self._all = [first]
        self._spare: list[BackendInterpreter] = []  # prewarm()'s, for threads that have none yet
        self._lock = threading.Lock()
        self._labels: list[str] | None = None
        self._writers: dict[Any, Any] = {}  # (format, frame shape, dtype) -> bound preprocess
        self._closed = False

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def labels(self) -> list[str] | None:
        if self._labels is None and self.entry.output.labels is not None:
            self._labels = results.read_labels(self.entry.output.labels)
        return self._labels

    def set_labels(self, path: Path) -> None:
        self._labels = results.read_labels(path)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.entry.name,
            "version": self.entry.version,
            "file": str(self.artifact.file),
            "registered": self.entry.registered,
            "backend": self.backend,
            "delegate": self.delegate,
            "fallback": self.fallback,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def _interpreter(self) -> BackendInterpreter:
        interp = getattr(self._local, "interp", None)
        if interp is None:
            with self._lock:
                if self._closed:
                    raise InferenceError(f"model '{self.name}' is closed", "load it again")
                if self._spare:
                    interp = self._spare.pop()  # made and warmed beforehand, off this thread
                else:
                    interp = self._make()
                    self._all.append(interp)
                    self.stats.interpreters = len(self._all)
            self._local.interp = interp
        return interp

    def prewarm(self, n: int = 1) -> None:
        """Make and warm ``n`` interpreters now, on this thread, for the next threads that run
        the model: a model switched to on a serving thread (a rollout) answers its first frame
        without building an interpreter inside it (measured: a 0.3 ms frame took 2-5 ms)."""
        for _ in range(n):
            interp = self._make()
            for position, spec in enumerate(self.inputs):
                interp.set_input(position, np.zeros(spec.shape, spec.dtype))
            interp.invoke()
            with self._lock:
                if self._closed:
                    interp.close()
                    return
                self._all.append(interp)
                self._spare.append(interp)
                self.stats.interpreters = len(self._all)

    # Raw tensors in, raw tensors out -------------------------------------------------

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Feed one array per input (exact shape and dtype); return copies of the outputs."""
        if self._closed:
            raise InferenceError(f"model '{self.name}' is closed", "load it again")
        if len(arrays) != len(self.inputs):
            raise InputError(f"model '{self.name}' takes {len(self.inputs)} input(s), got {len(arrays)}",
                             "pass one array per input tensor")
        interp = self._interpreter()
        for position, array in enumerate(arrays):
            interp.set_input(position, array)
        return self._invoke(interp)

    def _invoke(self, interp: BackendInterpreter) -> list[np.ndarray]:
        start = time.perf_counter()
        try:
            interp.invoke()
        except InferenceError:
            with self.stats.lock:
                self.stats.errors += 1
            raise
        elapsed = (time.perf_counter() - start) * 1000.0
        outputs = [interp.output(n) for n in range(len(self.outputs))]
        with self.stats.lock:
            self.stats.invocations += 1
            self.stats.busy_ms += elapsed
        return outputs

    # Sources in, typed results out ----------------------------------------------------

    def prepare(self, source: Any) -> np.ndarray:
        """An image path, a PIL image, a ``.npy`` path or an array, as input 0's tensor."""
        spec = self.inputs[0]
        if isinstance(source, np.ndarray):
            return source
        if isinstance(source, PreparedFrame):
            return source.tensor_for(self)
        if hasattr(source, "convert"):  # a PIL image
            return image_to_input(source, spec, self.entry.input)
        path = Path(source)
        if path.suffix.lower() == ".npy":
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read array {path}: {exc}", "give a .npy file saved by numpy.save") from exc
        if not path.is_file():
            raise InputError(f"input {path} does not exist", "check the path")
        return image_to_input(load_image(path), spec, self.entry.input)

    def frame_into(self, frame: np.ndarray, fmt: str, out: np.ndarray) -> None:
        """A camera frame preprocessed into ``out`` (input 0's shape and layout). The kernel's plan
        is made once per frame shape and format and kept: a camera's frames all share it."""
        spec = self.inputs[0]
        nchw = self.entry.input.layout == "NCHW"  # the kernel writes NHWC: transposed on the way in
        into = np.empty((spec.shape[2], spec.shape[3], spec.shape[1]), spec.dtype) if nchw else out
        key = (fmt, frame.shape, frame.dtype.str)
        writer = self._writers.get(key)
        if writer is None:
            if len(self._writers) > 16:  # a source whose frames keep changing size
                self._writers.clear()
            writer = self._writers[key] = frame_writer(frame, fmt, into, spec, self.entry.input)
        writer(frame, into)
        if nchw:
            out[0] = into.transpose(2, 0, 1)

    def run_frame(self, frame: np.ndarray, fmt: str = "RGB",
                  roi: tuple[int, int, int, int] | None = None) -> list[np.ndarray]:
        """A camera frame (RGB, BGR, RGBA, GRAY, YUYV or NV12) preprocessed straight into the
        input tensor by the fused kernel, then invoked; returns copies of the outputs."""
        if self._closed:
            raise InferenceError(f"model '{self.name}' is closed", "load it again")
        spec = self.inputs[0]
        if self.entry.input.layout == "NCHW":  # the kernel writes NHWC: transpose on the way in
            hwc = np.empty((spec.shape[2], spec.shape[3], spec.shape[1]), spec.dtype)
            write_frame(frame, fmt, hwc, spec, self.entry.input, roi)
            return self.run(hwc.transpose(2, 0, 1)[None])
        interp = self._interpreter()
        interp.fill_input(0, lambda view: write_frame(frame, fmt, view, spec, self.entry.input, roi))
        return self._invoke(interp)

    def decode(self, outputs: Sequence[np.ndarray], top_k: int = 5) -> results.Result:
        """Typed result by the manifest's ``output.decode`` (raw for unregistered models)."""
        kind, n = self.entry.output.decode, self._output_index(self.entry.output.index, "index")
        if kind == "classification":
            found = results.classify(outputs[n], self.outputs[n], self.labels, top_k)
            e = self.entry.output.embedding
            if e is None:
                return found
            e = self._output_index(e, "embedding")  # the same invoke's features: no second run for them
            return replace(found, raw_embedding=(outputs[e], self.outputs[e]))
        if kind == "embedding":
            return results.embed(outputs[n], self.outputs[n])
        if kind == "detection":
            return results.detect(outputs, self.outputs, self.labels)
        return results.RawOutputs(tuple(outputs), self.outputs)

    def infer(self, source: Any, top_k: int = 5) -> results.Result:
        return self.decode(self.run(self.prepare(source)), top_k)

    def classify(self, source: Any, top_k: int = 5) -> results.Classification:
        """Top-k classes regardless of the manifest's decoder (``output.index`` as scores)."""
        n = self._output_index(self.entry.output.index, "index")
        return results.classify(self.run(self.prepare(source))[n], self.outputs[n], self.labels, top_k)

    def embed(self, source: Any) -> results.Embedding:
        """The manifest's embedding output (``output.embedding``; else output 0) as an
        L2-normalized vector."""
        spec = self.entry.output
        if spec.embedding is not None:
            n = self._output_index(spec.embedding, "embedding")
        else:
            n = self._output_index(spec.index if spec.decode == "embedding" else 0, "index")
        return results.embed(self.run(self.prepare(source))[n], self.outputs[n])

    def _output_index(self, n: int, key: str) -> int:
        if n >= len(self.outputs):
            raise InferenceError(f"model '{self.name}' has {len(self.outputs)} output(s); its manifest's "
                                 f"output.{key} names output {n}", f"fix output.{key} in the manifest")
        return n

    def close(self) -> None:
        """Free every interpreter this model created (from any thread)."""
        with self._lock:
            self._closed = True
            for interp in self._all:
                interp.close()
            self._all.clear()
        self._local = threading.local()
