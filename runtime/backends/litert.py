"""LiteRT (``ai-edge-litert``): the maintained successor of tflite-runtime. Default backend."""

from __future__ import annotations

from .base import InterpreterBackend

NAME = "litert"
PACKAGE = "ai-edge-litert"


def load() -> InterpreterBackend:
    from ai_edge_litert import interpreter

    return InterpreterBackend(NAME, PACKAGE, interpreter, "ai-edge-litert")
