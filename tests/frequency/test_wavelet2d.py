"""2-D wavelet decomposition of feature maps: pywt's coefficients, exact inverse on odd sizes, float32,
the same through every backend (ptwt, ptwt's 1-D transform as matrices, the haar butterflies), with
ptwt as the reference for the haar backend's coefficients and gradients."""

from __future__ import annotations

import numpy as np
import ptwt
import pytest
import pywt
import torch

from hf_freqkd.errors import MethodOptionsError
from hf_freqkd.frequency import WaveletBands, wavelet2d, wavelet_decompose, wavelet_reconstruct

SIZES = [(16, 16), (25, 42), (9, 7)]
BACKENDS = ["haar", "matrix", "ptwt"]
MODES = ["zero", "constant", "reflect", "periodic", "symmetric"]
# even, odd, mixed, non-square, and sides that shrink to 1 (then get padded) within 4 levels
HAAR_SIZES = [(32, 32), (6, 10), (9, 7), (25, 42), (2, 2), (1, 4), (3, 1)]
# pywt warns that small maps at 3 levels have boundary effects everywhere; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")


def reference(x: torch.Tensor, wavelet: str, levels: int, mode: str):
    """pywt.wavedec2 of ``x`` as (low, [level 1 (h, v, d), ..., level L]) numpy arrays."""
    low, *details = pywt.wavedec2(x.double().numpy(), wavelet, mode=mode, level=levels, axes=(-2, -1))
    return low, list(reversed(details))


def ptwt_bands(x: torch.Tensor, levels: int, mode: str) -> list[torch.Tensor]:
    """ptwt.wavedec2's haar coefficients in our band order: [low, level 1 (B, C, 3, h, w), ...]."""
    low, *details = ptwt.wavedec2(x, "haar", mode=mode, level=levels)
    return [low, *(torch.stack(tuple(level), dim=2) for level in reversed(details))]


def reflect_is_undefined(size: tuple[int, int], levels: int) -> bool:
    """True when some level's input has an odd side of length 1, which reflect cannot pad."""
    height, width = size
    for _ in range(levels):
        if (height % 2 or width % 2) and min(height, width) == 1:
            return True
        height, width = (height + 1) // 2, (width + 1) // 2
    return False


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


