"""The teacher cache: the teacher's outputs for exactly the augmented views training will draw.

Every distillation step pays a teacher forward, and a sweep (``hf-freqkd benchmark quality``: methods x
seeds) pays it again in every run. Augmentation here is a pure function of (data seed, epoch, row)
(:mod:`hf_freqkd.data.seeding`), so the view a run trains on for row ``r`` in epoch ``e`` is known before
training starts. ``hf-freqkd cache-teacher`` (or ``teacher_cache:`` in a distill config) runs the teacher
once on every such view, in large inference batches, and stores its logits - and, with
``teacher_cache_features: true``, the named features the run's methods read - in safetensors shards;
training then reads rows instead of running the teacher.

This differs from an output cache of un-augmented images (torchdistill's), which trains on augmented
views but imitates the teacher's outputs on other images, and from region soft labels of a crop set
fixed offline (FKD), which fixes the views: here the cached outputs are those of the views actually
trained on, equal to the online teacher's to the storage precision.

A cache folder holds ``teacher_cache.json`` (what it was built for, shapes, dtype, shards) and shards
``epoch<e>-rows<start>.safetensors`` (``logits`` and ``features.<name>``, rows in row order). A cache is
refused, naming what differs, when it was built for another teacher (a digest of its weights), dataset
(its row count and a digest of 64 evenly spaced rows), transform, data seed, or for fewer epochs than the
run trains. Reading memory-maps the shards (``numpy.memmap`` over the safetensors data; safetensors'
own loader is the reference in tests) and gathers a batch's rows: each process reads the rows of its
own batches, and a resumed run reads the rows of the views it redraws.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import ConfigError, DataError, MissingPathError
from .types import LogitsAndFeatures

logger = logging.getLogger(__name__)

CACHE_INDEX = "teacher_cache.json"
CACHE_FORMAT = 1
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16}
#: rows per shard are chosen so that one shard stays under this size (it is assembled in memory)
SHARD_BYTES = 512 * 2**20
#: rows of the training set whose raw content enters the dataset digest (with the row count)
DIGEST_ROWS = 64
#: batch keys the training transform adds when a cache is read: which view each row is
VIEW_ROW, VIEW_EPOCH = "view_row", "view_epoch"


@dataclass(frozen=True)
class CacheIdentity:
    """What a cache holds outputs for. ``epochs`` is 1 when training draws the same view every epoch."""

    teacher: str
    dataset: str
    transform: str
    seed: int | None
    epochs: int

    def differences(self, needed: "CacheIdentity") -> list[str]:
        """What this cache (self) lacks for a run that needs ``needed``, one phrase each."""
        found = []
        if self.teacher != needed.teacher:
            found.append(f"another teacher (weights digest {self.teacher[:12]}, this run's teacher {needed.teacher[:12]})")
        if self.dataset != needed.dataset:
            found.append(f"another training set ({self.dataset.split(':')[0]} vs this run's {needed.dataset.split(':')[0]}, or other rows)")
        if self.transform != needed.transform:
            found.append(f"another transform ({self.transform!r} vs this run's {needed.transform!r})")
        if self.seed != needed.seed:
            found.append(f"another data seed ({self.seed} vs this run's {needed.seed})")
        if self.epochs < needed.epochs:
            found.append(f"{self.epochs} epoch(s) of views, this run trains {needed.epochs}")
        return found


# ----------------------------------------------------------------------------------------------
# Identity: digests of the teacher, the training rows and the transform


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the class name and every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _stable_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        return b"{" + b",".join(key.encode() + b":" + _stable_bytes(value[key]) for key in sorted(value)) + b"}"
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_stable_bytes(item) for item in value) + b"]"
    return repr(value).encode()


def dataset_digest(dataset) -> str:
    """``"<n> rows:<sha256>"`` over the row count and the raw columns of ``DIGEST_ROWS`` evenly spaced rows.

    Raw means as stored (image bytes, not decoded pixels): reading every image of a large set would
    cost as much as an epoch, and a different set or subset differs in these rows too.
    """
    from .data.seeding import ROW_INDEX_COLUMN

    count = len(dataset)
    raw = dataset.with_format("arrow")
    positions = sorted({int(round(i)) for i in np.linspace(0, count - 1, min(count, DIGEST_ROWS))}) if count else []
    table = raw[positions] if positions else None
    digest = hashlib.sha256(f"rows={count}".encode())
    if table is not None:
        for column in sorted(table.column_names):
            if column == ROW_INDEX_COLUMN:
                continue
            digest.update(column.encode())
            for value in table.column(column).to_pylist():
                digest.update(_stable_bytes(value))
    return f"{count} rows:{digest.hexdigest()}"


def dataset_transform(dataset):
    """The ``with_image_transform`` transform formatting ``dataset``, or None."""
    return (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")


def transform_description(transform) -> str:
    """The training transform, as its reference torchvision pipeline prints itself (sizes, crop, flip, mean, std)."""
    return f"{type(transform).__name__}: " + " ".join(repr(transform.image_transform).split())


def planned_epochs(args, updates_per_epoch: int) -> int:
    """Epochs whose views a run draws: ``ceil(num_train_epochs)``, or what ``max_steps`` reaches."""
    if args.max_steps and args.max_steps > 0:
        return max(1, math.ceil(args.max_steps / max(updates_per_epoch, 1)))
    return max(1, math.ceil(args.num_train_epochs - 1e-9))


# ----------------------------------------------------------------------------------------------
# Reading


def _memory_map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Each tensor of a safetensors file as a read-only ``numpy.memmap`` (no copy, pages read on access)."""
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, _ = info["data_offsets"]
        arrays[name] = np.memmap(
            path, dtype=_SAFETENSORS_DTYPES[info["dtype"]], mode="r", offset=8 + header_size + begin, shape=tuple(info["shape"])
        )
    return arrays


