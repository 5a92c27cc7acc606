"""Object detectors: torchvision's RetinaNet, FCOS and Faster R-CNN heads on an FPN over a timm backbone.

Registered in timm like the segmentation networks, so a config (and an exported folder) names the
whole detector with one string::

    timm.create_model("retinanet_resnet8", num_classes=3)             # CPU-sized, CIFAR ResNet-8 body
    timm.create_model("fcos_resnet50", num_classes=80)                 # the papers' detectors
    timm.create_model("retinanet", backbone="convnext_tiny", num_classes=80, fpn_channels=256)

The network: ``body`` is the timm backbone with ``features_only=True``; ``fpn`` is torchvision's
``FeaturePyramidNetwork`` over the chosen stages plus extra levels (two stride-2 convolutions, P6 and
P7, for the single-stage heads; a max-pooled level for Faster R-CNN's RPN, as torchvision builds
them); ``detector`` holds torchvision's head, anchors, box coder and losses. The FPN levels are
named by their stride: ``fpn.p3`` is the level at stride 2^3 = 8. Each level passes through an
identity module of that name, so feature methods hook ``fpn.p3`` ... like any other layer and see
the maps of the same forward that computes the detection losses.

Forward: ``model(pixel_values, labels=None)`` returns a :class:`DetectorOutput`. ``labels`` are the
padded box rows the data pipeline makes (``(B, M, 5)``: class, x1, y1, x2, y2 in pixels; class -100
pads, see :mod:`hf_freqkd.data.detection`). In training mode the output holds the losses, by part
(``classification``, ``box_regression``, and ``centerness`` / ``objectness`` / ``rpn_box_regression``
as the head defines them); in eval mode it holds the detections as one padded tensor ``(B, N, 6)``
of rows x1, y1, x2, y2, score, class (class -100 pads), and, given labels, the losses too.

Images are taken as they come: already resized and normalised by the data pipeline (torchvision's
own ``GeneralizedRCNNTransform`` resizing to 800 px and normalising is not used), so boxes are in
the input's pixels, in and out.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from .backbone_networks import ModelError, create_on_backbone

FAMILIES = ("retinanet", "fcos", "fasterrcnn")
#: class id of padding rows in labels and detections (the Trainer pads evaluation batches with it too)
PAD_CLASS = -100
#: CIFAR-zoo bodies keep full resolution in their first stage: their last two stages (strides 2, 4) feed the FPN
_CIFAR_BACKBONES = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet8x4", "resnet32x4")
BACKBONE_VARIANTS = ("resnet8", "resnet20", "resnet8x4", "resnet32x4", "resnet18", "resnet34", "resnet50", "resnet101")
DEFAULT_BACKBONE = "resnet8"
#: the loss names of torchvision's heads -> the names logged here (loss_<name>)
_LOSS_NAMES = {
    "classification": "classification",
    "bbox_regression": "box_regression",
    "bbox_ctrness": "centerness",
    "loss_classifier": "classification",
    "loss_box_reg": "box_regression",
    "loss_objectness": "objectness",
    "loss_rpn_box_reg": "rpn_box_regression",
}


@dataclass
class DetectorOutput:
    """``losses`` by part (given labels), and ``detections`` ``(B, N, 6)`` in eval mode."""

    losses: dict[str, torch.Tensor] | None = None
    detections: torch.Tensor | None = None


class _Channels:
    """What torchvision's detector constructors read from a backbone: its width. Not a module, so the
    FPN (``self.fpn``) is registered once, under its own name."""

    def __init__(self, out_channels: int):
        self.out_channels = out_channels


class FeaturePyramid(nn.Module):
    """torchvision's FPN over backbone stages plus extra levels, each level output through a named tap."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], channels: int, extra: str):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        if extra == "p6p7":
            extra_block, extra_count = LastLevelP6P7(channels, channels), 2
        else:
            extra_block, extra_count = LastLevelMaxPool(), 1
        self.pyramid = FeaturePyramidNetwork(list(in_channels), channels, extra_blocks=extra_block)
        strides = [int(s) for s in strides] + [int(strides[-1]) * 2 ** (i + 1) for i in range(extra_count)]
        self.strides = strides
        self.level_names = [f"p{int(round(math.log2(stride)))}" for stride in strides]
        for name in self.level_names:
            # Identity taps: hooks on fpn.<level> capture the level from the same forward as the losses.
            self.add_module(name, nn.Identity())

    def forward(self, stages: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        levels = self.pyramid(OrderedDict((f"c{i}", stage) for i, stage in enumerate(stages)))
        return OrderedDict((name, getattr(self, name)(level)) for name, level in zip(self.level_names, levels.values()))


@contextmanager
def _training_mode(*modules: nn.Module):
    """Switch modules to training mode inside (Faster R-CNN computes its losses only then)."""
    modes = [module.training for module in modules]
    for module in modules:
        module.train(True)
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class TimmDetector(nn.Module):
    """A torchvision detection head on an FPN over a timm backbone (see the module docstring).

    Args:
        family (`str`): ``retinanet``, ``fcos`` or ``fasterrcnn``.
        backbone (`str`): timm model name of the backbone (any model with ``features_only``).
        num_classes (`int`): object classes (no background class: Faster R-CNN adds its own).
        in_chans (`int`): input channels.
        fpn_channels (`int`, *optional*): width of the FPN and heads; 256 (the papers') for ImageNet
            backbones, 32 for the CIFAR-zoo ones.
        out_indices (`list[int]`, *optional*): backbone stages feeding the FPN; the last three (two for
            the CIFAR zoo, whose stages are at strides 1, 2, 4), four for Faster R-CNN.
        anchor_scale (`float`, *optional*): anchor size as a multiple of the level's stride
            (RetinaNet 4 with three octave scales, Faster R-CNN 8, FCOS 1: torchvision's COCO settings).
        score_threshold, nms_threshold (`float`): post-processing of the detections.
        detections_per_image (`int`): the detections kept per image (the N of the output).
        backbone_args (`dict`, *optional*): extra ``create_model`` arguments of the backbone.
        backbone_pretrained (`bool`): load the backbone's pretrained weights (the ``pretrained`` flag).
    """

    is_detection_model = True

    def __init__(
        self,
        family: str = "retinanet",
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 3,
        in_chans: int = 3,
        fpn_channels: int | None = None,
        out_indices: Sequence[int] | None = None,
        anchor_scale: float | None = None,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        backbone_args: dict[str, Any] | None = None,
        backbone_pretrained: bool = False,
    ):
        super().__init__()
        import timm

        if family not in FAMILIES:
            raise ModelError(f"family = {family!r} is invalid: expected one of {', '.join(FAMILIES)}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes = {num_classes!r} is invalid: a detector needs at least one object class")
        self.family = family
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.detections_per_image = detections_per_image
        cifar = backbone in _CIFAR_BACKBONES
        stage_count = len(timm.create_model(backbone, features_only=True, pretrained=False, in_chans=in_chans, **dict(backbone_args or {})).feature_info)
        if out_indices is None:
            wanted = 2 if cifar else (4 if family == "fasterrcnn" else 3)
            out_indices = list(range(max(stage_count - wanted, 0), stage_count))
        self.out_indices = [int(i) % stage_count for i in out_indices]
        in_range = all(-stage_count <= int(i) < stage_count for i in out_indices)  # % alone would wrap 5 to 2
        if not self.out_indices or len(set(self.out_indices)) != len(self.out_indices) or not in_range:
            raise ModelError(f"out_indices = {list(out_indices)} is invalid: expected distinct stage indices of {stage_count} stages")
        self.body = timm.create_model(
            backbone, features_only=True, out_indices=self.out_indices, pretrained=backbone_pretrained, in_chans=in_chans,
            **dict(backbone_args or {}),
        )
        strides = self.body.feature_info.reduction()
        if len(set(strides)) != len(strides):
            # Levels are named by stride (fpn.p<log2 stride>): a plain ViT's blocks would all be one level.
            raise ModelError(f"backbone '{backbone}' gives the stages {self.out_indices} at strides {strides}: an FPN needs stages of distinct strides")
        channels = fpn_channels or (32 if cifar else 256)
        self.fpn = FeaturePyramid(
            self.body.feature_info.channels(), self.body.feature_info.reduction(), channels,
            "maxpool" if family == "fasterrcnn" else "p6p7",
        )
        self.num_features = channels
        # feature methods read these levels (hf_freqkd.models.features.default_feature_layers)
        self.feature_info = [
            {"module": f"fpn.{name}", "num_chs": channels, "reduction": stride}
            for name, stride in zip(self.fpn.level_names, self.fpn.strides)
        ]
        self.detector = _build_head(family, num_classes, channels, self.fpn, anchor_scale, score_threshold, nms_threshold, detections_per_image)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, predict: bool = True) -> DetectorOutput:
        """Losses (given labels) and detections (eval mode). ``predict=False`` without labels stops after
        the FPN and returns neither: a distillation teacher whose levels hooks capture needs no head."""
        from torchvision.models.detection.image_list import ImageList

        if self.training and labels is None:
            raise ModelError("a detector in training mode needs labels (its losses are computed from the boxes)")
        images = ImageList(pixel_values, [tuple(pixel_values.shape[-2:])] * pixel_values.shape[0])
        levels = self.fpn(self.body(pixel_values))
        if not predict and labels is None and not self.training:
            return DetectorOutput()
        targets = None if labels is None else self.targets(labels)
        if self.family == "fasterrcnn":
            losses, detections = self._two_stage(images, levels, targets)
        else:
            losses, detections = self._single_stage(images, list(levels.values()), targets)
        if losses is not None:
            losses = {_LOSS_NAMES.get(name, name): value for name, value in losses.items()}
        return DetectorOutput(losses=losses, detections=None if detections is None else self.pad_detections(detections))

    def _single_stage(self, images, levels: list[torch.Tensor], targets):
        detector = self.detector
        head_outputs = detector.head(levels)
        anchors = detector.anchor_generator(images, levels)
        per_level = [level.size(2) * level.size(3) for level in levels]
        losses = None
        if targets is not None:
            if self.family == "fcos":
                losses = detector.compute_loss(targets, head_outputs, anchors, per_level)
            else:
                losses = detector.compute_loss(targets, head_outputs, anchors)
        if self.training:
            return losses, None
        # Split by level as torchvision's own forward does before post-processing.
        anchors_per_location = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [count * anchors_per_location for count in per_level]
        split_outputs = {name: list(value.split(per_level, dim=1)) for name, value in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return losses, detector.postprocess_detections(split_outputs, split_anchors, images.image_sizes)

    def _two_stage(self, images, levels: OrderedDict, targets):
        detector = self.detector
        if self.training:
            proposals, rpn_losses = detector.rpn(images, levels, targets)
            _, roi_losses = detector.roi_heads(levels, proposals, images.image_sizes, targets)
            return {**rpn_losses, **roi_losses}, None
        proposals, _ = detector.rpn(images, levels)
        detections, _ = detector.roi_heads(levels, proposals, images.image_sizes)
        for detection in detections:
            detection["labels"] = detection["labels"] - 1  # class 0 is Faster R-CNN's background
        losses = None
        if targets is not None:
            # The RPN and RoI heads compute losses only in training mode (they sample anchors and
            # proposals then); neither holds BatchNorm or dropout, so the switch changes nothing else.
            # Gradients stay on: FreeKD's stage 1 trains prompts through a frozen teacher's losses.
            with _training_mode(detector.rpn, detector.roi_heads):
                train_proposals, rpn_losses = detector.rpn(images, levels, targets)
                _, roi_losses = detector.roi_heads(levels, train_proposals, images.image_sizes, targets)
            losses = {**rpn_losses, **roi_losses}
        return losses, detections

    # -- boxes in and out -------------------------------------------------------------------------

    def targets(self, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Padded label rows ``(B, M, 5)`` -> torchvision's per-image ``{"boxes", "labels"}``."""
        if labels.dim() != 3 or labels.shape[-1] != 5:
            raise ModelError(f"detection labels of shape {tuple(labels.shape)} are invalid: expected (batch, boxes, 5) rows of class, x1, y1, x2, y2")
        shift = 1 if self.family == "fasterrcnn" else 0
        targets = []
        for rows in labels:
            rows = rows[rows[:, 0] != PAD_CLASS]
            targets.append({"boxes": rows[:, 1:].float(), "labels": rows[:, 0].long() + shift})
        return targets

    def pad_detections(self, detections: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Per-image detections -> ``(B, N, 6)`` rows x1, y1, x2, y2, score, class; class and score -100 pad."""
        batch = len(detections)
        device = detections[0]["boxes"].device if detections else torch.device("cpu")
        out = torch.zeros(batch, self.detections_per_image, 6, device=device)
        out[..., 4:] = PAD_CLASS
        for index, detection in enumerate(detections):
            count = min(len(detection["boxes"]), self.detections_per_image)
            out[index, :count, :4] = detection["boxes"][:count]
            out[index, :count, 4] = detection["scores"][:count]
            out[index, :count, 5] = detection["labels"][:count].float()
        return out

    # -- timm's classifier interface (export drops or resets the class head) -----------------------

    def get_classifier(self) -> nn.Module:
        detector = self.detector
        if self.family == "fasterrcnn":
            return detector.roi_heads.box_predictor.cls_score
        return detector.head.classification_head.cls_logits


def _build_head(family, num_classes, channels, fpn: FeaturePyramid, anchor_scale, score_threshold, nms_threshold, detections):
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    strides = fpn.strides
    placeholder = _Channels(channels)
    # The transform is never called (see the module docstring); these sizes only satisfy the constructor.
    transform_args = {"min_size": 32, "max_size": 4096, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}
    if family == "retinanet":
        scale = anchor_scale or 4.0
        sizes = tuple(tuple(scale * s * 2 ** (octave / 3) for octave in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        return RetinaNet(placeholder, num_classes, anchor_generator=anchors, score_thresh=score_threshold,
                         nms_thresh=nms_threshold, detections_per_img=detections, **transform_args)
    if family == "fcos":
        scale = anchor_scale or 1.0
        anchors = AnchorGenerator(tuple((scale * s,) for s in strides), ((1.0,),) * len(strides))
        return FCOS(placeholder, num_classes, anchor_generator=anchors, score_thresh=score_threshold,
                    nms_thresh=nms_threshold, detections_per_img=detections, **transform_args)
    scale = anchor_scale or 8.0
    anchors = AnchorGenerator(tuple((scale * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    # RoI pooling reads the FPN levels, not the RPN-only pooled level (torchvision's choice).
    pool = MultiScaleRoIAlign(fpn.level_names[:-1], output_size=7, sampling_ratio=2)
    representation = 4 * channels
    return FasterRCNN(placeholder, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      box_head=TwoMLPHead(channels * 49, representation),
                      box_predictor=FastRCNNPredictor(representation, num_classes + 1), box_score_thresh=score_threshold,
                      box_nms_thresh=nms_threshold, box_detections_per_img=detections, **transform_args)


def is_detection_model(model: nn.Module) -> bool:
    """True for the detectors of this module (a padded detections tensor and losses by part)."""
    return bool(getattr(model, "is_detection_model", False))


# -- timm registration ------------------------------------------------------------------------------

_CLASSIFIERS = {
    "retinanet": "detector.head.classification_head.cls_logits",
    "fcos": "detector.head.classification_head.cls_logits",
    "fasterrcnn": "detector.roi_heads.box_predictor.cls_score",
}


def _cfg(family: str) -> dict[str, Any]:
    """Defaults only: no weights; input size and normalisation are replaced by the backbone's."""
    return {
        "num_classes": 3, "input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "body.conv1", "classifier": _CLASSIFIERS[family], "fixed_input_size": False,
    }


default_cfgs = generate_default_cfgs({
    **{family: _cfg(family) for family in FAMILIES},
    **{f"{family}_{backbone}": _cfg(family) for family in FAMILIES for backbone in BACKBONE_VARIANTS},
})


def _create(family: str, variant: str, pretrained: bool, kwargs: dict[str, Any]) -> TimmDetector:
    if kwargs.setdefault("family", family) not in FAMILIES:
        raise ModelError(f"family = {kwargs['family']!r} is invalid: expected one of {', '.join(FAMILIES)}")
    if kwargs["family"] != family:
        raise ModelError(f"{variant} is a {family} detector, not {kwargs['family']}; use the {kwargs['family']}_* names")
    return create_on_backbone(TimmDetector, variant, pretrained, DEFAULT_BACKBONE, "body", kwargs)


def _register(family: str, backbone: str | None) -> None:
    variant = family if backbone is None else f"{family}_{backbone}"

    def create(pretrained: bool = False, **kwargs: Any) -> TimmDetector:
        if backbone is not None and kwargs.setdefault("backbone", backbone) != backbone:
            raise ModelError(f"{variant} has the backbone {backbone}, not {kwargs['backbone']}; use {family} with backbone=...")
        return _create(family, variant, pretrained, kwargs)

    create.__name__ = variant
    create.__qualname__ = variant
    create.__module__ = __name__
    create.__doc__ = f"{family} on an FPN over the timm backbone {backbone or 'named by `backbone`'} (hf_freqkd.models.detection)."
    register_model(create)


for _family in FAMILIES:
    _register(_family, None)
    for _backbone in BACKBONE_VARIANTS:
        _register(_family, _backbone)
