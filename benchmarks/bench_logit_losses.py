"""Speed of the logit losses (kd, dkd, figkd) and of a full FiGKD distillation step.

    python benchmarks/bench_logit_losses.py

1. Loss forward + backward for C = 100, 200, 1000 classes and batch 64, 256 (median ms), FiGKD
   through both backends (the precomputed matrix, the default up to 4096 classes, and ptwt).
2. A full distillation step, CIFAR ResNet32x4 -> ResNet8x4, batch 64, 32 px, 2 threads, as a ratio
   to the limit "one student training step + one teacher no-grad forward" measured alternately in
   the same run. Target for figkd: <= 1.05x.
"""

from __future__ import annotations

import argparse

import timm
import torch

import hf_freqkd  # noqa: F401  registers the CIFAR zoo
from hf_freqkd.methods import build_methods
from hf_freqkd.speed import time_call, time_step
from hf_freqkd.types import LogitsAndFeatures

LOSSES = {
    "kd": {"kd": {}},
    "dkd": {"dkd": {}},
    "figkd (matrix)": {"figkd": {"backend": "matrix"}},
    "figkd (ptwt)": {"figkd": {"backend": "ptwt"}},
    "figkd J=3 db2 (matrix)": {"figkd": {"backend": "matrix", "levels": 3, "wavelet": "db2"}},
    "figkd J=3 db2 (ptwt)": {"figkd": {"backend": "ptwt", "levels": 3, "wavelet": "db2"}},
}


def loss_timings(classes: list[int], batches: list[int], iterations: int) -> list[str]:
    lines = ["| loss | " + " | ".join(f"C={c}, B={b}" for c in classes for b in batches) + " |"]
    lines.append("|---|" + "---:|" * (len(classes) * len(batches)))
    for name, spec in LOSSES.items():
        cells = []
        for num_classes in classes:
            method = [m for m in build_methods(spec, add_ce=False)][0]
            method.build({}, {}, num_classes)
            for batch in batches:
                student = torch.randn(batch, num_classes, requires_grad=True)
                teacher = LogitsAndFeatures(torch.randn(batch, num_classes))
                labels = torch.randint(0, num_classes, (batch,))

                def step():
                    sum(method(LogitsAndFeatures(student), teacher, labels).values()).backward()

                cells.append(f"{1e3 * time_call(step, iterations):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    print("## Loss forward + backward, median ms\n")
    print("\n".join(loss_timings([100, 200, 1000], [64, 256], iterations=50)))

    print("\n## Distillation step / (student train step + teacher no-grad forward), ResNet32x4 -> ResNet8x4, batch 64, 32 px\n")
    print("| methods | limit (ms) | step (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for label, methods in (("ce + kd", {"kd": {}}), ("ce + dkd", {"dkd": {}}), ("ce + figkd", {"figkd": {}})):
        timing = time_step(
            timm.create_model("resnet8x4", num_classes=100),
            timm.create_model("resnet32x4", num_classes=100),
            methods,
            batch=64,
            image_size=32,
            iterations=args.iterations,
        )
        print(f"| {label} | {1e3 * timing.limit_seconds:.0f} | {1e3 * timing.step_seconds:.0f} | {timing.ratio:.3f} |")
    print("\nCommand: python benchmarks/bench_logit_losses.py")


if __name__ == "__main__":
    main()
