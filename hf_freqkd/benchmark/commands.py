"""Command-line parsing of ``hf-freqkd benchmark quality`` / ``speed`` / ``data`` (kept out of
``hf_freqkd/cli.py`` so the main command stays short; nothing heavy is imported here)."""

from __future__ import annotations

import argparse


def add_benchmark_parser(commands) -> argparse.ArgumentParser:
    benchmark = commands.add_parser(
        "benchmark", help="quality (accuracy over seeds) and speed (step time, memory) of every method; data pipeline throughput"
    )
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
    speed.add_argument("--pairs", nargs="+", default=list(PAIRS), help=f"{', '.join(PAIRS)} or teacher:student timm names (default: all)")
    speed.add_argument("--methods", nargs="+", default=list(METHODS), help=f"default: {' '.join(METHODS)}")
    speed.add_argument("--batch-size", type=int, default=64)
    speed.add_argument("--iterations", type=int, default=6, help="timed iterations per step kind (median reported)")
    speed.add_argument("--warmup", type=int, default=2)
    speed.add_argument("--memory-steps", type=int, default=3, help="training steps over which the peak memory is read")
    speed.add_argument("--threads", type=int, default=2, help="torch threads of each measuring process")
    speed.add_argument("--image-size", type=int, help="override every pair's input size (default 32)")
    speed.add_argument("--num-classes", type=int, help="override every pair's class count (default 100)")
    speed.add_argument(
        "--teacher-cache", action="store_true",
        help="also time every teacher method reading a teacher cache instead of running the teacher (rows '<method> (cached teacher)')",
    )
    data = kinds.add_parser(
        "data", help="images per second of the training data pipeline, and its time per image against plain datasets + torchvision"
    )
    data.add_argument(
        "--dataset", default="digits", help="any dataset a run accepts: a generated set, parquet, image folder, Hub id (default: digits)"
    )
    data.add_argument("--dataset-config-name", help="configuration name of a Hub or generated dataset")
    data.add_argument("--split", default="train", help="split to read (default: train)")
    data.add_argument("--image-size", type=int, help="input size in pixels (default: the first image's height)")
    data.add_argument("--channels", type=int, default=3, choices=(1, 3), help="3 (RGB, default) or 1 (grayscale)")
    data.add_argument("--augmentation", default="crop_flip", help="crop_flip (default), crop, timm or none")
    data.add_argument("--images", type=int, default=2048, help="rows read, from the start of the split (default: 2048)")
    data.add_argument("--batch-size", type=int, default=128, help="rows per datasets access, as a DataLoader batch (default: 128)")
    data.add_argument("--repeats", type=int, default=5, help="timed rounds per pipeline, alternating (median reported; default: 5)")
    data.add_argument("--warmup", type=int, default=1, help="untimed rounds per pipeline first (default: 1)")
    data.add_argument("--threads", type=int, default=1, help="torch threads, as in one DataLoader worker (default: 1)")
    data.add_argument("--output-dir", default="runs/bench/data", help="folder for data.md and data.json (default: runs/bench/data)")
    return benchmark


def run_benchmark_command(args: argparse.Namespace) -> None:
    if args.benchmark == "quality":
        from .quality import load_benchmark_config, run_quality_benchmark

        config = load_benchmark_config(args.config, args.overrides, output_dir=args.output_dir)
        result = run_quality_benchmark(config)
        print("\n".join(f"wrote {path}" for path in result.files.values()))
    elif args.benchmark == "data":
        from .data import run_data_benchmark, summary_lines

        result = run_data_benchmark(
            args.dataset, args.output_dir, dataset_config_name=args.dataset_config_name, split=args.split, image_size=args.image_size,
            channels=args.channels, augmentation=args.augmentation, images=args.images, batch_size=args.batch_size, repeats=args.repeats,
            warmup=args.warmup, threads=args.threads,
        )
        print("\n".join(summary_lines(result)))
        print("\n".join(f"wrote {path}" for path in result.files.values()))
    else:
        from ..errors import TrainingError
        from .speed import run_speed_benchmark

        try:
            run_speed_benchmark(
                args.output_dir, pairs=args.pairs, methods=args.methods, batch=args.batch_size, iterations=args.iterations,
                warmup=args.warmup, memory_steps=args.memory_steps, threads=args.threads, image_size=args.image_size,
                num_classes=args.num_classes, teacher_cache=args.teacher_cache,
            )
        except RuntimeError as error:  # a measurement failed, after every input was checked
            raise TrainingError(str(error)) from None
        print(f"wrote {args.output_dir}/speed.md, speed.csv, speed.png, speed.json")
