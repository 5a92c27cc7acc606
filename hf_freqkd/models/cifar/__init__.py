"""The CIFAR knowledge-distillation model zoo of the CRD / mdistiller code bases, registered in timm.

Importing this package registers (``timm.create_model(name, num_classes=100)``; 32x32 inputs,
CIFAR-100 normalization in ``pretrained_cfg``, no pretrained weights):

* ResNets (``resnet.py``): ``resnet8``, ``resnet14``, ``resnet20``, ``resnet32``, ``resnet44``,
  ``resnet56``, ``resnet110``, ``resnet8x4``, ``resnet32x4``, and CRD's bottleneck ``cifar_resnet50``
* Wide ResNets (``wide_resnet.py``): ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``
* VGG-BN (``vgg.py``): ``cifar_vgg8``, ``cifar_vgg11``, ``cifar_vgg13``, ``cifar_vgg16``, ``cifar_vgg19``
* MobileNetV2 x0.5, CRD's ``mobile_half`` (``mobilenetv2.py``): ``cifar_mobilenetv2``
* ShuffleNets (``shufflenet.py``): ``cifar_shufflenetv1``, ``cifar_shufflenetv2``

The ``cifar_`` prefix marks families whose plain names timm already uses for ImageNet models.
Every model has timm's classifier interface, ``features_only=True`` support and a ``feature_info``
whose ``module`` entries name the stage outputs (hookable with ``model.get_submodule``). Parameter
names match the CRD code, so its checkpoints load as-is (MobileNetV2 through timm's loader, which
renames its classifier): ``timm.create_model("resnet32x4", pretrained=True,
pretrained_cfg_overlay=dict(file="ckpt_epoch_240.pth"))``.
"""

from . import mobilenetv2, resnet, shufflenet, vgg, wide_resnet  # noqa: F401  (registration side effect)

CIFAR_MODELS = (
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "cifar_resnet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "cifar_vgg8", "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19",
    "cifar_mobilenetv2", "cifar_shufflenetv1", "cifar_shufflenetv2",
)

__all__ = ["CIFAR_MODELS"]
