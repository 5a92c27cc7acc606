"""``hf-freqkd spectrum``: band energies (Parseval) and the command on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_freqkd.cli import main
from hf_freqkd.spectrum import logit_band_energy, radial_fft_energy, wavelet2d_band_energy


@pytest.fixture
def fixed():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 32)), rng.normal(size=(3, 4, 16, 8))


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_logit_band_energies_sum_to_the_signal_energy(fixed, wavelet):
    logits, _ = fixed
    result = logit_band_energy(logits, wavelet, levels=3 if wavelet == "haar" else 2)
    energy = np.square(logits).sum(axis=1).mean()
    assert sum(result["energy"]) == pytest.approx(energy, rel=1e-10)
    assert result["parseval_ratio"] == pytest.approx(1.0, rel=1e-10)
    assert result["bands"][0].startswith("cA") and result["bands"][-1] == "cD1"
    assert sum(result["fraction"]) == pytest.approx(1.0)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_feature_band_energies_sum_to_the_signal_energy(fixed, wavelet):
    _, maps = fixed
    energy = np.square(maps).sum(axis=(1, 2, 3)).mean()
    bands = wavelet2d_band_energy(maps, wavelet, levels=2)
    assert bands["bands"] == ["LL2", "level2", "level1"]
    assert sum(bands["energy"]) == pytest.approx(energy, rel=1e-10)
    radial = radial_fft_energy(maps)
    assert sum(radial["energy"]) == pytest.approx(energy, rel=1e-10)
    assert radial["frequency"][0] == 0.0


def test_a_constant_signal_lives_in_the_lowest_bands():
    constant = np.full((2, 16), 3.0)
    logits = logit_band_energy(constant, "haar", levels=2)
    assert logits["fraction"][0] == pytest.approx(1.0)
    maps = np.full((1, 2, 8, 8), 1.5)
    assert wavelet2d_band_energy(maps, "haar", 2)["fraction"][0] == pytest.approx(1.0)
    assert radial_fft_energy(maps)["fraction"][0] == pytest.approx(1.0)


def test_spectrum_command_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "spectrum"
    code = main([
        "spectrum", "--teacher", "resnet14", "--student", "resnet8", "--before", "resnet8", "--data", "digits",
        "--image-size", "16", "--samples", "24", "--batch-size", "16", "--output-dir", str(out),
    ])
    assert code == 0
    result = json.loads((out / "spectrum.json").read_text())
    assert set(result["logits"]) == {"teacher", "student before", "student"}
    assert set(result["logit_difference"]) == {"student before", "student"}
    assert result["settings"]["num_classes"] == 10 and result["settings"]["images"] == 24
    assert len(result["features"]) == 3  # the three stages of the CIFAR ResNets
    for name in ("logit_bands.png", "feature_fft_radial.png", "feature_wavelet_bands.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "detail bands" in capsys.readouterr().out


def test_spectrum_command_rejects_unknown_layers_and_wavelets(tmp_path, capsys):
    common = ["spectrum", "--teacher", "resnet8", "--student", "resnet8", "--samples", "4", "--image-size", "16", "--output-dir", str(tmp_path)]
    assert main([*common, "--layers", "layer9"]) == 2
    assert "layer 'layer9' does not exist" in capsys.readouterr().err
    assert main([*common, "--wavelet", "morlet"]) == 2
    assert "wavelet 'morlet'" in capsys.readouterr().err


def test_a_segmentation_student_is_refused_with_the_reason(tmp_path):
    from hf_freqkd.errors import ModelError
    from hf_freqkd.spectrum import SpectrumInputs, compute_spectrum

    inputs = SpectrumInputs(teacher="segfpn_resnet8", student="segfpn_resnet8", dataset="shapes_segmentation", output_dir=str(tmp_path))
    with pytest.raises(ModelError, match="is a segmentation network .* the spectrum compares image-level logits"):
        compute_spectrum(inputs)
