"""FreeKD stage 1: fit the frequency prompts on the frozen teacher (``hf-freqkd fit-prompts``).

For each prompted teacher layer, a forward hook decomposes the layer's output (a ``(B, C, H, W)``
map; ViT tokens and SAM's channels-last blocks are converted and converted back, class and
register tokens passed through untouched), refines every band - the low band included - as
``sum_t M_t * band`` with ``M = sigmoid(P_b @ R)``, inverse-transforms, crops odd sizes, and lets
the teacher continue. Only the prompts train, on

    loss = task loss of the teacher's prediction + dissimilarity_weight * mask overlap

(mask overlap: soft Jaccard by default, Dice as in the released code; summed over the bands of
every layer), with the reference schedule: 2000 steps of Adam, learning rate 0.01, weight decay
1e-3, cosine decay. The result is a safetensors file with one ``(L + 1, T, C)`` tensor per layer,
named by the layer, read by the ``freekd`` method in stage 2.

One YAML config drives both stages: fit-prompts reads the teacher, the data, the input size (from
the student, as ``distill`` does) and ``methods.freekd`` - layers, prompts count, wavelet and the
``prompt_*`` / ``dissimilarity*`` options - and writes ``methods.freekd.prompts_path``::

    hf-freqkd fit-prompts --config configs/freekd/digits.yaml
    hf-freqkd distill --config configs/freekd/digits.yaml

The fitting runs on ``transformers.Trainer`` (a small subclass) rather than a plain loop: that
brings device placement, bf16/fp16 autocast, data-parallel training of the prompts under
``accelerate launch``, the dataloader, the cosine schedule and logging, with nothing re-implemented.
It saves no checkpoints (2000 steps of a few thousand parameters do not need resuming, and a
checkpoint would hold the whole teacher); the prompts file is the output. The trainer shares
``DistillationTrainer``'s pieces (:mod:`hf_freqkd.training`): the non-finite loss guard (the run's
``nonfinite_loss``), atomic checkpoints and formatted datasets; the teacher is the same
:class:`~hf_freqkd.models.FrozenTeacher`, loaded and checked by :mod:`hf_freqkd.factory`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import ModelOutput

from .frequency.wavelet2d import wavelet_decompose, wavelet_reconstruct
from .layers.frequency_prompts import (
    FrequencyPrompts,
    band_masks,
    initial_prompts,
    mask_overlap,
    refine_bands,
    save_prompts,
)
from .methods.freekd import FreeKD, FreeKDOptions, resolve_teacher_layers
from .errors import ConfigError, DataError, MethodOptionsError, ModelError
from .factory import check_finite_weights, first_training_input, load_teacher, probe_feature_shapes
from .models.features import HIDDEN_STATES, FeatureExtractor, FrozenTeacher, backbone_info, default_feature_layers
from .models.loading import is_transformers_model
from .training import AtomicCheckpoints, FormattedDatasets, LossTermMeans, NonFiniteLossGuard
from .tasks import task_for_model
from .types import BackboneInfo, LogitsAndFeatures

logger = logging.getLogger(__name__)

#: ``(teacher output, labels) -> loss``: the teacher's task loss on one batch
TaskLoss = Callable[[LogitsAndFeatures, torch.Tensor], torch.Tensor]


def task_loss_of(teacher: nn.Module) -> TaskLoss:
    """The teacher's own task loss (its task's evaluation loss): cross-entropy of the logits in float32
    for classifiers and, per pixel, segmentation networks (ignored -100 pixels skipped); the sum of a
    detector's own losses, computed from the boxes in its forward."""
    return task_for_model(teacher).eval_loss


@dataclass
class PromptFittingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    task_loss: torch.Tensor | None = None
    dissimilarity: torch.Tensor | None = None


@dataclass
class PromptFittingResult:
    """What stage 1 produced."""

    path: str | None
    shapes: dict[str, tuple[int, ...]]
    steps: int
    train_seconds: float
    #: mean task loss of the teacher alone and with the fitted prompts, on the report batches
    task_loss_without_prompts: float
    task_loss_with_prompts: float
    report_images: int
    #: the logged dissimilarity (mask overlap) at the first and the last logging step
    dissimilarity_first: float
    dissimilarity_last: float
    prompts: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def summary(self) -> str:
        shapes = ", ".join(f"{layer} {shape}" for layer, shape in self.shapes.items())
        lines = [
            f"prompts fitted for {shapes} in {self.steps} steps ({self.train_seconds:.1f} s)",
            f"teacher task loss on {self.report_images} images: without prompts {self.task_loss_without_prompts:.4f}, "
            f"with prompts {self.task_loss_with_prompts:.4f}",
            f"mask overlap (dissimilarity term): {self.dissimilarity_first:.4f} at the first log, {self.dissimilarity_last:.4f} at the last",
        ]
        if self.path:
            lines.append(f"prompts written to {self.path}")
        return "\n".join(lines)


