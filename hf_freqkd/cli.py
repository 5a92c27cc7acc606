"""The ``hf-freqkd`` command.

    hf-freqkd methods                                   registered methods, options, defaults
    hf-freqkd train-teacher --config X.yaml [k=v ...]   CE training of a teacher
    hf-freqkd distill --config X.yaml [k=v ...]         distil a student from a teacher
    hf-freqkd fit-prompts --config X.yaml [k=v ...]     FreeKD stage 1: fit frequency prompts on the teacher
    hf-freqkd cache-teacher --config X.yaml [k=v ...]   the teacher's outputs on every training view, for teacher_cache
    hf-freqkd demo [--output-dir D]                     offline digits demo: teacher, KD, scratch
    hf-freqkd benchmark quality --config B.yaml         every method, one teacher, seeds: table, CSV, chart
    hf-freqkd benchmark speed [--pairs ...]             step time and peak memory against the limit
    hf-freqkd benchmark data [--dataset D]              images/s of the training transform against plain torchvision
    hf-freqkd spectrum --teacher T --student S          logit / feature energy per frequency band: PNGs + JSON
    hf-freqkd tune --config T.yaml [--storage URL] [--workers N] [k=v ...]
                                                        search methods and settings on a validation split: best.yaml
    hf-freqkd export --run DIR [--checkpoint C] [--to D]  the student alone + model card, in timm/transformers format
    hf-freqkd push --run DIR --repo-id USER/NAME        upload the exported student to the Hugging Face Hub

A config key is overridden as ``key=value``, ``--key value`` or ``--key=value`` (the last two as in
transformers' HfArgumentParser scripts); a boolean key given as ``--key`` alone is set to true.

Exit codes (:mod:`hf_freqkd.errors`): 0 done; 2 bad input (config, data, model, options; one line,
nothing trained); 1 the run failed (one line) or a bug (its traceback); 3 training finished but the
Hub upload failed (what was kept, how to push again); 130 interrupted (Ctrl-C; the step reached and
how to resume).

The same entry points run under ``accelerate launch scripts/<name>.py``. There the error line is
printed by the main process only, and also handed to torch elastic's error file, so the launcher's
failure summary ("Root Cause") shows it instead of a bare exit code.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import textwrap
import time
import traceback
import typing

from .errors import (
    EXIT_BAD_INPUT,
    EXIT_HUB_UPLOAD_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_FAILED,
    BadInputError,
    ConfigError,
    HubUploadError,
    TrainingError,
)

#: commands that take ``--config`` plus config overrides
RUN_COMMANDS = ("train-teacher", "distill", "fit-prompts", "cache-teacher", "tune")
#: options of those commands that take a value (the others are config keys)
_VALUE_OPTIONS = ("--config", "--storage", "--workers")
#: the words HfArgumentParser reads as booleans after a ``--flag``
_BOOLEAN_WORDS = {"true": "true", "t": "true", "yes": "true", "y": "true", "1": "true",
                  "false": "false", "f": "false", "no": "false", "n": "false", "0": "false"}


def _print_methods() -> None:
    from .methods import available_methods, describe_options
    from .methods.registry import method_description

    for name, cls in available_methods().items():
        print(f"{name}: {method_description(cls)}")
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
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override a config key; value parsed as YAML (methods.kd.temperature=2); "
        "--key value and --key=value work too",
    )


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a command-line error in one line (message + where help is), not the usage block."""

    #: option names an unrecognised ``--flag`` is compared with for a "did you mean"
    known_options: list[str] = []

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [word.split("=")[0] for word in message.split()[2:] if word.startswith("--")]
            close = [match for flag in flags for match in difflib.get_close_matches(flag, self.known_options, n=1, cutoff=0.6)]
            if close:
                message += f" (did you mean {', '.join(close)}?)"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="hf-freqkd", description="Frequency-domain knowledge distillation on Hugging Face Trainer.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods", help="list registered distillation methods with their options and defaults")
    _add_run_arguments(commands.add_parser("train-teacher", help="train a teacher with cross-entropy"))
    _add_run_arguments(commands.add_parser("distill", help="distil a student from a teacher"))
    _add_run_arguments(commands.add_parser("fit-prompts", help="FreeKD stage 1: fit frequency prompts on the frozen teacher"))
    _add_run_arguments(
        commands.add_parser("cache-teacher", help="compute the teacher's outputs on every training view a distill config will draw (its teacher_cache)")
    )
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
    tune = commands.add_parser("tune", help="search the methods and their settings on a validation split (docs/tune.md)")
    _add_run_arguments(tune)
    tune.add_argument("--storage", help="Optuna storage URL shared by workers and machines (default: output_dir/study.db)")
    tune.add_argument("--workers", type=int, help="processes on this machine that share the study (default: search.workers, 1)")
    return parser


