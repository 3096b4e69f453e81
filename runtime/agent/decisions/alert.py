"""An alert event for a camera answer whose label is one of ``camera.alert_labels`` at
``camera.min_score`` or more."""

from __future__ import annotations

from typing import Any

from ..seams import Action, Inference, Record

KEY = "alert"
APPLIES = "camera"


def is_alert(inference: Inference, config: Any) -> bool:
    top = inference.top
    cam = config.camera
    return top is not None and top.label in cam.alert_labels and top.score >= cam.min_score


def decide(inference: Inference, config: Any) -> list[Action]:
    if not is_alert(inference, config):
        return []
    return [Record("events", {"kind": "alert", **inference.record()}, inference.trace)]
