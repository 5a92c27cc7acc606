"""Models: loading by name or folder, feature extraction, the CIFAR zoo, segmentation networks and detectors registered in timm."""

from . import cifar  # noqa: F401  registers the CIFAR distillation zoo in timm
from . import segmentation  # noqa: F401  registers the segfpn segmentation networks in timm
from . import detection  # noqa: F401  registers the retinanet / fcos / fasterrcnn detectors in timm
from ..types import BackboneInfo
from .features import FeatureExtractor, FrozenTeacher, backbone_info, default_feature_layers
from .loading import load_checkpoint, load_model, model_num_classes, read_state_dict, resolve_input_config
from .transformers_detection import TransformersDetector

__all__ = [
    "BackboneInfo",
    "FeatureExtractor",
    "FrozenTeacher",
    "TransformersDetector",
    "backbone_info",
    "default_feature_layers",
    "load_checkpoint",
    "load_model",
    "model_num_classes",
    "read_state_dict",
    "resolve_input_config",
]
