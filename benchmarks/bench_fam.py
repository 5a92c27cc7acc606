"""How much a FAM-KD training step costs next to the cheapest possible distillation step.

For each CIFAR-100 pair (ResNet56 -> ResNet20 by default; random data, batch 64, 32 px, 100 classes, 2 CPU threads) it times, after
a warm-up and interleaved so that machine noise hits every variant alike (median of N):

* limit: one student training step (forward, cross-entropy, backward, SGD step) plus one teacher
  no-grad forward - what any distillation step costs at least;
* fam / fam_l2l: one full training step through the modules the trainer builds
  (:func:`hf_freqkd.factory.build_distillation`: the Distiller with the method's stages, the frozen
  teacher with its feature hooks), same optimizer;
* fam, torch local attention: ``fam`` with the fused C kernel of the local attention turned off
  (``HF_FREQKD_NATIVE=0``, :mod:`hf_freqkd.layers.native`): the batch-chunked torch code instead;
* fam reference: ``fam`` with ``reference_implementation: true`` (full complex fft2 + einsum and the
  unfold attention of the released code), for comparison with the released code's about 4.4x;

and reports each as a multiple of the limit, from the medians and, as a check on machine noise
(which only ever adds time), from the fastest runs. Steps, optimiser and interleaving are those of
``hf-freqkd benchmark speed`` (:mod:`hf_freqkd.speed`). It then breaks one ``fam`` step down by part
(isolated forward + backward timings) and lists the operators that take the most time
(torch.profiler). Prints Markdown and the command that produced it.

    python benchmarks/bench_fam.py [--iterations 10] [--pairs resnet56:resnet20 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import hf_freqkd  # noqa: E402,F401  registers the CIFAR zoo
from hf_freqkd.factory import build_distillation  # noqa: E402
from hf_freqkd.layers import native  # noqa: E402
from hf_freqkd.models import FrozenTeacher  # noqa: E402
from hf_freqkd.speed import distillation_step, limit_step, sgd, time_call, time_interleaved  # noqa: E402

VARIANTS = {
    "fam": {"fam": {"weight": 1.0}},
    "fam_l2l": {"fam_l2l": {"weight": 1.0}},
    "fam, torch local attention": {"fam": {"weight": 1.0}},
    "fam reference": {"fam": {"weight": 1.0, "reference_implementation": True}},
}
#: Variants timed with the fused C kernel of the local attention turned off (hf_freqkd.layers.native).
WITHOUT_NATIVE_KERNEL = {"fam, torch local attention"}


def without_native_kernel(step):
    def run():
        os.environ[native.DISABLE_VARIABLE] = "0"
        try:
            step()
        finally:
            del os.environ[native.DISABLE_VARIABLE]

    return run


def build_variant(student_name: str, teacher_name: str, methods: dict, images: torch.Tensor):
    """The parts DistillationTrainer trains (hf_freqkd.factory), on a fresh student and teacher."""
    torch.manual_seed(0)
    student = timm.create_model(student_name, num_classes=100)
    teacher = timm.create_model(teacher_name, num_classes=100)
    return build_distillation(student, teacher, methods, sample_input=images[:1])


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def time_parts(fam_parts, images, labels, iterations: int) -> list[tuple[str, float]]:
    """Forward + backward of each part of one ``fam`` step, timed in isolation (ms, median)."""
    distiller, teacher = fam_parts.distiller, fam_parts.teacher
    method = distiller.methods["fam"]
    with torch.no_grad():
        teacher_output = teacher(images)
    student_output = distiller.student(images)
    features = {k: v.detach().requires_grad_() for k, v in student_output.features.items()}
    # The attention works at the student feature's size (the pooled stage at 1x1).
    sizes = [tuple(features[s].shape[-2:]) for s, _ in method.pairs]
    sizes += [(1, 1)] * (len(method.stages) - len(sizes))

    def student_step():
        output = distiller.student(images)
        F.cross_entropy(output.logits, labels).backward()

    def method_step():
        student_detached = type(student_output)(student_output.logits.detach(), features)
        method(student_detached, teacher_output, labels)["loss_fam"].backward()

    parts = [("teacher no-grad forward", lambda: teacher_forward(teacher, images)),
             ("student forward + backward (with feature hooks)", student_step),
             ("fam method forward + backward (all stages)", method_step)]
    # Inside the method: each stage's module and attention, on inputs of the shapes they see.
    for index, stage in enumerate(method.stages):
        if stage.fam is not None:
            fam = stage.fam
            x = torch.randn(images.shape[0], fam.in_channels, *fam.size, requires_grad=True)
            parts.append((f"  stage {index} module global branch {fam.in_channels}->{fam.out_channels} @ {fam.size[0]}x{fam.size[1]}",
                          _fwd_bwd(lambda fam=fam, x=x: fam.global_branch(x))))
        if stage.fuse is not None:
            attention = stage.fuse
            size = sizes[index]
            x = torch.randn(images.shape[0], attention.channels, *size, requires_grad=True)
            guide = torch.randn_like(x, requires_grad=True)
            parts.append((f"  stage {index} local attention {attention.channels} @ {size[0]}x{size[1]}",
                          _fwd_bwd(lambda attention=attention, x=x, guide=guide: attention(x, guide))))
    method_parameters = list(method.parameters())
    method_optimizer = sgd(method_parameters)
    for p in method_parameters:
        p.grad = torch.zeros_like(p)
    parts.append(("SGD step of the method's parameters", lambda: method_optimizer.step()))

    results = [(name, 1000 * time_call(fn, iterations, warmup=2)) for name, fn in parts]
    distiller.zero_grad(set_to_none=True)
    return results


def teacher_forward(teacher, images):
    with torch.no_grad():
        teacher(images)


def _fwd_bwd(fn):
    def run():
        fn().square().mean().backward()

    return run


def profile_ops(step, rows: int) -> list[tuple[str, float, float]]:
    """Operators by self CPU time over 3 calls of ``step`` (a ``fam`` step): (name, ms per step, % of the total)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, e.self_cpu_time_total / 3000, 100 * e.self_cpu_time_total / total) for e in events[:rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One pair by default: ResNet32x4 -> ResNet8x4 is in `hf-freqkd benchmark speed`, and one pair's figure
    # should come from one benchmark.
    parser.add_argument("--pairs", nargs="+", default=["resnet56:resnet20"], help="teacher:student")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-part timings and the profile")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, 32 px, 100 classes, "
          f"median of {args.iterations} interleaved iterations after {args.warmup} warm-up\n")
    summary, breakdowns = [], []
    for pair in args.pairs:
        teacher_name, student_name = pair.split(":")
        torch.manual_seed(0)
        images = torch.randn(args.batch_size, 3, 32, 32)
        labels = torch.randint(0, 100, (args.batch_size,))
        student = timm.create_model(student_name, num_classes=100)
        teacher = FrozenTeacher(timm.create_model(teacher_name, num_classes=100))
        steps = {"limit": limit_step(student, teacher, images, labels)}
        built = {variant: build_variant(student_name, teacher_name, methods, images) for variant, methods in VARIANTS.items()}
        steps.update({variant: distillation_step(parts, images, labels) for variant, parts in built.items()})
        for variant in WITHOUT_NATIVE_KERNEL:
            steps[variant] = without_native_kernel(steps[variant])
        torch.set_num_threads(args.threads)
        times = time_interleaved(steps, args.iterations, args.warmup)
        limit, limit_best = median_ms(times["limit"]), 1000 * min(times["limit"])
        extra = {v: sum(p.numel() for p in parts.distiller.methods.parameters()) for v, parts in built.items()}
        for name in steps:
            summary.append((f"{teacher_name} -> {student_name}", name, median_ms(times[name]), median_ms(times[name]) / limit,
                            1000 * min(times[name]) / limit_best, extra.get(name)))
        if not args.no_breakdown:
            parts = time_parts(built["fam"], images, labels, args.iterations)
            ops = profile_ops(steps["fam"], args.profile_rows)
            breakdowns.append((f"{teacher_name} -> {student_name}", median_ms(times["fam"]), parts, ops))

    print("| pair | step | ms (median) | x limit (medians) | x limit (fastest runs) | method parameters |")
    print("|---|---|---:|---:|---:|---:|")
    for pair, name, ms, ratio, best_ratio, params in summary:
        print(f"| {pair} | {name} | {ms:.0f} | {ratio:.2f} | {best_ratio:.2f} | {'' if params is None else f'{params / 1e6:.2f} M'} |")
    for pair, fam_ms, parts, ops in breakdowns:
        print(f"\n### Where a `fam` step goes: {pair} (full step {fam_ms:.0f} ms)\n")
        print("| part (forward + backward unless stated) | ms |")
        print("|---|---:|")
        for name, ms in parts:
            print(f"| {name} | {ms:.1f} |")
        print("\nTop operators by self CPU time (torch.profiler, per step):\n")
        print("| operator | ms | % |")
        print("|---|---:|---:|")
        for name, ms, share in ops:
            print(f"| `{name}` | {ms:.1f} | {share:.1f} |")


if __name__ == "__main__":
    main()
