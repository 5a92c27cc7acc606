"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) as used by the CRD
code base (RepDistiller) and mdistiller: WRN-depth-width for 32x32 inputs, no dropout.

Pre-activation basic blocks, (depth - 4) / 6 per stage, stage widths 16k/32k/64k after a 16-channel
3x3 stem, a final BN-ReLU before pooling. Where a block changes shape its 1x1 projection shortcut
reads the *activated* input, as in the original code.

Parameter names follow CRD's ``models/wrn.py`` (``block1.layer.0.convShortcut``, final ``bn1``,
``fc``) so its teacher checkpoints load unchanged. Being pre-activation, the stage outputs tapped
by ``feature_info`` (``block1..3``) are the raw residual sums, as in CRD and timm's ResNetV2;
``forward_features`` additionally applies the final BN-ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from ._base import CifarNet, build_cifar_model, cifar_cfg


class WideBasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.convShortcut = None if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + shortcut


class WideStage(nn.Module):
    """Blocks live under ``.layer`` only so that parameter names match CRD's ``NetworkBlock``."""

    def __init__(self, in_chs: int, out_chs: int, num_blocks: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1) for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class CifarWideResNet(CifarNet):
    def __init__(self, depth: int, width: int, in_chans: int = 3, num_classes: int = 100,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n + 4"
        num_blocks = (depth - 4) // 6
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.feature_info = []
        prev, reduction = 16, 1
        for i, chs in enumerate((16 * width, 32 * width, 64 * width)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            self.add_module(f"block{i + 1}", WideStage(prev, chs, num_blocks, stride))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"block{i + 1}"))
            prev = chs
        self.bn1 = nn.BatchNorm2d(prev)
        self.act = nn.ReLU(inplace=True)
        self.num_features = prev
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.act(self.bn1(x))


default_cfgs = generate_default_cfgs({
    name: cifar_cfg("conv1", "fc", (8, 8)) for name in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")
})


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> CifarWideResNet:
    return build_cifar_model(CifarWideResNet, variant, pretrained, num_taps=3, **dict(model_args, **kwargs))


@register_model
def wrn_16_1(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    return _create("wrn_16_1", pretrained, dict(depth=16, width=1), **kwargs)


@register_model
def wrn_16_2(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    return _create("wrn_16_2", pretrained, dict(depth=16, width=2), **kwargs)


@register_model
def wrn_40_1(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    return _create("wrn_40_1", pretrained, dict(depth=40, width=1), **kwargs)


@register_model
def wrn_40_2(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    return _create("wrn_40_2", pretrained, dict(depth=40, width=2), **kwargs)
