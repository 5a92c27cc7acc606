"""FSDP2 through ``accelerate launch --config_file configs/accelerate/fsdp2.yaml``, two CPU processes (gloo).

The Distiller (student + method modules) is sharded block by block, the teacher stays outside it,
replicated; the run trains the same student as DDP (``configs/accelerate/ddp.yaml``) to float
tolerance, and the exported student is the whole gathered one, which timm and transformers reload.
FSDP1 and DeepSpeed, which cannot run on this machine, are refused before anything is built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import tiny_run_config

REPO = Path(__file__).resolve().parents[1]

# A LayerNorm ViT student (no batch statistics: DDP and FSDP see the same numbers), a ViT teacher
# whose blocks feature_mse reads, gradient checkpointing on the student's blocks.
RUN = tiny_run_config(
    student_model="test_vit",
    student_model_kwargs={"img_size": 32},
    teacher_model="test_vit",
    teacher_model_kwargs={"img_size": 32},
    image_size=32,
    max_train_samples=64,
    max_eval_samples=16,
    methods={"ce": {}, "kd": {}, "feature_mse": {}},
    optim="sgd",
    optim_args="momentum=0.9",
    learning_rate=0.05,
    max_steps=3,
    logging_steps=1,
    gradient_checkpointing=True,
    per_device_train_batch_size=8,
)

WORKER = """
import json, sys
from safetensors.torch import save_file
from hf_freqkd.models.activation_checkpointing import is_activation_checkpointing
from hf_freqkd.config import config_to_dict
from hf_freqkd.output_dir import training_settings
from hf_freqkd.run import prepare_run

trainer, *configs = prepare_run("distill", defaults=json.loads(sys.argv[1]))
# As hf_freqkd.run.run records a run: the whole config, so that a resumed run is checked against it.
trainer.run_record.update(config=config_to_dict(*configs), settings=training_settings(*configs))
if len(sys.argv) > 3:  # stand still once checkpoint-<N> is in place, to be killed there
    import time
    from transformers import TrainerCallback

    class Pause(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[3]):
                time.sleep(600)

    trainer.add_callback(Pause())
trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
state = trainer.accelerator.get_state_dict(trainer.model)  # every process takes part: FSDP gathers the shards
if trainer.is_world_process_zero():
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, f"{sys.argv[2]}/gathered.safetensors")
    parameter = next(trainer.model.parameters())
    json.dump({
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry and "eval_loss" not in entry],
        "fsdp": trainer.is_fsdp_enabled,
        "parameter_type": type(parameter).__name__,
        "local_parameters": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.model.parameters()),
        "student_checkpointing": is_activation_checkpointing(trainer.student),
        "teacher_wrapped": type(trainer.teacher).__name__,
        "teacher_parameter_type": type(next(trainer.teacher.parameters())).__name__,
        "teacher_checkpointing": is_activation_checkpointing(trainer.teacher.model),
    }, open(f"{sys.argv[2]}/run.json", "w"))
