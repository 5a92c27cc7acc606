"""Detectors (hf_freqkd.models.detection): RetinaNet, FCOS and Faster R-CNN heads on an FPN over a
timm backbone. Losses by part in training, padded detections in evaluation, padding label rows and
empty images, Faster R-CNN's background shift, FPN levels as named features from the same forward
as the losses, export and reload, bad arguments."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torchvision.ops import box_iou

import hf_freqkd  # noqa: F401  registers the detectors
from hf_freqkd.errors import ModelError
from hf_freqkd.export import export_student
from hf_freqkd.models import FeatureExtractor, backbone_info, load_model, model_num_classes
from hf_freqkd.models.detection import PAD_CLASS, TimmDetector, is_detection_model

LOSS_NAMES = {
    "retinanet": {"classification", "box_regression"},
    "fcos": {"classification", "box_regression", "centerness"},
    "fasterrcnn": {"objectness", "rpn_box_regression", "classification", "box_regression"},
}
FAMILIES = list(LOSS_NAMES)
IMAGE = 64


def detector(family: str, seed: int = 0, backbone: str = "resnet8", **kwargs) -> TimmDetector:
    torch.manual_seed(seed)
    return timm.create_model(f"{family}_{backbone}", num_classes=3, **kwargs)


def images(batch: int = 2, height: int = IMAGE, width: int = IMAGE) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def box_labels() -> torch.Tensor:
    """Two images: two objects, and one object plus a padding row (the collator's layout)."""
    return torch.tensor(
        [
            [[0, 4.0, 4.0, 20.0, 20.0], [1, 30.0, 30.0, 60.0, 50.0]],
            [[2, 10.0, 10.0, 40.0, 40.0], [PAD_CLASS, 0.0, 0.0, 0.0, 0.0]],
        ]
    )


def losses_of(model: TimmDetector, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)  # Faster R-CNN samples anchors and proposals: the same draw for every call
    return model(pixels, labels).losses


# -- training and evaluation outputs ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_training_forward_returns_the_losses_by_part_and_gradients_reach_body_fpn_and_head(family):
    model = detector(family).train()
    output = model(images(), box_labels())
    assert output.detections is None
    assert set(output.losses) == LOSS_NAMES[family]
    for name, value in output.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    # A randomly initialised head does not classify: its classification loss is well above zero.
    assert output.losses["classification"].item() > 0.01
    sum(output.losses.values()).backward()
    parts = {
        "body": model.body.conv1.weight,
        "fpn": model.fpn.pyramid.inner_blocks[0][0].weight,
        "classifier": model.get_classifier().weight,
    }
    if family == "fasterrcnn":
        parts["rpn"] = model.detector.rpn.head.conv[0][0].weight
    for part, parameter in parts.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, part


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_forward_returns_padded_rows_of_box_score_class(family):
    model = detector(family, score_threshold=0.0, detections_per_image=7).eval()
    with torch.no_grad():
        output = model(images(height=64, width=48))
    assert output.losses is None
    detections = output.detections
    assert detections.shape == (2, 7, 6)
    valid = detections[..., 5] != PAD_CLASS
    assert valid.any()
    boxes, scores, classes = detections[valid][:, :4], detections[valid][:, 4], detections[valid][:, 5]
    assert set(classes.tolist()) <= {0.0, 1.0, 2.0}
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (boxes[:, [0, 2]] <= 48).all() and (boxes[:, [1, 3]] <= 64).all() and (boxes >= 0).all()
    for image in detections:
        kept = image[image[:, 5] != PAD_CLASS]
        assert torch.equal(kept[:, 4], kept[:, 4].sort(descending=True).values)  # best first
        # padding only after the detections, with score and class -100 and an empty box
        padding = image[len(kept):]
        assert (padding[:, 4:] == PAD_CLASS).all() and (padding[:, :4] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_nothing_above_the_score_threshold_gives_only_padding_rows(family):
    model = detector(family, score_threshold=1.0, detections_per_image=4).eval()
    with torch.no_grad():
        detections = model(images()).detections
    assert detections.shape == (2, 4, 6)
    assert (detections[..., 4:] == PAD_CLASS).all() and (detections[..., :4] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_with_labels_returns_losses_and_detections_and_keeps_eval_mode(family):
    model = detector(family).eval()
    with torch.no_grad():
        output = model(images(), box_labels())
    assert set(output.losses) == LOSS_NAMES[family]
    assert all(torch.isfinite(value) for value in output.losses.values())
    assert output.detections.shape == (2, 100, 6)
    # Faster R-CNN switches its RPN and RoI heads to training mode for the losses, and back.
    assert not any(module.training for module in model.modules())


def test_eval_losses_are_the_training_losses_when_batch_norm_is_fixed():
    model = detector("retinanet").eval()
    pixels, labels = images(), box_labels()
    with torch.no_grad():
        evaluated = model(pixels, labels).losses
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()  # running statistics in both passes: the only difference between the modes
        trained = model(pixels, labels).losses
    assert evaluated.keys() == trained.keys()
    for name in evaluated:
        torch.testing.assert_close(evaluated[name], trained[name])


def test_training_without_labels_is_refused():
    with pytest.raises(ModelError, match="training mode needs labels"):
        detector("retinanet").train()(images())


@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 4), (2, 3, 6)])
def test_labels_that_are_not_box_rows_are_refused(shape):
    with pytest.raises(ModelError, match=rf"detection labels of shape \({', '.join(map(str, shape))}\) are invalid"):
        detector("retinanet").train()(images(), torch.zeros(shape))