def check_teacher_layers(teacher: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """The modules named ``layers`` (forward hooks go there); a ModelError naming a missing one."""
    modules = dict(teacher.named_modules())
    found = {}
    for layer in layers:
        if layer.startswith(HIDDEN_STATES) and is_transformers_model(teacher):
            raise MethodOptionsError(
                f"fit-prompts inserts prompts with forward hooks, which need a module name, not '{layer}': "
                "set methods.freekd.teacher_layers to module names of the transformers teacher (its blocks, e.g. vit.layers.11; "
                    "see teacher.named_modules())"
            )
        if layer not in modules:
            raise ModelError(
                f"layer '{layer}' does not exist in {type(teacher).__name__}; "
                f"stage layers: {', '.join(default_feature_layers(teacher)) or 'none'}; "
                f"top-level modules: {', '.join(name for name, _ in teacher.named_children())}"
            )
        found[layer] = modules[layer]
    return found


def _first_tensor(output):
    if isinstance(output, ModelOutput):
        output = output.to_tuple()
    return output[0] if isinstance(output, (tuple, list)) else output


def _from_map(feature_map: torch.Tensor, like: torch.Tensor, info: BackboneInfo) -> torch.Tensor:
    """Inverse of :meth:`BackboneInfo.to_map`: back to the layer's own layout (prefix tokens kept)."""
    if info.layout == "channels_last" and like.dim() == 4:
        return feature_map.permute(0, 2, 3, 1)
    if info.layout == "tokens" and like.dim() == 3:
        patches = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([like[:, : info.num_prefix_tokens], patches], dim=1)
    return feature_map


def probe_channels(teacher: nn.Module, layers: Sequence[str], sample: torch.Tensor) -> dict[str, int]:
    """Width C of each layer's feature map, from one no-grad forward pass of ``sample`` (the factory's probe)."""
    check_teacher_layers(teacher, layers)
    extractor = FeatureExtractor(teacher, layers)
    try:
        shapes = probe_feature_shapes(sample, extractor, "teacher")
    finally:
        extractor.remove_hooks()
    channels = {}
    for layer in layers:
        if len(shapes[layer]) != 4:
            raise ModelError(f"the teacher's '{layer}' output has shape {tuple(shapes[layer])}, not a (B, C, H, W) map")
        channels[layer] = int(shapes[layer][1])
    return channels


class PromptedTeacher(nn.Module):
    """The frozen teacher with frequency prompts refining the wavelet bands of chosen layers.

    The teacher is a :class:`~hf_freqkd.models.FrozenTeacher`, as in distillation: its parameters
    never train and it stays in eval mode whatever ``.train()`` says (BatchNorm statistics and
    dropout fixed); it passes gradients through its later layers to the prompts only. Call
    :meth:`remove_hooks` to give the teacher back unchanged.
    """

    def __init__(
        self,
        teacher: nn.Module,
        prompts: FrequencyPrompts,
        *,
        wavelet: str = "haar",
        levels: int = 3,
        mode: str = "zero",
        wavelet_backend: str = "auto",
        dissimilarity: str = "jaccard",
        dissimilarity_weight: float = 1.0,
        task_loss: TaskLoss | None = None,
    ):
        super().__init__()
        self.teacher = FrozenTeacher(teacher, pass_gradients=True)
        self.prompts = prompts
        self.info = self.teacher.info
        self.wavelet, self.levels, self.mode, self.wavelet_backend = wavelet, levels, mode, wavelet_backend
        self.dissimilarity, self.dissimilarity_weight = dissimilarity, dissimilarity_weight
        self.task_loss = task_loss or task_loss_of(teacher)
        #: False runs the teacher alone (the "without prompts" report)
        self.prompts_enabled = True
        self._input_size: tuple[int, int] | None = None
        self._overlaps: list[torch.Tensor] = []
        self._hooks = [
            module.register_forward_hook(self._prompt_hook(layer)) for layer, module in check_teacher_layers(teacher, prompts.layers).items()
        ]
        self.train(False)

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def refine(self, layer: str, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's output with refined bands, in its own layout and dtype; the mask overlap)."""
        feature_map = self.info.to_map(feature, self._input_size)
        bands = wavelet_decompose(feature_map, self.wavelet, self.levels, self.mode, self.wavelet_backend)
        masks = band_masks(self.prompts.prompt(layer), bands)
        refined = wavelet_reconstruct(refine_bands(bands, masks), self.wavelet, self.wavelet_backend).to(feature.dtype)
        overlap = torch.stack([mask_overlap(mask, self.dissimilarity) for mask in masks]).sum()
        return _from_map(refined, feature, self.info), overlap

    def _prompt_hook(self, layer: str):
        def hook(module: nn.Module, args, output):
            if not self.prompts_enabled:
                return None
            if isinstance(output, ModelOutput):
                raise MethodOptionsError(f"cannot insert prompts after '{layer}': it returns a {type(output).__name__}; choose a layer inside it")
            refined, overlap = self.refine(layer, _first_tensor(output))
            self._overlaps.append(overlap)
            if isinstance(output, (tuple, list)):
                return type(output)([refined, *output[1:]])
            return refined

        return hook

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> PromptFittingOutput:
        self._input_size = tuple(pixel_values.shape[-2:])
        self._overlaps = []
        try:
            # A detector computes its losses from the labels in this forward (hf_freqkd.models.detection).
            output = self.teacher(pixel_values, labels)
            overlaps = self._overlaps
        finally:
            self._overlaps = []
        logits = output.logits
        dissimilarity = torch.stack(overlaps).sum() if overlaps else pixel_values.new_zeros((), dtype=torch.float32)
        if labels is None:
            return PromptFittingOutput(logits=logits, dissimilarity=dissimilarity.detach())
        task_loss = self.task_loss(output, labels)
        loss = task_loss + self.dissimilarity_weight * dissimilarity
        return PromptFittingOutput(loss=loss, logits=logits, task_loss=task_loss.detach(), dissimilarity=dissimilarity.detach())


class PromptFittingTrainer(AtomicCheckpoints, NonFiniteLossGuard, FormattedDatasets, Trainer):
    """``transformers.Trainer`` over a :class:`PromptedTeacher`; logs ``task_loss`` and ``dissimilarity``.

    ``nonfinite_loss`` (``stop`` or ``skip``, the distillation run's setting) says what a NaN / inf
    task loss or overlap does (see :mod:`hf_freqkd.training.nonfinite`).
    """

    def __init__(self, *args, nonfinite_loss: str = "stop", **kwargs):
        super().__init__(*args, **kwargs)
        self._nonfinite_policy = nonfinite_loss
        self._term_means = LossTermMeans()

    @property
    def nonfinite_loss(self) -> str:
        return self._nonfinite_policy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forward = lambda: model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])  # noqa: E731
        if not model.training:
            outputs = forward()
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        outputs, skipped = self.guarded_forward(
            model, forward, lambda outputs: {"task_loss": outputs.task_loss, "dissimilarity": outputs.dissimilarity}
        )
        if skipped:
            loss = self.zero_loss(model)
            return (loss, outputs) if return_outputs else loss
        self._term_means.add({"task_loss": outputs.task_loss, "dissimilarity": outputs.dissimilarity})
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._term_means.pop_means(self.accelerator))
        if "loss" in logs and self.skipped_steps:
            logs["skipped_steps"] = self.skipped_steps
        super().log(logs, start_time)


