"""The Trainer contract: every ``TrainingArguments`` field is supported or refused, and a refused one
stops the run before anything is built (exit 2, naming the field and why)."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import TrainingArguments

from hf_freqkd.cli import main
from hf_freqkd.config import DistillationConfig
from hf_freqkd.errors import ConfigError
from hf_freqkd.training.contract import REFUSED, SUPPORTED, is_refused

from ..helpers import tiny_run_config, write_run_config


def test_every_training_argument_is_either_supported_or_refused():
    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    unclassified = sorted(fields - set(SUPPORTED) - set(REFUSED))
    assert not unclassified, (
        f"TrainingArguments fields that hf_freqkd has not classified: {unclassified}; add each to SUPPORTED (with what "
        "it does to a distillation, and a test where it touches the Distiller, the teacher or the data) or to REFUSED "
        "(with the reason) in hf_freqkd/training/contract.py"
    )
    assert not set(SUPPORTED) & set(REFUSED)
    assert not (set(SUPPORTED) | set(REFUSED)) - fields, "entries for fields transformers no longer has"
    assert all(note.strip() for note in SUPPORTED.values()) and all(refusal.reason.strip() for refusal in REFUSED.values())


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_field_is_refused_when_the_config_is_read(name, tmp_path):
    refusal = REFUSED[name]
    with pytest.raises(ConfigError) as error:
        DistillationConfig(output_dir=str(tmp_path / "run"), **{name: refusal.example})
    assert str(error.value).startswith(f"{name} = ") and refusal.reason in str(error.value)
    assert not (tmp_path / "run").exists()


def test_defaults_and_the_values_that_work_are_not_refused(tmp_path):
    defaults = DistillationConfig(output_dir=str(tmp_path / "run"))
    assert not [name for name in REFUSED if is_refused(name, getattr(defaults, name))]
    for name, value in [("train_sampling_strategy", "sequential"), ("label_names", ["labels"]), ("eval_do_concat_batches", True),
                        ("include_num_input_tokens_seen", "no"), ("use_cache", False)]:
        assert not is_refused(name, value), name


def test_neftune_is_refused_on_the_command_line_with_exit_code_2(tmp_path, capsys):
    config = write_run_config(tmp_path / "run.yaml", tiny_run_config(tmp_path / "run"))
    assert main(["distill", "--config", str(config), "neftune_noise_alpha=5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "neftune_noise_alpha = 5.0 is not supported by hf_freqkd" in error and "language model" in error
    assert not (tmp_path / "run").exists()


def test_include_for_metrics_inputs_reaches_compute_metrics_as_pixel_values(tmp_path):
    # The Trainer reads the Distiller's main_input_name for the inputs it passes on.
    from hf_freqkd.run import prepare_run

    seen = {}

    trainer, *_ = prepare_run("distill", defaults=tiny_run_config(tmp_path / "run", include_for_metrics=["inputs"], max_eval_samples=8))
    metrics = trainer.compute_metrics

    def compute_metrics(prediction):
        seen["inputs"] = prediction.inputs.shape
        return metrics(prediction)

    trainer.compute_metrics = compute_metrics
    result = trainer.evaluate()
    assert seen["inputs"] == (8, 3, 8, 8) and "eval_accuracy" in result


# ----------------------------------------------------------------------------------------------
# Supported fields that touch the Distiller, the teacher or the data: their behaviour


def test_label_smoothing_factor_is_the_ce_terms_label_smoothing(tmp_path):
    config = DistillationConfig(output_dir=str(tmp_path), label_smoothing_factor=0.1, methods={"kd": {}})
    assert config.methods == {"ce": {"label_smoothing": 0.1}, "kd": {}}  # first, where an unlisted ce goes
    config = DistillationConfig(output_dir=str(tmp_path), label_smoothing_factor=0.1, methods={"kd": {}, "ce": {"weight": 0.5}})
    assert config.methods == {"kd": {}, "ce": {"weight": 0.5, "label_smoothing": 0.1}}
    with pytest.raises(ConfigError, match="label_smoothing_factor = 0.1 and methods.ce.label_smoothing = 0.2 disagree"):
        DistillationConfig(output_dir=str(tmp_path), label_smoothing_factor=0.1, methods={"ce": {"label_smoothing": 0.2}})


def test_label_smoothing_smooths_the_training_term_and_evaluation_stays_plain_cross_entropy(tmp_path):
    import torch
    import torch.nn.functional as F

    from hf_freqkd.run import prepare_run

    trainer, *_ = prepare_run("distill", defaults=tiny_run_config(tmp_path / "run", label_smoothing_factor=0.3, methods={"ce": {}}))
    assert trainer.args.label_smoothing_factor == 0.3 and trainer.label_smoother is None
    batch = next(iter(trainer.get_train_dataloader()))
    distiller = trainer.model.train()
    output = distiller(pixel_values=batch["pixel_values"], labels=batch["labels"])
    logits = output.logits.float()
    torch.testing.assert_close(output.loss_terms["loss_ce"], F.cross_entropy(logits, batch["labels"], label_smoothing=0.3))
    assert not torch.allclose(output.loss_terms["loss_ce"], F.cross_entropy(logits, batch["labels"]))

    evaluation = trainer.evaluate()
    distiller.eval()
    losses, sizes = [], []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            losses.append(F.cross_entropy(distiller(pixel_values=batch["pixel_values"]).logits.float(), batch["labels"]))
            sizes.append(len(batch["labels"]))
    plain = sum(loss.item() * size for loss, size in zip(losses, sizes)) / sum(sizes)
    assert evaluation["eval_loss"] == pytest.approx(plain, rel=1e-5)


def test_batch_eval_metrics_give_the_whole_set_scores(tmp_path):
    from hf_freqkd.run import prepare_run

    scores = {}
    for batched in (False, True):
        # 16 images in batches of 5: the last batch is smaller.
        config = tiny_run_config(tmp_path / f"run{batched}", batch_eval_metrics=batched, per_device_eval_batch_size=5)
        trainer, *_ = prepare_run("distill", defaults=config)
        scores[batched] = {key: value for key, value in trainer.evaluate().items() if key in ("eval_loss", "eval_accuracy", "eval_top5_accuracy")}
    assert len(scores[True]) == 3
    assert scores[True] == pytest.approx(scores[False], rel=1e-6)


def test_torch_compile_compiles_the_distiller_and_the_teacher_as_told(tmp_path):
    from accelerate.utils import is_compiled_module

    from hf_freqkd.run import prepare_run

    kd = {"teacher_model": "resnet8", "methods": {"ce": {}, "kd": {}}, "max_steps": 2, "logging_steps": 1}
    losses = {}
    for name, extra in {"eager": {}, "compiled": {"torch_compile": True, "torch_compile_backend": "eager"},
                        "student_only": {"torch_compile": True, "torch_compile_backend": "eager", "teacher_torch_compile": False}}.items():
        trainer, *_ = prepare_run("distill", defaults=tiny_run_config(tmp_path / name, **kd, **extra))
        trainer.train()
        losses[name] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert is_compiled_module(trainer.model_wrapped) == (name != "eager"), name
        assert is_compiled_module(trainer.teacher) == (name == "compiled"), name
        assert (tmp_path / name / "student" / "model.safetensors").is_file()
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    assert losses["student_only"] == pytest.approx(losses["eager"], rel=1e-5)
