"""Throughput and memory of data-parallel training: 1 process x 2 threads vs 2 processes x 1 thread.

On this 2-core machine the two layouts have the same compute, so the 2-process run loses exactly
what synchronisation costs (gradient all-reduce through gloo, buffer broadcast, the extra Python
process). Each layout trains the same run (same global batch) through ``accelerate launch`` and the
real ``DistillationTrainer``; a callback times the optimizer steps after a warm-up, and each process
reports its peak resident memory (``ru_maxrss``: torch's CPU allocations included, unlike
tracemalloc). Prints a Markdown table and the command that produced it.

    python benchmarks/bench_processes.py [--methods kd fam] [--steps 30] [--warmup 5] [--global-batch 64]

Run it alone on the machine: other processes' load distorts the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIR = {"student_model": "resnet20", "teacher_model": "resnet56"}  # the CIFAR pair, random teacher
METHODS = {"kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}}, "fam": {"ce": {}, "fam": {}}, "figkd": {"ce": {}, "figkd": {}}}


def worker(values: dict, warmup: int, report: str) -> None:
    """Runs inside ``accelerate launch``: train, time steps after the warm-up, write one JSON per rank."""
    import resource

    from transformers import TrainerCallback

    from hf_freqkd.run import prepare_run

    class StepClock(TrainerCallback):
        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    trainer, args, *_ = prepare_run("distill", defaults=values)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    timed_steps = args.max_steps - warmup
    record = {
        "rank": args.process_index,
        "seconds": clock.end - clock.start,
        "timed_steps": timed_steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(report, f"rank{args.process_index}.json").write_text(json.dumps(record))


def launch(method: str, processes: int, threads: int, steps: int, warmup: int, global_batch: int, folder: Path) -> dict:
    folder.mkdir(parents=True)
    values = {
        **PAIR,
        "methods": METHODS[method],
        "dataset": "digits",
        "image_size": 32,
        "augmentation": "crop_flip",
        "per_device_train_batch_size": global_batch // processes,
        "max_steps": steps,
        "optim": "sgd",
        "learning_rate": 0.05,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": steps,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "output_dir": str(folder / "run"),
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1"]
    command += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += [__file__, "--worker", json.dumps(values), str(warmup), str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{method} with {processes} process(es) failed:\n{result.stderr[-3000:]}")
    ranks = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(processes)]
    seconds = max(r["seconds"] for r in ranks)  # DDP steps in lockstep: the slowest rank sets the pace
    return {
        "images_per_second": global_batch * ranks[0]["timed_steps"] / seconds,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["kd", "fam"], choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=64)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in options.methods:
            single = launch(method, 1, 2, options.steps, options.warmup, options.global_batch, Path(scratch, method, "one"))
            double = launch(method, 2, 1, options.steps, options.warmup, options.global_batch, Path(scratch, method, "two"))
            rows.append((method, single, double))
    print(f"`python benchmarks/bench_processes.py --methods {' '.join(options.methods)} --steps {options.steps} "
          f"--warmup {options.warmup} --global-batch {options.global_batch}` "
          f"({PAIR['teacher_model']} -> {PAIR['student_model']}, 32 px, global batch {options.global_batch})\n")
    print("| method | 1 proc x 2 threads img/s | 2 procs x 1 thread img/s | ratio | peak RSS per process, 1 proc / 2 procs (MB) |")
    print("|---|---|---|---|---|")
    for method, single, double in rows:
        ratio = double["images_per_second"] / single["images_per_second"]
        print(f"| {method} | {single['images_per_second']:.1f} | {double['images_per_second']:.1f} | {ratio:.2f}x | "
              f"{single['peak_rss_mb']:.0f} / {double['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
