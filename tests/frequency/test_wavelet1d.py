"""1-D wavelet transforms: ptwt and the matrix backend both equal PyWavelets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import torch

from hf_freqkd.frequency import wavelet1d

WAVELETS = ["haar", "db2", "sym4"]
LEVELS = [1, 2, 3]
LENGTHS = [10, 67, 100]


def pywt_wavedec(signal: torch.Tensor, wavelet: str, level: int, mode: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns when level exceeds dwt_max_level; the transform is still defined
        return pywt.wavedec(signal.double().numpy(), wavelet, mode=mode, level=level, axis=-1)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("mode", ["symmetric", "zero"])
def test_ptwt_decomposition_equals_pywt(wavelet, level, mode, length):
    signal = torch.randn(3, length)
    ours = wavelet1d.wavedec(signal, wavelet, level, mode)
    reference = pywt_wavedec(signal, wavelet, level, mode)
    assert len(ours) == len(reference) == level + 1
    for mine, theirs in zip(ours, reference):
        assert mine.dtype == torch.float32
        np.testing.assert_allclose(mine.numpy(), theirs, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("mode", ["symmetric", "zero", "periodization"])
def test_matrix_backend_coefficients_equal_pywt(wavelet, level, mode, length):
    signal = torch.randn(3, length)
    operator = wavelet1d.WaveletBandOperator(wavelet, length, level, mode)
    reference = pywt_wavedec(signal, wavelet, level, mode)
    for band, theirs in zip(wavelet1d.band_order(level), reference):
        np.testing.assert_allclose(operator.coefficients(signal, [band]).numpy(), theirs, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("mode", ["symmetric", "zero", "reflect"])
@pytest.mark.parametrize("bands", [[1], [0], [1, 2], [0, 1, 2]])
def test_matrix_reconstruction_equals_ptwt_with_other_bands_zeroed(mode, bands):
    signal = torch.randn(4, 67)
    operator = wavelet1d.WaveletBandOperator("db2", 67, 2, mode)
    coefficients = wavelet1d.wavedec(signal, "db2", 2, mode)
    expected = wavelet1d.waverec(wavelet1d.keep_bands(coefficients, bands), "db2", 67)
    torch.testing.assert_close(operator.reconstruct(signal, bands), expected, rtol=1e-4, atol=1e-5)


def test_all_bands_reconstruct_the_signal_and_bands_are_complementary():
    signal = torch.randn(5, 100)
    operator = wavelet1d.WaveletBandOperator("sym4", 100, 3, "symmetric")
    torch.testing.assert_close(operator.reconstruct(signal, [0, 1, 2, 3]), signal, rtol=1e-4, atol=1e-5)
    parts = operator.reconstruct(signal, [0]) + operator.reconstruct(signal, [1, 2, 3])
    torch.testing.assert_close(parts, signal, rtol=1e-4, atol=1e-5)
    assert operator.reconstruct(signal, [1]).abs().max() > 1e-3


def test_keep_bands_numbering():
    coefficients = [torch.full((1, 2), float(i + 1)) for i in range(4)]  # [cA_3, cD_3, cD_2, cD_1]
    kept = wavelet1d.keep_bands(coefficients, [0, 1])
    assert [float(c[0, 0]) for c in kept] == [1.0, 0.0, 0.0, 4.0]


def test_unknown_wavelet_and_ptwt_mode():
    with pytest.raises(ValueError, match="wavelet 'haar2' is not a discrete wavelet PyWavelets knows"):
        wavelet1d.check_wavelet("haar2")
    with pytest.raises(ValueError, match="mode 'periodization' is not supported by ptwt"):
        wavelet1d.wavedec(torch.randn(2, 8), "haar", 1, "periodization")
