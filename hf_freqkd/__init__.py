"""hf_freqkd: frequency-domain knowledge distillation on Hugging Face ``Trainer``.

Public entry points::

    from hf_freqkd import DistillationTrainer, DistillationConfig
"""

from . import models  # noqa: F401  registers the CIFAR zoo in timm's registry
from .config import DataArguments, DistillationConfig, ModelArguments, parse_config
from .distiller import Distiller, DistillerOutput
from .methods import DistillationMethod, MethodOptions, available_methods, register_method
from .trainer import DistillationTrainer

__version__ = "0.1.0"

__all__ = [
    "DataArguments",
    "DistillationConfig",
    "DistillationMethod",
    "DistillationTrainer",
    "Distiller",
    "DistillerOutput",
    "MethodOptions",
    "ModelArguments",
    "available_methods",
    "parse_config",
    "register_method",
]
