"""A generated fine-grained image set: many classes that share coarse shapes and differ in detail.

The setting FiGKD targets (CUB-200, Stanford Dogs: classes told apart by small parts and
textures), made offline, seeded and deterministic. Classes come in groups of eight:

* the **group** fixes the coarse appearance: body shape (ellipse, rounded box, diamond, egg) and
  hue. Telling groups apart is easy.
* within a group the eight classes are the combinations of three binary details:
  stripe frequency (2.0 or 2.6 cycles per body unit: a high-frequency texture difference),
  stripe orientation (two angles 45 degrees apart) and a small dark spot (about an eighth of
  the image wide) on the left or the right of the body.

Labels keep the groups contiguous and order the details by bit (spot, orientation, frequency), so
neighbouring labels are similar classes. Every image varies in position, scale, rotation (+-10
degrees), stripe phase, colour, background and pixel noise, so no single pixel identifies a class.

Use it as ``dataset: fine_grained_synthetic`` in a config; ``dataset_config_name`` sets the size as
comma-separated ``key=value`` pairs (any subset)::

    dataset: fine_grained_synthetic
    dataset_config_name: classes=32,train_per_class=40,test_per_class=20,image_size=24,seed=0

or call :func:`load_fine_grained_dataset` directly.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .config_string import parse_int_options

FINE_GRAINED_NAME = "fine_grained_synthetic"
CLASSES_PER_GROUP = 8
SHAPES = ("ellipse", "box", "diamond", "egg")
STRIPE_FREQUENCIES = (2.0, 2.6)  # cycles per body unit (the image spans 2 units at scale 1)
SPOT_SIDES = ("left", "right")
# Supersampling factor of the renderer (anti-aliased edges and stripes).
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class FineGrainedConfig:
    """Size of the generated set. Every field can be given in ``dataset_config_name``."""

    classes: int = 32
    train_per_class: int = 40
    test_per_class: int = 20
    image_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "classes": self.classes >= 2,
            "train_per_class": self.train_per_class >= 1,
            "test_per_class": self.test_per_class >= 0,
            "image_size": self.image_size >= 8,
            "seed": self.seed >= 0,
        }
        for name, valid in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not valid:
                minimum = {"classes": 2, "train_per_class": 1, "test_per_class": 0, "image_size": 8, "seed": 0}[name]
                raise ValueError(f"fine_grained_synthetic: {name} = {value!r} is invalid: expected an integer >= {minimum}")


def parse_fine_grained_config(text: str | None) -> FineGrainedConfig:
    """``"classes=32,image_size=24"`` -> :class:`FineGrainedConfig` (unset keys keep their defaults)."""
    names = [f.name for f in dataclasses.fields(FineGrainedConfig)]
    values = parse_int_options(text, "fine_grained_synthetic", names)
    return FineGrainedConfig(**values)


def class_attributes(label: int) -> dict[str, object]:
    """The coarse group and the three details that define class ``label``."""
    group, detail = divmod(label, CLASSES_PER_GROUP)
    return {
        "group": group,
        "shape": SHAPES[group % len(SHAPES)],
        # Hues spread by the golden ratio: neighbouring groups get distinct colours.
        "hue": (group * 0.618034) % 1.0,
        "spot": SPOT_SIDES[detail & 1],
        "orientation": 45.0 * ((detail >> 1) & 1),
        "frequency": STRIPE_FREQUENCIES[(detail >> 2) & 1],
    }


def class_names(classes: int) -> list[str]:
    names = []
    for label in range(classes):
        a = class_attributes(label)
        names.append(f"g{a['group']}-{a['shape']}-f{a['frequency']:g}-o{a['orientation']:g}-spot_{a['spot']}")
    return names


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (body units) to the edge of ``shape``; negative inside."""
    a, b = 0.72, 0.46
    if shape == "ellipse":
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    elif shape == "box":
        r = ((u / a) ** 4 + (v / b) ** 4) ** 0.25
    elif shape == "diamond":
        r = np.abs(u) / (a * 1.15) + np.abs(v) / (b * 1.15)
    else:  # egg: wider at the front
        r = np.sqrt((u / a) ** 2 + (v / (b * (1.0 + 0.3 * u / a))) ** 2)
    return (r - 1.0) * b