def prompt_training_arguments(options: FreeKDOptions, base: TrainingArguments | None, output_dir: str) -> TrainingArguments:
    """Stage 1's TrainingArguments: the schedule from ``options``; device, precision, data loading,
    seed and logging from ``base`` (the run's config). No checkpoints, no evaluation, no clipping."""
    base = base if base is not None else TrainingArguments(output_dir=output_dir)
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=options.prompt_steps,
        learning_rate=options.prompt_learning_rate,
        weight_decay=options.prompt_weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=0.0,
        gradient_accumulation_steps=1,
        per_device_train_batch_size=options.prompt_batch_size or base.per_device_train_batch_size,
        per_device_eval_batch_size=base.per_device_eval_batch_size,
        bf16=base.bf16,
        fp16=base.fp16,
        use_cpu=base.use_cpu,
        seed=base.seed,
        data_seed=base.data_seed,
        # The run's DataLoader settings as DistillationConfig resolved them (no pinning without an accelerator).
        dataloader_num_workers=base.dataloader_num_workers,
        dataloader_persistent_workers=base.dataloader_persistent_workers,
        dataloader_pin_memory=base.dataloader_pin_memory,
        logging_strategy="steps",
        logging_steps=base.logging_steps,
        logging_first_step=True,
        report_to=base.report_to,
        disable_tqdm=base.disable_tqdm,
        save_strategy="no",
        eval_strategy="no",
    )


