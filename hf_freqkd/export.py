"""Export the student alone, in its own library's format, so users load it without hf_freqkd's trainer.

timm students: ``timm.models.save_for_hf`` (config.json + model.safetensors), loadable with
``timm.create_model("local-dir:PATH", pretrained=True)`` (CIFAR-zoo students once ``hf_freqkd`` is
imported). transformers students: ``save_pretrained``, loadable with
``AutoModelForImageClassification.from_pretrained(PATH)``. Teacher and method modules are never
part of an export.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .models.loading import is_transformers_model


def export_student(student: nn.Module, output_dir: str | Path) -> Path:
    """Write ``student`` to ``output_dir`` and return the folder."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if is_transformers_model(student):
        student.save_pretrained(output_dir, safe_serialization=True)
    else:
        from timm.models import save_for_hf

        save_for_hf(
            student,
            str(output_dir),
            model_args=dict(getattr(student, "hf_freqkd_model_args", {}) or {}),
            safe_serialization=True,
        )
    return output_dir
