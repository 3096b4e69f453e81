"""Build the project's INT8 demo models (needs the ``build`` extra: TensorFlow, scikit-learn).

    python -m edgeloop.tools.build.demo_models [--out models/]

Trains on scikit-learn's bundled digits (no download), quantizes fully to
INT8 with a representative dataset, writes the ``.tflite``, the held-out set,
sample images, the model card, and the manifest entry with its sha256.
Deterministic: the same TensorFlow version rebuilds the same accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.models.demo_data import DIGITS_SIZE, digits_to_images

SEED = 0
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
TEST_DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SEED).permutation(len(digits.target))
    cut = int(len(order) * 0.8)
    train, test = order[:cut], order[cut:]
    return digits.data[train], digits.target[train], digits.data[test], digits.target[test]


def int8_tflite(model: object, representative: object, io_type: object) -> bytes:
    """Full INT8 post-training quantization; inputs and outputs of ``io_type``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
    return converter.convert()


def _write_int8(model: object, train: np.ndarray, io_type: object, path: Path) -> tuple[bytes, Path]:
    """``model`` quantized with the first 300 training inputs as the representative set."""

    def representative():
        for sample in train[:300]:
            yield [sample[None]]

    blob = int8_tflite(model, representative, io_type)
    path.write_bytes(blob)
    return blob, path