def _first_input(dataset) -> torch.Tensor:
    if dataset is None or len(dataset) == 0:
        raise DataError("fit-prompts needs a non-empty training dataset")
    return first_training_input(dataset)


def _task_losses(trainer: PromptFittingTrainer, dataset, batches: int) -> tuple[float, float, int]:
    """Mean task loss with and without the prompts over the first ``batches`` evaluation batches."""
    model: PromptedTeacher = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=trainer.args.device)  # with, without, images
    try:
        with torch.no_grad():
            for index, batch in enumerate(trainer.get_eval_dataloader(dataset)):
                if index >= batches:
                    break
                batch = trainer._prepare_inputs(batch)
                count = batch["labels"].shape[0]
                with trainer.compute_loss_context_manager():
                    for slot, enabled in enumerate((True, False)):
                        model.prompts_enabled = enabled
                        totals[slot] += model(batch["pixel_values"], batch["labels"]).task_loss.double() * count
                totals[2] += count
    finally:
        model.prompts_enabled = True
    totals = trainer.accelerator.reduce(totals, reduction="sum")
    images = int(totals[2].item())
    if images == 0:
        return math.nan, math.nan, 0
    return float(totals[0] / totals[2]), float(totals[1] / totals[2]), images


def fit_prompts(
    teacher: nn.Module,
    train_dataset,
    options: FreeKDOptions,
    *,
    report_dataset=None,
    args: TrainingArguments | None = None,
    output_path: str | None = None,
    task_loss: TaskLoss | None = None,
    teacher_name: str | None = None,
) -> PromptFittingResult:
    """Fit FreeKD's prompts for ``teacher`` and, if ``output_path`` is set, write them there.

    Args:
        teacher: the trained teacher (its parameters are frozen in place; forward hooks are removed
            at the end).
        train_dataset: rows with ``pixel_values`` and ``labels`` (:func:`hf_freqkd.data.with_image_transform`).
        options: ``freekd`` options: layers (``teacher_layers``, else the deepest stage(s)),
            ``num_prompts``, wavelet settings and the stage-1 ``prompt_*`` / ``dissimilarity*`` options.
        report_dataset: data for the with/without-prompts task loss report (default: ``train_dataset``).
        args: device, precision, data loading, seed and logging (``TrainingArguments``); the
            schedule always comes from ``options``.
        task_loss: ``(teacher output, labels) -> loss`` of the teacher's task (the output a
            :class:`~hf_freqkd.models.FrozenTeacher` returns); by default the task's own loss
            (cross-entropy, or a detector's losses).
    """
    layers = resolve_teacher_layers(options, backbone_info(teacher))
    channels = probe_channels(teacher, layers, _first_input(train_dataset))
    generator = torch.Generator().manual_seed(args.seed if args is not None else 0)
    prompts = FrequencyPrompts(
        {
            layer: initial_prompts(width, options.num_prompts, options.levels, options.prompt_init_std, generator)
            for layer, width in channels.items()
        },
        trainable=True,
    )
    model = PromptedTeacher(
        teacher,
        prompts,
        wavelet=options.wavelet,
        levels=options.levels,
        mode=options.mode,
        wavelet_backend=options.wavelet_backend,
        dissimilarity=options.dissimilarity,
        dissimilarity_weight=options.dissimilarity_weight,
        task_loss=task_loss,
    )
    output_dir = str(Path(output_path).parent) if output_path else (args.output_dir if args is not None else "prompt_fitting")
    trainer = PromptFittingTrainer(
        model=model,
        args=prompt_training_arguments(options, args, output_dir),
        train_dataset=train_dataset,
        data_collator=task_for_model(teacher).data_collator,
        # The reference optimiser is Adam with L2 weight decay; TrainingArguments only offers AdamW.
        optimizer_cls_and_kwargs=(torch.optim.Adam, {"lr": options.prompt_learning_rate}),
        nonfinite_loss=getattr(args, "nonfinite_loss", "stop"),
    )
    try:
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        with_prompts, without_prompts, images = _task_losses(trainer, report_dataset or train_dataset, options.prompt_report_batches)
    finally:
        model.remove_hooks()
    overlaps = [entry["dissimilarity"] for entry in trainer.state.log_history if "dissimilarity" in entry]
    fitted = prompts.as_dict()
    result = PromptFittingResult(
        path=None,
        shapes={layer: tuple(value.shape) for layer, value in fitted.items()},
        steps=trainer.state.global_step,
        train_seconds=train_seconds,
        task_loss_without_prompts=without_prompts,
        task_loss_with_prompts=with_prompts,
        report_images=images,
        dissimilarity_first=overlaps[0] if overlaps else math.nan,
        dissimilarity_last=overlaps[-1] if overlaps else math.nan,
        prompts=fitted,
    )
    if output_path and trainer.is_world_process_zero():
        result.path = str(
            save_prompts(
                output_path,
                fitted,
                wavelet=options.wavelet,
                mode=options.mode,
                levels=options.levels,
                extra_metadata={
                    "teacher": teacher_name or type(teacher).__name__,
                    "num_prompts": options.num_prompts,
                    "dissimilarity": options.dissimilarity,
                    "steps": result.steps,
                    "task_loss_without_prompts": without_prompts,
                    "task_loss_with_prompts": with_prompts,
                    "dissimilarity_first": result.dissimilarity_first,
                    "dissimilarity_last": result.dissimilarity_last,
                },
            )
        )
    return result


