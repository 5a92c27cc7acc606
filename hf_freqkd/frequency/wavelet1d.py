"""1-D discrete wavelet transforms along the last axis, for logit vectors (FiGKD).

Two backends compute the same thing:

* ``ptwt``: ``ptwt.wavedec`` / ``ptwt.waverec`` on the tensors (the library reference).
* ``matrix``: the transform is linear, so for a fixed (wavelet, length, level, mode) it is a
  matrix. :class:`WaveletBandOperator` builds it once from PyWavelets' own transform of the basis
  vectors and applies it as one matmul. It also covers ``periodization``, which ptwt lacks.

Both compute in float32 whatever the input dtype (ptwt supports float32/64 only; under bf16/fp16
autocast the caller's logits are cast up). Bands are numbered as in the FiGKD paper: band 0 is the
level-J approximation cA_J, band j >= 1 is the detail cD_j (j = 1 finest).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from ..errors import MethodOptionsError

PTWT_MODES = ("symmetric", "zero", "reflect", "periodic", "constant")
MATRIX_MODES = ("symmetric", "zero", "reflect", "periodic", "constant", "periodization", "smooth", "antisymmetric", "antireflect")


def check_wavelet(name: str):
    """The ``pywt.Wavelet`` named ``name``; a ValueError listing families if pywt does not know it."""
    import pywt

    if name not in pywt.wavelist(kind="discrete"):
        raise MethodOptionsError(
            f"wavelet '{name}' is not a discrete wavelet PyWavelets knows; families: "
            f"{', '.join(pywt.families(short=True))} (e.g. haar, db2, sym4, coif1, bior2.2)"
        )
    return pywt.Wavelet(name)


def max_level(length: int, wavelet: str) -> int:
    """``pywt.dwt_max_level``: the deepest level with at least one full filter overlap."""
    import pywt

    return max(pywt.dwt_max_level(length, check_wavelet(wavelet).dec_len), 1) if length >= 2 else 0


def wavedec(signal: torch.Tensor, wavelet: str, level: int, mode: str) -> list[torch.Tensor]:
    """ptwt decomposition ``[cA_J, cD_J, ..., cD_1]`` along the last axis, in float32."""
    import ptwt

    if mode not in PTWT_MODES:
        raise MethodOptionsError(f"mode '{mode}' is not supported by ptwt; expected one of {', '.join(PTWT_MODES)}")
    return ptwt.wavedec(signal.float(), wavelet, mode=mode, level=level, axis=-1)


def waverec(coefficients: Sequence[torch.Tensor], wavelet: str, length: int) -> torch.Tensor:
    """ptwt reconstruction, cropped to ``length`` (odd lengths come back one sample longer)."""
    import ptwt

    return ptwt.waverec(list(coefficients), wavelet, axis=-1)[..., :length]


def keep_bands(coefficients: Sequence[torch.Tensor], bands: Sequence[int]) -> list[torch.Tensor]:
    """Zero every band not in ``bands`` (0 = cA_J, j = cD_j). ``coefficients`` is ``[cA_J, cD_J, ..., cD_1]``."""
    level = len(coefficients) - 1
    kept = set(bands)
    # Position p of the list holds cA_J for p = 0 and cD_{J+1-p} otherwise.
    return [c if (0 if p == 0 else level + 1 - p) in kept else torch.zeros_like(c) for p, c in enumerate(coefficients)]


def band_order(level: int) -> list[int]:
    """Band number at each position of ``[cA_J, cD_J, ..., cD_1]``."""
    return [0] + list(range(level, 0, -1))


class WaveletBandOperator:
    """Precomputed linear maps of a wavelet transform of length-``length`` signals (matrix backend).

    ``reconstruct(z, bands)`` = waverec of ``z``'s coefficients with other bands zeroed, and
    ``coefficients(z, bands)`` = the chosen bands' coefficients concatenated, each one matmul.
    """

    def __init__(self, wavelet: str, length: int, level: int, mode: str):
        if mode not in MATRIX_MODES:
            raise MethodOptionsError(f"mode '{mode}' is unknown; expected one of {', '.join(MATRIX_MODES)}")
        self.wavelet, self.length, self.level, self.mode = wavelet, length, level, mode
        analysis, band_slices, synthesis = _transform_matrices(wavelet, length, level, mode)
        self.analysis = torch.from_numpy(analysis)  # (K, length): coefficients = analysis @ z
        self.synthesis = torch.from_numpy(synthesis)  # (length, K): z = synthesis @ coefficients
        self.band_slices = band_slices  # band number -> slice of the K coefficients
        self._cache: dict[tuple, torch.Tensor] = {}

    def _rows(self, bands: Sequence[int]) -> list[int]:
        return [i for band in sorted(set(bands)) for i in range(*self.band_slices[band].indices(self.analysis.shape[0]))]

    def _matrix(self, kind: str, bands: Sequence[int], device: torch.device) -> torch.Tensor:
        key = (kind, tuple(sorted(set(bands))), device)
        if key not in self._cache:
            rows = self._rows(bands)
            if kind == "reconstruct":
                # (length, length) projection onto the chosen bands, stored transposed for z @ M.
                matrix = (self.synthesis[:, rows] @ self.analysis[rows, :]).T
            else:
                matrix = self.analysis[rows, :].T
            self._cache[key] = matrix.to(device=device, dtype=torch.float32).contiguous()
        return self._cache[key]

    def reconstruct(self, signal: torch.Tensor, bands: Sequence[int]) -> torch.Tensor:
        return signal.float() @ self._matrix("reconstruct", bands, signal.device)

    def coefficients(self, signal: torch.Tensor, bands: Sequence[int]) -> torch.Tensor:
        return signal.float() @ self._matrix("coefficients", bands, signal.device)


@lru_cache(maxsize=32)
def _transform_matrices(wavelet: str, length: int, level: int, mode: str):
    """Analysis and synthesis matrices from pywt applied to basis vectors (exact by construction)."""
    import pywt

    identity = np.eye(length)
    coefficients = pywt.wavedec(identity, wavelet, mode=mode, level=level, axis=-1)  # list of (length, n_b)
    analysis = np.concatenate([c.T for c in coefficients], axis=0)  # (K, length)
    slices, start = {}, 0
    for band, c in zip(band_order(level), coefficients):
        slices[band] = slice(start, start + c.shape[1])
        start += c.shape[1]
    total = analysis.shape[0]
    basis = np.eye(total)
    parts = [basis[:, s] for s in (slices[b] for b in band_order(level))]
    synthesis = pywt.waverec(parts, wavelet, mode=mode, axis=-1)[:, :length].T  # (length, K)
    return analysis.astype(np.float64), slices, np.ascontiguousarray(synthesis, dtype=np.float64)
