"""Configuration: ``DistillationConfig`` (a ``TrainingArguments``), the student and data arguments,
and YAML + ``key=value`` command-line parsing through ``HfArgumentParser``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .coercion import coerce
from .errors import BadInputError, ConfigError, MissingPathError
from .methods.registry import build_methods, normalize_method_specs
from .tasks import available_tasks

logger = logging.getLogger(__name__)


NONFINITE_LOSS_POLICIES = ("stop", "skip")
#: ``weight_decay_on`` values: every trainable parameter, or transformers' default split
WEIGHT_DECAY_SCOPES = ("all", "trainer")


@dataclass
class DistillationConfig(TrainingArguments):
    r"""Training arguments of a distillation run: every ``TrainingArguments`` field, plus

    Parameters that control the teacher:
        teacher_model (`str`, *optional*):
            timm model name, local folder (timm ``save_for_hf`` or transformers ``save_pretrained``),
            ``hf-hub:`` timm id or transformers Hub id. Required unless every method is label-only
            (``ce``) or a teacher module is given to the trainer.
        teacher_checkpoint (`str`, *optional*):
            Weights to load into the teacher: safetensors / torch file or an hf_freqkd output folder.
        teacher_pretrained (`bool`, defaults to `False`):
            Load the teacher's pretrained weights from its source (the Hub for timm names).
        teacher_model_kwargs (`dict`, *optional*):
            Extra keyword arguments for the teacher's constructor (timm ``create_model``).
        teacher_sharding (`bool`, defaults to `False`):
            FSDP2 runs: shard the frozen teacher across the processes for inference (each keeps 1/N of
            its weights and gathers one block at a time) instead of a whole copy in every process.
        teacher_torch_compile (`bool`, *optional*):
            Compile the teacher's forward with ``torch.compile`` (``torch_compile_backend`` / ``_mode``).
            Unset: as ``torch_compile`` (which compiles the Distiller).

    Parameters that control the distillation:
        methods (`dict`, defaults to `{"kd": {}}`):
            Methods and their options, ``{name: {option: value}}``; ``hf-freqkd methods`` lists them.
            ``ce`` (weight 1) is added when not listed: the ground-truth term stays in every run.
        distill_warmup_steps (`int`, defaults to 0):
            Linear warm-up of every distillation term: factor ``min(step / distill_warmup_steps, 1)``
            with ``step`` = 1 for the first optimizer update. 0 disables it.
        distill_warmup_epochs (`float`, defaults to 0):
            The same warm-up counted in epochs (20 in the CIFAR reference recipes). Exclusive with
            ``distill_warmup_steps``.

    Parameters that control the teacher cache (:mod:`hf_freqkd.teacher_cache`):
        teacher_cache (`str`, *optional*):
            Folder of the teacher's outputs for every augmented view the run draws. Built before
            training when missing (or by ``hf-freqkd cache-teacher``), then read instead of running
            the teacher; refused, naming what differs, when built for another teacher, dataset,
            transform, data seed or fewer epochs. Classification runs.
        teacher_cache_features (`bool`, defaults to `False`):
            Also store the teacher features the methods read (fam, freekd, ...): larger, but then those
            methods skip the teacher too.
        teacher_cache_layers (`list[str]`, *optional*):
            The teacher layers a cache this run builds stores (implies ``teacher_cache_features``);
            they must include those the run's methods read. One cache built with the layers of
            several configs then serves each of them (``benchmark quality`` builds one per data
            seed this way). Default: the layers this run's methods read.
        teacher_cache_dtype (`str`, defaults to `"float32"`): ``float32`` or ``float16`` storage.
        teacher_cache_max_gb (`float`, defaults to 50): refuse to build a larger cache.

    Parameters that control the learning-rate schedule:
        lr_decay_epochs (`list[float]`, *optional*):
            Step decay of the learning rate by ``lr_decay_rate`` at these epochs (150, 180, 210 in the
            CIFAR distillation recipes). When set it replaces ``lr_scheduler_type``.
        lr_decay_rate (`float`, defaults to 0.1): multiplier applied at each decay epoch.

    Parameters that control the optimiser (``TrainingArguments`` defaults checked against the recipes,
    docs/recipes.md):
        max_grad_norm (`float`, defaults to 0): clip the gradient norm at this value; 0 clips nothing.
            ``TrainingArguments`` clips at 1.0; the classification research code (mdistiller, the
            CRD / ReviewKD / FAM-KD CIFAR and ImageNet scripts) never clips, and clipping at 1.0
            acted on almost every step of the CIFAR recipes, costing 1-4 points. The detection
            configs set mmdetection's clipping. The run record, log and card say how often it acted.
        weight_decay_on (`str`, defaults to `"all"`): which parameters ``weight_decay`` applies to.
            ``all``: every trainable parameter, biases and BatchNorm included, as the research code's
            ``SGD(model.parameters(), weight_decay=...)`` does. ``trainer``: transformers' split (no
            decay on biases and on normalisation layers it recognises by type or name).

    Parameters that control evaluation:
        eval_top_k (`int`, defaults to 5): k of the reported top-k accuracy.

    ``transformers.TrainingArguments`` fields are honoured as in transformers or refused when the
    config is read, each for a stated reason (:mod:`hf_freqkd.training.contract`): NEFTune, Liger
    kernels and the other language-model options, for instance. ``label_smoothing_factor`` becomes the
    ``ce`` term's ``label_smoothing`` (a different ``methods.ce.label_smoothing`` is refused); the
    evaluation loss stays plain cross-entropy.

    Parameters that control safety:
        trust_remote_code (`bool`, defaults to `False`): allow transformers models whose code lives
            on the Hub. Off unless you turn it on.
        nonfinite_loss (`str`, defaults to `"stop"`): what a training step whose loss term is NaN or
            inf does. ``stop``: raise an error naming the term and the step, before the step is
            applied. ``skip``: drop that optimizer update (weights and optimizer state unchanged; the
            learning-rate schedule still advances), log a warning and count it as ``skipped_steps``.

    Data loading (``TrainingArguments`` fields whose defaults depend on the machine):
        dataloader_num_workers (`int`, *optional*):
            DataLoader worker processes. Unset: none when training on the CPU (the training step
            needs the cores far more than the batched transform does), else
            ``min(4, CPUs per local process - 1)``.
        dataloader_persistent_workers (`bool`, *optional*):
            Keep the workers from one epoch to the next. Unset: on whenever there are workers (the
            augmentation's epoch reaches them through shared memory, see
            :class:`hf_freqkd.data.seeding.SeededAugmentation`).
        dataloader_pin_memory (`bool`, defaults to `True`):
            Turned off when there is no accelerator to copy to (or ``use_cpu``), where it does nothing
            but warn at every epoch.

    Data-parallel training (a ``TrainingArguments`` field whose default depends on the methods):
        ddp_find_unused_parameters (`bool`, *optional*):
            Have DDP search each step for parameters that got no gradient. Unset: only when a method
            of the run declares that a step may leave some unused
            (:attr:`~hf_freqkd.methods.DistillationMethod.leaves_parameters_unused`; none of the
            shipped methods does), instead of transformers' always-on for models of its own.
    """

    teacher_model: Optional[str] = field(default=None, metadata={"help": "Teacher source: timm name, folder or Hub id."})
    teacher_checkpoint: Optional[str] = field(default=None, metadata={"help": "Weights file or folder for the teacher."})
    teacher_pretrained: bool = field(default=False, metadata={"help": "Load the teacher's pretrained weights."})
    teacher_model_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": "Extra constructor keyword arguments for the teacher (YAML mapping)."}
    )
    teacher_sharding: bool = field(
        default=False, metadata={"help": "FSDP2 runs: shard the frozen teacher across the processes instead of replicating it."}
    )
    teacher_torch_compile: Optional[bool] = field(
        default=None, metadata={"help": "torch.compile the teacher's forward; unset: as torch_compile."}
    )
    methods: Union[dict, str] = field(
        default_factory=lambda: {"kd": {}},
        metadata={"help": "Distillation methods and options, e.g. {ce: {weight: 0.1}, kd: {weight: 0.9}}."},
    )
    distill_warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up of distillation terms, in steps."})
    distill_warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warm-up of distillation terms, in epochs."})
    teacher_cache: Optional[str] = field(
        default=None, metadata={"help": "Folder of the teacher's outputs on every training view (built when missing); read instead of running the teacher."}
    )
    teacher_cache_features: bool = field(
        default=False, metadata={"help": "Also cache the teacher features the methods read (needed for fam, freekd, ... to skip the teacher)."}
    )
    teacher_cache_layers: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Teacher layers a built cache stores (a superset of what the methods read, so runs of other methods "
                          "can share it); implies teacher_cache_features. Default: the layers the methods read."},
    )
    teacher_cache_dtype: str = field(default="float32", metadata={"help": "Storage of the teacher cache: float32 or float16."})
    teacher_cache_max_gb: float = field(default=50.0, metadata={"help": "Refuse to build a teacher cache larger than this (GiB)."})
    lr_decay_epochs: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_rate."}
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Step-decay multiplier of the learning rate."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Clip the gradient norm at this value; 0 (the research code's recipe) clips nothing."}
    )
    weight_decay_on: str = field(
        default="all", metadata={"help": "'all' parameters (the research code) or 'trainer' (transformers' split: no biases, no norms)."}
    )
    eval_top_k: int = field(default=5, metadata={"help": "k of the top-k accuracy reported at evaluation."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code for transformers models."})
    nonfinite_loss: str = field(
        default="stop", metadata={"help": "A NaN/inf loss term: 'stop' the run (naming term and step) or 'skip' the update."}
    )
    dataloader_num_workers: Optional[int] = field(
        default=None, metadata={"help": "DataLoader worker processes; unset: 0 on the CPU, min(4, CPUs - 1) with an accelerator."}
    )
    dataloader_persistent_workers: Optional[bool] = field(
        default=None, metadata={"help": "Keep DataLoader workers between epochs; unset: on when there are workers."}
    )
    ddp_find_unused_parameters: Optional[bool] = field(
        default=None, metadata={"help": "DDP's find_unused_parameters; unset: on only when a method leaves parameters unused in a step."}
    )

    def __post_init__(self) -> None:
        from .training.contract import check_training_arguments
        from .training.distributed import check_launcher

        check_training_arguments(self)
        self.methods = normalize_method_specs(_yaml_if_string(self.methods, "methods"))
        self._label_smoothing_on_ce()
        # Build once to validate every option now, before any model, data or file is touched.
        build_methods(self.methods)
        self.teacher_model_kwargs = _yaml_if_string(self.teacher_model_kwargs, "teacher_model_kwargs") or {}
        if self.distill_warmup_steps < 0:
            raise ConfigError(f"distill_warmup_steps = {self.distill_warmup_steps} is invalid: expected an integer >= 0")
        if self.distill_warmup_epochs < 0 or not math.isfinite(self.distill_warmup_epochs):
            raise ConfigError(f"distill_warmup_epochs = {self.distill_warmup_epochs} is invalid: expected a number >= 0")
        if self.distill_warmup_steps and self.distill_warmup_epochs:
            raise ConfigError("set distill_warmup_steps or distill_warmup_epochs, not both")
        self.lr_decay_epochs = _yaml_if_string(self.lr_decay_epochs, "lr_decay_epochs")
        if self.lr_decay_epochs is not None:
            try:
                epochs = coerce(self.lr_decay_epochs if isinstance(self.lr_decay_epochs, list) else [self.lr_decay_epochs], list[float])
            except TypeError:
                epochs = []
            if not epochs or not all(e > 0 for e in epochs) or epochs != sorted(epochs):
                raise ConfigError(f"lr_decay_epochs = {self.lr_decay_epochs!r} is invalid: expected increasing epochs > 0")
            self.lr_decay_epochs = epochs
        if not 0 < self.lr_decay_rate <= 1:
            raise ConfigError(f"lr_decay_rate = {self.lr_decay_rate} is invalid: expected a number in (0, 1]")
        self._check_teacher_cache()
        if self.weight_decay_on not in WEIGHT_DECAY_SCOPES:
            raise ConfigError(f"weight_decay_on = {self.weight_decay_on!r} is invalid: expected one of {', '.join(WEIGHT_DECAY_SCOPES)}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ConfigError(f"max_grad_norm = {self.max_grad_norm} is invalid: expected a number >= 0 (0 clips nothing)")
        if self.eval_top_k < 1:
            raise ConfigError(f"eval_top_k = {self.eval_top_k} is invalid: expected an integer >= 1")
        if self.nonfinite_loss not in NONFINITE_LOSS_POLICIES:
            raise ConfigError(f"nonfinite_loss = {self.nonfinite_loss!r} is invalid: expected 'stop' or 'skip'")
        # TrainingArguments accepts these and then trains backwards or not at all.
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ConfigError(f"learning_rate = {self.learning_rate} is invalid: expected a finite number >= 0")
        if self.max_steps <= 0 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ConfigError(f"num_train_epochs = {self.num_train_epochs} is invalid: expected a number > 0 (or set max_steps)")
        self._bf16_on_cpu_when_no_accelerator()
        check_launcher(self)
        self._dataloader_defaults()
        super().__post_init__()
        from .models.activation_checkpointing import check_checkpointing_options

        check_checkpointing_options(getattr(self, "activation_checkpointing_kwargs", None) or self.gradient_checkpointing_kwargs)

    def _label_smoothing_on_ce(self) -> None:
        """``label_smoothing_factor`` is the ``ce`` term's ``label_smoothing``: the Distiller computes every
        loss term, so the Trainer's own label smoother would never run."""
        factor = self.label_smoothing_factor
        if not factor:
            return
        ce = dict(self.methods.get("ce") or {})
        own = ce.get("label_smoothing")
        if own is not None and float(own) != float(factor):
            raise ConfigError(
                f"label_smoothing_factor = {factor} and methods.ce.label_smoothing = {own} disagree: both set the ce "
                "term's label smoothing; keep one"
            )
        smoothed = {**ce, "label_smoothing": factor}
        if "ce" in self.methods:
            self.methods = {name: smoothed if name == "ce" else options for name, options in self.methods.items()}
        else:  # first, where build_methods adds an unlisted ce: the loss terms keep their order
            self.methods = {"ce": smoothed, **self.methods}

    def _check_teacher_cache(self) -> None:
        from .teacher_cache import CACHE_DTYPES

        if self.teacher_cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"teacher_cache_dtype = {self.teacher_cache_dtype!r} is invalid: expected one of {', '.join(CACHE_DTYPES)}")
        if not (math.isfinite(self.teacher_cache_max_gb) and self.teacher_cache_max_gb > 0):
            raise ConfigError(f"teacher_cache_max_gb = {self.teacher_cache_max_gb} is invalid: expected a number > 0")
        if self.teacher_cache is not None and not (isinstance(self.teacher_cache, str) and self.teacher_cache.strip()):
            raise ConfigError(f"teacher_cache = {self.teacher_cache!r} is invalid: expected a folder path")
        if self.teacher_cache and not self.needs_teacher:
            raise ConfigError(f"teacher_cache = '{self.teacher_cache}' is set but no method uses a teacher ({', '.join(self.methods)}); unset it")
        layers = self.teacher_cache_layers
        if layers is not None:
            if not (isinstance(layers, (list, tuple)) and layers and all(isinstance(name, str) and name.strip() for name in layers)):
                raise ConfigError(f"teacher_cache_layers = {layers!r} is invalid: expected a non-empty list of teacher layer names")
            if not self.teacher_cache:
                raise ConfigError(f"teacher_cache_layers = {list(layers)} is set but teacher_cache is not: set the cache folder, or unset it")
            self.teacher_cache_layers = list(layers)

    def _dataloader_defaults(self) -> None:
        """Workers, persistent workers and pinned memory for this machine (see the class docstring)."""
        accelerator = None if self.use_cpu else accelerator_type()
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_dataloader_workers() if accelerator else 0
        if self.dataloader_num_workers < 0:
            raise ConfigError(f"dataloader_num_workers = {self.dataloader_num_workers} is invalid: expected an integer >= 0")
        if self.dataloader_persistent_workers is None:
            self.dataloader_persistent_workers = self.dataloader_num_workers > 0
        # torch cannot pin memory for MPS, and without an accelerator pinning does nothing but warn.
        if accelerator in (None, "mps"):
            self.dataloader_pin_memory = False

    def _bf16_on_cpu_when_no_accelerator(self) -> None:
        """``bf16: true`` on a machine without an accelerator trains on the CPU in bf16 (``use_cpu``).

        TrainingArguments refuses bf16 without ``use_cpu`` unless a bf16-capable accelerator is
        present; on a machine with no accelerator at all, the CPU is the only place to train, so
        ``use_cpu`` is implied. An accelerator without bf16 (a pre-Ampere GPU) is refused here with
        the two ways out, rather than silently moving the run off the GPU.
        """
        if not (self.bf16 or self.bf16_full_eval) or self.use_cpu:
            return
        import torch
        from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

        if is_torch_bf16_gpu_available() or is_torch_xla_available():
            return
        accelerator = getattr(torch, "accelerator", None)
        has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
        if has_accelerator:
            device = accelerator.current_accelerator() if accelerator is not None else "cuda"
            raise ConfigError(
                f"bf16 = true but this machine's accelerator ({device}) does not support bf16: "
                "set fp16=true to train on it in half precision, or use_cpu=true to train on the CPU in bf16"
            )
        logger.warning("bf16 = true and no GPU or other accelerator is present: training on the CPU in bf16 (use_cpu)")
        self.use_cpu = True

    @property
    def needs_teacher(self) -> bool:
        return any(method.uses_teacher for method in build_methods(self.methods))