def test_haar_backend_block_formulas_and_signs():
    # One 2 x 2 block [[a, b], [c, d]]: pywt's orthonormal haar with its detail signs.
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    bands = wavelet_decompose(torch.tensor([[[[a, b], [c, d]]]], dtype=torch.float64), levels=1, backend="haar")
    assert bands.low.item() == (a + b + c + d) / 2
    horizontal, vertical, diagonal = bands.high[0][0, 0, :, 0, 0].tolist()
    assert horizontal == (a + b - c - d) / 2
    assert vertical == (a - b + c - d) / 2
    assert diagonal == (a - b - c + d) / 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", HAAR_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_backend_equals_ptwt_and_pywt_in_float64(size, mode):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    for levels in (1, 2, 3, 4):
        if mode == "reflect" and reflect_is_undefined(size, levels):
            continue  # ptwt and pywt refuse it too; see test_reflect_on_a_one_pixel_side_is_refused
        bands = wavelet_decompose(x, "haar", levels=levels, mode=mode, backend="haar")
        expected = ptwt_bands(x, levels, mode)
        assert [tuple(band.shape) for band in bands.bands()] == [tuple(band.shape) for band in expected]
        for band, expected_band in zip(bands.bands(), expected):
            torch.testing.assert_close(band, expected_band, rtol=0, atol=1e-12)
        low, details = reference(x, "haar", levels, mode)
        np.testing.assert_allclose(bands.low.numpy(), low, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bands.high[-1][:, :, 2].numpy(), details[-1][2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(32, 32), (25, 42), (9, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_backend_equals_ptwt_in_float32(size):
    x = torch.randn(3, 4, *size) * 10
    bands = wavelet_decompose(x, levels=3, backend="haar")
    assert all(band.dtype == torch.float32 for band in bands.bands())
    for band, expected in zip(bands.bands(), ptwt_bands(x, 3, "zero")):
        torch.testing.assert_close(band, expected, rtol=1e-6, atol=1e-5)


def test_haar_backend_does_not_depend_on_the_chunking(monkeypatch):
    # 10 maps of 10 x 6: level 1 in chunks of 3 maps (the last holds 1), level 2 (6 x 4 once padded)
    # in chunks of 7 and 3, level 3 in one
    x = torch.randn(2, 5, 10, 6, dtype=torch.float64)
    whole = wavelet_decompose(x, levels=3, backend="haar")
    monkeypatch.setattr(wavelet2d, "HAAR_CHUNK_BYTES", 3 * 10 * 6 * x.element_size())
    chunked = wavelet_decompose(x, levels=3, backend="haar")
    for band, expected in zip(chunked.bands(), whole.bands()):
        torch.testing.assert_close(band, expected, rtol=0, atol=0)
    torch.testing.assert_close(wavelet_reconstruct(chunked, backend="haar"), x, rtol=0, atol=1e-12)


def test_haar_backend_reads_non_contiguous_maps():
    x = torch.randn(2, 6, 12, 10, dtype=torch.float64)
    for layout in (x.contiguous(memory_format=torch.channels_last), x.transpose(0, 1).contiguous().transpose(0, 1)):
        assert not layout.is_contiguous()
        for band, expected in zip(wavelet_decompose(layout, backend="haar").bands(), ptwt_bands(x, 3, "zero")):
            torch.testing.assert_close(band, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(6, 4), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_backend_gradients_pass_gradcheck(size, mode):
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)

    def bands(x):
        return tuple(wavelet_decompose(x, levels=2, mode=mode, backend="haar").bands())

    assert torch.autograd.gradcheck(bands, (x,))
    assert torch.autograd.gradgradcheck(bands, (x,))


@pytest.mark.parametrize("size", [(6, 4), (7, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_reconstruction_gradients_pass_gradcheck(size):
    template = wavelet_decompose(torch.randn(1, 2, *size, dtype=torch.float64), levels=2, backend="haar")
    inputs = tuple(band.clone().requires_grad_(True) for band in template.bands())

    def rebuild(*bands):
        return wavelet_reconstruct(template.with_bands(list(bands)), backend="haar")

    assert torch.autograd.gradcheck(rebuild, inputs)
    assert torch.autograd.gradgradcheck(rebuild, inputs)


@pytest.mark.parametrize("mode", ["zero", "symmetric", "periodic"])
def test_haar_backend_gradients_equal_ptwt_when_only_high_bands_are_used(mode):
    # FreeKD's case: the loss reads the student's high bands; the last low band gets no gradient.
    x = torch.randn(2, 3, 21, 18, requires_grad=True)
    gradients = []
    for backend in ("haar", "ptwt"):
        bands = wavelet_decompose(x, levels=3, mode=mode, backend=backend)
        weights = [torch.linspace(-2, 3, high.numel()).view_as(high) for high in bands.high]
        (gradient,) = torch.autograd.grad(sum((high * weight).sum() for high, weight in zip(bands.high, weights)), x)
        gradients.append(gradient)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (25, 42), (9, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_reconstruction_of_arbitrary_bands_equals_ptwt(size):
    # Prompt fitting reconstructs masked bands, which no map decomposes to: ptwt.waverec2, cropped.
    template = wavelet_decompose(torch.zeros(2, 3, *size, dtype=torch.float64), levels=3, backend="haar")
    bands = template.with_bands([torch.randn_like(band) for band in template.bands()])
    low, *levels = bands.bands()
    expected = ptwt.waverec2((low, *(tuple(level.unbind(dim=2)) for level in reversed(levels))), "haar")
    rebuilt = wavelet_reconstruct(bands, backend="haar")
    assert rebuilt.shape == (2, 3, *size)
    torch.testing.assert_close(rebuilt, expected[..., : size[0], : size[1]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(32, 32), (25, 42), (9, 7), (2, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_haar_reconstruction_is_exact_in_float64(size, mode):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    levels = max(level for level in (1, 2, 3, 4) if mode != "reflect" or not reflect_is_undefined(size, level))
    rebuilt = wavelet_reconstruct(wavelet_decompose(x, levels=levels, mode=mode, backend="haar"), backend="haar")
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-12)


def test_reflect_on_a_one_pixel_side_is_refused():
    with pytest.raises(MethodOptionsError, match=r"level 3 of a \(4, 5\) map gets 1x2"):
        wavelet_decompose(torch.randn(1, 1, 4, 5), levels=3, mode="reflect", backend="haar")


def test_haar_backend_refuses_other_wavelets():
    with pytest.raises(MethodOptionsError, match="backend 'haar' computes the haar wavelet only, not 'db2'"):
        wavelet_decompose(torch.randn(1, 1, 8, 8), "db2", backend="haar")
    bands = wavelet_decompose(torch.randn(1, 1, 8, 8), "db2", backend="ptwt")
    with pytest.raises(MethodOptionsError, match="backend 'haar' computes the haar wavelet only"):
        wavelet_reconstruct(bands, "db2", backend="haar")


def test_auto_takes_the_haar_backend_for_haar_at_every_size(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto used ptwt for the haar wavelet")

    monkeypatch.setattr(ptwt, "wavedec2", fail)
    monkeypatch.setattr(ptwt, "waverec2", fail)
    monkeypatch.setattr(wavelet2d, "_matrix_decompose", fail)
    monkeypatch.setattr(wavelet2d, "_matrix_reconstruct", fail)
    for size in [(8, 8), (70, 67)]:  # below and above the matrix backend's threshold
        x = torch.randn(1, 2, *size)
        torch.testing.assert_close(wavelet_reconstruct(wavelet_decompose(x)), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["matrix", "ptwt"])
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


@pytest.mark.parametrize("backend", ["matrix", "ptwt"])
@pytest.mark.parametrize("wavelet", ["db2", "sym3"])
def test_inverse_of_longer_wavelets_on_odd_sizes(wavelet, backend):
    x = torch.randn(1, 3, 13, 10, dtype=torch.float64)
    bands = wavelet_decompose(x, wavelet, levels=2, backend=backend)
    torch.testing.assert_close(wavelet_reconstruct(bands, wavelet, backend=backend), x)


@pytest.mark.parametrize("backend", ["haar", "matrix"])
def test_backends_agree_with_ptwt_in_values_and_gradients_above_the_matrix_threshold(backend):
    x = torch.randn(1, 2, 70, 67, requires_grad=True)
    weights = torch.randn(1, 2, 3, 35, 34)
    results = []
    for name in (backend, "ptwt"):
        bands = wavelet_decompose(x, levels=2, backend=name)
        (gradient,) = torch.autograd.grad((bands.high[0] * weights).sum(), x)
        results.append((bands, gradient, wavelet_reconstruct(bands, backend=name)))
    (bands, gradient, rebuilt), (reference_bands, reference_gradient, reference_rebuilt) = results
    torch.testing.assert_close(bands.low, reference_bands.low, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bands.high[1], reference_bands.high[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rebuilt, reference_rebuilt, rtol=1e-5, atol=1e-5)


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
    assert isinstance(bands, WaveletBands)
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
