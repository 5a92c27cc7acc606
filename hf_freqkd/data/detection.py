"""Object detection data through ``datasets``: the objects column, box checks, box-aware transforms, batching.

A detection dataset has the layout of the Hub's detection sets (cppe-5 in the transformers
object-detection guide): an image column and an ``objects`` column, a dict of per-object lists with
``bbox`` (COCO ``[x, y, w, h]``, pixels of the original image) and ``category`` (class ids
0 .. K-1, often a ``ClassLabel``); ``area``, ``id`` and ``image_id`` / ``width`` / ``height``
columns may be there too. (A list of per-object dicts with the same keys is read as well.) Sets that
store corners (Pascal VOC ``[x1, y1, x2, y2]``) are read with ``bbox_format="xyxy"`` (the
``bbox_format`` data option); nothing in the data says which one a set uses: its card does.

The transform moves the boxes with the image through torchvision ``transforms.v2`` (boxes are
``tv_tensors.BoundingBoxes``: v2 resizes, crops and flips them, no box geometry here) and yields
``pixel_values`` (float, normalised) and ``labels``, a float32 (M, 5) tensor of rows
``[class, x1, y1, x2, y2]`` in pixels of the transformed image; M may be 0. Training augmentation
is seeded per sample like the classification path's (:mod:`hf_freqkd.data.seeding`), so a resumed
run sees the same crops. :func:`detection_collator` pads the rows of a batch to one length with
:data:`PADDING_LABEL` = -100 rows: the value the Trainer pads evaluation batches with as well.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .loading import AUGMENTATIONS, IMAGE_COLUMN_NAMES, decode_image
from .seeding import ROW_INDEX_COLUMN, SeededAugmentation, with_row_index

OBJECTS_COLUMN_NAMES = ("objects", "annotations", "annotation", "boxes", "detections")
#: the keys every object of the objects column has (others such as area and id are not read)
OBJECT_KEYS = ("bbox", "category")
#: the bbox layouts read (the ``bbox_format`` option), the first the default
BBOX_FORMATS = ("xywh", "xyxy")
#: per layout: its torchvision ``tv_tensors.BoundingBoxFormat``, and how messages write a box and its edges
_BOX_FORMATS = {
    "xywh": ("XYWH", "[x, y, w, h]", ("x", "x + w", "y", "y + h")),
    "xyxy": ("XYXY", "[x1, y1, x2, y2]", ("x1", "x2", "y1", "y2")),
}
#: a box may reach this many pixels past the image border (rounding in converted annotations)
BOX_TOLERANCE = 1.0
#: fills every value of a padding row of the collated ``labels`` (class -100: no object)
PADDING_LABEL = -100
#: the ``timm`` recipe zooms out to a canvas this many times the image side at most (SSD uses 4)
ZOOM_OUT_SIDE_RANGE = (1.0, 2.0)


def detect_detection_columns(dataset, image_column: str | None = None, objects_column: str | None = None) -> tuple[str, str]:
    """The image and objects columns: the given ones (checked), else by common name and feature type."""
    import datasets

    features = dataset.features
    columns = list(features)
    for role, chosen in (("image", image_column), ("objects", objects_column)):
        if chosen is not None and chosen not in features:
            raise DataError(f"{role} column '{chosen}' is not in the dataset; its columns are: {', '.join(columns)}")
    if image_column is None:
        named = [c for c in IMAGE_COLUMN_NAMES if c in features]
        typed = [c for c in columns if isinstance(features[c], datasets.Image)]
        image_column = next(iter(named + typed), None)
        if image_column is None:
            raise DataError(f"no image column found; the dataset's columns are: {', '.join(columns)}. Set image_column.")
    if objects_column is None:
        named = [c for c in OBJECTS_COLUMN_NAMES if c in features and _object_features(features[c]) is not None]
        typed = [c for c in columns if _object_features(features[c]) is not None]
        objects_column = next(iter(named + typed), None)
        if objects_column is None:
            raise DataError(
                f"no objects column found; the dataset's columns are: {', '.join(columns)}. Expected a column of "
                "per-image objects with 'bbox' (COCO [x, y, w, h]) and 'category' lists, as in the Hub's detection "
                "sets; set label_column to it"
            )
    keys = _object_features(features[objects_column])
    if keys is None:
        raise DataError(
            f"objects column '{objects_column}' holds {features[objects_column]}: expected per-image objects with "
            "'bbox' (COCO [x, y, w, h]) and 'category' lists"
        )
    return image_column, objects_column


def _object_features(feature) -> dict[str, Any] | None:
    """The per-object features (``{"bbox": ..., "category": ...}``) of an objects column, else None.

    ``Sequence({...})`` is a dict of lists (datasets >= 4) or a Sequence holding a dict (datasets 3);
    a list of dicts is a List / Sequence whose feature is the dict.
    """
    inner = feature
    if not isinstance(inner, dict):
        inner = getattr(inner, "feature", None)
    if isinstance(inner, dict) and all(key in inner for key in OBJECT_KEYS):
        return inner
    return None


def _innermost(feature):
    while not _is_class_label(feature) and hasattr(feature, "feature"):
        feature = feature.feature
    return feature


def _is_class_label(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.ClassLabel)


def object_lists(objects: Any, column: str = "objects") -> tuple[list, list]:
    """(boxes, categories) of one row's objects: a dict of lists or a list of per-object dicts."""
    if isinstance(objects, dict) and all(key in objects for key in OBJECT_KEYS):
        return list(objects["bbox"] or []), list(objects["category"] or [])
    if isinstance(objects, (list, tuple)) and all(isinstance(o, dict) and all(key in o for key in OBJECT_KEYS) for o in objects):
        return [o["bbox"] for o in objects], [o["category"] for o in objects]
    raise DataError(f"objects column '{column}' holds {repr(objects)[:200]}: expected a dict with 'bbox' and 'category' lists")


