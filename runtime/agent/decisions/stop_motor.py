"""Stop the motor: the vibration model names a fault (not ``normal``) at ``mcu.min_score`` or
more, or, without a model, a window's peak is over ``mcu.peak_threshold``."""

from __future__ import annotations

from typing import Any

from ..seams import Action, Command, Inference

KEY = "stop_motor"
APPLIES = "mcu"


def decide(inference: Inference, config: Any) -> list[Action]:
    top = inference.top
    if inference.served.result is not None:
        if top is not None and top.label != "normal" and top.score >= config.mcu.min_score:
            return [Command("motor", {"on": False, "fault": top.label})]
        return []
    if inference.extra.get("peak", 0) > config.mcu.peak_threshold:
        return [Command("motor", {"on": False})]
    return []
