"""2-D multi-level discrete wavelet transform of feature maps, through ptwt.

:func:`wavelet_decompose` splits a ``(B, C, H, W)`` map into one low band (the approximation after
the last level) and, for each level ``l = 1..L``, the three high bands stacked as
``(B, C, 3, h_l, w_l)``; :func:`wavelet_reconstruct` inverts it. The coefficients are exactly
``pywt.wavedec2``'s: high bands in pywt's orientation order (horizontal, vertical, diagonal detail),
but listed by level from the finest (level 1, about ``H/2 x W/2``) to the coarsest, the order in
which FreeKD numbers them (pywt and ptwt list them coarsest first).

Odd sizes: every level pads its input to an even size (zero padding by default, FreeKD's choice),
so the inverse transform can return one row or column too many; :func:`wavelet_reconstruct` crops
to the size recorded at decomposition. The transform runs in float32 (float64 for float64 input)
with autocast off, so bf16 / fp16 features under mixed precision are transformed in float32 (ptwt
supports float32/64 only).

Two backends compute the same coefficients:

* ``ptwt``: ``ptwt.wavedec2`` / ``ptwt.waverec2`` (the library reference).
* ``matrix``: one level of the 2-D transform is separable, ``Y = A_H X A_W^T``, where ``A_n`` stacks
  the low- and high-pass analysis of length-n signals. The matrices are ptwt's own 1-D transform
  (``ptwt.wavedec`` / ``ptwt.waverec`` of the basis vectors, so every wavelet and boundary mode and
  the odd-size cropping are ptwt's), built once per (wavelet, mode, length) and applied as two
  matrix products per level. ptwt folds the channels into the batch, ``(B * C, 1, H, W)``, and the
  backward pass of that single-channel convolution is slow on CPUs: forward + backward of the
  3-level transform took 2-3x as long as the matrix products on 8x8 to 14x14 maps, FreeKD's band
  loss about 2x (``benchmarks/bench_freekd.py``). The matrix cost grows with H + W per
  coefficient, against a fixed filter length for convolutions, so
* ``auto`` (default) takes ``matrix`` up to :data:`MATRIX_BACKEND_MAX_SIZE` pixels a side and
  ``ptwt`` above.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import ptwt
import pywt
import torch

from ..errors import MethodOptionsError

#: boundary modes ptwt's wavedec2 accepts; "zero" (= "constant") is FreeKD's.
BOUNDARY_MODES = ("zero", "constant", "reflect", "periodic", "symmetric")
#: names of the three high bands of a level, in the order of dimension 2 of ``WaveletBands.high[l]``.
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
BACKENDS = ("auto", "matrix", "ptwt")
#: the largest map side for which ``auto`` uses the matrix backend (about where ptwt catches up)
MATRIX_BACKEND_MAX_SIZE = 64


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


def check_wavelet_settings(wavelet: str, levels: int, mode: str, backend: str = "auto") -> None:
    """Raise a ``ValueError`` naming the first bad setting."""
    if not is_discrete_wavelet(wavelet):
        raise MethodOptionsError(f"wavelet {wavelet!r} is not a discrete wavelet pywt knows (e.g. haar, db2, sym4)")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise MethodOptionsError(f"levels = {levels!r} is invalid: expected an integer >= 1")
    if mode not in BOUNDARY_MODES:
        raise MethodOptionsError(f"boundary mode {mode!r} is invalid: expected one of {', '.join(BOUNDARY_MODES)}")
    if backend not in BACKENDS:
        raise MethodOptionsError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    # ptwt's convolutions must not be re-cast to bf16/fp16 by an enclosing autocast region.
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _use_matrix(backend: str, size: tuple[int, int]) -> bool:
    return backend == "matrix" or backend == "auto" and max(size) <= MATRIX_BACKEND_MAX_SIZE


@lru_cache(maxsize=512)
def _analysis_matrix(wavelet: str, mode: str, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(2 m, length)``: rows 0..m-1 the low-pass, rows m..2m-1 the high-pass coefficients (ptwt's)."""
    low, high = ptwt.wavedec(torch.eye(length, dtype=torch.float64), wavelet, mode=mode, level=1)
    return torch.cat([low, high], dim=1).T.contiguous().to(device=device, dtype=dtype)


