"""``hf-freqkd export``: the student alone, in timm's or transformers' own format, from a run or a checkpoint."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

import hf_freqkd  # noqa: F401  registers the CIFAR zoo: local-dir loading of resnet8 needs it
from hf_freqkd.cli import main
from hf_freqkd.export import export_run, export_student
from hf_freqkd.run import run

from .helpers import exported_files, tiny_run_config


def tiny_export_run(output_dir, **overrides) -> dict:
    """A 2-step digits run at 16 px that saves a checkpoint at each step."""
    values = dict(
        image_size=16, max_train_samples=32, max_eval_samples=32, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        max_steps=2, save_strategy="steps", save_steps=1,
    )
    return tiny_run_config(output_dir, **{**values, **overrides})


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A finished 2-step distillation of the CIFAR-zoo resnet8 with kd + fam (fam adds method modules)."""
    output_dir = tmp_path_factory.mktemp("runs") / "resnet8_fam"
    run("distill", defaults=tiny_export_run(output_dir, teacher_model="resnet14", methods={"kd": {}, "fam": {}}))
    return output_dir


def student_from_checkpoint(checkpoint_dir) -> torch.nn.Module:
    """The student rebuilt by hand from a Distiller checkpoint, as the reference for the export."""
    state = load_file(str(checkpoint_dir / "model.safetensors"))
    assert any(key.startswith("methods.fam.") for key in state), "the checkpoint should hold method modules"
    model = timm.create_model("resnet8", num_classes=10).eval()
    model.load_state_dict({k[len("student.model.") :]: v for k, v in state.items() if k.startswith("student.model.")})
    return model


def test_export_from_a_checkpoint_reloads_with_timm_local_dir(cifar_run, tmp_path, capsys):
    assert (
        main(["export", "--run", str(cifar_run), "--checkpoint", "checkpoint-1", "--to", str(tmp_path / "ckpt1")]) == 0
    )
    assert f"student exported to {tmp_path / 'ckpt1'}" in capsys.readouterr().out
    # resnet8 is a CIFAR-zoo network: the export carries its modeling code (hf_freqkd.remote_code).
    assert {p.name for p in (tmp_path / "ckpt1").iterdir()} == exported_files()
    exported = load_file(str(tmp_path / "ckpt1" / "model.safetensors"))
    assert not any(key.startswith(("methods", "student.", "teacher")) for key in exported)

    loaded = timm.create_model(f"local-dir:{tmp_path / 'ckpt1'}", pretrained=True).eval()
    reference = student_from_checkpoint(cifar_run / "checkpoint-1")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))
    # The card reports what was measured at the checkpoint (no evaluation ran), not the final metrics.
    card = ModelCard.load(tmp_path / "ckpt1" / "README.md")
    assert card.data.library_name == "timm" and not card.data.eval_results
    # The input size the run trained at travels with the weights.
    assert json.loads((tmp_path / "ckpt1" / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 16, 16]


def test_export_of_the_finished_run_matches_its_last_checkpoint(cifar_run, tmp_path):
    folder = export_run(cifar_run, to=tmp_path / "final")
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    reference = student_from_checkpoint(cifar_run / "checkpoint-2")  # max_steps=2: the final weights
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(images), reference(images))
    card = ModelCard.load(folder / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "top_5_accuracy"}


def final_student_weights(run_dir) -> dict[str, torch.Tensor]:
    """The student's weights in the run's last checkpoint (max_steps=2: the final weights), by timm name."""
    state = load_file(str(run_dir / "checkpoint-2" / "model.safetensors"))
    return {k[len("student.model.") :]: v for k, v in state.items() if k.startswith("student.model.")}


def test_default_destination_and_reexport_in_place(cifar_run):
    # Without --to a checkpoint goes to OUTPUT_DIR/student-checkpoint-N; the final student re-exports in place.
    assert export_run(cifar_run, checkpoint="checkpoint-2") == cifar_run / "student-checkpoint-2"
    student_dir = cifar_run / "student"
    # A stale card and an old timestamp on the weights: a re-export that wrote nothing would leave both.
    (student_dir / "README.md").write_text("stale card")
    long_ago = 1_000_000_000
    os.utime(student_dir / "model.safetensors", ns=(long_ago, long_ago))
    assert export_run(cifar_run) == student_dir
    assert ModelCard.load(student_dir / "README.md").data.library_name == "timm"
    assert (student_dir / "model.safetensors").stat().st_mtime_ns != long_ago
    expected = final_student_weights(cifar_run)
    for folder in (student_dir, cifar_run / "student-checkpoint-2"):
        exported = load_file(str(folder / "model.safetensors"))
        assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected), folder
    assert not [p.name for p in cifar_run.iterdir() if p.name.startswith(".student")]  # no staging left behind


def tiny_vit_folder(path) -> str:
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    ViTForImageClassification(config).save_pretrained(path)
    return str(path)


