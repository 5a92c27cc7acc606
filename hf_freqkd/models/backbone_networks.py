"""Building a network registered in timm around a timm backbone (segmentation and detection networks).

A ``segfpn_*`` or ``retinanet_*`` network has no weights of its own unless it was exported: its
input size and normalisation are those of its backbone, whose pretrained weights expect them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from timm.models import build_model_with_cfg, resolve_pretrained_cfg


def _model_error() -> type[ValueError]:
    """hf_freqkd's ModelError (exit code 2 at its command line) inside hf_freqkd; a ValueError when this
    file travels inside an exported student (hf_freqkd.remote_code), so that loading an export never
    imports hf_freqkd, installed or not. By name: transformers checks an export's import statements."""
    if __name__.startswith("hf_freqkd."):
        from importlib import import_module

        return import_module("hf_freqkd.errors").ModelError
    return ValueError


ModelError = _model_error()

_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "state_dict")


def create_on_backbone(cls: type[nn.Module], variant: str, pretrained: bool, default_backbone: str, backbone_module: str, kwargs: dict[str, Any]) -> nn.Module:
    """``build_model_with_cfg`` for ``cls(backbone=..., backbone_pretrained=...)``.

    ``pretrained=True`` loads the network's own weights when its pretrained_cfg has some (an exported
    ``local-dir:`` folder, ``hf-hub:``); otherwise the *backbone's* pretrained weights, leaving the
    head at random. Without own weights, input size, normalisation and first conv come from the
    backbone's timm config (the first conv under ``backbone_module``).
    """
    import timm

    backbone = kwargs.setdefault("backbone", default_backbone)
    resolved = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).to_dict()
    own_weights = pretrained and any(resolved.get(key) for key in _WEIGHT_SOURCES)
    if not own_weights:
        source = timm.models.get_pretrained_cfg(backbone)
        if source is None:
            raise ModelError(f"backbone '{backbone}' is not a timm model name")
        overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
        for key in ("input_size", "mean", "std", "interpolation"):
            overlay.setdefault(key, getattr(source, key))
        if source.first_conv:
            overlay.setdefault("first_conv", f"{backbone_module}.{source.first_conv}")
        kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(cls, variant, own_weights, backbone_pretrained=pretrained and not own_weights, **kwargs)
