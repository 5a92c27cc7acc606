"""VGG with batch norm for CIFAR (Simonyan & Zisserman, ICLR 2015), in the form of the CRD code
base (RepDistiller, after W. Yang's pytorch-classification) used for the CIFAR-100 KD tables
(``vgg8_bn``, ``vgg13_bn``): five groups of 3x3 conv-BN-ReLU, no hidden FC layers, global average
pooling and ``Linear(512, num_classes)``.

At 32x32 CRD max-pools only after the first three groups (its fourth pool is applied to 64x64
inputs only), so groups 4 and 5 both run at stride 8; this module fixes that CIFAR layout.
Names are ``cifar_vgg*`` because timm's ImageNet VGGs own ``vgg11``..``vgg19``.

Parameter names follow CRD's ``models/vgg.py`` (``block0.0``, ``classifier``) so its checkpoints
load unchanged; the convs keep their biases for the same reason. ``feature_info`` taps the
output of each group after its last ReLU.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from ._base import CifarNet, build_cifar_model, cifar_cfg

_WIDTHS = {
    "cifar_vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "cifar_vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "cifar_vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "cifar_vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "cifar_vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
_NUM_POOLS = 3  # max-pools after groups 0, 1, 2: 32 -> 4


class CifarVGG(CifarNet):
    classifier_name = "classifier"

    def __init__(self, widths: Sequence[Sequence[int]], in_chans: int = 3, num_classes: int = 100,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.in_chans = in_chans
        self.feature_info = []
        prev, reduction = in_chans, 1
        for i, group in enumerate(widths):
            layers = []
            for chs in group:
                layers += [nn.Conv2d(prev, chs, 3, padding=1), nn.BatchNorm2d(chs), nn.ReLU(inplace=True)]
                prev = chs
            self.add_module(f"block{i}", nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"block{i}"))
            if i < _NUM_POOLS:
                self.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
                reduction *= 2
        self.num_features = prev
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.feature_info)):
            x = getattr(self, f"block{i}")(x)
            if i < _NUM_POOLS:
                x = getattr(self, f"pool{i}")(x)
        return x


default_cfgs = generate_default_cfgs({name: cifar_cfg("block0.0", "classifier", (4, 4)) for name in _WIDTHS})


def _create(variant: str, pretrained: bool, **kwargs) -> CifarVGG:
    return build_cifar_model(CifarVGG, variant, pretrained, num_taps=5, **dict(dict(widths=_WIDTHS[variant]), **kwargs))


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs) -> CifarVGG:
    return _create("cifar_vgg8", pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs) -> CifarVGG:
    return _create("cifar_vgg11", pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs) -> CifarVGG:
    return _create("cifar_vgg13", pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs) -> CifarVGG:
    return _create("cifar_vgg16", pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs) -> CifarVGG:
    return _create("cifar_vgg19", pretrained, **kwargs)