# ----------------------------------------------------------------------------------------------
# From a YAML config (the `fit-prompts` command and scripts/fit_prompts.py)


def _load_data(args, model_args, data_args):
    """(train dataset, report dataset, number of classes), exactly as ``distill`` prepares them."""
    from .models.loading import load_model
    from .run import input_config_for, load_run_data

    data = load_run_data(args, model_args, data_args)
    # The input size and normalisation are the student's (no weights needed to read them).
    student = load_model(model_args.student_model, num_classes=data.num_classes, model_kwargs=model_args.student_model_kwargs, trust_remote_code=args.trust_remote_code)
    input_config = input_config_for(student, data_args)
    train_dataset, eval_dataset = data.formatted(input_config, data_args.augmentation)
    if eval_dataset is None:  # report the task loss on the training images, unaugmented
        eval_dataset = data.transform(data.train, data.image_column, data.label_column, input_config, training=False, augmentation="none")
    return train_dataset, eval_dataset, data.num_classes


def run_fit_prompts(config_path: str | None = None, overrides: list[str] | None = None) -> PromptFittingResult:
    """Stage 1 from a config: parse, load teacher and data, fit, write ``methods.freekd.prompts_path``."""
    from .config import parse_config
    from .methods.base import options_from_dict
    from .models.loading import model_num_classes
    from .output_dir import check_output_path

    args, model_args, data_args = parse_config(config_path, overrides)
    if data_args.streaming:
        raise ConfigError(
            "fit-prompts reads the training images by index and cannot read a stream: run it with streaming=false "
            "(the distill run may stream the same data)"
        )
    if "freekd" not in args.methods:
        raise MethodOptionsError(
            f"fit-prompts fits the prompts of the freekd method, but the config's methods are {', '.join(args.methods)}: "
            "list freekd in methods (its options name the layers, the prompts file and the stage-1 schedule)"
        )
    options = options_from_dict(FreeKDOptions, args.methods["freekd"], "freekd")
    if options.masks != "prompts":
        raise MethodOptionsError(f"methods.freekd.masks is '{options.masks}': there are no prompts to fit; set masks: prompts and a prompts_path")
    check_output_path(options.prompts_path, "methods.freekd.prompts_path", folder=False)
    train_dataset, report_dataset, num_classes = _load_data(args, model_args, data_args)
    teacher = load_teacher(None, args, [FreeKD(options)], num_classes)
    if model_num_classes(teacher) != num_classes:
        raise ModelError(f"teacher has {model_num_classes(teacher)} classes but the dataset has {num_classes}")
    check_finite_weights(teacher, "teacher", args.teacher_checkpoint or args.teacher_model)
    return fit_prompts(
        teacher,
        train_dataset,
        options,
        report_dataset=report_dataset,
        args=args,
        output_path=options.prompts_path,
        teacher_name=args.teacher_model,
    )
