"""Which student feature layer imitates which teacher layer.

Explicit lists (``student_layers`` / ``teacher_layers`` in a method's options) are paired in order
and must have the same length. Without them each side's stage layers (timm ``feature_info``,
transformers ``hidden_states.<i>``) are used: CNN pairs need the same number of stages; a ViT
side (whose "stages" are its blocks) contributes evenly spaced blocks, ending at the last one, to
match the other side's count.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import MethodOptionsError
from ..types import BackboneInfo


def evenly_spaced(layers: Sequence[str], count: int) -> list[str]:
    """``count`` layers spread over ``layers``, the last one included (deepest knowledge last)."""
    if count > len(layers):
        raise MethodOptionsError(f"cannot pick {count} layers out of {len(layers)} ({', '.join(layers)})")
    step = len(layers) / count
    return [layers[round((i + 1) * step) - 1] for i in range(count)]


def pair_layers(
    student: BackboneInfo,
    teacher: BackboneInfo,
    student_layers: Sequence[str] | None = None,
    teacher_layers: Sequence[str] | None = None,
    method: str = "method",
) -> list[tuple[str, str]]:
    """``[(student_layer, teacher_layer), ...]`` from shallow to deep."""
    if student_layers and teacher_layers:
        if len(student_layers) != len(teacher_layers):
            raise MethodOptionsError(
                f"{method}: student_layers has {len(student_layers)} entries but teacher_layers has "
                f"{len(teacher_layers)}; they are paired in order and must have the same length"
            )
        return list(zip(student_layers, teacher_layers))
    student_side = list(student_layers or student.stage_layers)
    teacher_side = list(teacher_layers or teacher.stage_layers)
    if not student_side or not teacher_side:
        empty = "student" if not student_side else "teacher"
        raise MethodOptionsError(f"{method}: the {empty} exposes no stage layers; set {empty}_layers to module names")
    if len(student_side) == len(teacher_side):
        return list(zip(student_side, teacher_side))
    student_is_vit = student.layout != "maps" and not student_layers
    teacher_is_vit = teacher.layout != "maps" and not teacher_layers
    if student_is_vit and len(student_side) > len(teacher_side):
        return list(zip(evenly_spaced(student_side, len(teacher_side)), teacher_side))
    if teacher_is_vit and len(teacher_side) > len(student_side):
        return list(zip(student_side, evenly_spaced(teacher_side, len(student_side))))
    raise MethodOptionsError(
        f"{method}: the student has {len(student_side)} stage layers ({', '.join(student_side)}) and the teacher "
        f"{len(teacher_side)} ({', '.join(teacher_side)}); set student_layers and teacher_layers to pair them explicitly"
    )


def check_paired_maps(method: str, pairs: Sequence[tuple[str, str]], student_shapes, teacher_shapes) -> None:
    """Every paired feature must be a (B, C, H, W) map: a ModelError naming the first one that is not."""
    from ..errors import ModelError

    for student_layer, teacher_layer in pairs:
        for role, layer, shape in (("student", student_layer, student_shapes[student_layer]), ("teacher", teacher_layer, teacher_shapes[teacher_layer])):
            if len(shape) != 4:
                raise ModelError(f"{method}: the {role} feature '{layer}' has shape {tuple(shape)}, not a (B, C, H, W) map")
