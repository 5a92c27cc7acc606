"""2-D multi-level discrete wavelet transform of feature maps: pywt's coefficients, ptwt the reference.

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

Three backends compute the same coefficients:

* ``ptwt``: ``ptwt.wavedec2`` / ``ptwt.waverec2`` (the library reference).
* ``haar`` (the haar wavelet only): one level of the orthonormal 2-D Haar maps each 2 x 2 block
  ``[[a, b], [c, d]]`` to ``low = (a + b + c + d) / 2`` and the details ``horizontal = (a + b - c - d)
  / 2``, ``vertical = (a - b + c - d) / 2``, ``diagonal = (a - b - c + d) / 2`` (pywt's signs). It is
  computed as two butterflies (sums and differences of row pairs, then of column pairs) written
  straight into the band tensors, a chunk of maps at a time so that the intermediate sums are
  reused while in cache: memory sees about one read of the map and one write of the bands, where
  ptwt's strided convolution (on the channels folded into the batch) and the matrix products cost
  several times that (``benchmarks/bench_wavelet.py``). An odd side is first padded by one row or
  column as ptwt pads it (zero: 0; constant and symmetric: the edge value; reflect: the value
  before it; periodic: the first). The transform is orthonormal, so the backward pass of the
  decomposition is the reconstruction of the gradients and vice versa (custom autograd Functions
  whose backward calls the other, hence twice differentiable): nothing is saved for backward.
* ``matrix``: one level of the 2-D transform is separable, ``Y = A_H X A_W^T``, where ``A_n`` stacks
  the low- and high-pass analysis of length-n signals. The matrices are ptwt's own 1-D transform
  (``ptwt.wavedec`` / ``ptwt.waverec`` of the basis vectors, so every wavelet and boundary mode and
  the odd-size cropping are ptwt's), built once per (wavelet, mode, length) and applied as two
  matrix products per level. ptwt folds the channels into the batch, ``(B * C, 1, H, W)``, and the
  backward pass of that single-channel convolution is slow on CPUs: forward + backward of the
  3-level transform took 2-3x as long as the matrix products on 8x8 to 14x14 maps, FreeKD's band
  loss about 2x (``benchmarks/bench_freekd.py``). The matrix cost grows with H + W per
  coefficient, against a fixed filter length for convolutions, so
* ``auto`` (default) takes ``haar`` for the haar wavelet; for other wavelets ``matrix`` up to
  :data:`MATRIX_BACKEND_MAX_SIZE` pixels a side and ``ptwt`` above.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import ptwt
import pywt
import torch
import torch.nn.functional as F

from ..errors import MethodOptionsError

#: boundary modes ptwt's wavedec2 accepts, in pywt's meaning ("constant" repeats the edge value); "zero" is FreeKD's.
BOUNDARY_MODES = ("zero", "constant", "reflect", "periodic", "symmetric")
#: names of the three high bands of a level, in the order of dimension 2 of ``WaveletBands.high[l]``.
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
BACKENDS = ("auto", "haar", "matrix", "ptwt")
#: the largest map side for which ``auto`` uses the matrix backend (about where ptwt catches up)
MATRIX_BACKEND_MAX_SIZE = 64
#: bytes of input one chunk of the haar backend reads on a CPU. The chunk's row sums and differences
#: (as many bytes again) are read back while still in the last-level cache instead of making a round
#: trip through memory: on a 2-core EPYC (32 MiB L3) 1-4 MiB were fastest, 16 MiB a third slower.
#: Each of the 6 ops of a chunk is one parallel region when torch runs several threads; on cores
#: busy with other processes every region can wait for a scheduler slice, so larger chunks (fewer
#: regions) suffer less there.
HAAR_CHUNK_BYTES = 4 << 20
#: how the haar backend pads an odd side by one sample, as ptwt does (torch.nn.functional.pad modes)
_HAAR_PAD_MODES = {
    "zero": "constant",
    "constant": "replicate",
    "symmetric": "replicate",
    "reflect": "reflect",
    "periodic": "circular",
}


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
    _check_backend(wavelet, backend)


def _check_backend(wavelet: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise MethodOptionsError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    if backend == "haar" and wavelet != "haar":
        raise MethodOptionsError(
            f"backend 'haar' computes the haar wavelet only, not {wavelet!r}: use auto, matrix or ptwt"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device):
    # ptwt's convolutions must not be re-cast to bf16/fp16 by an enclosing autocast region.
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _resolve_backend(backend: str, wavelet: str, size: tuple[int, int]) -> str:
    """The backend ``auto`` stands for (any other name is returned as it is)."""
    if backend != "auto":
        return backend
    if wavelet == "haar":
        return "haar"
    return "matrix" if max(size) <= MATRIX_BACKEND_MAX_SIZE else "ptwt"


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


def _haar_chunk(maps: torch.Tensor, count: int, height: int, width: int) -> int:
    """Maps per chunk of the haar kernels for ``count`` inputs of ``height x width``. Only CPUs
    gain from chunks; an accelerator takes every map in one launch per operation."""
    if maps.device.type != "cpu":
        return max(1, count)
    return max(1, HAAR_CHUNK_BYTES // (height * width * maps.element_size()))


def _haar_analysis_into(maps: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
    """One haar level of ``maps`` ``(n, 2h, 2w)`` written into ``low`` ``(n, h, w)`` and ``high``
    ``(n, 3, h, w)`` (horizontal, vertical, diagonal). ``maps`` may have any strides."""
    n, h, w = low.shape
    blocks = maps.view(n, h, 2, w, 2)  # [:, i, p, j, q] is pixel (2i + p, 2j + q)
    chunk = _haar_chunk(maps, n, 2 * h, 2 * w)
    # (top + bottom) and (top - bottom) rows; the last axis is the column parity
    row_sums = maps.new_empty(min(chunk, n), h, w, 2)
    row_differences = maps.new_empty(min(chunk, n), h, w, 2)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block, chunk_low, chunk_high = blocks[start:stop], low[start:stop], high[start:stop]
        sums = torch.add(block[:, :, 0], block[:, :, 1], out=row_sums[: stop - start])  # a + c, b + d
        differences = torch.sub(block[:, :, 0], block[:, :, 1], out=row_differences[: stop - start])  # a - c, b - d
        # lerp(u, v, 0.5) = (u + v) / 2 in one pass; then u - (u + v) / 2 = (u - v) / 2
        torch.lerp(sums[..., 0], sums[..., 1], 0.5, out=chunk_low)
        torch.sub(sums[..., 0], chunk_low, out=chunk_high[:, 1])
        torch.lerp(differences[..., 0], differences[..., 1], 0.5, out=chunk_high[:, 0])
        torch.sub(differences[..., 0], chunk_high[:, 0], out=chunk_high[:, 2])


def _haar_synthesis_into(low: torch.Tensor, high: torch.Tensor, maps: torch.Tensor) -> None:
    """Inverse of :func:`_haar_analysis_into`: ``low`` and ``high`` (any strides, broadcastable to
    ``(n, h, w)`` and ``(n, 3, h, w)``) into the contiguous ``maps`` ``(n, 2h, 2w)``."""
    n, height, width = maps.shape
    h, w = height // 2, width // 2
    blocks = maps.view(n, h, 2, w, 2)
    chunk = _haar_chunk(maps, n, height, width)
    row_sums = maps.new_empty(min(chunk, n), h, w, 2)
    row_differences = maps.new_empty(min(chunk, n), h, w, 2)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        chunk_low, chunk_high, block = low[start:stop], high[start:stop], blocks[start:stop]
        sums, differences = row_sums[: stop - start], row_differences[: stop - start]
        torch.add(chunk_low, chunk_high[:, 1], out=sums[..., 0])  # a + c = low + vertical
        torch.sub(chunk_low, chunk_high[:, 1], out=sums[..., 1])  # b + d
        torch.add(chunk_high[:, 0], chunk_high[:, 2], out=differences[..., 0])  # a - c = horizontal + diagonal
        torch.sub(chunk_high[:, 0], chunk_high[:, 2], out=differences[..., 1])  # b - d
        top = torch.lerp(sums, differences, 0.5, out=block[:, :, 0])
        torch.sub(sums, top, out=block[:, :, 1])


def _zeros_if_none(gradient: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    # An unused band (the student's last low band in FreeKD) has no gradient: a broadcast zero
    # stands in for it without allocating a band of zeros.
    return gradient if gradient is not None else like.new_zeros(()).expand(shape)


class _HaarAnalysis(torch.autograd.Function):
    """One haar level of even-sized ``(n, 2h, 2w)`` maps: ``(low (n, h, w), high (n, 3, h, w))``.
    Orthonormal, so its backward is :class:`_HaarSynthesis` of the gradients (which is again
    differentiable)."""

    @staticmethod
    def forward(ctx, maps):
        n, height, width = maps.shape
        low = maps.new_empty(n, height // 2, width // 2)
        high = maps.new_empty(n, 3, height // 2, width // 2)
        _haar_analysis_into(maps, low, high)
        ctx.set_materialize_grads(False)
        ctx.shapes = (tuple(low.shape), tuple(high.shape))
        return low, high

    @staticmethod
    def backward(ctx, grad_low, grad_high):
        if grad_low is None and grad_high is None:
            return None
        like = grad_low if grad_low is not None else grad_high
        low_shape, high_shape = ctx.shapes
        return _HaarSynthesis.apply(
            _zeros_if_none(grad_low, like, low_shape), _zeros_if_none(grad_high, like, high_shape)
        )


class _HaarSynthesis(torch.autograd.Function):
    """Inverse of :class:`_HaarAnalysis`; its backward is the analysis of the gradient."""

    @staticmethod
    def forward(ctx, low, high):
        n, h, w = low.shape
        maps = low.new_empty(n, 2 * h, 2 * w)
        _haar_synthesis_into(low, high, maps)
        return maps

    @staticmethod
    def backward(ctx, grad_maps):
        return _HaarAnalysis.apply(grad_maps)


def _haar_decompose(x: torch.Tensor, levels: int, mode: str):
    batch, channels = x.shape[:2]
    low, high = x, []
    for level in range(1, levels + 1):
        height, width = low.shape[-2:]
        if height % 2 or width % 2:
            if mode == "reflect" and min(height, width) == 1:
                raise MethodOptionsError(
                    f"boundary mode 'reflect' needs at least 2 pixels a side at every level, but level {level} of a "
                    f"{tuple(x.shape[-2:])} map gets {height}x{width}: use fewer levels or another mode"
                )
            low = F.pad(low, (0, width % 2, 0, height % 2), mode=_HAAR_PAD_MODES[mode])
            height, width = low.shape[-2:]
        level_low, level_high = _HaarAnalysis.apply(low.reshape(batch * channels, height, width))
        low = level_low.view(batch, channels, height // 2, width // 2)
        high.append(level_high.view(batch, channels, 3, height // 2, width // 2))
    return low, tuple(high)


def _haar_reconstruct(bands: "WaveletBands", dtype: torch.dtype) -> torch.Tensor:
    sizes = [bands.size, *(tuple(level.shape[-2:]) for level in bands.high[:-1])]
    low = bands.low.to(dtype)
    for level, (height, width) in zip(reversed(bands.high), reversed(sizes)):
        batch, channels, _, h, w = level.shape
        maps = _HaarSynthesis.apply(
            low.reshape(batch * channels, h, w), level.to(dtype).reshape(batch * channels, 3, h, w)
        )
        # an odd side was padded by one at decomposition: drop it
        low = maps.view(batch, channels, 2 * h, 2 * w)[..., :height, :width]
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
    backend = _resolve_backend(backend, wavelet, size)
    with _autocast_off(x.device):
        x = x.to(_compute_dtype(x.dtype))
        if backend == "haar":
            return WaveletBands(*_haar_decompose(x, levels, mode), size=size)
        if backend == "matrix":
            return WaveletBands(*_matrix_decompose(x, wavelet, levels, mode), size=size)
        coefficients = ptwt.wavedec2(x, wavelet, mode=mode, level=levels)
    low, *details = coefficients  # pywt order: coarsest level first
    high = tuple(torch.stack(tuple(level), dim=2) for level in reversed(details))
    return WaveletBands(low=low, high=high, size=size)


def wavelet_reconstruct(bands: WaveletBands, wavelet: str = "haar", backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`wavelet_decompose`, cropped to the decomposed map's ``(H, W)``."""
    if not is_discrete_wavelet(wavelet):
        raise MethodOptionsError(f"wavelet {wavelet!r} is not a discrete wavelet pywt knows (e.g. haar, db2, sym4)")
    _check_backend(wavelet, backend)
    backend = _resolve_backend(backend, wavelet, bands.size)
    dtype = _compute_dtype(bands.low.dtype)
    height, width = bands.size
    with _autocast_off(bands.low.device):
        if backend == "haar":
            return _haar_reconstruct(bands, dtype)
        if backend == "matrix":
            return _matrix_reconstruct(bands, wavelet, dtype)
        coefficients = (
            bands.low.to(dtype),
            *(tuple(level.to(dtype).unbind(dim=2)) for level in reversed(bands.high)),
        )
        reconstruction = ptwt.waverec2(coefficients, wavelet)
    return reconstruction[..., :height, :width]
