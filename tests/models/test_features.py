"""FeatureExtractor: logits and named features from one forward pass; FrozenTeacher never trains."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from hf_freqkd.types import LogitsAndFeatures
from hf_freqkd.models import FeatureExtractor, FrozenTeacher, default_feature_layers


def count_forwards(module: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def capture(module: nn.Module) -> dict[str, torch.Tensor]:
    """An independent hook, to compare with what the extractor captured."""
    seen = {}
    module.register_forward_hook(lambda _m, _a, output: seen.__setitem__("out", output))
    return seen


@pytest.fixture
def timm_resnet():
    return timm.create_model("test_resnet", num_classes=10).eval()


@pytest.fixture
def timm_vit():
    return timm.create_model("test_vit", num_classes=10, img_size=32).eval()


@pytest.fixture
def hf_vit():
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )
    return ViTForImageClassification(config).eval()


def test_default_layers_of_timm_resnet(timm_resnet):
    assert default_feature_layers(timm_resnet) == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_default_layers_of_transformers_vit(hf_vit):
    assert default_feature_layers(hf_vit) == ["hidden_states.1", "hidden_states.2"]


def test_timm_resnet_stage_features_in_one_forward(timm_resnet):
    layers = default_feature_layers(timm_resnet)
    extractor = FeatureExtractor(timm_resnet, layers)
    calls = count_forwards(timm_resnet)
    pixels = torch.randn(2, 3, 32, 32)
    output = extractor(pixels)
    assert calls[0] == 1
    assert isinstance(output, LogitsAndFeatures)
    assert list(output.features) == layers
    for info in timm_resnet.feature_info:
        size = 32 // info["reduction"]
        assert output.features[info["module"]].shape == (2, info["num_chs"], size, size)
    with torch.no_grad():
        assert torch.allclose(output.logits, timm_resnet(pixels))
        assert torch.allclose(output.features["layer4"], timm_resnet.forward_features(pixels))


def test_features_come_from_the_current_batch(timm_resnet):
    extractor = FeatureExtractor(timm_resnet, ["layer2"])
    first = extractor(torch.randn(2, 3, 32, 32)).features["layer2"]
    second = extractor(torch.randn(3, 3, 32, 32)).features["layer2"]
    assert second.shape[0] == 3
    assert first.shape[0] == 2


def test_no_layers_gives_logits_only(timm_resnet):
    output = FeatureExtractor(timm_resnet)(torch.randn(1, 3, 32, 32))
    assert output.features == {}
    assert output.logits.shape == (1, 10)


def test_duplicate_layers_are_captured_once(timm_resnet):
    extractor = FeatureExtractor(timm_resnet, ["layer1", "layer1", "layer3"])
    assert extractor.layers == ("layer1", "layer3")
    assert len(timm_resnet.layer1._forward_hooks) == 1


def test_timm_vit_block_feature(timm_vit):
    extractor = FeatureExtractor(timm_vit, ["blocks.0"], as_maps=False)  # raw tokens
    seen = capture(timm_vit.blocks[0])
    calls = count_forwards(timm_vit)
    pixels = torch.randn(2, 3, 32, 32)
    output = extractor(pixels)
    assert calls[0] == 1
    tokens = 1 + (32 // timm_vit.patch_embed.patch_size[0]) ** 2
    assert output.features["blocks.0"].shape == (2, tokens, timm_vit.embed_dim)
    assert torch.equal(output.features["blocks.0"], seen["out"])
    with torch.no_grad():
        assert torch.allclose(output.logits, timm_vit(pixels))


def test_transformers_vit_hidden_states_and_hooked_modules(hf_vit):
    extractor = FeatureExtractor(hf_vit, ["hidden_states.1", "vit.layers.0", "vit.layernorm", "vit"], as_maps=False)
    calls = count_forwards(hf_vit)
    backbone_calls = count_forwards(hf_vit.vit)
    pixels = torch.randn(2, 3, 16, 16)
    output = extractor(pixels)
    assert calls[0] == 1 and backbone_calls[0] == 1
    assert list(output.features) == ["hidden_states.1", "vit.layers.0", "vit.layernorm", "vit"]
    for name, feature in output.features.items():
        assert isinstance(feature, torch.Tensor), name
        assert feature.shape == (2, 1 + 16, 32), name

    with torch.no_grad():
        reference = hf_vit(pixel_values=pixels, output_hidden_states=True)
        last_hidden = hf_vit.vit(pixel_values=pixels).last_hidden_state
    assert torch.allclose(output.logits, reference.logits)
    assert torch.allclose(output.features["hidden_states.1"], reference.hidden_states[1])
    # The hooked first layer's output is the same tensor transformers reports as hidden_states[1].
    assert torch.allclose(output.features["vit.layers.0"], reference.hidden_states[1])
    assert torch.allclose(output.features["vit.layernorm"], last_hidden)
    # A whole sub-model returns a ModelOutput: the feature is its first tensor, last_hidden_state.
    assert torch.allclose(output.features["vit"], last_hidden)
    assert not torch.allclose(output.features["hidden_states.1"], last_hidden)


def test_transformers_vit_without_hidden_states_does_not_request_them(hf_vit):
    extractor = FeatureExtractor(hf_vit, ["vit.layers.1"], as_maps=False)
    seen_kwargs = {}
    hf_vit.register_forward_pre_hook(lambda _m, _a, kwargs: seen_kwargs.update(kwargs), with_kwargs=True)
    output = extractor(torch.randn(1, 3, 16, 16))
    assert seen_kwargs["output_hidden_states"] is False
    assert output.features["vit.layers.1"].shape == (1, 17, 32)


def test_unknown_layer_lists_stage_layers(timm_resnet):
    with pytest.raises(ValueError) as error:
        FeatureExtractor(timm_resnet, ["layer9"])
    message = str(error.value)
    assert "layer 'layer9' does not exist in ResNet" in message
    assert "stage layers: act1, layer1, layer2, layer3, layer4" in message


@pytest.mark.parametrize("name", ["hidden_states.3", "hidden_states.last"])
def test_hidden_state_out_of_range(hf_vit, name):
    with pytest.raises(ValueError, match=f"'{name}' does not exist.*hidden_states.0 .. hidden_states.2"):
        FeatureExtractor(hf_vit, [name])


def test_unknown_module_of_transformers_model_lists_hidden_states(hf_vit):
    with pytest.raises(ValueError, match="stage layers: hidden_states.1, hidden_states.2"):
        FeatureExtractor(hf_vit, ["vit.encoder.layer.0"])


def test_frozen_teacher_stays_in_eval_mode(timm_resnet):
    timm_resnet.train()
    teacher = FrozenTeacher(timm_resnet, ["layer1"])
    assert not teacher.training
    assert teacher.train() is teacher
    assert not any(module.training for module in teacher.modules())
    parent = nn.ModuleDict({"teacher": teacher, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(module.training for module in teacher.modules())


def test_frozen_teacher_has_no_gradients_and_keeps_batchnorm_stats(timm_resnet):
    teacher = FrozenTeacher(timm_resnet, ["layer2"])
    teacher.train()
    assert all(not p.requires_grad for p in teacher.parameters())
    running_mean = timm_resnet.bn1.running_mean.clone()
    pixels = torch.randn(4, 3, 32, 32, requires_grad=True)
    output = teacher(pixels)
    assert not output.logits.requires_grad
    assert not output.features["layer2"].requires_grad
    assert torch.equal(timm_resnet.bn1.running_mean, running_mean)


def test_frozen_teacher_can_pass_gradients_to_its_inputs_without_training(timm_resnet):
    # Prompt fitting: the teacher stays frozen, but its activations carry gradients to what feeds it.
    teacher = FrozenTeacher(timm_resnet, ["layer2"], pass_gradients=True)
    running_mean = timm_resnet.bn1.running_mean.clone()
    pixels = torch.randn(4, 3, 32, 32, requires_grad=True)
    teacher.train()(pixels).logits.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in timm_resnet.parameters())
    assert torch.equal(timm_resnet.bn1.running_mean, running_mean)
    with torch.no_grad():  # an enclosing no_grad still wins
        assert not teacher(pixels).logits.requires_grad


def test_remove_hooks_gives_the_model_back(timm_resnet):
    extractor = FeatureExtractor(timm_resnet, ["layer1", "layer2"])
    assert timm_resnet.layer1._forward_hooks and extractor(torch.zeros(1, 3, 32, 32)).features
    extractor.remove_hooks()
    assert not any(module._forward_hooks for module in timm_resnet.modules())


# ----------------------------------------------------------------------------------------------
# ViT-family token features arrive as (B, C, h, w) maps, class and register tokens dropped.


def test_dinov2_tokens_become_maps_without_class_and_register_tokens():
    from hf_freqkd.models import backbone_info

    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", img_size=28, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()
    info = backbone_info(model)
    assert (info.num_prefix_tokens, info.patch_size, info.layout) == (5, (14, 14), "tokens")
    tokens = {}
    model.blocks[1].register_forward_hook(lambda m, a, out: tokens.__setitem__("raw", out))
    features = FeatureExtractor(model, ["blocks.1"])(torch.randn(2, 3, 28, 28)).features["blocks.1"]
    assert features.shape == (2, 32, 2, 2)
    # Patch token (row 1, col 0) is token 5 + 2 after the 5 prefix tokens.
    torch.testing.assert_close(features[:, :, 1, 0], tokens["raw"][:, 5 + 2, :])


def test_sam_channels_last_blocks_become_maps():
    model = timm.create_model(
        "samvit_base_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=2, num_classes=10
    ).eval()
    features = FeatureExtractor(model, ["blocks.1"])(torch.randn(2, 3, 64, 64)).features["blocks.1"]
    assert features.shape == (2, 32, 4, 4)


def test_transformers_vit_hidden_states_become_maps(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10)
    model = ViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    maps = FeatureExtractor(model, ["hidden_states.2"])(pixels).features["hidden_states.2"]
    tokens = FeatureExtractor(model, ["hidden_states.2"], as_maps=False)(pixels).features["hidden_states.2"]
    assert maps.shape == (2, 32, 4, 4) and tokens.shape == (2, 17, 32)
    torch.testing.assert_close(maps.flatten(2).transpose(1, 2), tokens[:, 1:, :])