def accelerator_type() -> str | None:
    """The accelerator torch would train on ("cuda", "mps", "xpu", ...), or None on a CPU-only machine."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return accelerator.current_accelerator().type if accelerator.is_available() else None
    return "cuda" if torch.cuda.is_available() else None


def default_dataloader_workers() -> int:
    """Workers per training process with an accelerator: up to 4, leaving each process a core of its own."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, cpus // local_processes - 1))


@dataclass
class ModelArguments:
    """The student network."""

    student_model: str = field(
        default="resnet8", metadata={"help": "Student source: timm name, local folder or Hub id."}
    )
    student_checkpoint: Optional[str] = field(default=None, metadata={"help": "Weights file or folder for the student."})
    student_pretrained: bool = field(default=False, metadata={"help": "Start from the student's pretrained weights."})
    student_model_kwargs: Optional[Union[dict, str]] = field(
        default=None, metadata={"help": "Extra constructor keyword arguments for the student (YAML mapping)."}
    )
    num_classes: Optional[int] = field(
        default=None, metadata={"help": "Number of classes; read from the dataset's label feature when unset."}
    )

    def __post_init__(self) -> None:
        self.student_model_kwargs = _yaml_if_string(self.student_model_kwargs, "student_model_kwargs") or {}
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes = {self.num_classes} is invalid: expected an integer >= 1")


