"""transformers' RT-DETR-class detectors (RT-DETR, RT-DETR v2, D-FINE) as students and teachers.

:class:`TransformersDetector` wraps a ``*ForObjectDetection`` model so that it speaks the interface
of the timm detectors (:mod:`hf_freqkd.models.detection`): ``forward(pixel_values, labels=None)``
returns a :class:`~hf_freqkd.models.detection.DetectorOutput` with the losses by part and the padded
detections, ``feature_info`` names its pyramid levels, ``num_classes`` its class count.
:func:`hf_freqkd.models.load_model` wraps every such model it loads (a Hub id or a
``save_pretrained`` folder), so a config names an RT-DETR student like any other::

    student_model: PekingU/rtdetr_r18vd        # loaded with AutoModelForObjectDetection, then wrapped

Labels: the padded rows ``(B, M, 5)`` of class, x1, y1, x2, y2 in input pixels (class -100 pads)
become transformers' targets, one dict per image with ``class_labels`` (long) and ``boxes``
(``(M, 4)`` cx, cy, w, h divided by the input's width and height), the layout RTDetrImageProcessor
gives and RT-DETR's loss reads. Boxes are taken as they come: the data pipeline already clamps them
to the image.

Losses: the model computes its own loss (Hungarian matching, varifocal classification, L1 and GIoU
box terms, plus D-FINE's FGL and DDF), each term already multiplied by its ``config.weight_loss_*``
(vfl 1, bbox 5, giou 2, fgl 0.15, ddf 1.5 by default) and summed into ``output.loss``. Its
``loss_dict`` is read into parts, every weighted term in exactly one part, so the parts sum to the
model's loss:

* ``classification`` (``loss_vfl``), ``box_l1`` (``loss_bbox``), ``box_giou`` (``loss_giou``): the
  final predictions' terms (a final ``loss_fgl`` / ``loss_ddf`` would be ``fine_localization`` /
  ``decoupled_distillation``; transformers computes D-FINE's only on intermediate predictions);
* ``auxiliary``: every term of the decoder's intermediate predictions (``*_aux_<i>`` but the last);
  in eval mode D-FINE runs only its final layer and has none;
* ``encoder``: the terms of the encoder's top-k query proposals (the last ``*_aux_<i>``: both loss
  functions append them after the decoder's);
* ``denoising``: the denoising queries' terms (``*_dn_<i>``; training mode only).

The label term (``ce``) logs them as ``loss_classification``, ``loss_box_l1``, ... and sums them.

Detections (eval mode): exactly what ``RTDetrImageProcessor.post_process_object_detection`` does
with ``use_focal_loss=True`` and ``target_sizes`` the input size: sigmoid scores, the top
``num_queries`` (query, class) pairs of the flattened scores, their boxes from cx, cy, w, h to
x1, y1, x2, y2 scaled to input pixels (not clipped). Rows scoring at most ``score_threshold``
(0: keep all, as COCO evaluation does) are padding: zeros with score and class -100.

Features: the pyramid the decoder reads, tapped by name so feature methods hook them like the FPN
levels of the timm detectors, from the same forward that computes the losses:

* ``fpn.p3``, ``fpn.p4``, ``fpn.p5``: the hybrid encoder's outputs (AIFI, then the top-down FPN
  and bottom-up PAN), ``encoder_hidden_dim`` channels at strides 8, 16, 32 (``config.feat_strides``;
  the level is named by log2 of its stride). These are ``feature_info``, so the default layers of
  feature methods; RT-DETR and D-FINE students and teachers pair them by name and stride whatever
  their backbones (feature_mse's adapters bridge other widths).
* ``backbone.c3``, ``backbone.c4``, ``backbone.c5``: the backbone's stage maps that feed the
  encoder, at the same strides, in the backbone's own widths; name them in ``student_layers`` /
  ``teacher_layers`` to distil the backbone instead.

Any module of the wrapped model can be named too (``model.model.encoder.pan_blocks.0``).
``save_pretrained`` and ``config`` are the wrapped model's: an export is the transformers model's
own folder, loadable with ``AutoModelForObjectDetection.from_pretrained``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from ..errors import DataError, ModelError
from .detection import PAD_CLASS, DetectorOutput

#: model types whose outputs, loss dicts and post-processing are the ones this module reads
SUPPORTED_MODEL_TYPES = ("rt_detr", "rt_detr_v2", "d_fine")
#: the final predictions' loss keys -> part names (other keys of that form keep their own name)
_FINAL_LAYER_PARTS = {
    "loss_vfl": "classification",
    "loss_bbox": "box_l1",
    "loss_giou": "box_giou",
    "loss_fgl": "fine_localization",
    "loss_ddf": "decoupled_distillation",
}
_INTERMEDIATE_KEY = re.compile(r"(loss_[a-z]+)_(aux|dn)_(\d+)")
#: RTDetrImageProcessor's defaults, which D-FINE's checkpoints use too: 640 x 640, rescaled to
#: [0, 1] and not normalised (do_normalize=False)
_PROCESSOR_SIZE = 640


def is_object_detection_config(config) -> bool:
    """True if transformers builds ``config`` with ``AutoModelForObjectDetection``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES


