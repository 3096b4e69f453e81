"""GPU delegate (OpenCL/OpenGL), where the platform ships the TFLite GPU delegate library."""

from __future__ import annotations

from typing import Any

from ..errors import DelegateUnavailable

NAME = "gpu"
CUSTOM_OPS: tuple[str, ...] = ()
LIBRARY = "libtensorflowlite_gpu_delegate.so"
INSTALL_HINT = (f"build or install {LIBRARY} for this board (it is not part of the Python wheels) "
                "and put it on the library path, or run on the CPU")


def load(backend: Any, spec: Any) -> Any:
    try:
        return backend.load_delegate(spec.library or LIBRARY, spec.options)
    except DelegateUnavailable as exc:
        raise DelegateUnavailable(f"GPU delegate unavailable ({exc.problem})", INSTALL_HINT) from exc
