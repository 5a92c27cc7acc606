"""What every model of the CIFAR zoo shares: the CIFAR-100 pretrained_cfg, the timm classifier
interface (pooling + linear head) and the builder that goes through timm's ``build_model_with_cfg``.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CRD_PAPER = "Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020)"
CRD_CODE = "https://github.com/HobbitLong/RepDistiller"


def cifar_cfg(first_conv: str, classifier: str, pool_size: Tuple[int, int], **kwargs: Any) -> Dict[str, Any]:
    """pretrained_cfg of a 32x32 CIFAR-100 model; no ``url``: no weights are published with timm."""
    return {
        "num_classes": 100, "input_size": (3, 32, 32), "pool_size": pool_size,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR100_MEAN, "std": CIFAR100_STD,
        "first_conv": first_conv, "classifier": classifier,
        "paper_name": CRD_PAPER, "paper_ids": "arXiv:1910.10699", "origin_url": CRD_CODE,
        **kwargs,
    }


def build_cifar_model(model_cls, variant: str, pretrained: bool, num_taps: int, flatten_sequential: bool = False,
                      **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` with a feature_cfg covering all ``num_taps`` stage outputs.

    timm's default ``out_indices`` is (0..4), which fails for the three-stage CIFAR nets.
    """
    for key in ("drop_path_rate", "drop_block_rate"):
        if kwargs.pop(key, None):
            warnings.warn(f"{variant} has no stochastic depth / DropBlock; {key} is ignored", stacklevel=2)
    # These nets are small: building on the CPU and moving them is simpler than threading factory kwargs.
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    feature_cfg = dict(out_indices=tuple(range(num_taps)), flatten_sequential=flatten_sequential)
    model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _store_output(store: Dict[str, torch.Tensor], name: str, module: nn.Module, args: Any, output: torch.Tensor):
    store[name] = output


class CifarNet(nn.Module):
    """timm model interface on top of a body that subclasses build in ``__init__``.

    A subclass registers its body modules in execution order (timm's ``FeatureListNet`` replays the
    top-level children in that order), sets ``in_chans``, ``feature_info`` and ``num_features``, then
    calls ``_init_head``. ``classifier_name`` is the attribute name of the final Linear in the CRD code,
    kept so that CRD / mdistiller checkpoints load without renaming.
    """

    classifier_name = "fc"

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = None
        self.reset_classifier(num_classes, global_pool)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init (fan_out) as in the CRD code; BatchNorm and Linear keep PyTorch's defaults.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return self.classifier_name if name_only else getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.global_pool, fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        setattr(self, self.classifier_name, fc)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (``feature_info`` order) and the final feature map from a single pass.

        ``norm`` and ``stop_early`` are accepted for API compatibility; the whole body always runs.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        names = [self.feature_info[i]["module"] for i in take_indices]
        taps: Dict[str, torch.Tensor] = {}
        # Hooks on the feature_info modules keep a single definition of the forward pass per model.
        handles = [self.get_submodule(n).register_forward_hook(partial(_store_output, taps, n)) for n in set(names)]
        try:
            x = self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        intermediates = [taps[n] for n in names]
        return intermediates if intermediates_only else (x, intermediates)
