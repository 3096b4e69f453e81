"""On a rig with a Coral: the Edge TPU variant runs on the TPU and agrees with the CPU variant."""

from __future__ import annotations

from conftest import CORAL, IMAGES

from edgeloop.runtime.delegates import DelegateSpec
from edgeloop.runtime.engine import Engine


def test_edgetpu_variant_runs_on_the_tpu(edgetpu_ready):
    with Engine() as engine:
        tpu = engine.load(CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", delegate=DelegateSpec("edgetpu"))
        assert tpu.delegate == "edgetpu" and tpu.fallback is None
        assert tpu.artifact.file.name.endswith("_edgetpu.tflite")
        cpu = engine.load(CORAL / "mobilenet_v1_0.25_128_quant.tflite")
        for photo in ("parrot.jpg", "bird.bmp"):
            assert tpu.classify(IMAGES / photo).best.index == cpu.classify(IMAGES / photo).best.index
        assert engine.stats()["fallbacks"] == 0
