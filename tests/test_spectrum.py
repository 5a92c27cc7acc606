"""``hf-freqkd spectrum``: band energies (Parseval) and the command on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_freqkd.cli import main
from hf_freqkd.spectrum import logit_band_energy, radial_fft_energy, wavelet2d_band_energy

from .helpers import refused_before_writing


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


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--layers", "layer9"], "layer 'layer9' does not exist"),
        (["--wavelet", "morlet"], "wavelet 'morlet'"),
        (["--data", "{tmp}/no_such_images"], "dataset '{tmp}/no_such_images' does not exist"),
        (["--before", "{tmp}/no_student"], "model '{tmp}/no_student' does not exist"),
        (["--teacher", "resnet9000"], "model 'resnet9000' is not a timm model name"),
        (["--output-dir", "{tmp}/notes.txt/spectrum"], "--output-dir '{tmp}/notes.txt/spectrum' cannot be created: '{tmp}/notes.txt' is a file"),
    ],
)
def test_bad_layers_wavelets_data_models_and_output_dirs_are_refused_before_writing(tmp_path, capsys, arguments, message):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "spectrum"
    argv = ["spectrum", "--teacher", "resnet8", "--student", "resnet8", "--samples", "4", "--image-size", "16", "--output-dir", str(out)]
    line = refused_before_writing([*argv, *(argument.format(tmp=tmp_path) for argument in arguments)], capsys, out, tmp_path / "notes.txt" / "spectrum")
    assert message.format(tmp=tmp_path) in line


DETECTION_DATA = ["--data", "shapes_detection", "--dataset-config-name", "num_train=8,num_test=8,image_size=32,num_classes=3,seed=0"]


def test_spectrum_command_on_detectors_reads_the_fpn_levels(tmp_path, capsys):
    from hf_freqkd.metrics import DETECTION_METRIC_NAMES

    out = tmp_path / "spectrum"
    code = main([
        "spectrum", "--teacher", "retinanet_resnet20", "--student", "retinanet_resnet8", "--before", "retinanet_resnet8",
        *DETECTION_DATA, "--image-size", "32", "--samples", "8", "--batch-size", "4", "--output-dir", str(out),
    ])
    assert code == 0
    result = json.loads((out / "spectrum.json").read_text())
    assert result["settings"]["task"] == "detection" and result["settings"]["num_classes"] == 3
    # Detections have no class axis per image: no logit view, no logit plot.
    assert result["logits"] == {} and result["logit_difference"] == {} and "logits" not in result["files"]
    assert not (out / "logit_bands.png").exists()
    # The FPN levels of the CIFAR ResNets' last two stages (strides 2, 4) and the P6/P7-style extra levels.
    levels = [f"fpn.p{i}" for i in (1, 2, 3, 4)]
    assert result["settings"]["layer_pairs"] == [f"{level} / {level}" for level in levels]
    for level, (pair, roles) in zip(levels, result["features"].items()):
        side = 32 // 2 ** int(level[-1])
        for role, values in roles.items():
            assert values["layer"] == level and values["shape"] == [32, side, side], (pair, role)
            assert values["wavelet"]["parseval_ratio"] == pytest.approx(1.0, rel=1e-9)  # haar + periodization
            assert values["fft_radial"]["parseval_ratio"] == pytest.approx(1.0, rel=1e-9)
    # Each detector's COCO evaluation on the same images; 32 px images hold no "large" (> 96^2 px) object.
    assert set(result["metrics"]) == {"teacher", "student before", "student"}
    for metrics in result["metrics"].values():
        assert set(metrics) == set(DETECTION_METRIC_NAMES)
        assert metrics["map_large"] == -1.0 and 0.0 <= metrics["map"] <= metrics["map_50"] <= 1.0
    printed = capsys.readouterr().out
    assert "student: mAP " in printed and "of feature energy in the wavelet detail bands (mean over fpn.p1, fpn.p2, fpn.p3, fpn.p4)" in printed
    for name in ("feature_fft_radial.png", "feature_wavelet_bands.png"):
        with Image.open(out / name) as image:
            image.verify()


def test_spectrum_on_detectors_refuses_logit_levels_and_a_classifier_teacher(tmp_path, capsys):
    common = ["spectrum", *DETECTION_DATA, "--image-size", "32", "--samples", "2", "--output-dir", str(tmp_path / "out")]
    assert main([*common, "--teacher", "retinanet_resnet8", "--student", "retinanet_resnet8", "--levels", "2"]) == 2
    assert "--levels = 2 sets the transform of image-level logits" in capsys.readouterr().err
    assert main([*common, "--teacher", "resnet8", "--student", "retinanet_resnet8"]) == 2
    assert "the teacher 'resnet8' is an image classifier but the student is an object detector" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_segmentation_networks_get_the_feature_views_and_their_miou(tmp_path):
    from hf_freqkd.spectrum import SpectrumInputs, compute_spectrum

    inputs = SpectrumInputs(
        teacher="segfpn_resnet8", student="segfpn_resnet8", dataset="shapes_segmentation", image_size=16, samples=4, output_dir=str(tmp_path)
    )
    result = compute_spectrum(inputs)
    assert result["settings"]["task"] == "segmentation" and result["logits"] == {}
    assert result["settings"]["layer_pairs"] == [f"backbone.layer{i} / backbone.layer{i}" for i in (1, 2, 3)]
    for metrics in result["metrics"].values():
        assert set(metrics) == {"mean_iou", "pixel_accuracy", "mean_accuracy"} and 0.0 <= metrics["mean_iou"] <= 1.0
