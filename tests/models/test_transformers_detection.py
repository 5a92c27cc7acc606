"""transformers detectors (hf_freqkd.models.transformers_detection): tiny RT-DETR, RT-DETR v2 and
D-FINE models built from configs. Label conversion, losses by part summing to the model's loss,
detections equal to the image processor's post-processing, pyramid and backbone features from the
forward that computes the losses, loading / export as transformers folders, distillation between
two RT-DETRs, and what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    DFineConfig,
    DFineForObjectDetection,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrImageProcessor,
    RTDetrResNetConfig,
    RTDetrV2Config,
    RTDetrV2ForObjectDetection,
    YolosConfig,
    YolosForObjectDetection,
)

import hf_freqkd  # noqa: F401  registers the timm detectors
from hf_freqkd.errors import DataError, ModelError
from hf_freqkd.export import export_student
from hf_freqkd.factory import build_distillation
from hf_freqkd.models import (
    FeatureExtractor,
    backbone_info,
    default_feature_layers,
    load_checkpoint,
    load_model,
    model_num_classes,
    resolve_input_config,
)
from hf_freqkd.models.detection import PAD_CLASS
from hf_freqkd.models.loading import model_architecture
from hf_freqkd.models.transformers_detection import TransformersDetector
from hf_freqkd.tasks import get_task, task_for_model

IMAGE = 64
LEVELS = ["fpn.p3", "fpn.p4", "fpn.p5"]
STAGES = ["backbone.c3", "backbone.c4", "backbone.c5"]
BACKBONE_WIDTHS = [16, 16, 32]  # the tiny ResNet's stages 2-4, at strides 8, 16, 32
FAMILIES = {
    "rt_detr": (RTDetrConfig, RTDetrForObjectDetection, {}),
    "rt_detr_v2": (RTDetrV2Config, RTDetrV2ForObjectDetection, {}),
    "d_fine": (DFineConfig, DFineForObjectDetection, {"lqe_hidden_dim": 8, "hidden_expansion": 0.5}),
}


def tiny_config(family: str = "rt_detr", width: int = 16, decoder_layers: int = 2, **overrides):
    config_class, _, extra = FAMILIES[family]
    backbone = RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, *BACKBONE_WIDTHS], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    return config_class(
        backbone_config=backbone, encoder_in_channels=BACKBONE_WIDTHS, encoder_hidden_dim=width, encoder_ffn_dim=32,
        encoder_attention_heads=2, d_model=width, decoder_in_channels=[width] * 3, decoder_ffn_dim=32,
        decoder_layers=decoder_layers, decoder_attention_heads=2, decoder_n_points=2, num_queries=10, num_denoising=4,
        num_labels=3, **{**extra, **overrides},
    )


def tiny_model(family: str = "rt_detr", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family][1](tiny_config(family, **overrides))


def detector(family: str = "rt_detr", seed: int = 0, **overrides) -> TransformersDetector:
    return TransformersDetector(tiny_model(family, seed, **overrides))


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def box_labels() -> torch.Tensor:
    """Two images: two objects, and one object plus a padding row (the collator's layout)."""
    return torch.tensor([
        [[0, 8.0, 8.0, 30.0, 40.0], [2, 30.0, 20.0, 60.0, 60.0]],
        [[1, 0.0, 0.0, 64.0, 64.0], [PAD_CLASS, 0.0, 0.0, 0.0, 0.0]],
    ])


class ModelOutputs:
    """Records what the wrapped transformers model returned in the wrapper's forward."""

    def __init__(self, wrapper: TransformersDetector):
        self.outputs = []
        wrapper.model.register_forward_hook(lambda module, args, kwargs, output: self.outputs.append(output), with_kwargs=True)

    @property
    def last(self):
        return self.outputs[-1]


# -- labels in ---------------------------------------------------------------------------------------


def test_labels_become_class_labels_and_normalised_cxcywh_as_the_image_processor_makes_them():
    model = detector()
    # a 64 x 128 (H x W) input: x is divided by the width, y by the height
    labels = torch.tensor([[[2, 8.0, 16.0, 24.0, 48.0], [PAD_CLASS, 0.0, 0.0, 0.0, 0.0]], [[0, 0.0, 0.0, 128.0, 64.0], [1, 64.0, 0.0, 96.0, 16.0]]])
    targets = model.targets(labels, (64, 128))
    assert [target["class_labels"].tolist() for target in targets] == [[2], [0, 1]]
    assert all(target["class_labels"].dtype == torch.long for target in targets)
    assert targets[0]["boxes"].tolist() == [[0.125, 0.5, 0.125, 0.5]]
    assert targets[1]["boxes"].tolist() == [[0.5, 0.5, 1.0, 1.0], [0.625, 0.125, 0.25, 0.25]]
    # RTDetrImageProcessor turns the same COCO box (x, y, w, h = 8, 16, 16, 32) into the same target
    annotation = {"image_id": 0, "annotations": [{"bbox": [8, 16, 16, 32], "category_id": 2, "area": 512, "iscrowd": 0}]}
    processed = RTDetrImageProcessor()(images=torch.zeros(3, 64, 128, dtype=torch.uint8), annotations=annotation, do_resize=False, return_tensors="pt")
    assert processed["labels"][0]["class_labels"].tolist() == targets[0]["class_labels"].tolist()
    assert torch.equal(processed["labels"][0]["boxes"], targets[0]["boxes"])


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4)])
def test_labels_that_are_not_box_rows_are_refused(shape):
    with pytest.raises(ModelError, match=rf"detection labels of shape {tuple(shape)} are invalid".replace("(", r"\(").replace(")", r"\)")):
        detector().train()(images(), torch.zeros(shape))


