"""Logits and named intermediate features from one forward pass.

Layer names are module names (``layer2``, ``blocks.3``, ``stages.1``). For timm models the
default layers are the stage outputs of timm's ``feature_info``; for transformers models the
names ``hidden_states.<i>`` read the model's own ``output_hidden_states``. Other names are
captured with forward hooks, so the features always come from the same pass as the logits.

Feature methods work on maps ``(B, C, H, W)``. ViT-family token features ``(B, N, C)`` are turned
into maps by dropping the class and register tokens and laying the patch tokens on their grid;
SAM-style blocks that keep ``(B, H, W, C)`` are permuted. :class:`BackboneInfo` records what that
takes (prefix tokens, patch size, layout) for each model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..methods.base import ModelOutputs
from .loading import is_transformers_model

HIDDEN_STATES = "hidden_states."


@dataclass(frozen=True)
class BackboneInfo:
    """What feature methods need to know about a network, read from the model itself."""

    #: default feature layers: timm ``feature_info`` stages or transformers ``hidden_states.<i>``
    stage_layers: tuple[str, ...]
    #: class + register tokens ahead of the patch tokens in token features (0 for CNNs)
    num_prefix_tokens: int = 0
    #: patch size of a ViT (token grid = input size / patch size); None for CNNs
    patch_size: tuple[int, int] | None = None
    #: "tokens" for (B, N, C) ViT features, "channels_last" for (B, H, W, C) blocks, "maps" for (B, C, H, W)
    layout: str = "maps"

    @classmethod
    def of(cls, model: nn.Module) -> "BackboneInfo":
        stages = tuple(default_feature_layers(model))
        backbone = getattr(model, "feature_backbone", None)
        if isinstance(backbone, str):
            # A segmentation network (hf_freqkd.models.segmentation): its stages are its backbone's,
            # in the backbone's layout; its feature_info already names them "<backbone>.<stage>".
            return dataclasses.replace(cls.of(model.get_submodule(backbone)), stage_layers=stages)
        if is_transformers_model(model):
            config = model.config
            patch = getattr(config, "patch_size", None)
            if patch is None:
                return cls(stages)
            prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
            if type(model).__name__.startswith(("Swin", "ConvNext", "ResNet")):
                return cls(stages)
            patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
            return cls(stages, num_prefix_tokens=prefix, patch_size=patch, layout="tokens")
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is None or not hasattr(patch_embed, "patch_size"):
            return cls(stages)
        patch = tuple(patch_embed.patch_size)
        # timm's SAM image encoder keeps its blocks in (B, H, W, C); its ViTs use (B, N, C) tokens.
        layout = "channels_last" if type(model).__name__ == "VisionTransformerSAM" else "tokens"
        return cls(stages, num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)), patch_size=patch, layout=layout)

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
            raise ValueError(
                f"cannot lay {patches.shape[1]} patch tokens on a {grid_h}x{grid_w} grid "
                f"(input {input_size}, patch {self.patch_size}, {self.num_prefix_tokens} prefix tokens dropped)"
            )
        return patches.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], grid_h, grid_w)


def default_feature_layers(model: nn.Module) -> list[str]:
    """The stage outputs timm's feature API knows, or every transformers hidden state."""
    if is_transformers_model(model):
        depth = getattr(model.config, "num_hidden_layers", None)
        if depth is None:
            depth = len(getattr(model.config, "depths", [])) or 0
        return [f"{HIDDEN_STATES}{i}" for i in range(1, depth + 1)]
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    entries = info.get_dicts() if hasattr(info, "get_dicts") else info
    return [entry["module"] for entry in entries if entry.get("module")]


class FeatureExtractor(nn.Module):
    """Wrap a classifier so that ``forward(pixel_values)`` returns :class:`ModelOutputs`."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), as_maps: bool = True):
        super().__init__()
        self.model = model
        self.is_transformers = is_transformers_model(model)
        self.info = BackboneInfo.of(model)
        #: return every feature as a (B, C, H, W) map (see BackboneInfo.to_map)
        self.as_maps = as_maps
        self.layers = tuple(dict.fromkeys(layers))
        self._captured: dict[str, torch.Tensor] = {}
        self._hooks = []
        known = dict(model.named_modules())
        for name in self.layers:
            if self.is_transformers and name.startswith(HIDDEN_STATES):
                self._check_hidden_state_index(name)
                continue
            if name not in known:
                raise ValueError(
                    f"layer '{name}' does not exist in {type(model).__name__}; "
                    f"stage layers: {', '.join(default_feature_layers(model)) or 'none'}; "
                    f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
                )
            self._hooks.append(known[name].register_forward_hook(self._capture_hook(name)))

    def _check_hidden_state_index(self, name: str) -> None:
        index = name[len(HIDDEN_STATES):]
        depth = len(default_feature_layers(self.model))
        if not index.isdigit() or int(index) > depth:
            raise ValueError(f"layer '{name}' does not exist: {type(self.model).__name__} has hidden_states.0 .. hidden_states.{depth}")

    def _capture_hook(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            # transformers layers return tuples, whole sub-models a ModelOutput; the hidden state comes first.
            if isinstance(output, ModelOutput):
                output = output.to_tuple()
            self._captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def forward(self, pixel_values: torch.Tensor) -> ModelOutputs:
        self._captured = {}
        if self.is_transformers:
            wants_hidden = any(name.startswith(HIDDEN_STATES) for name in self.layers)
            output = self.model(pixel_values=pixel_values, output_hidden_states=wants_hidden)
            logits = output.logits
            if wants_hidden:
                for name in self.layers:
                    if name.startswith(HIDDEN_STATES):
                        self._captured[name] = output.hidden_states[int(name[len(HIDDEN_STATES):])]
        else:
            logits = self.model(pixel_values)
        features = {name: self._captured[name] for name in self.layers}
        if self.as_maps:
            size = tuple(pixel_values.shape[-2:])
            features = {name: self.info.to_map(value, size) for name, value in features.items()}
        self._captured = {}
        return ModelOutputs(logits=logits, features=features)


class FrozenTeacher(FeatureExtractor):
    """A teacher that never trains: no gradients, eval mode whatever ``.train()`` is called with."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), as_maps: bool = True):
        super().__init__(model, layers, as_maps)
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # The teacher's BatchNorm statistics and dropout must not follow the student's mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> ModelOutputs:
        return super().forward(pixel_values)
