"""Checkpoints survive faults: written atomically, resumed exactly, never lost to a kill.

The kill tests send a real SIGKILL to a real ``hf-freqkd distill`` subprocess - once while it trains,
once while it is half-way through writing a checkpoint - and then resume the run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_freqkd.run import run
from hf_freqkd.training import CHECKPOINT_STAGING_DIR

from .helpers import tiny_run_config

# A distillation with everything resume must restore: a method with trainable modules (fam), a
# warm-up that is still ramping at the kill, a step LR decay, momentum, and random augmentation.
RUN = tiny_run_config(
    teacher_model="resnet14",  # random teacher: resume exactness does not need a good one
    image_size=16,
    augmentation="crop_flip",
    max_train_samples=48,  # 3 steps per epoch: checkpoints fall mid-epoch
    max_eval_samples=32,
    methods={"ce": {"weight": 1.0}, "fam": {"weight": 1.0}},
    distill_warmup_steps=8,
    lr_decay_epochs=[2],
    lr_decay_rate=0.1,
    per_device_train_batch_size=16,
    optim="sgd",
    optim_args="momentum=0.9",
    learning_rate=0.05,
    max_steps=12,
    save_strategy="steps",
    save_steps=4,
    save_total_limit=2,
    logging_steps=4,
)

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def overrides(values: dict) -> list[str]:
    import json

    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def start_distill(output_dir: Path, extra: dict | None = None, prelude: str = "", env: dict | None = None) -> subprocess.Popen:
    """``hf-freqkd distill`` in a subprocess; ``prelude`` is Python run before the CLI (fault injection)."""
    code = f"{prelude}\nimport sys\nfrom hf_freqkd.cli import main\nsys.exit(main(sys.argv[1:]))"
    args = overrides({**RUN, "output_dir": str(output_dir), **(extra or {})})
    return subprocess.Popen(
        [sys.executable, "-c", code, "distill", *args], env={**CHILD_ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the kill point:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start_distill(output_dir))
    return output_dir


def assert_same_final_weights(run_dir: Path, reference: Path) -> None:
    # The final checkpoint holds the student and the method modules (FAM's filters and adapters).
    got = load_file(str(run_dir / "checkpoint-12" / "model.safetensors"))
    expected = load_file(str(reference / "checkpoint-12" / "model.safetensors"))
    assert set(got) == set(expected) and any(key.startswith("methods.fam.") for key in got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_checkpoints_are_complete_and_staging_is_empty(uninterrupted):
    names = sorted(p.name for p in uninterrupted.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-12", "checkpoint-8"]  # save_total_limit 2 rotated checkpoint-4 away
    files = {p.name for p in (uninterrupted / "checkpoint-12").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files
    assert not any((uninterrupted / CHECKPOINT_STAGING_DIR).iterdir())


def test_kill_during_training_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    output_dir = tmp_path / "run"
    process = start_distill(output_dir)
    wait_for(lambda: (output_dir / "checkpoint-4").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output_dir / "checkpoint-12").exists()

    finish(start_distill(output_dir, {"resume_from_checkpoint": True}))
    assert_same_final_weights(output_dir, uninterrupted)


# Slows the second checkpoint's optimizer write down and announces it, so the test can kill the
# process while that checkpoint is half written.
SLOW_SECOND_SAVE = """
import os, time, torch
_save, _calls = torch.save, []
def slow_save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    if str(f).endswith("optimizer.pt"):
        _calls.append(f)
        if len(_calls) == 2:
            open(os.environ["HF_FREQKD_TEST_SAVING"], "w").close()
            time.sleep(600)
torch.save = slow_save
"""


def test_kill_while_saving_keeps_the_previous_checkpoint_and_resumes(tmp_path, uninterrupted):
    output_dir, marker = tmp_path / "run", tmp_path / "saving"
    process = start_distill(output_dir, {"save_total_limit": 1}, prelude=SLOW_SECOND_SAVE, env={"HF_FREQKD_TEST_SAVING": str(marker)})
    wait_for(lambda: (output_dir / "checkpoint-4").is_dir(), process)
    previous = digest(output_dir / "checkpoint-4")
    wait_for(marker.exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    # checkpoint-8 was half written: it must not look like a checkpoint, and checkpoint-4 is untouched.
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-4"]
    assert digest(output_dir / "checkpoint-4") == previous

    finish(start_distill(output_dir, {"resume_from_checkpoint": True, "save_total_limit": 1}))
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-12"]
    assert not any((output_dir / CHECKPOINT_STAGING_DIR).iterdir())
    assert_same_final_weights(output_dir, uninterrupted)


def test_resume_from_an_earlier_checkpoint_replaces_later_ones_whole(tmp_path, uninterrupted):
    import json
    import shutil

    from safetensors.torch import save_file

    output_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, output_dir)
    # Make the copied checkpoint-12 wrong in ways only a fresh save repairs: zeroed weights, a stray
    # file, a trainer state from another step, and old timestamps.
    later = output_dir / "checkpoint-12"
    save_file({key: torch.zeros_like(value) for key, value in load_file(str(later / "model.safetensors")).items()}, str(later / "model.safetensors"))
    (later / "stray.txt").write_text("left by an older run")
    state = json.loads((later / "trainer_state.json").read_text())
    (later / "trainer_state.json").write_text(json.dumps({**state, "global_step": 999}))
    long_ago = 1_000_000_000
    for file in later.iterdir():
        os.utime(file, ns=(long_ago, long_ago))

    result = run("distill", defaults={**RUN, "output_dir": str(output_dir), "resume_from_checkpoint": str(output_dir / "checkpoint-8")})
    assert result.export_dir is not None
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    assert not (later / "stray.txt").exists()  # replaced whole, not merged into
    assert json.loads((later / "trainer_state.json").read_text())["global_step"] == 12
    assert all(file.stat().st_mtime_ns != long_ago for file in later.iterdir())
    assert_same_final_weights(output_dir, uninterrupted)
