"""Distillation methods, one file each. Importing this package registers all of them.

To add a method: write ``hf_freqkd/methods/<name>.py`` with a :class:`DistillationMethod` subclass
decorated by :func:`register_method`, and import it below.
"""

from ..types import FeatureRequest, LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, describe_options
from .registry import available_methods, build_methods, get_method_class, normalize_method_specs, register_method

# Registration happens on import; keep one line per method file.
from . import ce, kd  # noqa: E402,F401  isort:skip
from . import dkd, figkd  # noqa: E402,F401  isort:skip
from . import freekd  # noqa: E402,F401  isort:skip
from . import fam  # noqa: E402,F401  isort:skip
from . import feature_mse  # noqa: E402,F401  isort:skip

__all__ = [
    "DistillationMethod",
    "FeatureRequest",
    "LogitsAndFeatures",
    "MethodOptions",
    "available_methods",
    "build_methods",
    "describe_options",
    "get_method_class",
    "normalize_method_specs",
    "register_method",
]
