"""Data for the project's own demo models, shared by the builder and the tests.

No TensorFlow here: the tests use these functions to rebuild exactly the
inputs the models were trained and evaluated on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS_SIZE = 32  # the camera-style input: 32x32 grey, upscaled from scikit-learn's 8x8 digits
HOLDOUT_FILE = Path(__file__).resolve().parent.parent / "models" / "samples" / "digits_holdout.npz"


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
