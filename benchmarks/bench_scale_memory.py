"""A ViT-sized distillation on the CPU: peak memory per process under DDP, gradient checkpointing and
FSDP2, and the step time of torch.compile. Prints Markdown tables and the commands that made them.

    python benchmarks/bench_scale_memory.py memory    # ViT-S student, ViT-B teacher, fam_l2l, bf16
    python benchmarks/bench_scale_memory.py compile   # eager against torch.compile (inductor), one process

``memory`` trains ``--steps`` steps in each setting, in fresh processes: one process without and with
gradient checkpointing (``gradient_checkpointing``), then two processes (gloo) launched with
``configs/accelerate/ddp.yaml`` (DDP, DDP + checkpointing) and ``configs/accelerate/fsdp2.yaml``
(FSDP2 + checkpointing). It reports each process's peak resident memory while training: the kernel's
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` when training begins), which holds
everything alive then (libraries, both networks, gradients, optimizer state, activations), and what
training added over the resident memory at its start. glibc's mmap threshold is fixed at 128 KiB as in
the speed benchmark (hf_freqkd/benchmark/speed.py), so that freed tensors leave the resident set. The
FSDP2 run's exported student is reloaded with timm and checked against the gathered weights.

Weights are random (timm names, no download); images are the digits set resized to ``--image-size``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def _rss_kib(name: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(name + ":"))


def worker(values: dict, out: str) -> None:
    """Train as configured (under accelerate launch or alone); write this process's figures to ``out``."""
    from transformers import TrainerCallback

    from hf_freqkd.run import prepare_run

    class Measure(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_kib = _rss_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # the high-water mark restarts from the current resident set

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.began)

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_kib = _rss_kib("VmHWM")

    check_export = values.pop("check_export", False)
    trainer, *_ = prepare_run("distill", defaults=values)
    measure = Measure()
    trainer.add_callback(measure)
    trainer.train()
    result = {
        "rank": trainer.args.process_index, "processes": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled,
        "peak_mib": measure.peak_kib / 1024, "added_mib": (measure.peak_kib - measure.start_kib) / 1024, "step_seconds": measure.steps,
    }
    if check_export and trainer.is_world_process_zero():
        import timm
        import torch
        from safetensors.torch import load_file

        folder = Path(values["output_dir"]) / "student"
        reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        exported = load_file(str(folder / "model.safetensors"))
        assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in exported.items())
        with torch.no_grad():
            logits = reloaded(torch.randn(2, 3, values["image_size"], values["image_size"]))
        result["reloaded"] = f"{type(reloaded).__name__} {sum(v.numel() for v in exported.values()) / 1e6:.1f} M parameters, logits {tuple(logits.shape)}"
    Path(out, f"rank{trainer.args.process_index}.json").write_text(json.dumps(result))


def run_config(args) -> dict:
    layers = args.layers.split(",")
    methods = {"ce": {}, "kd": {}}
    if args.methods == "fam_l2l":
        methods["fam_l2l"] = {"student_layers": layers, "teacher_layers": layers}
    return {
        "student_model": args.student, "student_model_kwargs": {"img_size": args.image_size},
        "teacher_model": args.teacher, "teacher_model_kwargs": {"img_size": args.image_size},
        "dataset": "digits", "image_size": args.image_size, "augmentation": "none",
        "methods": methods,
        "bf16": args.bf16, "per_device_train_batch_size": args.batch_size, "max_steps": args.steps,
        "max_train_samples": 2 * args.batch_size * args.steps, "optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 0.01,
        "eval_strategy": "no", "save_strategy": "no", "logging_steps": args.steps, "report_to": "none", "disable_tqdm": True, "seed": 0,
    }


def describe_methods(args) -> str:
    if args.methods != "fam_l2l":
        return "ce + kd"
    return "ce + kd + fam_l2l (" + ", ".join(args.layers.split(",")) + " of both)"


def launch(values: dict, accelerate_config: str | None, threads: int) -> list[dict]:
    """One setting in fresh processes: the figures of each process."""
    with tempfile.TemporaryDirectory() as out:
        values = {**values, "output_dir": str(Path(out) / "run")}
        script = [str(Path(__file__).resolve()), "--worker", json.dumps(values), out]
        if accelerate_config is None:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / accelerate_config),
                       "--num_processes", "2", "--mixed_precision", "bf16" if values["bf16"] else "no", "--dynamo_backend", "no",
                       "--main_process_port", "0", *script]
        # A fresh inductor cache: each compiled setting compiles from scratch, as a first run does.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(Path(out) / "inductor"),
               **ALLOCATOR_ENV}
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"{accelerate_config or 'one process'} failed:\n{result.stderr[-3000:]}")
        return [json.loads(path.read_text()) for path in sorted(Path(out).glob("rank*.json"))]


