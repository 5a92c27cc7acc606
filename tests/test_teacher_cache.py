"""The teacher cache: the teacher's outputs on exactly the views training draws, read instead of
running the teacher - the same loss terms as online distillation, refused when built for another run.

Every run here is a tiny digits distillation (96 rows at 16 px, resnet20 teacher, resnet8 student,
3 steps per epoch). A cached run makes its teacher raise if called, so equality with the online run
can only come from the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.cli import main
from hf_freqkd.data.seeding import dataset_seeding
from hf_freqkd.errors import ConfigError
from hf_freqkd.models import load_model
from hf_freqkd.output_dir import training_settings
from hf_freqkd.run import prepare_run
from hf_freqkd.teacher_cache import CACHE_INDEX, VIEW_EPOCH, VIEW_ROW, TeacherCache, _memory_map_safetensors

from .helpers import refused_before_writing
from .test_checkpoints import overrides
from .test_multiprocess import RUN as MULTIPROCESS_RUN
from .test_multiprocess import launch

BASE = {
    "dataset": "digits",
    "image_size": 16,
    "student_model": "resnet8",
    "teacher_model": "resnet20",
    "max_train_samples": 96,
    "per_device_train_batch_size": 32,
    "num_train_epochs": 2,
    "report_to": "none",
    "save_strategy": "no",
    "eval_strategy": "no",
    "methods": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
    "seed": 3,
    "use_cpu": True,
    "disable_tqdm": True,
}
FAM = {"methods": {"ce": {"weight": 1.0}, "fam": {"weight": 1.0}}, "teacher_cache_features": True}
#: float32 storage: the cached outputs are the online ones, so the runs agree to rounding
EXACT = {"rtol": 1e-6, "atol": 1e-6}
#: the phrase each kind of mismatch puts in the refusal
MISMATCHES = {
    "teacher": "another teacher",
    "dataset": "another training set",
    "transform": "another transform",
    "seed": "another data seed",
    "epochs": "epoch(s) of views",
    "features": "no teacher feature(s)",
}


def prepare(output_dir: Path, **extra) -> DistillationTrainer:
    trainer, *_ = prepare_run("distill", defaults={**BASE, "output_dir": str(output_dir), **extra})
    return trainer


def distiller_state(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    """Student and method modules (FAM's filters and adapters), copied."""
    return {key: value.detach().clone() for key, value in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def forbid_teacher(trainer: DistillationTrainer) -> None:
    def teacher_ran(*args, **kwargs):
        raise AssertionError("the teacher ran although the cache holds its outputs")

    trainer.teacher.forward = teacher_ran


def teacher_outputs(trainer: DistillationTrainer, pixel_values: torch.Tensor):
    """The teacher's own forward, also after :func:`forbid_teacher`."""
    with torch.no_grad():
        return type(trainer.teacher).forward(trainer.teacher, pixel_values)


def train_from_cache(trainer: DistillationTrainer, **train_kwargs) -> dict[str, torch.Tensor]:
    """Build (or open) the run's cache, then train with a teacher that must not run."""
    trainer.build_teacher_cache()
    forbid_teacher(trainer)
    trainer.train(**train_kwargs)
    return distiller_state(trainer)


def assert_same_states(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], **tolerance) -> None:
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key].float(), expected[key].float(), msg=key, **tolerance)


