"""``hf-freqkd spectrum``: where in the frequency domain a teacher's and a student's knowledge lies.

Three views, each the view of one method:

* **logits, 1-D wavelet bands (FiGKD).** Each logit vector is a signal along the class axis. Its
  J-level discrete wavelet transform (``periodization`` extension) splits it into the approximation
  cA_J and the details cD_J .. cD_1; the energy of each band (sum of squared coefficients, mean over
  images) shows how much of the logits is coarse content and how much is the fine pattern between
  neighbouring classes that FiGKD transfers. With an orthogonal wavelet (haar, dbN, symN, coifN)
  and a class count divisible by 2^J the band energies add up to the logits' energy exactly
  (Parseval); ``parseval_ratio`` in the JSON says how close they come otherwise. The energy of the
  student-minus-teacher logits per band shows where the student still differs from the teacher.
* **feature maps, 2-D FFT radial energy (FAM).** ``|fft2(x, norm="ortho")|^2`` summed over channels,
  binned by radial frequency (cycles per pixel, bin width 1 / min(H, W)): FAM's global branch works
  on these frequencies and zeroes the lowest.
* **feature maps, 2-D wavelet bands (FreeKD).** ``pywt.wavedec2`` (``periodization``) of each channel:
  the low band LL_L and per level the three high bands; FreeKD distils the high bands.

Feature energies are compared as fractions of each map's total (teacher and student widths and
scales differ). Outputs: ``logit_bands.png``, ``feature_fft_radial.png``,
``feature_wavelet_bands.png`` and every number in ``spectrum.json``, with each model's own
evaluation on the same images under ``metrics`` (the task's ``compute_metrics``: accuracy, mIoU or
COCO mAP).

Segmentation networks and detectors have no image-level logits: their outputs are a score vector per
pixel, or boxes (``DetectorOutput.detections``), with no class axis to transform per image, so the
logit view (and ``logit_bands.png``, ``--levels``) is left out and only the feature views are
computed. A detector's default layers are its FPN levels (``fpn.p3`` ..., up to four, evenly spaced),
the maps FreeKD and FAM distil; the terminal summary then gives the share of feature energy in the
wavelet detail bands instead of the logits'.

    hf-freqkd spectrum --teacher runs/digits/teacher/student --student runs/digits/student_kd/student \
        --before runs/digits/student_alone/student --data digits --image-size 16
    hf-freqkd spectrum --teacher runs/detection/shapes_teacher/student --student runs/detection/shapes_freekd/student \
        --data shapes_detection --dataset-config-name num_train=640,num_test=160,image_size=64,num_classes=3,seed=0
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ModelError

MAX_DEFAULT_LAYERS = 4


# ----------------------------------------------------------------------------------------------
# Energies (numpy, exact)


def _check_wavelet(wavelet: str):
    import pywt

    if wavelet not in pywt.wavelist(kind="discrete"):
        raise ConfigError(f"wavelet '{wavelet}' is not a discrete wavelet PyWavelets knows (e.g. haar, db2, sym4)")
    return pywt.Wavelet(wavelet)


def default_logit_levels(num_classes: int, wavelet: str) -> int:
    import pywt

    return max(1, pywt.dwt_max_level(num_classes, _check_wavelet(wavelet).dec_len))


def logit_band_energy(logits: np.ndarray, wavelet: str = "haar", levels: int | None = None) -> dict[str, Any]:
    """Mean energy per image of each 1-D wavelet band of ``logits`` ``(N, C)``, coarsest band first."""
    import pywt

    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, C), got {logits.shape}")
    levels = levels or default_logit_levels(logits.shape[1], wavelet)
    deepest = default_logit_levels(logits.shape[1], wavelet)
    if not 1 <= levels <= deepest:
        raise ConfigError(f"levels = {levels} is invalid for {logits.shape[1]} classes with {wavelet}: expected 1..{deepest}")
    coefficients = pywt.wavedec(logits, _check_wavelet(wavelet), mode="periodization", level=levels, axis=-1)
    bands = [f"cA{levels}"] + [f"cD{j}" for j in range(levels, 0, -1)]
    return _energies(bands, [np.square(c).sum(axis=-1).mean() for c in coefficients], np.square(logits).sum(axis=-1).mean())


def radial_fft_energy(maps: np.ndarray) -> dict[str, Any]:
    """Mean energy per image of ``maps`` ``(N, C, H, W)`` per radial frequency bin of the 2-D FFT."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4:
        raise ValueError(f"expected feature maps of shape (N, C, H, W), got {maps.shape}")
    height, width = maps.shape[-2:]
    power = np.square(np.abs(np.fft.fft2(maps, norm="ortho"))).sum(axis=1).mean(axis=0)  # (H, W)
    radius = np.sqrt(np.fft.fftfreq(height)[:, None] ** 2 + np.fft.fftfreq(width)[None, :] ** 2)
    side = min(height, width)
    index = np.rint(radius * side).astype(int)
    energy = np.bincount(index.ravel(), weights=power.ravel())
    frequencies = np.arange(len(energy)) / side
    result = _energies([f"{f:.3f}" for f in frequencies], list(energy), np.square(maps).sum(axis=(1, 2, 3)).mean())
    result["frequency"] = frequencies.tolist()
    return result


