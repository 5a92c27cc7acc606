"""FAM-KD frequency attention feature distillation: ``fam`` (knowledge review), ``fam_l2l`` (layer to layer).

Paper: Pham et al., "Frequency Attention for Knowledge Distillation" (WACV 2024, arXiv 2403.05894).
Official code (knowledge-review variant only): https://github.com/cuong-pv/FAM-KD
(``distillers/FAM_KD.py``).

Both methods pass student stage features through the frequency attention module
(:class:`~hf_freqkd.layers.frequency_attention.FrequencyAttention`: a learnable complex filter per
frequency mixing channels, the lowest frequencies zeroed, plus a 1x1 local branch, then BatchNorm)
to the teacher's channel count and spatial size, and add ``weight * warm-up * sum over stages of
MSE(output, teacher feature)`` to the ground-truth cross-entropy (the ``ce`` method, weight 1.0 by
default). There is no KL term, as in the released code. The warm-up is the trainer's
``distill_warmup_epochs`` (20 on CIFAR and 1 on ImageNet in the released configs).

``fam`` - knowledge review, as the released code. Student stages are processed deepest first. At
each stage a 1x1 conv + BN + ReLU brings the student feature to a middle width when its width
differs (and likewise the residual from the deeper stage); the residual is resized (nearest) to the
student feature's size and fused with it by a 3x3 local self-attention
(:class:`~hf_freqkd.layers.frequency_attention.LocalSelfAttention`, queries from the residual); the
fused map is resized (nearest) to the teacher stage's size, passed through the module (ending in
BN + ReLU) and compared with the teacher; the fused, resized map is the next stage's residual.
The deepest "stage" is the pooled feature as a 1x1 map (``pooled_stage``).

``fam_l2l`` - layer to layer, as the paper describes it (no released code): each student stage goes
1x1 conv + BN + ReLU -> nearest resize to the teacher stage -> module -> BN, MSE against that
teacher stage; no fusion across stages.

Stages. By default the stage outputs of both networks (timm ``feature_info``; transformers
``hidden_states.<i>``) are paired in order by :func:`~hf_freqkd.models.pairing.pair_layers`: CNNs
need the same stage count, a ViT side contributes evenly spaced blocks (its tokens laid on their
grid, class and register tokens dropped). ``student_layers`` / ``teacher_layers`` name modules to
pair explicitly. Channel and size differences are what the adapters and resizing handle; a layer
that does not exist, a stage count mismatch without explicit layers, or a feature that is not a
spatial map are errors raised when the trainer is built. The module's filter has
``C_in * C_out * H * W`` complex entries per stage (51.4 M over layer1..layer4 of ResNet34 ->
ResNet18 at 224 px): the extra parameter count is logged when the trainer starts.

What follows the released code rather than the paper, and other readings (each an option):
* ``pooled_stage``: the released CIFAR code adds the pooled feature as the deepest stage and matches
  it to the teacher's pooled feature (``loss``); its ImageNet run computes that stage only as the
  first residual (``residual``: no module, no loss); ``none`` starts at the last stage.
* The pooled feature is the spatial mean of the deepest stage unless ``student_pooled_layer`` /
  ``teacher_pooled_layer`` name the pooling module (``global_pool`` in the CIFAR zoo and timm CNNs),
  which is what the released code reads; the two agree for the CIFAR ResNets, not for the
  pre-activation WRNs (whose pooled feature follows a final BN + ReLU).
* Middle width: each stage's own student width, as in every released config (``mid_channels``).
* ``teacher_relu``: methods.md asks for teacher features after ReLU. The CIFAR ResNet and timm ResNet
  stage outputs already are; the WRN stages are raw residual sums, which the released code compares
  as they are (``teacher_relu: false`` reproduces that).
* The released ResNet32x4 -> ResNet8x4 config reads the student's pre-ReLU stage features
  (``STU_PREACT``); this implementation reads the stage outputs timm exposes (post-ReLU).
* ``fam_l2l`` ``output_relu``: the paper's layer-to-layer chain ends at the BN; true adds a ReLU.

Options of both methods: ``weight`` (the loss weight: 0.8 for ResNet56 -> ResNet20, 1.0 for the
ResNet110 pairs and ResNet34 -> ResNet18, 5.0 for the WRN-40-2 pairs in the released configs),
``student_layers``, ``teacher_layers``, ``mid_channels``, ``high_pass_ratio`` (0.1: at 32x32 the
step zeroes DC and its three neighbours, at 16x16 and below nothing), ``teacher_relu`` and
``reference_implementation`` (the straightforward full-``fft2`` and ``unfold`` code paths, same
results, slower; for checking). ``fam`` adds ``pooled_stage``, ``student_pooled_layer`` and
``teacher_pooled_layer``; ``fam_l2l`` adds ``output_relu``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..layers.frequency_attention import FrequencyAttention, LocalSelfAttention, SingleValueSafeBatchNorm2d
from ..models.pairing import pair_layers
from ..types import FeatureRequest, LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, in_dtype_of, require
from .registry import register_method

logger = logging.getLogger(__name__)


@dataclass
class FAMOptions(MethodOptions):
    student_layers: list[str] | None = field(
        default=None,
        metadata={"help": "Student modules to distil, shallow to deep (paired in order with teacher_layers); "
                          "null: the stage outputs (timm feature_info / hidden_states.<i>)."},
    )
    teacher_layers: list[str] | None = field(
        default=None, metadata={"help": "Teacher modules paired with student_layers; null: the teacher's stage outputs."}
    )
    mid_channels: int | None = field(
        default=None,
        metadata={"help": "Width the student features are brought to before the module (>= 1); "
                          "null: each stage's own student width, as in the released configs."},
    )
    high_pass_ratio: float = field(
        default=0.1,
        metadata={"help": "Relative half-size of the centred box of low frequencies zeroed after the mixing "
                          "(in [0, 1]; 0 keeps all). Acts on maps larger than 16x16 at 0.1."},
    )
    teacher_relu: bool = field(
        default=True,
        metadata={"help": "Apply ReLU to the teacher features (already post-ReLU for ResNets; WRN stages are raw sums, "
                          "which the released code compares as they are: false)."},
    )
    reference_implementation: bool = field(
        default=False,
        metadata={"help": "Use the straightforward reference code (full fft2 + einsum, unfold attention): "
                          "same results, slower; for checking."},
    )
    #: what ``hf-freqkd tune`` varies by default, for fam and fam_l2l (syntax: hf_freqkd/tune/space.py)
    search_space: ClassVar[dict[str, Any]] = {"weight": {"low": 0.25, "high": 8.0, "log": True}, "high_pass_ratio": {"low": 0.0, "high": 0.3}}

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("student_layers", "teacher_layers"):
            value = getattr(self, option)
            require(
                value is None or (len(value) > 0 and all(isinstance(n, str) and n for n in value)),
                option, value, "a non-empty list of module names, or null",
            )
        require(self.mid_channels is None or self.mid_channels >= 1, "mid_channels", self.mid_channels, "an integer >= 1, or null")
        require(
            math.isfinite(self.high_pass_ratio) and 0 <= self.high_pass_ratio <= 1,
            "high_pass_ratio", self.high_pass_ratio, "a number in [0, 1]",
        )


@dataclass
class FAMReviewOptions(FAMOptions):
    pooled_stage: Literal["loss", "residual", "none"] = field(
        default="loss",
        metadata={"help": "The pooled feature as the deepest stage: 'loss' (released CIFAR code: fused, passed through "
                          "a module and matched to the teacher's pooled feature), 'residual' (released ImageNet run: "
                          "only the first residual), 'none'."},
    )
    student_pooled_layer: str | None = field(
        default=None,
        metadata={"help": "Student module whose output is the pooled feature, (B, C) or (B, C, 1, 1), e.g. global_pool; "
                          "null: the spatial mean of the deepest student stage."},
    )
    teacher_pooled_layer: str | None = field(
        default=None,
        metadata={"help": "Teacher module whose output is the pooled feature (pooled_stage 'loss' only); "
                          "null: the spatial mean of the deepest teacher stage."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in ("student_pooled_layer", "teacher_pooled_layer"):
            value = getattr(self, option)
            require(value is None or value != "", option, value, "a module name, or null")
        require(
            self.student_pooled_layer is None or self.pooled_stage != "none",
            "student_pooled_layer", self.student_pooled_layer, "null when pooled_stage is 'none'",
        )
        require(
            self.teacher_pooled_layer is None or self.pooled_stage == "loss",
            "teacher_pooled_layer", self.teacher_pooled_layer, "null unless pooled_stage is 'loss'",
        )


@dataclass
class FAMLayerOptions(FAMOptions):
    output_relu: bool = field(
        default=False,
        metadata={"help": "ReLU after the module's BatchNorm (the paper's layer-to-layer chain ends at the BN)."},
    )


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """The 1x1 width adapter of the released code (its conv initialised Kaiming-uniform, a=1)."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, SingleValueSafeBatchNorm2d(out_channels), nn.ReLU())


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")


