"""The offline segmentation set: textured shapes on textured backgrounds, generated from a seed.

Each image holds one to three shapes (circle, square, triangle, cross, diamond: one class per kind,
class 0 is the background) with random size, position, colour and texture, drawn over a random
background texture. Colours are drawn independently of the class, and every surface - background
and shapes - carries stripes or a checkerboard of random period and orientation plus pixel noise,
so a network must use shape and edges (frequency content), not colour, to label the pixels.

Use it as ``dataset: shapes_segmentation`` with ``task: segmentation`` in a config;
``dataset_config_name`` sets the size as comma-separated ``key=value`` pairs (any subset of the
arguments of :func:`load_shapes_segmentation`; ``ignore_border`` as 0 / 1)::

    dataset: shapes_segmentation
    dataset_config_name: num_train=320,num_test=80,image_size=48,num_classes=4,seed=0

The layout is scene_parse_150's: an ``image`` column (RGB) and an ``annotation`` column, a
single-channel mask image of class ids. With ``ignore_border`` the one-pixel outline of every
shape is 255, the ignore index (as the boundary pixels of VOC masks are). Same arguments, same
images: the generator is seeded, and the train and test splits come from independent streams.
"""

from __future__ import annotations

import numpy as np

from .config_string import parse_int_options

SHAPES_SEGMENTATION_NAME = "shapes_segmentation"
SHAPE_KINDS = ("circle", "square", "triangle", "cross", "diamond")
#: class id i + 1 is SHAPE_KINDS[i]; 0 is the background
SHAPES_CLASS_NAMES = ("background", *SHAPE_KINDS)
SHAPES_IGNORE_INDEX = 255


def load_shapes_segmentation(
    num_train: int = 320,
    num_test: int = 80,
    image_size: int = 48,
    num_classes: int = 4,
    seed: int = 0,
    max_shapes: int = 3,
    ignore_border: bool = True,
):
    """Return ``DatasetDict(train, test)`` with ``image`` (PIL RGB) and ``annotation`` (PIL L mask).

    Args:
        num_train / num_test: images per split (>= 1).
        image_size: side of the square images, in pixels (>= 16).
        num_classes: classes including the background, 2 .. 6: the first ``num_classes - 1`` kinds
            of :data:`SHAPE_KINDS` are drawn.
        seed: the same seed gives the same images and masks.
        max_shapes: each image holds 1 .. max_shapes shapes (later ones drawn over earlier ones).
        ignore_border: mark each shape's one-pixel outline with the ignore index 255.
    """
    import datasets

    for name, value, low in (("num_train", num_train, 1), ("num_test", num_test, 1), ("image_size", image_size, 16), ("max_shapes", max_shapes, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {low}")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(SHAPES_CLASS_NAMES):
        raise ValueError(f"num_classes = {num_classes!r} is invalid: expected an integer in 2..{len(SHAPES_CLASS_NAMES)} (background + shape kinds)")
    train_stream, test_stream = np.random.SeedSequence(seed).spawn(2)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})

    def split(count: int, stream: np.random.SeedSequence) -> "datasets.Dataset":
        rng = np.random.default_rng(stream)
        images, masks = zip(*(draw_scene(rng, image_size, num_classes, max_shapes, ignore_border) for _ in range(count)))
        return datasets.Dataset.from_dict({"image": list(images), "annotation": list(masks)}, features=features)

    return datasets.DatasetDict({"train": split(num_train, train_stream), "test": split(num_test, test_stream)})


SHAPES_CONFIG_KEYS = ("num_train", "num_test", "image_size", "num_classes", "seed", "max_shapes", "ignore_border")


def parse_shapes_config(text: str | None) -> dict[str, int | bool]:
    """``"num_train=64,image_size=32"`` -> keyword arguments of :func:`load_shapes_segmentation`."""
    values: dict[str, int | bool] = dict(parse_int_options(text, SHAPES_SEGMENTATION_NAME, SHAPES_CONFIG_KEYS))
    if "ignore_border" in values:
        values["ignore_border"] = bool(values["ignore_border"])
    return values


def shapes_class_names(config_name: str | None) -> list[str]:
    """The class names of the set ``config_name`` describes: the background, then its shape kinds."""
    num_classes = parse_shapes_config(config_name).get("num_classes", 4)
    return list(SHAPES_CLASS_NAMES[:num_classes])


def draw_scene(rng: np.random.Generator, size: int, num_classes: int, max_shapes: int, ignore_border: bool):
    """One (RGB image, mask) pair of PIL images."""
    from PIL import Image

    pixels = texture(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    outline = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(1, num_classes))
        region = shape_region(rng, SHAPE_KINDS[kind - 1], size)
        pixels[region] = texture(rng, size)[region]
        mask[region] = kind
        # A later shape hides the outline of an earlier one where it covers it.
        outline &= ~region
        outline |= region & ~erode(region)
    noise = rng.normal(0.0, 12.0, pixels.shape)
    image = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    if ignore_border:
        mask[outline] = SHAPES_IGNORE_INDEX
    return Image.fromarray(image, mode="RGB"), Image.fromarray(mask, mode="L")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float surface: two random colours in stripes or a checkerboard."""
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(3.0, 10.0)
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        phase = (rows * np.sin(angle) + cols * np.cos(angle)) / period
        pattern = (np.floor(phase) % 2).astype(np.float64)
    else:
        pattern = ((np.floor(rows / period) + np.floor(cols / period)) % 2).astype(np.float64)
    return first + pattern[..., None] * (second - first)


def shape_region(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Boolean (size, size) region of one shape of ``kind`` at a random place and scale."""
    from PIL import Image, ImageDraw

    radius = rng.uniform(0.12, 0.3) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw_shape(draw, kind, cx, cy, radius, rng)
    return np.asarray(canvas, dtype=bool)


def draw_shape(draw, kind: str, cx: float, cy: float, radius: float, rng: np.random.Generator, min_arm: float = 0.0) -> None:
    """Draw one shape of ``kind`` (value 1) centred at (cx, cy) with ``radius``; orientations from ``rng``.
    Shared by the segmentation and detection sets (``min_arm`` keeps a small cross's arms visible)."""
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif kind == "square":
        draw.polygon(_rotated(cx, cy, radius, rng.uniform(0, np.pi / 2), 4, np.pi / 4), fill=1)
    elif kind == "triangle":
        draw.polygon(_rotated(cx, cy, radius, rng.uniform(0, 2 * np.pi), 3), fill=1)
    elif kind == "diamond":
        # A rhombus elongated along one axis, so it is not a rotated square.
        angle = rng.uniform(0, np.pi)
        axes = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        points = [(cx, cy) + radius * np.array(p) @ axes for p in ((1.0, 0.0), (0.0, 0.55), (-1.0, 0.0), (0.0, -0.55))]
        draw.polygon([tuple(p) for p in points], fill=1)
    elif kind == "cross":
        arm = max(radius * 0.35, min_arm)
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=1)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=1)
    else:
        raise ValueError(f"shape kind '{kind}' is unknown; expected one of {', '.join(SHAPE_KINDS)}")


def _rotated(cx: float, cy: float, radius: float, angle: float, corners: int, offset: float = 0.0) -> list[tuple[float, float]]:
    angles = angle + offset + 2 * np.pi * np.arange(corners) / corners
    return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]


def erode(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` whose four neighbours are all in it (the image edge counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    return region & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
