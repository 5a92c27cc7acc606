"""ShuffleNetV1 (Zhang et al., CVPR 2018) and ShuffleNetV2 (Ma et al., ECCV 2018) in the CIFAR form
of the CRD code base (RepDistiller, after kuangliu/pytorch-cifar): the students of the
CIFAR-100 KD tables.

Both start with a stride-1 1x1 conv to 24 channels and no max-pool, so the three stages run at
strides 2/4/8 and end on a 4x4 map at 32x32.

* V1: groups 3, stage widths 240/480/960 with 4/8/4 units. As in CRD (not the paper) a ReLU also
  follows the depthwise conv, and the very first 1x1 conv is ungrouped (24 input channels).
* V2 (net size 1): stage widths 116/232/464 with one downsampling unit plus 3/7/3 basic units, then
  a 1x1 conv to 1024 channels.

Parameter names follow CRD's ``ShuffleNetv1.py`` / ``ShuffleNetv2.py`` (``layer1.0.conv1``,
``linear``) so its checkpoints load unchanged. ``feature_info`` taps each stage output.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from timm.models import generate_default_cfgs, register_model

from ._base import CifarNet, build_cifar_model, cifar_cfg

STEM_CHS = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, group_first_conv: bool = True):
        super().__init__()
        self.stride = stride
        # A stride-2 unit concatenates its pooled input, so its branch only adds the missing channels.
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        mid = branch_chs // 4
        self.first_groups = groups if group_first_conv else 1
        self.conv1 = nn.Conv2d(in_chs, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_chs, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_chs)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.act(self.bn1(self.conv1(x))), self.first_groups)
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x
        return self.act(out)


class ShuffleV2Unit(nn.Module):
    """Stride 1: half of the channels pass through, the other half goes through the branch."""

    def __init__(self, chs: int):
        super().__init__()
        half = chs // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, x = x.chunk(2, dim=1)
        x = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        x = self.act(self.bn3(self.conv3(x)))
        return channel_shuffle(torch.cat([keep, x], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """Stride 2: both branches see the whole input and each produces half of the output channels."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        mid = out_chs // 2
        self.conv1 = nn.Conv2d(in_chs, in_chs, 3, 2, 1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv2 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.act(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.act(self.bn3(self.conv3(x)))))
        right = self.act(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class _CifarShuffleNet(CifarNet):
    classifier_name = "linear"

    def _init_stem(self, in_chans: int) -> None:
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, STEM_CHS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHS)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = []

    def _add_stage(self, i: int, chs: int, units: list) -> None:
        self.add_module(f"layer{i + 1}", nn.Sequential(*units))
        self.feature_info.append(dict(num_chs=chs, reduction=2 ** (i + 1), module=f"layer{i + 1}"))

    def _stages(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class CifarShuffleNetV1(_CifarShuffleNet):
    def __init__(self, out_chs: Sequence[int] = (240, 480, 960), num_units: Sequence[int] = (4, 8, 4),
                 groups: int = 3, in_chans: int = 3, num_classes: int = 100, global_pool: str = "avg",
                 drop_rate: float = 0.0):
        super().__init__()
        self._init_stem(in_chans)
        prev = STEM_CHS
        for i, (chs, n) in enumerate(zip(out_chs, num_units)):
            # As in the paper, the first pointwise conv is not grouped: the 24-channel stem is too narrow to split.
            units = [ShuffleV1Unit(prev, chs, 2, groups, group_first_conv=i > 0)]
            units += [ShuffleV1Unit(chs, chs, 1, groups) for _ in range(n - 1)]
            self._add_stage(i, chs, units)
            prev = chs
        self.num_features = prev
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages(x)


class CifarShuffleNetV2(_CifarShuffleNet):
    def __init__(self, out_chs: Sequence[int] = (116, 232, 464), num_units: Sequence[int] = (3, 7, 3),
                 head_chs: int = 1024, in_chans: int = 3, num_classes: int = 100, global_pool: str = "avg",
                 drop_rate: float = 0.0):
        super().__init__()
        self._init_stem(in_chans)
        prev = STEM_CHS
        for i, (chs, n) in enumerate(zip(out_chs, num_units)):
            self._add_stage(i, chs, [ShuffleV2DownUnit(prev, chs)] + [ShuffleV2Unit(chs) for _ in range(n)])
            prev = chs
        self.conv2 = nn.Conv2d(prev, head_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.num_features = head_chs
        self._init_head(num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self._stages(x))))


default_cfgs = generate_default_cfgs({
    "cifar_shufflenetv1": cifar_cfg("conv1", "linear", (4, 4)),
    "cifar_shufflenetv2": cifar_cfg("conv1", "linear", (4, 4)),
})


@register_model
def cifar_shufflenetv1(pretrained: bool = False, **kwargs) -> CifarShuffleNetV1:
    """CRD's ``ShuffleV1``: groups 3, 240/480/960."""
    return build_cifar_model(CifarShuffleNetV1, "cifar_shufflenetv1", pretrained, num_taps=3, **kwargs)


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs) -> CifarShuffleNetV2:
    """CRD's ``ShuffleV2``: net size 1, 116/232/464, 1024-channel head conv."""
    return build_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, num_taps=3, **kwargs)
