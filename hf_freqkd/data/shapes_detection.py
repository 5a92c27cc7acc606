"""The offline detection set: textured shapes on textured backgrounds with COCO boxes, generated from a seed.

Each image holds one to ``max_objects`` shapes (circle, square, triangle, cross, diamond: the class
is the kind, 0 .. num_classes - 1) drawn over a random background texture. Sizes are drawn
log-uniformly from 6 px to half the image side, so small objects are as common as large ones;
shapes may overlap one another and the image border. Colours are drawn independently of the class,
and every surface carries stripes or a checkerboard plus pixel noise (the textures of
:mod:`hf_freqkd.data.shapes_segmentation`), so a detector must find shapes by their outline.

Each box is the exact extent of the pixels that show its shape: a later shape drawn over an earlier
one, or the image border, trims the earlier shape's box, as a COCO box encloses the visible object.
Every object keeps at least half of its pixels visible, so none is hidden or reduced to a sliver.

Use it as ``dataset: shapes_detection`` with ``task: detection`` in a config;
``dataset_config_name`` sets the size as comma-separated ``key=value`` pairs (any subset of the
arguments of :func:`load_shapes_detection`)::

    dataset: shapes_detection
    dataset_config_name: num_train=320,num_test=80,image_size=64,num_classes=3,max_objects=4,seed=0

The layout is the Hub's detection sets' (cppe-5 in the transformers object-detection guide):
``image_id``, ``image`` (RGB), ``width``, ``height`` and ``objects``, a dict of per-object lists
``id``, ``area`` (visible pixels), ``bbox`` (COCO ``[x, y, w, h]`` in pixels) and ``category`` (a
``ClassLabel`` of the kind names). Same arguments, same images: the generator is seeded, and the
train and test splits come from independent streams.
"""

from __future__ import annotations

import math

import numpy as np

from .config_string import parse_int_options
from .shapes_segmentation import SHAPE_KINDS, draw_shape, texture

SHAPES_DETECTION_NAME = "shapes_detection"
#: smallest extent of a drawn shape, in pixels; the largest is half the image side
SMALLEST_OBJECT = 6
#: an object must keep this fraction of its pixels visible (not covered by later shapes nor cut by the border)
MIN_VISIBLE_FRACTION = 0.5
#: places tried for a shape before it is left out of its image
PLACEMENT_TRIES = 10


def load_shapes_detection(
    num_train: int = 320,
    num_test: int = 80,
    image_size: int = 64,
    num_classes: int = 3,
    seed: int = 0,
    max_objects: int = 4,
):
    """Return ``DatasetDict(train, test)`` with ``image`` (PIL RGB) and ``objects`` (COCO boxes and classes).

    Args:
        num_train / num_test: images per split (>= 1).
        image_size: side of the square images, in pixels (>= 24, so that the smallest shapes are
            at most a quarter of the side).
        num_classes: object classes, 1 .. 5: the first ``num_classes`` kinds of :data:`SHAPE_KINDS`
            are drawn, class i being ``SHAPE_KINDS[i]``. There is no background class.
        seed: the same seed gives the same images and boxes.
        max_objects: each image holds 1 .. max_objects shapes (a shape that cannot be placed
            without hiding more than half of itself or of an earlier one is left out).
    """
    import datasets

    minimums = (("num_train", num_train, 1), ("num_test", num_test, 1), ("image_size", image_size, 24), ("max_objects", max_objects, 1))
    for name, value, low in minimums:
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {low}")
    if not isinstance(num_classes, int) or not 1 <= num_classes <= len(SHAPE_KINDS):
        raise ValueError(f"num_classes = {num_classes!r} is invalid: expected an integer in 1..{len(SHAPE_KINDS)} (shape kinds)")
    train_stream, test_stream = np.random.SeedSequence(seed).spawn(2)
    features = datasets.Features(
        {
            "image_id": datasets.Value("int64"),
            "image": datasets.Image(),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.Sequence(
                {
                    "id": datasets.Value("int64"),
                    "area": datasets.Value("int64"),
                    "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                    "category": datasets.ClassLabel(names=list(SHAPE_KINDS[:num_classes])),
                }
            ),
        }
    )

    def split(count: int, stream: np.random.SeedSequence) -> "datasets.Dataset":
        rng = np.random.default_rng(stream)
        rows: dict[str, list] = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
        next_object_id = 0
        for image_id in range(count):
            scene = draw_scene(rng, image_size, num_classes, max_objects)
            ids = list(range(next_object_id, next_object_id + len(scene.categories)))
            next_object_id += len(ids)
            rows["image_id"].append(image_id)
            rows["image"].append(scene.image)
            rows["width"].append(image_size)
            rows["height"].append(image_size)
            rows["objects"].append({"id": ids, "area": scene.areas, "bbox": scene.boxes, "category": scene.categories})
        return datasets.Dataset.from_dict(rows, features=features)

    return datasets.DatasetDict({"train": split(num_train, train_stream), "test": split(num_test, test_stream)})


