"""Activation (gradient) checkpointing of a student: recompute its blocks' activations in the backward
pass instead of keeping them, trading compute for memory.

Each library has its switch: timm models ``set_grad_checkpointing`` (ViT, DINOv2, SAM, ConvNeXt,
Swin, ResNet, ...), transformers models ``activation_checkpointing_enable`` (``gradient_checkpointing_enable``
before transformers 5). A segmentation network checkpoints its backbone, a transformers detector the
model it wraps. The CIFAR zoo has no switch (its networks are small enough not to need one).

Checkpointing is non-reentrant (``use_reentrant=False``): the forward runs with autograd on, so the
features the distillation methods read through forward hooks keep their gradient. A reentrant
checkpoint runs the forward without autograd, and a hooked feature inside it would silently give the
student no gradient from the feature term; it is refused.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, ModelError


def check_checkpointing_options(kwargs: dict[str, Any] | None, every_n_layers: int = 1, offload: bool = False, timm: bool = False) -> None:
    """Refuse options the distillation cannot honour (a reentrant checkpoint; for timm students any option).
    ``kwargs`` are ``activation_checkpointing_kwargs``, which may hold ``every_n_layers`` and ``offload``."""
    kwargs = dict(kwargs or {})
    every_n_layers = kwargs.pop("every_n_layers", every_n_layers)
    offload = kwargs.pop("offload", offload)
    if kwargs.get("use_reentrant", False):
        raise ConfigError(
            "activation_checkpointing_kwargs use_reentrant = true is not supported: a reentrant checkpoint runs the "
            "forward without autograd, so the features the methods hook would carry no gradient; leave it false"
        )
    if timm:
        options = [name for name in kwargs if name != "use_reentrant"]
        options += ["every_n_layers"] * (every_n_layers != 1) + ["offload"] * bool(offload)
        if options:
            raise ConfigError(
                f"activation_checkpointing_kwargs {', '.join(options)} apply to transformers students only: timm's "
                "set_grad_checkpointing checkpoints every block and takes no options; remove them"
            )


def checkpointed_module(model: nn.Module) -> nn.Module:
    """The module whose switch checkpoints ``model``: itself, a segmentation network's backbone, the
    transformers model a detector wraps. A ModelError names a model that has no switch."""
    from .loading import is_transformers_model

    if is_transformers_model(model) and getattr(model, "is_detection_model", False):
        return checkpointed_module(model.model)  # TransformersDetector
    if is_transformers_model(model):
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ModelError(f"the student {type(model).__name__} does not support activation checkpointing (transformers says so); unset gradient_checkpointing")
        return model
    if hasattr(model, "set_grad_checkpointing"):
        return model
    backbone = getattr(model, "feature_backbone", None)
    if isinstance(backbone, str) and hasattr(model.get_submodule(backbone), "set_grad_checkpointing"):
        return model.get_submodule(backbone)
    raise ModelError(
        f"the student {type(model).__name__} has no activation checkpointing (timm's set_grad_checkpointing or "
        "transformers' activation_checkpointing_enable); unset gradient_checkpointing, or distil into a timm or "
        "transformers network (ViT, DINOv2, ConvNeXt, ...)"
    )


def check_activation_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None = None) -> None:
    """Raise now (nothing changed) what :func:`enable_activation_checkpointing` would refuse at the start of training."""
    from .loading import is_transformers_model

    check_checkpointing_options(kwargs, timm=not is_transformers_model(checkpointed_module(model)))


def enable_activation_checkpointing(
    model: nn.Module, kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
) -> nn.Module:
    """Turn on ``model``'s activation checkpointing; return the module switched. Raises ConfigError /
    ModelError (nothing changed) when the model or the options do not allow it."""
    from .loading import is_transformers_model

    target = checkpointed_module(model)
    transformers = is_transformers_model(target)
    check_checkpointing_options(kwargs, every_n_layers, offload, timm=not transformers)
    if transformers:
        kwargs = {"use_reentrant": False, **(kwargs or {})}
        if hasattr(target, "activation_checkpointing_enable"):
            target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload)
        else:  # transformers 4
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return target
    from timm.layers import set_reentrant_ckpt

    set_reentrant_ckpt(False)  # timm's own default; a process that changed it would break hooked features
    try:
        target.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError) as error:
        raise ModelError(f"the student {type(target).__name__} does not support timm's gradient checkpointing ({error}); unset gradient_checkpointing") from None
    return target


def disable_activation_checkpointing(model: nn.Module) -> None:
    """Turn ``model``'s activation checkpointing off."""
    from .loading import is_transformers_model

    target = checkpointed_module(model)
    if not is_transformers_model(target):
        target.set_grad_checkpointing(False)
    elif hasattr(target, "activation_checkpointing_disable"):
        target.activation_checkpointing_disable()
    else:
        target.gradient_checkpointing_disable()


def is_activation_checkpointing(model: nn.Module) -> bool:
    """True if ``model`` (or the module its switch lives on) checkpoints its activations."""
    return any(bool(getattr(module, "grad_checkpointing", False) or getattr(module, "gradient_checkpointing", False)) for module in model.modules())
