"""Detection data: the objects column, box checks, box-aware seeded transforms and the padding collator."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_freqkd.config import DataArguments
from hf_freqkd.data.detection import (
    PADDING_LABEL,
    check_detection_rows,
    count_detection_classes,
    detect_detection_columns,
    detection_collator,
    detection_data_functions,
    with_detection_transform,
)
from hf_freqkd.data.seeding import ROW_INDEX_COLUMN, dataset_seeding
from hf_freqkd.data.shapes_detection import load_shapes_detection
from hf_freqkd.errors import ConfigError, DataError

#: no normalisation: pixel_values are the image's values in [0, 1]
PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}


def config(size):
    return {"input_size": (3, size, size), **PLAIN}


def detection_dataset(images, boxes, categories, names=("image", "objects"), class_names=None, sizes=False):
    """Rows in the Hub's layout; categories as a ClassLabel when ``class_names`` is given."""
    category = datasets.ClassLabel(names=class_names) if class_names else datasets.Value("int64")
    columns = {
        names[0]: datasets.Image(),
        names[1]: datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32")), "category": category}),
    }
    rows = {names[0]: images, names[1]: [{"bbox": b, "category": c} for b, c in zip(boxes, categories)]}
    if sizes:
        columns.update(width=datasets.Value("int32"), height=datasets.Value("int32"))
        rows.update(width=[image.width for image in images], height=[image.height for image in images])
    return datasets.Dataset.from_dict(rows, features=datasets.Features(columns))


