"""``freekd``: FreeKD, masked wavelet-band distillation with semantic frequency prompts (CVPR 2024).

Stage 2 of two (stage 1, ``hf-freqkd fit-prompts``, fits the prompts on the frozen teacher; see
:mod:`hf_freqkd.prompt_fitting`). For each distilled layer pair, the student's feature map is
resized to the teacher's grid if they differ (bilinear) and passes a trainable 1x1 conv to the
teacher's width; both maps go through an L-level 2-D wavelet transform (haar, 3 levels, zero
padding); masks ``sigmoid(P_b @ R)`` come from the *teacher's* bands and the frozen prompts only
(no gradient) and the same mask multiplies the student's and the teacher's bands:

    loss_freekd = sum over pairs, sum over levels l = 1..L of
                  mean |M_l * (S_l - T_l)|   (+ the low band, with ``distill_low``)

as in the released code. Options add the released detection config's plain MSE on the aligned
features (``mse_weight``: 5 there) and the paper's position-aware relational channel weighting
(``relational``; see :class:`~hf_freqkd.layers.frequency_prompts.RelationalChannelWeighting`).

Readings (shared/methods.md, section 3): paper - T = 2 prompts, Jaccard dissimilarity, relational
weighting on; released code - T = 6, Dice, MSE term at weight 5, no relational weighting. Defaults:
T = 2, Jaccard, no MSE, no relational weighting. ``masks: uniform`` replaces the prompts by one
mask of ones per band (plain wavelet-band L1), an ablation that needs no stage 1.

The prompts are loaded from ``prompts_path`` when the trainer is built and checked against the
teacher (layer names, channels, levels, wavelet). They are persistent buffers: in no optimizer,
without gradient, saved in checkpoints (resuming restores the prompts the run started with, even if
the file was re-fitted since; the file must still exist), never in the exported student.
The options prefixed ``prompt_`` and ``dissimilarity*`` are stage 1's; stage 2 ignores them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MethodOptionsError, MissingPathError
from ..frequency.wavelet2d import BACKENDS, BOUNDARY_MODES, is_discrete_wavelet, wavelet_decompose
from ..layers.frequency_prompts import (
    DISSIMILARITIES,
    FrequencyPrompts,
    RelationalChannelWeighting,
    band_masks,
    load_prompts,
    masked_band_l1,
    pair_channel_weights,
)
from ..models.pairing import check_paired_maps, evenly_spaced, pair_layers
from ..types import BackboneInfo, FeatureRequest, LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, in_dtype_of, require, require_weight
from .registry import register_method


@dataclass
class FreeKDOptions(MethodOptions):
    # Layers
    teacher_layers: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Teacher layers distilled (module names). Default: the deepest stage, or as many evenly spaced stages as student_layers."},
    )
    student_layers: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Student layers, paired in order with teacher_layers. Default: the deepest stage(s), evenly spaced."},
    )
    # Prompts and masks
    masks: Literal["prompts", "uniform"] = field(
        default="prompts",
        metadata={"help": "'prompts': masks from the fitted prompts (FreeKD); 'uniform': one mask of ones per band (ablation, no stage 1)."},
    )
    prompts_path: Optional[str] = field(
        default=None,
        metadata={"help": "Prompts file (safetensors): written by `hf-freqkd fit-prompts`, read by `distill`. Required with masks: prompts."},
    )
    num_prompts: int = field(default=2, metadata={"help": "Prompts T per band (paper 2, released config 6); checked against the file."})
    # Decomposition
    wavelet: str = field(default="haar", metadata={"help": "Discrete wavelet (pywt name: haar, db2, ...)."})
    levels: int = field(default=3, metadata={"help": "Wavelet levels L (>= 1); prompts have shape (L + 1, T, C)."})
    mode: str = field(default="zero", metadata={"help": f"Boundary padding of the transform: {', '.join(BOUNDARY_MODES)}."})
    wavelet_backend: Literal["auto", "haar", "matrix", "ptwt"] = field(
        default="auto",
        metadata={"help": "How the transform is computed (same coefficients): 'haar' (2x2 block sums, haar only), 'matrix' "
                          "(ptwt's 1-D transform as matrix products), 'ptwt' (ptwt.wavedec2), 'auto' (haar for haar, else matrix up to 64 px)."},
    )
    # Stage 2 loss
    distill_low: bool = field(default=False, metadata={"help": "Also distil the masked low band (off in paper and code)."})
    mse_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of a plain MSE between aligned student and teacher features, term loss_freekd_mse (released detection config: 5)."},
    )
    relational: bool = field(
        default=False, metadata={"help": "Position-aware relational channel weighting (paper: on; released code: off)."}
    )
    relation_hidden: int = field(default=64, metadata={"help": "Hidden width of the relational gate MLP (>= 1)."})
    relation_temperature: float = field(default=0.1, metadata={"help": "Softmax temperature of the C x C relation (> 0)."})
    # Stage 1 (fit-prompts)
    prompt_steps: int = field(default=2000, metadata={"help": "Stage 1: optimisation steps of the prompts (reference 2000)."})
    prompt_learning_rate: float = field(default=0.01, metadata={"help": "Stage 1: Adam learning rate, cosine decay (reference 0.01)."})
    prompt_weight_decay: float = field(default=1e-3, metadata={"help": "Stage 1: Adam weight decay (reference 1e-3)."})
    prompt_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Stage 1: batch size per device; per_device_train_batch_size when unset."}
    )
    prompt_init_std: float = field(default=0.01, metadata={"help": "Stage 1: standard deviation of the N(0, s^2) initial prompts."})
    dissimilarity: Literal["jaccard", "dice"] = field(
        default="jaccard", metadata={"help": "Stage 1: mask overlap pushed down: soft 'jaccard' (paper) or 'dice' (released code)."}
    )
    dissimilarity_weight: float = field(default=1.0, metadata={"help": "Stage 1: lambda of the dissimilarity term (reference 1)."})
    prompt_report_batches: int = field(
        default=20, metadata={"help": "Stage 1: evaluation batches over which the task loss with and without prompts is reported."}
    )
    #: what ``hf-freqkd tune`` varies by default (syntax: hf_freqkd/tune/space.py); with masks: prompts
    #: the search fits the prompts once per stage-1 setting (hf_freqkd/tune/prompts.py)
    search_space: ClassVar[dict[str, Any]] = {"weight": {"low": 0.25, "high": 8.0, "log": True}, "masks": ["prompts", "uniform"]}

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("teacher_layers", "student_layers"):
            layers = getattr(self, name)
            require(layers is None or (len(layers) > 0 and all(layers)), name, layers, "a non-empty list of layer names, or null")
        if self.teacher_layers and self.student_layers:
            require(
                len(self.teacher_layers) == len(self.student_layers),
                "student_layers",
                self.student_layers,
                f"as many entries as teacher_layers ({len(self.teacher_layers)}); they are paired in order",
            )
        if self.masks == "prompts":
            require(bool(self.prompts_path), "prompts_path", self.prompts_path, "a prompts file path with masks: prompts (or masks: uniform)")
        else:
            require(self.prompts_path is None, "prompts_path", self.prompts_path, "null with masks: uniform (no prompts are read)")
        require(self.num_prompts >= 1, "num_prompts", self.num_prompts, "an integer >= 1")
        require(is_discrete_wavelet(self.wavelet), "wavelet", self.wavelet, "a discrete wavelet pywt knows (haar, db2, sym4, ...)")
        require(self.levels >= 1, "levels", self.levels, "an integer >= 1")
        require(self.mode in BOUNDARY_MODES, "mode", self.mode, f"one of {', '.join(BOUNDARY_MODES)}")
        require(self.wavelet_backend in BACKENDS, "wavelet_backend", self.wavelet_backend, f"one of {', '.join(BACKENDS)}")
        require(self.wavelet_backend != "haar" or self.wavelet == "haar", "wavelet_backend", self.wavelet_backend, f"'auto', 'matrix' or 'ptwt' with wavelet {self.wavelet!r} (haar needs wavelet: haar)")
        require_weight(self.mse_weight, "mse_weight")
        require(self.relation_hidden >= 1, "relation_hidden", self.relation_hidden, "an integer >= 1")
        require(
            self.relation_temperature > 0 and math.isfinite(self.relation_temperature),
            "relation_temperature",
            self.relation_temperature,
            "a finite number > 0",
        )
        require(self.prompt_steps >= 1, "prompt_steps", self.prompt_steps, "an integer >= 1")
        for name in ("prompt_learning_rate", "prompt_init_std"):
            value = getattr(self, name)
            require(value > 0 and math.isfinite(value), name, value, "a finite number > 0")
        for name in ("prompt_weight_decay", "dissimilarity_weight"):
            value = getattr(self, name)
            require(value >= 0 and math.isfinite(value), name, value, "a finite number >= 0")
        require(self.prompt_batch_size is None or self.prompt_batch_size >= 1, "prompt_batch_size", self.prompt_batch_size, "an integer >= 1 or null")
        require(self.prompt_report_batches >= 1, "prompt_report_batches", self.prompt_report_batches, "an integer >= 1")
        require(self.dissimilarity in DISSIMILARITIES, "dissimilarity", self.dissimilarity, f"one of {', '.join(DISSIMILARITIES)}")


def resolve_teacher_layers(options: FreeKDOptions, teacher: BackboneInfo) -> list[str]:
    """The teacher layers FreeKD distils (and stage 1 prompts): explicit, or the deepest stage(s)."""
    if options.teacher_layers:
        return list(options.teacher_layers)
    count = len(options.student_layers) if options.student_layers else 1
    return _deepest(teacher, count, "teacher")


def resolve_layer_pairs(options: FreeKDOptions, student: BackboneInfo, teacher: BackboneInfo) -> list[tuple[str, str]]:
    """``[(student_layer, teacher_layer), ...]``, shallow to deep."""
    teacher_layers = resolve_teacher_layers(options, teacher)
    student_layers = list(options.student_layers) if options.student_layers else _deepest(student, len(teacher_layers), "student")
    return pair_layers(student, teacher, student_layers, teacher_layers, method="freekd")


def _deepest(info: BackboneInfo, count: int, role: str) -> list[str]:
    if not info.stage_layers:
        raise MethodOptionsError(f"freekd: the {role} exposes no stage layers; set {role}_layers to module names")
    try:
        return evenly_spaced(info.stage_layers, count)
    except ValueError as error:
        raise MethodOptionsError(f"freekd: {error}; set {role}_layers explicitly") from None


@register_method
class FreeKD(DistillationMethod):
    name = "freekd"
    description = "FreeKD: L1 on feature wavelet bands, masked by prompts fitted on the teacher (CVPR 2024)."
    options_class = FreeKDOptions
    # Feature maps only: the same loss for classifiers, segmentation networks and detectors (FPN levels).
    tasks = ("classification", "segmentation", "detection")
    reads_teacher_logits = False

    def __init__(self, options: FreeKDOptions | None = None):
        super().__init__(options)
        self.pairs: list[tuple[str, str]] = []

    def feature_request(self, student: BackboneInfo, teacher: BackboneInfo | None) -> FeatureRequest:
        if teacher is None:
            raise MethodOptionsError("freekd needs a teacher")
        self.pairs = resolve_layer_pairs(self.options, student, teacher)
        return FeatureRequest(student=tuple(s for s, _ in self.pairs), teacher=tuple(t for _, t in self.pairs))

    def build(self, student_shapes, teacher_shapes, num_classes: int) -> None:
        options = self.options
        check_paired_maps("freekd", self.pairs, student_shapes, teacher_shapes)
        self.adapters = nn.ModuleList(
            nn.Conv2d(student_shapes[s][1], teacher_shapes[t][1], kernel_size=1) for s, t in self.pairs
        )
        if options.masks == "prompts":
            self.prompts = self._load_checked_prompts({t: int(teacher_shapes[t][1]) for _, t in self.pairs})
        if options.relational:
            widths = [int(teacher_shapes[t][1]) for _, t in self.pairs]
            # Each level relates to the next distilled level; the deepest one to itself.
            self.relations = nn.ModuleList(
                RelationalChannelWeighting(
                    width,
                    widths[i + 1] if i + 1 < len(widths) else width,
                    hidden=options.relation_hidden,
                    temperature=options.relation_temperature,
                )
                for i, width in enumerate(widths)
            )

    def _load_checked_prompts(self, channels: dict[str, int]) -> FrequencyPrompts:
        options = self.options
        try:
            file = load_prompts(options.prompts_path)
        except FileNotFoundError:
            raise MissingPathError(
                f"freekd: prompts file '{options.prompts_path}' does not exist. Fit the prompts first with "
                "`hf-freqkd fit-prompts --config <this config>` (stage 1 writes methods.freekd.prompts_path), "
                "or set masks: uniform to distil without prompts"
            ) from None
        source = f"prompts file '{options.prompts_path}'"
        missing = [layer for layer in channels if layer not in file.prompts]
        if missing:
            raise MethodOptionsError(
                f"freekd: {source} holds prompts for teacher layer(s) {', '.join(file.layers)} but freekd distils "
                f"{', '.join(channels)}: fit prompts for these layers (or set teacher_layers to the file's)"
            )
        settings = {"levels": (file.levels, options.levels), "wavelet": (file.wavelet, options.wavelet), "mode": (file.mode, options.mode)}
        for name, (fitted, configured) in settings.items():
            if fitted != configured:
                raise MethodOptionsError(f"freekd: {source} was fitted with {name} = {fitted!r} but the options say {name} = {configured!r}")
        for layer, width in channels.items():
            shape = tuple(file.prompts[layer].shape)
            expected = (options.levels + 1, options.num_prompts, width)
            if shape != expected:
                raise MethodOptionsError(
                    f"freekd: {source} has prompts of shape {shape} for teacher layer '{layer}', but this teacher's "
                    f"'{layer}' ({width} channels) with levels = {options.levels} and num_prompts = {options.num_prompts} "
                    f"needs shape {expected}: the prompts were fitted for another teacher, layer or setting"
                )
        return FrequencyPrompts({layer: file.prompts[layer] for layer in channels}, trainable=False)

    def aligned_features(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per pair, (student map resized to the teacher's grid and adapted to its width, teacher map)."""
        aligned = []
        for adapter, (student_layer, teacher_layer) in zip(self.adapters, self.pairs):
            student_map, teacher_map = student.features[student_layer], teacher.features[teacher_layer]
            if student_map.shape[-2:] != teacher_map.shape[-2:]:
                shrinking = student_map.shape[-2] > teacher_map.shape[-2] or student_map.shape[-1] > teacher_map.shape[-1]
                # float32: antialiased resizing has no bf16/fp16 kernel on every device
                student_map = F.interpolate(
                    student_map.float(), size=teacher_map.shape[-2:], mode="bilinear", align_corners=False, antialias=shrinking
                ).to(student_map.dtype)
            aligned.append((adapter(in_dtype_of(student_map, adapter)), teacher_map))
        return aligned

    def teacher_masks(self, teacher_layer: str, teacher_bands) -> list[torch.Tensor] | list[None]:
        """The masks of one teacher layer's bands, ``[low, level 1, ..., level L]``; no gradient."""
        if self.options.masks == "uniform":
            return [None] * (teacher_bands.levels + 1)
        with torch.no_grad():
            return band_masks(self.prompts.prompt(teacher_layer), teacher_bands)

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        options = self.options
        aligned = self.aligned_features(student, teacher)
        band_terms, mse_terms = [], []
        for index, ((student_map, teacher_map), (_, teacher_layer)) in enumerate(zip(aligned, self.pairs)):
            teacher_map = teacher_map.detach()
            weights = None
            if options.relational:
                context_student, context_teacher = aligned[index + 1] if index + 1 < len(aligned) else (None, None)
                relation = self.relations[index]
                weights = pair_channel_weights(
                    relation(teacher_map, None if context_teacher is None else context_teacher.detach()),
                    relation(student_map, context_student),
                )
            teacher_bands = wavelet_decompose(teacher_map, options.wavelet, options.levels, options.mode, options.wavelet_backend)
            student_bands = wavelet_decompose(student_map, options.wavelet, options.levels, options.mode, options.wavelet_backend)
            masks = self.teacher_masks(teacher_layer, teacher_bands)
            terms = [
                masked_band_l1(student_band, teacher_band, mask, weights)
                for student_band, teacher_band, mask in zip(student_bands.high, teacher_bands.high, masks[1:])
            ]
            if options.distill_low:
                terms.append(masked_band_l1(student_bands.low, teacher_bands.low, masks[0], weights))
            band_terms.append(torch.stack(terms).sum())
            if options.mse_weight > 0:
                mse_terms.append(F.mse_loss(student_map.float(), teacher_map.float()))
        losses = {"loss_freekd": torch.stack(band_terms).sum()}
        if mse_terms:
            losses["loss_freekd_mse"] = options.mse_weight * torch.stack(mse_terms).sum()
        return losses