def default_feature_levels(size: tuple[int, int], wavelet: str, cap: int = 3) -> int:
    import pywt

    return max(1, min(cap, pywt.dwt_max_level(min(size), _check_wavelet(wavelet).dec_len)))


def wavelet2d_band_energy(maps: np.ndarray, wavelet: str = "haar", levels: int | None = None) -> dict[str, Any]:
    """Mean energy per image of each 2-D wavelet band of ``maps`` ``(N, C, H, W)``: LL_L, then per
    level from coarsest (L) to finest (1) the sum of its horizontal, vertical and diagonal bands
    (each orientation is also listed under ``orientations``)."""
    import pywt

    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 4:
        raise ValueError(f"expected feature maps of shape (N, C, H, W), got {maps.shape}")
    levels = levels or default_feature_levels(maps.shape[-2:], wavelet)
    coefficients = pywt.wavedec2(maps, _check_wavelet(wavelet), mode="periodization", level=levels, axes=(-2, -1))
    bands, energies, orientations = [f"LL{levels}"], [np.square(coefficients[0]).sum(axis=(1, 2, 3)).mean()], {}
    for level, details in zip(range(levels, 0, -1), coefficients[1:]):
        per_orientation = [np.square(d).sum(axis=(1, 2, 3)).mean() for d in details]
        orientations[f"level{level}"] = dict(zip(("horizontal", "vertical", "diagonal"), map(float, per_orientation)))
        bands.append(f"level{level}")
        energies.append(sum(per_orientation))
    result = _energies(bands, energies, np.square(maps).sum(axis=(1, 2, 3)).mean())
    result["orientations"] = orientations
    return result


def _energies(bands: list[str], energies: list[float], total: float) -> dict[str, Any]:
    energies = [float(e) for e in energies]
    band_sum = sum(energies)
    return {
        "bands": bands,
        "energy": energies,
        "fraction": [e / band_sum if band_sum > 0 else 0.0 for e in energies],
        "signal_energy": float(total),
        "parseval_ratio": band_sum / float(total) if total > 0 else 1.0,
    }


# ----------------------------------------------------------------------------------------------
# Models and data


@dataclass
class SpectrumInputs:
    teacher: str
    student: str
    before: str | None = None
    dataset: str = "digits"
    dataset_config_name: str | None = None
    split: str | None = None
    image_size: int | None = None
    samples: int = 512
    batch_size: int = 128
    teacher_layers: list[str] | None = None
    student_layers: list[str] | None = None
    wavelet: str = "haar"
    levels: int | None = None
    feature_levels: int | None = None
    output_dir: str = "spectrum"
    models: dict[str, str] = field(default_factory=dict)


