"""The names of a run's classes: from the data, checked against the teacher, carried to the export.

A published student must answer "cat", not ``LABEL_3``. The names come, first to last, from:

1. ``class_names`` given by the user (``DistillationTrainer(class_names=...)``, a config's
   ``class_names:``), e.g. for a dataset whose labels are plain integers;
2. the data: a classification set's ``ClassLabel`` column (an image folder's class folders, a Hub or
   parquet dataset's feature, the generated sets'), a detection set's ``ClassLabel`` categories, the
   generated segmentation set's kinds (see :meth:`hf_freqkd.tasks.Task.class_names`);
3. the student itself, when it already names exactly as many classes (a transformers ``id2label``
   other than ``LABEL_<i>``, timm's ``label_names``).

A teacher that names its classes must name the data's, in the same order: class ``i`` of the
teacher's logits is distilled into class ``i`` of the student's. The export writes the names both as
timm's ``label_names`` and as transformers' ``id2label`` / ``label2id`` (:mod:`hf_freqkd.export`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from torch import nn

from .errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


def check_class_names(names, num_classes: int, source: str) -> list[str]:
    """``names`` as a list of distinct non-empty strings, one per class; a ConfigError otherwise."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ConfigError(f"{source} = {names!r} is invalid: expected a list of {num_classes} class names")
    names = list(names)
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ConfigError(f"{source} holds {bad[:3]!r}: expected a non-empty string for every class")
    if len(names) != num_classes:
        raise ConfigError(f"{source} names {len(names)} classes but the model predicts {num_classes}: give one name per class, in class-id order")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{source} names {', '.join(repeated)} more than once: every class needs its own name")
    return names


_DEFAULT_TRANSFORMERS_LABEL = re.compile(r"LABEL_\d+")


def model_class_names(model: nn.Module | None) -> list[str] | None:
    """The class names a model carries (transformers ``id2label`` unless the default ``LABEL_<i>``,
    timm's ``pretrained_cfg['label_names']``), or None."""
    if model is None:
        return None
    config = getattr(getattr(model, "model", model), "config", None) if getattr(model, "is_detection_model", False) else getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if isinstance(id2label, dict) and id2label:
        names = [str(id2label[index]) for index in sorted(id2label)]
        return None if all(_DEFAULT_TRANSFORMERS_LABEL.fullmatch(name) for name in names) else names
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(names, dict):  # timm allows {id: name} when ids have gaps
        return None
    return [str(name) for name in names] if names else None


def check_teacher_class_names(teacher: nn.Module | None, names: list[str] | None) -> None:
    """Refuse a teacher that names other classes than the data, or the same ones in another order."""
    teacher_names = model_class_names(teacher)
    if not teacher_names or not names or teacher_names == names:
        return
    if sorted(teacher_names) == sorted(names):
        index = next(i for i, (ours, theirs) in enumerate(zip(names, teacher_names)) if ours != theirs)
        raise ModelError(
            f"the teacher names the data's classes in another order (its class {index} is '{teacher_names[index]}', "
            f"the data's is '{names[index]}'): its logits would teach the wrong classes. Use a teacher trained with "
            "this class order, or give the data's classes in the teacher's order (class_names, and labels to match)"
        )
    unknown = [name for name in teacher_names if name not in names]
    missing = [name for name in names if name not in teacher_names]
    details = "; ".join(
        part
        for part in (
            f"the teacher's {', '.join(map(repr, unknown[:5]))} are not among the data's" if unknown else "",
            f"the data's {', '.join(map(repr, missing[:5]))} are not among the teacher's" if missing else "",
        )
        if part
    )
    raise ModelError(
        f"the teacher was trained on other classes than the data's ({details}): distil from a teacher trained on these classes"
    )


def resolve_class_names(given, train_dataset, task, student: nn.Module, teacher: nn.Module | None, num_classes: int) -> list[str] | None:
    """The run's class names (see the module docstring), checked, and checked against the teacher."""
    if given is not None:
        names = check_class_names(given, num_classes, "class_names")
    else:
        names = task.class_names(train_dataset)
        if names is not None and len(names) != num_classes:
            # num_classes set above the data's count: the extra outputs have no name to give.
            logger.warning("the dataset names %d classes but the model predicts %d: the export names none", len(names), num_classes)
            names = None
        if names is not None:
            names = check_class_names(names, num_classes, "the dataset's class names")
    check_teacher_class_names(teacher, names)
    if names is None:
        own = model_class_names(student)
        names = own if own and len(own) == num_classes else None
    return names