def detection_class_names(dataset) -> list[str] | None:
    """The category names of ``dataset``'s objects column when its category is a ``ClassLabel``, else None."""
    for feature in (getattr(dataset, "features", None) or {}).values():
        objects = _object_features(feature)
        if objects is not None:
            category = _innermost(objects["category"])
            return list(category.names) if _is_class_label(category) else None
    return None


def count_detection_classes(dataset, objects_column: str) -> int:
    """The ``ClassLabel``'s number of names when the category is one, else the largest category + 1."""
    category = _innermost(_object_features(dataset.features[objects_column])["category"])
    if _is_class_label(category):
        return category.num_classes
    largest = -1
    for batch in dataset.select_columns([objects_column]).iter(batch_size=256):
        for objects in batch[objects_column]:
            categories = object_lists(objects, objects_column)[1]
            bad = [c for c in categories if not _is_integer(c) or c < 0]
            if bad:
                raise DataError(f"objects column '{objects_column}' holds categories {bad[:5]!r}: expected integer class ids >= 0")
            largest = max([largest, *categories])
    if largest < 0:
        raise DataError(
            f"objects column '{objects_column}' holds no objects at all, so the classes cannot be counted; set num_classes"
        )
    return largest + 1


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_detection_rows(
    dataset, image_column: str, objects_column: str, num_classes: int, split: str, bbox_format: str = "xywh"
) -> None:
    """Raise a DataError naming the row and the value for the first object that cannot be trained on.

    One pass over the objects (and the image sizes: the ``width`` / ``height`` columns when the
    dataset has both, else each image's header). Refused: a bbox that is not 4 finite numbers,
    bbox and category lists of different lengths, a zero or negative width or height, a box
    reaching more than :data:`BOX_TOLERANCE` pixels past the image, a category outside
    0 .. num_classes - 1. An image without objects is valid (background only). ``bbox_format``
    (one of :data:`BBOX_FORMATS`) says how the boxes are written.
    """
    import datasets

    check_bbox_format(bbox_format)

    sized = "width" in dataset.features and "height" in dataset.features
    columns = [objects_column, "width", "height"] if sized else [objects_column, image_column]
    rows = dataset.select_columns(columns)
    feature = rows.features.get(image_column)
    if not sized and isinstance(feature, datasets.Image) and feature.decode:
        # Only the header is read for the size, not the pixels.
        rows = rows.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False))
    index = 0
    for batch in rows.iter(batch_size=256):
        for position, objects in enumerate(batch[objects_column]):
            where = f"{split} split, row {index}"
            try:
                boxes, categories = object_lists(objects, objects_column)
            except DataError as error:
                raise DataError(f"{where}: {error}") from None
            if boxes or categories:
                if sized:
                    size = (batch["width"][position], batch["height"][position])
                else:
                    size = image_size(batch[image_column][position], where)
                _check_objects(boxes, categories, size, num_classes, where, bbox_format)
            index += 1


