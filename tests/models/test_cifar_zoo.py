"""The CIFAR KD zoo registered in timm: sizes, the timm model interface, features, save/reload."""

import pytest
import timm
import torch

from hf_freqkd.models.cifar import CIFAR_MODELS

# Parameter counts (millions, 100 classes) reported by CRD / mdistiller for the KD tables.
STANDARD_PARAMS_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "cifar_resnet50": 23.71,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # Batch-2 CIFAR nets gain nothing from intra-op threads, and OpenMP spin-waits make them
    # 50x slower when another process keeps the cores busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_all_registered():
    assert set(CIFAR_MODELS) <= set(timm.list_models())


@pytest.mark.parametrize("name", sorted(STANDARD_PARAMS_M))
def test_parameter_count(name):
    model = timm.create_model(name, num_classes=100)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(STANDARD_PARAMS_M[name], rel=0.02)


@pytest.mark.parametrize("name", CIFAR_MODELS)
@torch.no_grad()
def test_timm_interface(name):
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model(name).eval()
    assert model.num_classes == 100
    assert model(x).shape == (2, 100)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 100 and cfg["crop_pct"] == 1.0
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert model.forward_features(x).shape[1] == model.num_features

    channels = [info["num_chs"] for info in model.feature_info]
    for info in model.feature_info:
        model.get_submodule(info["module"])  # stage outputs are hookable by name
    features = timm.create_model(name, features_only=True).eval()
    maps = features(x)
    assert [m.shape[1] for m in maps] == channels == features.feature_info.channels()
    assert [32 // m.shape[-1] for m in maps] == [info["reduction"] for info in model.feature_info]

    gray = timm.create_model(name, num_classes=10, in_chans=1).eval()
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@torch.no_grad()
def test_head_and_intermediates():
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model("wrn_16_1").eval()
    final, stages = model.forward_intermediates(x)
    assert [s.shape[1] for s in stages] == [16, 32, 64]
    assert torch.equal(model.forward_head(final), model(x))
    assert model.forward_head(final, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7


def test_no_pretrained_weights():
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("resnet8", pretrained=True)


@torch.no_grad()
def test_save_for_hf_round_trip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    model = timm.create_model("resnet8x4", num_classes=10).eval()
    timm.models.save_for_hf(model, tmp_path)
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert reloaded.num_classes == 10
    assert torch.equal(model(x), reloaded(x))
