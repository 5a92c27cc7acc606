"""Modeling code that travels with a student exported by hf_freqkd, for ``trust_remote_code=True``.

hf_freqkd copies this file into an export whose architecture only hf_freqkd registers in timm (the
CIFAR zoo, ``segfpn_*``, ``retinanet_*`` / ``fcos_*`` / ``fasterrcnn_*``), next to hf_freqkd's own,
unchanged, files that define those networks, and names its classes in ``config.json``'s
``auto_map``. transformers then loads the export without hf_freqkd installed::

    from transformers import AutoModelForImageClassification, pipeline
    model = AutoModelForImageClassification.from_pretrained(PATH, trust_remote_code=True)
    classify = pipeline("image-classification", model=PATH, trust_remote_code=True)

The config is transformers' ``TimmWrapperConfig`` (timm's ``config.json``: ``architecture``,
``model_args``, ``pretrained_cfg``, ``label_names``); each model class builds the network with
``timm.create_model`` as transformers' TimmWrapper classes do, once the architecture is registered.
The image processor is timm's evaluation transform read from ``pretrained_cfg`` (what hf_freqkd
evaluated the student with) plus the post-processing transformers' segmentation and detection
pipelines call. This file imports only torch, timm and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.pipelines import ImageClassificationPipeline, ImageSegmentationPipeline, ObjectDetectionPipeline
from transformers.models.timm_wrapper.image_processing_timm_wrapper import TimmWrapperImageProcessor
from transformers.models.timm_wrapper.modeling_timm_wrapper import (
    TimmWrapperForImageClassification,
    TimmWrapperPreTrainedModel,
)
from transformers.utils import ModelOutput


def register_architectures(architecture: str) -> None:
    """Register hf_freqkd's networks in timm from the files beside this one, unless already there
    (hf_freqkd is imported, or an export was loaded before in this process)."""
    if timm.is_model(architecture):
        return
    # Importing each file runs its @register_model decorators.
    from .resnet import resnet8  # noqa: F401  CIFAR ResNets (and _base.py, which every zoo file uses)
    from .wide_resnet import wrn_16_1  # noqa: F401
    from .vgg import cifar_vgg8  # noqa: F401
    from .mobilenetv2 import cifar_mobilenetv2  # noqa: F401
    from .shufflenet import cifar_shufflenetv1  # noqa: F401
    from .segmentation import FPNSegmenter  # noqa: F401  segfpn_*
    from .detection import TimmDetector  # noqa: F401  retinanet_*, fcos_*, fasterrcnn_*

    if not timm.is_model(architecture):
        raise ValueError(f"architecture '{architecture}' is not among the networks this export carries")


def _create_network(config, **overrides) -> nn.Module:
    register_architectures(config.architecture)
    model_args = {**(config.model_args or {}), **overrides}
    return timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels, **model_args)


class HfFreqKDImageClassifier(TimmWrapperForImageClassification):
    """An image classifier of hf_freqkd's CIFAR zoo: transformers' timm wrapper, after registering it."""

    def __init__(self, config):
        register_architectures(config.architecture)
        super().__init__(config)


class HfFreqKDSemanticSegmenter(TimmWrapperPreTrainedModel):
    """A ``segfpn_*`` network: ``logits`` (B, num_labels, H, W) at the input size."""

    def __init__(self, config):
        super().__init__(config)
        self.timm_model = _create_network(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> SemanticSegmenterOutput:
        logits = self.timm_model(pixel_values.to(self.dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


@dataclass
class HfFreqKDDetectionOutput(ModelOutput):
    """``detections`` (B, N, 6): rows x1, y1, x2, y2 (input pixels), score, class; padding rows have
    class -100. ``loss`` is the sum of the detector's losses when labels are given (training mode)."""

    loss: torch.Tensor | None = None
    detections: torch.Tensor | None = None


class HfFreqKDObjectDetector(TimmWrapperPreTrainedModel):
    """A ``retinanet_*`` / ``fcos_*`` / ``fasterrcnn_*`` detector on a timm backbone."""

    def __init__(self, config):
        super().__init__(config)
        self.timm_model = _create_network(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> HfFreqKDDetectionOutput:
        output = self.timm_model(pixel_values.to(self.dtype), labels=labels)
        loss = sum(output.losses.values()) if output.losses else None
        return HfFreqKDDetectionOutput(loss=loss, detections=output.detections)


class HfFreqKDImageProcessor(TimmWrapperImageProcessor):
    """timm's evaluation transform of the export's ``pretrained_cfg``, and the pipelines' post-processing.

    Images are converted to the network's channels first (grayscale for one, RGB for three), as
    hf_freqkd converted them for training and evaluation: a grayscale photo works with an RGB network.
    """

    def preprocess(self, images, return_tensors="pt"):
        if not isinstance(images, torch.Tensor):
            from transformers.image_transforms import to_pil_image
            from transformers.image_utils import make_flat_list_of_images

            mode = "L" if self.data_config["input_size"][0] == 1 else "RGB"
            images = [to_pil_image(image).convert(mode) for image in make_flat_list_of_images(images)]
        return super().preprocess(images, return_tensors=return_tensors)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """A (H, W) class map per image, the logits resized (bilinear) to each target size first."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        maps = []
        for index in range(logits.shape[0]):
            image_logits = logits[index : index + 1].float()
            if target_sizes is not None:
                height, width = (int(side) for side in target_sizes[index])
                if image_logits.shape[-2:] != (height, width):
                    image_logits = nn.functional.interpolate(image_logits, size=(height, width), mode="bilinear", align_corners=False)
            maps.append(image_logits[0].argmax(dim=0))
        return maps

    def post_process_object_detection(self, outputs, threshold: float = 0.5, target_sizes=None) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"scores", "labels", "boxes"}`` above ``threshold``, boxes (x1, y1, x2, y2) in the
        pixels of each target size (the network saw the image resized to its input size)."""
        detections = outputs["detections"] if isinstance(outputs, dict) else outputs.detections
        _, input_height, input_width = self.data_config["input_size"]
        results = []
        for index, rows in enumerate(detections):
            kept = rows[(rows[:, 5] >= 0) & (rows[:, 4] > threshold)]
            boxes = kept[:, :4].clone()
            if target_sizes is not None:
                height, width = (float(side) for side in target_sizes[index])
                scale = boxes.new_tensor([width / input_width, height / input_height] * 2)
                boxes = boxes * scale
            results.append({"scores": kept[:, 4], "labels": kept[:, 5].long(), "boxes": boxes})
        return results


# -- pipelines ----------------------------------------------------------------------------------
# ``config.json``'s ``custom_pipelines`` names these for the export's task. They are transformers'
# pipelines as they are, except for the check that logs "The model ... is not supported": its list
# holds transformers' own classes, never a class a repository carries.


class _ExportPipeline:
    def check_model_type(self, supported_models) -> None:
        pass


class HfFreqKDImageClassificationPipeline(_ExportPipeline, ImageClassificationPipeline):
    pass


class HfFreqKDImageSegmentationPipeline(_ExportPipeline, ImageSegmentationPipeline):
    pass


class HfFreqKDObjectDetectionPipeline(_ExportPipeline, ObjectDetectionPipeline):
    pass
