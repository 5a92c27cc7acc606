"""The offline dataset: scikit-learn's bundled handwritten digits as a ``datasets.DatasetDict``.

1,797 real 8x8 grayscale scans of the digits 0-9 (UCI optdigits), shipped inside scikit-learn, so
demos and tests run with no network. The train/test split is fixed (stratified, seed 0, 25 % test).
"""

from __future__ import annotations

import numpy as np

DIGITS_NAME = "digits"
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def load_digits_dataset(upscale: int = 1):
    """Return ``DatasetDict(train=1347 rows, test=450 rows)`` with ``image`` (PIL, mode L) and ``label``.

    ``upscale`` enlarges each 8x8 scan by pixel repetition (no new detail), for models whose
    stems cannot take 8 px inputs without resizing in the transform.
    """
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Scans hold 0..16 ink levels; map them to the 0..255 range of an 8-bit image.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    if upscale > 1:
        pixels = pixels.repeat(upscale, axis=1).repeat(upscale, axis=2)
    indices = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(
        indices, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target
    )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(idx: np.ndarray) -> "datasets.Dataset":
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(pixels[i]) for i in idx], "label": digits.target[idx].tolist()},
            features=features,
        )

    return datasets.DatasetDict({"train": split(np.sort(train_idx)), "test": split(np.sort(test_idx))})