def _load(source: str, num_classes: int):
    from .models.loading import load_model, model_num_classes

    # An architecture name gets a fresh head for the data's classes; a saved folder keeps its own.
    model = load_model(source, num_classes=None if os.path.isdir(source) else num_classes)
    if model_num_classes(model) != num_classes:
        raise ModelError(f"model '{source}' predicts {model_num_classes(model)} classes but the data has {num_classes}")
    return model.eval()


def _pick_layers(info, explicit: list[str] | None, role: str) -> list[str]:
    from .models.pairing import evenly_spaced

    if explicit:
        return list(explicit)
    if not info.stage_layers:
        raise ModelError(f"the {role} exposes no stage layers; name layers with --{role}-layers")
    return evenly_spaced(info.stage_layers, min(len(info.stage_layers), MAX_DEFAULT_LAYERS))


def _images(inputs: SpectrumInputs, student, task, num_classes_hint: list[int]):
    """``samples`` evenly spaced images of the evaluation split, transformed as ``distill`` evaluates them,
    and their labels batched by the task's collator (detection: box rows padded to one length)."""
    from .config import DataArguments
    from .data.loading import load_image_dataset, pick_split
    from .models.loading import resolve_input_config

    data = load_image_dataset(inputs.dataset, inputs.dataset_config_name)
    splits = list(data)
    split = pick_split(splits, inputs.split, "eval", ["validation", "valid", "val", "test", "train"])
    rows = data[split]
    found = task.data_functions(rows, DataArguments(dataset=inputs.dataset, task=task.name))
    image_column, label_column = found.image_column, found.label_column
    num_classes_hint.append(found.num_classes)
    # Evenly spaced rows: many datasets (this library's generated one too) are ordered by class.
    rows = rows.select(np.unique(np.linspace(0, len(rows) - 1, min(inputs.samples, len(rows))).round().astype(int)).tolist())
    input_config = resolve_input_config(student)
    if inputs.image_size:
        input_config["input_size"] = (input_config["input_size"][0], inputs.image_size, inputs.image_size)
    dataset = found.transform(rows, image_column, label_column, input_config, training=False, augmentation="none")
    batch = task.data_collator([dataset[index] for index in range(len(dataset))])
    return batch["pixel_values"], batch["labels"], split


def _forward(model, layers: list[str], pixels, labels, batch_size: int, task):
    """The model's outputs (as the task's metrics read them) and its feature maps, batch by batch."""
    import torch

    from .models.features import FrozenTeacher

    extractor = FrozenTeacher(model, layers)
    logits, features = [], {layer: [] for layer in layers}
    for start in range(0, len(pixels), batch_size):
        output = extractor(pixels[start : start + batch_size])
        outputs = output.logits.float()
        if task.preprocess_logits_for_metrics is not None:
            outputs = task.preprocess_logits_for_metrics(outputs, labels[start : start + batch_size])
        logits.append(outputs)
        for layer in layers:
            feature = output.features[layer]
            if feature.dim() != 4:
                raise ModelError(f"layer '{layer}' of {type(model).__name__} gives shape {tuple(feature.shape)}, not a (B, C, H, W) map")
            features[layer].append(feature.float())
    return torch.cat(logits).numpy(), {layer: torch.cat(parts).numpy() for layer, parts in features.items()}