def flags_as_overrides(arguments: list[str]) -> list[str]:
    """The arguments of a run command with every ``--key value`` / ``--key=value`` of a config key
    turned into ``key=value``, placed after the command's own options.

    ``--key`` alone sets a boolean key to true (as HfArgumentParser does); ``--num-train-epochs``
    is ``num_train_epochs``. A ``--flag`` that is no config key is left for argparse to refuse
    (with a "did you mean"), and a config key given as ``--key`` with no value is a one-line error.
    """
    from .config import config_field_types

    field_types = config_field_types()
    own: list[str] = []
    overrides: list[str] = []
    position = 0
    while position < len(arguments):
        token = arguments[position]
        position += 1
        name, has_value, value = token[2:].partition("=")
        field = name.split(".")[0].replace("-", "_")
        if not token.startswith("--") or field not in field_types:
            # key=value overrides stay overrides; --config X, -h or an unknown --flag are for argparse.
            (own if token.startswith("-") else overrides).append(token)
            if token in _VALUE_OPTIONS and position < len(arguments):
                own.append(arguments[position])
                position += 1
            continue
        key = field + name[len(name.split(".")[0]):]
        following = arguments[position] if position < len(arguments) else None
        takes_bool = bool in (field_types[field], *typing.get_args(field_types[field]))
        if has_value:
            value = _BOOLEAN_WORDS.get(value.lower(), value) if takes_bool else value
        elif takes_bool and (following is None or following.lower() not in _BOOLEAN_WORDS):
            value = "true"
        elif following is None or following.startswith("--"):
            raise ConfigError(f"{token} needs a value: {token} VALUE, {token}=VALUE or {key}=VALUE")
        else:
            value = _BOOLEAN_WORDS[following.lower()] if takes_bool else following
            position += 1
        overrides.append(f"{key}={value}")
    return [*own, *overrides]


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-freqkd`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in RUN_COMMANDS:
        from .config import config_field_types

        parser.known_options = ["--config", *(f"--{name}" for name in config_field_types())]
        try:
            argv = [argv[0], *flags_as_overrides(argv[1:])]
        except ConfigError as error:
            parser.error(str(error))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HF_FREQKD_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    command = f"hf-freqkd {args.command}"
    try:
        _run_command(args)
    except BadInputError as error:
        return _report(f"{command}: error: {_one_line(error)}", EXIT_BAD_INPUT)
    except HubUploadError as error:
        return _report(f"{command}: error: {_one_line(error)}", EXIT_HUB_UPLOAD_FAILED)
    except (TrainingError, OSError) as error:  # the run started and failed: a non-finite loss, a full disk
        return _report(f"{command}: error: {_one_line(error)}", EXIT_TRAINING_FAILED)
    except KeyboardInterrupt as interrupt:
        # A terminal has echoed ^C where the cursor stood, maybe after a progress bar: the line starts afresh.
        # (DistillationTrainer ends its progress bar's line itself, for stderr that is a file or a pipe.)
        return _report(f"{command}: {_interrupted(interrupt)}", EXIT_INTERRUPTED, start_new_line=sys.stderr.isatty())
    except Exception:  # a bug: the traceback is what a bug report needs
        trace = traceback.format_exc()
        sys.stderr.write(trace)
        _hand_to_launcher(trace.strip().splitlines()[-1], trace)
        return EXIT_TRAINING_FAILED
    return 0


def _run_command(args: argparse.Namespace) -> None:
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
    elif args.command == "cache-teacher":
        from .run import run_cache_teacher
        from .teacher_cache import format_bytes

        cache = run_cache_teacher(args.config, args.overrides)
        print(f"teacher cache: {cache.path} ({format_bytes(cache.size_bytes)}, {cache.identity.epochs} epoch(s) x {cache.rows} rows)")
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args.output_dir, seed=args.seed)
    elif args.command == "benchmark":
        from .benchmark.commands import run_benchmark_command

        run_benchmark_command(args)
    elif args.command == "tune":
        from .tune.config import load_tune_config
        from .tune.study import run_tune

        result = run_tune(load_tune_config(args.config, args.overrides, storage=args.storage, workers=args.workers))
        print("\n".join(result.summary))
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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _interrupted(interrupt: KeyboardInterrupt) -> str:
    """One line: where the run stopped and how to go on (``DistillationTrainer.train`` sets the attributes)."""
    step = getattr(interrupt, "global_step", None)
    if step is None:
        return "interrupted (Ctrl-C)"
    checkpoint = getattr(interrupt, "last_checkpoint", None)
    if checkpoint is None:
        return (
            f"interrupted (Ctrl-C) at step {step}, before any checkpoint was saved; run the same command to start "
            "again (save_steps sets how often checkpoints are written)"
        )
    return (
        f"interrupted (Ctrl-C) at step {step}; to continue from {checkpoint}, run the same command "
        "with resume_from_checkpoint=true"
    )


def _report(line: str, code: int, start_new_line: bool = False) -> int:
    """Print ``line`` and return ``code``; under torch elastic, on the main process only. ``start_new_line``
    ends whatever stderr's last line holds first, so that ``line`` starts on a line of its own."""
    handed = _hand_to_launcher(line, line)
    if os.environ.get("RANK", "0") == "0" or not handed:
        print(f"\n{line}" if start_new_line else line, file=sys.stderr)
    else:
        # Bad input fails every rank alike, and the first rank to exit gets the others killed: give
        # the main rank time to print the line first. This rank's line is in the launcher's summary.
        time.sleep(_OTHER_RANKS_EXIT_DELAY_SECONDS)
    return code


_OTHER_RANKS_EXIT_DELAY_SECONDS = 2.0


def _hand_to_launcher(message: str, details: str) -> bool:
    """Write torch elastic's error file when running under it (``accelerate launch`` with several
    processes, torchrun), so the launcher's failure summary shows ``details`` for this rank instead
    of "To enable traceback see ...". Returns whether there was a file to write.

    The format is the one ``torch.distributed.elastic.multiprocessing.errors.ErrorHandler`` writes:
    ``{"message": {"message": ..., "extraInfo": {"py_callstack": ..., "timestamp": ...}}}``.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w") as file:
            json.dump({"message": {"message": message, "extraInfo": {"py_callstack": details, "timestamp": str(int(time.time()))}}}, file)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
