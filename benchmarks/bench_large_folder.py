"""Time to the first training batch from a large image folder, against one ``os.walk`` of it.

Creates ``--images`` small images in ``<folder>/<class>/<image>.png`` (hard links of a few tiny
PNGs, so 100,000 files cost seconds and almost no disk), then times, on a warm file-system cache:

* ``os.walk``: one walk of the folder, listing every file (the floor for anything that reads the tree);
* first batch: ``load_image_dataset(folder)`` + ``with_image_transform`` (training, ``crop_flip``) +
  a shuffled ``DataLoader``'s first batch, as a run gets it (imports are not timed).

Each is timed ``--repeats`` times, alternately; the medians and their ratio are printed as a
Markdown table with the command that produced it. ``--compare-datasets`` also times what datasets
does on its own, in a fresh datasets cache: ``load_dataset("imagefolder", data_files=<the explicit
files>)`` twice (conversion, then the cached second load) and ``load_dataset(folder)`` (the globbing
inference this library no longer uses; minutes above ~50,000 files).

    python benchmarks/bench_large_folder.py [--images 100000] [--classes 100] [--repeats 3] [--compare-datasets]

Run it alone on the machine: the ratio is of two short times, and other processes' load shifts both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

INPUT_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "crop_pct": 1.0}


#: hard links per source image: ext4 allows 65,000 links to one file
LINKS_PER_SOURCE = 50_000


def make_folder(folder: Path, images: int, classes: int) -> None:
    """``images`` hard links of a few 8x8 PNGs, spread evenly over ``classes`` class folders."""
    import numpy as np
    from PIL import Image

    distinct = max(4, -(-images // LINKS_PER_SOURCE))
    sources = folder.parent / f"{folder.name}_sources"
    sources.mkdir(parents=True)
    rng = np.random.default_rng(0)
    originals = []
    for index in range(distinct):
        path = sources / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        originals.append(path)
    class_folders = [folder / f"class_{index:04d}" for index in range(classes)]
    for class_folder in class_folders:
        class_folder.mkdir(parents=True)
    for index in range(images):
        os.link(originals[index % distinct], class_folders[index % classes] / f"img_{index:08d}.png")


def walk_seconds(folder: Path) -> tuple[float, int]:
    start = time.perf_counter()
    count = sum(len(files) for _, _, files in os.walk(folder))
    return time.perf_counter() - start, count


def first_batch_seconds(folder: Path, batch_size: int) -> dict[str, float]:
    """The seconds of each step from the folder's name to the first training batch."""
    import torch

    from hf_freqkd.data import detect_columns, load_image_dataset, with_image_transform

    start = time.perf_counter()
    train = load_image_dataset(str(folder))["train"]
    loaded = time.perf_counter()
    image_column, label_column = detect_columns(train)
    formatted = with_image_transform(train, image_column, label_column, INPUT_CONFIG, training=True, augmentation="crop_flip")
    transformed = time.perf_counter()
    batch = next(iter(torch.utils.data.DataLoader(formatted, batch_size=batch_size, shuffle=True)))
    done = time.perf_counter()
    assert batch["pixel_values"].shape == (batch_size, *INPUT_CONFIG["input_size"])
    return {"load": loaded - start, "transform": transformed - loaded, "batch": done - transformed, "total": done - start}


def datasets_seconds(folder: Path, cache: Path) -> dict[str, float]:
    """datasets on its own: the builder with explicit files (twice: conversion, cached), then its inference."""
    import datasets
    from datasets.data_files import DataFilesDict, DataFilesList

    from hf_freqkd.data.local_folder import scan_folder

    datasets.config.HF_DATASETS_CACHE = str(cache)
    datasets.disable_progress_bars()
    seconds = {}
    for label in ("explicit files, first load", "explicit files, second load"):
        start = time.perf_counter()
        scan = scan_folder(folder)
        files = scan.absolute(range(len(scan.files)))
        data_files = DataFilesDict({"train": DataFilesList(files, [(str(os.stat(file).st_mtime),) for file in files])})
        datasets.load_dataset("imagefolder", data_files=data_files)
        seconds[label] = time.perf_counter() - start
    start = time.perf_counter()
    datasets.load_dataset(str(folder))
    seconds["load_dataset(folder)"] = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="where to create the folder (default: a temporary one, removed)")
    parser.add_argument("--compare-datasets", action="store_true", help="also time datasets' own loading (slow)")
    args = parser.parse_args(argv)

    import torch

    import hf_freqkd.data  # noqa: F401 - imports are not timed

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_large_folder_", dir=args.folder))
    try:
        folder = work / "images"
        start = time.perf_counter()
        make_folder(folder, args.images, args.classes)
        print(f"created {args.images} images in {args.classes} class folders under {folder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        walk_seconds(folder)  # both timings below on a warm file-system cache
        walks, batches = [], []
        for _ in range(args.repeats):
            seconds, count = walk_seconds(folder)
            walks.append(seconds)
            batches.append(first_batch_seconds(folder, args.batch_size))
        assert count == args.images
        walk = statistics.median(walks)
        parts = {key: statistics.median(batch[key] for batch in batches) for key in batches[0]}
        command = "python benchmarks/bench_large_folder.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print(f"{args.images:,} images in {args.classes} class folders, batch {args.batch_size}, median of {args.repeats}:\n")
        print("| step | seconds |\n| --- | ---: |")
        print(f"| one `os.walk` of the folder | {walk:.3f} |")
        print(f"| `load_image_dataset(folder)` | {parts['load']:.3f} |")
        print(f"| `with_image_transform` (crop_flip) | {parts['transform']:.3f} |")
        print(f"| first batch of a shuffled DataLoader | {parts['batch']:.3f} |")
        print(f"| **time to the first batch** | **{parts['total']:.3f}** ({parts['total'] / walk:.1f}x the walk) |")
        if args.compare_datasets:
            for label, seconds in datasets_seconds(folder, work / "datasets_cache").items():
                print(f"| datasets, {label} | {seconds:.2f} |")
        print(f"\n`{command.strip()}`")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
