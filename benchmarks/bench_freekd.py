"""Speed of FreeKD: a full distillation step, and the wavelet band loss against the released code's.

    python benchmarks/bench_freekd.py

1. A ``freekd`` step (ce + freekd through the real Distiller, frozen prompts, 1x1 adapter) as a ratio
   to the limit "one student training step + one teacher no-grad forward", measured alternately in
   the same run (:func:`hf_freqkd.speed.time_step`), batch 64, 32 px, 2 threads:
   CIFAR ResNet32x4 -> ResNet8x4 (layer3 -> layer3, 256 channels, 8 x 8), and a ViT-Tiny-like student
   (patch 4 at 32 px: 8 x 8 tokens, 192 wide, 12 blocks) from the same teacher. Target <= 1.3x.
2. The band loss alone (forward + backward w.r.t. the student map: 3-level haar decomposition of
   student and teacher maps, teacher masks from (4, T, C) prompts, masked L1 of the high bands),
   implementations measured alternately: ours (masks summed over prompts before the product) with
   each wavelet backend, ours on pytorch_wavelets' transform, and the released code's computation
   (pytorch_wavelets' DWTForward, the (B, T, C, 3, h, w) broadcast). pytorch_wavelets is optional
   (not a dependency): ``pip install pytorch_wavelets``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import statistics
import sys
import tempfile
import types

import timm
import torch
import torch.nn.functional as F

import hf_freqkd  # noqa: F401  registers the CIFAR zoo
from hf_freqkd.frequency import wavelet_decompose
from hf_freqkd.layers.frequency_prompts import band_masks, masked_band_l1, save_prompts
from hf_freqkd.speed import time_interleaved, time_step


def import_pytorch_wavelets():
    """pytorch_wavelets' DWTForward, or None. Its package imports pkg_resources, which setuptools
    >= 81 no longer ships; a stand-in with the one function it uses lets it import."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("pkg_resources")
            stand_in.resource_stream = lambda package, name: importlib.resources.files(package).joinpath(name).open("rb")
            sys.modules["pkg_resources"] = stand_in
    try:
        from pytorch_wavelets import DWTForward
    except ImportError:
        return None
    return DWTForward


def step_ratios(iterations: int, prompts_dir: str) -> list[str]:
    lines = ["| student (teacher ResNet32x4) | methods | limit (ms) | step (ms) | ratio |", "|---|---|---:|---:|---:|"]
    path = os.path.join(prompts_dir, "prompts.safetensors")
    save_prompts(path, {"layer3": torch.randn(4, 2, 256) * 0.05}, wavelet="haar", mode="zero", levels=3)
    freekd = {"prompts_path": path, "teacher_layers": ["layer3"]}
    setups = [
        ("ResNet8x4 (layer3)", lambda: timm.create_model("resnet8x4", num_classes=100), {"freekd": freekd}, "ce + freekd"),
        ("ResNet8x4 (layer3)", lambda: timm.create_model("resnet8x4", num_classes=100), {"freekd": {**freekd, "mse_weight": 5.0}}, "ce + freekd + mse (released)"),
        ("ResNet8x4 (layer3)", lambda: timm.create_model("resnet8x4", num_classes=100), {"freekd": {**freekd, "relational": True}}, "ce + freekd + relational (paper)"),
        (
            "ViT-Tiny/4 (blocks.11)",
            lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=100),
            {"freekd": freekd},
            "ce + freekd",
        ),
    ]
    for student_name, student, methods, label in setups:
        torch.manual_seed(0)
        timing = time_step(student(), timm.create_model("resnet32x4", num_classes=100), methods, batch=64, image_size=32, iterations=iterations)
        lines.append(f"| {student_name} | {label} | {1e3 * timing.limit_seconds:.0f} | {1e3 * timing.step_seconds:.0f} | {timing.ratio:.3f} |")
    return lines


def released_band_loss(dwt, student_map, teacher_map, prompts):
    """The released FreeKDLoss.forward for one stage (its mask_module.forward_mask inlined)."""
    _, teacher_high = dwt(teacher_map)
    _, student_high = dwt(student_map)
    loss = 0
    for level, (t, s) in enumerate(zip(teacher_high, student_high), start=1):
        summed = t.sum(2)
        n, c, h, w = summed.shape
        mask = (prompts[level].expand(n, -1, -1) @ summed.view(n, -1, h * w)).sigmoid().view(n, -1, h, w)
        loss = loss + F.l1_loss(s.unsqueeze(1) * mask.unsqueeze(2).unsqueeze(2), t.unsqueeze(1) * mask.unsqueeze(2).unsqueeze(2))
    return loss