def assert_moved(final: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> None:
    moved = max((final[key].float() - initial[key].float()).abs().max().item() for key in initial)
    assert moved > 1e-3, "training did not change the student"


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content digest and modification time."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def assert_nothing_written(output_dir: Path) -> None:
    # transformers' Trainer makes output_dir when it is built; no file may appear in it.
    assert not output_dir.exists() or not any(output_dir.rglob("*")), sorted(output_dir.rglob("*"))


def mismatches_in(message: str) -> set[str]:
    return {kind for kind, phrase in MISMATCHES.items() if phrase in message}


@dataclass
class Runs:
    online: dict[str, torch.Tensor]
    cached: dict[str, torch.Tensor]
    initial: dict[str, torch.Tensor]
    cache: Path
    cached_trainer: DistillationTrainer


def online_and_cached(folder: Path, **extra) -> Runs:
    online = prepare(folder / "online", **extra)
    initial = distiller_state(online)
    online.train()
    cache = folder / "cache"
    cached_trainer = prepare(folder / "cached", teacher_cache=str(cache), **extra)
    assert cached_trainer.teacher_cache is None  # nothing there yet: built by the run
    cached = train_from_cache(cached_trainer)
    return Runs(distiller_state(online), cached, initial, cache, cached_trainer)


@pytest.fixture(scope="module")
def kd_runs(tmp_path_factory) -> Runs:
    return online_and_cached(tmp_path_factory.mktemp("kd"))


@pytest.fixture(scope="module")
def fam_runs(tmp_path_factory) -> Runs:
    return online_and_cached(tmp_path_factory.mktemp("fam"), **FAM)


@pytest.fixture(scope="module")
def fam_float16_cache(tmp_path_factory) -> TeacherCache:
    folder = tmp_path_factory.mktemp("fam16")
    return prepare(folder / "run", teacher_cache=str(folder / "cache"), teacher_cache_dtype="float16", **FAM).build_teacher_cache()


# ----------------------------------------------------------------------------------------------
# The same loss terms as online distillation


def test_cached_outputs_are_the_online_teachers_on_the_same_views(fam_runs, fam_float16_cache):
    trainer = fam_runs.cached_trainer
    cache, seeding = trainer.teacher_cache, dataset_seeding(trainer.train_dataset)
    rows = [5, 0, 95, 17, 42]
    assert cache.feature_names and cache.identity.epochs == 2
    logits_of_epoch = {}
    for epoch in (0, 1):
        seeding.epoch = epoch
        batch = trainer.train_dataset[rows]
        assert batch[VIEW_ROW] == rows and batch[VIEW_EPOCH] == [epoch] * len(rows)  # each row names its view
        online = teacher_outputs(trainer, torch.stack(batch["pixel_values"]))
        epochs = torch.full((len(rows),), epoch)
        cached = cache.read(epochs, torch.tensor(rows))
        half = fam_float16_cache.read(epochs, torch.tensor(rows))
        torch.testing.assert_close(cached.logits, online.logits, **EXACT)
        assert set(cached.features) == set(online.features) == set(half.features) == set(cache.feature_names)
        for name in online.features:
            torch.testing.assert_close(cached.features[name], online.features[name].float(), **EXACT, msg=name)
        # float16 storage is float32's rounded: the same batches built it
        for got, full in [(half.logits, cached.logits), *((half.features[n], cached.features[n]) for n in cached.features)]:
            assert got.dtype == torch.float32
            assert torch.equal(got, full.half().float())
            torch.testing.assert_close(got, full, rtol=1e-3, atol=1e-4)
        logits_of_epoch[epoch] = cached.logits
    # Augmentation draws other views in epoch 1, so reading the right epoch matters.
    assert not torch.allclose(logits_of_epoch[0], logits_of_epoch[1], atol=1e-3)
    in_epoch_1 = torch.tensor([True, False, False, True, True])
    mixed = cache.read(in_epoch_1.long(), torch.tensor(rows))
    torch.testing.assert_close(mixed.logits, torch.where(in_epoch_1[:, None], logits_of_epoch[1], logits_of_epoch[0]), rtol=0, atol=0)


def test_a_batch_carries_the_rows_the_sampler_drew(kd_runs):
    trainer = kd_runs.cached_trainer
    dataset_seeding(trainer.train_dataset).epoch = 1
    batch = next(iter(trainer.get_train_dataloader()))
    rows = batch[VIEW_ROW].tolist()
    assert sorted(rows) != rows  # shuffled: a position-based read would be wrong
    assert batch[VIEW_EPOCH].tolist() == [1] * len(rows)
    # The pixels of the batch are those rows' epoch-1 views, whose teacher outputs the cache returns.
    expected = torch.stack(trainer.train_dataset[rows]["pixel_values"])
    assert torch.equal(batch["pixel_values"], expected)
    online = teacher_outputs(trainer, expected)
    cached = trainer.teacher_cache.read(batch[VIEW_EPOCH], batch[VIEW_ROW])
    torch.testing.assert_close(cached.logits, online.logits, **EXACT)


def test_kd_from_the_cache_trains_the_online_student(kd_runs):
    assert_moved(kd_runs.cached, kd_runs.initial)
    assert_same_states(kd_runs.cached, kd_runs.online, **EXACT)


def test_fam_from_cached_features_trains_the_online_student(fam_runs):
    assert any(key.startswith("methods.fam.") for key in fam_runs.cached)
    assert_moved(fam_runs.cached, fam_runs.initial)
    assert_same_states(fam_runs.cached, fam_runs.online, **EXACT)


def test_float16_cache_trains_a_close_student(tmp_path, kd_runs):
    trainer = prepare(tmp_path / "run", teacher_cache=str(tmp_path / "cache"), teacher_cache_dtype="float16")
    cached = train_from_cache(trainer)
    assert json.loads((tmp_path / "cache" / CACHE_INDEX).read_text())["dtype"] == "float16"
    assert_same_states(cached, kd_runs.online, rtol=0, atol=1e-3)


def test_augmentation_none_stores_one_epoch_for_every_epoch(tmp_path):
    runs = online_and_cached(tmp_path, augmentation="none")
    cache = runs.cached_trainer.teacher_cache
    assert (cache.augmented, cache.identity.epochs, cache.identity.seed) == (False, 1, None)
    assert [shard["epoch"] for shard in cache.shards] == [0]
    rows = torch.tensor([3, 60, 7])
    first, later = cache.read(torch.zeros(3), rows), cache.read(torch.tensor([1, 5, 9]), rows)
    assert torch.equal(first.logits, later.logits)
    assert_moved(runs.cached, runs.initial)
    assert_same_states(runs.cached, runs.online, **EXACT)
    # A longer run is served by the same cache.
    longer = prepare(tmp_path / "longer", augmentation="none", num_train_epochs=5, teacher_cache=str(runs.cache))
    assert longer.teacher_cache is not None


def test_cache_of_more_epochs_serves_a_shorter_run(tmp_path, kd_runs):
    assert prepare(tmp_path / "run", num_train_epochs=1, teacher_cache=str(kd_runs.cache)).teacher_cache is not None


def test_one_cache_with_more_layers_serves_kd_and_fam_runs(tmp_path, kd_runs, fam_runs):
    # A kd run builds a cache that also stores fam's teacher layers (teacher_cache_layers); a fam run
    # then reads its features from it and a second kd run its logits, each equal to online training.
    fam_layers = list(fam_runs.cached_trainer.teacher.layers)
    cache = tmp_path / "shared"
    kd = train_from_cache(prepare(tmp_path / "kd", teacher_cache=str(cache), teacher_cache_layers=fam_layers))
    assert sorted(TeacherCache(cache).feature_names) == sorted(fam_layers)
    assert_same_states(kd, kd_runs.online, **EXACT)
    fam = train_from_cache(prepare(tmp_path / "fam", teacher_cache=str(cache), teacher_cache_layers=fam_layers, **FAM))
    assert_same_states(fam, fam_runs.online, **EXACT)
    # A logits-only read of the shared cache copies no feature.
    assert TeacherCache(cache).read(torch.zeros(2), torch.tensor([0, 5]), features=[]).features == {}


def test_teacher_cache_layers_must_cover_the_methods_and_exist(tmp_path, fam_runs):
    fam_layers = list(fam_runs.cached_trainer.teacher.layers)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=f"lacks {fam_layers[0]}, which the methods read"):
        prepare(tmp_path / "run", teacher_cache=str(cache), teacher_cache_layers=fam_layers[1:], **FAM)
    with pytest.raises(Exception, match="layer 'layer9' does not exist in .*stage layers: layer1, layer2, layer3"):
        prepare(tmp_path / "run", teacher_cache=str(cache), teacher_cache_layers=["layer9"])
    assert not cache.exists()
    assert_nothing_written(tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# Resuming and several processes


def prepare_recorded(output_dir: Path, **extra) -> DistillationTrainer:
    """:func:`prepare`, recording the data and model settings as ``run()`` does (a resume checks them)."""
    trainer, args, model_args, data_args = prepare_run("distill", defaults={**BASE, "output_dir": str(output_dir), **extra})
    trainer.run_record["settings"] = training_settings(args, model_args, data_args)
    return trainer


def test_resumed_run_reads_the_views_it_redraws(tmp_path, kd_runs):
    output_dir = tmp_path / "run"
    saving = {"teacher_cache": str(kd_runs.cache), "save_strategy": "steps", "save_steps": 4}
    train_from_cache(prepare_recorded(output_dir, **saving))
    checkpoint = output_dir / "checkpoint-4"  # after the first step of epoch 1: resumes mid-epoch
    resumed = prepare_recorded(output_dir, resume_from_checkpoint=str(checkpoint), **saving)
    assert resumed.teacher_cache is not None
    final = train_from_cache(resumed, resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    assert_same_states(final, kd_runs.cached, rtol=1e-4, atol=1e-5)
    assert_same_states(final, kd_runs.online, rtol=1e-4, atol=1e-5)  # and so the online run's


# A BatchNorm student is fine here: both runs split the same global batches the same way.
TWO_PROCESSES = {"student_model": "resnet8", "student_model_kwargs": {}, "image_size": 16}


def test_two_processes_each_read_their_own_rows(tmp_path):
    online, _ = launch(tmp_path, processes=2, batch=8, name="online", **TWO_PROCESSES)
    cache = tmp_path / "cache"
    values = {**MULTIPROCESS_RUN, **TWO_PROCESSES, "output_dir": str(tmp_path / "unused"), "per_device_train_batch_size": 8}
    assert main(["cache-teacher", *overrides({**values, "teacher_cache": str(cache)})]) == 0
    built = files_of(cache)
    cached, _ = launch(tmp_path, processes=2, batch=8, name="cached", teacher_cache=str(cache), **TWO_PROCESSES)
    assert files_of(cache) == built  # read, not rebuilt
    initial = load_file(str(tmp_path / "online" / "initial_rank0.safetensors"))
    assert_moved(online[0], initial)
    for rank in (0, 1):
        assert_same_states(cached[rank], online[rank], **EXACT)


# ----------------------------------------------------------------------------------------------
# Refusals: a ConfigError naming what differs, before training


@pytest.fixture(scope="module")
def other_teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(99)
    path = tmp_path_factory.mktemp("teacher") / "resnet20.safetensors"
    save_file(load_model("resnet20", num_classes=10).state_dict(), str(path))
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"teacher_checkpoint": "OTHER_TEACHER"}, {"teacher"}),
        ({"max_train_samples": 80}, {"dataset"}),
        ({"data_seed": 5}, {"dataset", "seed"}),  # the seed picks the subset too
        ({"image_size": 24}, {"transform"}),
        ({"augmentation": "crop"}, {"transform"}),
        ({"num_train_epochs": 3}, {"epochs"}),
        (FAM, {"features"}),
    ],
    ids=["teacher", "rows", "data_seed", "image_size", "augmentation", "epochs", "features"],
)
def test_cache_of_another_run_is_refused_naming_the_difference(tmp_path, kd_runs, other_teacher_file, change, expected):
    change = {key: (str(other_teacher_file) if value == "OTHER_TEACHER" else value) for key, value in change.items()}
    before = files_of(kd_runs.cache)
    with pytest.raises(ConfigError) as error:
        prepare(tmp_path / "run", teacher_cache=str(kd_runs.cache), **change)
    message = str(error.value)
    assert message.startswith(f"teacher_cache '{kd_runs.cache}' was built for ")
    assert mismatches_in(message) == expected, message
    assert not (tmp_path / "run").exists()  # not even the empty folder the Trainer makes
    assert files_of(kd_runs.cache) == before