def test_a_class_outside_the_models_classes_is_refused():
    labels = box_labels()
    labels[0, 1, 0] = 3
    with pytest.raises(DataError, match=r"label class 3 is invalid: RTDetrForObjectDetection has the classes 0 \.\. 2"):
        detector().train()(images(), labels)


def test_training_without_labels_is_refused():
    with pytest.raises(ModelError, match="a detector in training mode needs labels"):
        detector().train()(images())


# -- losses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_losses_by_part_hold_every_weighted_term_once_and_sum_to_the_models_loss(family):
    model = detector(family, decoder_layers=3)
    recorded = ModelOutputs(model)
    output = model.train()(images(), box_labels())
    assert output.detections is None
    loss_dict = recorded.last.loss_dict
    assert set(output.losses) == {"classification", "box_l1", "box_giou", "auxiliary", "encoder", "denoising"}
    assert output.losses["classification"] is loss_dict["loss_vfl"]
    assert output.losses["box_l1"] is loss_dict["loss_bbox"] and output.losses["box_giou"] is loss_dict["loss_giou"]
    # the encoder's proposals are the last auxiliary entry (no FGL / DDF terms there: they have no corners)
    encoder_index = max(int(key.rsplit("_", 1)[1]) for key in loss_dict if "_aux_" in key)
    expected = {
        "encoder": [key for key in loss_dict if key.endswith(f"_aux_{encoder_index}")],
        "auxiliary": [key for key in loss_dict if "_aux_" in key and not key.endswith(f"_aux_{encoder_index}")],
        "denoising": [key for key in loss_dict if "_dn_" in key],
    }
    assert len(expected["encoder"]) == 3 and len(expected["auxiliary"]) >= 6 and len(expected["denoising"]) >= 9
    for part, keys in expected.items():
        assert output.losses[part].item() == pytest.approx(sum(loss_dict[key].item() for key in keys), rel=1e-6), part
    total = torch.stack(list(output.losses.values())).sum()
    assert total.item() == pytest.approx(recorded.last.loss.item(), rel=1e-6)
    assert sum(len(keys) for keys in expected.values()) + 3 == len(loss_dict)
    if family == "d_fine":
        assert any(key.startswith("loss_fgl_aux_") for key in expected["auxiliary"]) and any(key.startswith("loss_ddf_") for key in loss_dict)


def test_the_parts_are_the_models_weighted_terms():
    # weights 1 for every term: the L1 part grows by exactly the config's weight ratio
    plain = detector(weight_loss_bbox=1.0).eval()(images(), box_labels()).losses
    weighted = detector(weight_loss_bbox=5.0).eval()(images(), box_labels()).losses
    assert weighted["box_l1"].item() == pytest.approx(5 * plain["box_l1"].item(), rel=1e-5)
    assert weighted["classification"].item() == pytest.approx(plain["classification"].item(), rel=1e-6)


