"""Logits and named intermediate features from one forward pass.

Layer names are module names (``layer2``, ``blocks.3``, ``stages.1``). For timm models the
default layers are the stage outputs of timm's ``feature_info``; for transformers models the
names ``hidden_states.<i>`` read the model's own ``output_hidden_states``. Other names are
captured with forward hooks, so the features always come from the same pass as the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..methods.base import ModelOutputs
from .loading import is_transformers_model

HIDDEN_STATES = "hidden_states."


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

    def __init__(self, model: nn.Module, layers: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.is_transformers = is_transformers_model(model)
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
        self._captured = {}
        return ModelOutputs(logits=logits, features=features)


class FrozenTeacher(FeatureExtractor):
    """A teacher that never trains: no gradients, eval mode whatever ``.train()`` is called with."""

    def __init__(self, model: nn.Module, layers: Sequence[str] = ()):
        super().__init__(model, layers)
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # The teacher's BatchNorm statistics and dropout must not follow the student's mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> ModelOutputs:
        return super().forward(pixel_values)