def test_cache_of_another_data_seed_alone_is_refused(tmp_path, kd_runs):
    # The same rows and teacher through the trainer API: only the augmentation seed differs.
    reference = prepare(tmp_path / "reference")
    args = DistillationConfig(
        output_dir=str(tmp_path / "run"), methods=BASE["methods"], per_device_train_batch_size=32, num_train_epochs=2,
        seed=3, data_seed=5, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", teacher_cache=str(kd_runs.cache),
    )
    with pytest.raises(ConfigError) as error:
        DistillationTrainer(model=load_model("resnet8", num_classes=10), teacher=reference.teacher.model, args=args, train_dataset=reference.train_dataset)
    assert mismatches_in(str(error.value)) == {"seed"}
    assert "another data seed (3 vs this run's 5)" in str(error.value)


def test_feature_methods_need_teacher_cache_features(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="teacher_cache_features: true") as error:
        prepare(tmp_path / "run", methods=FAM["methods"], teacher_cache=str(cache))
    assert "fam" in str(error.value)
    assert not cache.exists()
    assert_nothing_written(tmp_path / "run")


def test_evaluation_formatted_training_set_is_refused(tmp_path):
    # Its rows carry no index, so no batch could say which cached views it holds.
    from hf_freqkd.data import load_digits_dataset, with_image_transform

    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    rows = with_image_transform(load_digits_dataset()["train"].select(range(32)), "image", "label", config, training=False, augmentation="none")
    args = DistillationConfig(output_dir=str(tmp_path / "run"), methods={"kd": {}}, use_cpu=True, report_to="none", teacher_cache=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="training=True"):
        DistillationTrainer(model=load_model("resnet8", num_classes=10), teacher=load_model("resnet20", num_classes=10), args=args, train_dataset=rows)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"methods": {"ce": {}}}, "no method uses a teacher"),
        ({"teacher_cache_dtype": "bfloat16"}, "teacher_cache_dtype = 'bfloat16' is invalid: expected one of float32, float16"),
        ({"teacher_cache_max_gb": 0}, "teacher_cache_max_gb = 0 is invalid"),
        ({"teacher_cache_max_gb": -1.0}, "teacher_cache_max_gb = -1.0 is invalid"),
        ({"teacher_cache_max_gb": math.inf}, "teacher_cache_max_gb = inf is invalid"),
        ({"teacher_cache": " "}, "teacher_cache = ' ' is invalid: expected a folder path"),
        ({"teacher_cache_layers": []}, "teacher_cache_layers = [] is invalid: expected a non-empty list of teacher layer names"),
        ({"teacher_cache_layers": ["layer1", ""]}, "teacher_cache_layers = ['layer1', ''] is invalid"),
        ({"teacher_cache": None, "teacher_cache_layers": ["layer1"]}, "teacher_cache_layers = ['layer1'] is set but teacher_cache is not"),
    ],
)
def test_bad_cache_settings_are_refused(tmp_path, values, message):
    settings = {"output_dir": str(tmp_path / "run"), "methods": {"kd": {}}, "teacher_cache": str(tmp_path / "cache"), **values}
    with pytest.raises(ConfigError) as error:
        DistillationConfig(**settings)
    assert message in str(error.value)


