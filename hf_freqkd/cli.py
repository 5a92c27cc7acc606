"""The ``hf-freqkd`` command.

    hf-freqkd methods                                   registered methods, options, defaults
    hf-freqkd train-teacher --config X.yaml [k=v ...]   CE training of a teacher
    hf-freqkd distill --config X.yaml [k=v ...]         distil a student from a teacher
    hf-freqkd fit-prompts --config X.yaml [k=v ...]     FreeKD stage 1: fit frequency prompts on the teacher
    hf-freqkd demo [--output-dir D]                     offline digits demo: teacher, KD, scratch
    hf-freqkd benchmark quality --config B.yaml         every method, one teacher, seeds: table, CSV, chart
    hf-freqkd benchmark speed [--pairs ...]             step time and peak memory against the limit
    hf-freqkd spectrum --teacher T --student S          logit / feature energy per frequency band: PNGs + JSON
    hf-freqkd export --run DIR [--checkpoint C] [--to D]  the student alone + model card, in timm/transformers format
    hf-freqkd push --run DIR --repo-id USER/NAME        upload the exported student to the Hugging Face Hub

The same entry points run under ``accelerate launch scripts/<name>.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap


def _print_methods() -> None:
    from .methods import available_methods, describe_options

    for name, cls in available_methods().items():
        summary = (sys.modules[cls.__module__].__doc__ or cls.__name__).strip().splitlines()[0]
        print(f"{name}: {summary.removeprefix(f'``{name}``: ')}")
        if not cls.uses_teacher:
            print("  (needs no teacher)")
        for option, type_name, default, help_text in describe_options(cls.options_class):
            print(f"  {option} ({type_name}, default {default})")
            if help_text:
                print(textwrap.indent(textwrap.fill(help_text, 88), "      "))
        print()


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override a config key; value parsed as YAML (methods.kd.temperature=2)"
    )


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a command-line error in one line (message + where help is), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="hf-freqkd", description="Frequency-domain knowledge distillation on Hugging Face Trainer.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods", help="list registered distillation methods with their options and defaults")
    _add_run_arguments(commands.add_parser("train-teacher", help="train a teacher with cross-entropy"))
    _add_run_arguments(commands.add_parser("distill", help="distil a student from a teacher"))
    _add_run_arguments(commands.add_parser("fit-prompts", help="FreeKD stage 1: fit frequency prompts on the frozen teacher"))
    demo = commands.add_parser("demo", help="offline demo on scikit-learn's digits: teacher, student + KD, student alone")
    demo.add_argument("--output-dir", default="hf_freqkd_demo", help="folder for the demo's runs (default: hf_freqkd_demo)")
    demo.add_argument("--seed", type=int, default=0)
    export = commands.add_parser("export", help="write a run's student alone (safetensors, config, model card)")
    push = commands.add_parser("push", help="upload a run's exported student to the Hugging Face Hub")
    for sub in (export, push):
        sub.add_argument("--run", required=True, metavar="OUTPUT_DIR", help="output_dir of an hf_freqkd run")
        sub.add_argument("--checkpoint", help="a Trainer checkpoint of the run (checkpoint-N) instead of its final student")
    export.add_argument("--to", help="destination folder (default: OUTPUT_DIR/student, or OUTPUT_DIR/student-checkpoint-N)")
    push.add_argument("--repo-id", required=True, help="Hub repository, USER/NAME; created if missing")
    push.add_argument("--private", action="store_true", default=None, help="create the repository private")
    push.add_argument("--revision", help="branch to commit to (created if missing; default: main)")
    push.add_argument("--commit-message", help="commit message (default: 'Upload student with hf_freqkd')")
    from .benchmark.commands import add_benchmark_parser
    from .spectrum import add_spectrum_arguments

    add_benchmark_parser(commands)
    add_spectrum_arguments(commands.add_parser("spectrum", help="energy per frequency band of teacher and student logits and feature maps"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("HF_FREQKD_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "methods":
            _print_methods()
        elif args.command in ("train-teacher", "distill"):
            from .run import run

            result = run("teacher" if args.command == "train-teacher" else "distill", args.config, args.overrides)
            if result.export_dir:  # only the main process exports and reports
                print(f"evaluation: {result.metrics}")
                print(f"student exported to {result.export_dir}")
                if result.hub_url:
                    print(f"student pushed to {result.hub_url}")
        elif args.command == "fit-prompts":
            from .prompt_fitting import run_fit_prompts

            result = run_fit_prompts(args.config, args.overrides)
            if result.path:  # only the main process writes and reports
                print(result.summary())
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args.output_dir, seed=args.seed)
        elif args.command == "benchmark":
            from .benchmark.commands import run_benchmark_command

            run_benchmark_command(args)
        elif args.command == "spectrum":
            from .spectrum import inputs_from_args, run_spectrum, summary

            print(summary(run_spectrum(inputs_from_args(args))))
        elif args.command == "export":
            from .export import export_run

            print(f"student exported to {export_run(args.run, checkpoint=args.checkpoint, to=args.to)}")
        elif args.command == "push":
            from .push import push_run

            folder, url = push_run(
                args.run, args.repo_id, checkpoint=args.checkpoint, private=args.private,
                revision=args.revision, commit_message=args.commit_message,
            )
            print(f"pushed {folder} to {url}")
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"hf-freqkd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ArithmeticError) as error:  # the run itself failed: disk full, a non-finite loss
        print(f"hf-freqkd {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