def test_transformers_student_exports_with_save_pretrained(tmp_path):
    output_dir = tmp_path / "vit_run"
    run("teacher", defaults=tiny_export_run(output_dir, max_steps=1, student_model=tiny_vit_folder(tmp_path / "vit")))
    folder = export_run(output_dir, checkpoint="checkpoint-1", to=tmp_path / "exported")
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(loaded, ViTForImageClassification)

    state = load_file(str(output_dir / "checkpoint-1" / "model.safetensors"))
    reference = ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()
    reference.load_state_dict(
        {k[len("student.model.") :]: v for k, v in state.items() if k.startswith("student.model.")}
    )
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixels).logits, reference(pixel_values=pixels).logits)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers"
    assert "knowledge-distillation" not in card.data.tags  # a teacher run is plain training
    # The run's own export is loadable the same way.
    assert isinstance(
        AutoModelForImageClassification.from_pretrained(output_dir / "student"), ViTForImageClassification
    )


def test_export_student_leaves_no_partial_files_when_saving_fails(tmp_path, monkeypatch):
    import safetensors.torch

    previous = export_student(timm.create_model("resnet8", num_classes=10), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    def disk_full(tensors, filename, *args, **kwargs):  # half a file, then the disk is full
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.safetensors'") as error:
        export_student(timm.create_model("resnet8", num_classes=10), tmp_path / "out")
    assert error.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before  # the previous export, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--run", "{tmp}/missing"], "run folder '{tmp}/missing' does not exist"),
        (["--run", "{tmp}/empty"], "run folder '{tmp}/empty' holds no exported student"),
        (
            ["--run", "{run}", "--checkpoint", "checkpoint-7"],
            "checkpoint 'checkpoint-7' does not exist; checkpoints in '{run}': checkpoint-1, checkpoint-2",
        ),
        (
            ["--run", "{run}", "--to", "{tmp}/notes"],
            "export folder '{tmp}/notes' already holds files that are not an exported model",
        ),
    ],
)
def test_bad_export_input_is_one_clear_line(cifar_run, tmp_path, capsys, arguments, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    fill = {"tmp": str(tmp_path), "run": str(cifar_run)}
    assert main(["export", *[a.format(**fill) for a in arguments]]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_checkpoint_of_a_run_without_record_is_refused(tmp_path, capsys):
    (tmp_path / "foreign" / "checkpoint-5").mkdir(parents=True)
    assert main(["export", "--run", str(tmp_path / "foreign"), "--checkpoint", "checkpoint-5"]) == 2
    assert "has no hf_freqkd_run.json naming the student" in capsys.readouterr().err


def test_exported_timm_student_loads_with_timm_and_transformers_alike(tmp_path):
    from hf_freqkd.models.loading import load_model

    student = load_model("resnet8", num_classes=7).eval()  # CIFAR zoo: transformers finds it once hf_freqkd is imported
    folder = export_student(student, tmp_path / "student", {"config": {"image_size": 16}, "metrics": {}})
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    # The weights file alone, as timm's docs load a local checkpoint (num_classes keeps the head).
    overlay = {"file": str(folder / "model.safetensors"), "num_classes": 7}
    by_file = timm.create_model("resnet8", pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay).eval()
    by_transformers = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(by_transformers).__name__ == "TimmWrapperForImageClassification"
    assert by_transformers.config.num_labels == 7
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = student(images)
        assert torch.equal(by_folder(images), reference) and torch.equal(by_file(images), reference)
        assert torch.equal(by_transformers(pixel_values=images).logits, reference)


def test_exported_files_hold_no_local_path(tmp_path):
    import os

    from hf_freqkd.models.loading import load_model

    # A student reloaded from a local folder, made with a loading argument that names a local folder.
    first = export_student(load_model("resnet8", num_classes=10), tmp_path / "first")
    student = load_model(str(first), model_kwargs={"cache_dir": str(tmp_path / "cache")})
    assert student.pretrained_cfg["file"] == str(first)
    record = {
        "mode": "distill",
        "config": {
            "student_model": str(first),
            "teacher_model": str(tmp_path / "runs" / "teacher" / "student"),
            "teacher_checkpoint": str(tmp_path / "teacher.safetensors"),
            "dataset": str(tmp_path / "data" / "my_images"),
            "output_dir": str(tmp_path / "runs" / "kd"),
            "methods": {"ce": {}, "kd": {}},
        },
        "metrics": {"eval_accuracy": 0.5},
        "checkpoint": "checkpoint-2",
    }
    folder = export_student(student, tmp_path / "published", record, model_name="resnet8-kd")
    assert {p.name for p in folder.iterdir()} == exported_files()
    home = os.path.expanduser("~").rstrip("/") + "/"
    for file in folder.iterdir():
        content = file.read_bytes()
        for path in (str(tmp_path), "/tmp/", home):
            assert path.encode() not in content, f"{file.name} holds the local path {path}"
    assert json.loads((folder / "config.json").read_text())["model_args"] == {"in_chans": 3, "global_pool": "avg"}
