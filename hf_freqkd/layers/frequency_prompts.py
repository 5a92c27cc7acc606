"""FreeKD's semantic frequency prompts, their masks and losses, and the relational channel weighting.

Prompts. For each distilled teacher layer of width C, a tensor P of shape ``(L + 1, T, C)``: one
set of T prompts for the low band and one per high-frequency level (L = 3 levels -> ``(4, T, C)``),
initialised N(0, 0.01). The mask of a band R (a level's three high bands summed over their
orientations first) is ``M = sigmoid(P_b @ R)`` with R flattened to ``(C, h*w)``: T masks of shape
``(h, w)`` in [0, 1] per sample, ``(B, T, h, w)``. No softmax across prompts, no max.

Stage 1 refines every band with its masks, ``sum_t M_t * band`` (= ``band * sum_t M_t``), and
pushes the T masks of each band apart with a dissimilarity loss, the mean overlap of all pairs
``t != t'``:

* ``jaccard`` (the paper's "Jaccard overlap"; default): the soft Jaccard index
  ``sum(a * b) / (sum(a) + sum(b) - sum(a * b))``, which equals intersection over union for
  binary masks. Chosen over ``sum(min) / sum(max)`` because it is smooth in both masks (min/max
  send the gradient of each pixel to one mask only).
* ``dice`` (the released code): ``2 sum(a * b) / (sum(a^2) + sum(b^2))``, self pairs excluded.

Stage 2 multiplies the student's and the teacher's bands by the *same* teacher mask and takes the
L1 distance, averaged exactly as the released code's ``l1_loss`` over the ``(B, T, C, 3, h, w)``
broadcast - computed here without materialising it (:func:`masked_band_l1`).

Relational channel weighting: see :class:`RelationalChannelWeighting`.

Prompt files (:func:`save_prompts` / :func:`load_prompts`) are safetensors with one tensor per
teacher layer, keyed by the layer name, and metadata naming the layers (in order), their shapes and
the wavelet settings they were fitted with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..frequency.wavelet2d import WaveletBands

from ..errors import MissingPathError, ModelError

DISSIMILARITIES = ("jaccard", "dice")
PROMPTS_FORMAT = "hf_freqkd.frequency_prompts"
PROMPTS_FORMAT_VERSION = "1"


# ----------------------------------------------------------------------------------------------
# Masks, refinement, dissimilarity, masked L1


def band_masks(prompts: torch.Tensor, bands: WaveletBands) -> list[torch.Tensor]:
    """``[low mask, level-1 mask, ..., level-L mask]``, each ``(B, T, h, w)`` in [0, 1].

    ``prompts`` is one layer's ``(L + 1, T, C)`` tensor; high bands are summed over their three
    orientations before the product. Computed in float32 (the bands' dtype).
    """
    if prompts.dim() != 3 or prompts.shape[0] != bands.levels + 1:
        raise ValueError(
            f"prompts of shape {tuple(prompts.shape)} do not fit {bands.levels}-level bands: expected ({bands.levels + 1}, T, C)"
        )
    masks = []
    for prompt, band in zip(prompts, bands.bands()):
        summed = band if band.dim() == 4 else band.sum(dim=2)  # (B, C, h, w)
        batch, channels, height, width = summed.shape
        if prompt.shape[-1] != channels:
            raise ValueError(f"prompts have {prompt.shape[-1]} channels but the feature has {channels}")
        logits = torch.matmul(prompt.to(summed.dtype), summed.reshape(batch, channels, height * width))
        masks.append(torch.sigmoid(logits).reshape(batch, -1, height, width))
    return masks


def refine_bands(bands: WaveletBands, masks: Sequence[torch.Tensor]) -> WaveletBands:
    """Stage 1's refinement of every band: ``sum_t M_t * band``."""
    refined = []
    for band, mask in zip(bands.bands(), masks):
        total = mask.sum(dim=1, keepdim=True)  # (B, 1, h, w)
        refined.append(band * (total if band.dim() == 4 else total.unsqueeze(2)))
    return bands.with_bands(refined)


def mask_overlap(masks: torch.Tensor, kind: str = "jaccard", eps: float = 1e-12) -> torch.Tensor:
    """Mean overlap of the pairs ``t != t'`` of ``masks`` ``(B, T, h, w)``, over pairs and batch.

    In [0, 1]; 0 for T = 1 (no pairs). See the module docstring for the two definitions.
    """
    if kind not in DISSIMILARITIES:
        raise ValueError(f"dissimilarity {kind!r} is invalid: expected one of {', '.join(DISSIMILARITIES)}")
    batch, count = masks.shape[:2]
    if count < 2:
        return masks.new_zeros(())
    flat = masks.reshape(batch, count, -1).float()
    products = flat @ flat.transpose(1, 2)  # (B, T, T): sum(a * b)
    if kind == "jaccard":
        sums = flat.sum(dim=-1)
        overlap = products / (sums[:, :, None] + sums[:, None, :] - products + eps)
    else:
        squares = torch.diagonal(products, dim1=1, dim2=2)
        overlap = 2 * products / (squares[:, :, None] + squares[:, None, :] + eps)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=masks.device)
    return overlap[:, off_diagonal].mean()


