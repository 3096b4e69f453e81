"""tflite-runtime (2.14 is the last release); needs numpy < 2 (``pip install 'edgeloop[tflite]'``)."""

from __future__ import annotations

from .base import InterpreterBackend

NAME = "tflite_runtime"
PACKAGE = "edgeloop[tflite]"  # tflite-runtime with numpy<2


def load() -> InterpreterBackend:
    import tflite_runtime
    from tflite_runtime import interpreter

    return InterpreterBackend(NAME, PACKAGE, interpreter, tflite_runtime.__version__)
