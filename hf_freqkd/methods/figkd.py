"""``figkd``: FiGKD, high-frequency logit distillation (Kim, arXiv 2505.11897, ESWA 2026).

Each logit vector z in R^C is a 1-D signal along the class axis. A J-level discrete wavelet
transform splits it into a low-frequency approximation cA_J (the coarse "content" the label
already teaches) and detail bands cD_1..cD_J (the teacher's fine pattern between similar
classes). Only the detail is transferred; the approximation is discarded.

Default loss (``target: highpass_kl``): with z_hf = z - lowpass_J(z), the reconstruction from the
kept bands alone (same length as z),

    loss_figkd = T^2 * KL(softmax(z_hf_teacher / T) || softmax(z_hf_student / T)),

averaged over the batch. The paper publishes neither code nor the exact loss: every choice below
is a documented option, and the defaults (haar, J = 1, all detail bands, high-pass reconstruction
KL, T = 4, symmetric padding, natural class order, weight 4) are this library's reading of it
(see shared/methods.md, section 1). ``bands: all`` with ``highpass_kl`` is exactly Hinton KD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import torch
import torch.nn.functional as F

from ..frequency import wavelet1d
from ..types import LogitsAndFeatures
from .base import DistillationMethod, MethodOptions, require, require_temperature
from .kd import kl_divergence_with_temperature
from .registry import register_method

# Above this class count the C x C matmul costs more than ptwt's convolutions
# (benchmarks/bench_logit_losses.py: at C = 1000, B = 256 ptwt was faster; at C <= 200 the matrix was ~10x faster).
MATRIX_BACKEND_MAX_CLASSES = 512


@dataclass
class FiGKDOptions(MethodOptions):
    weight: float = field(default=4.0, metadata={"help": "beta, the weight of the FiGKD term (>= 0; paper sweep 1, 2, 4, 8)."})
    wavelet: str = field(default="haar", metadata={"help": "Any PyWavelets discrete wavelet (haar, db2, sym4, ...)."})
    levels: int = field(default=1, metadata={"help": "Decomposition levels J, 1 .. pywt.dwt_max_level(C, wavelet)."})
    bands: Union[Literal["high", "low", "all"], list[int]] = field(
        default="high",
        metadata={
            "help": "Bands transferred: 'high' = all details cD_1..cD_J, 'low' = cA_J only, 'all' = everything "
            "(= KD), or a list of band numbers (0 = cA_J, j = cD_j, 1 finest)."
        },
    )
    target: Literal["highpass_kl", "coef_kl", "coef_mse"] = field(
        default="highpass_kl",
        metadata={
            "help": "Compared quantity: KL on the reconstruction from the kept bands (same length as z), KL over "
            "the concatenated kept coefficients, or MSE on those coefficients."
        },
    )
    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T (> 0) of the KL targets."})
    mode: str = field(
        default="symmetric",
        metadata={"help": "Signal extension at the borders (odd C): symmetric, zero, reflect, periodic, periodization, ..."},
    )
    class_order: Literal["natural", "teacher_sorted"] = field(
        default="natural",
        metadata={"help": "Order of the class axis: label order, or sorted by the teacher's logits per sample."},
    )
    backend: Literal["auto", "ptwt", "matrix"] = field(
        default="auto",
        metadata={
            "help": "ptwt transforms, or one precomputed matmul built from PyWavelets (faster; needed for "
            f"periodization). auto = matrix up to {MATRIX_BACKEND_MAX_CLASSES} classes."
        },
    )
    #: what ``hf-freqkd tune`` varies by default (syntax: hf_freqkd/tune/space.py); bands: all is kd,
    #: which the search reports as kd (see equivalent)
    search_space: ClassVar[dict[str, Any]] = {
        "weight": {"low": 0.5, "high": 16.0, "log": True},
        "temperature": {"low": 1.0, "high": 8.0},
        "levels": {"low": 1, "high": 3},
        "bands": ["high", "all"],
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        wavelet1d.check_wavelet(self.wavelet)
        require(self.levels >= 1, "levels", self.levels, "an integer >= 1")
        require_temperature(self.temperature, "temperature")
        require(self.mode in wavelet1d.MATRIX_MODES, "mode", self.mode, f"one of {', '.join(wavelet1d.MATRIX_MODES)}")
        if self.backend == "ptwt":
            require(self.mode in wavelet1d.PTWT_MODES, "mode", self.mode, f"one of {', '.join(wavelet1d.PTWT_MODES)} with backend ptwt")
        if isinstance(self.bands, list):
            require(len(self.bands) > 0, "bands", self.bands, "a non-empty list of band numbers")
            bad = [b for b in self.bands if not 0 <= b <= self.levels]
            require(not bad, "bands", self.bands, f"band numbers in 0..{self.levels} (0 = cA_{self.levels}, j = cD_j)")

    def equivalent(self) -> tuple[str, dict[str, Any]] | None:
        """``("kd", options)`` when these options compute exactly kd's loss: every band kept and the KL
        taken on the reconstruction, which is then the logits themselves (whatever the wavelet, levels,
        padding or class order: a permutation of both sides leaves the KL unchanged). Else None."""
        if self.target == "highpass_kl" and self.band_numbers() == list(range(self.levels + 1)):
            return "kd", {"weight": self.weight, "temperature": self.temperature}
        return None

    def band_numbers(self) -> list[int]:
        if self.bands == "high":
            return list(range(1, self.levels + 1))
        if self.bands == "low":
            return [0]
        if self.bands == "all":
            return list(range(self.levels + 1))
        return sorted(set(self.bands))


@register_method
class FiGKD(DistillationMethod):
    name = "figkd"
    description = "FiGKD: KL on the high-frequency (wavelet detail) part of the logits only (2025)."
    options_class = FiGKDOptions

    def build(self, student_shapes, teacher_shapes, num_classes: int) -> None:
        options = self.options
        deepest = wavelet1d.max_level(num_classes, options.wavelet)
        require(
            options.levels <= deepest,
            "levels",
            options.levels,
            f"at most {deepest} for {num_classes} classes with wavelet {options.wavelet} (pywt.dwt_max_level)",
        )
        use_matrix = options.backend == "matrix" or (
            options.backend == "auto" and (num_classes <= MATRIX_BACKEND_MAX_CLASSES or options.mode not in wavelet1d.PTWT_MODES)
        )
        self.num_classes = num_classes
        self.bands = options.band_numbers()
        self.operator = wavelet1d.WaveletBandOperator(options.wavelet, num_classes, options.levels, options.mode) if use_matrix else None

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """What is compared for one side: the kept-band reconstruction or the kept coefficients."""
        # Autocast would run the convolutions / matmul in bf16 again, which ptwt rejects: stay in float32.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._transform_float32(logits.float())

    def _transform_float32(self, logits: torch.Tensor) -> torch.Tensor:
        reconstruct = self.options.target == "highpass_kl"
        if self.operator is not None:
            return self.operator.reconstruct(logits, self.bands) if reconstruct else self.operator.coefficients(logits, self.bands)
        coefficients = wavelet1d.wavedec(logits, self.options.wavelet, self.options.levels, self.options.mode)
        if reconstruct:
            return wavelet1d.waverec(wavelet1d.keep_bands(coefficients, self.bands), self.options.wavelet, logits.shape[-1])
        order = wavelet1d.band_order(self.options.levels)
        return torch.cat([c for band, c in zip(order, coefficients) if band in self.bands], dim=-1)

    def forward(self, student: LogitsAndFeatures, teacher: LogitsAndFeatures | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        student_logits, teacher_logits = student.logits.float(), teacher.logits.float()
        if self.options.class_order == "teacher_sorted":
            # Adjacent positions then hold classes the teacher finds similar.
            order = teacher_logits.argsort(dim=-1, descending=True)
            student_logits, teacher_logits = student_logits.gather(-1, order), teacher_logits.gather(-1, order)
        with torch.no_grad():
            teacher_signal = self.transform(teacher_logits)
        student_signal = self.transform(student_logits)
        if self.options.target == "coef_mse":
            return {"loss_figkd": F.mse_loss(student_signal, teacher_signal)}
        return {"loss_figkd": kl_divergence_with_temperature(student_signal, teacher_signal, self.options.temperature)}