def render(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(image_size, image_size, 3)`` uint8 image of class ``label``, nuisances drawn from ``rng``."""
    attributes = class_attributes(label)
    size = image_size * _SUPERSAMPLE
    # Nuisances, drawn in a fixed order (determinism).
    centre = rng.uniform(-0.1, 0.1, size=2)
    scale = rng.uniform(0.85, 1.05)
    rotation = math.radians(rng.uniform(-10.0, 10.0))
    phase = rng.uniform(0.0, 2 * math.pi)
    frequency = attributes["frequency"] * rng.uniform(0.96, 1.04)
    hue = (attributes["hue"] + rng.uniform(-0.03, 0.03)) % 1.0
    saturation, value = rng.uniform(0.5, 0.75), rng.uniform(0.65, 0.9)
    background = rng.uniform(0.15, 0.85, size=(2, 3))  # two corner colours of a gradient, low saturation
    background = 0.6 * background + 0.4 * background.mean(axis=1, keepdims=True)
    gradient_angle = rng.uniform(0, 2 * math.pi)
    noise = rng.normal(0.0, 0.03, size=(image_size, image_size, 3))

    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x, y = (x - centre[0]) / scale, (y - centre[1]) / scale
    cos, sin = math.cos(rotation), math.sin(rotation)
    u, v = cos * x + sin * y, -sin * x + cos * y  # body coordinates

    pixel = 2.0 / size / scale  # one supersampled pixel in body units
    inside = np.clip(0.5 - _shape_distance(attributes["shape"], u, v) / pixel, 0.0, 1.0)
    theta = math.radians(attributes["orientation"] + 20.0)
    stripes = 0.5 + 0.5 * np.cos(2 * math.pi * frequency * (u * math.cos(theta) + v * math.sin(theta)) + phase)
    body = np.array(colorsys.hsv_to_rgb(hue, saturation, value))[None, None, :] * (1.0 - 0.45 * stripes[..., None])
    spot_u = -0.35 if attributes["spot"] == "left" else 0.35
    spot = np.clip(0.5 - (np.sqrt((u - spot_u) ** 2 + (v - 0.12) ** 2) - 0.12) / pixel, 0.0, 1.0)
    body = body * (1.0 - 0.85 * spot[..., None])

    along = (x * math.cos(gradient_angle) + y * math.sin(gradient_angle) + 1.5) / 3.0
    back = background[0] * (1 - along[..., None]) + background[1] * along[..., None]
    image = back * (1 - inside[..., None]) + body * inside[..., None]
    image = image.reshape(image_size, _SUPERSAMPLE, image_size, _SUPERSAMPLE, 3).mean(axis=(1, 3)) + noise
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_fine_grained_dataset(
    classes: int = 32, train_per_class: int = 40, test_per_class: int = 20, image_size: int = 32, seed: int = 0
):
    """Return ``DatasetDict(train, test)`` with ``image`` (PIL, RGB) and ``label`` (``ClassLabel``).

    ``classes * train_per_class`` training and ``classes * test_per_class`` test images, rows in a
    seeded random order (so the first N rows cover every class about equally). The same arguments always give the same pixels; the two splits are drawn
    from independent streams of ``seed``. Results are cached in memory per argument set.
    """
    config = FineGrainedConfig(classes, train_per_class, test_per_class, image_size, seed)
    return _generate(config)


@lru_cache(maxsize=4)
def _generate(config: FineGrainedConfig):
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names(config.classes))})

    def split(index: int, per_class: int) -> datasets.Dataset:
        rng = np.random.default_rng([config.seed, index])
        labels = [label for label in range(config.classes) for _ in range(per_class)]
        images = [Image.fromarray(render(label, config.image_size, rng)) for label in labels]
        # Shuffled rows: the first N (max_train_samples) then cover every class about equally.
        order = rng.permutation(len(labels))
        return datasets.Dataset.from_dict(
            {"image": [images[i] for i in order], "label": [labels[i] for i in order]}, features=features
        )

    splits = {"train": split(0, config.train_per_class)}
    if config.test_per_class:
        splits["test"] = split(1, config.test_per_class)
    return datasets.DatasetDict(splits)