def masked_band_l1(
    student_band: torch.Tensor,
    teacher_band: torch.Tensor,
    mask: torch.Tensor | None = None,
    channel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean |M_t * (s - t)|`` over batch, prompts, channels, orientations and positions.

    Equal to the released code's ``l1_loss(s[:, None] * M[:, :, None], t[:, None] * M[:, :, None])``
    (masks in [0, 1] are non-negative, so the mask factors out of the absolute value and sums over
    the prompts first). ``mask`` ``(B, T, h, w)``; None means a single mask of ones (plain band L1).
    ``channel_weights`` ``(B, C)`` multiply each channel's term.
    """
    if student_band.shape != teacher_band.shape:
        raise ValueError(f"student band {tuple(student_band.shape)} and teacher band {tuple(teacher_band.shape)} differ")
    difference = (student_band - teacher_band).abs()
    orientations = 1
    if difference.dim() == 5:  # (B, C, 3, h, w) high bands
        orientations = difference.shape[2]
        difference = difference.sum(dim=2)
    batch, channels, height, width = difference.shape
    if channel_weights is not None:
        difference = difference * channel_weights.to(difference.dtype)[:, :, None, None]
    per_position = difference.sum(dim=1)  # (B, h, w)
    if mask is None:
        return per_position.sum() / (batch * channels * orientations * height * width)
    prompts = mask.shape[1]
    return (per_position * mask.sum(dim=1)).sum() / (batch * prompts * channels * orientations * height * width)


# ----------------------------------------------------------------------------------------------
# The prompts module and its file


def initial_prompts(channels: int, num_prompts: int, levels: int, std: float = 0.01, generator=None) -> torch.Tensor:
    """A fresh ``(levels + 1, num_prompts, channels)`` prompt tensor drawn from N(0, std^2)."""
    return torch.randn(levels + 1, num_prompts, channels, generator=generator) * std


class FrequencyPrompts(nn.Module):
    """The prompts of one or more teacher layers, ``(L + 1, T, C)`` each, looked up by layer name.

    ``trainable=True`` (stage 1) stores them as parameters; ``trainable=False`` (stage 2) as
    persistent buffers: never in an optimizer, never given a gradient, but saved in checkpoints so
    that a resumed run keeps the prompts it started with.
    """

    def __init__(self, prompts: Mapping[str, torch.Tensor], trainable: bool):
        super().__init__()
        if not prompts:
            raise ValueError("FrequencyPrompts needs the prompts of at least one layer")
        self.layers = tuple(prompts)
        self.trainable = trainable
        # Layer names contain dots, which module attribute names may not: index them instead.
        for index, value in enumerate(prompts.values()):
            value = value.detach().clone().float()
            if value.dim() != 3:
                raise ValueError(f"prompts must have shape (L + 1, T, C), got {tuple(value.shape)}")
            if trainable:
                self.register_parameter(f"prompt_{index}", nn.Parameter(value))
            else:
                self.register_buffer(f"prompt_{index}", value)

    def prompt(self, layer: str) -> torch.Tensor:
        if layer not in self.layers:
            raise KeyError(f"no prompts for layer '{layer}'; prompted layers: {', '.join(self.layers)}")
        return getattr(self, f"prompt_{self.layers.index(layer)}")

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{layer: prompts}``, detached copies on the CPU (what a prompts file holds)."""
        return {layer: self.prompt(layer).detach().cpu().clone() for layer in self.layers}

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{layer}: {tuple(self.prompt(layer).shape)}" for layer in self.layers)
        return f"trainable={self.trainable}, {shapes}"


@dataclass
class PromptsFile:
    """What a prompts file holds: tensors by layer (in fitting order) and the fitting settings."""

    prompts: dict[str, torch.Tensor]
    wavelet: str
    mode: str
    levels: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.prompts)

    @property
    def num_prompts(self) -> int:
        return next(iter(self.prompts.values())).shape[1]


