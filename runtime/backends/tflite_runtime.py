"""tflite-runtime (2.14 is the last release); needs numpy < 2 (``pip install 'edgeloop[tflite]'``)."""

from __future__ import annotations

from .base import InterpreterBackend

NAME = "tflite_runtime"
PACKAGE = "edgeloop[tflite]"  # tflite-runtime with numpy<2


def numpy_compatible(tflite_version: str, numpy_version: str) -> bool:
    """tflite-runtime up to 2.14 is built on numpy 1.x's C API; with numpy 2 its interpreter
    creation fails with ``_ARRAY_API not found``, so refuse it up front."""
    def major_minor(v: str) -> tuple[int, int]:
        parts = (v.split(".") + ["0"])[:2]
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)

    return major_minor(numpy_version)[0] < 2 or major_minor(tflite_version) > (2, 14)


def load() -> InterpreterBackend:
    import numpy
    import tflite_runtime

    if not numpy_compatible(tflite_runtime.__version__, numpy.__version__):
        raise ImportError(f"tflite-runtime {tflite_runtime.__version__} needs numpy < 2, this environment has "
                          f"numpy {numpy.__version__}; use a separate virtual environment")
    from tflite_runtime import interpreter

    return InterpreterBackend(NAME, PACKAGE, interpreter, tflite_runtime.__version__)
