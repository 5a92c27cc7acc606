"""Run every command block of README.md, in order, in a fresh copy of the repository.

    python scripts/check_readme.py                 # the blocks as written (several minutes on 2 cores)
    python scripts/check_readme.py --quick         # training commands shortened to one epoch

A user reads the README top to bottom and runs each block in a fresh clone; this does the same, so
blocks that collide (two commands writing one output_dir), depend on an unmentioned step or have
drifted from the code fail here. The copy holds the repository's tracked files only (``git
ls-files``): nothing left over from earlier runs. Blocks that install (``pip install``) or run the
test suite are skipped: the caller's environment is the installed package; so are Python blocks
whose first line says they need the Hub (``HUB_ONLY``), which this check runs without. ``--quick`` appends
``num_train_epochs=1`` to every training command and sets ``num_train_epochs=1`` in Python blocks;
it checks that the blocks run, not their timings or results.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
SKIPPED = ("pip install", "python -m pytest", "HF_HUB_OFFLINE=1 python -m pytest")
#: The first line of a Python block that downloads from the Hub: shown to readers, not run offline.
HUB_ONLY = "# needs the Hub"
TRAINING_COMMAND = re.compile(r"(hf-freqkd (train-teacher|distill|fit-prompts)|scripts/(distill|train_teacher|fit_prompts)\.py)\b")


def readme_blocks(readme: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced bash / python block, in order."""
    return [(language, code) for language, code in BLOCK.findall(readme.read_text())]


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: comment lines dropped, backslash continuations joined."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def quick_command(command: str) -> str:
    """``command`` with its training shortened to one epoch (inserted before a trailing comment)."""
    if not TRAINING_COMMAND.search(command):
        return command
    code, _, _ = command.partition("   #")
    return f"{code.rstrip()} num_train_epochs=1"


def quick_python(code: str) -> str:
    return re.sub(r"num_train_epochs=\d+", "num_train_epochs=1", code)


def fresh_copy(destination: Path) -> None:
    """The repository's tracked files (and untracked, not ignored ones) copied to ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_blocks(folder: Path, quick: bool) -> list[tuple[str, float]]:
    """Run each block in ``folder``; returns (what ran, seconds). Stops at the first failure."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    timings = []
    for language, code in readme_blocks(folder / "README.md"):
        if language == "python":
            if code.startswith(HUB_ONLY):
                continue
            source = quick_python(code) if quick else code
            label = f"python block starting {code.splitlines()[0][:60]!r}"
            runs = [[sys.executable, "-c", source]]
            labels = [label]
        else:
            commands = [c for c in shell_commands(code) if not c.startswith(SKIPPED)]
            runs = [["bash", "-c", quick_command(c) if quick else c] for c in commands]
            labels = [run[-1] for run in runs]
        for command, label in zip(runs, labels):
            print(f"--- {label}", flush=True)
            start = time.perf_counter()
            finished = subprocess.run(command, cwd=folder, env=environment)
            seconds = time.perf_counter() - start
            if finished.returncode != 0:
                raise SystemExit(f"README block failed (exit {finished.returncode}) after {seconds:.0f} s: {label}")
            timings.append((label, seconds))
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per training command")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (must not exist) and keep it, instead of a temporary folder")
    args = parser.parse_args(argv)
    if args.keep:
        folder = Path(args.keep)
        if folder.exists():
            parser.error(f"--keep {folder} exists; name a new folder")
        folder.mkdir(parents=True)
        fresh_copy(folder)
        timings = run_blocks(folder, args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="hf_freqkd_readme_") as temporary:
            fresh_copy(Path(temporary))
            timings = run_blocks(Path(temporary), args.quick)
    print("\nREADME blocks, seconds each:")
    for label, seconds in timings:
        print(f"{seconds:7.1f}  {label[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