def check_bbox_format(bbox_format: str) -> None:
    """Raise a ConfigError unless ``bbox_format`` is one of :data:`BBOX_FORMATS`."""
    if bbox_format not in BBOX_FORMATS:
        raise ConfigError(f"bbox_format = {bbox_format!r} is invalid: expected one of {', '.join(BBOX_FORMATS)} ([x, y, w, h] or [x1, y1, x2, y2])")


def _check_objects(
    boxes: list, categories: list, size: tuple[int, int], num_classes: int, where: str, bbox_format: str = "xywh"
) -> None:
    width, height = size
    layout, (left, right, top, bottom) = _BOX_FORMATS[bbox_format][1:]
    if len(boxes) != len(categories):
        raise DataError(f"{where}: {len(boxes)} bbox(es) but {len(categories)} categories: expected one category per bbox")
    for number, (box, category) in enumerate(zip(boxes, categories)):
        what = f"{where}, object {number}"
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise DataError(f"{what}: bbox {box!r} is malformed: expected 4 finite numbers {layout} in pixels (bbox_format: {bbox_format})")
        x1, y1 = box[0], box[1]
        if bbox_format == "xyxy":
            x2, y2 = box[2], box[3]
            w, h = x2 - x1, y2 - y1
        else:
            w, h = box[2], box[3]
            x2, y2 = x1 + w, y1 + h
        if w <= 0 or h <= 0:
            # Rounded for the message: 0.1 rather than 0.09999999999999998 for corners 0.2 and 0.3.
            raise DataError(
                f"{what}: bbox {list(box)} has width {round(w, 6)} and height {round(h, 6)}: expected both > 0 "
                f"({layout}, bbox_format: {bbox_format})"
            )
        if x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE or x2 > width + BOX_TOLERANCE or y2 > height + BOX_TOLERANCE:
            # Boxes written in the other layout fail here or in the size check above: name the option.
            raise DataError(
                f"{what}: bbox {list(box)} ({layout}) reaches outside the {width}x{height} image: expected "
                f"0 <= {left}, {right} <= {width}, 0 <= {top}, {bottom} <= {height} (within {BOX_TOLERANCE:g} px); "
                f"fix or remove the box, or set bbox_format if the dataset's boxes are not {layout}"
            )
        if not _is_integer(category) or not 0 <= category < num_classes:
            raise DataError(
                f"{what}: category {category!r} lies outside the model's {num_classes} classes: expected an integer in "
                f"0..{num_classes - 1}; set num_classes to match the dataset (or leave it unset)"
            )


def image_size(image: Any, where: str = "an image") -> tuple[int, int]:
    """(width, height) of a PIL image, an undecoded ``datasets`` image (its header only) or an (H, W[, C]) array."""
    from PIL import Image

    if isinstance(image, dict):
        source = image.get("path") or "an in-memory image"
        try:
            with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as opened:
                return opened.size
        except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise DataError(f"{where}: image '{source}' could not be read ({error}); remove or replace it") from None
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return image.size
    shape = getattr(image, "shape", None) or torch.as_tensor(image).shape
    return int(shape[1]), int(shape[0])