def save_prompts(
    path: str | os.PathLike,
    prompts: Mapping[str, torch.Tensor],
    *,
    wavelet: str,
    mode: str,
    levels: int,
    extra_metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write ``{layer: (L + 1, T, C)}`` as safetensors, with layer names, shapes and wavelet settings."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {layer: value.detach().cpu().float().contiguous() for layer, value in prompts.items()}
    metadata = {
        "format": PROMPTS_FORMAT,
        "format_version": PROMPTS_FORMAT_VERSION,
        "layers": json.dumps(list(tensors)),
        "shapes": json.dumps({layer: list(value.shape) for layer, value in tensors.items()}),
        "wavelet": wavelet,
        "mode": mode,
        "levels": str(levels),
    }
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_prompts(path: str | os.PathLike) -> PromptsFile:
    """Read a file written by :func:`save_prompts` (``hf-freqkd fit-prompts``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"prompts file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - any reader failure means "not a prompts file"
        raise ModelError(f"'{path}' could not be read as a safetensors file: {error}") from None
    if metadata.get("format") != PROMPTS_FORMAT:
        raise ModelError(f"'{path}' is not a frequency prompts file (written by hf-freqkd fit-prompts): its metadata has no format '{PROMPTS_FORMAT}'")
    layers = json.loads(metadata["layers"])
    return PromptsFile(
        prompts={layer: tensors[layer] for layer in layers},
        wavelet=metadata["wavelet"],
        mode=metadata["mode"],
        levels=int(metadata["levels"]),
        metadata=metadata,
    )


# ----------------------------------------------------------------------------------------------
# Position-aware relational channel weighting (paper only; design choices are this library's)


class RelationalChannelWeighting(nn.Module):
    """Channel weights omega in (0, 1)^C from a C x C relation between a feature and its context.

    FreeKD's paper describes ``A = softmax(psi(F) F^T)``, a C x C relation between a level's feature
    F and the following layer's feature psi(F), and an MLP gate mapping A to channel weights
    omega = sigmoid(MLP(A)); sizes and temperature are unpublished. This module's reading:

    * ``psi`` is a learned 1x1 convolution without bias from the context's width to F's (the
      context is resized bilinearly to F's grid first). The context is the next distilled layer's feature, or F itself
      for the deepest (or only) distilled layer.
    * Each channel's spatial response is L2-normalised before the product, so ``A[i, j]`` is the
      cosine similarity of where channel i of the context and channel j of F respond, divided by
      ``temperature`` and soft-maxed over j. The relation is *position-aware* in that it contracts
      over positions: two channels are related when they respond at the same places, which pooled
      channel statistics cannot tell. The normalisation (with a bias-free psi) makes the relation
      invariant to the scale of either feature, so teacher and student relations are comparable.
    * The gate is one MLP shared by all channels, applied to each row of ``C * A`` (row mean 1):
      ``Linear(C, hidden) -> GELU -> Linear(hidden, 1) -> sigmoid``. Its input position j stays
      tied to channel j, so the gate can learn which relations matter; parameters grow as C x hidden,
      not C^2 x C as an MLP on the flattened relation would.

    Computed in float32 with autocast off.
    """

    def __init__(self, channels: int, context_channels: int | None = None, hidden: int = 64, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature = {temperature} is invalid: expected a number > 0")
        self.channels = channels
        self.temperature = temperature
        self.psi = nn.Conv2d(context_channels or channels, channels, kernel_size=1, bias=False)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def relation(self, feature: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The row-stochastic ``(B, C, C)`` relation A."""
        context = feature if context is None else context
        with torch.autocast(device_type=feature.device.type, enabled=False):
            feature, context = feature.float(), context.float()
            if context.shape[-2:] != feature.shape[-2:]:
                context = F.interpolate(context, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            query = F.normalize(self.psi(context).flatten(2), dim=-1)
            key = F.normalize(feature.flatten(2), dim=-1)
            return torch.softmax(query @ key.transpose(1, 2) / self.temperature, dim=-1)

    def forward(self, feature: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """omega ``(B, C)`` in (0, 1) for ``feature`` ``(B, C, h, w)``."""
        relation = self.relation(feature, context)
        with torch.autocast(device_type=feature.device.type, enabled=False):
            return torch.sigmoid(self.gate(relation * self.channels).squeeze(-1))


def pair_channel_weights(omega_teacher: torch.Tensor, omega_student: torch.Tensor) -> torch.Tensor:
    """``omega_teacher * omega_student``, rescaled to mean 1 over channels (per sample).

    The gate is trained by the weighted loss itself, whose minimum without the rescaling is
    omega = 0 (distillation switched off); rescaled, the gate can only move distillation effort
    between channels, and the loss keeps its scale.
    """
    product = omega_teacher * omega_student
    return product / product.mean(dim=1, keepdim=True).clamp_min(1e-12)