class TeacherCache:
    """A built cache, opened for reading. :meth:`read` gives the teacher's outputs for (epoch, row) pairs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_file = self.path / CACHE_INDEX
        if not index_file.is_file():
            # A folder that exists but holds something else is a wrong setting, not a missing path.
            raise (ConfigError if self.path.exists() else MissingPathError)(
                f"teacher_cache '{self.path}' holds no {CACHE_INDEX}: it is not a teacher cache (or was never finished); "
                "build one with hf-freqkd cache-teacher, or point teacher_cache at a new folder"
            )
        index = json.loads(index_file.read_text())
        if index.get("format") != CACHE_FORMAT:
            raise ConfigError(f"teacher_cache '{self.path}' has format {index.get('format')}, expected {CACHE_FORMAT}: rebuild it")
        self.identity = CacheIdentity(**index["identity"])
        self.augmented: bool = index["augmented"]
        self.dtype: str = index["dtype"]
        self.rows: int = index["rows"]
        self.shapes: dict[str, tuple[int, ...]] = {name: tuple(shape) for name, shape in index["shapes"].items()}
        self.shards: list[dict[str, Any]] = index["shards"]
        self._maps: dict[str, dict[str, np.ndarray]] = {}

    @property
    def feature_names(self) -> list[str]:
        return [name.removeprefix("features.") for name in self.shapes if name.startswith("features.")]

    @property
    def size_bytes(self) -> int:
        return sum((self.path / shard["file"]).stat().st_size for shard in self.shards)

    def check(self, needed: CacheIdentity, features: list[str]) -> None:
        """Refuse (ConfigError naming every difference) a cache that does not hold what a run needs."""
        differences = self.identity.differences(needed)
        missing = [name for name in features if name not in self.feature_names]
        if missing:
            held = ", ".join(self.feature_names) or "none"
            differences.append(
                f"no teacher feature(s) {', '.join(missing)} (it holds: {held}); the run's methods read them, so build the cache "
                "with teacher_cache_features: true (or teacher_cache_layers listing them)"
            )
        if differences:
            raise ConfigError(
                f"teacher_cache '{self.path}' was built for " + "; ".join(differences)
                + ". Rebuild it (hf-freqkd cache-teacher) into another folder, or unset teacher_cache to run the teacher online"
            )

    def _arrays(self, shard: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = self._maps.get(shard["file"])
        if arrays is None:
            arrays = self._maps[shard["file"]] = _memory_map_safetensors(self.path / shard["file"])
        return arrays

    def _shards_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        return [shard for shard in self.shards if shard["epoch"] == epoch]

    def read(
        self, epochs: torch.Tensor, rows: torch.Tensor, device: torch.device | str = "cpu", features: list[str] | None = None
    ) -> LogitsAndFeatures:
        """The teacher's logits and cached features for views (``epochs[i]``, ``rows[i]``), float32 on
        ``device``; only the named ``features`` when given (a cache shared by several runs may hold more)."""
        epochs = torch.as_tensor(epochs).reshape(-1).cpu().numpy().astype(np.int64)
        rows = torch.as_tensor(rows).reshape(-1).cpu().numpy().astype(np.int64)
        if not self.augmented:
            epochs = np.zeros_like(epochs)  # the same view every epoch: one epoch is stored
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise DataError(f"teacher cache '{self.path}' holds rows 0..{self.rows - 1}; a batch asked for row {int(rows.max())}")
        names = [name for name in self.shapes if features is None or not name.startswith("features.") or name.removeprefix("features.") in features]
        outputs = {name: np.empty((rows.size, *self.shapes[name]), dtype=np.float32) for name in names}
        for epoch in np.unique(epochs):
            shards = self._shards_of_epoch(int(epoch))
            if not shards:
                raise DataError(f"teacher cache '{self.path}' holds {self.identity.epochs} epoch(s) of views; a batch asked for epoch {int(epoch)}")
            in_epoch = epochs == epoch
            for shard in shards:
                selected = np.nonzero(in_epoch & (rows >= shard["start"]) & (rows < shard["stop"]))[0]
                if selected.size == 0:
                    continue
                local = rows[selected] - shard["start"]
                arrays = self._arrays(shard)
                for name in names:
                    outputs[name][selected] = arrays[name][local]
        tensors = {name: torch.from_numpy(value).to(device) for name, value in outputs.items()}
        features = {name.removeprefix("features."): value for name, value in tensors.items() if name.startswith("features.")}
        return LogitsAndFeatures(tensors.get("logits"), features)


# ----------------------------------------------------------------------------------------------
# Building


@dataclass
class CachePlan:
    """What a run needs from a cache: its identity, the features, and how to build one if it is missing."""

    path: Path
    identity: CacheIdentity
    augmented: bool
    features: list[str]
    dtype: str
    max_bytes: float
    #: the layers a build stores, when more than ``features`` (a cache shared by runs of other methods)
    stored_features: list[str] | None = None

    def open(self) -> TeacherCache | None:
        """The cache at ``path`` checked against this plan; None when there is none yet."""
        if not self.path.exists():
            return None
        if self.path.is_dir() and not any(self.path.iterdir()):
            return None
        cache = TeacherCache(self.path)
        cache.check(self.identity, self.features)
        return cache


def format_bytes(count: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


def build_teacher_cache(
    plan: CachePlan,
    teacher: torch.nn.Module,
    dataset,
    set_epoch: Callable[[int], None],
    collate: Callable,
    batch_size: int,
    num_workers: int = 0,
    log: Callable[[str], None] = logger.info,
) -> TeacherCache:
    """Run ``teacher`` on every view of ``dataset`` for the planned epochs and write the cache atomically.

    ``set_epoch(e)`` makes the dataset's transform draw epoch ``e``'s views. The size is estimated
    from one probe row and printed first; a cache larger than ``plan.max_bytes`` or the free disk
    space is refused before anything is written. The shards are written into a hidden sibling folder
    renamed to ``plan.path`` once complete, so an interrupted build leaves no half cache behind.
    """
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    existing = plan.open()
    if existing is not None:
        log(f"teacher cache {plan.path}: already built for this run ({format_bytes(existing.size_bytes)}), reused")
        return existing
    if plan.path.exists() and not plan.path.is_dir():
        raise ConfigError(f"teacher_cache '{plan.path}' exists and is not a folder; choose a folder path")
    dtype = CACHE_DTYPES[plan.dtype]
    device = next(teacher.parameters()).device
    rows = len(dataset)
    epochs = plan.identity.epochs if plan.augmented else 1

    def outputs_of(batch) -> dict[str, torch.Tensor]:
        output = teacher(batch["pixel_values"].to(device))
        values = {"logits": output.logits}
        values.update({f"features.{name}": output.features[name] for name in plan.stored_features or plan.features})
        return {name: value.detach().float() for name, value in values.items()}

    set_epoch(0)
    probe = outputs_of(collate([dataset[0]]))
    shapes = {name: tuple(value.shape[1:]) for name, value in probe.items()}
    row_bytes = sum(math.prod(shape) for shape in shapes.values()) * torch.empty((), dtype=dtype).element_size()
    total = row_bytes * rows * epochs
    log(
        f"teacher cache {plan.path}: {rows} rows x {epochs} epoch(s) x {row_bytes // torch.empty((), dtype=dtype).element_size()} "
        f"values ({', '.join(shapes)}), {plan.dtype}: {format_bytes(total)}"
    )
    if total > plan.max_bytes:
        raise ConfigError(
            f"the teacher cache would take {format_bytes(total)}, above teacher_cache_max_gb = {plan.max_bytes / 2**30:g}: "
            "raise teacher_cache_max_gb, store float16 (teacher_cache_dtype: float16), cache fewer features, or unset teacher_cache"
        )
    parent = plan.path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if total > 0.95 * free:
        raise ConfigError(f"the teacher cache would take {format_bytes(total)} but {parent} has {format_bytes(free)} free; point teacher_cache elsewhere")

    staging = parent / f".{plan.path.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    rows_per_shard = max(1, min(rows, SHARD_BYTES // max(row_bytes, 1)))
    shards = []
    try:
        for epoch in range(epochs):
            set_epoch(epoch)
            for start in range(0, rows, rows_per_shard):
                stop = min(start + rows_per_shard, rows)
                block = {name: torch.empty((stop - start, *shape), dtype=dtype) for name, shape in shapes.items()}
                batches = [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]
                loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
                position = start
                for batch in loader:
                    count = len(batch["pixel_values"])
                    for name, value in outputs_of(batch).items():
                        block[name][position - start : position - start + count] = value.to(dtype).cpu()
                    position += count
                name = f"epoch{epoch:03d}-rows{start:09d}.safetensors"
                save_file(block, str(staging / name))
                shards.append({"file": name, "epoch": epoch, "start": start, "stop": stop})
            log(f"teacher cache: epoch {epoch + 1}/{epochs} written")
        index = {
            "format": CACHE_FORMAT,
            "identity": asdict(plan.identity),
            "augmented": plan.augmented,
            "dtype": plan.dtype,
            "rows": rows,
            "shapes": {name: list(shape) for name, shape in shapes.items()},
            "shards": shards,
        }
        (staging / CACHE_INDEX).write_text(json.dumps(index, indent=1))
        if plan.path.exists():
            plan.path.rmdir()  # an empty folder (checked by plan.open above)
        os.replace(staging, plan.path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    cache = TeacherCache(plan.path)
    log(f"teacher cache {plan.path}: {format_bytes(cache.size_bytes)} written")
    return cache
