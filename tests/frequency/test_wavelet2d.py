"""2-D wavelet decomposition of feature maps: pywt's coefficients, exact inverse on odd sizes, float32,
the same through both backends (ptwt, ptwt's 1-D transform as matrices)."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from hf_freqkd.frequency import wavelet_decompose, wavelet_reconstruct

SIZES = [(16, 16), (25, 42), (9, 7)]
BACKENDS = ["matrix", "ptwt"]
# pywt warns that small maps at 3 levels have boundary effects everywhere; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")


def reference(x: torch.Tensor, wavelet: str, levels: int, mode: str):
    """pywt.wavedec2 of ``x`` as (low, [level 1 (h, v, d), ..., level L]) numpy arrays."""
    low, *details = pywt.wavedec2(x.double().numpy(), wavelet, mode=mode, level=levels, axes=(-2, -1))
    return low, list(reversed(details))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_decomposition_matches_pywt(levels, size, backend):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    bands = wavelet_decompose(x, "haar", levels=levels, mode="zero", backend=backend)
    low, details = reference(x, "haar", levels, "zero")
    assert bands.levels == levels and bands.size == size
    np.testing.assert_allclose(bands.low.numpy(), low, atol=1e-12)
    for level, (high, expected) in enumerate(zip(bands.high, details), start=1):
        # level 1 is the finest: about half the input size
        assert high.shape == (2, 3, 3, *expected[0].shape[-2:]), f"level {level}"
        for orientation in range(3):
            np.testing.assert_allclose(high[:, :, orientation].numpy(), expected[orientation], atol=1e-12)
    assert bands.high[0].shape[-2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_decomposition_matches_pywt_to_float_tolerance(backend):
    x = torch.randn(2, 4, 25, 42)
    bands = wavelet_decompose(x, levels=3, backend=backend)
    low, details = reference(x, "haar", 3, "zero")
    assert bands.low.dtype == torch.float32
    np.testing.assert_allclose(bands.low.numpy(), low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bands.high[2][:, :, 2].numpy(), details[2][2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wavelet, mode", [("db2", "zero"), ("haar", "reflect"), ("sym3", "symmetric")])
def test_other_wavelets_and_modes_match_pywt(wavelet, mode, backend):
    x = torch.randn(1, 2, 21, 18, dtype=torch.float64)
    bands = wavelet_decompose(x, wavelet, levels=2, mode=mode, backend=backend)
    low, details = reference(x, wavelet, 2, mode)
    np.testing.assert_allclose(bands.low.numpy(), low, atol=1e-10)
    np.testing.assert_allclose(bands.high[0][:, :, 1].numpy(), details[0][1], atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_inverse_reconstructs_the_input_cropped(levels, size, backend):
    x = torch.randn(2, 5, *size)
    rebuilt = wavelet_reconstruct(wavelet_decompose(x, levels=levels, backend=backend), backend=backend)
    assert rebuilt.shape == x.shape and rebuilt.dtype == torch.float32
    torch.testing.assert_close(rebuilt, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wavelet", ["db2", "sym3"])
def test_inverse_of_longer_wavelets_on_odd_sizes(wavelet, backend):
    x = torch.randn(1, 3, 13, 10, dtype=torch.float64)
    bands = wavelet_decompose(x, wavelet, levels=2, backend=backend)
    torch.testing.assert_close(wavelet_reconstruct(bands, wavelet, backend=backend), x)


def test_backends_agree_in_values_and_gradients_above_the_auto_threshold():
    x = torch.randn(1, 2, 70, 67, requires_grad=True)  # auto takes ptwt here
    weights = torch.randn(1, 2, 3, 35, 34)
    results = []
    for backend in BACKENDS:
        x.grad = None
        bands = wavelet_decompose(x, levels=2, backend=backend)
        (bands.high[0] * weights).sum().backward()
        results.append((bands, x.grad.clone(), wavelet_reconstruct(bands, backend=backend)))
    (matrix, matrix_grad, matrix_rebuilt), (reference, reference_grad, reference_rebuilt) = results
    torch.testing.assert_close(matrix.low, reference.low, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matrix.high[1], reference.high[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matrix_grad, reference_grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matrix_rebuilt, reference_rebuilt, rtol=1e-5, atol=1e-5)


def test_tiny_maps_of_vit_grids_decompose_and_reconstruct():
    # A 2x2 token grid (DINOv2 at 28 px) still goes through three haar levels.
    x = torch.randn(2, 8, 2, 2)
    bands = wavelet_decompose(x, levels=3)
    assert [tuple(h.shape[-2:]) for h in bands.high] == [(1, 1), (1, 1), (1, 1)]
    torch.testing.assert_close(wavelet_reconstruct(bands), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_under_bf16_autocast_and_gradients_flow(backend):
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1))
        assert features.dtype == torch.bfloat16
        bands = wavelet_decompose(features, levels=2, backend=backend)
        rebuilt = wavelet_reconstruct(bands, backend=backend)
    assert bands.low.dtype == torch.float32 and all(h.dtype == torch.float32 for h in bands.high)
    assert rebuilt.dtype == torch.float32
    bands.high[0].abs().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bands_layout_round_trip():
    x = torch.randn(1, 2, 8, 8)
    bands = wavelet_decompose(x, levels=2)
    assert bands.with_bands(bands.bands()) == bands
    with pytest.raises(ValueError, match="expected 3 bands"):
        bands.with_bands(bands.bands()[:2])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"wavelet": "nope"}, "wavelet 'nope' is not a discrete wavelet"),
        ({"levels": 0}, "levels = 0 is invalid"),
        ({"mode": "mirror"}, "boundary mode 'mirror' is invalid"),
        ({"backend": "fft"}, "backend 'fft' is invalid"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wavelet_decompose(torch.randn(1, 1, 8, 8), **kwargs)


def test_non_map_input_is_rejected():
    with pytest.raises(ValueError, match=r"expected a \(B, C, H, W\) feature map, got a tensor of shape \(2, 16, 8\)"):
        wavelet_decompose(torch.randn(2, 16, 8))