def compute_spectrum(inputs: SpectrumInputs) -> dict[str, Any]:
    """Load the models and the data, and return every energy as a JSON-ready dict."""
    import torch

    from transformers import EvalPrediction

    from .models.features import backbone_info
    from .models.loading import load_model
    from .tasks import task_for_model

    wavelet = _check_wavelet(inputs.wavelet)
    if inputs.samples < 1 or inputs.batch_size < 1:
        raise ConfigError(f"samples = {inputs.samples} and batch_size = {inputs.batch_size} must be integers >= 1")
    student_for_input = load_model(inputs.student)
    task = task_for_model(student_for_input)
    # The logit view needs one score vector per image along the class axis: classifiers only.
    logit_view = task.label_dims == 0
    if inputs.levels and not logit_view:
        raise ConfigError(
            f"--levels = {inputs.levels} sets the transform of image-level logits, which the student "
            f"{type(student_for_input).__name__} ({task.model_kind}) does not give: leave it out"
        )
    num_classes_hint: list[int] = []
    pixels, labels, split = _images(inputs, student_for_input, task, num_classes_hint)
    num_classes = num_classes_hint[0]
    models = {"teacher": inputs.teacher, **({"student before": inputs.before} if inputs.before else {}), "student": inputs.student}
    loaded = {role: _load(source, num_classes) for role, source in models.items()}
    teacher_layers = _pick_layers(backbone_info(loaded["teacher"]), inputs.teacher_layers, "teacher")
    student_layers = _pick_layers(backbone_info(loaded["student"]), inputs.student_layers, "student")
    if len(teacher_layers) != len(student_layers):
        if inputs.teacher_layers or inputs.student_layers:
            raise ConfigError(f"--teacher-layers ({', '.join(teacher_layers)}) and --student-layers ({', '.join(student_layers)}) must have the same length")
        from .models.pairing import evenly_spaced

        count = min(len(teacher_layers), len(student_layers))
        teacher_layers, student_layers = evenly_spaced(teacher_layers, count), evenly_spaced(student_layers, count)
    pairs = [f"{s} / {t}" for s, t in zip(student_layers, teacher_layers)]
    for role, model in loaded.items():
        if task_for_model(model) is not task:
            raise ModelError(
                f"the {role} '{models[role]}' is {task_for_model(model).model_kind} but the student is {task.model_kind}"
            )

    result: dict[str, Any] = {
        "settings": {
            "models": models, "dataset": inputs.dataset, "dataset_config_name": inputs.dataset_config_name, "split": split,
            "images": len(pixels), "image_size": list(pixels.shape[-2:]), "num_classes": num_classes, "wavelet": inputs.wavelet,
            "orthogonal": bool(wavelet.orthogonal), "extension": "periodization", "layer_pairs": pairs, "task": task.name,
        },
        "metrics": {}, "logits": {}, "logit_difference": {}, "features": {pair: {} for pair in pairs},
    }
    compute_metrics = task.compute_metrics(num_classes, None)
    levels = (inputs.levels or default_logit_levels(num_classes, inputs.wavelet)) if logit_view else None
    all_logits = {}
    with torch.no_grad():
        for role, model in loaded.items():
            layers = teacher_layers if role == "teacher" else student_layers
            logits, features = _forward(model, layers, pixels, labels, inputs.batch_size, task)
            # The task's own evaluation on these images (accuracy, mIoU, COCO mAP, ...), as the Trainer computes it.
            scores = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels.numpy()))
            result["metrics"][role] = {key: float(value) for key, value in scores.items()}
            if logit_view:
                all_logits[role] = logits
                result["logits"][role] = logit_band_energy(logits, inputs.wavelet, levels)
            for pair, layer in zip(pairs, layers):
                maps = features[layer]
                result["features"][pair][role] = {
                    "layer": layer,
                    "shape": list(maps.shape[1:]),
                    "fft_radial": radial_fft_energy(maps),
                    "wavelet": wavelet2d_band_energy(maps, inputs.wavelet, inputs.feature_levels or default_feature_levels(maps.shape[-2:], inputs.wavelet)),
                }
    for role, logits in all_logits.items():
        if role != "teacher":
            result["logit_difference"][role] = logit_band_energy(logits - all_logits["teacher"], inputs.wavelet, levels)
    return result


# ----------------------------------------------------------------------------------------------
# Plots