@lru_cache(maxsize=512)
def _synthesis_matrix(wavelet: str, length: int, half: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(length, 2 half)``: ptwt's reconstruction of each coefficient basis vector, cropped."""
    basis = torch.eye(2 * half, dtype=torch.float64)
    reconstruction = ptwt.waverec([basis[:, :half], basis[:, half:]], wavelet)
    return reconstruction[:, :length].T.contiguous().to(device=device, dtype=dtype)


def _matrix_decompose(x: torch.Tensor, wavelet: str, levels: int, mode: str):
    low, high = x, []
    for _ in range(levels):
        rows = _analysis_matrix(wavelet, mode, low.shape[-2], low.dtype, low.device)
        cols = _analysis_matrix(wavelet, mode, low.shape[-1], low.dtype, low.device)
        # Both products fold the leading dimensions into one matrix product each.
        coefficients = (low.transpose(-1, -2) @ rows.T).transpose(-1, -2) @ cols.T  # (B, C, 2h, 2w)
        h, w = rows.shape[0] // 2, cols.shape[0] // 2
        low = coefficients[..., :h, :w]
        # pywt's order: horizontal (high along H), vertical (high along W), diagonal
        high.append(torch.stack([coefficients[..., h:, :w], coefficients[..., :h, w:], coefficients[..., h:, w:]], dim=2))
    return low, tuple(high)


def _matrix_reconstruct(bands: "WaveletBands", wavelet: str, dtype: torch.dtype) -> torch.Tensor:
    # The input size of level l is the size of level l - 1's bands (of the map for level 1).
    sizes = [bands.size, *(tuple(level.shape[-2:]) for level in bands.high[:-1])]
    low = bands.low.to(dtype)
    for level, size in zip(reversed(bands.high), reversed(sizes)):
        level = level.to(dtype)
        h, w = low.shape[-2:]
        coefficients = torch.cat(
            [torch.cat([low, level[:, :, 1]], dim=-1), torch.cat([level[:, :, 0], level[:, :, 2]], dim=-1)], dim=-2
        )
        rows = _synthesis_matrix(wavelet, size[0], h, dtype, low.device)
        cols = _synthesis_matrix(wavelet, size[1], w, dtype, low.device)
        low = (coefficients.transpose(-1, -2) @ rows.T).transpose(-1, -2) @ cols.T
    return low


def wavelet_decompose(
    x: torch.Tensor, wavelet: str = "haar", levels: int = 3, mode: str = "zero", backend: str = "auto"
) -> WaveletBands:
    """Multi-level 2-D DWT of ``x`` ``(B, C, H, W)`` over its last two axes (differentiable).

    Returns float32 coefficients (float64 for a float64 input) whatever autocast is active.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got a tensor of shape {tuple(x.shape)}")
    check_wavelet_settings(wavelet, levels, mode, backend)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with _autocast_off(x.device):
        x = x.to(_compute_dtype(x.dtype))
        if _use_matrix(backend, size):
            low, high = _matrix_decompose(x, wavelet, levels, mode)
            return WaveletBands(low=low, high=high, size=size)
        coefficients = ptwt.wavedec2(x, wavelet, mode=mode, level=levels)
    low, *details = coefficients  # pywt order: coarsest level first
    high = tuple(torch.stack(tuple(level), dim=2) for level in reversed(details))
    return WaveletBands(low=low, high=high, size=size)


def wavelet_reconstruct(bands: WaveletBands, wavelet: str = "haar", backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`wavelet_decompose`, cropped to the decomposed map's ``(H, W)``."""
    if not is_discrete_wavelet(wavelet):
        raise MethodOptionsError(f"wavelet {wavelet!r} is not a discrete wavelet pywt knows (e.g. haar, db2, sym4)")
    if backend not in BACKENDS:
        raise MethodOptionsError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    dtype = _compute_dtype(bands.low.dtype)
    height, width = bands.size
    with _autocast_off(bands.low.device):
        if _use_matrix(backend, bands.size):
            return _matrix_reconstruct(bands, wavelet, dtype)
        coefficients = (
            bands.low.to(dtype),
            *(tuple(level.to(dtype).unbind(dim=2)) for level in reversed(bands.high)),
        )
        reconstruction = ptwt.waverec2(coefficients, wavelet)
    return reconstruction[..., :height, :width]