def test_eval_with_labels_gives_losses_without_denoising_and_detections():
    model = detector()
    output = model.eval()(images(), box_labels())
    assert set(output.losses) == {"classification", "box_l1", "box_giou", "auxiliary", "encoder"}
    assert output.detections.shape == (2, 10, 6)
    assert not model.training


def test_padding_rows_change_no_loss():
    model = detector().eval()
    labels = box_labels()
    padded = torch.cat([labels, torch.tensor([[[PAD_CLASS, 0.0, 0.0, 0.0, 0.0]]] * 2)], dim=1)
    for name, value in model(images(), labels).losses.items():
        assert model(images(), padded).losses[name].item() == pytest.approx(value.item(), rel=1e-6), name


def test_images_without_objects_have_no_box_terms_and_still_train():
    model = detector().train()
    output = model(images(), torch.full((2, 1, 5), float(PAD_CLASS)))
    assert output.losses["box_l1"].item() == 0 and output.losses["box_giou"].item() == 0
    assert output.losses["classification"].item() > 0
    torch.stack(list(output.losses.values())).sum().backward()
    assert model.model.model.decoder.class_embed[-1].weight.grad.abs().sum() > 0


# -- detections out ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_detections_are_the_image_processors_post_processing(family):
    model = detector(family).eval()
    recorded = ModelOutputs(model)
    detections = model(images()).detections
    assert detections.shape == (2, 10, 6) and detections.dtype == torch.float32
    # every row kept at threshold 0 (the default), sorted by score
    processed = RTDetrImageProcessor().post_process_object_detection(recorded.last, threshold=0.0, target_sizes=[(IMAGE, IMAGE)] * 2)
    for rows, expected in zip(detections, processed):
        assert torch.equal(rows[:, :4], expected["boxes"])
        assert torch.equal(rows[:, 4], expected["scores"])
        assert torch.equal(rows[:, 5], expected["labels"].float())
        assert torch.all(rows[:-1, 4] >= rows[1:, 4])


def test_rows_at_or_below_the_score_threshold_are_padding():
    model = detector().eval()
    threshold = model(images()).detections[:, :, 4].median().item()
    model.score_threshold = threshold
    recorded = ModelOutputs(model)
    detections = model(images()).detections
    processed = RTDetrImageProcessor().post_process_object_detection(recorded.last, threshold=threshold, target_sizes=[(IMAGE, IMAGE)] * 2)
    kept = [len(expected["scores"]) for expected in processed]
    assert 0 < sum(kept) < 20
    for rows, expected, count in zip(detections, processed, kept):
        assert torch.equal(rows[:count, :4], expected["boxes"]) and torch.equal(rows[:count, 4], expected["scores"])
        assert torch.equal(rows[count:], torch.tensor([0.0, 0.0, 0.0, 0.0, PAD_CLASS, PAD_CLASS]).expand(10 - count, 6))


def test_boxes_are_in_input_pixels_on_non_square_inputs():
    model = detector().eval()
    recorded = ModelOutputs(model)
    detections = model(torch.randn(1, 3, 64, 128)).detections
    processed = RTDetrImageProcessor().post_process_object_detection(recorded.last, threshold=0.0, target_sizes=[(64, 128)])
    assert torch.equal(detections[0, :, :4], processed[0]["boxes"])


# -- features ----------------------------------------------------------------------------------------


def test_pyramid_levels_are_the_default_layers_named_by_stride():
    model = detector()
    assert model.feature_info == [
        {"module": "fpn.p3", "num_chs": 16, "reduction": 8},
        {"module": "fpn.p4", "num_chs": 16, "reduction": 16},
        {"module": "fpn.p5", "num_chs": 16, "reduction": 32},
    ]
    assert default_feature_layers(model) == LEVELS
    info = backbone_info(model)
    assert info.stage_layers == tuple(LEVELS) and info.layout == "maps"


