"""Data for the project's own demo models, shared by the builder and the tests.

No TensorFlow here: the tests use these functions to rebuild exactly the
inputs the models were trained and evaluated on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS_SIZE = 32  # the camera-style input: 32x32 grey, upscaled from scikit-learn's 8x8 digits
HOLDOUT_FILE = Path(__file__).resolve().parent / "samples" / "digits_holdout.npz"


def digits_to_images(digits8: np.ndarray) -> np.ndarray:
    """8x8 digits with values 0..16 to uint8 32x32 grey images (bilinear, like a camera crop)."""
    from PIL import Image

    out = np.empty((len(digits8), DIGITS_SIZE, DIGITS_SIZE), np.uint8)
    for n, d in enumerate(np.asarray(digits8).reshape(-1, 8, 8)):
        small = Image.fromarray((np.clip(d.astype(np.float32), 0, 16) * 255 / 16).round().astype(np.uint8), "L")
        out[n] = np.asarray(small.resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR))
    return out


def load_holdout(path: Path = HOLDOUT_FILE) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits (as 32x32 images) and their labels, as committed by the builder."""
    with np.load(path) as data:
        return digits_to_images(data["digits8"]), data["labels"].astype(np.int64)


# -- vibration: a gateway reading an accelerometer on a motor through the MCU ---------------

VIBRATION_CLASSES = ("normal", "imbalance", "misalignment", "bearing")
VIBRATION_FS = 1000.0  # samples a second
VIBRATION_WINDOW = 128
VIBRATION_SCALE = 8192.0  # int16 counts per g: the MCU sends counts, the model takes g
VIBRATION_HOLDOUT = Path(__file__).resolve().parent / "samples" / "vibration_holdout.npz"


def vibration_windows(n: int, seed: int, classes: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """``n`` accelerometer windows (int16 counts, VIBRATION_WINDOW samples at VIBRATION_FS) and
    their classes, each physically motivated, with random shaft speed, phase and noise:

    - normal: a small 1x rotation component;
    - imbalance: a strong 1x (a heavy spot turns with the shaft);
    - misalignment: a strong 2x beside the 1x (the coupling bends twice a turn);
    - bearing: an outer-race defect, impulses at BPFO = 3.58x shaft speed ringing at the
      housing resonance (~270 Hz) and decaying, on top of the normal running.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(VIBRATION_WINDOW) / VIBRATION_FS
    labels = rng.choice(np.asarray(classes), n)
    out = np.empty((n, VIBRATION_WINDOW), np.int16)
    for k, c in enumerate(labels):
        fr = rng.uniform(20.0, 30.0)  # 1,200-1,800 rpm
        ph = rng.uniform(0, 2 * np.pi, 3)
        x = rng.uniform(0.1, 0.25) * np.sin(2 * np.pi * fr * t + ph[0])
        if c == 1:
            x += rng.uniform(0.8, 1.4) * np.sin(2 * np.pi * fr * t + ph[1])
        elif c == 2:
            x += rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * fr * t + ph[1]) \
                + rng.uniform(0.6, 1.1) * np.sin(2 * np.pi * 2 * fr * t + ph[2])
        elif c == 3:
            bpfo, f_res = 3.58 * fr, rng.uniform(240.0, 300.0)
            for hit in np.arange(rng.uniform(0, 1 / bpfo), t[-1], 1 / bpfo):
                dt = t - hit
                ring = np.where(dt >= 0, np.exp(-np.clip(dt, 0, None) * 180.0) * np.sin(2 * np.pi * f_res * dt), 0)
                x += rng.uniform(0.5, 0.9) * ring
        x += rng.normal(0, rng.uniform(0.03, 0.08), VIBRATION_WINDOW)
        out[k] = np.clip(np.round(x * VIBRATION_SCALE), -32768, 32767).astype(np.int16)
    return out, labels.astype(np.int64)


def vibration_features(counts: np.ndarray) -> np.ndarray:
    """Counts to the models' input: g, shape (n, WINDOW, 1) float32."""
    return (np.asarray(counts, np.float32) / VIBRATION_SCALE)[..., None]


def load_vibration_holdout(path: Path = VIBRATION_HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["windows"], data["labels"].astype(np.int64)