def test_cache_above_teacher_cache_max_gb_is_refused_before_writing(tmp_path):
    cache = tmp_path / "caches" / "cache"
    trainer = prepare(tmp_path / "run", teacher_cache=str(cache), teacher_cache_max_gb=2e-6)  # 2 KiB < 7.5 KiB
    with pytest.raises(ConfigError, match=r"7\.5 KiB, above teacher_cache_max_gb = 2e-06"):
        trainer.train()
    assert not cache.exists()
    assert not (tmp_path / "caches").exists() or not any((tmp_path / "caches").iterdir())  # no staging folder either
    assert_nothing_written(tmp_path / "run")


def test_folder_that_is_not_a_cache_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "results.txt").write_text("someone's results")
    before = files_of(folder)
    with pytest.raises(ConfigError, match="holds no teacher_cache.json: it is not a teacher cache"):
        prepare(tmp_path / "run", teacher_cache=str(folder))
    assert files_of(folder) == before
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# The shards and the command line


def test_memory_mapped_shards_equal_safetensors_own_loader(fam_runs, fam_float16_cache):
    for cache, dtype in ((fam_runs.cached_trainer.teacher_cache, torch.float32), (fam_float16_cache, torch.float16)):
        assert len(cache.shards) == 2
        for shard in cache.shards:
            path = cache.path / shard["file"]
            reference = load_file(str(path))
            mapped = _memory_map_safetensors(path)
            assert set(mapped) == set(reference) == {"logits", *(f"features.{name}" for name in cache.feature_names)}
            for name, tensor in reference.items():
                assert tensor.dtype == dtype and tensor.shape[0] == 96
                assert torch.equal(torch.from_numpy(mapped[name].copy()), tensor), name