def memory(args) -> None:
    values = run_config(args)
    settings = [
        ("1 process", None, {}),
        ("1 process + checkpointing", None, {"gradient_checkpointing": True}),
        ("DDP, 2 processes", "configs/accelerate/ddp.yaml", {}),
        ("DDP + checkpointing, 2 processes", "configs/accelerate/ddp.yaml", {"gradient_checkpointing": True}),
        ("FSDP2 + checkpointing, 2 processes", "configs/accelerate/fsdp2.yaml", {"gradient_checkpointing": True, "check_export": True}),
        ("FSDP2 + checkpointing + sharded teacher, 2 processes", "configs/accelerate/fsdp2.yaml",
         {"gradient_checkpointing": True, "teacher_sharding": True}),
    ]
    if args.one_process_only:
        settings = settings[:2]
    print(f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`\n")
    print(f"{args.student} student, {args.teacher} teacher (random weights), {args.image_size}x{args.image_size} images, "
          f"{describe_methods(args)}, {'bf16, ' if args.bf16 else ''}{args.batch_size} images per process per step, "
          f"SGD with momentum, {args.steps} steps, {args.threads} thread(s) per process.\n")
    print("| setting | peak resident memory per process (MiB) | added by training (MiB) | median step (s) |")
    print("|---|---|---|---|")
    reloaded = None
    for label, config, extra in settings:
        ranks = launch({**values, **extra}, config, args.threads if config is None else 1)
        if config is not None and config.endswith("fsdp2.yaml"):
            assert all(rank["fsdp"] for rank in ranks), "the FSDP2 launch did not shard"
        peaks = " / ".join(f"{rank['peak_mib']:.0f}" for rank in ranks)
        added = " / ".join(f"{rank['added_mib']:.0f}" for rank in ranks)
        step = statistics.median(time for rank in ranks for time in rank["step_seconds"][1:] or rank["step_seconds"])
        print(f"| {label} | {peaks} | {added} | {step:.2f} |", flush=True)
        reloaded = reloaded or next((rank.get("reloaded") for rank in ranks if rank.get("reloaded")), None)
    if reloaded:
        print(f"\nFSDP2 export reloaded with timm: {reloaded}; its weights equal the exported file.")


def compile_time(args) -> None:
    values = run_config(args)
    print(f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`\n")
    print(f"{args.student} student, {args.teacher} teacher, {args.image_size}x{args.image_size} images, {describe_methods(args)}, "
          f"{'bf16, ' if args.bf16 else ''}batch {args.batch_size}, one process, {args.threads} thread(s), {args.steps} steps.\n")
    print("| setting | first step (s, compiles) | median of the later steps (s) | vs eager |")
    print("|---|---|---|---|")
    eager = None
    for label, extra in (("eager", {}), ("torch_compile (Distiller + teacher, inductor)", {"torch_compile": True}),
                         ("torch_compile, teacher eager", {"torch_compile": True, "teacher_torch_compile": False})):
        (rank,) = launch({**values, **extra}, None, args.threads)
        first, later = rank["step_seconds"][0], statistics.median(rank["step_seconds"][1:])
        eager = eager or later
        print(f"| {label} | {first:.1f} | {later:.2f} | {later / eager:.2f}x |", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(json.loads(sys.argv[2]), sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "compile"])
    parser.add_argument("--student", default="vit_small_patch16_224", help="timm name (vit_small_patch14_dinov2 for DINOv2-S)")
    parser.add_argument("--teacher", default="vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process settings (2 processes get 1 each)")
    parser.add_argument("--layers", default="blocks.2,blocks.5,blocks.8,blocks.11", help="block pairs fam_l2l distils (both networks)")
    parser.add_argument("--methods", choices=["fam_l2l", "kd"], default="fam_l2l", help="ce + kd, with or without fam_l2l")
    parser.add_argument("--one-process-only", action="store_true", help="memory: only the one-process settings (with and without checkpointing)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = parser.parse_args()
    memory(args) if args.what == "memory" else compile_time(args)


if __name__ == "__main__":
    main()