"""


def launch_command(tmp_path: Path, out: Path, accelerate_args: list[str], values: dict, *worker_args: str) -> list[str]:
    script = tmp_path / "fsdp_worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_args, "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "bf16" if values.get("bf16") else "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    return command + [str(script), json.dumps(values), str(out), *worker_args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def launch(tmp_path: Path, name: str, accelerate_args: list[str], output_dir: Path | None = None, **extra) -> tuple[dict, Path]:
    """Two processes of the worker; (its run.json, the folder holding gathered.safetensors and run/)."""
    out = tmp_path / name
    out.mkdir()
    values = {**RUN, "output_dir": str(output_dir or out / "run"), **extra}
    result = subprocess.run(launch_command(tmp_path, out, accelerate_args, values), capture_output=True, text=True, timeout=900, env=ENV, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "run.json").read_text()), out


FSDP2 = ["--config_file", str(REPO / "configs/accelerate/fsdp2.yaml")]
DDP = ["--config_file", str(REPO / "configs/accelerate/ddp.yaml")]


@pytest.fixture(scope="module")
def fsdp_and_ddp(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fsdp")
    return launch(tmp_path, "fsdp2", FSDP2), launch(tmp_path, "ddp", DDP)


def test_fsdp2_shards_the_distiller_and_trains_the_same_student_as_ddp(fsdp_and_ddp):
    (fsdp, fsdp_dir), (ddp, ddp_dir) = fsdp_and_ddp
    assert fsdp["fsdp"] and fsdp["parameter_type"] == "DTensor", fsdp
    assert not ddp["fsdp"] and ddp["parameter_type"] == "Parameter", ddp
    # Each process holds about half of the Distiller's parameters.
    gathered = load_file(str(fsdp_dir / "gathered.safetensors"))
    total = sum(value.numel() for value in gathered.values() if value.is_floating_point())
    assert fsdp["local_parameters"] < 0.6 * total, (fsdp["local_parameters"], total)
    # The teacher stays outside the training wrap, unsharded and never checkpointed; the student's blocks are.
    assert fsdp["teacher_wrapped"] == "FrozenTeacher" and not fsdp["teacher_checkpointing"]
    assert fsdp["student_checkpointing"] and ddp["student_checkpointing"]
    assert len(fsdp["losses"]) == 3
    torch.testing.assert_close(torch.tensor(fsdp["losses"]), torch.tensor(ddp["losses"]), rtol=1e-5, atol=1e-6)
    ddp_state = load_file(str(ddp_dir / "gathered.safetensors"))
    assert set(gathered) == set(ddp_state)
    moved = max((gathered[key] - ddp_state[key]).abs().max().item() for key in gathered if key.startswith("student."))
    assert moved < 1e-5, moved
    # ... and training moved the student (equal because both trained, not because neither did).
    from hf_freqkd.models import load_model

    initial = load_model("test_vit", num_classes=10, model_kwargs={"img_size": 32})
    assert max((gathered[f"student.model.{k}"] - v).abs().max().item() for k, v in initial.state_dict().items()) > 1e-3


def test_a_teacher_sharded_for_inference_trains_the_same_student(fsdp_and_ddp, tmp_path):
    (fsdp, fsdp_dir), _ = fsdp_and_ddp
    sharded, sharded_dir = launch(tmp_path, "sharded_teacher", FSDP2, teacher_sharding=True)
    assert sharded["teacher_parameter_type"] == "DTensor" and fsdp["teacher_parameter_type"] == "Parameter"
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(fsdp["losses"]), rtol=1e-5, atol=1e-6)
    expected, got = load_file(str(fsdp_dir / "gathered.safetensors")), load_file(str(sharded_dir / "gathered.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-5, msg=key)


def test_the_fsdp2_export_is_the_whole_gathered_student_and_reloads(fsdp_and_ddp):
    (_, fsdp_dir), _ = fsdp_and_ddp
    gathered = load_file(str(fsdp_dir / "gathered.safetensors"))
    folder = fsdp_dir / "run" / "student"
    exported = load_file(str(folder / "model.safetensors"))
    student = {key[len("student.model."):]: value for key, value in gathered.items() if key.startswith("student.model.")}
    assert set(exported) == set(student)
    for key, value in student.items():
        assert torch.equal(exported[key], value), key
    import timm
    from transformers import AutoModelForImageClassification

    images = torch.randn(2, 3, 32, 32)
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    by_transformers = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = by_timm(images)
        torch.testing.assert_close(by_transformers(pixel_values=images).logits, expected)
    assert by_timm.state_dict()["head.weight"].shape == (10, by_timm.num_features)


def test_fsdp2_with_bf16_checkpointing_and_fam_on_a_transformers_student_exports_a_student_transformers_reloads(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10)
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    result, out = launch(
        tmp_path, "bf16", FSDP2, student_model=str(tmp_path / "vit"), student_model_kwargs={}, bf16=True,
        methods={"ce": {}, "kd": {}, "fam_l2l": {}}, max_steps=2,  # FAM: float32 FFTs inside bf16, 0-d parameters sharded
    )
    assert result["fsdp"] and result["parameter_type"] == "DTensor"
    gathered = load_file(str(out / "gathered.safetensors"))
    folder = out / "run" / "student"
    reloaded = ViTForImageClassification.from_pretrained(folder)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, gathered[f"student.model.{key}"].to(value.dtype)), key
    assert all(torch.isfinite(value).all() for value in gathered.values() if value.is_floating_point())


def test_fsdp2_resumes_after_kill_9_with_the_uninterrupted_weights(tmp_path):
    import signal
    import time

    four_steps = {"max_steps": 4, "save_strategy": "steps", "save_steps": 1}
    _, uninterrupted = launch(tmp_path, "uninterrupted", FSDP2, **four_steps)
    run_dir = tmp_path / "killed_run"
    (tmp_path / "killed").mkdir()
    command = launch_command(tmp_path, tmp_path / "killed", FSDP2, {**RUN, "output_dir": str(run_dir), **four_steps}, "2")
    process = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "checkpoint-2").is_dir():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended or stalled before checkpoint-2"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes, mid-run
        process.wait()
    assert not (run_dir / "checkpoint-3").exists() and not (run_dir / "student").exists()
    assert (run_dir / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # one shard per process (SHARDED_STATE_DICT)
    _, resumed = launch(tmp_path, "resumed", FSDP2, output_dir=run_dir, resume_from_checkpoint=True, **four_steps)
    expected = load_file(str(uninterrupted / "gathered.safetensors"))
    got = load_file(str(resumed / "gathered.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    assert json.loads((run_dir / "hf_freqkd_run.json").read_text())["resumed_from"] == "checkpoint-2"


def test_fsdp1_launch_on_the_cpu_stops_with_the_message_before_anything_is_built(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_run_config(tmp_path / "run")))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2", "--main_process_port", "0",
               str(REPO / "scripts/distill.py"), "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "launch with --fsdp_version 2" in result.stderr
    assert "sync_module_states=True` is not supported" not in result.stderr  # Accelerate's own traceback never comes
    assert not (tmp_path / "run").exists()
