"""``hf-freqkd benchmark quality`` on a tiny config, and its config validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hf_freqkd.benchmark.quality import load_benchmark_config, run_quality_benchmark
from hf_freqkd.cli import main

BENCH_DIR = Path(__file__).resolve().parents[2] / "configs" / "bench"

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
    ],
)
def test_bad_configs_fail_before_training_naming_the_value(tmp_path, changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_benchmark_config(write_config(tmp_path, **changes))
    assert not (tmp_path / "bench").exists()


def test_overrides_reach_nested_keys_and_method_labels(tmp_path):
    config = load_benchmark_config(
        write_config(tmp_path), ["seeds=[1, 2]", "student.num_train_epochs=3", "methods.ce.ce.weight=0.5"], output_dir=str(tmp_path / "o")
    )
    assert config.seeds == [1, 2] and config.output_dir == tmp_path / "o"
    values = config.student_run_config(config.methods[0], 2)
    assert values["num_train_epochs"] == 3 and values["methods"] == {"ce": {"weight": 0.5}} and values["seed"] == 2


@pytest.mark.parametrize("path", sorted(BENCH_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_bench_configs_validate(path):
    config = load_benchmark_config(path)
    assert len(config.seeds) >= 3
    labels = [m.label for m in config.methods]
    assert {"ce", "kd", "dkd", "figkd", "fam", "fam_l2l", "freekd"} <= set(labels)
