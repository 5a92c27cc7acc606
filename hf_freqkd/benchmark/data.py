"""``hf-freqkd benchmark data``: images per second of the training data pipeline, and its cost as a
multiple of the plain ``datasets`` + torchvision pipeline doing the same operations.

hf_freqkd's pipeline is the training dataset a run trains on (:func:`hf_freqkd.data.with_image_transform`):
``datasets`` decodes each image, then ``crop`` / ``crop_flip`` run per batch in tensor ops, every
image's crop and flip drawn from its own generator seeded by (seed, epoch, row) so that a resumed
run sees the same views (:mod:`hf_freqkd.data.seeding`). The plain pipeline is what the transformers
image-classification example writes: the dataset's own image decoding, then ``with_transform`` of a
torchvision ``Compose`` image by image - ``convert`` to the input mode, ``Resize`` (only when some
image is not already at the input size), ``RandomCrop(size, padding=size // 8)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` - drawing from torch's global generator, with no
per-sample seeding. For ``timm`` and ``none`` both run :func:`hf_freqkd.data.build_image_transform`'s
transform image by image; hf_freqkd's ``timm`` path adds the per-sample seeding of the process's
generators.

Both read the same rows in the same shuffled order, a batch at a time through
``Dataset.__getitems__`` (what a ``DataLoader`` calls for a batch), in this process with one torch
thread by default, as one DataLoader worker would. A round passes every image through one pipeline;
rounds alternate between the pipelines after warm-up rounds, so load from other processes hits both
alike, and the medians are reported (:func:`hf_freqkd.speed.time_interleaved`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

HF_FREQKD = "hf_freqkd"
PLAIN = "plain"

#: what each pipeline does, by augmentation, for the table
DESCRIPTIONS = {
    "crop_flip": (
        "datasets decode + seeded crop and flip, tensor ops per batch",
        "datasets decode + torchvision RandomCrop, RandomHorizontalFlip, ToTensor, Normalize",
    ),
    "crop": (
        "datasets decode + seeded crop, tensor ops per batch",
        "datasets decode + torchvision RandomCrop, ToTensor, Normalize",
    ),
    "timm": (
        "datasets decode + seeded timm training transform, image by image",
        "datasets decode + timm training transform (RandomResizedCrop, flip, ToTensor, Normalize)",
    ),
    "none": ("datasets decode + timm eval transform, image by image", "datasets decode + timm eval transform"),
}


@dataclass
class PipelineTiming:
    """Seconds per image of each timed round of one pipeline."""

    seconds_per_image: list[float]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds_per_image)

    @property
    def images_per_second(self) -> float:
        return 1.0 / self.median_seconds


@dataclass
class DataBenchmark:
    """The settings and timings of one ``benchmark data`` run; ``ratio`` = hf_freqkd's time per image / plain's."""

    settings: dict[str, Any]
    ours: PipelineTiming
    plain: PipelineTiming
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours.median_seconds / self.plain.median_seconds

    def to_json(self) -> dict[str, Any]:
        pipelines = {
            name: {"images_per_second": timing.images_per_second, "ms_per_image": 1e3 * timing.median_seconds,
                   "rounds_ms_per_image": [1e3 * s for s in timing.seconds_per_image]}
            for name, timing in ((HF_FREQKD, self.ours), (PLAIN, self.plain))
        }
        return {"settings": self.settings, "pipelines": pipelines, "ratio": self.ratio}


def run_data_benchmark(
    dataset: str = "digits",
    output_dir: str | Path = "runs/bench/data",
    dataset_config_name: str | None = None,
    split: str = "train",
    image_size: int | None = None,
    channels: int = 3,
    augmentation: str = "crop_flip",
    images: int = 2048,
    batch_size: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 1,
    image_column: str | None = None,
    label_column: str | None = None,
) -> DataBenchmark:
    """Time both pipelines on ``images`` rows of ``dataset``'s ``split``; write ``data.md`` and ``data.json``.

    ``dataset`` is anything a run's ``dataset`` key accepts (a generated set, parquet, image folder,
    Hub id). ``image_size`` defaults to the first image's height; ``channels`` is 3 (RGB) or 1.
    """
    import torch

    from ..data.loading import AUGMENTATIONS, detect_columns, load_image_dataset, pick_split
    from ..output_dir import check_output_path
    from ..speed import time_interleaved

    for name, value in (("images", images), ("batch_size", batch_size), ("repeats", repeats), ("threads", threads)):
        if value < 1:
            raise ConfigError(f"benchmark data: {name} = {value} is invalid: expected an integer >= 1")
    if warmup < 0:
        raise ConfigError(f"benchmark data: warmup = {warmup} is invalid: expected an integer >= 0")
    if augmentation not in AUGMENTATIONS:
        raise ConfigError(f"benchmark data: augmentation '{augmentation}' is unknown; expected one of {', '.join(AUGMENTATIONS)}")
    if channels not in (1, 3):
        raise ConfigError(f"benchmark data: channels = {channels} is invalid: expected 1 or 3")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"benchmark data: image_size = {image_size} is invalid: expected an integer >= 1")
    check_output_path(output_dir, "--output-dir")

    splits = load_image_dataset(dataset, dataset_config_name)
    rows = splits[pick_split(list(splits), split, "benchmark", [split])]
    image_column, label_column = detect_columns(rows, image_column, label_column)
    rows = rows.select(range(min(images, len(rows))))
    if len(rows) == 0:
        raise DataError(f"benchmark data: split '{split}' of dataset '{dataset}' is empty")
    input_config = benchmark_input_config(rows, image_column, channels, image_size)
    ours = our_pipeline(rows, image_column, label_column, input_config, augmentation)
    plain = plain_pipeline(rows, image_column, label_column, input_config, augmentation)

    order = list(range(len(rows)))
    random.Random(0).shuffle(order)  # random access, as a training sampler reads
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def pass_over(formatted):
        def read_every_batch() -> None:
            for batch in batches:
                formatted.__getitems__(batch)

        return read_every_batch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        times = time_interleaved({HF_FREQKD: pass_over(ours), PLAIN: pass_over(plain)}, iterations=repeats, warmup=warmup)
    finally:
        torch.set_num_threads(threads_before)
    count = len(rows)
    settings = {
        "dataset": dataset,
        "dataset_config_name": dataset_config_name,
        "split": split,
        "images": count,
        "image_size": input_config["input_size"][1],
        "channels": channels,
        "augmentation": augmentation,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "total_seconds": time.perf_counter() - started,
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    result = DataBenchmark(
        settings,
        PipelineTiming([seconds / count for seconds in times[HF_FREQKD]]),
        PipelineTiming([seconds / count for seconds in times[PLAIN]]),
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "data.md").write_text(markdown_report(result) + "\n")
    (output_dir / "data.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    result.files = {"markdown": str(output_dir / "data.md"), "json": str(output_dir / "data.json")}
    return result


def benchmark_input_config(rows, image_column: str, channels: int, image_size: int | None) -> dict[str, Any]:
    """A student's input config for the benchmark: ImageNet normalisation (the cost does not depend on it)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if image_size is None:
        image_size = rows[0][image_column].height
    mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if channels == 3 else ((0.5,), (0.5,))
    return {"input_size": (channels, image_size, image_size), "mean": mean, "std": std, "interpolation": "bilinear", "crop_pct": 1.0}