COLORS = {"teacher": "#d62728", "student before": "#9a9a9a", "student": "#1f77b4"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(axis, entries: dict[str, dict[str, Any]], key: str = "fraction") -> None:
    roles = list(entries)
    bands = entries[roles[0]]["bands"]
    width = 0.8 / len(roles)
    for index, role in enumerate(roles):
        positions = np.arange(len(bands)) + (index - (len(roles) - 1) / 2) * width
        axis.bar(positions, entries[role][key], width=width, label=role, color=COLORS.get(role))
    axis.set_xticks(np.arange(len(bands)), bands)
    axis.grid(axis="y", alpha=0.3)


def plot_spectrum(result: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """Write the PNGs into ``output_dir`` (the logit view only when the result has one); return their paths."""
    plt = _plt()
    files = {}
    if result["logits"]:
        files["logits"] = _plot_logits(plt, result, output_dir)
    _plot_features(plt, result, output_dir, files)
    return files


def _plot_logits(plt, result: dict[str, Any], output_dir: Path) -> str:
    settings = result["settings"]
    figure, axes = plt.subplots(1, 2 if result["logit_difference"] else 1, figsize=(11, 4), squeeze=False)
    _grouped_bars(axes[0][0], result["logits"])
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("share of logit energy (log)")
    axes[0][0].set_xlabel("band (cA = coarse content, cD1 = finest detail)")
    axes[0][0].set_title("logits along the class axis (FiGKD's view)")
    axes[0][0].legend(fontsize=8)
    if result["logit_difference"]:
        _grouped_bars(axes[0][1], result["logit_difference"], key="energy")
        axes[0][1].set_ylabel("energy of student - teacher logits")
        axes[0][1].set_xlabel("band")
        axes[0][1].set_title("where the student still differs from the teacher")
        axes[0][1].legend(fontsize=8)
    figure.suptitle(f"{settings['wavelet']} wavelet, {settings['num_classes']} classes, {settings['images']} images ({settings['split']})")
    figure.tight_layout()
    path = str(output_dir / "logit_bands.png")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plot_features(plt, result: dict[str, Any], output_dir: Path, files: dict[str, str]) -> None:
    pairs = list(result["features"])
    for kind, title, name in (("fft_radial", "2-D FFT radial energy (FAM's view)", "feature_fft_radial.png"),
                              ("wavelet", "2-D wavelet band energy (FreeKD's view)", "feature_wavelet_bands.png")):
        figure, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
        for axis, pair in zip(axes[0], pairs):
            entries = {role: values[kind] for role, values in result["features"][pair].items()}
            if kind == "fft_radial":
                for role, values in entries.items():
                    axis.semilogy(values["frequency"], np.maximum(values["fraction"], 1e-12), "o-", label=role, color=COLORS.get(role), markersize=3)
                axis.set_xlabel("radial frequency (cycles / pixel)")
            else:
                _grouped_bars(axis, entries)
                axis.set_yscale("log")
                axis.set_xlabel("band (LL = low, level1 = finest)")
            shapes = ", ".join(f"{role} {'x'.join(map(str, v['shape']))}" for role, v in result["features"][pair].items())
            axis.set_title(f"{pair}\n{shapes}", fontsize=8)
            axis.set_ylabel("share of feature energy (log)")
            axis.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        figure.suptitle(title)
        figure.tight_layout()
        files[kind] = str(output_dir / name)
        figure.savefig(files[kind], dpi=120)
        plt.close(figure)


def run_spectrum(inputs: SpectrumInputs) -> dict[str, Any]:
    """Compute, write ``spectrum.json`` and the PNGs into ``inputs.output_dir``; return the result.

    The output folder and the models are checked first, building nothing, so a bad one is refused
    before the data and the other models are loaded and before anything is written."""
    from .models.loading import check_model_source
    from .output_dir import check_output_path

    output_dir = Path(inputs.output_dir)
    check_output_path(output_dir, "--output-dir")
    for source in (inputs.teacher, inputs.before, inputs.student):
        if source:
            check_model_source(source)
    result = compute_spectrum(inputs)
    output_dir.mkdir(parents=True, exist_ok=True)
    result["files"] = plot_spectrum(result, output_dir)
    (output_dir / "spectrum.json").write_text(json.dumps(result, indent=2))
    result["files"]["json"] = str(output_dir / "spectrum.json")
    return result


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the task's headline metric and the share of energy in the detail
    bands: of the logits for classifiers, else of the feature maps' 2-D wavelet transform (mean over layers)."""
    from .tasks import get_task

    task = get_task(result["settings"].get("task", "classification"))
    key, label = task.benchmark_metrics[0] if task.benchmark_metrics else (None, None)
    lines = []
    for role, metrics in result["metrics"].items():
        value = metrics.get(key)
        if value is None:
            headline = ""
        elif task.undefined_metric_value is not None and value == task.undefined_metric_value:
            headline = f"{label} undefined"
        else:
            headline = f"{label} {100 * value:.1f} %"
        if role in result["logits"]:
            values = result["logits"][role]
            bands = ", ".join(values["bands"][1:])
            detail = f"{100 * sum(values['fraction'][1:]):.1f} % of logit energy in the detail bands ({bands})"
        else:
            shares = [sum(pair[role]["wavelet"]["fraction"][1:]) for pair in result["features"].values()]
            layers = ", ".join(pair[role]["layer"] for pair in result["features"].values())
            detail = f"{100 * sum(shares) / len(shares):.1f} % of feature energy in the wavelet detail bands (mean over {layers})"
        lines.append(f"{role}: {headline} on {result['settings']['images']} images; {detail}")
    lines += [f"wrote {path}" for path in result["files"].values()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line


def add_spectrum_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher: exported folder (a run's student/), or a timm name")
    parser.add_argument("--student", required=True, help="student after distillation: exported folder or timm name")
    parser.add_argument("--before", help="the student before distillation (e.g. the student-alone run's folder) to compare with")
    parser.add_argument("--data", default="digits", help="dataset: digits, fine_grained_synthetic, a folder, .parquet or Hub id")
    parser.add_argument("--dataset-config-name", help="dataset configuration (fine_grained_synthetic: classes=32,image_size=16,...)")
    parser.add_argument("--split", help="split to read (default: validation / test, else train)")
    parser.add_argument("--image-size", type=int, help="input size (default: the student's)")
    parser.add_argument("--samples", type=int, default=512, help="images used (default 512)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--layers", nargs="+", help="feature layers of both models (same names), e.g. layer1 layer3")
    parser.add_argument("--teacher-layers", nargs="+", help="teacher feature layers (default: up to 4 stage outputs; a detector's FPN levels fpn.p*)")
    parser.add_argument("--student-layers", nargs="+", help="student feature layers, paired in order with the teacher's")
    parser.add_argument("--wavelet", default="haar", help="discrete wavelet (orthogonal for exact Parseval: haar, db2, sym4, ...)")
    parser.add_argument("--levels", type=int, help="levels of the logit transform (default: the deepest pywt allows; classifiers only)")
    parser.add_argument("--feature-levels", type=int, help="levels of the 2-D transform of feature maps (default: up to 3)")
    parser.add_argument("--output-dir", default="spectrum", help="folder for the PNGs and spectrum.json (default: spectrum)")


def inputs_from_args(args) -> SpectrumInputs:
    return SpectrumInputs(
        teacher=args.teacher, student=args.student, before=args.before, dataset=args.data,
        dataset_config_name=args.dataset_config_name, split=args.split, image_size=args.image_size, samples=args.samples,
        batch_size=args.batch_size, teacher_layers=args.teacher_layers or args.layers, student_layers=args.student_layers or args.layers,
        wavelet=args.wavelet, levels=args.levels, feature_levels=args.feature_levels, output_dir=args.output_dir,
    )
