"""The types methods and models exchange, in one module that imports neither.

``hf_freqkd.methods`` reads what ``hf_freqkd.models`` produces (logits and named features, what a
backbone looks like) and tells it which features to capture; both import these types from here, so
neither package has to import the other to describe them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ModelError


@dataclass
class LogitsAndFeatures:
    """What one forward pass of a student or teacher produces: its logits and the named intermediate
    features a method asked for (``(B, C, H, W)`` maps; see :class:`BackboneInfo`).

    For a detector (:mod:`hf_freqkd.models.detection`) ``logits`` are its detections in eval mode
    (``(B, N, 6)``: box, score, class) and None in training, where ``losses`` holds its own losses.

    Not to be confused with ``transformers.utils.ModelOutput``, the output of a transformers model.
    """

    logits: torch.Tensor | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the losses a network computes itself from the labels in its forward, by part (detectors:
    #: classification, box regression, ...); None for networks whose loss a method computes from logits
    losses: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class FeatureRequest:
    """Names of the intermediate features a method reads from student and teacher."""

    student: tuple[str, ...] = ()
    teacher: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackboneInfo:
    """What feature methods need to know about a network, read from the model itself by
    :func:`hf_freqkd.models.features.backbone_info`."""

    #: default feature layers: timm ``feature_info`` stages or transformers ``hidden_states.<i>``
    stage_layers: tuple[str, ...]
    #: class + register tokens ahead of the patch tokens in token features (0 for CNNs)
    num_prefix_tokens: int = 0
    #: patch size of a ViT (token grid = input size / patch size); None for CNNs
    patch_size: tuple[int, int] | None = None
    #: "tokens" for (B, N, C) ViT features, "channels_last" for (B, H, W, C) blocks, "maps" for (B, C, H, W)
    layout: str = "maps"

    def to_map(self, feature: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """``feature`` as a ``(B, C, H, W)`` map; ``input_size`` is the image's (H, W)."""
        if self.layout == "maps" or feature.dim() == 4 and self.layout == "tokens":
            return feature
        if self.layout == "channels_last":
            return feature.permute(0, 3, 1, 2) if feature.dim() == 4 else feature
        if feature.dim() != 3:
            return feature
        grid_h, grid_w = input_size[0] // self.patch_size[0], input_size[1] // self.patch_size[1]
        patches = feature[:, self.num_prefix_tokens:, :]
        if patches.shape[1] != grid_h * grid_w:
            raise ModelError(
                f"cannot lay {patches.shape[1]} patch tokens on a {grid_h}x{grid_w} grid "
                f"(input {input_size}, patch {self.patch_size}, {self.num_prefix_tokens} prefix tokens dropped)"
            )
        return patches.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], grid_h, grid_w)