def our_pipeline(rows, image_column: str, label_column: str, input_config: dict[str, Any], augmentation: str):
    """The training dataset a run builds (its seeding at seed 0, epoch 0)."""
    from ..data.loading import with_image_transform

    return with_image_transform(rows, image_column, label_column, input_config, training=True, augmentation=augmentation)


def plain_pipeline(rows, image_column: str, label_column: str, input_config: dict[str, Any], augmentation: str):
    """The plain ``datasets`` + torchvision pipeline of the same operations (see the module's docstring)."""
    import datasets
    from torchvision import transforms

    from ..data.loading import build_image_transform, crop_padding

    feature = rows.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise DataError(f"benchmark data: column '{image_column}' is not a datasets.Image column; expected a dataset of images")
    if not feature.decode:
        rows = rows.cast_column(image_column, datasets.Image(mode=feature.mode))
    channels, height, width = input_config["input_size"]
    mode = "L" if channels == 1 else "RGB"
    if augmentation in ("crop", "crop_flip"):
        resize = any(image.size != (width, height) for image in rows[image_column])
        steps = [transforms.Resize((height, width))] if resize else []
        steps.append(transforms.RandomCrop((height, width), padding=crop_padding(height)))
        if augmentation == "crop_flip":
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(input_config["mean"], input_config["std"])]
        image_transform = transforms.Compose(steps)
    else:
        image_transform = build_image_transform(input_config, training=augmentation != "none", augmentation=augmentation)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        return {"pixel_values": [image_transform(image.convert(mode)) for image in batch[image_column]], "labels": batch[label_column]}

    return rows.with_transform(transform)