TASKS = available_tasks()  # a live view: a task a user's script registers is valid too


@dataclass
class DataArguments:
    """The dataset and its preprocessing."""

    dataset: str = field(
        default="digits",
        metadata={"help": "'digits' (bundled), 'shapes_segmentation' / 'shapes_detection' (generated), a Hub id, an image folder or a .parquet path."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: Optional[str] = field(
        default=None, metadata={"help": "Split to evaluate on; 'validation' or 'test' when unset."}
    )
    validation_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "Hold out this fraction of the train split (stratified, seeded by seed) for evaluation, instead of the dataset's own eval split (which is then not used; leave eval_split unset)."},
    )
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column; detected when unset."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column; detected when unset."})
    task: str = field(
        default="classification",
        metadata={"help": "'classification' (one label per image), 'segmentation' (a class-id mask per image) or 'detection' (boxes and classes per image)."},
    )
    mask_column: Optional[str] = field(
        default=None, metadata={"help": "Segmentation: column of class-id mask images; detected when unset."}
    )
    ignore_index: int = field(default=255, metadata={"help": "Segmentation: mask value of unlabelled pixels."})
    reduce_labels: bool = field(
        default=False,
        metadata={"help": "Segmentation: mask value 0 is ignored and every other value v is class v - 1 (ADE20k / scene_parse_150)."},
    )
    bbox_format: str = field(
        default="xywh",
        metadata={"help": "Detection: how the objects column's bbox lists are laid out, in pixels: 'xywh' (COCO [x, y, w, h]) or 'xyxy' (Pascal VOC corners [x1, y1, x2, y2])."},
    )
    class_names: Optional[Union[list, str]] = field(
        default=None,
        metadata={"help": "Names of the classes in class-id order, for the exported config.json and model card; read from the data (a ClassLabel feature, an image folder's class folders) when unset."},
    )
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Square input size; the student's pretrained config when unset."}
    )
    augmentation: str = field(
        default="crop_flip", metadata={"help": "Training augmentation: crop_flip, crop, timm or none."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read a parquet file / folder of parquet shards or a Hub id as a stream (datasets IterableDataset) instead of loading it; needs max_steps (see docs/scale.md, Streaming)."},
    )

    def __post_init__(self) -> None:
        self.class_names = _yaml_if_string(self.class_names, "class_names")
        from .data.loading import AUGMENTATIONS

        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation = {self.augmentation!r} is invalid: expected one of {', '.join(AUGMENTATIONS)}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction = {self.validation_fraction} is invalid: expected a number in (0, 1)")
        for name in ("image_size", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} = {value} is invalid: expected an integer >= 1")
        if self.task not in TASKS:
            raise ConfigError(f"task = {self.task!r} is invalid: expected one of {', '.join(TASKS)}")
        # Each task declares the data arguments only it reads (Task.data_arguments) and checks its own.
        task = TASKS[self.task]
        unknown = sorted(set(task.data_arguments) - {known.name for known in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"task {task.name!r} declares data_arguments {unknown} that DataArguments does not have")
        for other in TASKS.values():
            if other is not task:
                other.refuse_data_arguments(self, taken=task.data_arguments)
        task.check_data_arguments(self)
        if self.ignore_index < 0:
            raise ConfigError(f"ignore_index = {self.ignore_index} is invalid: expected a mask value >= 0 (255 in most datasets)")


CONFIG_CLASSES = (DistillationConfig, ModelArguments, DataArguments)


class _ConfigLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read ``eval_strategy: no`` as False."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse config YAML (safe loader, YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - _ConfigLoader is a SafeLoader


def yaml_error_summary(error: yaml.YAMLError) -> str:
    """One line: where the YAML broke and why (PyYAML's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(error, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def _yaml_if_string(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return load_yaml(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"{name} = {value!r} is not valid YAML at {yaml_error_summary(error)}") from None
    return value


# ----------------------------------------------------------------------------------------------
# YAML files and command-line overrides


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"config file '{path}' does not exist")
    try:
        values = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML at {yaml_error_summary(error)}; fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of key: value, not {type(values).__name__}")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (value parsed as YAML); ``a.b.c=v`` sets a nested key."""
    values = dict(values)
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override '{override}' is invalid: expected key=value, e.g. learning_rate=0.05")
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(
                f"override '{override}': value is not valid YAML at {yaml_error_summary(error)}; quote it or fix the brackets"
            ) from None
        *parents, leaf = key.split(".")
        target = values
        for i, part in enumerate(parents):
            child = target.get(part)
            if part == "methods" and i == 0 and child is not None:
                child = normalize_method_specs(child)
            child = dict(child) if isinstance(child, dict) else {}
            target[part] = child
            target = child
        target[leaf] = value
    return values


def config_field_types() -> dict[str, Any]:
    types_by_name: dict[str, Any] = {}
    for cls in CONFIG_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                types_by_name[f.name] = hints[f.name]
    return types_by_name


def check_config_keys(values: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys (naming close matches) and convert numbers written as strings (``1e-3``)."""
    field_types = config_field_types()
    unknown = [key for key in values if key not in field_types]
    if unknown:
        own = [f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls) if f.init and f.name not in _TRAINING_FIELDS]
        messages = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(field_types), n=3, cutoff=0.6)
            messages.append(f"'{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"unknown config key {', '.join(messages)}; valid keys are hf_freqkd's "
            f"{', '.join(sorted(own))} and any transformers TrainingArguments field"
        )
    checked = {}
    for key, value in values.items():
        if key == "resume_from_checkpoint" and isinstance(value, bool):
            # true = the newest checkpoint in output_dir (Trainer.train's convention); false = none.
            checked[key] = "true" if value else None
            continue
        if key in _PARSED_BY_THEIR_DATACLASS:
            checked[key] = value
            continue
        checked[key] = _check_value(key, value, field_types[key])
    return checked


_TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
#: Keys whose value may be YAML text or a structure, parsed and checked by their dataclass's
#: __post_init__ with a message naming what they hold (methods: a mapping, list or "ce, kd" string).
_PARSED_BY_THEIR_DATACLASS = {"methods", "teacher_model_kwargs", "student_model_kwargs", "lr_decay_epochs"}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """``value`` in the field's type, by the rule method options follow too (:func:`hf_freqkd.coercion.coerce`)."""
    try:
        return coerce(value, annotation)
    except TypeError as error:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: {error}") from None


def parse_config(
    config_path: str | Path | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[DistillationConfig, ModelArguments, DataArguments]:
    """YAML file (optional) + ``key=value`` overrides -> the three argument dataclasses, validated."""
    values = dict(defaults or {})
    if config_path is not None:
        values.update(read_yaml_config(config_path))
    values = check_config_keys(apply_overrides(values, list(overrides or [])))
    if not values.get("output_dir"):
        raise ConfigError("output_dir is not set: add output_dir: <folder> to the config or output_dir=<folder> on the command line")
    parser = HfArgumentParser(CONFIG_CLASSES)
    try:
        return parser.parse_dict(values, allow_extra_keys=False)
    except BadInputError:
        raise
    except ValueError as error:
        # TrainingArguments' own checks of the user's values (save/eval steps, fp16 with bf16, ...);
        # its messages can span lines, and the command line prints errors as one.
        raise ConfigError(" ".join(str(error).split())) from None


def config_to_dict(*configs: Any) -> dict[str, Any]:
    """The fields of the hf_freqkd dataclasses (not every TrainingArguments default), for run records."""
    record: dict[str, Any] = {}
    for config in configs:
        for f in dataclasses.fields(config):
            if f.init and f.name not in _TRAINING_FIELDS:
                record[f.name] = getattr(config, f.name)
    return record
