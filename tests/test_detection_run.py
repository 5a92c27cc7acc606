"""Detection runs through the whole product: two processes, bf16, kill -9 and exact resume.

The detectors, task, data and metric have their own tests (tests/models/test_detection.py,
tests/tasks/test_detection.py, tests/data/test_detection.py, tests/metrics/test_detection_map.py);
here a real distillation of a RetinaNet student runs as users run it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_freqkd.run import prepare_run

from .helpers import tiny_run_config

# RetinaNet on the CIFAR ResNet-8 (student) and ResNet-20 (random teacher), 32 px shapes, with a
# method that owns BatchNorm layers and filters (fam over the four FPN levels) and random augmentation.
DETECTION_RUN = tiny_run_config(
    student_model="retinanet_resnet8",
    teacher_model="retinanet_resnet20",
    task="detection",
    dataset="shapes_detection",
    dataset_config_name="num_train=48,num_test=8,image_size=32,num_classes=3,seed=0",
    image_size=32,
    augmentation="crop_flip",
    max_train_samples=None,
    max_eval_samples=None,
    methods={"ce": {"weight": 1.0}, "fam": {"weight": 1.0, "pooled_stage": "none"}},
    per_device_train_batch_size=16,
    per_device_eval_batch_size=8,
    optim="sgd",
    optim_args="momentum=0.9",
    learning_rate=0.01,
    max_steps=6,
    logging_steps=1,
)

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_detection_distillation_logs_the_detector_loss_by_part_and_reports_map(tmp_path):
    values = {**DETECTION_RUN, "output_dir": str(tmp_path / "run"), "max_steps": 2}
    trainer, *_ = prepare_run("distill", defaults=values)
    trainer.train()
    metrics = trainer.evaluate()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"loss_classification", "loss_box_regression", "loss_fam"} <= set(logged[-1])
    # The logged total is the sum of the weighted terms (ce weight 1, fam weight 1, no warm-up).
    parts = sum(logged[-1][name] for name in ("loss_classification", "loss_box_regression", "loss_fam"))
    assert math.isclose(logged[-1]["loss"], parts, rel_tol=1e-3)
    for key in ("eval_map", "eval_map_50", "eval_map_75", "eval_loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["eval_map"] <= 1.0


def test_detection_trains_in_bf16_on_the_cpu(tmp_path):
    values = {**DETECTION_RUN, "output_dir": str(tmp_path / "run"), "max_steps": 2, "bf16": True,
              "methods": {"ce": {}, "feature_mse": {"weight": 0.1}}}
    trainer, *_ = prepare_run("distill", defaults=values)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(trainer.evaluate()["eval_map"])


WORKER = """
import json, sys
from safetensors.torch import save_file
from hf_freqkd.run import prepare_run

trainer, *_ = prepare_run("distill", defaults=json.loads(sys.argv[1]))
before = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
trainer.train()
state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
rank = trainer.args.process_index
save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, f"{sys.argv[2]}/rank{rank}.safetensors")
save_file(before, f"{sys.argv[2]}/initial_rank{rank}.safetensors")
"""


def test_two_processes_keep_detector_and_method_modules_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    values = {**DETECTION_RUN, "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8, "max_steps": 2,
              "methods": {"ce": {}, "feature_mse": {"weight": 0.1}}}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script), json.dumps(values), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=CHILD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{rank}.safetensors")) for rank in (0, 1))
    initial = load_file(str(tmp_path / "initial_rank0.safetensors"))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    parameters = [key for key in rank0 if not key.endswith(buffers)]
    assert any(key.startswith("methods.feature_mse.") for key in parameters)
    for key in parameters:  # DDP keeps the ranks in lockstep: student, FPN, head and adapters
        assert torch.equal(rank0[key], rank1[key]), key
    moved = [key for key in parameters if not torch.equal(rank0[key], initial[key])]
    assert any(".detector.head." in key for key in moved) and any(key.startswith("methods.feature_mse.") for key in moved)


# -- kill -9 and resume -----------------------------------------------------------------------------

RESUME_RUN = {**DETECTION_RUN, "max_steps": 9, "save_strategy": "steps", "save_steps": 3, "save_total_limit": 2,
              "distill_warmup_steps": 6, "logging_steps": 3}


def start_distill(output_dir: Path, extra: dict | None = None) -> subprocess.Popen:
    args = [f"{key}={json.dumps(value)}" for key, value in {**RESUME_RUN, "output_dir": str(output_dir), **(extra or {})}.items() if value is not None]
    code = "import sys\nfrom hf_freqkd.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "distill", *args], env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start_distill(output_dir))
    return output_dir


def test_kill_during_detection_training_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    output_dir = tmp_path / "run"
    process = start_distill(output_dir)
    deadline = time.monotonic() + 300
    while not (output_dir / "checkpoint-3").is_dir():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output_dir / "checkpoint-9").exists()

    finish(start_distill(output_dir, {"resume_from_checkpoint": True}))
    got = load_file(str(output_dir / "checkpoint-9" / "model.safetensors"))
    expected = load_file(str(uninterrupted / "checkpoint-9" / "model.safetensors"))
    assert set(got) == set(expected) and any(key.startswith("methods.fam.") for key in got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
