"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2),
in the form used by the CRD code base (RepDistiller) and mdistiller for the CIFAR-100 KD tables.

A 3x3 stem at full resolution, three stages of basic blocks with strides 1, 2, 2 and
(depth - 2) / 6 blocks each, global average pooling. Unlike the paper's option A (zero-padded
identity), shortcuts that change shape are 1x1 conv + BN projections, as in CRD. The "x4" nets
widen the stem to 32 and the stages to 64/128/256.

Parameter names follow CRD's ``models/resnet.py`` (``layer1.0.conv1``, ``downsample.0``, ``fc``) so
its teacher checkpoints load unchanged. ``feature_info`` taps each stage output (after the ReLU).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from ._base import CifarNet, build_cifar_model, cifar_cfg


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(x + shortcut)


class CifarResNet(CifarNet):
    """``channels`` = (stem, stage1, stage2, stage3) widths."""

    def __init__(self, depth: int, channels: Sequence[int] = (16, 16, 32, 64), in_chans: int = 3,
                 num_classes: int = 100, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n + 2"
        n = (depth - 2) // 6
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = []
        prev, reduction = channels[0], 1
        for i, chs in enumerate(channels[1:]):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = [BasicBlock(prev if j == 0 else chs, chs, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"layer{i + 1}"))
            prev = chs
        self.num_features = prev
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


default_cfgs = generate_default_cfgs({
    **{
        name: cifar_cfg("conv1", "fc", (8, 8))
        for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                     "resnet8x4", "resnet32x4")
    },
    "cifar_resnet50": cifar_cfg("conv1", "linear", (4, 4)),
})

_X4 = (32, 64, 128, 256)


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> CifarResNet:
    return build_cifar_model(CifarResNet, variant, pretrained, num_taps=3, **dict(model_args, **kwargs))


@register_model
def resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet8", pretrained, dict(depth=8), **kwargs)


@register_model
def resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet14", pretrained, dict(depth=14), **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet20", pretrained, dict(depth=20), **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet32", pretrained, dict(depth=32), **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet44", pretrained, dict(depth=44), **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet56", pretrained, dict(depth=56), **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet110", pretrained, dict(depth=110), **kwargs)


@register_model
def resnet8x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet8x4", pretrained, dict(depth=8, channels=_X4), **kwargs)


@register_model
def resnet32x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create("resnet32x4", pretrained, dict(depth=32, channels=_X4), **kwargs)


# ----------------------------------------------------------------------------------------------
# The bottleneck ResNet50 of CRD's ``models/resnetv2.py``: the ImageNet ResNet-50 layout with a
# 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep their resolution into layer1. It is the
# teacher of the "ResNet50 -> MobileNetV2" pair of the CIFAR-100 tables (23.7 M parameters).


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1):
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


class CifarBottleneckResNet(CifarNet):
    """``blocks`` per stage at widths 64/128/256/512 (x4 outputs), strides 1, 2, 2, 2."""

    classifier_name = "linear"

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), in_chans: int = 3, num_classes: int = 100,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = []
        prev, reduction = 64, 1
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            layer = [Bottleneck(prev if j == 0 else planes * 4, planes, stride if j == 0 else 1) for j in range(count)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            prev = planes * 4
            self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"layer{i + 1}"))
        self.num_features = prev
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs) -> CifarBottleneckResNet:
    return build_cifar_model(CifarBottleneckResNet, "cifar_resnet50", pretrained, num_taps=4, **kwargs)