def test_feature_extractor_reads_levels_and_stages_from_the_forward_that_computes_the_losses():
    model = detector()
    recorded = ModelOutputs(model)
    extractor = FeatureExtractor(model, LEVELS + STAGES).train()
    output = extractor(images(), box_labels())
    assert output.logits is None and set(output.losses) >= {"classification", "denoising"}
    for name, level in zip(LEVELS, recorded.last.encoder_last_hidden_state):
        assert output.features[name] is level
    shapes = {name: tuple(feature.shape) for name, feature in output.features.items()}
    assert shapes == {
        "fpn.p3": (2, 16, 8, 8), "fpn.p4": (2, 16, 4, 4), "fpn.p5": (2, 16, 2, 2),
        "backbone.c3": (2, 16, 8, 8), "backbone.c4": (2, 16, 4, 4), "backbone.c5": (2, 32, 2, 2),
    }
    # the backbone taps hold the backbone's stage maps (before the encoder's input projection)
    stage_maps = model.model.model.backbone.model(images()).feature_maps
    assert torch.allclose(output.features["backbone.c5"], stage_maps[-1])
    # gradients of a feature loss reach the backbone
    output.features["fpn.p3"].pow(2).mean().backward()
    assert model.model.model.backbone.model.embedder.embedder[0].convolution.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_without_predictions_only_backbone_and_encoder_run_and_give_the_same_features(family):
    model = detector(family).eval()
    extractor = FeatureExtractor(model, LEVELS + STAGES)
    full = extractor(images())
    extractor.predictions = False
    decoder_calls = []
    model.model.model.decoder.register_forward_hook(lambda *args: decoder_calls.append(1))
    short = extractor(images())
    assert short.logits is None and short.losses is None and decoder_calls == []
    for name in LEVELS + STAGES:
        assert torch.equal(short.features[name], full.features[name]), name
    # with labels the losses are computed whatever predict says
    assert model(images(), box_labels(), predict=False).losses is not None


def test_hidden_state_names_and_unknown_layers_are_refused_naming_the_levels():
    with pytest.raises(ModelError, match="layer 'hidden_states.1' does not exist in TransformersDetector; stage layers: fpn.p3, fpn.p4, fpn.p5"):
        FeatureExtractor(detector(), ["hidden_states.1"])


def test_an_unwrapped_transformers_detector_is_refused_naming_the_wrapper():
    with pytest.raises(ModelError, match=r"RTDetrForObjectDetection is a transformers object detector: wrap it as TransformersDetector\(model\)"):
        FeatureExtractor(tiny_model())


def test_unsupported_detectors_and_non_detectors_are_refused():
    yolos = YolosForObjectDetection(YolosConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=[32, 32], patch_size=16, num_detection_tokens=2))
    with pytest.raises(ModelError, match=r"YolosForObjectDetection \(model_type 'yolos'\) is not supported as a detector: expected one of rt_detr, rt_detr_v2, d_fine"):
        TransformersDetector(yolos)
    with pytest.raises(ModelError, match="Linear is not a transformers model"):
        TransformersDetector(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="already a TransformersDetector"):
        TransformersDetector(detector())


# -- the model as the rest of hf_freqkd sees it ------------------------------------------------------


