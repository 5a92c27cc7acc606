"""Frequency transforms: 1-D wavelets of logit vectors (FiGKD), 2-D wavelets of feature maps (FreeKD)."""

from .wavelet2d import (  # noqa: F401  the FreeKD 2-D transform
    BACKENDS,
    BOUNDARY_MODES,
    MATRIX_BACKEND_MAX_SIZE,
    ORIENTATIONS,
    WaveletBands,
    check_wavelet_settings,
    is_discrete_wavelet,
    wavelet_decompose,
    wavelet_reconstruct,
)