def is_unwrapped_transformers_detector(model: nn.Module) -> bool:
    """A transformers ``*ForObjectDetection`` model itself, not wrapped in :class:`TransformersDetector`."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and is_object_detection_config(model.config)


class TransformersDetector(nn.Module):
    """A transformers RT-DETR-class detector with the interface of the timm detectors (module docstring).

    Args:
        model (`PreTrainedModel`): an ``RTDetrForObjectDetection``, ``RTDetrV2ForObjectDetection`` or
            ``DFineForObjectDetection``.
        score_threshold (`float`): detections scoring at most this are padding rows (0 keeps every
            one of the ``num_queries`` top (query, class) pairs).
    """

    is_detection_model = True

    def __init__(self, model: nn.Module, score_threshold: float = 0.0):
        super().__init__()
        from transformers import PreTrainedModel

        if isinstance(model, TransformersDetector):
            raise ModelError("the model is already a TransformersDetector: wrap the transformers model only once")
        if not isinstance(model, PreTrainedModel):
            raise ModelError(f"{type(model).__name__} is not a transformers model: TransformersDetector wraps a transformers *ForObjectDetection model")
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"{type(model).__name__} (model_type {model_type!r}) is not supported as a detector: expected one of "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (RT-DETR-class models: sigmoid class scores, set losses by part)"
            )
        if not 0.0 <= score_threshold < 1.0:
            raise ModelError(f"score_threshold = {score_threshold!r} is invalid: expected a number in [0, 1)")
        self.model = model
        self.score_threshold = float(score_threshold)
        config = model.config
        strides = [int(stride) for stride in config.feat_strides]
        if len(set(strides)) != len(strides) or any(stride < 1 or stride & (stride - 1) for stride in strides):
            raise ModelError(f"{type(model).__name__} has feat_strides {strides}: levels are named by stride, which must be distinct powers of two")
        self.strides = strides
        self.level_names = [f"p{int(math.log2(stride))}" for stride in strides]
        self.stage_names = [f"c{int(math.log2(stride))}" for stride in strides]
        # Identity taps, called on the maps after the forward: hooks on fpn.<level> / backbone.<stage>
        # capture them from the pass that computed the losses.
        self.fpn = nn.Module()
        for name in self.level_names:
            self.fpn.add_module(name, nn.Identity())
        self.backbone = nn.Module()
        for name in self.stage_names:
            self.backbone.add_module(name, nn.Identity())
        self.num_classes = int(config.num_labels)
        self.num_features = int(config.encoder_hidden_dim)
        #: the pyramid levels feature methods read by default (hf_freqkd.models.features.default_feature_layers)
        self.feature_info = [
            {"module": f"fpn.{name}", "num_chs": self.num_features, "reduction": stride}
            for name, stride in zip(self.level_names, strides)
        ]
        channels = getattr(config.backbone_config, "num_channels", 3) if config.backbone_config is not None else 3
        #: what the data pipeline feeds (resolve_input_config): the image processor's size, [0, 1] pixels
        self.default_input_config = {
            "input_size": (int(channels), _PROCESSOR_SIZE, _PROCESSOR_SIZE),
            "mean": (0.0,) * int(channels),
            "std": (1.0,) * int(channels),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }

    @property
    def config(self):
        """The wrapped model's configuration."""
        return self.model.config

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's ``save_pretrained``: an export is a plain transformers folder."""
        return self.model.save_pretrained(*args, **kwargs)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, predict: bool = True) -> DetectorOutput:
        """Losses (given labels) and detections (eval mode). ``predict=False`` without labels runs only the
        backbone and the hybrid encoder and returns neither: a teacher read for its levels needs no decoder."""
        if self.training and labels is None:
            raise ModelError("a detector in training mode needs labels (its losses are computed from the boxes)")
        if not predict and labels is None and not self.training:
            self._tap(*self._encode(pixel_values))
            return DetectorOutput()
        image_size = tuple(pixel_values.shape[-2:])
        targets = None if labels is None else self.targets(labels, image_size)
        stage_maps: list[torch.Tensor] = []

        def keep_stage_maps(module, args, output) -> None:
            # The backbone returns (feature map, mask) pairs, one per encoder input level.
            stage_maps.extend(feature_map for feature_map, _ in output)

        hook = self.model.model.backbone.register_forward_hook(keep_stage_maps)
        try:
            output = self.model(pixel_values=pixel_values, labels=targets)
        finally:
            hook.remove()
        self._tap(stage_maps, output.encoder_last_hidden_state)
        losses = None if targets is None else self.loss_parts(output.loss_dict)
        detections = None if self.training else self.detections(output.logits, output.pred_boxes, image_size)
        return DetectorOutput(losses=losses, detections=detections)

    def _encode(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The backbone's stage maps and the hybrid encoder's levels: the first steps of the model's own
        forward (RTDetrModel, RTDetrV2Model and DFineModel share them), without the decoder."""
        inner = self.model.model
        batch, _, height, width = pixel_values.shape
        pixel_mask = torch.ones((batch, height, width), device=pixel_values.device)
        stage_maps = [feature_map for feature_map, _ in inner.backbone(pixel_values, pixel_mask)]
        projected = [projection(stage_map) for projection, stage_map in zip(inner.encoder_input_proj, stage_maps)]
        return stage_maps, inner.encoder(projected).last_hidden_state

    def _tap(self, stage_maps: list[torch.Tensor], levels: list[torch.Tensor]) -> None:
        for name, stage_map in zip(self.stage_names, stage_maps):
            getattr(self.backbone, name)(stage_map)
        for name, level in zip(self.level_names, levels):
            getattr(self.fpn, name)(level)

    # -- boxes in and out -------------------------------------------------------------------------

    def targets(self, labels: torch.Tensor, image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Padded label rows ``(B, M, 5)`` -> per-image ``{"class_labels", "boxes"}``, boxes as cx, cy, w, h
        divided by the input's width and height (what RTDetrImageProcessor gives and the loss reads)."""
        if labels.dim() != 3 or labels.shape[-1] != 5:
            raise ModelError(f"detection labels of shape {tuple(labels.shape)} are invalid: expected (batch, boxes, 5) rows of class, x1, y1, x2, y2")
        height, width = image_size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=labels.device)
        targets = []
        for rows in labels:
            rows = rows[rows[:, 0] != PAD_CLASS].float()
            classes = rows[:, 0].long()
            if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
                bad = classes[(classes < 0) | (classes >= self.num_classes)][0].item()
                raise DataError(f"label class {bad} is invalid: {type(self.model).__name__} has the classes 0 .. {self.num_classes - 1}")
            x1, y1, x2, y2 = rows[:, 1:].unbind(-1)
            boxes = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1) / scale
            targets.append({"class_labels": classes, "boxes": boxes})
        return targets

    def loss_parts(self, loss_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's weighted loss terms, summed into the parts of the module docstring."""
        encoder_index = max((int(match[3]) for key in loss_dict if (match := _INTERMEDIATE_KEY.fullmatch(key)) and match[2] == "aux"), default=None)
        parts: dict[str, torch.Tensor] = {}
        for key, value in loss_dict.items():
            match = _INTERMEDIATE_KEY.fullmatch(key)
            if match is None:
                name = _FINAL_LAYER_PARTS.get(key, key.removeprefix("loss_"))
            elif match[2] == "dn":
                name = "denoising"
            else:
                name = "encoder" if int(match[3]) == encoder_index else "auxiliary"
            parts[name] = parts[name] + value if name in parts else value
        return parts

    def detections(self, logits: torch.Tensor, pred_boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``(B, num_queries, 6)`` rows x1, y1, x2, y2, score, class, as post_process_object_detection
        (use_focal_loss=True) computes them; rows scoring at most ``score_threshold`` pad."""
        from transformers.image_transforms import center_to_corners_format

        height, width = image_size
        boxes = center_to_corners_format(pred_boxes)
        boxes = boxes * torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        num_queries, num_classes = logits.shape[1], logits.shape[2]
        scores, index = torch.topk(logits.sigmoid().flatten(1), num_queries, dim=-1)
        classes = index % num_classes
        boxes = boxes.gather(dim=1, index=(index // num_classes).unsqueeze(-1).repeat(1, 1, boxes.shape[-1]))
        rows = torch.cat([boxes.float(), scores.float().unsqueeze(-1), classes.float().unsqueeze(-1)], dim=-1)
        padding = scores <= self.score_threshold
        rows[padding] = torch.tensor([0.0, 0.0, 0.0, 0.0, PAD_CLASS, PAD_CLASS], device=rows.device)
        return rows
