"""Semantic segmentation networks: a timm backbone + a light FPN head, registered in timm.

``segfpn`` takes any timm backbone with ``forward_intermediates`` (CNNs, the CIFAR zoo, ViTs) by
name; the ``segfpn_<backbone>`` variants fix it, so a YAML config (and an exported folder) names
the whole network with one string::

    timm.create_model("segfpn_resnet18", num_classes=150)
    timm.create_model("segfpn", backbone="convnext_tiny", num_classes=150, head_channels=128)

The head (FPN-lite): a 1x1 conv maps each chosen backbone stage to ``head_channels``; going from
the deepest stage up, each map is upsampled (bilinear) and added to the next shallower one; a 3x3
conv + BN + ReLU and a 1x1 classifier give logits at the shallowest stage's resolution, upsampled
to the input size: the output is ``(B, num_classes, H, W)``.

Distillation sees the backbone: ``feature_info`` lists the chosen stages under their module names
in this network (``backbone.layer3``), so feature methods (``freekd``) find and hook them.

Weights: ``pretrained=True`` loads the network's own weights when its pretrained_cfg has some (an
exported ``local-dir:`` folder, ``hf-hub:``); otherwise it loads the *backbone's* pretrained weights
(ImageNet for timm names) and leaves the head at random - the usual start of segmentation training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import generate_default_cfgs, register_model

from .backbone_networks import ModelError, create_on_backbone

#: variants registered as ``segfpn_<backbone>``: the CIFAR zoo's ResNets and timm's ImageNet ResNets
BACKBONE_VARIANTS = ("resnet8", "resnet20", "resnet8x4", "resnet32x4", "resnet18", "resnet34", "resnet50")
DEFAULT_BACKBONE = "resnet8"


class FPNSegmenter(nn.Module):
    """A timm backbone's stages fused by a light FPN head into per-pixel class scores.

    Args:
        backbone (`str`): timm model name of the backbone (with ``forward_intermediates``).
        num_classes (`int`): output classes, background included.
        in_chans (`int`): input channels.
        head_channels (`int`): width of the head.
        out_indices (`list[int]`, *optional*): backbone ``feature_info`` stages fused by the head;
            the last four (or all, if fewer) by default.
        drop_rate (`float`): dropout before the classifier.
        backbone_args (`dict`, *optional*): extra ``create_model`` arguments of the backbone
            (e.g. ``{img_size: 64}`` for a ViT).
        backbone_pretrained (`bool`): load the backbone's pretrained weights (set by the
            ``pretrained`` flag of ``create_model``, see the module docstring).
    """

    #: feature methods read this network's stages from the backbone (see hf_freqkd.models.features.backbone_info)
    feature_backbone = "backbone"
    is_segmentation_model = True

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 150,
        in_chans: int = 3,
        head_channels: int = 64,
        out_indices: Sequence[int] | None = None,
        drop_rate: float = 0.0,
        backbone_args: dict[str, Any] | None = None,
        backbone_pretrained: bool = False,
    ):
        super().__init__()
        import timm

        if num_classes < 1:
            raise ModelError(f"num_classes = {num_classes} is invalid: a segmentation network needs at least one class")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = timm.create_model(
            backbone, pretrained=backbone_pretrained, num_classes=0, in_chans=in_chans, **dict(backbone_args or {})
        )
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ModelError(f"backbone '{backbone}' has no forward_intermediates in timm, so its stages cannot feed the head")
        stages = list(self.backbone.feature_info)
        if out_indices is None:
            out_indices = range(max(len(stages) - 4, 0), len(stages))
        self.out_indices = [int(i) % len(stages) for i in out_indices]
        if not self.out_indices or len(set(self.out_indices)) != len(self.out_indices):
            raise ModelError(f"out_indices = {list(out_indices)} is invalid: expected distinct stage indices of {len(stages)} stages")
        chosen = [stages[i] for i in self.out_indices]
        self.feature_info = [dict(info, module=f"{self.feature_backbone}.{info['module']}") for info in chosen]
        self.num_features = head_channels
        self.drop_rate = drop_rate
        self.decode_head = FPNLiteHead([info["num_chs"] for info in chosen], head_channels, num_classes, drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)
        return self.decode_head(features, x.shape[-2:])

    def get_classifier(self) -> nn.Module:
        return self.decode_head.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        old = self.decode_head.classifier
        self.decode_head.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)


class FPNLiteHead(nn.Module):
    """Top-down sum of 1x1-projected stages, one 3x3 conv block, a 1x1 classifier, upsampling."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(width, channels, 1) for width in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(drop_rate) if drop_rate else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], output_size: Sequence[int]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            x = F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False) + lateral(feature)
        logits = self.classifier(self.dropout(self.fuse(x)))
        return F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)


def is_segmentation_model(model: nn.Module) -> bool:
    """True for networks predicting a class per pixel at the input size (:class:`FPNSegmenter`).

    transformers ``*ForSemanticSegmentation`` models are refused with a ValueError: their logits
    come at a fraction of the input size, which the per-pixel loss and metrics do not handle yet.
    """
    name = type(model).__name__
    if name.endswith("ForSemanticSegmentation"):
        raise ModelError(
            f"{name}: transformers segmentation models are not supported yet (their logits are smaller than the input); "
            "use a segfpn network, e.g. segfpn_resnet18 (hf_freqkd.models.segmentation)"
        )
    return bool(getattr(model, "is_segmentation_model", False))


def _create_segfpn(variant: str, pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    return create_on_backbone(FPNSegmenter, variant, pretrained, DEFAULT_BACKBONE, FPNSegmenter.feature_backbone, kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Defaults only: no weights; input size and normalisation are replaced by the backbone's."""
    return {
        "num_classes": 150, "input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "backbone.conv1", "classifier": "decode_head.classifier", "fixed_input_size": False,
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"segfpn": _cfg(), **{f"segfpn_{name}": _cfg() for name in BACKBONE_VARIANTS}})


def _variant(backbone: str, pretrained: bool, kwargs: dict[str, Any]) -> FPNSegmenter:
    if kwargs.setdefault("backbone", backbone) != backbone:
        raise ModelError(f"segfpn_{backbone} has the backbone {backbone}, not {kwargs['backbone']}; use segfpn with backbone=...")
    return _create_segfpn(f"segfpn_{backbone}", pretrained, **kwargs)


@register_model
def segfpn(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on the timm backbone named by ``backbone`` (default resnet8)."""
    return _create_segfpn("segfpn", pretrained, **kwargs)


@register_model
def segfpn_resnet8(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on the CIFAR ResNet-8 (3 stages, 16/32/64 channels)."""
    return _variant("resnet8", pretrained, kwargs)


@register_model
def segfpn_resnet20(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on the CIFAR ResNet-20."""
    return _variant("resnet20", pretrained, kwargs)


@register_model
def segfpn_resnet8x4(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on the CIFAR ResNet-8x4."""
    return _variant("resnet8x4", pretrained, kwargs)


@register_model
def segfpn_resnet32x4(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on the CIFAR ResNet-32x4."""
    return _variant("resnet32x4", pretrained, kwargs)


@register_model
def segfpn_resnet18(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on timm's ResNet-18 (stages layer1..layer4)."""
    return _variant("resnet18", pretrained, kwargs)


@register_model
def segfpn_resnet34(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on timm's ResNet-34."""
    return _variant("resnet34", pretrained, kwargs)


@register_model
def segfpn_resnet50(pretrained: bool = False, **kwargs: Any) -> FPNSegmenter:
    """FPN-lite head on timm's ResNet-50."""
    return _variant("resnet50", pretrained, kwargs)
