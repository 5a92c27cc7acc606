"""streaming: true trains from parquet shards read as a stream, refuses what a stream cannot do,
and resumes from a checkpoint as the uninterrupted run continues (see docs/scale.md, Streaming)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_freqkd.data import load_digits_dataset
from hf_freqkd.data.loading import load_image_dataset, with_image_transform
from hf_freqkd.data.seeding import dataset_seeding
from hf_freqkd.errors import ConfigError
from hf_freqkd.run import input_config_for, prepare_run, run

from ..helpers import tiny_run_config

TRAIN_ROWS = 64  # two shards of 32: 4 steps of 16 per pass over the stream


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """digits as a Hub-layout folder of parquet shards: data/train-0000i-of-00002.parquet, data/test-..."""
    folder = tmp_path_factory.mktemp("streamed_digits")
    (folder / "data").mkdir()
    digits = load_digits_dataset()
    train, test = digits["train"].select(range(TRAIN_ROWS)), digits["test"].select(range(32))
    for index in range(2):
        train.shard(num_shards=2, index=index, contiguous=True).to_parquet(str(folder / "data" / f"train-0000{index}-of-00002.parquet"))
    test.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def streamed_config(shards: Path, output_dir: Path, **overrides):
    return tiny_run_config(
        output_dir, dataset=str(shards), streaming=True, max_train_samples=None, max_eval_samples=16,
        per_device_train_batch_size=16, augmentation="crop_flip", **overrides,
    )


def test_streamed_dataset_is_iterable_with_declared_features(shards):
    import datasets

    data = load_image_dataset(str(shards), streaming=True)
    assert isinstance(data["train"], datasets.IterableDataset) and data["train"].n_shards == 2
    assert isinstance(data["train"].features["label"], datasets.ClassLabel)
    assert sum(1 for _ in data["train"]) == TRAIN_ROWS


def test_streamed_rows_are_the_random_access_rows_of_the_same_positions(shards, tmp_path):
    """One process: a streamed row's position is its row index, so its seeded crop and flip are the
    ones the same row gets from the random-access split."""
    trainer, _, _, data_args = prepare_run("distill", defaults=streamed_config(shards, tmp_path / "run"))
    streamed = list(trainer.train_dataset.take(5))
    assert sorted(streamed[0]) == ["labels", "pixel_values"]  # the position column is not passed on
    random_access = with_image_transform(
        load_image_dataset(str(shards))["train"], "image", "label", input_config_for(trainer.student, data_args), True, "crop_flip"
    )
    dataset_seeding(random_access).seed = dataset_seeding(trainer.train_dataset).seed
    expected = random_access[:5]
    for index, row in enumerate(streamed):
        assert row["labels"] == expected["labels"][index]
        torch.testing.assert_close(row["pixel_values"], expected["pixel_values"][index], rtol=0, atol=0)


def test_streaming_run_trains_evaluates_and_exports(shards, tmp_path):
    result = run("distill", defaults=streamed_config(shards, tmp_path / "run", max_steps=2))
    assert result.export_dir is not None and (Path(result.export_dir) / "model.safetensors").is_file()
    assert "eval_accuracy" in result.metrics


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_steps": -1, "num_train_epochs": 1}, "max_steps"),
        ({"max_train_samples": 8}, "max_train_samples"),
        ({"validation_fraction": 0.2}, "validation_fraction"),
        ({"teacher_cache": "cache", "teacher_model": "resnet8", "methods": {"kd": {}}}, "teacher_cache"),
        ({"dataset": "digits"}, "generated in memory"),
    ],
)
def test_streaming_refuses_what_a_stream_cannot_do(shards, tmp_path, overrides, named):
    output_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=named):
        prepare_run("distill", defaults={**streamed_config(shards, output_dir), **overrides})
    assert not output_dir.exists()  # refused before anything is written


def test_streaming_refuses_an_image_folder_and_other_tasks(tmp_path, shards):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    load_digits_dataset()["train"][0]["image"].save(folder / "0.png")
    with pytest.raises(ConfigError, match="no .parquet files"):
        load_image_dataset(str(tmp_path / "images"), streaming=True)
    with pytest.raises(ConfigError, match="task 'segmentation'"):
        prepare_run("distill", defaults={**streamed_config(shards, tmp_path / "run"), "task": "segmentation", "dataset": str(shards)})


def test_fit_prompts_refuses_a_stream(shards, tmp_path):
    from hf_freqkd.prompt_fitting import run_fit_prompts

    with pytest.raises(ConfigError, match="fit-prompts reads the training images by index"):
        run_fit_prompts(overrides=[f"output_dir={tmp_path / 'run'}", f"dataset={shards}", "streaming=true", "max_steps=1"])


RESUMED = dict(max_steps=6, save_strategy="steps", save_steps=1, optim="sgd", optim_args="momentum=0.9", learning_rate=0.05)


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"checkpoint-{step}" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> Path:
    reference = tmp_path_factory.mktemp("uninterrupted") / "run"
    run("distill", defaults=streamed_config(shards, reference, **RESUMED))
    return reference


@pytest.mark.parametrize("checkpoint", [5])
def test_resume_continues_the_stream_as_the_uninterrupted_run(shards, tmp_path, uninterrupted, checkpoint):
    """The Trainer skips the consumed batches by reading them again; the training stream repeats without
    end and is augmented by stream position, so the skipped stream is the uninterrupted one and the
    weights are the same: from inside the first pass over the shards (3) and the second (5; 4 steps a pass)."""
    reference = uninterrupted
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for later in range(checkpoint + 1, 7):
        shutil.rmtree(resumed / f"checkpoint-{later}")
    run("distill", defaults=streamed_config(shards, resumed, resume_from_checkpoint=str(resumed / f"checkpoint-{checkpoint}"), **RESUMED))
    got, expected = final_weights(resumed, 6), final_weights(reference, 6)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_read_the_stream_as_one_process_of_the_global_batch(shards, tmp_path):
    """Under ``accelerate launch`` accelerate shares the stream out (``dispatch_batches``, its default for
    an iterable dataset): the main process reads it and sends each process its slice of every batch, so
    two processes of 8 train the same student as one process of 16."""
    from ..test_multiprocess import launch

    extra = {"dataset": str(shards), "streaming": True, "max_train_samples": None, "student_model": "test_vit", "max_steps": 2}
    (rank0, rank1), _ = launch(tmp_path, processes=2, batch=8, name="two", **extra)
    values = {**streamed_config(shards, tmp_path / "one"), **extra, "image_size": 32, "student_model_kwargs": {"img_size": 32},
              "teacher_model": "resnet8", "methods": {"ce": {"weight": 1.0}, "kd": {"weight": 1.0}}}
    from ..test_multiprocess import RUN as MULTIPROCESS_RUN

    trainer, *_ = prepare_run("distill", defaults={**MULTIPROCESS_RUN, **values, "per_device_train_batch_size": 16})
    trainer.train()
    single = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