class ReviewStage(nn.Module):
    """One stage of ``fam``: adapt widths, fuse with the deeper residual, resize, module.

    ``forward(x, residual)`` returns ``(module output or None, fused map)``; the fused map is the
    next shallower stage's residual.
    """

    def __init__(
        self,
        student_channels: int,
        mid_channels: int,
        residual_channels: int | None,
        teacher_channels: int | None,
        teacher_size: tuple[int, int] | None,
        high_pass_ratio: float,
        reference: bool,
    ):
        super().__init__()
        self.project = conv_bn_relu(student_channels, mid_channels) if student_channels != mid_channels else None
        fuses = residual_channels is not None
        self.project_residual = (
            conv_bn_relu(residual_channels, mid_channels) if fuses and residual_channels != mid_channels else None
        )
        self.fuse = LocalSelfAttention(mid_channels, reference=reference) if fuses else None
        self.teacher_size = teacher_size
        self.fam = (
            FrequencyAttention(mid_channels, teacher_channels, teacher_size, high_pass_ratio, activation=True, reference=reference)
            if teacher_channels is not None
            else None
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.project is not None:
            x = self.project(x)
        if self.fuse is not None:
            if self.project_residual is not None:
                residual = self.project_residual(residual)
            # The attention resizes the residual to x's size (after its query convolution: cheaper).
            x = self.fuse(x, residual)
        if self.teacher_size is not None:
            x = resize(x, self.teacher_size)
        return (self.fam(x) if self.fam is not None else None), x


class LayerStage(nn.Module):
    """One stage of ``fam_l2l``: 1x1 conv + BN + ReLU, resize, module ending in BN (+ ReLU)."""

    def __init__(
        self, student_channels: int, mid_channels: int, teacher_channels: int, teacher_size: tuple[int, int],
        high_pass_ratio: float, output_relu: bool, reference: bool,
    ):
        super().__init__()
        self.project = conv_bn_relu(student_channels, mid_channels)
        self.teacher_size = teacher_size
        self.fam = FrequencyAttention(
            mid_channels, teacher_channels, teacher_size, high_pass_ratio, activation=output_relu, reference=reference
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fam(resize(self.project(x), self.teacher_size))


class _FrequencyAttentionDistillation(DistillationMethod):
    """What ``fam`` and ``fam_l2l`` share: stage pairing, shape checks, teacher targets, the loss."""

    loss_name = "loss_fam"
    # Stage maps only: on a detector the stages are its FPN levels (docs/methods/fam.md, "Detection").
    tasks = ("classification", "detection")
    reads_teacher_logits = False

    def feature_request(self, student, teacher) -> FeatureRequest:
        options = self.options
        #: (student layer, teacher layer) from shallow to deep
        self.pairs = pair_layers(student, teacher, options.student_layers, options.teacher_layers, method=self.name)
        return FeatureRequest(student=tuple(s for s, _ in self.pairs), teacher=tuple(t for _, t in self.pairs))

    def _stage_shapes(self, student_shapes, teacher_shapes) -> list[tuple[torch.Size, torch.Size]]:
        shapes = []
        for student_layer, teacher_layer in self.pairs:
            student_shape, teacher_shape = student_shapes[student_layer], teacher_shapes[teacher_layer]
            if len(teacher_shape) != 4 or min(teacher_shape[1:]) < 1:
                raise ModelError(
                    f"{self.name}: teacher feature '{teacher_layer}' has shape {tuple(teacher_shape)}, not a (B, C, H, W) map; "
                    "set teacher_layers to modules that output spatial maps"
                )
            if len(student_shape) != 4 or min(student_shape[1:]) < 1:
                raise ModelError(
                    f"{self.name}: student feature '{student_layer}' has shape {tuple(student_shape)}, not a (B, C, H, W) map, "
                    f"so it cannot be resized to the {teacher_shape[2]}x{teacher_shape[3]} of teacher feature '{teacher_layer}'; "
                    "set student_layers to modules that output spatial maps"
                )
            shapes.append((student_shape, teacher_shape))
        return shapes

    def _log_stages(self, rows: list[str]) -> None:
        filters = sum(m.filter.numel() // 2 for m in self.modules() if isinstance(m, FrequencyAttention))
        logger.info("%s stages (student -> teacher): %s; %d complex filter entries", self.name, "; ".join(rows), filters)

    def teacher_target(self, feature: torch.Tensor) -> torch.Tensor:
        feature = feature.detach().float()
        # Stage outputs of ResNets are post-ReLU already: ReLU would only copy them, and the MSE keeps
        # its target for the backward pass (a teacher-sized map per stage per step).
        if self.options.teacher_relu and bool((feature < 0).any()):
            return F.relu(feature)
        return feature

    def stage_outputs(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(module output, teacher target)`` per distilled stage, shallow to deep."""
        raise NotImplementedError

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        pairs = self.stage_outputs(student, teacher)
        loss = torch.stack([F.mse_loss(output.float(), target) for output, target in pairs]).sum()
        return {self.loss_name: loss}


@register_method
class FrequencyAttentionReview(_FrequencyAttentionDistillation):
    name = "fam"
    description = "FAM-KD knowledge review: fused student stages, frequency attention, MSE to the teacher's."
    options_class = FAMReviewOptions
    loss_name = "loss_fam"

    def feature_request(self, student, teacher) -> FeatureRequest:
        request = super().feature_request(student, teacher)
        student_pooled, teacher_pooled = self.options.student_pooled_layer, self.options.teacher_pooled_layer
        return FeatureRequest(
            student=request.student + ((student_pooled,) if student_pooled else ()),
            teacher=request.teacher + ((teacher_pooled,) if teacher_pooled else ()),
        )

    def build(self, student_shapes, teacher_shapes, num_classes) -> None:
        options = self.options
        # (student channels, teacher channels or None, teacher size or None) per stage, shallow to deep.
        stages = [(s[1], t[1], (t[2], t[3])) for s, t in self._stage_shapes(student_shapes, teacher_shapes)]
        rows = [f"{s} {tuple(student_shapes[s][1:])} -> {t} {tuple(teacher_shapes[t][1:])}" for s, t in self.pairs]
        if options.pooled_stage != "none":
            student_channels = self._pooled_channels("student", options.student_pooled_layer, student_shapes, stages[-1][0])
            if options.pooled_stage == "loss":
                teacher_channels = self._pooled_channels("teacher", options.teacher_pooled_layer, teacher_shapes, stages[-1][1])
                stages.append((student_channels, teacher_channels, (1, 1)))
                rows.append(f"pooled ({student_channels}, 1, 1) -> pooled ({teacher_channels}, 1, 1)")
            else:
                stages.append((student_channels, None, None))
                rows.append(f"pooled ({student_channels}, 1, 1) as the first residual")
        widths = [options.mid_channels or student_channels for student_channels, _, _ in stages]
        self.stages = nn.ModuleList(
            ReviewStage(
                student_channels,
                widths[i],
                widths[i + 1] if i + 1 < len(stages) else None,
                teacher_channels,
                teacher_size,
                options.high_pass_ratio,
                options.reference_implementation,
            )
            for i, (student_channels, teacher_channels, teacher_size) in enumerate(stages)
        )
        self._log_stages(rows)

    def _pooled_channels(self, role: str, layer: str | None, shapes, deepest_channels: int) -> int:
        if layer is None:
            return deepest_channels
        shape = shapes[layer]
        if not (len(shape) == 2 or len(shape) == 4 and tuple(shape[2:]) == (1, 1)):
            raise ModelError(
                f"{self.name}: {role}_pooled_layer '{layer}' outputs {tuple(shape)}; expected a pooled (B, C) or (B, C, 1, 1) feature"
            )
        return shape[1]

    def _pooled(self, outputs: LogitsAndFeatures, layer: str | None, deepest: torch.Tensor) -> torch.Tensor:
        if layer is None:
            return deepest.mean((2, 3), keepdim=True)
        feature = outputs.features[layer]
        return feature.reshape(*feature.shape[:2], 1, 1)

    def stage_outputs(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        options = self.options
        inputs = [in_dtype_of(student.features[s], self.stages) for s, _ in self.pairs]
        targets = [self.teacher_target(teacher.features[t]) for _, t in self.pairs]
        if options.pooled_stage != "none":
            inputs.append(in_dtype_of(self._pooled(student, options.student_pooled_layer, inputs[-1]), self.stages))
        if options.pooled_stage == "loss":
            # Mean of the ReLU'd map: the pooled feature of a post-ReLU stage, as the released code pools it.
            teacher_pooled = self._pooled(teacher, options.teacher_pooled_layer, targets[-1])
            targets.append(self.teacher_target(teacher_pooled) if options.teacher_pooled_layer else teacher_pooled)
        outputs: list[torch.Tensor | None] = [None] * len(inputs)
        residual = None
        for index in reversed(range(len(inputs))):
            outputs[index], residual = self.stages[index](inputs[index], residual)
        return [(output, target) for output, target in zip(outputs, targets) if output is not None]


@register_method
class FrequencyAttentionLayerToLayer(_FrequencyAttentionDistillation):
    name = "fam_l2l"
    description = "FAM-KD layer to layer: each student stage through frequency attention, MSE to its teacher pair."
    options_class = FAMLayerOptions
    loss_name = "loss_fam_l2l"

    def build(self, student_shapes, teacher_shapes, num_classes) -> None:
        options = self.options
        self.stages = nn.ModuleList(
            LayerStage(
                s[1], options.mid_channels or s[1], t[1], (t[2], t[3]),
                options.high_pass_ratio, options.output_relu, options.reference_implementation,
            )
            for s, t in self._stage_shapes(student_shapes, teacher_shapes)
        )
        self._log_stages([f"{s} {tuple(student_shapes[s][1:])} -> {t} {tuple(teacher_shapes[t][1:])}" for s, t in self.pairs])

    def stage_outputs(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (stage(in_dtype_of(student.features[s], stage)), self.teacher_target(teacher.features[t]))
            for stage, (s, t) in zip(self.stages, self.pairs)
        ]