SHAPES_DETECTION_CONFIG_KEYS = ("num_train", "num_test", "image_size", "num_classes", "seed", "max_objects")


def parse_shapes_detection_config(text: str | None) -> dict[str, int]:
    """``"num_train=64,image_size=32"`` -> keyword arguments of :func:`load_shapes_detection`."""
    return parse_int_options(text, SHAPES_DETECTION_NAME, SHAPES_DETECTION_CONFIG_KEYS)


class Scene:
    """One generated image with its objects (what :func:`draw_scene` returns).

    ``owner`` is the (size, size) map of the object each pixel shows (its index in ``categories``,
    -1 for the background): the boxes and areas are read from it.
    """

    def __init__(self, image, owner: np.ndarray, categories: list[int]):
        self.image = image
        self.owner = owner
        self.categories = categories
        self.boxes: list[list[float]] = []
        self.areas: list[int] = []
        for index in range(len(categories)):
            rows, cols = np.nonzero(owner == index)
            left, top = cols.min(), rows.min()
            self.boxes.append([float(left), float(top), float(cols.max() + 1 - left), float(rows.max() + 1 - top)])
            self.areas.append(int(rows.size))


def draw_scene(rng: np.random.Generator, size: int, num_classes: int, max_objects: int) -> Scene:
    """One image of 1 .. max_objects shapes; later shapes are drawn over earlier ones."""
    from PIL import Image

    pixels = texture(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    full_areas: list[int] = []  # pixels of each placed shape before occlusion and clipping
    categories: list[int] = []
    wanted = int(rng.integers(1, max_objects + 1))
    # Retried until one shape fits: the first one only has to keep half of itself inside the image.
    while not categories:
        for _ in range(wanted):
            kind = int(rng.integers(num_classes))
            extent = math.exp(rng.uniform(math.log(SMALLEST_OBJECT), math.log(size / 2)))
            for _ in range(PLACEMENT_TRIES):
                inside, full_area = shape_region(rng, SHAPE_KINDS[kind], size, extent)
                placed = owner.copy()
                placed[inside] = len(categories)
                visible = np.bincount(placed[placed >= 0], minlength=len(categories) + 1)
                if all(visible[i] >= MIN_VISIBLE_FRACTION * area for i, area in enumerate([*full_areas, full_area])):
                    owner = placed
                    full_areas.append(full_area)
                    categories.append(kind)
                    pixels[inside] = texture(rng, size)[inside]
                    break
    noise = rng.normal(0.0, 12.0, pixels.shape)
    image = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    return Scene(Image.fromarray(image, mode="RGB"), owner, categories)


def shape_region(rng: np.random.Generator, kind: str, size: int, extent: float) -> tuple[np.ndarray, int]:
    """A shape of ``kind`` about ``extent`` pixels across at a random place and angle.

    Returns its boolean (size, size) region inside the image and its whole area in pixels: the
    shape is drawn on a canvas with a margin, so the part the border cuts off is counted too.
    """
    from PIL import Image, ImageDraw

    radius = extent / 2
    margin = math.ceil(size / 4) + 2
    # Centres within the image, at most half a radius from the border: shapes may be cut by it.
    cx, cy = margin + rng.uniform(radius / 2, size - radius / 2, 2)
    canvas = Image.new("L", (size + 2 * margin, size + 2 * margin), 0)
    draw = ImageDraw.Draw(canvas)
    draw_shape(draw, kind, cx, cy, radius, rng, min_arm=1.0)  # arms of at least 1 px on tiny crosses
    region = np.asarray(canvas, dtype=bool)
    return region[margin : margin + size, margin : margin + size], int(region.sum())

