"""Training from a ``datasets.IterableDataset``: local parquet shards or a Hub id read as a stream.

``streaming: true`` reads rows as training consumes them, through the same transform as a
random-access split (:class:`~hf_freqkd.data.loading.ImageClassificationTransform`). What a stream
cannot do is refused when the config is read (:func:`check_streaming_arguments`): a stream has no
length (``max_steps`` sets the run's length), no random access (no ``max_train_samples`` draw, no
stratified ``validation_fraction``, no teacher cache keyed by row), and only classification rows are
streamed for now.

Seeded augmentation: each streamed row gets its position in the process's stream as its row index,
so its crop and flip depend on (seed, position), as a random-access row's depend on (seed, epoch,
row). The training stream repeats without end, so the Trainer sees one epoch and positions keep
counting across passes: in the first pass a streamed row is augmented as the same row of the
random-access split in epoch 0; later passes differ from the random-access epochs. Under Accelerate with several processes the stream is shared out by accelerate (see
docs/scale.md, "Streaming"): with its default ``dispatch_batches`` the main process reads the whole
stream and positions are global; with ``dispatch_batches: false`` each process reads its own
shards and counts positions from 0 in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .seeding import ROW_INDEX_COLUMN

#: tasks whose rows can be streamed
STREAMING_TASKS = ("classification",)
#: rows transformed together: small, so that the first batch does not wait for a thousand decoded images
STREAM_MAP_BATCH_SIZE = 64


def check_streaming_arguments(args, data_args) -> None:
    """Refuse, before anything is loaded or written, what a streamed run cannot do."""
    if not getattr(data_args, "streaming", False):
        return
    if data_args.task not in STREAMING_TASKS:
        raise ConfigError(
            f"streaming is not supported for task '{data_args.task}' yet (only {', '.join(STREAMING_TASKS)}); "
            "set streaming: false"
        )
    if args.max_steps is None or args.max_steps <= 0:
        raise ConfigError(
            f"streaming: true needs max_steps > 0 (got max_steps = {args.max_steps}): a stream has no length, "
            "so num_train_epochs cannot be turned into a number of steps"
        )
    refused = {
        "teacher_cache": (
            getattr(args, "teacher_cache", None),
            "the cache holds teacher outputs per (epoch, row) of a random-access split; unset teacher_cache or streaming",
        ),
        "max_train_samples": (
            data_args.max_train_samples,
            "a seeded draw of N rows needs the whole split; max_steps bounds a streamed run instead",
        ),
        "validation_fraction": (
            data_args.validation_fraction,
            "a stratified split cannot be carved from a stream; name an eval_split or set eval_strategy: 'no'",
        ),
    }
    for name, (value, reason) in refused.items():
        if value:
            raise ConfigError(f"{name} = {value!r} cannot be used with streaming: true: {reason}")


def load_streaming_dataset(dataset: str, config_name: str | None, trust_remote_code: bool = False):
    """A ``datasets.IterableDatasetDict`` of a local parquet file / folder of parquet shards, or a Hub id."""
    import datasets

    from ..sources import is_hub_repo_id, local_path, looks_like_path, missing_path_error
    from .loading import DATASET_SOURCES, GENERATED_DATASETS, _check_parquet_has_rows, _load_hub_dataset
    from .local_folder import scan_folder

    if dataset in GENERATED_DATASETS:
        raise ConfigError(
            f"dataset '{dataset}' is generated in memory: streaming reads parquet files or a Hub id; set streaming: false"
        )
    if not isinstance(dataset, str) or not dataset:
        raise DataError(f"dataset {dataset!r} is invalid: expected {DATASET_SOURCES}")
    path = local_path(dataset)
    if not path.exists():
        if looks_like_path(dataset) or not is_hub_repo_id(dataset):
            raise missing_path_error("dataset", dataset, DATASET_SOURCES, known_names=GENERATED_DATASETS)
        return _load_hub_dataset(dataset, config_name, trust_remote_code, streaming=True)
    if path.is_file():
        if path.suffix != ".parquet":
            raise ConfigError(f"dataset '{dataset}' is not a .parquet file: streaming reads parquet files or a Hub id")
        _check_parquet_has_rows([path], dataset)
        return datasets.load_dataset("parquet", data_files={"train": str(path)}, streaming=True)
    parquet_files = scan_folder(path).ending_with(".parquet")
    if not parquet_files:
        raise ConfigError(
            f"dataset folder '{dataset}' holds no .parquet files: streaming reads parquet shards or a Hub id; "
            "an image folder is read in place already (set streaming: false)"
        )
    _check_parquet_has_rows(parquet_files, dataset)
    # datasets splits the folder by file names (train-*.parquet, data/test-*.parquet) as it splits a Hub repo.
    return datasets.load_dataset(str(path), config_name, streaming=True)


class StreamedRows:
    """``IterableDataset.map`` function: a batch of raw rows and their stream positions -> model rows.

    The positions are the row indices of seeded augmentation; labels outside the model's classes
    are reported as they arrive (a stream cannot be checked before training).
    """

    def __init__(self, transform, label_column: str, num_classes: int):
        self.transform = transform
        self.label_column = label_column
        self.num_classes = num_classes

    def __call__(self, batch: dict[str, list], positions: list[int]) -> dict[str, list]:
        outside = sorted({label for label in batch[self.label_column] if not 0 <= label < self.num_classes})
        if outside:
            raise DataError(
                f"streamed rows {positions[0]}..{positions[-1]}: labels {outside[:5]} lie outside the model's "
                f"{self.num_classes} classes (0..{self.num_classes - 1}); set num_classes to at least {max(outside) + 1}"
            )
        return self.transform({**batch, ROW_INDEX_COLUMN: list(positions)})


def with_streamed_image_transform(
    dataset, image_column: str, label_column: str, input_config: dict[str, Any], training: bool, augmentation: str, num_classes: int
):
    """``dataset`` (an ``IterableDataset``) mapped, lazily, to ``pixel_values`` and ``labels`` rows.

    The transform is :func:`~hf_freqkd.data.loading.with_image_transform`'s; the returned dataset
    carries it as ``hf_freqkd_transform`` so the trainer finds its seeding. A training stream repeats
    without end (an empty one ends); ``max_steps`` ends the run.
    """
    from .loading import classification_transform

    dataset, transform = classification_transform(dataset, image_column, label_column, input_config, training, augmentation)
    if training:
        # One endless stream, not one pass per Trainer epoch: the Trainer resumes a run without a length by skipping
        # global_step batches of its current pass, which is exact only if the pass never ends. Positions keep
        # counting across passes (pass k, row r -> k * rows + r), so every pass draws new crops and flips.
        dataset = dataset.repeat(None)
    mapped = dataset.map(
        StreamedRows(transform, label_column, num_classes),
        batched=True,
        with_indices=True,
        batch_size=STREAM_MAP_BATCH_SIZE,
        remove_columns=list(dataset.column_names),
    )
    mapped.hf_freqkd_transform = transform
    return mapped
