"""How steady is the speed benchmark's peak-memory figure? The limit step's peak memory (what 3 training
steps add to a fresh process's resident memory, :mod:`hf_freqkd.benchmark.speed`) measured in N fresh
processes with glibc's allocator as it is by default and N with its mmap threshold fixed at 128 KiB
(``MEMORY_ALLOCATOR_ENV``, what ``hf-freqkd benchmark speed`` uses), for one pair. Prints Markdown.

    python benchmarks/bench_memory_measurement.py [--pair resnet32x4-resnet8x4] [--repeats 4]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_freqkd.benchmark.speed import MEMORY_ALLOCATOR_ENV, parse_pair, run_worker  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="resnet32x4-resnet8x4", help="a speed-benchmark pair or teacher:student")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    name, pair = parse_pair(args.pair)
    job = {"pair": asdict(pair), "methods": None, "batch": args.batch_size, "iterations": 0, "warmup": 0,
           "memory_steps": 3, "threads": args.threads}
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print(f"| allocator | limit's peak memory over weights, {name}, {args.repeats} fresh processes (MiB) |")
    print("|---|---|")
    for label, env in (("glibc default", {}), ("mmap threshold 128 KiB", MEMORY_ALLOCATOR_ENV)):
        peaks = []
        for _ in range(args.repeats):
            result = run_worker(job, None, env)
            if "error" in result:
                raise SystemExit(f"{label}: {result['error']}")
            peaks.append(result["peak_mib"])
        print(f"| {label} | {', '.join(f'{peak:.0f}' for peak in peaks)} |")


if __name__ == "__main__":
    main()
