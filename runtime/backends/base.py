"""The narrow interface every interpreter backend provides.

Both LiteRT (``ai_edge_litert``) and ``tflite_runtime`` expose the same
``interpreter`` module shape, so one adapter class serves both; each backend
file only says which module to import and which package provides it.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import DelegateUnavailable, InferenceError, InputError, ModelLoadError
from ..tensors import TensorSpec


# What TFLite's external delegate API requires a delegate library to export.
_DELEGATE_ENTRY_POINTS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")


class BackendInterpreter:
    """One interpreter instance. Not thread-safe: use one per thread.

    Input tensors are written in place through the interpreter's own buffer
    (no intermediate copy); outputs are copied out, so nothing handed to a
    caller points into native memory after ``close()``.
    """

    def __init__(self, native: Any, delegates: Sequence[Any]) -> None:
        self._native = native
        # Delegates must outlive the interpreter that uses them.
        self._delegates = list(delegates)
        self.inputs: tuple[TensorSpec, ...] = tuple(
            TensorSpec.from_details(d) for d in native.get_input_details())
        self.outputs: tuple[TensorSpec, ...] = tuple(
            TensorSpec.from_details(d) for d in native.get_output_details())
        self._input_buffers = [native.tensor(t.index) for t in self.inputs]
        self._output_indexes = [t.index for t in self.outputs]

    def _check_open(self) -> Any:
        if self._native is None:
            raise InferenceError("interpreter is closed", "load the model again")
        return self._native

    def set_input(self, position: int, array: np.ndarray) -> None:
        """Copy ``array`` straight into input tensor ``position`` (shape and dtype must match)."""
        self._check_open()
        spec = self.inputs[position]
        # Checked before any view exists: a traceback holding a view would block every later invoke.
        if getattr(array, "shape", None) != spec.shape or getattr(array, "dtype", None) != spec.dtype:
            got = (f"shape {list(array.shape)} dtype {array.dtype.name}" if isinstance(array, np.ndarray)
                   else type(array).__name__)
            raise InputError(
                f"input {position} ('{spec.name}') needs shape {list(spec.shape)} dtype {spec.dtype.name}, got {got}",
                "resize/convert the input to the model's input spec (see 'edgeloop models inspect')")
        view = self._input_buffers[position]()
        np.copyto(view, array, casting="no")
        del view  # the backend refuses to invoke while a view into its buffers is alive

    def fill_input(self, position: int, writer: Callable[[np.ndarray], None]) -> None:
        """Let ``writer(view)`` write input ``position`` in place (zero copy).

        ``writer`` must not keep the view: the backend refuses to invoke while one is alive.
        """
        self._check_open()
        view = self._input_buffers[position]()
        try:
            writer(view)
        except Exception as exc:
            del view
            exc.__traceback__ = None  # its frames would keep the view, and so block invoke
            raise InputError(f"writing input {position} failed: {type(exc).__name__}: {exc}",
                             "check the writer (kernel) against the input spec") from None
        del view

    def invoke(self) -> None:
        native = self._check_open()
        try:
            native.invoke()  # releases the GIL inside the backend
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"invoke failed: {exc}".strip(),
                                 "check the model with 'edgeloop models inspect' and the input values") from exc

    def output(self, position: int) -> np.ndarray:
        """A copy of output ``position``."""
        return self._check_open().get_tensor(self._output_indexes[position])

    def op_names(self) -> list[str]:
        return [op["op_name"] for op in self._check_open()._get_ops_details()]

    def close(self) -> None:
        """Free the native interpreter, then its delegates (in that order)."""
        self._input_buffers = []
        self._native = None
        self._delegates = []


class InterpreterBackend:
    """Adapter over a module with the ``tflite_runtime.interpreter`` API."""

    def __init__(self, name: str, package: str, module: ModuleType, version: str) -> None:
        self.name = name
        self.package = package
        self.version = version
        self._module = module

    def load_delegate(self, library: str, options: Mapping[str, Any] | None = None) -> Any:
        """Load an external delegate library; raise ``DelegateUnavailable`` naming it."""
        try:
            # dlopen first: the backend's Delegate object, half-built on a missing
            # library, prints a spurious traceback when it is collected.
            lib = ctypes.CDLL(library)
            missing = [f for f in _DELEGATE_ENTRY_POINTS if not hasattr(lib, f)]
            if missing:
                raise DelegateUnavailable(f"{library} is not a TFLite delegate (it lacks {', '.join(missing)})")
            return self._module.load_delegate(library, dict(options or {}))
        except (ValueError, OSError, RuntimeError, AttributeError) as exc:
            raise DelegateUnavailable(f"cannot load delegate library {library}: {exc}".strip()) from exc

    def create(self, model_path: str, *, num_threads: int, xnnpack: bool = True,
               delegates: Sequence[Any] = (), allocate: bool = True) -> BackendInterpreter:
        """Create and allocate an interpreter for ``model_path``."""
        resolver = self._module.OpResolverType
        kwargs: dict[str, Any] = {
            "model_path": model_path,
            "num_threads": num_threads,
            # AUTO applies the default delegate (XNNPACK) where the build has it.
            "experimental_op_resolver_type": resolver.AUTO if xnnpack
            else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        }
        if delegates:
            kwargs["experimental_delegates"] = list(delegates)
        try:
            native = self._module.Interpreter(**kwargs)
            if allocate:
                native.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            # TFLite's messages run over several lines with a URL; the first says it all.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{self.name} could not load {model_path}: {reason}",
                                 "check the file with 'edgeloop models inspect'") from exc
        return BackendInterpreter(native, delegates)
