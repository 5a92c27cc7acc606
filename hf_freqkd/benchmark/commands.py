"""Command-line parsing of ``hf-freqkd benchmark quality`` / ``benchmark speed`` (kept out of
``hf_freqkd/cli.py`` so the main command stays short; nothing heavy is imported here)."""

from __future__ import annotations

import argparse


def add_benchmark_parser(commands) -> argparse.ArgumentParser:
    benchmark = commands.add_parser("benchmark", help="quality (accuracy over seeds) and speed (step time, memory) benchmarks of every method")
    kinds = benchmark.add_subparsers(dest="benchmark", required=True)
    quality = kinds.add_parser(
        "quality", help="one teacher, every listed method (or variant of one) on the same student, data, schedule and seeds"
    )
    quality.add_argument("--config", required=True, help="benchmark config (configs/bench/*.yaml)")
    quality.add_argument("--output-dir", help="results folder (default: the config's output_dir)")
    quality.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help=(
            "override a benchmark key, value parsed as YAML: seeds=[0], student.num_train_epochs=5, common.max_steps=3; "
            "results.md records them with the values they replaced"
        ),
    )
    speed = kinds.add_parser("speed", help="step time and peak memory of every method as a multiple of student step + teacher forward")
    from .speed import METHODS, PAIRS

    speed.add_argument("--output-dir", default="runs/bench/speed", help="results folder (default: runs/bench/speed)")
    speed.add_argument("--pairs", nargs="+", default=list(PAIRS), help=f"{', '.join(PAIRS)} or teacher:student timm names (default: both)")
    speed.add_argument("--methods", nargs="+", default=list(METHODS), help=f"default: {' '.join(METHODS)}")
    speed.add_argument("--batch-size", type=int, default=64)
    speed.add_argument("--iterations", type=int, default=6, help="timed iterations per step kind (median reported)")
    speed.add_argument("--warmup", type=int, default=2)
    speed.add_argument("--memory-steps", type=int, default=3, help="training steps over which the peak memory is read")
    speed.add_argument("--threads", type=int, default=2, help="torch threads of each measuring process")
    speed.add_argument("--image-size", type=int, help="override every pair's input size (default 32)")
    speed.add_argument("--num-classes", type=int, help="override every pair's class count (default 100)")
    return benchmark


def run_benchmark_command(args: argparse.Namespace) -> None:
    if args.benchmark == "quality":
        from .quality import load_benchmark_config, run_quality_benchmark

        config = load_benchmark_config(args.config, args.overrides, output_dir=args.output_dir)
        result = run_quality_benchmark(config)
        print("\n".join(f"wrote {path}" for path in result.files.values()))
    else:
        from .speed import run_speed_benchmark

        try:
            run_speed_benchmark(
                args.output_dir, pairs=args.pairs, methods=args.methods, batch=args.batch_size, iterations=args.iterations,
                warmup=args.warmup, memory_steps=args.memory_steps, threads=args.threads, image_size=args.image_size,
                num_classes=args.num_classes,
            )
        except RuntimeError as error:
            raise ValueError(str(error)) from None
        print(f"wrote {args.output_dir}/speed.md, speed.csv, speed.png, speed.json")
