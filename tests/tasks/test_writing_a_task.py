"""docs/writing-a-task.md runs as written: its task file registers, its check block prints what it says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from hf_freqkd.tasks import base

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-task.md"


def python_blocks() -> dict[str, str]:
    """The doc's python blocks by the file name on their first line (``# my_tasks.py``)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A user's folder holding the doc's files, importable, and the registry left as found."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    base._TASKS.pop("long_tail_classification", None)
    sys.modules.pop("my_tasks", None)


def test_the_doc_example_runs_and_prints_what_it_says(user_folder, capsys):
    blocks = python_blocks()
    assert set(blocks) == {"my_tasks.py", "check_my_task.py", "my_hf_freqkd.py"}
    (user_folder / "my_tasks.py").write_text(blocks["my_tasks.py"])
    exec(compile(blocks["check_my_task.py"], "check_my_task.py", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.splitlines() == ["0.75 0.5", "['accuracy', 'balanced_accuracy']"]
    assert "# 0.75 0.5" in blocks["check_my_task.py"]  # the printed values the doc promises


def test_the_doc_task_is_never_picked_for_a_model(user_folder):
    import timm

    import hf_freqkd  # noqa: F401  registers the CIFAR zoo
    from hf_freqkd.tasks import task_for_model

    (user_folder / "my_tasks.py").write_text(python_blocks()["my_tasks.py"])
    import my_tasks  # noqa: F401

    assert task_for_model(timm.create_model("resnet8", num_classes=3)).name == "classification"
