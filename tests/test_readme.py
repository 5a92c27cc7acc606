"""The README's command blocks, read as scripts/check_readme.py reads them: they name configs that
exist, parse, and never write one output_dir twice (blocks run in order in one folder collide).

``python scripts/check_readme.py --quick`` runs them all in a fresh copy (a few minutes); this test
checks, in seconds, what makes them collide or fail before any training.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_readme", REPO / "scripts" / "check_readme.py")
check_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_readme)


def readme_commands() -> list[str]:
    commands = []
    for language, code in check_readme.readme_blocks(REPO / "README.md"):
        if language == "bash":
            commands += [c for c in check_readme.shell_commands(code) if not c.startswith(check_readme.SKIPPED)]
    return commands


def overrides_of(words: list[str]) -> list[str]:
    """The ``key=value`` overrides after ``--config FILE`` (not environment variables before the command)."""
    after_config = words[words.index("--config") + 2 :]
    return [word for word in after_config if "=" in word and not word.startswith("-")]


def training_commands() -> list[tuple[str, dict]]:
    """(command, effective config) of every training command: its YAML config with the overrides applied."""
    found = []
    for command in readme_commands():
        if not check_readme.TRAINING_COMMAND.search(command):
            continue
        words = shlex.split(command.partition("   #")[0])
        config_path = words[words.index("--config") + 1]
        values = yaml.safe_load((REPO / config_path).read_text())
        for word in overrides_of(words):
            key, value = word.split("=", 1)
            values[key] = yaml.safe_load(value)
        found.append((command, values))
    return found


def python_block_output_dirs() -> list[str]:
    dirs = []
    for language, code in check_readme.readme_blocks(REPO / "README.md"):
        if language == "python":
            dirs += re.findall(r'output_dir="([^"]+)"', code)
    return dirs


def test_readme_has_training_commands_and_the_test_command():
    assert len(training_commands()) >= 4
    assert "HF_HUB_OFFLINE=1 python -m pytest tests -q" in (REPO / "README.md").read_text()


def test_every_training_command_names_an_existing_config_and_valid_keys():
    from hf_freqkd.config import parse_config

    for command, values in training_commands():
        words = shlex.split(command.partition("   #")[0])
        config_path = words[words.index("--config") + 1]
        overrides = overrides_of(words)
        parse_config(str(REPO / config_path), overrides)  # raises on an unknown key or a bad value


def test_no_two_readme_runs_write_the_same_output_dir():
    output_dirs = [values["output_dir"] for _, values in training_commands()] + python_block_output_dirs()
    assert len(output_dirs) == len(set(output_dirs)), output_dirs


def test_every_readme_command_says_its_cpu_time():
    for command in readme_commands():
        if check_readme.TRAINING_COMMAND.search(command) or command.startswith(("hf-freqkd demo", "python")):
            assert re.search(r"#.*~?\d+ (s|min)", command) or "demo" in command, command


def test_quick_mode_shortens_training_and_keeps_the_rest():
    assert check_readme.quick_command("hf-freqkd distill --config c.yaml a=1   # ~15 s").endswith("a=1 num_train_epochs=1")
    assert check_readme.quick_command("hf-freqkd methods") == "hf-freqkd methods"
    assert check_readme.quick_python("num_train_epochs=5, x=1") == "num_train_epochs=1, x=1"


def test_only_blocks_marked_as_needing_the_hub_download_and_the_check_skips_them(tmp_path):
    python_blocks = [code for language, code in check_readme.readme_blocks(REPO / "README.md") if language == "python"]
    downloading = [code for code in python_blocks if re.search(r"load_dataset\(\"[\w.-]+/[\w.-]+\"", code)]
    assert downloading, "the README shows how to copy a Hub dataset"
    assert all(code.startswith(check_readme.HUB_ONLY) for code in downloading)
    assert all(not code.startswith(check_readme.HUB_ONLY) for code in python_blocks if code not in downloading)
    # A marked block is not run (it would fail offline); the unmarked one after it is.
    (tmp_path / "README.md").write_text(
        f"```python\n{check_readme.HUB_ONLY}\nraise SystemExit(1)\n```\n\n```python\nopen('ran', 'w')\n```\n"
    )
    check_readme.run_blocks(tmp_path, quick=False)
    assert (tmp_path / "ran").exists()
