"""Hardware delegates, one file each (``edgetpu``, ``gpu``, ``external``).

A delegate module provides ``NAME``, ``CUSTOM_OPS`` (custom ops that only it
can run, so a model containing them *needs* it) and
``load(backend, spec) -> native delegate``, raising ``DelegateUnavailable``
with the fix.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import ConfigError

KINDS: tuple[str, ...] = ("edgetpu", "gpu", "external")


@dataclass(frozen=True)
class DelegateSpec:
    """Which delegate to use and how: ``device`` for the Edge TPU, ``library`` for external."""

    kind: str
    device: str | None = None
    library: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"delegate: unknown delegate '{self.kind}'",
                              f"use one of {', '.join(KINDS)} (or none for CPU)")
        if self.kind == "edgetpu":
            _module("edgetpu").validate_device(self.device)
        if self.kind == "external" and not self.library:
            raise ConfigError("delegate_library: the external delegate needs a library path",
                              "set delegate_library (--delegate-library) to the delegate's .so")

    def describe(self) -> str:
        detail = self.device or self.library
        return f"{self.kind}({detail})" if detail else self.kind


def _module(kind: str) -> Any:
    return importlib.import_module(f"{__name__}.{kind}")


def load_delegate(backend: Any, spec: DelegateSpec) -> Any:
    """Load the native delegate for ``spec`` on ``backend``."""
    return _module(spec.kind).load(backend, spec)


def required_delegate(op_names: Iterable[str]) -> str | None:
    """The delegate kind a model's custom ops need, if any (e.g. ``edgetpu``)."""
    ops = set(op_names)
    for kind in KINDS:
        if ops & set(_module(kind).CUSTOM_OPS):
            return kind
    return None
