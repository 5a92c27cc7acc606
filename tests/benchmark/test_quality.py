"""``hf-freqkd benchmark quality`` on a tiny config, and its config validation."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hf_freqkd.benchmark.quality import (
    RESULT_FILE,
    benchmark_config_from_dict,
    load_benchmark_config,
    markdown_report,
    metric_values,
    reported_metrics,
    run_quality_benchmark,
    summarise,
    validate_runs,
    write_csv,
)
from hf_freqkd.cli import main
from hf_freqkd.output_dir import RUN_RECORD
from hf_freqkd.tasks import get_task

from ..helpers import refused_before_writing

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "configs" / "bench"
ABLATION_CONFIG = BENCH_DIR / "figkd_ablation_digits.yaml"
#: Studies of one or two methods (variants of their options), not comparisons of every method
STUDY_CONFIGS = {
    ABLATION_CONFIG,
    BENCH_DIR / "figkd_ablation_cifar10.yaml",
    BENCH_DIR / "cifar10_validation.yaml",
    BENCH_DIR / "cifar10_validation_round2.yaml",
}

TINY_RUN = {
    "dataset": "digits",
    "image_size": 16,
    "augmentation": "crop",
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "max_steps": 2,
    "max_train_samples": 64,
    "max_eval_samples": 40,
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
}


def write_config(tmp_path: Path, **changes) -> Path:
    values = {
        "name": "tiny",
        "output_dir": str(tmp_path / "bench"),
        "seeds": [0],
        "common": TINY_RUN,
        "teacher": {"student_model": "resnet8"},
        "student": {"student_model": "resnet8"},
        "methods": {"ce": {"ce": {}}, "freekd": {"freekd": {"prompt_steps": 2, "prompt_batch_size": 8, "prompt_report_batches": 1}}},
        **changes,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_tiny_benchmark_writes_table_csv_and_chart(tmp_path, capsys):
    config_path = write_config(tmp_path)
    assert main(["benchmark", "quality", "--config", str(config_path)]) == 0
    out = tmp_path / "bench"
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["seed"]) for row in rows] == [("ce", "0"), ("freekd", "0")]
    assert all(0.0 <= float(row["top1"]) <= float(row["top5"]) <= 1.0 for row in rows)
    assert int(rows[0]["method_parameters"]) == 0 < int(rows[1]["method_parameters"])  # freekd's 1x1 adapter
    table = (out / "results.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [line.split("|")[1].strip() for line in body] == ["teacher resnet8", "ce", "freekd"]
    assert "top-5 (%)" in table  # 10 classes
    assert "FreeKD stage 1" in table
    with Image.open(out / "results.png") as image:
        image.verify()
    with Image.open(out / "results.png") as image:
        assert image.size[0] >= 400 and image.size[1] >= 200
    summary = json.loads((out / "results.json").read_text())
    assert [s["method"] for s in summary["summary"]] == ["ce", "freekd"]
    assert (out / "runs" / "freekd" / "prompts.safetensors").is_file()
    assert (out / "runs" / "ce" / "seed0" / "config.yaml").is_file()

    # A rerun reuses every finished run instead of training again.
    stamp = (out / "runs" / "ce" / "seed0" / "bench_result.json").stat().st_mtime_ns
    capsys.readouterr()
    result = run_quality_benchmark(load_benchmark_config(config_path))
    assert (out / "runs" / "ce" / "seed0" / "bench_result.json").stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().out
    assert [row["method"] for row in result.rows] == ["ce", "freekd"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"methods": {"mine": {"ce": {}, "figgkd": {}}}}, "methods.mine: unknown method 'figgkd'"),
        ({"seeds": []}, "seeds = \\[\\] is invalid"),
        ({"sedes": [0]}, "unknown key 'sedes' \\(did you mean seeds"),
        ({"student": {"student_model": "resnet8", "learning_rat": 0.1}}, "method 'ce'.*unknown config key 'learning_rat'"),
        ({"methods": {"figkd": {"figkd": {"levels": 0}}}}, "levels"),
        ({"teacher": {}}, "set teacher.student_model"),
        ({"student": {"student_model": "resnet8", "seed": 3}}, "student.seed' is set by the benchmark"),
        ({"teacher": {"student_model": "resnet8", "task": "segmentation"}}, "teacher: task = 'segmentation' but the students' task is 'classification'"),
    ],
)
def test_bad_configs_fail_before_training_naming_the_value(tmp_path, changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_benchmark_config(write_config(tmp_path, **changes))
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    "changes, bad_value",
    [
        ({"common": {**TINY_RUN, "dataset": "{tmp}/no_such_images"}}, "teacher: dataset '{tmp}/no_such_images' does not exist"),
        # read by the last label's runs alone, which start long after the teacher has trained
        (
            {"methods": {"ce": {"ce": {}}, "kd": {"methods": {"kd": {}}, "dataset": "{tmp}/no_such_images"}}},
            "method 'kd': dataset '{tmp}/no_such_images' does not exist",
        ),
        ({"student": {"student_model": "{tmp}/no_student"}}, "model '{tmp}/no_student' does not exist"),
        ({"teacher": {"model": "{tmp}/no_teacher"}}, "teacher.model '{tmp}/no_teacher' is not a folder"),
        (
            {"teacher": {"student_model": "resnet8", "student_checkpoint": "{tmp}/teacher.safetensors"}},
            "teacher: checkpoint '{tmp}/teacher.safetensors' does not exist",
        ),
    ],
    ids=["dataset", "dataset_of_one_label", "student_model", "exported_teacher", "teacher_checkpoint"],
)
def test_a_missing_input_of_any_run_is_refused_before_anything_is_written(tmp_path, capsys, changes, bad_value):
    with_tmp = json.loads(json.dumps(changes).replace("{tmp}", str(tmp_path)))
    line = refused_before_writing(["benchmark", "quality", "--config", str(write_config(tmp_path, **with_tmp))], capsys, tmp_path / "bench")
    assert bad_value.format(tmp=tmp_path) in line


@pytest.mark.parametrize("occupant", ["file", "training_run", "result_of_another_config"])
def test_an_output_dir_that_is_not_this_benchmarks_is_refused_before_anything_is_written(tmp_path, capsys, occupant):
    out = tmp_path / "bench"
    if occupant == "file":
        out.write_text("notes")
        expected = "output_dir '{out}' exists and is not a folder"
    elif occupant == "training_run":
        (out / "checkpoint-5").mkdir(parents=True)
        expected = "output_dir '{out}' holds a training run (checkpoint-5)"
    else:
        # The freekd label's result with other options: found before the teacher and the ce runs train.
        (out / "runs" / "freekd" / "seed0").mkdir(parents=True)
        (out / "runs" / "freekd" / "seed0" / RESULT_FILE).write_text(json.dumps({"config": {"methods": {"freekd": {}}}}))
        expected = "'{out}/runs/freekd/seed0' holds the result of a run with a different config"
    before = sorted(out.rglob("*")) if out.is_dir() else out.read_text()
    line = refused_before_writing(["benchmark", "quality", "--config", str(write_config(tmp_path))], capsys, out / "teacher")
    assert expected.format(out=out) in line
    assert (sorted(out.rglob("*")) if out.is_dir() else out.read_text()) == before


def test_overrides_reach_nested_keys_and_method_labels(tmp_path):
    config = load_benchmark_config(
        write_config(tmp_path), ["seeds=[1, 2]", "student.num_train_epochs=3", "methods.ce.ce.weight=0.5"], output_dir=str(tmp_path / "o")
    )
    assert config.seeds == [1, 2] and config.output_dir == tmp_path / "o"
    values = config.student_run_config(config.methods[0], 2)
    assert values["num_train_epochs"] == 3 and values["methods"] == {"ce": {"weight": 0.5}} and values["seed"] == 2
    assert config.changed_by_overrides == {
        "seeds": ([0], [1, 2]), "student.num_train_epochs": ("(not set)", 3), "methods.ce.ce.weight": ("(not set)", 0.5)
    }


# What each task's shipped comparison must run: every classification method; on detectors the student
# alone, the spatial baseline and the two feature methods the detection papers distil FPNs with.
SHIPPED_COMPARISONS = {
    "classification": {"ce", "kd", "dkd", "figkd", "fam", "fam_l2l", "freekd"},
    "detection": {"ce", "feature_mse", "fam", "freekd"},
}


@pytest.mark.parametrize("path", sorted(set(BENCH_DIR.glob("*.yaml")) - STUDY_CONFIGS), ids=lambda p: p.name)
def test_shipped_method_comparisons_validate_and_list_every_method(path):
    config = load_benchmark_config(path)
    assert len(config.seeds) >= 3
    labels = [m.label for m in config.methods]
    assert SHIPPED_COMPARISONS[config.task.name] <= set(labels)


@pytest.mark.parametrize("path", sorted(STUDY_CONFIGS), ids=lambda p: p.name)
def test_shipped_studies_validate_with_three_seeds_and_the_student_alone(path):
    config = load_benchmark_config(path)
    validate_runs(config)
    assert len(config.seeds) >= 3 and config.baseline is not None  # the student alone, the row every variant is read against


@pytest.mark.parametrize("name", ["cifar10_validation.yaml", "cifar10_validation_round2.yaml"])
def test_cifar10_validation_study_never_evaluates_on_the_test_split(name):
    config = load_benchmark_config(BENCH_DIR / name)
    for method in config.methods:
        values = config.student_run_config(method, 0)
        assert values["eval_split"] is None and 0 < values["validation_fraction"] < 1, method.label


def test_figkd_ablation_config_runs_the_published_variants_one_option_each():
    config = load_benchmark_config(ABLATION_CONFIG)
    assert config.seeds == [0, 1, 2]
    # The rows of the published figure (docs/figkd_ablation_digits.csv), in its order.
    with open(REPO / "docs" / "figkd_ablation_digits.csv") as handle:
        published = list(dict.fromkeys(row["variant"] for row in csv.DictReader(handle)))
    assert [m.label for m in config.methods] == published
    assert config.baseline.label == "ce (student alone)"
    figkd_variants = [m for m in config.methods if "figkd" in m.method_names]
    assert len(figkd_variants) == 9
    for method in figkd_variants:
        assert method.overrides == {"methods": method.overrides["methods"]}  # no other run key differs
        assert method.overrides["methods"]["ce"] == {}
        assert len(method.overrides["methods"]["figkd"]) <= 1  # the default, or one option changed
    changed = [option for m in figkd_variants for option in m.overrides["methods"]["figkd"].items()]
    assert sorted(changed, key=str) == sorted(
        [("bands", "low"), ("bands", "all"), ("levels", 2), ("levels", 3), ("wavelet", "db2"),
         ("target", "coef_kl"), ("target", "coef_mse"), ("class_order", "teacher_sorted")], key=str
    )
    values = config.student_run_config(figkd_variants[0], 0)
    assert (values["student_model"], values["num_train_epochs"], values["max_train_samples"]) == ("resnet8", 30, 200)
    assert "distill_warmup_epochs" not in values  # the ablation ran without warm-up
    assert config.teacher_run_config()["student_model"] == "resnet20"
    assert not (REPO / "scripts" / "ablate_figkd.py").exists()  # one way to run a sweep


# ----------------------------------------------------------------------------------------------
# A sweep with named variants, run once with one seed and overrides: what results.md records.

SWEEP_DESCRIPTION = "Students resnet8 trained for 30 epochs."


@pytest.fixture(scope="module")
def one_seed_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    config_path = write_config(
        folder,
        description=SWEEP_DESCRIPTION,
        seeds=[0, 1],
        student={"student_model": "resnet8", "num_train_epochs": 30},
        methods={"ce (student alone)": {"ce": {}}, "figkd levels=2": {"ce": {}, "figkd": {"levels": 2}}},
    )
    out = folder / "results"
    overrides = ["student.num_train_epochs=5", "seeds=[1]"]
    argv = ["benchmark", "quality", "--config", str(config_path), "--output-dir", str(out), *overrides]
    assert main(argv) == 0
    return argv, out


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in rows)}


def test_named_variants_are_rows_compared_with_the_student_alone(one_seed_sweep):
    _, out = one_seed_sweep
    with open(out / "results.csv") as handle:
        runs = [(row["method"], row["seed"]) for row in csv.DictReader(handle)]
    assert runs == [("ce (student alone)", "1"), ("figkd levels=2", "1")]
    rows = table_rows((out / "results.md").read_text())
    assert list(rows) == ["teacher resnet8", "ce (student alone)", "figkd levels=2"]
    summary = {s["method"]: s for s in json.loads((out / "results.json").read_text())["summary"]}
    delta = summary["figkd levels=2"]["top1_mean"] - summary["ce (student alone)"]["top1_mean"]
    assert rows["figkd levels=2"][2] == f"{delta:+.2f}"  # "top-1 vs ce" against the ce-only label
    assert rows["ce (student alone)"][2] == ""
    assert (out / "runs" / "figkd_levels_2" / "seed1" / "bench_result.json").is_file()


def test_results_md_records_the_command_with_its_overrides(one_seed_sweep):
    argv, out = one_seed_sweep
    markdown = (out / "results.md").read_text()
    assert f"Command: `hf-freqkd {shlex.join(argv)}`" in markdown


def test_results_md_says_which_described_settings_the_overrides_changed(one_seed_sweep):
    _, out = one_seed_sweep
    lines = (out / "results.md").read_text().splitlines()
    described = lines.index(SWEEP_DESCRIPTION)
    note = lines[described + 2]
    assert "student.num_train_epochs: 30 -> 5" in note and "seeds: [0, 1] -> [1]" in note


def test_one_seed_shows_no_standard_deviation(one_seed_sweep):
    _, out = one_seed_sweep
    markdown = (out / "results.md").read_text()
    rows = table_rows(markdown)
    for label in ("ce (student alone)", "figkd levels=2"):
        top1, top5 = rows[label][:2]
        assert top1.endswith(" (n=1)") and top5.endswith(" (n=1)"), rows[label]
    assert "+-" not in markdown
    assert "no standard deviation (n=1)" in markdown
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert all(s["top1_std"] is None and s["top1_n"] == 1 for s in summary)


# ----------------------------------------------------------------------------------------------
# The metrics are the task's: mAP for detection, mIoU for segmentation, top-1 / top-5 for classification.


@pytest.mark.parametrize(
    "task, expected",
    [
        ("classification", [("eval_accuracy", "top-1", "top1"), ("eval_top5_accuracy", "top-5", "top5")]),
        ("segmentation", [("eval_mean_iou", "mIoU", "miou"), ("eval_pixel_accuracy", "pixel accuracy", "pixel_accuracy")]),
        ("detection", [("eval_map", "mAP", "map"), ("eval_map_50", "AP50", "ap50")]),
    ],
)
def test_each_task_names_the_metrics_and_columns_it_reports(task, expected):
    metrics = reported_metrics(get_task(task))
    assert [(f"eval_{m.key}", m.label, m.column) for m in metrics] == expected


def test_classification_shows_top5_only_above_five_classes():
    classification, detection = get_task("classification"), get_task("detection")
    assert [classification.benchmark_shows("top5_accuracy", n) for n in (2, 5, 6, 100)] == [False, False, True, True]
    assert classification.benchmark_shows("accuracy", 2)
    assert detection.benchmark_shows("map_50", 1)  # AP50 means something whatever the number of classes


def test_missing_and_undefined_metrics_are_nan():
    metrics = reported_metrics(get_task("detection"))
    assert metric_values(metrics, {"eval_map": 0.25, "eval_map_50": 0.5, "eval_map_75": 0.1}) == {"map": 0.25, "ap50": 0.5}
    values = metric_values(metrics, {"eval_map": -1.0})  # COCO's -1: nothing to score
    assert list(values) == ["map", "ap50"] and all(math.isnan(v) for v in values.values())


def detection_record(map_: float, ap50: float, method_parameters: int, seconds: float) -> dict:
    return {"map": map_, "ap50": ap50, "student_parameters": 207110, "method_parameters": method_parameters,
            "teacher_parameters": 207110 if method_parameters else 0, "train_seconds": seconds - 1, "seconds": seconds}


def test_detection_table_and_csv_from_synthetic_records(tmp_path):
    config = benchmark_config_from_dict(
        {
            "name": "shapes",
            "output_dir": str(tmp_path),
            "seeds": [0, 1],
            "common": {"task": "detection"},
            "teacher": {"student_model": "retinanet_resnet20"},
            "student": {"student_model": "retinanet_resnet8"},
            "methods": {"ce": {"ce": {}}, "feature_mse": {"ce": {}, "feature_mse": {}}},
        }
    )
    metrics = config.metrics
    rows = [
        {"method": "ce", "seed": 0, **detection_record(0.30, 0.50, 0, 3.0)},
        {"method": "ce", "seed": 1, **detection_record(0.34, 0.54, 0, 3.0)},
        {"method": "feature_mse", "seed": 0, **detection_record(0.35, 0.60, 4224, 4.0)},
        {"method": "feature_mse", "seed": 1, **detection_record(0.37, float("nan"), 4224, 4.0)},  # AP50 undefined
    ]
    summary = summarise(rows, ["ce", "feature_mse"], metrics)
    assert summary[1]["map_mean"] == pytest.approx(36.0) and summary[1]["ap50_n"] == 1 and summary[1]["map_values"] == pytest.approx([35, 37])
    teacher = {"map": 0.45, "ap50": 0.70, "student_parameters": 1_234_567, "seconds": 12.0}
    table = markdown_report(summary, config, teacher, metrics, 3, {}, 60.0).splitlines()
    assert table[0] == "### shapes: teacher retinanet_resnet20 -> student retinanet_resnet8, 3 classes, seeds 0, 1"
    start = table.index("| method | mAP (%) | AP50 (%) | mAP vs ce | student params | method params | wall time per run (s) |")
    assert table[start + 1 : start + 5] == [
        "|---|---:|---:|---:|---:|---:|---:|",
        "| teacher retinanet_resnet20 | 45.00 | 70.00 | | 1.235 M | | 12 |",
        "| ce | 32.00 +- 2.83 | 52.00 +- 2.83 |  | 0.207 M | 0 | 3 |",
        "| feature_mse | 36.00 +- 1.41 | 60.00 (n=1) | +4.00 | 0.207 M | 4.2 k | 4 |",
    ]
    with open(write_csv(rows, tmp_path / "results.csv", metrics)) as handle:
        lines = handle.read().splitlines()
    assert lines[0] == "method,seed,map,ap50,student_parameters,method_parameters,teacher_parameters,train_seconds,seconds"
    assert lines[4] == "feature_mse,1,0.37,nan,207110,4224,207110,3.0,4.0"


DETECTION_RUN = {
    "task": "detection",
    "dataset": "shapes_detection",
    "dataset_config_name": "num_train=16,num_test=8,image_size=32,num_classes=2,seed=0",
    "image_size": 32,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_steps": 1,
    "optim": "adamw_torch",
    "learning_rate": 3e-3,
    "max_grad_norm": 10.0,  # as configs/detection/shapes_*.yaml: a detector's early steps need it
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "disable_tqdm": True,
}


def test_tiny_detection_benchmark_reports_map(tmp_path):
    config_path = write_config(
        tmp_path,
        common=DETECTION_RUN,
        # 12 steps find a few boxes, so the teacher's mAP and AP50 differ from 0 and from each other.
        teacher={"student_model": "retinanet_resnet8", "max_steps": 12},
        student={"student_model": "retinanet_resnet8"},
        methods={"ce": {"ce": {}}, "feature_mse": {"ce": {}, "feature_mse": {"weight": 1.0}}},
    )
    assert main(["benchmark", "quality", "--config", str(config_path)]) == 0
    out = tmp_path / "bench"
    with open(out / "results.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames[:4] == ["method", "seed", "map", "ap50"]
    assert [(row["method"], row["seed"]) for row in rows] == [("ce", "0"), ("feature_mse", "0")]
    assert int(rows[0]["method_parameters"]) == 0 < int(rows[1]["method_parameters"])  # feature_mse's 1x1 adapters
    report = json.loads((out / "results.json").read_text())
    assert report["task"] == "detection" and [m["column"] for m in report["metrics"]] == ["map", "ap50"]
    # Each column is the run's own evaluation metric, a fraction (COCO's -1 would show as nan).
    runs = {"teacher": (out / "teacher", report["teacher"])}
    runs.update({row["method"]: (out / "runs" / row["method"] / "seed0", row) for row in rows})
    for folder, values in runs.values():
        evaluated = json.loads((folder / RUN_RECORD).read_text())["metrics"]
        assert (float(values["map"]), float(values["ap50"])) == (evaluated["eval_map"], evaluated["eval_map_50"])
        assert 0.0 <= float(values["map"]) <= float(values["ap50"]) <= 1.0
    assert report["teacher"]["ap50"] > 0.0
    table = (out / "results.md").read_text()
    assert "| method | mAP (%) | AP50 (%) | mAP vs ce | student params | method params | wall time per run (s) |" in table
    cells = table_rows(table)
    assert list(cells) == ["teacher retinanet_resnet8", "ce", "feature_mse"]
    assert cells["teacher retinanet_resnet8"][:2] == [f"{100 * report['teacher'][c]:.2f}" for c in ("map", "ap50")]
    for row in rows:
        assert cells[row["method"]][:2] == [f"{100 * float(row[c]):.2f} (n=1)" for c in ("map", "ap50")]
    assert "top-1" not in table
    with Image.open(out / "results.png") as image:
        image.verify()


# ----------------------------------------------------------------------------------------------
# teacher_cache: one cache per seed for the logit methods, a cache per label for feature methods


def test_teacher_cache_logits_gives_the_online_results_from_one_cache_per_seed(tmp_path):
    methods = {"ce": {"ce": {}}, "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}}, "dkd": {"dkd": {}}, "fam": {"fam": {}}}
    online = run_quality_benchmark(load_benchmark_config(write_config(tmp_path, seeds=[0, 1], methods=methods), output_dir=str(tmp_path / "online")))
    config = load_benchmark_config(write_config(tmp_path, seeds=[0, 1], methods=methods, teacher_cache="logits"), output_dir=str(tmp_path / "cached"))
    by_label = {method.label: method for method in config.methods}
    for seed in (0, 1):
        assert config.student_run_config(by_label["kd"], seed)["teacher_cache"] == str(tmp_path / "cached" / "teacher_cache" / f"seed{seed}" / "logits")
        assert config.student_run_config(by_label["dkd"], seed)["teacher_cache"] == config.student_run_config(by_label["kd"], seed)["teacher_cache"]
        assert "teacher_cache" not in config.student_run_config(by_label["ce"], seed)  # no teacher
        assert "teacher_cache" not in config.student_run_config(by_label["fam"], seed)  # reads features: online unless "all"
    cached = run_quality_benchmark(config)
    assert sorted(cached.cache_seconds) == [str(tmp_path / "cached" / "teacher_cache" / f"seed{s}" / "logits") for s in (0, 1)]
    for row_online, row_cached in zip(online.rows, cached.rows):
        assert (row_online["method"], row_online["seed"]) == (row_cached["method"], row_cached["seed"])
        assert row_cached["top1"] == pytest.approx(row_online["top1"], abs=1e-9)
    assert "Teacher cache (logits): 2 cache(s) built" in (tmp_path / "cached" / "results.md").read_text()


def test_teacher_cache_all_shares_one_cache_per_seed_between_labels_that_change_only_methods():
    values = {
        "output_dir": "b", "seeds": [3], "common": TINY_RUN, "teacher": {"student_model": "resnet8"}, "student": {"student_model": "resnet8"},
        "methods": {"kd": {"kd": {}}, "fam v2": {"fam": {}}, "fam long": {"methods": {"fam": {}}, "max_steps": 4}},
        "teacher_cache": "all",
    }
    config = benchmark_config_from_dict(values)
    kd, fam, fam_long = config.methods
    config.shared_cache_layers = ["layer1", "layer2"]
    shared = str(Path("b") / "teacher_cache" / "seed3" / "shared")
    for method in (kd, fam):
        assert config.student_run_config(method, 3)["teacher_cache"] == shared
        assert config.student_run_config(method, 3)["teacher_cache_layers"] == ["layer1", "layer2"]
    assert config.student_run_config(fam, 3)["teacher_cache_features"] is True
    assert "teacher_cache_features" not in config.student_run_config(kd, 3)
    # Another schedule draws other views: a cache of its own.
    assert config.student_run_config(fam_long, 3)["teacher_cache"] == str(Path("b") / "teacher_cache" / "seed3" / "fam_long")
    assert "teacher_cache_layers" not in config.student_run_config(fam_long, 3)


def test_teacher_cache_all_gives_the_online_results_from_one_cache_per_seed(tmp_path):
    # kd reads logits, fam_l2l layer1 and freekd (with stage-1 prompts) layer3 of the teacher:
    # one cache per seed holds all of them, and every run equals its online twin.
    methods = {
        "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
        "fam_l2l": {"fam_l2l": {"student_layers": ["layer1"], "teacher_layers": ["layer1"]}},
        "freekd": {"freekd": {"prompt_steps": 2, "prompt_batch_size": 8, "prompt_report_batches": 1}},
    }
    online = run_quality_benchmark(load_benchmark_config(write_config(tmp_path, methods=methods), output_dir=str(tmp_path / "online")))
    config = load_benchmark_config(write_config(tmp_path, methods=methods, teacher_cache="all"), output_dir=str(tmp_path / "cached"))
    cached = run_quality_benchmark(config)
    shared = tmp_path / "cached" / "teacher_cache" / "seed0" / "shared"
    assert sorted(cached.cache_seconds) == [str(shared)]
    assert sorted(path.name for path in shared.parent.iterdir()) == ["shared"]
    assert config.shared_cache_layers == ["layer1", "layer3"]
    for row_online, row_cached in zip(online.rows, cached.rows, strict=True):
        assert (row_online["method"], row_online["seed"]) == (row_cached["method"], row_cached["seed"])
        assert row_cached["top1"] == pytest.approx(row_online["top1"], abs=1e-9)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"teacher_cache": "yes"}, "teacher_cache = 'yes' is invalid: expected one of none, logits, all"),
        ({"common": {**TINY_RUN, "teacher_cache": "c"}}, "common.teacher_cache' is set by the benchmark"),
        ({"methods": {"kd": {"methods": {"kd": {}}, "teacher_cache_features": True}}}, "methods.kd.teacher_cache_features is set by the benchmark"),
    ],
)
def test_teacher_cache_settings_are_the_benchmarks(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_benchmark_config(write_config(tmp_path, **changes))


def test_teacher_caches_are_per_data_seed_so_a_fixed_data_seed_shares_one():
    values = {
        "output_dir": "b", "seeds": [0, 1], "common": {**TINY_RUN, "data_seed": 7}, "teacher": {"student_model": "resnet8"},
        "student": {"student_model": "resnet8"}, "methods": {"kd": {"kd": {}}}, "teacher_cache": "logits",
    }
    config = benchmark_config_from_dict(values)
    folders = {config.student_run_config(config.methods[0], seed)["teacher_cache"] for seed in (0, 1)}
    assert folders == {str(Path("b") / "teacher_cache" / "seed7" / "logits")}
