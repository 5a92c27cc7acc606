"""2-D multi-level discrete wavelet transform of feature maps, through ptwt.

:func:`wavelet_decompose` splits a ``(B, C, H, W)`` map into one low band (the approximation after
the last level) and, for each level ``l = 1..L``, the three high bands stacked as
``(B, C, 3, h_l, w_l)``; :func:`wavelet_reconstruct` inverts it. The coefficients are exactly
``pywt.wavedec2``'s: high bands in pywt's orientation order (horizontal, vertical, diagonal detail),
but listed by level from the finest (level 1, about ``H/2 x W/2``) to the coarsest, the order in
which FreeKD numbers them (pywt and ptwt list them coarsest first).

Odd sizes: every level pads its input to an even size (zero padding by default, FreeKD's choice),
so the inverse transform can return one row or column too many; :func:`wavelet_reconstruct` crops
to the size recorded at decomposition. ptwt computes in float32 or float64 only, so inputs of other
dtypes (bf16 / fp16 under mixed precision) are transformed in float32 with autocast off.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import ptwt
import pywt
import torch

#: boundary modes ptwt's wavedec2 accepts; "zero" (= "constant") is FreeKD's.
BOUNDARY_MODES = ("zero", "constant", "reflect", "periodic", "symmetric")
#: names of the three high bands of a level, in the order of dimension 2 of ``WaveletBands.high[l]``.
ORIENTATIONS = ("horizontal", "vertical", "diagonal")


@dataclass(frozen=True)
class WaveletBands:
    """The wavelet coefficients of a batch of feature maps.

    Attributes:
        low: the approximation after the last level, ``(B, C, h_L, w_L)``.
        high: per level, finest first: ``high[l - 1]`` is level ``l``, ``(B, C, 3, h_l, w_l)``.
        size: ``(H, W)`` of the decomposed map, where the reconstruction is cropped.
    """

    low: torch.Tensor
    high: tuple[torch.Tensor, ...]
    size: tuple[int, int]

    @property
    def levels(self) -> int:
        return len(self.high)

    def bands(self) -> list[torch.Tensor]:
        """Every band in FreeKD's prompt order: ``[low, level 1, ..., level L]``."""
        return [self.low, *self.high]

    def with_bands(self, bands: list[torch.Tensor]) -> "WaveletBands":
        """The same layout with new coefficients, given in :meth:`bands` order."""
        if len(bands) != self.levels + 1:
            raise ValueError(f"expected {self.levels + 1} bands (low + {self.levels} levels), got {len(bands)}")
        return WaveletBands(low=bands[0], high=tuple(bands[1:]), size=self.size)


def is_discrete_wavelet(name: str) -> bool:
    """True for the discrete wavelets pywt (hence ptwt) knows: ``haar``, ``db2``, ``sym4``, ..."""
    return isinstance(name, str) and name in _discrete_wavelets()


@lru_cache(maxsize=1)
def _discrete_wavelets() -> frozenset[str]:
    return frozenset(pywt.wavelist(kind="discrete"))


def check_wavelet_settings(wavelet: str, levels: int, mode: str) -> None:
    """Raise a ``ValueError`` naming the first bad setting."""
    if not is_discrete_wavelet(wavelet):
        raise ValueError(f"wavelet {wavelet!r} is not a discrete wavelet pywt knows (e.g. haar, db2, sym4)")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels = {levels!r} is invalid: expected an integer >= 1")
    if mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary mode {mode!r} is invalid: expected one of {', '.join(BOUNDARY_MODES)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    # ptwt's convolutions must not be re-cast to bf16/fp16 by an enclosing autocast region.
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def wavelet_decompose(x: torch.Tensor, wavelet: str = "haar", levels: int = 3, mode: str = "zero") -> WaveletBands:
    """Multi-level 2-D DWT of ``x`` ``(B, C, H, W)`` over its last two axes (differentiable).

    Returns float32 coefficients (float64 for a float64 input) whatever autocast is active.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got a tensor of shape {tuple(x.shape)}")
    check_wavelet_settings(wavelet, levels, mode)
    with _autocast_off(x.device):
        coefficients = ptwt.wavedec2(x.to(_compute_dtype(x.dtype)), wavelet, mode=mode, level=levels)
    low, *details = coefficients  # pywt order: coarsest level first
    high = tuple(torch.stack(tuple(level), dim=2) for level in reversed(details))
    return WaveletBands(low=low, high=high, size=(int(x.shape[-2]), int(x.shape[-1])))


def wavelet_reconstruct(bands: WaveletBands, wavelet: str = "haar") -> torch.Tensor:
    """Inverse of :func:`wavelet_decompose`, cropped to the decomposed map's ``(H, W)``."""
    if not is_discrete_wavelet(wavelet):
        raise ValueError(f"wavelet {wavelet!r} is not a discrete wavelet pywt knows (e.g. haar, db2, sym4)")
    dtype = _compute_dtype(bands.low.dtype)
    with _autocast_off(bands.low.device):
        coefficients = (
            bands.low.to(dtype),
            *(tuple(level.to(dtype).unbind(dim=2)) for level in reversed(bands.high)),
        )
        reconstruction = ptwt.waverec2(coefficients, wavelet)
    height, width = bands.size
    return reconstruction[..., :height, :width]
