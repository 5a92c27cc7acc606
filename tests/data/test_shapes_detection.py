"""The generated shapes detection set: seeded, sized as asked, boxes exactly around the visible shapes."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from hf_freqkd.data import shapes_detection
from hf_freqkd.data.loading import GENERATED_DATASETS, load_image_dataset
from hf_freqkd.data.shapes_detection import (
    SHAPE_KINDS,
    draw_scene,
    load_shapes_detection,
    parse_shapes_detection_config,
)


def images(split):
    return np.stack([np.asarray(row["image"]) for row in split])


def objects(split):
    return [row["objects"] for row in split]


def test_same_seed_same_images_and_boxes_other_seed_others():
    first = load_shapes_detection(num_train=6, num_test=3, image_size=32, seed=3)
    again = load_shapes_detection(num_train=6, num_test=3, image_size=32, seed=3)
    other = load_shapes_detection(num_train=6, num_test=3, image_size=32, seed=4)
    for split in ("train", "test"):
        assert images(first[split]).tobytes() == images(again[split]).tobytes()
        assert objects(first[split]) == objects(again[split])
    assert not np.array_equal(images(first["train"]), images(other["train"]))
    assert objects(first["train"]) != objects(other["train"])
    # The splits are independent streams, not the same images twice.
    assert not np.array_equal(images(first["train"])[:3], images(first["test"]))


def test_layout_is_the_hub_detection_sets():
    data = load_shapes_detection(num_train=3, num_test=2, image_size=40, num_classes=4, seed=0)
    features = data["train"].features
    assert isinstance(features["image"], datasets.Image)
    category = features["objects"]["category"]
    category = getattr(category, "feature", category)  # List(ClassLabel) in datasets >= 4
    assert category.names == ["circle", "square", "triangle", "cross"]
    row = data["train"][1]
    assert row["image"].mode == "RGB" and row["image"].size == (40, 40)
    assert (row["image_id"], row["width"], row["height"]) == (1, 40, 40)
    assert set(row["objects"]) == {"id", "area", "bbox", "category"}
    assert all(len(box) == 4 for box in row["objects"]["bbox"])
    # Object ids run through the split.
    ids = [i for objs in objects(data["train"]) for i in objs["id"]]
    assert ids == list(range(len(ids)))


def test_boxes_and_areas_are_the_extent_of_each_visible_shape():
    data = load_shapes_detection(num_train=12, num_test=1, image_size=48, num_classes=5, max_objects=4, seed=5)
    # The train split's stream, replayed: the same scenes with the map of which object each pixel shows.
    rng = np.random.default_rng(np.random.SeedSequence(5).spawn(2)[0])
    for row in data["train"]:
        scene = draw_scene(rng, 48, 5, 4)
        assert np.asarray(row["image"]).tobytes() == np.asarray(scene.image).tobytes()
        assert row["objects"]["category"] == scene.categories
        for index, ((x, y, w, h), area) in enumerate(zip(row["objects"]["bbox"], row["objects"]["area"])):
            shown = scene.owner == index
            assert area == shown.sum() and area > 0
            x, y, w, h = int(x), int(y), int(w), int(h)
            # Nothing of the object outside its box, and each edge of the box touches the object.
            assert shown[y : y + h, x : x + w].sum() == area
            assert shown[y].any() and shown[y + h - 1].any() and shown[:, x].any() and shown[:, x + w - 1].any()


class _NoNoise:
    """A generator that draws like the one it wraps, except that pixel noise is zero."""

    def __init__(self, rng):
        self.rng = rng

    def normal(self, loc, scale, size):
        return np.zeros(size)

    def __getattr__(self, name):
        return getattr(self.rng, name)


def test_boxes_match_the_drawn_pixels(monkeypatch):
    # Flat surfaces: the background is black and the k-th texture drawn is grey level 40 * k, so
    # the pixels alone tell which shape shows where.
    drawn = []

    def flat_texture(rng, size):
        drawn.append(40 * len(drawn))
        return np.full((size, size, 3), float(drawn[-1]))

    monkeypatch.setattr(shapes_detection, "texture", flat_texture)
    for seed in range(6):
        drawn.clear()
        scene = draw_scene(_NoNoise(np.random.default_rng(seed)), 40, 3, 4)
        pixels = np.asarray(scene.image)[..., 0]
        assert len(drawn) == len(scene.categories) + 1
        for (x, y, w, h), level in zip(scene.boxes, drawn[1:]):
            rows, cols = np.nonzero(pixels == level)
            assert [x, y, w, h] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]


def test_sizes_counts_classes_and_overlaps_span_the_range():
    data = load_shapes_detection(num_train=100, num_test=1, image_size=64, num_classes=3, max_objects=4, seed=0)
    rows = objects(data["train"])
    counts = [len(objs["category"]) for objs in rows]
    assert set(counts) == {1, 2, 3, 4}
    boxes = np.array([box for objs in rows for box in objs["bbox"]])
    assert len(boxes) >= 200
    sides = boxes[:, 2:].max(axis=1)
    # From about 6 px to about half the image, small ones as common as large ones.
    assert sides.min() <= 7 and sides.max() >= 28 and sides.max() <= 34
    assert (sides <= 10).mean() > 0.2 and (sides >= 20).mean() > 0.2
    assert set(c for objs in rows for c in objs["category"]) == {0, 1, 2}
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 64).all()
    # Each object shows at least half of itself: no slivers, yet boxes often overlap.
    areas = np.array([a for objs in rows for a in objs["area"]])
    assert areas.min() >= 10 and boxes[:, 2:].min() >= 3
    overlapping = sum(overlap(a, b) for objs in rows for i, a in enumerate(objs["bbox"]) for b in objs["bbox"][i + 1 :])
    assert overlapping >= 10


def overlap(first, second):
    (x1, y1, w1, h1), (x2, y2, w2, h2) = first, second
    return min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2)


def test_max_objects_and_num_classes_bound_the_scenes():
    data = load_shapes_detection(num_train=30, num_test=1, image_size=32, num_classes=1, max_objects=2, seed=2)
    rows = objects(data["train"])
    assert {len(objs["category"]) for objs in rows} == {1, 2}
    assert {c for objs in rows for c in objs["category"]} == {0}


def test_dataset_name_and_config_string_resolve():
    assert "shapes_detection" in GENERATED_DATASETS
    data = load_image_dataset("shapes_detection", "num_train=4,num_test=2,image_size=32,num_classes=2,max_objects=1,seed=1")
    assert (len(data["train"]), len(data["test"])) == (4, 2)
    assert data["train"][0]["image"].size == (32, 32)
    assert all(len(objs["category"]) == 1 for objs in objects(data["train"]))
    direct = load_shapes_detection(num_train=4, num_test=2, image_size=32, num_classes=2, max_objects=1, seed=1)
    assert objects(data["train"]) == objects(direct["train"])
    assert parse_shapes_detection_config(None) == {}
    assert parse_shapes_detection_config("default") == {}
    assert parse_shapes_detection_config("seed=2, max_objects=6") == {"seed": 2, "max_objects": 6}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 6}, f"num_classes = 6 is invalid: expected an integer in 1..{len(SHAPE_KINDS)}"),
        ({"num_classes": 0}, "num_classes = 0 is invalid"),
        ({"image_size": 16}, "image_size = 16 is invalid: expected an integer >= 24"),
        ({"max_objects": 0}, "max_objects = 0 is invalid: expected an integer >= 1"),
        ({"num_test": 0}, "num_test = 0 is invalid"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_shapes_detection(**kwargs)


def test_bad_config_string_is_named():
    with pytest.raises(ValueError, match="shapes_detection: dataset_config_name part 'max_shapes=3' is invalid: expected key=value with key one of num_train"):
        parse_shapes_detection_config("max_shapes=3")
    with pytest.raises(ValueError, match="image_size = 'big' is invalid: expected an integer"):
        parse_shapes_detection_config("image_size=big")
