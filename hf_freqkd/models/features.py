"""Logits and named intermediate features from one forward pass.

Layer names are module names (``layer2``, ``blocks.3``, ``stages.1``). For timm models the
default layers are the stage outputs of timm's ``feature_info``; for transformers models the
names ``hidden_states.<i>`` read the model's own ``output_hidden_states``. Other names are
captured with forward hooks, so the features always come from the same pass as the logits.

Feature methods work on maps ``(B, C, H, W)``. ViT-family token features ``(B, N, C)`` are turned
into maps by dropping the class and register tokens and laying the patch tokens on their grid;
SAM-style blocks that keep ``(B, H, W, C)`` are permuted. :class:`BackboneInfo` records what that
takes (prefix tokens, patch size, layout) for each model; :func:`backbone_info` reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..errors import ModelError
from ..types import BackboneInfo, LogitsAndFeatures
from .loading import is_transformers_model
from .transformers_detection import is_unwrapped_transformers_detector

HIDDEN_STATES = "hidden_states."


def backbone_info(model: nn.Module) -> BackboneInfo:
    """What feature methods need to know about ``model`` (stage layers, token layout), read from it."""
    if is_unwrapped_transformers_detector(model):
        raise ModelError(
            f"{type(model).__name__} is a transformers object detector: wrap it as TransformersDetector(model) "
            "(hf_freqkd.models.transformers_detection; load_model does) to give it losses by part, detections and pyramid features"
        )
    stages = tuple(default_feature_layers(model))
    backbone = getattr(model, "feature_backbone", None)
    if isinstance(backbone, str):
        # A segmentation network (hf_freqkd.models.segmentation): its stages are its backbone's,
        # in the backbone's layout; its feature_info already names them "<backbone>.<stage>".
        return dataclasses.replace(backbone_info(model.get_submodule(backbone)), stage_layers=stages)
    if is_transformers_model(model):
        config = model.config
        patch = getattr(config, "patch_size", None)
        if patch is None:
            return BackboneInfo(stages)
        prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        if type(model).__name__.startswith(("Swin", "ConvNext", "ResNet")):
            return BackboneInfo(stages)
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        return BackboneInfo(stages, num_prefix_tokens=prefix, patch_size=patch, layout="tokens")
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "patch_size"):
        return BackboneInfo(stages)
    patch = tuple(patch_embed.patch_size)
    # timm's SAM image encoder keeps its blocks in (B, H, W, C); its ViTs use (B, N, C) tokens.
    layout = "channels_last" if type(model).__name__ == "VisionTransformerSAM" else "tokens"
    return BackboneInfo(stages, num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)), patch_size=patch, layout=layout)


def default_feature_layers(model: nn.Module) -> list[str]:
    """The stage outputs timm's feature API knows (a detector's pyramid levels), or every transformers hidden state."""
    if is_transformers_model(model) and not getattr(model, "is_detection_model", False):
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
    """Wrap a classifier so that ``forward(pixel_values)`` returns :class:`LogitsAndFeatures`."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = (), as_maps: bool = True, predictions: bool = True):
        super().__init__()
        self.model = model
        #: False: a detector stops after the layers the features come from (no head, no NMS); its
        #: ``logits`` are then None. Classifiers always compute their logits.
        self.predictions = predictions
        # A transformers detector (TransformersDetector) is read through its own forward, not hidden_states.<i>.
        self.is_transformers = is_transformers_model(model) and not getattr(model, "is_detection_model", False)
        self.info = backbone_info(model)
        #: return every feature as a (B, C, H, W) map (see BackboneInfo.to_map)
        self.as_maps = as_maps
        self.layers = tuple(dict.fromkeys(layers))
        self._captured: dict[str, torch.Tensor] = {}
        # True during forward: activation checkpointing runs the hooked blocks again in the backward
        # pass, and those recomputed outputs must not be kept until the next forward.
        self._capturing = False
        self._hooks = []
        known = dict(model.named_modules())
        for name in self.layers:
            if self.is_transformers and name.startswith(HIDDEN_STATES):
                self._check_hidden_state_index(name)
                continue
            if name not in known:
                raise ModelError(
                    f"layer '{name}' does not exist in {type(model).__name__}; "
                    f"stage layers: {', '.join(default_feature_layers(model)) or 'none'}; "
                    f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
                )
            self._hooks.append(known[name].register_forward_hook(self._capture_hook(name)))

    def block_classes(self) -> list[str]:
        """Class names of the model's repeated blocks: transformers' ``_no_split_modules``, else the classes
        of the stage modules of timm's ``feature_info`` (a ViT's blocks, a ConvNeXt's stages). FSDP
        shards these one by one (see :attr:`hf_freqkd.distiller.Distiller._no_split_modules`)."""
        names = list(getattr(self.model, "_no_split_modules", None) or [])
        if names:
            return names
        plain = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity)
        modules = dict(self.model.named_modules())
        stages = [modules[name] for name in self.info.stage_layers if name in modules]
        return list(dict.fromkeys(type(stage).__name__ for stage in stages if not isinstance(stage, plain)))

    def _check_hidden_state_index(self, name: str) -> None:
        index = name[len(HIDDEN_STATES):]
        depth = len(default_feature_layers(self.model))
        if not index.isdigit() or int(index) > depth:
            raise ModelError(f"layer '{name}' does not exist: {type(self.model).__name__} has hidden_states.0 .. hidden_states.{depth}")

    def remove_hooks(self) -> None:
        """Detach the feature hooks, giving the wrapped model back unchanged (for a one-off probe)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _capture_hook(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if not self._capturing:
                return
            # transformers layers return tuples, whole sub-models a ModelOutput; the hidden state comes first.
            if isinstance(output, ModelOutput):
                output = output.to_tuple()
            self._captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> LogitsAndFeatures:
        """Logits and features; ``labels`` reach only networks that compute their own losses (detectors)."""
        self._captured = {}
        self._capturing = True
        try:
            return self._forward(pixel_values, labels)
        finally:
            self._capturing = False
            self._captured = {}

    def _forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None) -> LogitsAndFeatures:
        losses = None
        if getattr(self.model, "is_detection_model", False):
            # A detector's losses need the boxes, and come from the same forward as the features.
            output = self.model(pixel_values, labels) if self.predictions else self.model(pixel_values, labels, predict=False)
            logits, losses = output.detections, output.losses
        elif self.is_transformers:
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
        return LogitsAndFeatures(logits=logits, features=features, losses=losses)


class FrozenTeacher(FeatureExtractor):
    """A teacher that never trains: its parameters are frozen and it stays in eval mode whatever
    ``.train()`` is called with, so its BatchNorm statistics and dropout never follow the student's mode.

    Its forward runs without autograd. ``pass_gradients=True`` keeps autograd on through the
    teacher's activations (its parameters stay frozen), for something trainable that feeds or hooks
    into it: FreeKD's frequency prompts (:mod:`hf_freqkd.prompt_fitting`).
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[str] = (), as_maps: bool = True, pass_gradients: bool = False, predictions: bool = True
    ):
        super().__init__(model, layers, as_maps, predictions)
        self.pass_gradients = pass_gradients
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> LogitsAndFeatures:
        with torch.set_grad_enabled(self.pass_gradients and torch.is_grad_enabled()):
            return super().forward(pixel_values, labels)