def our_band_loss(student_map, teacher_map, prompts, backend="auto"):
    teacher_bands, student_bands = wavelet_decompose(teacher_map, backend=backend), wavelet_decompose(student_map, backend=backend)
    with torch.no_grad():
        masks = band_masks(prompts, teacher_bands)
    return sum(masked_band_l1(s, t, m) for s, t, m in zip(student_bands.high, teacher_bands.high, masks[1:]))


def ours_on_pytorch_wavelets(dwt, student_map, teacher_map, prompts):
    _, teacher_high = dwt(teacher_map)
    _, student_high = dwt(student_map)
    loss = 0
    for level, (t, s) in enumerate(zip(teacher_high, student_high), start=1):
        with torch.no_grad():
            summed = t.sum(2)
            n, c, h, w = summed.shape
            mask = torch.sigmoid(prompts[level] @ summed.view(n, c, h * w)).view(n, -1, h, w)
        loss = loss + masked_band_l1(s, t, mask)
    return loss


def band_loss_timings(shapes: list[tuple[int, int, int, int]], num_prompts: int, iterations: int, warmup: int = 3) -> list[str]:
    """Median ms of each implementation, measured alternately (:func:`hf_freqkd.speed.time_interleaved`)
    so that load from other processes hits all of them alike."""
    DWTForward = import_pytorch_wavelets()
    names = [
        "ours (default: haar backend)",
        "ours, ptwt backend",
        "ours on pytorch_wavelets' DWT",
        "released code (pytorch_wavelets, broadcast)",
    ]
    lines = ["| band loss, fwd + bwd (ms) | " + " | ".join("x".join(map(str, s)) for s in shapes) + " |", "|---|" + "---:|" * len(shapes)]
    cells: dict[str, list[str]] = {name: [] for name in names}
    for shape in shapes:
        torch.manual_seed(0)
        student_map = torch.randn(*shape, requires_grad=True)
        teacher_map = torch.randn(*shape)
        prompts = torch.randn(4, num_prompts, shape[1]) * 0.05
        losses = {
            names[0]: lambda: our_band_loss(student_map, teacher_map, prompts),
            names[1]: lambda: our_band_loss(student_map, teacher_map, prompts, backend="ptwt"),
        }
        if DWTForward is not None:
            dwt = DWTForward(J=3, mode="zero", wave="haar")
            losses[names[2]] = lambda: ours_on_pytorch_wavelets(dwt, student_map, teacher_map, prompts)
            losses[names[3]] = lambda: released_band_loss(dwt, student_map, teacher_map, prompts)
        reference = losses[names[0]]()
        for loss in losses.values():  # the same quantity, every way
            torch.testing.assert_close(loss(), reference, rtol=1e-4, atol=1e-6)
        def backward(loss):
            student_map.grad = None
            loss().backward()

        times = time_interleaved({name: lambda loss=loss: backward(loss) for name, loss in losses.items()}, iterations, warmup)
        for name in names:
            cells[name].append(f"{1e3 * statistics.median(times[name]):.1f}" if name in times else "n/a")
    return lines + [f"| {name} | " + " | ".join(cells[name]) + " |" for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-steps", action="store_true", help="only the band-loss table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n")

    if not args.skip_steps:
        print("## FreeKD step / (student train step + teacher no-grad forward), batch 64, 32 px\n")
        with tempfile.TemporaryDirectory() as prompts_dir:
            print("\n".join(step_ratios(args.iterations, prompts_dir)))

    print("\n## Wavelet band loss alone (3-level haar, T = 2, student and teacher maps), median ms\n")
    print("\n".join(band_loss_timings([(64, 256, 8, 8), (64, 256, 32, 32), (16, 1024, 14, 14)], num_prompts=2, iterations=args.iterations)))
    flags = f"--iterations {args.iterations} --threads {args.threads}" + (" --skip-steps" if args.skip_steps else "")
    print(f"\nCommand: python benchmarks/bench_freekd.py {flags}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
