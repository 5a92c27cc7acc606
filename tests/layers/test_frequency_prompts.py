"""Frequency prompts: masks, refinement, mask overlaps, the masked band L1, prompt files, and the
relational channel weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_freqkd.frequency import wavelet_decompose, wavelet_reconstruct
from hf_freqkd.layers.frequency_prompts import (
    FrequencyPrompts,
    RelationalChannelWeighting,
    band_masks,
    initial_prompts,
    load_prompts,
    mask_overlap,
    masked_band_l1,
    pair_channel_weights,
    refine_bands,
    save_prompts,
)


@pytest.fixture
def bands():
    return wavelet_decompose(torch.randn(3, 8, 13, 10), levels=3)


def test_masks_are_sigmoid_of_prompts_times_bands_with_orientations_summed(bands):
    prompts = torch.randn(4, 2, 8)
    masks = band_masks(prompts, bands)
    assert len(masks) == 4
    for mask, band in zip(masks, bands.bands()):
        assert mask.shape == (3, 2, *band.shape[-2:])
        assert mask.min() >= 0 and mask.max() <= 1
    # level 2 by hand: sum the three orientations, then P @ R per position
    summed = bands.high[1].sum(dim=2)
    expected = torch.sigmoid(torch.einsum("tc,bchw->bthw", prompts[2], summed))
    torch.testing.assert_close(masks[2], expected)
    expected_low = torch.sigmoid(torch.einsum("tc,bchw->bthw", prompts[0], bands.low))
    torch.testing.assert_close(masks[0], expected_low)


def test_prompts_that_do_not_fit_the_bands_are_rejected(bands):
    with pytest.raises(ValueError, match=r"do not fit 3-level bands: expected \(4, T, C\)"):
        band_masks(torch.randn(3, 2, 8), bands)
    with pytest.raises(ValueError, match="prompts have 6 channels but the feature has 8"):
        band_masks(torch.randn(4, 2, 6), bands)


def test_refinement_sums_masked_bands_over_prompts(bands):
    masks = band_masks(torch.randn(4, 3, 8), bands)
    refined = refine_bands(bands, masks)
    naive_low = (bands.low.unsqueeze(1) * masks[0].unsqueeze(2)).sum(1)
    naive_level3 = (bands.high[2].unsqueeze(1) * masks[3][:, :, None, None]).sum(1)
    torch.testing.assert_close(refined.low, naive_low)
    torch.testing.assert_close(refined.high[2], naive_level3)


def test_masks_summing_to_one_leave_the_feature_unchanged():
    feature = torch.randn(2, 8, 11, 9)
    bands = wavelet_decompose(feature, levels=3)
    # zero prompts: every mask is sigmoid(0) = 0.5, and two of them sum to 1
    refined = wavelet_reconstruct(refine_bands(bands, band_masks(torch.zeros(4, 2, 8), bands)))
    torch.testing.assert_close(refined, feature, rtol=1e-5, atol=1e-5)


def binary_masks(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(1, len(rows), 1, -1)


def test_jaccard_is_intersection_over_union_of_binary_masks_over_distinct_pairs():
    assert mask_overlap(binary_masks([1, 1, 0, 0], [0, 0, 1, 1]), "jaccard").item() == pytest.approx(0.0)
    assert mask_overlap(binary_masks([1, 1, 0, 0], [1, 1, 0, 0]), "jaccard").item() == pytest.approx(1.0)
    # |A & B| = 1, |A | B| = 3; the pairs (A, B) and (B, A) are averaged, self pairs left out
    assert mask_overlap(binary_masks([1, 1, 0, 0], [0, 1, 1, 0]), "jaccard").item() == pytest.approx(1 / 3)
    # three masks: pairs AB = 1/3, AC = 0, BC = 1/3
    three = binary_masks([1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1])
    assert mask_overlap(three, "jaccard").item() == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)


def test_soft_jaccard_and_dice_on_soft_masks():
    a, b = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([0.5, 0.5, 1.0])
    masks = torch.stack([a, b]).reshape(1, 2, 1, 3)
    inter = (a * b).sum()
    assert mask_overlap(masks, "jaccard").item() == pytest.approx((inter / (a.sum() + b.sum() - inter)).item())
    assert mask_overlap(masks, "dice").item() == pytest.approx((2 * inter / ((a * a).sum() + (b * b).sum())).item())


def test_overlap_of_a_single_prompt_is_zero_and_unknown_kind_is_rejected():
    assert mask_overlap(torch.rand(2, 1, 3, 3)).item() == 0.0
    with pytest.raises(ValueError, match="dissimilarity 'iou' is invalid"):
        mask_overlap(torch.rand(2, 2, 3, 3), "iou")


def test_overlap_decreases_as_masks_separate():
    base = torch.rand(2, 1, 5, 5)
    close = torch.cat([base, base * 0.9], dim=1)
    apart = torch.cat([base, 1 - base], dim=1)
    for kind in ("jaccard", "dice"):
        assert mask_overlap(apart, kind) < mask_overlap(close, kind)


@pytest.mark.parametrize("level", [None, 0, 2])
def test_masked_l1_equals_the_released_broadcast_form(bands, level):
    student = wavelet_decompose(torch.randn(3, 8, 13, 10), levels=3)
    masks = band_masks(torch.randn(4, 2, 8), bands)
    if level is None:  # low band, (B, C, h, w)
        s, t, m = student.low, bands.low, masks[0]
        naive = F.l1_loss(s.unsqueeze(1) * m.unsqueeze(2), t.unsqueeze(1) * m.unsqueeze(2))
    else:  # high bands, (B, C, 3, h, w)
        s, t, m = student.high[level], bands.high[level], masks[level + 1]
        naive = F.l1_loss(s.unsqueeze(1) * m[:, :, None, None], t.unsqueeze(1) * m[:, :, None, None])
    torch.testing.assert_close(masked_band_l1(s, t, m), naive)


def test_masked_l1_with_channel_weights_and_without_mask(bands):
    student = wavelet_decompose(torch.randn(3, 8, 13, 10), levels=3)
    weights = torch.rand(3, 8)
    mask = band_masks(torch.randn(4, 2, 8), bands)[1]
    s, t = student.high[0], bands.high[0]
    naive = ((s - t).abs().unsqueeze(1) * mask[:, :, None, None] * weights[:, None, :, None, None, None]).mean()
    torch.testing.assert_close(masked_band_l1(s, t, mask, weights), naive)
    torch.testing.assert_close(masked_band_l1(s, t), F.l1_loss(s, t))


def test_masked_l1_rejects_mismatched_bands():
    with pytest.raises(ValueError, match="differ"):
        masked_band_l1(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 3, 3, 4, 4))


def test_frozen_prompts_are_buffers_and_trainable_ones_parameters():
    values = {"layer3": torch.randn(4, 2, 16), "blocks.11": torch.randn(4, 2, 8)}
    frozen = FrequencyPrompts(values, trainable=False)
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"prompt_0", "prompt_1"}  # persistent: checkpointed
    assert not frozen.prompt("layer3").requires_grad
    torch.testing.assert_close(frozen.prompt("blocks.11"), values["blocks.11"])
    trainable = FrequencyPrompts(values, trainable=True)
    assert [p.shape for p in trainable.parameters()] == [(4, 2, 16), (4, 2, 8)]
    with pytest.raises(KeyError, match="no prompts for layer 'layer4'; prompted layers: layer3, blocks.11"):
        frozen.prompt("layer4")


def test_initial_prompts_are_small_gaussians():
    prompts = initial_prompts(channels=256, num_prompts=6, levels=3, std=0.01, generator=torch.Generator().manual_seed(0))
    assert prompts.shape == (4, 6, 256)
    assert prompts.std().item() == pytest.approx(0.01, rel=0.1) and abs(prompts.mean().item()) < 1e-3


def test_prompts_file_round_trip(tmp_path):
    values = {"layer4": torch.randn(4, 2, 16), "layer3": torch.randn(4, 2, 8)}
    path = save_prompts(tmp_path / "sub" / "p.safetensors", values, wavelet="haar", mode="zero", levels=3, extra_metadata={"steps": 5})
    loaded = load_prompts(path)
    assert loaded.layers == ["layer4", "layer3"]  # fitting order kept
    for layer, value in values.items():
        assert torch.equal(loaded.prompts[layer], value)
    assert (loaded.wavelet, loaded.mode, loaded.levels, loaded.num_prompts) == ("haar", "zero", 3, 2)
    assert loaded.metadata["steps"] == "5" and '"layer4": [4, 2, 16]' in loaded.metadata["shapes"]


def test_loading_something_else_fails_clearly(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="prompts file .* does not exist"):
        load_prompts(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="is not a frequency prompts file"):
        load_prompts(tmp_path / "weights.safetensors")
    (tmp_path / "junk.safetensors").write_text("not safetensors")
    with pytest.raises(ValueError, match="could not be read as a safetensors file"):
        load_prompts(tmp_path / "junk.safetensors")


# ----------------------------------------------------------------------------------------------
# Relational channel weighting


def test_relation_is_row_stochastic_and_weights_lie_in_unit_interval():
    module = RelationalChannelWeighting(channels=6, context_channels=10, hidden=4, temperature=0.5)
    feature, context = torch.randn(2, 6, 5, 5), torch.randn(2, 10, 3, 3)  # context resized to 5x5
    relation = module.relation(feature, context)
    assert relation.shape == (2, 6, 6)
    torch.testing.assert_close(relation.sum(-1), torch.ones(2, 6))
    omega = module(feature, context)
    assert omega.shape == (2, 6) and omega.min() > 0 and omega.max() < 1


def test_relation_depends_on_where_channels_respond_not_on_their_scale():
    torch.manual_seed(0)
    module = RelationalChannelWeighting(channels=4, hidden=8)
    feature, context = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    permutation = torch.randperm(36)
    shuffled_context = context.flatten(2)[:, :, permutation].reshape(1, 4, 6, 6)
    both_shuffled = feature.flatten(2)[:, :, permutation].reshape(1, 4, 6, 6)
    # positions permuted jointly: same co-locations, same relation
    torch.testing.assert_close(module.relation(both_shuffled, shuffled_context), module.relation(feature, context))
    # context positions permuted alone: co-locations change, so does the relation
    assert not torch.allclose(module.relation(feature, shuffled_context), module.relation(feature, context), atol=1e-3)
    # channel scales do not matter (teacher and student features differ in scale)
    torch.testing.assert_close(module.relation(feature * 7.0, context * 0.1), module.relation(feature, context))


def test_relational_weights_have_mean_one_and_train_the_gate():
    module = RelationalChannelWeighting(channels=5, hidden=3)
    teacher, student = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4, requires_grad=True)
    weights = pair_channel_weights(module(teacher), module(student))
    torch.testing.assert_close(weights.mean(dim=1), torch.ones(2))
    (weights * torch.rand(2, 5)).sum().backward()
    assert module.gate[0].weight.grad.abs().sum() > 0 and module.psi.weight.grad.abs().sum() > 0
    assert student.grad is not None


def test_relational_weighting_runs_in_float32_under_autocast():
    module = RelationalChannelWeighting(channels=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        omega = module(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16))
    assert omega.dtype == torch.float32
    with pytest.raises(ValueError, match="temperature = 0"):
        RelationalChannelWeighting(channels=4, temperature=0)
