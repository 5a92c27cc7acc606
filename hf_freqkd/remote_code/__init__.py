"""The modeling code an export carries, so that transformers loads it without hf_freqkd.

A network only hf_freqkd registers in timm (the CIFAR zoo, ``segfpn_*``, the detectors) cannot be
built by a user who has transformers, timm and torch but not hf_freqkd. Its export therefore
carries, as custom architectures on the Hub do, ``modeling_hf_freqkd.py`` (this folder) and the
library's own files that define those networks, copied unchanged, and names its classes in
``config.json``'s ``auto_map``: ``AutoModelFor<Task>.from_pretrained(PATH, trust_remote_code=True)``
and ``pipeline(<task>, model=PATH, trust_remote_code=True)`` then build it. The files are copied
flat, which keeps their relative imports (``from ._base import ...``) valid; they import only
torch, timm and (for detectors) torchvision. Students of architectures timm already knows carry
no code: transformers' TimmWrapper classes load them as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MODELING_FILE = "modeling_hf_freqkd.py"
_MODELS = Path(__file__).resolve().parent.parent / "models"

#: hf_freqkd's network files an export carries (relative to hf_freqkd/models), copied under their own names
NETWORK_FILES = (
    "cifar/_base.py",
    "cifar/resnet.py",
    "cifar/wide_resnet.py",
    "cifar/vgg.py",
    "cifar/mobilenetv2.py",
    "cifar/shufflenet.py",
    "backbone_networks.py",
    "segmentation.py",
    "detection.py",
)

#: the image processor every such export names: timm's evaluation transform plus the pipelines' post-processing
IMAGE_PROCESSOR_CLASS = "HfFreqKDImageProcessor"


def is_registered_by_hf_freqkd(architecture: str | None) -> bool:
    """True when ``architecture`` is a timm name hf_freqkd registers (CIFAR zoo, ``segfpn_*``, detectors):
    timm builds it only after ``import hf_freqkd``, transformers only with the code an export carries."""
    import timm
    from timm.models import model_entrypoint

    if not architecture or not timm.is_model(architecture):
        return False
    return model_entrypoint(architecture).__module__.split(".")[0] == "hf_freqkd"


#: the pipeline class of ``modeling_hf_freqkd.py`` for each task's pipeline tag
PIPELINE_CLASSES = {
    "image-classification": "HfFreqKDImageClassificationPipeline",
    "image-segmentation": "HfFreqKDImageSegmentationPipeline",
    "object-detection": "HfFreqKDObjectDetectionPipeline",
}


def write_remote_code(folder: str | Path, task) -> dict[str, dict]:
    """Copy the modeling file and the network files into ``folder``; return the ``config.json`` keys
    that name their classes: ``auto_map`` (the task's model class and the image processor) and
    ``custom_pipelines`` (the task's pipeline)."""
    folder = Path(folder)
    for relative in NETWORK_FILES:
        shutil.copyfile(_MODELS / relative, folder / Path(relative).name)
    shutil.copyfile(Path(__file__).resolve().parent / MODELING_FILE, folder / MODELING_FILE)
    module = MODELING_FILE.removesuffix(".py")
    auto_class, model_class = task.remote_code_classes
    keys = {"auto_map": {auto_class: f"{module}.{model_class}", "AutoImageProcessor": f"{module}.{IMAGE_PROCESSOR_CLASS}"}}
    if task.pipeline_tag in PIPELINE_CLASSES:
        keys["custom_pipelines"] = {
            task.pipeline_tag: {"impl": f"{module}.{PIPELINE_CLASSES[task.pipeline_tag]}", "pt": [auto_class]}
        }
    return keys
