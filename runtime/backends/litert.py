"""LiteRT (``ai-edge-litert``): the maintained successor of tflite-runtime. Default backend."""

from __future__ import annotations

from .base import InterpreterBackend

NAME = "litert"
PACKAGE = "ai-edge-litert"


def load() -> InterpreterBackend:
    import ai_edge_litert
    from ai_edge_litert import interpreter

    return InterpreterBackend(NAME, PACKAGE, interpreter, ai_edge_litert.__version__)