def rectangles(size, placed):
    """A black (size x size) RGB image with each (x, y, w, h, colour) rectangle painted."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    for x, y, w, h, colour in placed:
        pixels[y : y + h, x : x + w] = colour
    return Image.fromarray(pixels)


# -- columns and classes --------------------------------------------------------------------------


def test_detect_columns_by_name_then_by_feature():
    shapes = load_shapes_detection(num_train=2, num_test=1, image_size=32)["train"]
    assert detect_detection_columns(shapes) == ("image", "objects")
    other = detection_dataset([Image.new("RGB", (8, 8))], [[]], [[]], names=("photo", "boxes_of_things"))
    assert detect_detection_columns(other) == ("photo", "boxes_of_things")


def test_detect_columns_names_what_is_missing():
    only_images = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [0]})
    with pytest.raises(DataError, match="no objects column found; the dataset's columns are: image, label. Expected a column"):
        detect_detection_columns(only_images)
    with pytest.raises(DataError, match="objects column 'label' holds Value.*expected per-image objects with 'bbox'"):
        detect_detection_columns(only_images, objects_column="label")
    shapes = load_shapes_detection(num_train=1, num_test=1, image_size=24)["train"]
    with pytest.raises(DataError, match="objects column 'annotations' is not in the dataset; its columns are: image_id, image"):
        detect_detection_columns(shapes, objects_column="annotations")


def test_objects_as_a_list_of_per_object_dicts_are_read_too():
    features = datasets.Features(
        {"image": datasets.Image(), "annotations": [{"bbox": datasets.Sequence(datasets.Value("float32")), "category": datasets.Value("int64")}]}
    )
    data = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (20, 10))], "annotations": [[{"bbox": [2, 1, 4, 3], "category": 1}, {"bbox": [0, 0, 20, 10], "category": 0}]]},
        features=features,
    )
    assert detect_detection_columns(data) == ("image", "annotations")
    assert count_detection_classes(data, "annotations") == 2
    check_detection_rows(data, "image", "annotations", 2, "train")
    row = with_detection_transform(data, "image", "annotations", config(20) | {"input_size": (3, 10, 20)}, training=False, augmentation="none")[0]
    assert row["labels"].tolist() == [[1, 2, 1, 6, 4], [0, 0, 0, 20, 10]]


def test_count_classes_from_class_label_else_largest_category():
    image = Image.new("RGB", (8, 8))
    named = detection_dataset([image], [[[0, 0, 2, 2]]], [[1]], class_names=["a", "b", "c", "d"])
    assert count_detection_classes(named, "objects") == 4  # the names, not the categories present
    plain = detection_dataset([image, image, image], [[[0, 0, 2, 2]], [], [[1, 1, 2, 2], [0, 0, 1, 1]]], [[1], [], [6, 2]])
    assert count_detection_classes(plain, "objects") == 7
    empty = detection_dataset([image], [[]], [[]])
    with pytest.raises(DataError, match="holds no objects at all, so the classes cannot be counted; set num_classes"):
        count_detection_classes(empty, "objects")
    negative = detection_dataset([image], [[[0, 0, 2, 2]]], [[-1]])
    with pytest.raises(DataError, match=r"holds categories \[-1\]: expected integer class ids >= 0"):
        count_detection_classes(negative, "objects")


# -- checks before training ------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [False, True], ids=["image-headers", "width-height-columns"])
@pytest.mark.parametrize(
    ("box", "category", "message"),
    [
        ([30, 2, 5, 4], 0, r"train split, row 1, object 1: bbox \[30.0, 2.0, 5.0, 4.0\] \(\[x, y, w, h\]\) reaches outside the 32x20 image: expected 0 <= x, x \+ w <= 32"),
        ([-2, 2, 5, 4], 0, r"bbox \[-2.0, 2.0, 5.0, 4.0\] \(\[x, y, w, h\]\) reaches outside the 32x20 image"),
        ([2, 12, 5, 10], 0, r"reaches outside the 32x20 image: expected .* 0 <= y, y \+ h <= 20"),
        ([2, 2, 0, 4], 0, r"train split, row 1, object 1: bbox \[2.0, 2.0, 0.0, 4.0\] has width 0.0 and height 4.0: expected both > 0"),
        ([2, 2, 4, -3], 0, r"has width 4.0 and height -3.0: expected both > 0"),
        ([2, 2, 4, 4], 7, r"train split, row 1, object 1: category 7 lies outside the model's 3 classes: expected an integer in 0..2"),
        ([2, 2, 4], 0, r"train split, row 1, object 1: bbox \[2.0, 2.0, 4.0\] is malformed: expected 4 finite numbers \[x, y, w, h\]"),
        ([2, 2, float("nan"), 4], 0, r"bbox \[2.0, 2.0, nan, 4.0\] is malformed"),
    ],
)
def test_bad_boxes_and_categories_are_named_before_training(box, category, message, sizes):
    image = Image.new("RGB", (32, 20))
    data = detection_dataset(
        [image, image], [[[1, 1, 4, 4]], [[0, 0, 32, 20], box]], [[2], [1, category]], sizes=sizes
    )
    with pytest.raises(DataError, match=message):
        check_detection_rows(data, "image", "objects", 3, "train")


def test_bbox_and_category_lists_of_different_lengths_are_named():
    data = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (16, 16))], "objects": [{"bbox": [[1, 1, 2, 2], [3, 3, 2, 2]], "category": [0]}]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))), "category": datasets.Sequence(datasets.Value("int64"))},
            }
        ),
    )
    with pytest.raises(DataError, match="validation split, row 0: 2 bbox\\(es\\) but 1 categories: expected one category per bbox"):
        check_detection_rows(data, "image", "objects", 3, "validation")


def test_images_without_objects_and_boxes_within_a_pixel_of_the_border_are_valid():
    image = Image.new("RGB", (32, 20))
    data = detection_dataset([image, image], [[], [[-0.5, 0, 32.8, 20.5]]], [[], [2]])
    check_detection_rows(data, "image", "objects", 3, "train")
    check_detection_rows(load_shapes_detection(num_train=20, num_test=1, image_size=32)["train"], "image", "objects", 3, "train")


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([30, 2, 35, 6], r"row 1, object 1: bbox \[30.0, 2.0, 35.0, 6.0\] \(\[x1, y1, x2, y2\]\) reaches outside the 32x20 image: "
         r"expected 0 <= x1, x2 <= 32, 0 <= y1, y2 <= 20 \(within 1 px\); fix or remove the box, or set bbox_format"),
        ([4, 2, 4, 6], r"bbox \[4.0, 2.0, 4.0, 6.0\] has width 0.0 and height 4.0: expected both > 0 \(\[x1, y1, x2, y2\], bbox_format: xyxy\)"),
        ([4, 6, 8, 2], r"bbox \[4.0, 6.0, 8.0, 2.0\] has width 4.0 and height -4.0: expected both > 0"),
        ([4, 6, 8], r"bbox \[4.0, 6.0, 8.0\] is malformed: expected 4 finite numbers \[x1, y1, x2, y2\] in pixels \(bbox_format: xyxy\)"),
    ],
)
def test_corner_boxes_are_checked_as_corners(box, message):
    image = Image.new("RGB", (32, 20))
    data = detection_dataset([image, image], [[[1, 1, 4, 4]], [[0, 0, 32, 20], box]], [[2], [1, 0]])
    with pytest.raises(DataError, match=message):
        check_detection_rows(data, "image", "objects", 3, "train", bbox_format="xyxy")


def test_the_same_numbers_pass_or_fail_by_bbox_format():
    # [20, 10, 30, 18] is a 10 x 8 box as corners; as [x, y, w, h] it reaches x = 50 in a 32 px image.
    image = Image.new("RGB", (32, 20))
    data = detection_dataset([image], [[[20, 10, 30, 18]]], [[0]])
    check_detection_rows(data, "image", "objects", 3, "train", bbox_format="xyxy")
    with pytest.raises(DataError, match=r"\(\[x, y, w, h\]\) reaches outside the 32x20 image: expected 0 <= x, x \+ w <= 32"):
        check_detection_rows(data, "image", "objects", 3, "train")


def test_unknown_bbox_format_is_named():
    data = detection_dataset([Image.new("RGB", (8, 8))], [[]], [[]])
    for call in (
        lambda: check_detection_rows(data, "image", "objects", 3, "train", bbox_format="cxcywh"),
        lambda: with_detection_transform(data, "image", "objects", config(8), training=False, augmentation="none", bbox_format="cxcywh"),
    ):
        with pytest.raises(ConfigError, match=r"^bbox_format = 'cxcywh' is invalid: expected one of xywh, xyxy"):
            call()


# -- transforms ------------------------------------------------------------------------------------


def test_evaluation_resize_scales_the_boxes_exactly():
    data = detection_dataset([Image.new("RGB", (100, 50), (255, 255, 255))], [[[10, 5, 20, 10], [0, 0, 100, 50]]], [[2, 0]])
    normalised = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    row = with_detection_transform(data, "image", "objects", normalised, training=False, augmentation="crop_flip")[0]
    assert row["pixel_values"].shape == (3, 64, 64) and row["pixel_values"].dtype == torch.float32
    assert torch.allclose(row["pixel_values"], torch.ones(3, 64, 64))  # white, normalised with mean = std = 0.5
    # [x, y, w, h] -> [class, x1, y1, x2, y2]; x scales by 64 / 100, y by 64 / 50.
    expected = torch.tensor([[2.0, 6.4, 6.4, 19.2, 19.2], [0.0, 0.0, 0.0, 64.0, 64.0]])
    assert row["labels"].dtype == torch.float32 and torch.allclose(row["labels"], expected)


def test_corner_boxes_become_the_same_labels_as_their_coco_boxes():
    image = rectangles(32, [BAR, BLOCK])
    coco = [[list(BAR[:4]), list(BLOCK[:4])]]
    corners = [[[x, y, x + w, y + h] for x, y, w, h in coco[0]]]
    for training, augmentation in ((False, "none"), (True, "crop_flip"), (True, "timm")):
        as_coco = with_detection_transform(detection_dataset([image], coco, [[1, 2]]), "image", "objects", config(24), training, augmentation)[0]
        as_corners = with_detection_transform(
            detection_dataset([image], corners, [[1, 2]]), "image", "objects", config(24), training, augmentation, bbox_format="xyxy"
        )[0]
        assert torch.equal(as_coco["labels"], as_corners["labels"]) and torch.equal(as_coco["pixel_values"], as_corners["pixel_values"])
    # At 32 px (no resize, no augmentation) corners come out as they went in.
    same_size = with_detection_transform(detection_dataset([image], corners, [[1, 2]]), "image", "objects", config(32), False, "none", bbox_format="xyxy")
    assert same_size[0]["labels"].tolist() == [[1, 0, 10, 2, 16], [2, 12, 8, 22, 20]]


def test_an_image_without_objects_gives_empty_labels_in_every_recipe():
    data = detection_dataset([Image.new("RGB", (24, 24))], [[]], [[]])
    for training, augmentation in ((False, "none"), (True, "crop"), (True, "crop_flip"), (True, "timm")):
        row = with_detection_transform(data, "image", "objects", config(16), training=training, augmentation=augmentation)[0]
        assert row["labels"].shape == (0, 5) and row["pixel_values"].shape == (3, 16, 16)


RED, GREEN = (255, 0, 0), (0, 255, 0)
# A thin red bar at the left edge (class 1) and a green block inside (class 2) of a 32 x 32 image.
BAR, BLOCK = (0, 10, 2, 6, RED), (12, 8, 10, 12, GREEN)


def crop_flip_outputs(epochs=24):
    data = detection_dataset([rectangles(32, [BAR, BLOCK])], [[list(BAR[:4]), list(BLOCK[:4])]], [[1, 2]])
    dataset = with_detection_transform(data, "image", "objects", config(32), training=True, augmentation="crop_flip")
    outputs = []
    for epoch in range(epochs):
        dataset_seeding(dataset).epoch = epoch
        outputs.append(dataset[0])
    return outputs


def colour_extent(pixel_values, channel):
    rows, cols = torch.nonzero(pixel_values[channel] > 0.5, as_tuple=True)
    if rows.numel() == 0:
        return None
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


def test_crop_and_flip_move_each_box_exactly_with_its_pixels():
    flipped = kept = 0
    for row in crop_flip_outputs():
        for label in row["labels"].tolist():
            channel = {1: 0, 2: 1}[int(label[0])]  # class 1 is the red bar, class 2 the green block
            assert label[1:] == colour_extent(row["pixel_values"], channel)
        block = row["labels"][row["labels"][:, 0] == 2][0]
        assert [(block[3] - block[1]).item(), (block[4] - block[2]).item()] == [10, 12]  # shifted or mirrored, never resized
        # The bar starts left of the block; a flip puts it to the right.
        bar = row["labels"][row["labels"][:, 0] == 1]
        if len(bar):
            kept += 1
            flipped += bool(bar[0, 1] > block[1])
    assert 0 < flipped < kept


def test_a_box_cropped_away_is_dropped_with_its_class():
    dropped = 0
    for row in crop_flip_outputs():
        if colour_extent(row["pixel_values"], 0) is None:  # no red pixel left: the bar left the image
            dropped += 1
            assert row["labels"].shape == (1, 5) and row["labels"][0, 0] == 2
        else:
            assert row["labels"][:, 0].tolist() == [1, 2]
    assert dropped > 0


def shapes_training(augmentation="timm", rows=6):
    data = load_shapes_detection(num_train=rows, num_test=1, image_size=32, seed=1)["train"]
    return with_detection_transform(data, "image", "objects", config(24), training=True, augmentation=augmentation)


def test_same_row_epoch_and_seed_give_the_same_sample_other_epochs_other_crops():
    dataset = shapes_training()
    seeding = dataset_seeding(dataset)
    assert seeding is not None and ROW_INDEX_COLUMN in dataset.column_names
    first = [dataset[i] for i in range(6)]
    torch.manual_seed(99), random.seed(99), torch.rand(100)  # unrelated draws in between
    again = [dataset[i] for i in range(6)]
    batched = dataset[0:6]  # batched access: the same per-row result
    for one, other, position in zip(first, again, range(6)):
        assert torch.equal(one["pixel_values"], other["pixel_values"]) and torch.equal(one["labels"], other["labels"])
        assert torch.equal(one["labels"], batched["labels"][position])
    seeding.epoch = 1
    next_epoch = [dataset[i] for i in range(6)]
    assert any(not torch.equal(a["labels"], b["labels"]) for a, b in zip(first, next_epoch))
    assert not torch.equal(torch.stack([r["pixel_values"] for r in first]), torch.stack([r["pixel_values"] for r in next_epoch]))
    seeding.epoch = 0
    assert torch.equal(dataset[3]["labels"], first[3]["labels"])


def test_timm_recipe_keeps_boxes_inside_and_classes_from_the_row():
    dataset = shapes_training("timm", rows=8)
    raw = load_shapes_detection(num_train=8, num_test=1, image_size=32, seed=1)["train"]
    for epoch in range(3):
        dataset_seeding(dataset).epoch = epoch
        for index in range(8):
            labels = dataset[index]["labels"]
            assert labels.shape[0] >= 1  # the IoU crop keeps at least one object
            assert set(labels[:, 0].long().tolist()) <= set(raw[index]["objects"]["category"])
            assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 24).all()
            assert (labels[:, 3] > labels[:, 1]).all() and (labels[:, 4] > labels[:, 2]).all()


def test_evaluation_and_unaugmented_data_are_not_seeded():
    data = load_shapes_detection(num_train=2, num_test=1, image_size=24)["train"]
    evaluation = with_detection_transform(data, "image", "objects", config(24), training=False, augmentation="crop_flip")
    assert dataset_seeding(evaluation) is None and ROW_INDEX_COLUMN not in evaluation.column_names
    assert dataset_seeding(shapes_training("none")) is None
    # At the image's own size evaluation boxes are the dataset's, as XYXY.
    x, y, w, h = data[0]["objects"]["bbox"][0]
    assert evaluation[0]["labels"][0, 1:].tolist() == [x, y, x + w, y + h]


def test_unknown_augmentation_is_named():
    data = load_shapes_detection(num_train=1, num_test=1, image_size=24)["train"]
    with pytest.raises(ValueError, match="augmentation 'mosaic' is unknown; expected one of crop_flip, crop, timm, none"):
        with_detection_transform(data, "image", "objects", config(24), training=True, augmentation="mosaic")


# -- what a run uses -------------------------------------------------------------------------------


def test_data_functions_detect_count_and_check_with_the_image_column_bound():
    data = load_shapes_detection(num_train=4, num_test=1, image_size=24, num_classes=4)["train"]
    found = detection_data_functions(data, DataArguments(dataset="shapes_detection"))
    image_column, objects_column, num_classes, transform, check_labels = found
    assert (image_column, objects_column, num_classes) == ("image", "objects", 4)
    check_labels(data, objects_column, num_classes, "train")
    with pytest.raises(DataError, match=r"train split, row \d+, object \d+: category [1-3] lies outside the model's 1 classes"):
        check_labels(data, objects_column, 1, "train")
    row = transform(data, image_column, objects_column, config(16), training=False, augmentation="none")[0]
    assert row["pixel_values"].shape == (3, 16, 16) and row["labels"].shape[1] == 5
    # A given num_classes wins over the ClassLabel's.
    assert detection_data_functions(data, DataArguments(dataset="shapes_detection"), num_classes=9)[2] == 9


def test_data_functions_read_boxes_in_the_configured_bbox_format():
    image = Image.new("RGB", (32, 20))
    data = detection_dataset([image], [[[20, 10, 30, 18]]], [[0]])  # a valid corner box, not a valid COCO one
    _, objects_column, num_classes, transform, check_labels = detection_data_functions(
        data, DataArguments(dataset="x", task="detection", bbox_format="xyxy")
    )
    check_labels(data, objects_column, num_classes, "train")
    row = transform(data, "image", objects_column, {**config(32), "input_size": (3, 20, 32)}, training=False, augmentation="none")[0]
    assert row["labels"].tolist() == [[0, 20, 10, 30, 18]]
    _, _, _, transform, check_labels = detection_data_functions(data, DataArguments(dataset="x", task="detection"))
    with pytest.raises(DataError, match=r"reaches outside the 32x20 image"):
        check_labels(data, objects_column, num_classes, "train")
    row = transform(data, "image", objects_column, {**config(32), "input_size": (3, 20, 32)}, training=False, augmentation="none")[0]
    assert row["labels"].tolist() == [[0, 20, 10, 32, 20]]  # read as [x, y, w, h] and clamped to the image


def test_collator_pads_with_minus_100_and_keeps_order():
    def row(*labels):
        return {"pixel_values": torch.full((3, 4, 4), float(len(labels))), "labels": torch.tensor(labels, dtype=torch.float32).reshape(-1, 5)}

    first, empty, second = row([1, 0, 0, 2, 2], [0, 1, 1, 3, 3]), row(), row([2, 5, 5, 6, 7])
    batch = detection_collator([first, empty, second])
    assert batch["pixel_values"].shape == (3, 3, 4, 4) and batch["pixel_values"][:, 0, 0, 0].tolist() == [2.0, 0.0, 1.0]
    assert batch["labels"].shape == (3, 2, 5)
    assert torch.equal(batch["labels"][0], first["labels"])
    assert (batch["labels"][1] == PADDING_LABEL).all()
    assert torch.equal(batch["labels"][2, 0], second["labels"][0]) and (batch["labels"][2, 1] == PADDING_LABEL).all()
    # A batch without any object still has one (padding) row per image.
    nothing = detection_collator([empty, empty])["labels"]
    assert nothing.shape == (2, 1, 5) and (nothing == -100).all()
