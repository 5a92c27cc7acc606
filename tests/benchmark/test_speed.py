"""``hf-freqkd benchmark speed`` on a tiny pair: table, CSV and chart with the right rows."""

from __future__ import annotations

import csv
import math

import pytest
from PIL import Image

from hf_freqkd.benchmark.speed import measure, parse_pair, run_speed_benchmark
from hf_freqkd.cli import main

from ..helpers import refused_before_writing


def test_tiny_speed_benchmark_writes_table_csv_and_chart(tmp_path):
    code = main([
        "benchmark", "speed", "--output-dir", str(tmp_path), "--pairs", "resnet8:resnet8", "--methods", "ce", "figkd",
        "--batch-size", "4", "--iterations", "1", "--warmup", "1", "--memory-steps", "1", "--threads", "1",
        "--image-size", "16", "--num-classes", "10",
    ])
    assert code == 0
    with open(tmp_path / "speed.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["pair"], row["method"]) for row in rows] == [("resnet8-resnet8", m) for m in ("limit", "ce", "figkd")]
    for row in rows[1:]:
        assert not row["error"]
        assert float(row["limit_ms"]) > 0 and float(row["step_ms"]) > 0 and math.isfinite(float(row["time_ratio"]))
        assert float(row["peak_mib"]) >= 0
    # memory is measured in its own process, with glibc's mmap threshold fixed (RSS follows live memory)
    assert all(row["memory_source"].endswith("MALLOC_MMAP_THRESHOLD_=131072") for row in rows)
    table = (tmp_path / "speed.md").read_text()
    assert table.count("| resnet8-resnet8 |") == 3
    with Image.open(tmp_path / "speed.png") as image:
        image.verify()
    with Image.open(tmp_path / "speed.png") as image:
        assert image.size[0] >= 400 and image.size[1] >= 200


def test_peak_memory_grows_with_the_batch():
    pair = {"teacher": "resnet8", "student": "resnet8", "image_size": 16, "num_classes": 10, "teacher_kwargs": {}, "student_kwargs": {}}
    job = {"pair": pair, "methods": None, "iterations": 0, "warmup": 0, "memory_steps": 1, "threads": 1}
    small = measure({**job, "batch": 2})["peak_mib"]
    large = measure({**job, "batch": 256})["peak_mib"]
    # 256 images of 16 px through resnet8 keep tens of MiB of activations for the backward pass.
    assert large > small + 5


def test_unknown_methods_and_pairs_fail_early(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'figkdd'"):
        run_speed_benchmark(tmp_path, methods=["figkdd"])
    with pytest.raises(ValueError, match="pair 'resnet8' is invalid"):
        parse_pair("resnet8")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--pairs", "resnet9000:resnet8"], "pair 'resnet9000-resnet8': the teacher 'resnet9000' is not a timm model name; close timm names: "),
        (["--pairs", "resnet8:runs/student"], "the student 'runs/student' is not a timm model name"),
        (["--methods", "figkdd"], "unknown method 'figkdd'"),
        (["--output-dir", "{tmp}/notes.txt/speed"], "--output-dir '{tmp}/notes.txt/speed' cannot be created: '{tmp}/notes.txt' is a file"),
    ],
)
def test_bad_models_methods_and_output_dirs_are_refused_before_anything_is_measured(tmp_path, capsys, arguments, message):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "speed"
    argv = ["benchmark", "speed", "--output-dir", str(out), "--pairs", "resnet8:resnet8", "--methods", "ce", "--iterations", "1"]
    argv += [argument.format(tmp=tmp_path) for argument in arguments]
    line = refused_before_writing(argv, capsys, out, tmp_path / "notes.txt" / "speed")
    assert message.format(tmp=tmp_path) in line


def test_teacher_cache_rows_time_the_step_reading_a_cache(tmp_path):
    code = main([
        "benchmark", "speed", "--output-dir", str(tmp_path), "--pairs", "resnet8:resnet8", "--methods", "ce", "kd",
        "--batch-size", "4", "--iterations", "1", "--warmup", "1", "--memory-steps", "1", "--threads", "1",
        "--image-size", "16", "--num-classes", "10", "--teacher-cache",
    ])
    assert code == 0
    with open(tmp_path / "speed.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["limit", "ce", "kd", "kd (cached teacher)"]  # ce uses no teacher: no cached row
    cached = rows["kd (cached teacher)"]
    assert not cached["error"] and float(cached["alone_ratio"]) > 0 and math.isfinite(float(cached["time_ratio"]))
    assert math.isnan(float(rows["kd"]["alone_ratio"]))
    assert "time x student alone" in (tmp_path / "speed.md").read_text()
