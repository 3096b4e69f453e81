"""The agent's decisions, one file each, found by ``KEY``: pure functions from an answer to
actions (``seams.Record``, ``IndexVector``, ``Command``). ``APPLIES`` says which answers a
decision sees: ``camera`` (frames and image requests) or ``mcu`` (sensor windows)."""

from __future__ import annotations

from typing import Any, Callable

from ..registry import discover
from ..seams import Action, Inference


def decisions_for(applies: str) -> list[Callable[[Inference, Any], list[Action]]]:
    """The ``decide`` functions for one kind of answer, in key order (stable across runs)."""
    found = discover(__name__)
    return [found[k].decide for k in sorted(found) if getattr(found[k], "APPLIES", "") == applies]