def _sample_labels(sample: dict[str, Any]):
    """SanitizeBoundingBoxes' labels_getter: the classes travel with the boxes, dropped together."""
    return sample["labels"]


def build_detection_transform(input_config: dict[str, Any], training: bool, augmentation: str = "crop_flip"):
    """A torchvision v2 transform of ``{"image", "boxes" (BoundingBoxes, any format), "labels"}`` samples.

    Boxes are converted to XYXY first and follow every geometric step. Evaluation and ``none``:
    resize to the input size (boxes scale with it). Training, by augmentation name (as for
    classification and segmentation):

    * ``crop``: resize, then a random crop with 1/8 padding (a shift of up to 1/8 of the side);
    * ``crop_flip``: the same and a horizontal flip;
    * ``timm``: the SSD recipe, the detection counterpart of timm's random resized crop: zoom out
      (p = 0.5, canvas up to 2x the side), a random IoU crop (keeps at least one object), resize,
      flip.

    Training boxes are then clamped to the image and those left without area are dropped together
    with their classes (v2.SanitizeBoundingBoxes); evaluation boxes are clamped, never dropped.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import InterpolationMode, v2

    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation '{augmentation}' is unknown; expected one of {', '.join(AUGMENTATIONS)}")
    _, height, width = input_config["input_size"]
    interpolation = InterpolationMode(input_config.get("interpolation", "bilinear"))
    steps = [v2.ToImage(), v2.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY)]
    augmented = training and augmentation != "none"
    if augmented and augmentation == "timm":
        steps += [
            v2.RandomZoomOut(fill=0, side_range=ZOOM_OUT_SIDE_RANGE, p=0.5),
            v2.RandomIoUCrop(),
            v2.Resize((height, width), interpolation=interpolation),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps.append(v2.Resize((height, width), interpolation=interpolation))
        if augmented:
            steps.append(v2.RandomCrop((height, width), padding=max(1, height // 8), fill=0))
        if augmented and augmentation == "crop_flip":
            steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ClampBoundingBoxes())
    if augmented:
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=_sample_labels))
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(input_config["mean"], input_config["std"]),
    ]
    return v2.Compose(steps)


class DetectionTransform:
    """``datasets`` transform: rows of (image, objects) -> ``pixel_values`` and (M, 5) ``labels``."""

    def __init__(
        self, image_column: str, objects_column: str, sample_transform, channels: int, image_feature=None, seeding=None,
        bbox_format: str = "xywh",
    ):
        check_bbox_format(bbox_format)
        self.image_column = image_column
        self.objects_column = objects_column
        self.sample_transform = sample_transform
        #: the tv_tensors.BoundingBoxFormat name the dataset's boxes are read in (see BBOX_FORMATS)
        self.box_format = _BOX_FORMATS[bbox_format][0]
        self.mode = "L" if channels == 1 else "RGB"
        #: the column's ``datasets.Image`` feature when images arrive undecoded (decoded here, named when broken)
        self.image_feature = image_feature
        #: per-sample random state for training augmentation (see hf_freqkd.data.seeding)
        self.seeding = seeding

    def decode(self, image):
        return decode_image(image, self.image_feature)

    def transform_one(self, image, objects) -> tuple[torch.Tensor, torch.Tensor]:
        """One row -> (pixel_values (C, H, W), labels (M, 5) of [class, x1, y1, x2, y2])."""
        from torchvision import tv_tensors

        image = self.decode(image).convert(self.mode)
        boxes, categories = object_lists(objects, self.objects_column)
        sample = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format=self.box_format, canvas_size=(image.height, image.width)
            ),
            "labels": torch.tensor(categories, dtype=torch.int64),
        }
        out = self.sample_transform(sample)
        labels = torch.cat([out["labels"].to(torch.float32)[:, None], out["boxes"].as_subclass(torch.Tensor).to(torch.float32)], dim=1)
        return out["image"].as_subclass(torch.Tensor), labels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = batch.get(ROW_INDEX_COLUMN)
        pixel_values, labels = [], []
        for position, (image, objects) in enumerate(zip(batch[self.image_column], batch[self.objects_column])):
            if self.seeding is not None and rows is not None:
                with self.seeding.sample_random_state(rows[position]):
                    values, row_labels = self.transform_one(image, objects)
            else:
                values, row_labels = self.transform_one(image, objects)
            pixel_values.append(values)
            labels.append(row_labels)
        return {"pixel_values": pixel_values, "labels": labels}


def with_detection_transform(
    dataset, image_column: str, objects_column: str, input_config: dict[str, Any], training: bool, augmentation: str,
    bbox_format: str = "xywh",
):
    """Return ``dataset`` formatted to yield ``pixel_values`` and ``labels`` ((M, 5): class, x1, y1, x2, y2).

    ``bbox_format`` (one of :data:`BBOX_FORMATS`) says how the dataset writes its boxes; the labels
    are corners (x1, y1, x2, y2) whichever it is. Training with augmentation adds the row-index column and seeds each sample from (seed, epoch,
    row), as ``with_image_transform`` does; the trainer finds the seeding through ``dataset_seeding``.
    """
    import datasets

    check_bbox_format(bbox_format)
    transform = build_detection_transform(input_config, training, augmentation)
    seeding = None
    if training and augmentation != "none":
        seeding = SeededAugmentation()  # DistillationTrainer sets its seed and epoch
        dataset = with_row_index(dataset)
    feature = dataset.features.get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        # Decode in the transform, not in datasets, so that a broken file is reported by name.
        dataset = dataset.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False))
    else:
        feature = None
    channels = input_config["input_size"][0]
    return dataset.with_transform(DetectionTransform(image_column, objects_column, transform, channels, feature, seeding, bbox_format))


def detection_data_functions(train_data, data_args, num_classes: int | None = None):
    """What a run needs for ``task: detection``, in the classification functions' shapes.

    Returns ``(image_column, objects_column, num_classes, transform, check_labels)``: the detected
    columns (``data_args.label_column`` names the objects column when the dataset's is not found by
    name), the class count (``num_classes`` if given, else from the category ``ClassLabel`` or the
    largest category), :func:`with_detection_transform`, and ``check_labels(dataset, objects_column,
    num_classes, split)``: :func:`check_detection_rows` with the image column bound. Both read the
    boxes in ``data_args.bbox_format``.
    """
    image_column, objects_column = detect_detection_columns(train_data, data_args.image_column, data_args.label_column)
    num_classes = num_classes or count_detection_classes(train_data, objects_column)
    bbox_format = data_args.bbox_format

    def check_labels(dataset, objects_column: str, num_classes: int, split: str) -> None:
        check_detection_rows(dataset, image_column, objects_column, num_classes, split, bbox_format)

    transform = functools.partial(with_detection_transform, bbox_format=bbox_format)
    return image_column, objects_column, num_classes, transform, check_labels


def detection_collator(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch rows of ``pixel_values`` (C, H, W) and ``labels`` (M_i, 5) of different M_i.

    Returns ``pixel_values`` (B, C, H, W) and ``labels`` (B, M, 5) with M = max(1, max M_i): each
    image's rows in order, then rows of :data:`PADDING_LABEL` (-100 in every column; class -100
    means no object). M is never 0, so a batch of images without objects is (B, 1, 5) of padding,
    and the tensor is never empty.
    """
    pixel_values = torch.stack([torch.as_tensor(row["pixel_values"]) for row in rows])
    labels = [torch.as_tensor(row["labels"], dtype=torch.float32).reshape(-1, 5) for row in rows]
    padded = torch.full((len(rows), max(1, *(len(row) for row in labels)), 5), float(PADDING_LABEL))
    for index, row in enumerate(labels):
        padded[index, : len(row)] = row
    return {"pixel_values": pixel_values, "labels": padded}
