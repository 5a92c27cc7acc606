"""Speed of FreeKD's 2-D wavelet transform against one memory copy of the map it transforms.

    python benchmarks/bench_wavelet.py

On a float32 feature map ((64, 256, 32, 32) by default, the size of issue 15's target; FreeKD's
CIFAR ResNet32x4 layer3 at batch 64 is (64, 256, 8, 8)), for each backend of
:mod:`hf_freqkd.frequency.wavelet2d` (haar, matrix, ptwt), the median time of:

* forward: ``wavelet_decompose`` (haar, zero mode, 3 levels);
* inverse: ``wavelet_reconstruct`` of those bands;
* forward + inverse;
* forward + backward: the decomposition, then the gradient of the map from given gradients of every
  band (what FreeKD pays for the student's map, whose high bands enter the loss);

each divided by the median of one memory copy of the map (``x.clone()``, which allocates its
output as the transform does). Every step, the copy included, is timed interleaved
(:func:`hf_freqkd.speed.time_interleaved`) so that load from other processes hits all alike. The
backends' results are checked to agree before timing.

A freshly allocated tensor this large (64 MiB by default) comes from the kernel as untouched pages,
so ``x.clone()`` also pays a page fault per 4 KiB page, as do the transforms' outputs; the copy into
an existing tensor (``y.copy_(x)``, printed for reference, not a ratio's denominator) shows how much
of the clone that is.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch

from hf_freqkd.frequency import wavelet_decompose, wavelet_reconstruct
from hf_freqkd.speed import time_interleaved

BACKENDS = ("haar", "matrix", "ptwt")
OPERATIONS = ("forward", "inverse", "forward + inverse", "forward + backward")


def steps_of(backend: str, x: torch.Tensor, levels: int, mode: str) -> dict[str, Callable[[], object]]:
    """The four timed operations of one backend, as calls without arguments."""
    with torch.no_grad():
        bands = wavelet_decompose(x, "haar", levels, mode, backend)
    band_gradients = [torch.randn_like(band) for band in bands.bands()]
    leaf = x.detach().requires_grad_(True)

    def forward_backward() -> None:
        decomposed = wavelet_decompose(leaf, "haar", levels, mode, backend)
        torch.autograd.grad(decomposed.bands(), leaf, band_gradients)

    def forward():
        return wavelet_decompose(x, "haar", levels, mode, backend)

    return {
        "forward": forward,
        "inverse": lambda: wavelet_reconstruct(bands, "haar", backend),
        "forward + inverse": lambda: wavelet_reconstruct(forward(), "haar", backend),
        "forward + backward": forward_backward,
    }


def check_backends_agree(x: torch.Tensor, levels: int, mode: str, backends: list[str]) -> None:
    """Bands, reconstruction and input gradient of every backend equal the first's."""
    results = []
    for backend in backends:
        leaf = x.detach().requires_grad_(True)
        bands = wavelet_decompose(leaf, "haar", levels, mode, backend)
        weights = torch.linspace(-1, 1, bands.high[0].numel()).view_as(bands.high[0])
        (gradient,) = torch.autograd.grad((bands.high[0] * weights).sum() + bands.low.sum(), leaf)
        results.append((bands, gradient, wavelet_reconstruct(bands, "haar", backend)))
    (reference, reference_gradient, reference_rebuilt), *others = results
    for bands, gradient, rebuilt in others:
        for band, expected in zip(bands.bands(), reference.bands()):
            torch.testing.assert_close(band, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gradient, reference_gradient, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rebuilt, reference_rebuilt, rtol=1e-4, atol=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[64, 256, 32, 32], metavar=("B", "C", "H", "W"))
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--mode", default="zero")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n")

    x = torch.randn(*args.shape)
    check_backends_agree(x[:2], args.levels, args.mode, args.backends)
    existing = torch.empty_like(x)
    steps = {"copy": lambda: x.clone(), "copy into an existing tensor": lambda: existing.copy_(x)}
    for backend in args.backends:
        for operation, step in steps_of(backend, x, args.levels, args.mode).items():
            steps[backend, operation] = step
    times = time_interleaved(steps, args.iterations, args.warmup)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    copy = medians["copy"]

    shape = ", ".join(map(str, args.shape))
    title = f"{args.levels}-level 2-D haar ({args.mode} mode) of a ({shape}) float32 map"
    print(f"## {title}: median ms (ratio to one copy)\n")
    print(f"One memory copy (`x.clone()`): {1e3 * copy:.1f} ms")
    print(f"(for reference, into an existing tensor: {1e3 * medians['copy into an existing tensor']:.1f} ms)\n")
    print("| operation | " + " | ".join(args.backends) + " |")
    print("|---|" + "---:|" * len(args.backends))
    for operation in OPERATIONS:
        seconds = [medians[backend, operation] for backend in args.backends]
        print(f"| {operation} | " + " | ".join(f"{1e3 * t:.1f} ({t / copy:.2f}x)" for t in seconds) + " |")
    flags = (
        f"--shape {' '.join(map(str, args.shape))} --levels {args.levels} --mode {args.mode} "
        f"--backends {' '.join(args.backends)} --iterations {args.iterations} --warmup {args.warmup} "
        f"--threads {args.threads}"
    )
    print(f"\nCommand: python benchmarks/bench_wavelet.py {flags}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
