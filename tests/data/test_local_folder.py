"""A local folder scanned once gives what ``datasets.load_dataset(folder)`` gives: splits, features, class names, rows."""

from __future__ import annotations

import os
from collections import Counter

import datasets
import numpy as np
import pytest
from datasets.load import infer_module_for_data_files_list
from PIL import Image

from hf_freqkd.data import load_image_dataset
from hf_freqkd.data.local_folder import infer_module, load_local_folder, scan_folder, split_files


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path, monkeypatch):
    """Each test converts into its own cache, so that a cached conversion cannot hide a difference."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


def save_image(path, seed=0, size=(5, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_images(root, relative_paths):
    for seed, relative in enumerate(relative_paths):
        save_image(root / relative, seed)


def make_parquet(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(labels))
    images = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in labels]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(str(path))


def rows(split: datasets.Dataset) -> list[dict]:
    """The stored rows: image paths (or bytes) and labels, undecoded."""
    return split.data.table.to_pylist()


def assert_same_as_datasets(folder) -> datasets.DatasetDict:
    expected = datasets.load_dataset(str(folder))
    got = load_local_folder(folder)
    assert list(got) == list(expected)
    for name, split in expected.items():
        assert got[name].features == split.features, name
        assert rows(got[name]) == rows(split), name
    return got


# ----------------------------------------------------------------------------------------------
# Layouts, each against datasets.load_dataset(folder)


def test_class_folders_are_one_train_split_labelled_alphabetically(tmp_path):
    make_images(tmp_path / "pets", ["zebra/1.png", "cat/2.png", "cat/1.png", "dog/a.jpg", "dog/B.PNG"])
    got = assert_same_as_datasets(tmp_path / "pets")
    assert got["train"].features["label"].names == ["cat", "dog", "zebra"]


def test_split_folders_with_classes(tmp_path):
    root = tmp_path / "pets"
    make_images(root, [f"{split}/{name}/{i}.png" for split in ("train", "validation", "test") for name in ("cat", "dog") for i in range(2)])
    got = assert_same_as_datasets(root)
    assert list(got) == ["train", "validation", "test"]


def test_split_keywords_in_folder_names(tmp_path):
    root = tmp_path / "pets"
    make_images(root, ["training_set/cat/1.png", "training_set/dog/1.png", "val/cat/1.png", "val/dog/2.png", "eval-2/dog/3.png"])
    assert_same_as_datasets(root)


def test_split_keywords_in_file_names(tmp_path):
    root = tmp_path / "pets"
    make_images(root, ["cat/train_1.png", "cat/test_1.png", "dog/train-2.png", "dog/train 3.png", "dog/dev.4.png", "dog/other.png"])
    assert_same_as_datasets(root)


def test_a_file_matched_by_two_patterns_of_a_split_is_listed_twice_as_datasets_lists_it(tmp_path):
    root = tmp_path / "pets"
    make_images(root, ["train/train_cat/1.png", "train/dog/1.png", "test/cat/1.png"])
    got = assert_same_as_datasets(root)
    assert got["train"].num_rows == 3


def test_hidden_special_and_card_files_are_left_out(tmp_path):
    root = tmp_path / "pets"
    make_images(root, ["cat/1.png", "dog/1.png", ".cache/cat/9.png", "__pycache__/x.png", "cat/.thumb.png", "dog/__init__.png"])
    (root / "README.md").write_text("# Pets\nNo card metadata.\n")
    (root / "cat" / "notes.txt").write_text("not an image")
    got = assert_same_as_datasets(root)
    assert got["train"].num_rows == 3


def test_files_and_folders_side_by_side_keep_datasets_order(tmp_path):
    # Sorted as paths: "a-b.png" < "a.png" < "a/x.png" < "a0.png"; images at two depths carry no label.
    root = tmp_path / "mixed"
    make_images(root, ["a/x.png", "a.png", "a-b.png", "a0.png", "a/y/z.png"])
    got = assert_same_as_datasets(root)
    assert list(got["train"].features) == ["image"]


@pytest.mark.parametrize("paths", [["only/1.png", "only/2.png"], ["1.png", "2.png"]], ids=["one-class", "flat"])
def test_one_class_carries_no_label(tmp_path, paths):
    make_images(tmp_path / "set", paths)
    got = assert_same_as_datasets(tmp_path / "set")
    assert list(got["train"].features) == ["image"]


def test_parquet_shards_at_the_top(tmp_path):
    root = tmp_path / "cifar_like"
    make_parquet(root / "train-00000-of-00001.parquet", [0, 1, 2, 1])
    make_parquet(root / "test-00000-of-00001.parquet", [2, 0])
    (root / "README.md").write_text("# A dataset\n")
    assert_same_as_datasets(root)


def test_parquet_shards_in_data_with_a_split_of_its_own(tmp_path):
    root = tmp_path / "downloaded"
    make_parquet(root / "data" / "train-00000-of-00002.parquet", [0, 1])
    make_parquet(root / "data" / "train-00001-of-00002.parquet", [2])
    make_parquet(root / "data" / "extra-00000-of-00001.parquet", [1])
    got = assert_same_as_datasets(root)
    assert list(got) == ["train", "extra"]


def test_image_folder_with_metadata_goes_to_the_builder(tmp_path):
    root = tmp_path / "captions"
    make_images(root, ["train/a.png", "train/b.png"])
    (root / "train" / "metadata.csv").write_text("file_name,caption\na.png,first\nb.png,second\n")
    got = assert_same_as_datasets(root)
    assert list(got["train"].features) == ["image", "caption"]


def test_a_converted_folder_is_reused_until_a_file_changes(tmp_path):
    # Parquet shards go through datasets' builder with explicit files: its cache key holds each file's
    # modification time, so an unchanged folder reuses the Arrow files and a changed one is converted again.
    root = tmp_path / "shards"
    make_parquet(root / "train-00000-of-00001.parquet", [0, 1, 2])
    first = load_local_folder(root)["train"].cache_files
    again = load_local_folder(root)["train"].cache_files
    assert again == first and all(os.path.exists(file["filename"]) for file in first)
    stat = os.stat(root / "train-00000-of-00001.parquet")
    os.utime(root / "train-00000-of-00001.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_local_folder(root)["train"].cache_files != first


def test_a_card_with_configs_is_left_to_datasets(tmp_path, monkeypatch):
    root = tmp_path / "carded"
    make_images(root, ["first/cat/1.png", "first/dog/1.png", "second/cat/2.png"])
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: first/**\n---\n")
    calls = []
    load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda path, *args, **kwargs: calls.append(path) or load_dataset(path, *args, **kwargs))
    got = load_local_folder(root)
    assert calls == [str(root)]
    assert got["train"].num_rows == 2


def test_a_file_name_with_a_line_break_is_dropped_as_datasets_drops_it(tmp_path):
    # datasets' file filter (a regular expression whose ".*" stops at a line break) leaves it out.
    make_images(tmp_path / "pets", ["cat/1.png", "cat/two\nlines.png", "dog/1.png"])
    got = assert_same_as_datasets(tmp_path / "pets")
    assert got["train"].num_rows == 2


def test_a_linked_folder_is_followed_once(tmp_path):
    root = tmp_path / "pets"
    make_images(root, ["cat/1.png", "dog/1.png"])
    make_images(tmp_path / "elsewhere", ["2.png"])
    os.symlink(tmp_path / "elsewhere", root / "eel")
    os.symlink(root, root / "cat" / "loop")
    got = load_local_folder(root)
    assert got["train"].features["label"].names == ["cat", "dog", "eel"]
    assert got["train"].num_rows == 3


def test_load_image_dataset_reads_the_tree_once(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    make_images(root, [f"{split}/{name}/{i}.png" for split in ("train", "test") for name in ("cat", "dog") for i in range(2)])
    listed = Counter()
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.update([os.fspath(path)]) or scandir(path))
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("datasets was asked to load the folder"))
    loaded = load_image_dataset(str(root))
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 4, "test": 4}
    assert max(listed.values()) == 1 and len(listed) == 7


def test_the_same_folder_gives_the_same_fingerprint(tmp_path):
    make_images(tmp_path / "pets", ["cat/1.png", "dog/1.png"])
    first, second = load_local_folder(tmp_path / "pets"), load_local_folder(tmp_path / "pets")
    assert first["train"]._fingerprint == second["train"]._fingerprint
    make_images(tmp_path / "pets", ["dog/2.png"])
    assert load_local_folder(tmp_path / "pets")["train"]._fingerprint != first["train"]._fingerprint


def test_a_folder_without_data_files_is_reported_as_datasets_reports_it(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(datasets.data_files.EmptyDatasetError):
        load_local_folder(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# The pieces against datasets' own


@pytest.mark.parametrize(
    "names",
    [
        ["a.png", "b.png", "c.jpg"],
        ["a.parquet", "b.csv"],  # a draw: parquet first
        ["a.csv", "b.json"],  # a draw: json before csv
        ["a.png", "metadata.csv", "metadata.jsonl"],  # metadata files do not count
        ["a.tar.gz", "b.TXT", "c.txt"],
        ["a.JPG", "b.jpeg", "c.tiff", "d.tif"],
        ["README", "notes.md"],
    ],
)
def test_infer_module_ranks_as_datasets(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    scan = scan_folder(tmp_path)
    splits = {"train": range(len(scan.files))}
    expected = infer_module_for_data_files_list([f"{scan.root}/{name}" for name in scan.files])
    if expected[0] is None:
        with pytest.raises(FileNotFoundError):
            infer_module(scan, splits, str(tmp_path))
    else:
        assert infer_module(scan, splits, str(tmp_path)) == expected


@pytest.mark.parametrize(
    "names",
    [
        ["a.png", "b.png", "c.png"],
        ["a.png", "b.jpg", "c.png"],  # a tail in the middle, seen at neither end
        ["a.png", "b.tar.png", "c"],  # the dots number the names, one has two and one none
        ["a.png", "b.jpeg", "c.png\nd.png"],  # a newline in a name
        ["a.b.png", "c.b.png"],
        ["x", "y"],
    ],
)
def test_tails_are_counted_as_name_by_name(names):
    from hf_freqkd.data.local_folder import _count_tails

    assert _count_tails(sorted(names)) == Counter((parts := name.partition("."))[1] + parts[2] for name in names)


def test_split_files_of_a_large_flat_layout_match_only_through_the_catch_all(tmp_path):
    make_images(tmp_path / "pets", [f"class_{i % 3}/img_{i}.png" for i in range(30)])
    scan = scan_folder(tmp_path / "pets")
    assert split_files(scan) == {"train": range(30)}
    assert scan.files == sorted(scan.files)