def _litert_outputs(path: Path, classes: int, width: int) -> tuple[Any, dict, dict, int, int]:
    """The INT8 file in LiteRT: (interpreter, input details, score output details, and which
    outputs hold the scores and the embedding: the converter picks their order)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    outputs = interp.get_output_details()
    shapes = [tuple(int(v) for v in d["shape"]) for d in outputs]
    scores, embedding = shapes.index((1, classes)), shapes.index((1, width))
    return interp, interp.get_input_details()[0], outputs[scores], scores, embedding


DIGITS_MODELS = (("digits", (16, 32, 64)), ("digits_small", (8, 16, 32)))  # the camera's primary and fallback


def build_digits(out: Path) -> dict[str, dict[str, object]]:
    """The camera's models: ``digits`` (three strided convolutions) and the smaller fallback
    ``digits_small`` (two), each with the class scores and the pooled features as outputs."""
    import tensorflow as tf

    x8, y, hx8, hy = _split()
    x = digits_to_images(x8)[..., None].astype(np.float32) / 255.0
    hx = digits_to_images(hx8)
    np.savez_compressed(out / "samples" / "digits_holdout.npz", digits8=hx8.astype(np.uint8),
                        labels=hy.astype(np.uint8))
    (out / "digits_labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    built = {}
    for name, channels in DIGITS_MODELS:
        tf.keras.backend.clear_session()  # layer names (in the file) must not depend on what was built before
        tf.keras.utils.set_random_seed(SEED)
        tf.config.experimental.enable_op_determinism()
        image = tf.keras.layers.Input((DIGITS_SIZE, DIGITS_SIZE, 1))
        h = image
        for c in channels:
            h = tf.keras.layers.Conv2D(c, 3, strides=2, padding="same", activation="relu")(h)
        features = tf.keras.layers.GlobalAveragePooling2D()(h)
        probs = tf.keras.layers.Dense(10, activation="softmax")(features)
        classifier = tf.keras.Model(image, probs)
        classifier.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                           metrics=["accuracy"])
        classifier.fit(x, y, epochs=60, batch_size=32, verbose=0, shuffle=True)
        # The file has two outputs: the class scores and the pooled features as an embedding for
        # the retrieval index (imprinting new classes on the device).
        model = tf.keras.Model(image, [probs, features])

        blob, path = _write_int8(model, x, tf.uint8, out / f"{name}.tflite")
        # Accuracy of the INT8 file itself on the held-out split, through LiteRT.
        interp, i, o, scores, embedding = _litert_outputs(path, 10, channels[-1])
        predictions, confidences = [], []
        start = time.perf_counter()
        for image in hx:
            interp.set_tensor(i["index"], image[None, ..., None])
            interp.invoke()
            probs = interp.get_tensor(o["index"])[0]
            predictions.append(int(probs.argmax()))
            scale, zero = o["quantization"]
            confidences.append((float(probs.max()) - zero) * scale)  # dequantized, as the engine reports it
        latency_ms = (time.perf_counter() - start) * 1000.0 / len(hx)
        accuracy = float(np.mean(np.asarray(predictions) == hy))
        samples = []
        from PIL import Image

        for digit in range(10):
            n = int(np.flatnonzero(hy == digit)[0])
            sample = f"samples/digit_{digit}.png"
            Image.fromarray(hx[n], "L").save(out / sample)
            # The golden output is what this INT8 file answered at build time (a regression
            # check); the card lists any sample where that differs from the true digit.
            samples.append((sample, predictions[n], digit))
        from edgeloop.runtime.drift import histogram

        baseline = {"brightness": histogram(hx.reshape(len(hx), -1).mean(axis=1) / 255.0),
                    "confidence": histogram(confidences)}
        built[name] = {
            "file": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
            "baseline": "\n".join(f"{k} = [{', '.join(f'{v:.4f}' for v in vals)}]" for k, vals in baseline.items()),
            "scores": scores, "embedding": embedding, "width": channels[-1],
            "layers": f"{len(channels)} strided 3x3 convolutions ({'/'.join(map(str, channels))} channels)",
            "accuracy": accuracy, "holdout": len(hy), "latency_ms": latency_ms, "samples": samples,
            "tensorflow": tf.__version__}
    return built


def build_vibration(out: Path) -> dict[str, dict[str, object]]:
    """The gateway's models: ``vibration`` (two 1-D convolutions) and the smaller fallback
    ``vibration_small`` (one), each with the class scores and an embedding output."""
    import tensorflow as tf

    from edgeloop.runtime.drift import histogram

    from edgeloop.models.demo_data import VIBRATION_CLASSES, vibration_features, vibration_windows

    tf.keras.utils.set_random_seed(SEED)
    train_counts, train_y = vibration_windows(4000, seed=SEED)
    hold_counts, hold_y = vibration_windows(1000, seed=SEED + 1)
    np.savez_compressed(out / "samples" / "vibration_holdout.npz", windows=hold_counts, labels=hold_y.astype(np.uint8))
    (out / "vibration_labels.txt").write_text("\n".join(VIBRATION_CLASSES) + "\n")
    x, hx = vibration_features(train_counts), vibration_features(hold_counts)
    built = {}
    for name, convs, width in (("vibration", ((16, 7, 2), (32, 5, 2)), 32), ("vibration_small", ((8, 9, 4),), 8)):
        tf.keras.backend.clear_session()  # layer names (in the file) must not depend on what was built before
        tf.keras.utils.set_random_seed(SEED)
        window = tf.keras.layers.Input((x.shape[1], 1))
        h = window
        for filters, kernel, stride in convs:
            h = tf.keras.layers.Conv1D(filters, kernel, strides=stride, padding="same", activation="relu")(h)
        features = tf.keras.layers.GlobalAveragePooling1D()(h)
        if width != convs[-1][0]:
            features = tf.keras.layers.Dense(width, activation="relu")(features)
        probs = tf.keras.layers.Dense(len(VIBRATION_CLASSES), activation="softmax")(features)
        classifier = tf.keras.Model(window, probs)
        classifier.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        classifier.fit(x, train_y, epochs=25, batch_size=64, verbose=0, shuffle=True)

        blob, path = _write_int8(tf.keras.Model(window, [probs, features]), x, tf.int8, out / f"{name}.tflite")
        interp, i, o, scores, embedding = _litert_outputs(path, len(VIBRATION_CLASSES), width)
        in_scale, in_zero = i["quantization"]
        out_scale, out_zero = o["quantization"]
        predictions, confidences = [], []
        start = time.perf_counter()
        for w in hx:
            q = np.clip(np.round(w / in_scale + in_zero), -128, 127).astype(np.int8)
            interp.set_tensor(i["index"], q[None])
            interp.invoke()
            p = (interp.get_tensor(o["index"])[0].astype(np.float32) - out_zero) * out_scale
            predictions.append(int(p.argmax()))
            confidences.append(float(p.max()))
        latency_ms = (time.perf_counter() - start) * 1000.0 / len(hx)
        built[name] = {"file": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
                       "scores": scores, "embedding": embedding, "width": width,
                       "accuracy": float(np.mean(np.asarray(predictions) == hold_y)), "latency_ms": latency_ms,
                       "holdout": len(hold_y), "baseline": f"confidence = [{', '.join(f'{v:.4f}' for v in histogram(confidences))}]"}
    return built


def build_multi_io(out: Path) -> dict[str, object]:
    """A two-input, two-output INT8 model for the engine's tests: ``sum = a + b`` (4 values each)
    and ``joined = concat(a, 2 * b)``; exact functions, so dequantized outputs can be checked."""
    import tensorflow as tf

    tf.keras.backend.clear_session()  # layer names (in the file) must not depend on what was built before
    tf.keras.utils.set_random_seed(SEED)
    a = tf.keras.layers.Input((4,), name="a")
    b = tf.keras.layers.Input((4,), name="b")
    total = tf.keras.layers.Add(name="sum")([a, b])
    joined = tf.keras.layers.Concatenate(name="joined")([a, tf.keras.layers.Add()([b, b])])
    model = tf.keras.Model([a, b], [total, joined])
    rng = np.random.default_rng(SEED)

    def representative():
        for _ in range(200):
            yield [rng.uniform(-1, 1, (1, 4)).astype(np.float32), rng.uniform(-1, 1, (1, 4)).astype(np.float32)]

    blob = int8_tflite(model, representative, tf.int8)
    path = out / "multi_io.tflite"
    path.write_bytes(blob)
    return {"file": str(path), "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}


MANIFEST_HEAD = """\
# The project's own demo models, built by `python -m edgeloop.tools.build.demo_models`.
# Format: see models/manifest.py.
schema = 1
"""

ENTRY_HEAD = """
[models.{name}]
version = "1.0.0"
task = "classification"
file = "{file}"
sha256 = "{sha256}"
card = "cards/{name}.md"
accuracy = {accuracy:.6f}

