"""``hf-freqkd export``: the student alone, in timm's or transformers' own format, from a run or a checkpoint."""

from __future__ import annotations

import json

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

TINY = {
    "dataset": "digits",
    "image_size": 16,
    "max_train_samples": 32,
    "max_eval_samples": 32,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "max_steps": 2,
    "save_strategy": "steps",
    "save_steps": 1,
    "eval_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A finished 2-step distillation of the CIFAR-zoo resnet8 with kd + fam (fam adds method modules)."""
    output_dir = tmp_path_factory.mktemp("runs") / "resnet8_fam"
    run(
        "distill",
        defaults={
            **TINY,
            "student_model": "resnet8",
            "teacher_model": "resnet14",
            "methods": {"kd": {}, "fam": {}},
            "output_dir": str(output_dir),
        },
    )
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
    assert sorted(p.name for p in (tmp_path / "ckpt1").iterdir()) == ["README.md", "config.json", "model.safetensors"]
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


def test_default_destination_and_reexport_in_place(cifar_run):
    # Without --to a checkpoint goes to OUTPUT_DIR/student-checkpoint-N; the final student re-exports in place.
    assert export_run(cifar_run, checkpoint="checkpoint-2") == cifar_run / "student-checkpoint-2"
    before = load_file(str(cifar_run / "student" / "model.safetensors"))
    assert export_run(cifar_run) == cifar_run / "student"
    after = load_file(str(cifar_run / "student" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
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
    run(
        "teacher",
        defaults={
            **TINY,
            "max_steps": 1,
            "student_model": tiny_vit_folder(tmp_path / "vit"),
            "output_dir": str(output_dir),
        },
    )
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


def test_export_student_leaves_no_partial_files_when_saving_fails(tmp_path):
    class Unsaveable(torch.nn.Module):
        pretrained_cfg = None  # timm's save_for_hf fails on it

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("previous export")
    with pytest.raises(Exception):
        export_student(Unsaveable(), tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_text() == "previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


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
