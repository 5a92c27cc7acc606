"""MobileNetV2 (Sandler et al., CVPR 2018) in the CIFAR form of "Knowledge Distillation via Route
Constrained Optimization" (Jin et al., ICCV 2019) that the CRD code base calls ``mobile_half``:
width multiplier 0.5, expansion 6, the MobileNetV2 student of the CIFAR-100 KD tables.

Differences from the ImageNet net, kept because the published numbers come from them: ReLU instead
of ReLU6; every inverted residual (also the t=1 one) has its 1x1 expansion conv; the stride-2 stem
and the stride schedule give a 2x2 map at 32x32; the 1x1 head conv keeps 1280 channels at width 0.5.

Parameter names follow CRD's ``models/mobilenetv2.py`` (``conv1.0``, ``blocks.3.1.conv.6``,
``conv2.0``) except the classifier, a bare ``classifier`` Linear here (``classifier.0`` in CRD;
``checkpoint_filter_fn`` renames it when timm loads a CRD file). ``feature_info`` taps the last
block of each resolution (``blocks.1``, ``.2``, ``.4``, ``.6``), CRD's feature points.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from ._base import CifarNet, build_cifar_model, cifar_cfg

# (expansion, channels, blocks, first stride) at width 1; None means the model's expand_ratio.
_SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
             (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
_TAPS = (1, 2, 4, 6)


def _conv_bn_act(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list:
    return [nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int):
        super().__init__()
        mid = in_chs * expand_ratio
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            *_conv_bn_act(in_chs, mid, 1),
            *_conv_bn_act(mid, mid, 3, stride, groups=mid),
            nn.Conv2d(mid, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs),  # linear bottleneck
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(CifarNet):
    classifier_name = "classifier"

    def __init__(self, width_mult: float = 0.5, expand_ratio: int = 6, in_chans: int = 3, num_classes: int = 100,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.in_chans = in_chans
        prev = int(32 * width_mult)
        self.conv1 = nn.Sequential(*_conv_bn_act(in_chans, prev, 3, stride=2))
        self.feature_info = []
        blocks, reduction = [], 2
        for i, (t, c, n, s) in enumerate(_SETTINGS):
            chs, t = int(c * width_mult), t or expand_ratio
            blocks.append(nn.Sequential(*[
                InvertedResidual(prev if j == 0 else chs, chs, s if j == 0 else 1, t) for j in range(n)]))
            prev, reduction = chs, reduction * s
            if i in _TAPS:
                self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"blocks.{i}"))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn_act(prev, self.num_features, 1))
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.blocks(self.conv1(x)))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Accept CRD's ``classifier.0.*`` keys."""
    return {k.replace("classifier.0.", "classifier.", 1) if k.startswith("classifier.0.") else k: v
            for k, v in state_dict.items()}


default_cfgs = generate_default_cfgs({"cifar_mobilenetv2": cifar_cfg("conv1.0", "classifier", (2, 2))})


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs) -> CifarMobileNetV2:
    """CRD's ``mobile_half``: width 0.5, expansion 6."""
    # Stage taps sit inside ``blocks``: FeatureListNet must flatten one Sequential level to reach them.
    return build_cifar_model(CifarMobileNetV2, "cifar_mobilenetv2", pretrained, num_taps=len(_TAPS),
                             flatten_sequential=True, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
