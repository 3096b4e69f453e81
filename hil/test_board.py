"""On a Raspberry Pi or Jetson: the detected board, and the real models classify on its CPU."""

from __future__ import annotations

import pytest
from conftest import CORAL, IMAGES

from edgeloop.runtime.engine import Engine


def test_board_is_detected_and_classifies(hardware):
    if not (hardware.raspberry_pi or hardware.jetson):
        pytest.skip(f"not a Raspberry Pi or Jetson (board: {hardware.board or 'none'}, "
                    f"arch: {hardware.cpu.get('arch')})")
    with Engine() as engine:
        model = engine.load(CORAL / "mobilenet_v2_1.0_224_quant.tflite")
        assert model.classify(IMAGES / "parrot.jpg").best.index == 89
