"""Stage pairing between student and teacher layers."""

import pytest

from hf_freqkd.types import BackboneInfo
from hf_freqkd.models.pairing import evenly_spaced, pair_layers

CNN3 = BackboneInfo(("layer1", "layer2", "layer3"))
CNN5 = BackboneInfo(("act1", "layer1", "layer2", "layer3", "layer4"))
VIT12 = BackboneInfo(tuple(f"blocks.{i}" for i in range(12)), num_prefix_tokens=1, patch_size=(16, 16), layout="tokens")


def test_same_stage_count_pairs_in_order():
    assert pair_layers(CNN3, CNN3) == [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")]


def test_vit_student_with_cnn_teacher_uses_evenly_spaced_blocks_ending_at_the_last():
    assert pair_layers(VIT12, CNN3) == [("blocks.3", "layer1"), ("blocks.7", "layer2"), ("blocks.11", "layer3")]
    assert [s for s, _ in pair_layers(CNN3, VIT12)] == ["layer1", "layer2", "layer3"]


def test_cnn_stage_count_mismatch_without_mapping_is_an_error_listing_both():
    with pytest.raises(ValueError, match=r"student has 3 stage layers \(layer1, layer2, layer3\) and the teacher 5"):
        pair_layers(CNN3, CNN5, method="fam")


def test_explicit_layers_must_have_equal_length():
    assert pair_layers(CNN3, CNN5, ["layer3"], ["layer4"]) == [("layer3", "layer4")]
    with pytest.raises(ValueError, match="student_layers has 1 entries but teacher_layers has 2"):
        pair_layers(CNN3, CNN5, ["layer3"], ["layer3", "layer4"])


def test_evenly_spaced():
    assert evenly_spaced(list("abcdef"), 2) == ["c", "f"]
    assert evenly_spaced(list("abc"), 3) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        evenly_spaced(list("ab"), 3)
