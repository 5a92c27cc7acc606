"""``hf-freqkd benchmark speed``: training-step time and peak memory of every method, as a multiple
of the limit "one student training step + one teacher no-grad forward" measured in the same run.

Pairs (random images, batch 64 by default): CIFAR ResNet32x4 -> ResNet8x4 at 32 px, and a ViT pair
(ViT-S -> ViT-Ti, patch 4 at 32 px: an 8 x 8 token grid), 100 classes; and a detection pair, RetinaNet
on the CIFAR ResNet-20 -> ResNet-8 (FPN levels p1 .. p4) at 64 px, 3 classes, three random boxes per
image, where the limit's student step is the detector's own loss. Methods that do not apply to a
pair's task (the logit methods on detectors) are skipped.

Time. :func:`hf_freqkd.speed.time_step`, the one timing harness (``benchmarks/*.py`` use it too):
the limit and the method's step (the ``Distiller``, method modules and frozen teacher that
:func:`hf_freqkd.factory.build_distillation` builds for the trainer, SGD with momentum) alternate,
so load from other processes hits both alike; the ratio of the medians is reported.

With ``--teacher-cache`` every method that uses a teacher gets a second row, ``<method> (cached
teacher)``: its step reads the teacher's outputs from a :class:`~hf_freqkd.teacher_cache.TeacherCache`
written for the batch (in shuffled row order, as a sampler draws them) instead of running the teacher, as
training with ``teacher_cache`` does. Those rows also give the step as a multiple of the student alone
(one student training step, no teacher; the three steps timed interleaved); their memory is not measured.

Peak memory. Each measurement runs in a fresh Python process, so no earlier allocation is reused or
counted: the process builds the models and the batch, records its resident set size (RSS), resets
the kernel's peak-RSS counter (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0), runs a
few steps (the first allocates gradients and optimizer state) and reads the peak (``VmHWM``). The
reported peak is that high-water mark minus the RSS before the steps: what training adds on top
of the models' weights (activations, gradients, optimizer state, method buffers). The limit gets
its own process, measured the same way. Without ``clear_refs`` the lifetime peak
(``getrusage`` ``ru_maxrss``) is used, which is an upper bound. (Python's ``tracemalloc`` does not
see torch's allocations, hence RSS.)

The memory processes run with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``,
:data:`MEMORY_ALLOCATOR_ENV`): every tensor above that size gets its own mapping, returned to the
OS when the tensor is freed, so RSS follows the memory the step holds alive. By default glibc
raises the threshold after the first large free and serves later tensors from heaps it keeps; the
peak then measured what the heaps had retained, and varied by a third between identical processes
(``benchmarks/bench_memory_measurement.py`` measures both ways; its figures are in
docs/benchmarks.md). Time is measured in another process, with the allocator as it is by default. The
benchmark runs on the CPU; on a GPU the same question is answered by
``torch.cuda.max_memory_allocated``, which this command does not measure yet.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from ..output_dir import check_output_path


@dataclass(frozen=True)
class PairSpec:
    teacher: str
    student: str
    image_size: int = 32
    num_classes: int = 100
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    student_kwargs: dict[str, Any] = field(default_factory=dict)


VIT_32PX = {"img_size": 32, "patch_size": 4}
PAIRS: dict[str, PairSpec] = {
    "resnet32x4-resnet8x4": PairSpec("resnet32x4", "resnet8x4"),
    "vit_small-vit_tiny": PairSpec("vit_small_patch16_224", "vit_tiny_patch16_224", teacher_kwargs=VIT_32PX, student_kwargs=VIT_32PX),
    "retinanet_resnet20-retinanet_resnet8": PairSpec("retinanet_resnet20", "retinanet_resnet8", image_size=64, num_classes=3),
}
#: each method with its default options, ``ce`` at weight 1 (build_methods adds it)
METHODS: dict[str, dict[str, Any]] = {
    "ce": {"ce": {}},
    "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
    "dkd": {"dkd": {}},
    "figkd": {"figkd": {}},
    "fam": {"fam": {}},
    "fam_l2l": {"fam_l2l": {}},
    "freekd": {"freekd": {}},
    "feature_mse": {"feature_mse": {}},
}
LIMIT = "limit"
#: environment of the processes that measure peak memory (see the module docstring)
MEMORY_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def parse_pair(text: str) -> tuple[str, PairSpec]:
    """A name of :data:`PAIRS` or ``teacher:student`` (timm names, 32 px, 100 classes)."""
    if text in PAIRS:
        return text, PAIRS[text]
    teacher, sep, student = text.partition(":")
    if not sep or not teacher or not student:
        raise ConfigError(f"pair '{text}' is invalid: expected one of {', '.join(PAIRS)} or teacher:student (timm model names)")
    return f"{teacher}-{student}", PairSpec(teacher, student)


def check_pair_models(name: str, pair: PairSpec) -> None:
    """Both models of a pair are timm names (the CIFAR zoo and the detectors included): the workers
    build them with ``timm.create_model``, so anything else is refused before a worker starts."""
    import timm

    from ..models.loading import close_timm_names  # importing hf_freqkd registered the CIFAR zoo and detectors

    for role, model in (("teacher", pair.teacher), ("student", pair.student)):
        if not timm.is_model(model):
            close = close_timm_names(model)
            hint = f"; close timm names: {', '.join(close)}" if close else ""
            raise ModelError(f"speed benchmark: pair '{name}': the {role} '{model}' is not a timm model name{hint}")


# ----------------------------------------------------------------------------------------------
# Measurement in a fresh process


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _build(pair: PairSpec, seed: int):
    import timm
    import torch

    import hf_freqkd  # noqa: F401  registers the CIFAR zoo

    torch.manual_seed(seed)
    student = timm.create_model(pair.student, num_classes=pair.num_classes, **pair.student_kwargs)
    teacher = timm.create_model(pair.teacher, num_classes=pair.num_classes, **pair.teacher_kwargs)
    return student, teacher


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run in the worker process: the peak memory of ``job['method']`` (or the limit) over
    ``memory_steps`` steps when ``iterations`` is 0, else its timing (:func:`measure_in_workers`
    runs the two in separate processes)."""
    import torch

    from ..speed import time_step, training_steps

    torch.set_num_threads(job["threads"])
    pair = PairSpec(**job["pair"])
    methods = job["methods"]
    student, teacher = _build(pair, 0)
    if job.get("cached"):
        from ..speed import time_cached_step

        with tempfile.TemporaryDirectory() as folder:
            medians = time_cached_step(
                student, teacher, methods, job["batch"], pair.image_size, folder, iterations=job["iterations"], warmup=job["warmup"]
            )
        return {"limit_ms": 1e3 * medians["limit"], "step_ms": 1e3 * medians["step"], "alone_ms": 1e3 * medians["alone"],
                "peak_mib": float("nan"), "memory_source": "not measured"}
    if job["iterations"] > 0:
        timing = time_step(student, teacher, methods, job["batch"], pair.image_size, iterations=job["iterations"], warmup=job["warmup"])
        return {"limit_ms": 1e3 * timing.limit_seconds, "step_ms": 1e3 * timing.step_seconds}
    limit, method_step = training_steps(student, teacher, methods or {"ce": {}}, job["batch"], pair.image_size)
    step = limit if methods is None else method_step
    before = _rss_kib("VmRSS")
    exact = _reset_peak_rss()
    for _ in range(job["memory_steps"]):
        step()
    if exact and before is not None:
        peak_kib, source = _rss_kib("VmHWM") - before, "VmHWM - VmRSS before the steps"
    else:
        peak_kib, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - (before or 0), "ru_maxrss - VmRSS before the steps"
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return {"peak_mib": peak_kib / 1024, "memory_source": source + (f", MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "")}


def measure_in_workers(job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Peak memory (under :data:`MEMORY_ALLOCATOR_ENV`) and time of ``job``, each in a fresh process."""
    if job.get("cached"):
        return run_worker(job, timeout)
    memory = run_worker({**job, "iterations": 0}, timeout, MEMORY_ALLOCATOR_ENV)
    if "error" in memory or job["methods"] is None or job["iterations"] == 0:
        return memory
    timing = run_worker(job, timeout)
    return timing if "error" in timing else {**memory, **timing}


def run_worker(job: dict[str, Any], timeout: float | None = None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """``measure(job)`` in a fresh interpreter; {'error': ...} if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(extra_env or {})}
    command = [sys.executable, "-m", "hf_freqkd.benchmark.speed", "--worker", json.dumps(job)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        message = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": message}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------
# The benchmark


def _pair_task(pair: PairSpec):
    """The task the pair's student solves (decides which methods apply); builds the student alone."""
    import timm

    import hf_freqkd  # noqa: F401  registers the CIFAR zoo and the detectors

    from ..tasks import task_for_model

    return task_for_model(timm.create_model(pair.student, num_classes=pair.num_classes, **pair.student_kwargs))


def method_classes(spec: dict[str, Any]) -> list[type]:
    from ..methods.registry import get_method_class

    return [get_method_class(name) for name in spec]


def _freekd_prompts(pair: PairSpec, folder: Path) -> dict[str, Any]:
    """FreeKD options with a prompts file of random prompts (timing does not depend on the values)."""
    import torch

    from ..layers.frequency_prompts import save_prompts
    from ..methods.freekd import FreeKDOptions, resolve_teacher_layers
    from ..models.features import backbone_info
    from ..prompt_fitting import probe_channels

    _, teacher = _build(pair, 0)
    options = FreeKDOptions(masks="uniform")
    layers = resolve_teacher_layers(options, backbone_info(teacher))
    channels = probe_channels(teacher, layers, torch.zeros(1, 3, pair.image_size, pair.image_size))
    path = folder / "prompts.safetensors"
    generator = torch.Generator().manual_seed(0)
    prompts = {layer: 0.05 * torch.randn(options.levels + 1, options.num_prompts, c, generator=generator) for layer, c in channels.items()}
    save_prompts(path, prompts, wavelet=options.wavelet, mode=options.mode, levels=options.levels)
    return {"prompts_path": str(path), "teacher_layers": layers}


def run_speed_benchmark(
    output_dir: str | Path,
    pairs: list[str] | None = None,
    methods: list[str] | None = None,
    batch: int = 64,
    iterations: int = 6,
    warmup: int = 2,
    memory_steps: int = 3,
    threads: int = 2,
    image_size: int | None = None,
    num_classes: int | None = None,
    teacher_cache: bool = False,
    log=print,
) -> list[dict[str, Any]]:
    """Measure every (pair, method); write ``speed.md``, ``speed.csv``, ``speed.png``, ``speed.json``."""
    from ..methods.registry import normalize_method_specs

    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"speed benchmark: unknown method {', '.join(map(repr, unknown))}; expected any of {', '.join(METHODS)}")
    for method in methods:
        normalize_method_specs(METHODS[method])  # registered?
    chosen = [parse_pair(p) for p in (pairs or list(PAIRS))]
    for name, pair in chosen:
        check_pair_models(name, pair)
    for name, value in (("batch", batch), ("iterations", iterations), ("memory_steps", memory_steps), ("threads", threads)):
        if value < 1:
            raise ConfigError(f"speed benchmark: {name} = {value} is invalid: expected an integer >= 1")
    output_dir = Path(output_dir)
    check_output_path(output_dir, "--output-dir")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for pair_name, pair in chosen:
            if image_size or num_classes:
                pair = PairSpec(**{**asdict(pair), **({"image_size": image_size} if image_size else {}), **({"num_classes": num_classes} if num_classes else {})})
            common = {"pair": asdict(pair), "batch": batch, "iterations": iterations, "warmup": warmup, "memory_steps": memory_steps, "threads": threads}
            log(f"{pair_name}: limit (memory)")
            limit = measure_in_workers({**common, "methods": None, "iterations": 0})
            if "error" in limit:
                raise RuntimeError(f"speed benchmark: the limit step of {pair_name} failed: {limit['error']}")
            rows.append({"pair": pair_name, "method": LIMIT, "limit_ms": float("nan"), "step_ms": float("nan"), "time_ratio": 1.0,
                         "peak_mib": limit["peak_mib"], "memory_ratio": 1.0, "memory_source": limit["memory_source"],
                         "alone_ratio": float("nan"), "error": ""})
            task = _pair_task(pair)
            for method in methods:
                spec = {name: dict(options) for name, options in METHODS[method].items()}
                if not all(task.applies(cls) for cls in method_classes(spec)):
                    log(f"{pair_name}: {method} skipped (does not apply to {task.name})")
                    continue
                if "freekd" in spec:
                    folder = Path(scratch) / pair_name
                    folder.mkdir(exist_ok=True)
                    try:
                        spec["freekd"].update(_freekd_prompts(pair, folder))
                    except (ValueError, RuntimeError) as error:
                        rows.append(_failed(pair_name, method, str(error)))
                        continue
                cached_too = teacher_cache and any(cls.uses_teacher for cls in method_classes(spec))
                for label, cached in [(method, False)] + ([(f"{method} (cached teacher)", True)] if cached_too else []):
                    log(f"{pair_name}: {label}")
                    result = measure_in_workers({**common, "methods": spec, "cached": cached})
                    if "error" in result:
                        log(f"  failed: {result['error']}")
                        rows.append(_failed(pair_name, label, result["error"]))
                        continue
                    rows.append(
                        {
                            "pair": pair_name,
                            "method": label,
                            "limit_ms": result["limit_ms"],
                            "step_ms": result["step_ms"],
                            "time_ratio": result["step_ms"] / result["limit_ms"],
                            "peak_mib": result["peak_mib"],
                            "memory_ratio": result["peak_mib"] / limit["peak_mib"] if limit["peak_mib"] > 0 else float("nan"),
                            "memory_source": result["memory_source"],
                            "alone_ratio": result["step_ms"] / result["alone_ms"] if "alone_ms" in result else float("nan"),
                            "error": "",
                        }
                    )
    settings = {"batch": batch, "iterations": iterations, "warmup": warmup, "memory_steps": memory_steps, "threads": threads,
                "pairs": {name: asdict(spec) for name, spec in chosen}, "total_seconds": time.perf_counter() - started,
                "load_average": os.getloadavg()[0]}
    output_dir.mkdir(parents=True, exist_ok=True)  # only now: a benchmark that failed while measuring leaves nothing
    write_csv(rows, output_dir / "speed.csv")
    table = markdown_table(rows, settings)
    (output_dir / "speed.md").write_text(table + "\n")
    (output_dir / "speed.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    plot_speed(rows, output_dir / "speed.png", settings)
    log(table)
    return rows


def _failed(pair: str, method: str, error: str) -> dict[str, Any]:
    nan = float("nan")
    return {"pair": pair, "method": method, "limit_ms": nan, "step_ms": nan, "time_ratio": nan, "peak_mib": nan,
            "memory_ratio": nan, "memory_source": "", "alone_ratio": nan, "error": error}


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(value: float, pattern: str) -> str:
    return "n/a" if math.isnan(value) else pattern.format(value)


def markdown_table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    cached = any(not math.isnan(row.get("alone_ratio", float("nan"))) for row in rows)
    lines = [
        "| pair | method | limit (ms) | step (ms) | time x limit | peak memory over weights (MiB) | memory x limit |"
        + (" time x student alone |" if cached else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if cached else ""),
    ]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['pair']} | {row['method']} | | | failed: {row['error'][:80]} | | |" + (" |" if cached else ""))
            continue
        lines.append(
            f"| {row['pair']} | {row['method']} | {_cell(row['limit_ms'], '{:.0f}')} | {_cell(row['step_ms'], '{:.0f}')} | "
            f"{row['time_ratio']:.2f} | {_cell(row['peak_mib'], '{:.0f}')} | {_cell(row['memory_ratio'], '{:.2f}')} |"
            + (f" {_cell(row.get('alone_ratio', float('nan')), '{:.2f}')} |" if cached else "")
        )
    lines += [
        "",
        (
            f"Batch {settings['batch']}, random images, {settings['threads']} torch threads, time: median of {settings['iterations']} "
            f"interleaved iterations after {settings['warmup']} warm-up; memory: peak resident memory added by "
            f"{settings['memory_steps']} training steps in a fresh process, glibc mmap threshold fixed at 128 KiB (see hf_freqkd/benchmark/speed.py). "
            f"Limit = one student training step + one teacher no-grad forward. Load average at the end: {settings['load_average']:.1f}."
        ),
    ]
    return "\n".join(lines)


def plot_speed(rows: list[dict[str, Any]], path: Path, settings: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = list(dict.fromkeys(row["pair"] for row in rows))
    methods = [m for m in dict.fromkeys(row["method"] for row in rows) if m != LIMIT]
    by_key = {(row["pair"], row["method"]): row for row in rows}
    figure, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(methods) * len(pairs) + 2.2))
    height = 0.8 / max(len(pairs), 1)
    for axis, key, title in ((axes[0], "time_ratio", "step time"), (axes[1], "memory_ratio", "peak training memory")):
        for index, pair in enumerate(pairs):
            values = [by_key.get((pair, m), {}).get(key, float("nan")) for m in methods]
            positions = np.arange(len(methods)) + (index - (len(pairs) - 1) / 2) * height
            axis.barh(positions, np.nan_to_num(values, nan=0.0), height=height, label=pair)
            for position, value in zip(positions, values):
                missing = math.isnan(value)
                axis.text((0 if missing else value) + 0.02, position, "n/a" if missing else f"{value:.2f}", va="center", fontsize=7)
        axis.axvline(1.0, color="k", linestyle="--", linewidth=1)
        axis.set_yticks(np.arange(len(methods)), methods)
        axis.invert_yaxis()
        axis.set_xlabel(f"{title} / limit (student step + teacher no-grad forward)")
        axis.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"Cost per training step, batch {settings['batch']}, {settings['threads']} CPU threads")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    job = json.loads(parser.parse_args(argv).worker)
    print(json.dumps(measure(job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
