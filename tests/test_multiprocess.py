"""Two processes with ``accelerate launch --multi_gpu`` (gloo on this CPU machine) keep student and
method modules in lockstep, and train the same student as one process with the same global batch.
DDP searches each step for unused parameters only when a method declares it leaves some unused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from .helpers import AlternatingBranches, tiny_run_config

# LayerNorm student (no batch statistics, so 2 x 8 rows give the same update as 1 x 16), KD, and
# random augmentation (seeded per sample, so the same whatever the number of processes).
RUN = tiny_run_config(
    student_model="test_vit",
    student_model_kwargs={"img_size": 32},
    teacher_model="resnet8",
    image_size=32,
    augmentation="crop_flip",
    max_train_samples=64,
    max_eval_samples=32,
    methods={"ce": {"weight": 1.0}, "kd": {"weight": 1.0}},
    optim="sgd",
    optim_args="momentum=0.9",
    learning_rate=0.05,
    max_grad_norm=0.0,
    max_steps=3,
    logging_steps=1,
)

WORKER = """
import json, sys
from safetensors.torch import save_file
from hf_freqkd.methods import register_method
from hf_freqkd.run import prepare_run
from tests.helpers import AlternatingBranches

register_method(AlternatingBranches)

def save(trainer, prefix):
    state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, f"{sys.argv[2]}/{prefix}rank{trainer.args.process_index}.safetensors")

trainer, *_ = prepare_run("distill", defaults=json.loads(sys.argv[1]))
save(trainer, "initial_")  # student and method modules as built, before any update
trainer.train()
save(trainer, "")
"""


# What DDP prints, once per rank, when told to search for unused parameters and none was unused.
NEEDLESS_SEARCH_WARNING = "find_unused_parameters=True was specified in DDP constructor, but did not find any unused parameters"


def launch(tmp_path, processes: int, batch: int, name: str, **extra) -> tuple[list[dict[str, torch.Tensor]], str]:
    """Final Distiller state of each rank, and the launch's stderr; the initial states are in
    ``<name>/initial_rank<i>.safetensors``."""
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    values = {**RUN, "output_dir": str(out / "run"), "per_device_train_batch_size": batch, **extra}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1"]
    command += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script), json.dumps(values), str(out)]
    repo = Path(__file__).resolve().parents[1]  # the worker imports tests.helpers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [load_file(str(out / f"rank{rank}.safetensors")) for rank in range(processes)], result.stderr


def test_two_processes_train_the_same_student_as_one_process(tmp_path):
    (rank0, rank1), stderr = launch(tmp_path, processes=2, batch=8, name="two")
    (single,), _ = launch(tmp_path, processes=1, batch=16, name="one")
    # Every parameter takes part in every step: DDP does not search the graph for unused ones.
    assert NEEDLESS_SEARCH_WARNING not in stderr

    for key in rank0:  # DDP keeps the ranks in lockstep
        assert torch.equal(rank0[key], rank1[key]), key
    from hf_freqkd.models import load_model

    initial = load_model("test_vit", num_classes=10, model_kwargs={"img_size": 32})  # same seed as the runs
    moved = max((rank0[f"student.model.{k}"] - v).abs().max().item() for k, v in initial.state_dict().items())
    assert moved > 1e-3, "training did not change the student"
    for key in single:  # the same global batch of 16: the same result up to float reduction order
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_method_modules_are_synchronised_across_processes(tmp_path):
    # FAM adds filters, adapters and BatchNorm layers. DDP averages their gradients like the student's,
    # so every parameter is identical on both ranks. BatchNorm running statistics are buffers that DDP
    # copies from rank 0 before each forward; each rank's last forward updates its own copy.
    (rank0, rank1), stderr = launch(tmp_path, processes=2, batch=8, name="fam", methods={"ce": {}, "fam": {}}, student_model="resnet8",
                                    student_model_kwargs={}, teacher_model="resnet14")
    assert NEEDLESS_SEARCH_WARNING not in stderr
    initial = load_file(str(tmp_path / "fam" / "initial_rank0.safetensors"))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    # The bias of FAM's 1x1 local branch feeds a BatchNorm that subtracts the batch mean: its gradient
    # is zero up to rounding, so it may legitimately stay where it started.
    cancelled_by_batchnorm = ".local.bias"
    fam_parameters = [key for key in rank0 if key.startswith("methods.fam.") and not key.endswith((*buffers, cancelled_by_batchnorm))]
    assert len(fam_parameters) > 10, fam_parameters
    # Identical on both ranks is only worth something if training moved them: every FAM parameter
    # changed from its initial value (a module left out of the optimizer or of DDP would not).
    unchanged = [key for key in fam_parameters if torch.equal(rank0[key], initial[key])]
    assert not unchanged, f"FAM parameters that never moved: {unchanged}"
    for key in (key for key in rank0 if not key.endswith(buffers)):
        assert torch.equal(rank0[key], rank1[key]), key


def test_a_method_that_leaves_a_branch_unused_in_a_step_trains_with_two_processes(tmp_path):
    # Each step trains one of the method's two heads and leaves the other without a gradient. The
    # method declares it, so DDP searches each step for unused parameters; told not to, DDP would wait
    # for the idle head's gradients and fail at the next step.
    name = AlternatingBranches.name
    (rank0, rank1), _ = launch(tmp_path, processes=2, batch=8, name="branches", methods={"ce": {}, name: {}})
    initial = load_file(str(tmp_path / "branches" / "initial_rank0.safetensors"))
    heads = [key for key in rank0 if key.startswith(f"methods.{name}.heads.")]
    assert len(heads) == 4, heads  # two heads, weight and bias each
    # Three steps: head 0 trains in steps 1 and 3, head 1 in step 2; both moved, identically on both ranks.
    assert not [key for key in heads if torch.equal(rank0[key], initial[key])]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