[models.{name}.baseline]
{baseline}
"""

ENTRY_OUTPUT = """
[models.{name}.output]
decode = "classification"
labels = "{labels}"
index = {scores}
embedding = {embedding}
"""

DIGITS_ENTRY = ENTRY_HEAD + """
[models.{name}.input]
layout = "NHWC"
color = "GRAY"
resize = "area"
dtype = "uint8"
""" + ENTRY_OUTPUT.replace("{labels}", "digits_labels.txt") + "{golden}"

CARD = """\
# {name} (INT8 demo classifier)

- Task: classify a grey 32x32 image of a handwritten digit (0-9). The camera-style demo{role}.
- Data: scikit-learn's bundled `load_digits` (1,797 8x8 images), upscaled to 32x32 bilinearly;
  80/20 split with seed {seed}; the held-out 20% ({holdout} images) is in `samples/digits_holdout.npz`.
- Model: {layers}, global average pooling, dense softmax.
  Output {scores}: the 10 class scores; output {embedding}: the {width} pooled features, an embedding for
  the retrieval index (`LoadedModel.embed`).
- Quantization: full INT8 post-training quantization, representative set of 300 training images;
  uint8 input and output.
- Held-out accuracy (the INT8 file, LiteRT): **{accuracy:.4f}**
- Size: {size} bytes. Latency: {latency_ms:.3f} ms per image (1 thread, LiteRT, at build time).
- Sample images the model misreads: {misread_samples}.
- Built with TensorFlow {tensorflow}: `python -m edgeloop.tools.build.demo_models`.
"""


VIBRATION_ENTRY = ENTRY_HEAD + """
[models.{name}.input]
dtype = "int8"
""" + ENTRY_OUTPUT.replace("{labels}", "vibration_labels.txt")

VIBRATION_CARD = """\
# {name} (INT8 demo vibration classifier)

- Task: tell a motor's state from a 128-sample accelerometer window at 1 kHz (int16 counts,
  8,192 per g, from the MCU): normal, imbalance, misalignment, bearing (outer-race defect).
- Data: synthetic and physically motivated (`models/demo_data.py`: shaft 20-30 Hz; 1x for
  imbalance, 2x for misalignment, impulses at 3.58x shaft speed ringing at ~270 Hz for the
  bearing), 4,000 training windows (seed {seed}), 1,000 held out (seed {seed} + 1) in
  `samples/vibration_holdout.npz`.
- Model: 1-D convolutions, global average pooling, softmax; output {scores}: the class scores,
  output {embedding}: a {width}-dimensional embedding for the retrieval index.
- Quantization: full INT8 post-training, representative set of 300 training windows; int8 in and out.
- Held-out accuracy (the INT8 file, LiteRT): **{accuracy:.4f}**
- Size: {size} bytes. Latency: {latency_ms:.3f} ms per window (1 thread, LiteRT, at build time).
- Built with `python -m edgeloop.tools.build.demo_models`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--test-out", type=Path, default=TEST_DATA_DIR,
                        help="where the test-only models go (default tests/data)")
    args = parser.parse_args(argv)
    out = args.out
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "cards").mkdir(exist_ok=True)
    print("building digits ...", file=sys.stderr)
    digits = build_digits(out)
    for name, d in digits.items():
        # Goldens for the primary only: the fallback's answers are checked by its accuracy.
        d["golden"] = "".join(f'\n[[models.{name}.golden]]\ninput = "{sample}"\ntop1 = {predicted}\n'
                              for sample, predicted, _ in d["samples"]) if name == "digits" else ""
        wrong = [f"{sample} (a {truth}, answered {predicted})" for sample, predicted, truth in d["samples"]
                 if predicted != truth]
        d["misread_samples"] = ", ".join(wrong) or "none"
        d["role"] = "" if name == "digits" else "; the smaller fallback of `digits` on the camera's ladder"
    print("building vibration ...", file=sys.stderr)
    vib = build_vibration(out)
    (out / "manifest.toml").write_text(MANIFEST_HEAD
                                       + "".join(DIGITS_ENTRY.format(name=n, **d) for n, d in digits.items())
                                       + "".join(VIBRATION_ENTRY.format(name=n, **v) for n, v in vib.items()))
    for n, v in vib.items():
        (out / "cards" / f"{n}.md").write_text(VIBRATION_CARD.format(name=n, seed=SEED, **v))
        print(json.dumps({n: {k: x for k, x in v.items() if k != "baseline"}}, indent=2))
    for n, d in digits.items():
        (out / "cards" / f"{n}.md").write_text(CARD.format(name=n, seed=SEED, **d))
        print(json.dumps({n: {k: v for k, v in d.items() if k not in ("samples", "baseline", "golden")}}, indent=2))
    args.test_out.mkdir(parents=True, exist_ok=True)
    print("building the multi-input/output test model ...", file=sys.stderr)
    print(json.dumps(build_multi_io(args.test_out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
