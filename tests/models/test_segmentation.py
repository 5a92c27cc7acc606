"""segfpn segmentation networks: built by name through timm, per-pixel logits, backbone stages as
feature layers, export and reload."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

import hf_freqkd  # noqa: F401  registers the segfpn networks
from hf_freqkd.export import export_student
from hf_freqkd.models import FeatureExtractor, backbone_info, load_model, model_num_classes, resolve_input_config
from hf_freqkd.models.segmentation import FPNSegmenter, is_segmentation_model


@pytest.mark.parametrize("size", [(32, 32), (30, 37)])
def test_logits_are_per_pixel_at_the_input_size(size):
    model = timm.create_model("segfpn_resnet8", num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)
    assert is_segmentation_model(model) and not is_segmentation_model(timm.create_model("resnet8"))
    assert model_num_classes(model) == 5


def test_input_config_and_stage_layers_are_the_backbones():
    model = load_model("segfpn_resnet8", num_classes=4)
    config = resolve_input_config(model)
    assert config["input_size"] == (3, 32, 32)
    assert config["mean"] == timm.models.get_pretrained_cfg("resnet8").mean
    info = backbone_info(model)
    assert info.stage_layers == ("backbone.layer1", "backbone.layer2", "backbone.layer3")
    extractor = FeatureExtractor(model, info.stage_layers)
    output = extractor(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in output.features.values()] == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]
    assert output.logits.shape == (1, 4, 32, 32)


def test_generic_segfpn_takes_any_backbone_and_variants_keep_theirs():
    model = timm.create_model("segfpn", backbone="resnet10t", num_classes=3, head_channels=16, out_indices=[2, 3, 4])
    assert isinstance(model, FPNSegmenter)
    assert [f["module"] for f in model.feature_info] == ["backbone.layer2", "backbone.layer3", "backbone.layer4"]
    assert model.pretrained_cfg["mean"] == timm.models.get_pretrained_cfg("resnet10t").mean
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match="segfpn_resnet8 has the backbone resnet8, not resnet20; use segfpn with backbone="):
        timm.create_model("segfpn_resnet8", backbone="resnet20")


def test_vit_backbone_features_are_token_grids_turned_into_maps():
    model = timm.create_model(
        "segfpn", backbone="vit_tiny_patch16_224", backbone_args={"img_size": 32, "depth": 2}, num_classes=3, head_channels=8
    )
    info = backbone_info(model)
    assert info.layout == "tokens" and info.patch_size == (16, 16) and info.num_prefix_tokens == 1
    output = FeatureExtractor(model, info.stage_layers[-1:])(torch.randn(1, 3, 32, 32))
    assert tuple(output.features["backbone.blocks.1"].shape) == (1, 192, 2, 2)
    assert output.logits.shape == (1, 3, 32, 32)


def test_export_reloads_to_identical_logits(tmp_path):
    model = load_model("segfpn_resnet8", num_classes=4).eval()
    folder = export_student(model, tmp_path / "student")
    assert all(key.startswith(("backbone.", "decode_head.")) for key in load_file(str(folder / "model.safetensors")))
    reloaded = load_model(str(folder)).eval()
    same = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    probe = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe), model(probe))
        torch.testing.assert_close(same(probe), model(probe))


def test_transformers_segmentation_models_are_refused_clearly():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], num_attention_heads=[1], decoder_hidden_size=8, num_labels=3)
    with pytest.raises(ValueError, match="SegformerForSemanticSegmentation: transformers segmentation models are not supported yet"):
        is_segmentation_model(SegformerForSemanticSegmentation(config))