# -- label rows: padding, empty images, Faster R-CNN's background class ----------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_rows_change_no_loss(family):
    model = detector(family).train()
    pixels, labels = images(), box_labels()
    # A padding row holds whatever the collator put there: an invalid box must not matter either.
    extra = torch.tensor([[PAD_CLASS, 50.0, 50.0, 3.0, 3.0]]).expand(2, 1, 5)
    padded = torch.cat([labels, extra, torch.full((2, 1, 5), float(PAD_CLASS))], dim=1)
    plain, with_padding = losses_of(model, pixels, labels), losses_of(model, pixels, padded)
    assert plain.keys() == with_padding.keys()
    for name in plain:
        assert torch.equal(plain[name], with_padding[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_images_without_objects_are_background_only(family):
    model = detector(family).train()
    empty = torch.full((2, 1, 5), float(PAD_CLASS))
    for labels in (empty, torch.zeros(2, 0, 5)):
        losses = losses_of(model, images(), labels)
        assert set(losses) == LOSS_NAMES[family]
        assert all(torch.isfinite(value) for value in losses.values())
        # no object: nothing to regress, but the background is still classified
        assert losses["box_regression"].item() == 0.0
        assert losses["classification"].item() > 0.0
    # one image with an object, one without: both are used
    mixed = box_labels().clone()
    mixed[1] = PAD_CLASS
    losses = losses_of(model, images(), mixed)
    assert losses["box_regression"].item() > 0.0 and all(torch.isfinite(value) for value in losses.values())


def test_targets_drop_padding_and_shift_classes_past_faster_rcnns_background():
    labels = box_labels()
    for family, shift in (("retinanet", 0), ("fcos", 0), ("fasterrcnn", 1)):
        targets = detector(family).targets(labels)
        assert [t["labels"].tolist() for t in targets] == [[0 + shift, 1 + shift], [2 + shift]], family
        assert torch.equal(targets[0]["boxes"], labels[0, :, 1:])
        assert torch.equal(targets[1]["boxes"], labels[1, :1, 1:])
        assert targets[0]["labels"].dtype == torch.long and targets[0]["boxes"].dtype == torch.float32


def test_faster_rcnn_learns_class_0_and_reports_it_unshifted():
    """Class 0 is an object class, not Faster R-CNN's background: trained on one box of class 0,
    the detector's best detection is class 0 on that box (class -1 or no detection if the shift were lost)."""
    model = detector("fasterrcnn").train()
    pixels = images(batch=1, height=32, width=32)
    labels = torch.tensor([[[0, 6.0, 8.0, 26.0, 24.0]]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = sum(model(pixels, labels).losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        best = model.eval()(pixels).detections[0, 0]
    assert best[5].item() == 0.0 and best[4].item() > 0.5
    assert box_iou(best[None, :4], labels[0, :, 1:]).item() > 0.5


# -- FPN levels as named features -----------------------------------------------------------------


def test_fpn_levels_are_named_by_stride():
    expected = {
        "retinanet_resnet8": [("fpn.p1", 2), ("fpn.p2", 4), ("fpn.p3", 8), ("fpn.p4", 16)],
        "fcos_resnet8": [("fpn.p1", 2), ("fpn.p2", 4), ("fpn.p3", 8), ("fpn.p4", 16)],
        "fasterrcnn_resnet8": [("fpn.p1", 2), ("fpn.p2", 4), ("fpn.p3", 8)],  # one max-pooled level for the RPN
        "retinanet_resnet18": [("fpn.p3", 8), ("fpn.p4", 16), ("fpn.p5", 32), ("fpn.p6", 64), ("fpn.p7", 128)],
    }
    for name, levels in expected.items():
        model = timm.create_model(name, num_classes=3)
        assert [(info["module"], info["reduction"]) for info in model.feature_info] == levels, name
        assert backbone_info(model).stage_layers == tuple(level for level, _ in levels)
        assert all(info["num_chs"] == model.num_features for info in model.feature_info)
    assert timm.create_model("retinanet_resnet18", num_classes=3).num_features == 256


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_extractor_reads_the_levels_of_the_forward_that_computes_the_losses(family):
    model = detector(family).train()
    layers = [info["module"] for info in model.feature_info]
    output = FeatureExtractor(model, layers)(images(height=64, width=48), box_labels())
    assert output.logits is None and set(output.losses) == LOSS_NAMES[family]
    for info in model.feature_info:
        stride = info["reduction"]
        assert tuple(output.features[info["module"]].shape) == (2, 32, 64 // stride, 48 // stride)
    # The maps are in the losses' autograd graph: they come from the same forward, not another one.
    total = sum(output.losses.values())
    gradients = torch.autograd.grad(total, [output.features[name] for name in layers[:-1]], allow_unused=True)
    assert all(gradient is not None and gradient.abs().sum() > 0 for gradient in gradients)


def test_feature_extractor_in_eval_mode_gives_detections_as_logits():
    model = detector("fcos").eval()
    with torch.no_grad():
        output = FeatureExtractor(model, ["fpn.p3"])(images())
    assert output.losses is None and output.logits.shape == (2, 100, 6)
    assert tuple(output.features["fpn.p3"].shape) == (2, 32, 8, 8)


# -- registration, export and reload --------------------------------------------------------------


def test_registered_names_and_generic_names_build_detectors():
    names = timm.list_models("retinanet*") + timm.list_models("fcos*") + timm.list_models("fasterrcnn*")
    assert {"retinanet", "fcos", "fasterrcnn", "retinanet_resnet50", "fcos_resnet18", "fasterrcnn_resnet101"} <= set(names)
    model = timm.create_model("fcos", backbone="resnet20", num_classes=5)
    assert isinstance(model, TimmDetector) and model.family == "fcos" and model_num_classes(model) == 5
    assert model.out_indices == [1, 2]  # the CIFAR zoo: the last two of its three stages feed the FPN
    assert model.pretrained_cfg["mean"] == timm.models.get_pretrained_cfg("resnet20").mean
    assert model.pretrained_cfg["first_conv"] == "body.conv1" and model.get_submodule("body.conv1").in_channels == 3
    assert is_detection_model(model) and not is_detection_model(timm.create_model("resnet8"))
    assert model.detector.head.classification_head.num_classes == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_to_identical_detections(family, tmp_path):
    # Detection arguments are part of the architecture: an export must keep them.
    kwargs = {"score_threshold": 0.0, "detections_per_image": 10}
    torch.manual_seed(3)
    model = load_model(f"{family}_resnet8", num_classes=3, model_kwargs=kwargs).eval()
    folder = export_student(model, tmp_path / "student")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == f"{family}_resnet8" and config["num_classes"] == 3
    assert {key: config["model_args"][key] for key in kwargs} == kwargs
    probe = images()
    with torch.no_grad():
        expected = model(probe).detections
        by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(probe).detections
        by_hf_freqkd = load_model(str(folder)).eval()(probe).detections
    assert expected.shape == (2, 10, 6) and (expected[..., 5] != PAD_CLASS).all()
    assert torch.equal(by_timm, expected) and torch.equal(by_hf_freqkd, expected)


# -- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TimmDetector(family="yolo"), r"family = 'yolo' is invalid: expected one of retinanet, fcos, fasterrcnn"),
        (lambda: timm.create_model("retinanet", family="yolo"), r"'yolo'.*retinanet, fcos, fasterrcnn"),
        (lambda: timm.create_model("retinanet_resnet8", family="fcos"), r"retinanet_resnet8 is a retinanet detector, not fcos"),
        (lambda: timm.create_model("retinanet_resnet8", num_classes=0), r"num_classes = 0 is invalid"),
        (lambda: TimmDetector(num_classes=2.5), r"num_classes = 2.5 is invalid"),
        (lambda: timm.create_model("retinanet_resnet8", out_indices=[1, 1]), r"out_indices = \[1, 1\] is invalid"),
        (lambda: timm.create_model("retinanet_resnet8", out_indices=[1, -2]), r"out_indices = \[1, -2\] is invalid"),
        (lambda: timm.create_model("retinanet_resnet8", out_indices=[1, 5]), r"out_indices = \[1, 5\] is invalid.*3 stages"),
        (lambda: timm.create_model("retinanet_resnet8", out_indices=[]), r"out_indices = \[\] is invalid"),
        (lambda: timm.create_model("retinanet_resnet8", backbone="resnet18"), r"retinanet_resnet8 has the backbone resnet8, not resnet18"),
        (lambda: timm.create_model("fcos", backbone="no_such_net"), r"backbone 'no_such_net' is not a timm model name"),
        # a plain ViT's blocks share one stride: they cannot be FPN levels named by stride
        (
            lambda: timm.create_model("retinanet", backbone="vit_tiny_patch16_224", backbone_args={"img_size": 32, "depth": 3}),
            r"backbone 'vit_tiny_patch16_224' gives the stages \[0, 1, 2\] at strides \[16, 16, 16\]: an FPN needs stages of distinct strides",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(build, message):
    with pytest.raises(ModelError, match=message):
        build()