def test_cache_teacher_command_builds_then_reuses_and_needs_teacher_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()  # an empty folder is taken
    argv = ["cache-teacher", *overrides({**BASE, "output_dir": str(tmp_path / "run"), "teacher_cache": str(cache)})]
    assert main(argv) == 0
    summary = f"teacher cache: {cache} (7.7 KiB, 2 epoch(s) x 96 rows)"
    assert capsys.readouterr().out.splitlines()[-1] == summary
    built = files_of(cache)
    assert sorted(built) == ["epoch000-rows000000000.safetensors", "epoch001-rows000000000.safetensors", CACHE_INDEX]

    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [summary]
    assert files_of(cache) == built
    assert_nothing_written(tmp_path / "run")

    assert main(["cache-teacher", *overrides({**BASE, "output_dir": str(tmp_path / "run")})]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hf-freqkd cache-teacher: error: ") and "teacher_cache=<folder>" in lines[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "{tmp}/no_such_images"}, "dataset '{tmp}/no_such_images' does not exist"),
        ({"teacher_model": "{tmp}/no_teacher"}, "model '{tmp}/no_teacher' does not exist"),
        ({"teacher_cache": "{tmp}/notes.txt/cache"}, "teacher_cache '{tmp}/notes.txt/cache' cannot be created: '{tmp}/notes.txt' is a file"),
    ],
)
def test_cache_teacher_refuses_missing_inputs_before_writing_the_cache_or_the_runs_folder(tmp_path, capsys, change, message):
    (tmp_path / "notes.txt").write_text("")
    values = {**BASE, "output_dir": str(tmp_path / "run"), "teacher_cache": str(tmp_path / "cache")}
    values.update({key: value.format(tmp=tmp_path) for key, value in change.items()})
    line = refused_before_writing(["cache-teacher", *overrides(values)], capsys, tmp_path / "run", tmp_path / "cache", Path(values["teacher_cache"]))
    assert message.format(tmp=tmp_path) in line


def test_cache_teacher_leaves_no_empty_run_folder(tmp_path, capsys):
    # transformers' Trainer makes output_dir when built; cache-teacher writes only the cache.
    assert main(["cache-teacher", *overrides({**BASE, "max_train_samples": 16, "num_train_epochs": 1, "output_dir": str(tmp_path / "run"), "teacher_cache": str(tmp_path / "cache")})]) == 0
    assert (tmp_path / "cache" / CACHE_INDEX).is_file()
    assert not (tmp_path / "run").exists()
