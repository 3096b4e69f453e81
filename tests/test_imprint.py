"""Imprinting on the device with a real embedding model: a few augmented crops of four of the
shared photos are imprinted; other crops of them are classified correctly, and a photo never
imprinted is "unknown". Also the model's embeddings through a rebuild from stored sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from edgeloop.runtime.retrieval import Imprinter, VectorIndex, image_embedder
from edgeloop.runtime.retrieval.imprint import UNKNOWN

KNOWN = {"cat": "cat.bmp", "bird": "bird.bmp", "parrot": "parrot.jpg", "sunflower": "sunflower.bmp"}
NEVER = "grace_hopper.bmp"


def crops(name: str, n: int, seed: int) -> list[Image.Image]:
    """Random crops (60-90 % of each side), half of them mirrored, a little brightness change."""
    img = Image.open(SHARED / "images" / name).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.uniform(0.6, 0.9)
        w, h = int(img.width * s), int(img.height * s)
        x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
        c = img.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            c = c.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(Image.eval(c, lambda v, g=rng.uniform(0.85, 1.15): min(255, int(v * g))))
    return out


@pytest.mark.parametrize("storage", ["float", "binary"])
def test_imprinted_photos_are_recognised_and_a_new_one_is_unknown(tmp_path, engine, storage):
    model = engine.load("embedder")
    embed = image_embedder(model)
    with VectorIndex(tmp_path / "index.db") as index:
        c = index.create("photos", model.outputs[0].shape[-1], storage=storage, model="embedder",
                         model_version=model.entry.version)
        imprinter = Imprinter(c, embed)
        for label, file in KNOWN.items():
            for crop in crops(file, 4, seed=1):
                imprinter.add(label, crop)
        assert len(c) == 16
        wrong = []
        for label, file in KNOWN.items():
            for crop in crops(file, 5, seed=2):  # other crops than the imprinted ones
                d = imprinter.classify(crop)
                if d.label != label:
                    wrong.append((label, d.label, d.distance))
        assert not wrong, wrong
        for crop in crops(NEVER, 3, seed=3):
            d = imprinter.classify(crop)
            assert d.label == UNKNOWN and not d.known and d.distance > imprinter.threshold, d
        print(f"\n{storage}: nearest distance of a never-imprinted photo "
              f"{min(imprinter.classify(c_).distance for c_ in crops(NEVER, 3, seed=3)):.3f}, "
              f"threshold {imprinter.threshold}")


def test_stored_sources_rebuild_the_collection_with_the_model(tmp_path, engine):
    model = engine.load("embedder")
    embed = image_embedder(model)
    with VectorIndex(tmp_path / "index.db") as index:
        c = index.create("photos", 1024, model="embedder", model_version="0")
        imprinter = Imprinter(c, embed)
        ids = {label: imprinter.add(label, crops(file, 1, seed=4)[0]) for label, file in KNOWN.items()}
        report = c.rebuild(embed, "embedder", model.entry.version)
        assert report == {"reembedded": 4, "dropped": 0}
        for label, file in KNOWN.items():
            assert c.query(embed(crops(file, 1, seed=4)[0]), 1)[0].id == ids[label]