def markdown_report(result: DataBenchmark) -> str:
    """The table of both pipelines, the ratio, the settings and the command that reproduces them."""
    settings = result.settings
    ours_text, plain_text = DESCRIPTIONS[settings["augmentation"]]
    lines = [
        (
            f"# Data pipeline: {settings['images']} images of {settings['image_size']} px from {settings['dataset']} "
            f"({settings['split']}), augmentation {settings['augmentation']}"
        ),
        "",
        "| pipeline | what it does | images/s | ms per image |",
        "|---|---|---:|---:|",
    ]
    for name, text, timing in ((HF_FREQKD, ours_text, result.ours), (PLAIN, plain_text, result.plain)):
        lines.append(f"| {name} | {text} | {timing.images_per_second:,.0f} | {1e3 * timing.median_seconds:.3f} |")
    lines += [
        "",
        (
            f"Time per image, hf_freqkd / plain: **{result.ratio:.2f}x** (medians of {settings['repeats']} alternating rounds, "
            f"batches of {settings['batch_size']}, {settings['threads']} torch thread(s), one process; "
            f"load average {settings['load_average']:.2f})."
        ),
        "",
        f"Command: `{command_line(settings)}`",
    ]
    return "\n".join(lines)


def summary_lines(result: DataBenchmark) -> list[str]:
    """What the command prints."""
    settings = result.settings
    return [
        (
            f"{settings['images']} images of {settings['image_size']} px, {settings['augmentation']}, batch {settings['batch_size']}, "
            f"{settings['repeats']} rounds, {settings['threads']} thread(s):"
        ),
        f"  {HF_FREQKD:<9} {result.ours.images_per_second:>10,.0f} images/s  ({1e3 * result.ours.median_seconds:.3f} ms per image)",
        f"  {PLAIN:<9} {result.plain.images_per_second:>10,.0f} images/s  ({1e3 * result.plain.median_seconds:.3f} ms per image)",
        f"  ratio (time per image, {HF_FREQKD} / {PLAIN}): {result.ratio:.2f}x",
    ]


def command_line(settings: dict[str, Any]) -> str:
    parts = ["hf-freqkd benchmark data", f"--dataset {settings['dataset']}"]
    if settings["dataset_config_name"]:
        parts.append(f"--dataset-config-name {settings['dataset_config_name']}")
    parts += [
        f"--split {settings['split']}", f"--image-size {settings['image_size']}", f"--channels {settings['channels']}",
        f"--augmentation {settings['augmentation']}", f"--images {settings['images']}", f"--batch-size {settings['batch_size']}",
        f"--repeats {settings['repeats']}", f"--warmup {settings['warmup']}", f"--threads {settings['threads']}",
    ]
    return " ".join(parts)
