"""Build the candidate models the rollout tests release (needs the ``build`` extra).

    python -m edgeloop.tools.build.rollout_models [--out tests/data/rollout]

Three new versions of the camera's ``digits`` model, each with its manifest (the format of
``models/manifest.toml``; golden entries: the sample images with their true digits):

- ``digits_v2``: retrained with another seed; a good candidate (passes golden and SLO).
- ``digits_bad``: trained on shifted labels (a digit d labelled d+1): fails its golden set.
- ``digits_slow``: upsamples its input 4x and convolves at that resolution first: the same
  answers for far more work; passes golden, breaks a latency SLO.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edgeloop.models.demo_data import DIGITS_SIZE, digits_to_images
from edgeloop.tools.build.demo_models import _litert_outputs, _split, _write_int8

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "rollout"
SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"

CANDIDATES = {  # name: (version, seed, label shift, full-resolution convolutions before the strided ones)
    "digits_v2": ("1.1.0", 1, 0, 0),
    "digits_bad": ("1.2.0", 2, 1, 0),
    "digits_slow": ("1.3.0", 3, 0, 3),
}

ENTRY = """\
# A rollout candidate built by `python -m edgeloop.tools.build.rollout_models`.
schema = 1

[models.digits]
version = "{version}"
task = "classification"
file = "{file}"
sha256 = "{sha256}"

[models.digits.input]
layout = "NHWC"
color = "GRAY"
resize = "area"
dtype = "uint8"

[models.digits.output]
decode = "classification"
labels = "{labels}"
index = {scores}
embedding = {embedding}
{golden}"""


def build(name: str, version: str, seed: int, shift: int, heavy: int, out: Path) -> dict[str, object]:
    import tensorflow as tf

    x8, y, hx8, hy = _split()
    x = digits_to_images(x8)[..., None].astype(np.float32) / 255.0
    hx = digits_to_images(hx8)
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    image = tf.keras.layers.Input((DIGITS_SIZE, DIGITS_SIZE, 1))
    h = image
    if heavy:
        h = tf.keras.layers.UpSampling2D(4)(h)
        for _ in range(heavy):
            h = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
        h = tf.keras.layers.MaxPooling2D(4)(h)
    for c in (16, 32, 64):
        h = tf.keras.layers.Conv2D(c, 3, strides=2, padding="same", activation="relu")(h)
    features = tf.keras.layers.GlobalAveragePooling2D()(h)
    probs = tf.keras.layers.Dense(10, activation="softmax")(features)
    classifier = tf.keras.Model(image, probs)
    classifier.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    classifier.fit(x, (y + shift) % 10, epochs=8 if heavy else 60, batch_size=32, verbose=0, shuffle=True)
    blob, path = _write_int8(tf.keras.Model(image, [probs, features]), x, tf.uint8, out / f"{name}.tflite")
    interp, i, o, scores, embedding = _litert_outputs(path, 10, 64)
    predictions = []
    for img in hx:
        interp.set_tensor(i["index"], img[None, ..., None])
        interp.invoke()
        predictions.append(int(interp.get_tensor(o["index"])[0].argmax()))
    golden = "".join(f'\n[[models.digits.golden]]\ninput = "{_relative(SAMPLES / f"digit_{d}.png", out)}"\n'
                     f"top1 = {d}\n" for d in range(10))
    (out / f"{name}.toml").write_text(ENTRY.format(
        version=version, file=path.name, sha256=hashlib.sha256(blob).hexdigest(),
        labels=_relative(SAMPLES.parent / "digits_labels.txt", out), scores=scores, embedding=embedding,
        golden=golden))
    return {"name": name, "version": version, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "holdout_accuracy": float(np.mean(np.asarray(predictions) == hy)), "tensorflow": tf.__version__}


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("names", nargs="*", help="candidates to build (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (version, seed, shift, heavy) in CANDIDATES.items():
        if args.names and name not in args.names:
            continue
        print(f"building {name} ...", file=sys.stderr)
        print(json.dumps(build(name, version, seed, shift, heavy, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