def test_task_classes_input_config_and_architecture():
    model = detector()
    assert task_for_model(model) is get_task("detection")
    assert model.num_classes == model_num_classes(model) == 3
    assert model.config is model.model.config
    assert resolve_input_config(model) == {"input_size": (3, 640, 640), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear", "crop_pct": 1.0}
    assert model_architecture(model) == "RTDetrForObjectDetection"


def test_load_model_wraps_a_saved_transformers_detector_and_export_writes_its_folder(tmp_path):
    original = tiny_model()
    original.save_pretrained(tmp_path / "saved")
    model = load_model(str(tmp_path / "saved"))
    assert isinstance(model, TransformersDetector) and isinstance(model.model, RTDetrForObjectDetection)
    reference = TransformersDetector(original).eval()
    expected = reference(images()).detections
    assert torch.equal(model.eval()(images()).detections, expected)
    # a new class count rebuilds the class heads
    assert load_model(str(tmp_path / "saved"), num_classes=5).num_classes == 5
    # export: the transformers model's own folder, which transformers and load_model read back
    folder = export_student(model, tmp_path / "student")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "rt_detr" and config["architectures"] == ["RTDetrForObjectDetection"]
    assert (folder / "model.safetensors").is_file()
    reloaded = AutoModelForObjectDetection.from_pretrained(folder).eval()
    assert torch.equal(TransformersDetector(reloaded).eval()(images()).detections, expected)
    assert torch.equal(load_model(str(folder)).eval()(images()).detections, expected)


def test_a_trainer_checkpoint_of_the_distiller_loads_into_a_fresh_detector(tmp_path):
    trained = detector(seed=3)
    state = {f"student.model.{key}": value for key, value in trained.state_dict().items()}
    state["methods.feature_mse.adapters.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "checkpoint.pt")
    fresh = detector(seed=0)
    load_checkpoint(fresh, str(tmp_path / "checkpoint.pt"))
    assert torch.equal(fresh.eval()(images()).detections, trained.eval()(images()).detections)


# -- distillation ------------------------------------------------------------------------------------


def test_feature_mse_trains_an_rt_detr_student_from_a_wider_rt_detr_teacher():
    student, teacher = detector(seed=0), detector(seed=1, width=32)
    parts = build_distillation(student, teacher, {"feature_mse": {}}, sample_input=torch.zeros(1, 3, IMAGE, IMAGE))
    assert parts.task is get_task("detection")
    assert parts.distiller.student.layers == tuple(LEVELS) and parts.teacher.layers == tuple(LEVELS)
    teacher_output = parts.teacher(images())
    # feature_mse reads no teacher predictions: the teacher stops after its encoder
    assert teacher_output.logits is None and not any(f.requires_grad for f in teacher_output.features.values())
    assert [tuple(f.shape[1:2]) for f in teacher_output.features.values()] == [(32,)] * 3
    output = parts.distiller.train()(images(), box_labels(), teacher_output.logits, teacher_output.features)
    assert set(output.loss_terms) == {
        "loss_classification", "loss_box_l1", "loss_box_giou", "loss_auxiliary", "loss_encoder", "loss_denoising", "loss_feature_mse",
    }
    assert torch.isfinite(output.loss) and output.loss_terms["loss_feature_mse"].item() > 0
    assert output.loss.item() == pytest.approx(sum(value.item() for value in output.loss_terms.values()), rel=1e-5)
    output.loss_terms["loss_feature_mse"].backward()
    encoder_block = student.model.model.encoder.fpn_blocks[0].conv1.conv.weight
    assert encoder_block.grad is not None and encoder_block.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in teacher.parameters())
    # the label term alone backpropagates into the decoder heads too
    student.zero_grad()
    output = parts.distiller(images(), box_labels(), teacher_output.logits, teacher_output.features)
    output.loss.backward()
    assert student.model.model.decoder.class_embed[-1].weight.grad.abs().sum() > 0


def test_an_rt_detr_student_pairs_with_a_d_fine_teacher():
    get_task("detection").check_models(detector(), detector("d_fine", width=32))


def test_timm_and_transformers_detectors_do_not_distil_into_each_other():
    import timm

    timm_detector = timm.create_model("retinanet_resnet8", num_classes=3)
    message = (
        r"the student is a transformers detector \(RTDetrForObjectDetection\) but the teacher is a timm detector "
        r"\(retinanet_resnet8\): detection distillation pairs detectors of one library"
    )
    with pytest.raises(ModelError, match=message):
        build_distillation(detector(), timm_detector, {"feature_mse": {}}, sample_input=torch.zeros(1, 3, IMAGE, IMAGE))
    with pytest.raises(ModelError, match=r"the student is a timm detector \(retinanet_resnet8\) but the teacher is a transformers detector"):
        get_task("detection").check_models(timm_detector, detector())


def test_rt_detr_pairs_with_other_strides_are_refused_naming_the_levels():
    with pytest.raises(ModelError, match=r"the FPN levels of the student \(fpn.p3 \(stride 8\), fpn.p4 \(stride 16\), fpn.p5 \(stride 32\)\) and the teacher \(fpn.p2"):
        get_task("detection").check_models(detector(), detector(seed=1, feat_strides=[4, 8, 16]))
