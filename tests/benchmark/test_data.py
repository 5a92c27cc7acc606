"""``hf-freqkd benchmark data`` on generated digits: what it prints and writes (no timing assertions)."""

from __future__ import annotations

import json
import re
import statistics

import pytest
import torch

from hf_freqkd.benchmark.data import benchmark_input_config, our_pipeline, plain_pipeline
from hf_freqkd.cli import main
from hf_freqkd.data import load_digits_dataset
from hf_freqkd.data.seeding import dataset_seeding

from ..helpers import refused_before_writing

NUMBER = r"[\d,]+"


def test_data_benchmark_prints_both_pipelines_and_the_ratio_and_writes_them(tmp_path, capsys):
    code = main([
        "benchmark", "data", "--dataset", "digits", "--image-size", "16", "--images", "24", "--batch-size", "8",
        "--repeats", "2", "--warmup", "0", "--output-dir", str(tmp_path),
    ])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "24 images of 16 px, crop_flip, batch 8, 2 rounds, 1 thread(s):"
    assert re.fullmatch(rf"  hf_freqkd +{NUMBER} images/s  \(\d+\.\d{{3}} ms per image\)", lines[1])
    assert re.fullmatch(rf"  plain +{NUMBER} images/s  \(\d+\.\d{{3}} ms per image\)", lines[2])
    ratio_line = re.fullmatch(r"  ratio \(time per image, hf_freqkd / plain\): (\d+\.\d\d)x", lines[3])
    assert ratio_line
    assert lines[4:] == [f"wrote {tmp_path / 'data.md'}", f"wrote {tmp_path / 'data.json'}"]

    record = json.loads((tmp_path / "data.json").read_text())
    expected_settings = {
        "dataset": "digits", "images": 24, "image_size": 16, "augmentation": "crop_flip", "batch_size": 8, "repeats": 2, "threads": 1,
    }
    assert {key: record["settings"][key] for key in expected_settings} == expected_settings
    ours, plain = record["pipelines"]["hf_freqkd"], record["pipelines"]["plain"]
    for pipeline in (ours, plain):
        assert len(pipeline["rounds_ms_per_image"]) == 2
        assert pipeline["ms_per_image"] == pytest.approx(statistics.median(pipeline["rounds_ms_per_image"]))
        assert pipeline["images_per_second"] == pytest.approx(1000 / pipeline["ms_per_image"])
    assert record["ratio"] == pytest.approx(ours["ms_per_image"] / plain["ms_per_image"])
    assert ratio_line.group(1) == f"{record['ratio']:.2f}"

    table = (tmp_path / "data.md").read_text()
    assert table.startswith("# Data pipeline: 24 images of 16 px from digits (train), augmentation crop_flip\n")
    figures = rf"\| {NUMBER} \| \d+\.\d{{3}} \|\n"
    assert re.search(r"\n\| hf_freqkd \| datasets decode \+ seeded crop and flip, tensor ops per batch " + figures, table)
    assert re.search(r"\n\| plain \| datasets decode \+ torchvision RandomCrop, RandomHorizontalFlip, ToTensor, Normalize " + figures, table)
    assert f"hf_freqkd / plain: **{record['ratio']:.2f}x**" in table
    command = "hf-freqkd benchmark data --dataset digits --split train --image-size 16 --channels 3 --augmentation crop_flip --images 24"
    assert f"Command: `{command} --batch-size 8 --repeats 2 --warmup 0 --threads 1`" in table


@pytest.mark.parametrize("augmentation", ["crop_flip", "crop", "none"])
def test_both_pipelines_compute_the_same_images(augmentation):
    # The ratio compares equal work: with the same draws, the plain pipeline's images are ours.
    rows = load_digits_dataset()["train"].select(range(6))
    input_config = benchmark_input_config(rows, "image", 3, 12)  # digits are 8 px: both resize
    ours = our_pipeline(rows, "image", "label", input_config, augmentation)
    plain = plain_pipeline(rows, "image", "label", input_config, augmentation)
    seeding = dataset_seeding(ours)
    got = torch.stack(ours[:6]["pixel_values"])
    expected = []
    for row in range(6):
        if seeding is not None:
            torch.manual_seed(seeding.sample_seed(row))
        expected.append(plain[row]["pixel_values"])
    assert got.shape == (6, 3, 12, 12)
    assert torch.equal(got, torch.stack(expected))
    assert ours[:6]["labels"] == plain[:6]["labels"] == rows["label"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--images", "0"], "benchmark data: images = 0 is invalid: expected an integer >= 1"),
        (["--augmentation", "mixup"], "benchmark data: augmentation 'mixup' is unknown; expected one of crop_flip, crop, timm, none"),
        (["--split", "dev"], "benchmark split 'dev' does not exist; the dataset has splits: train, test"),
        (["--dataset", "digitz"], "dataset 'digitz' does not exist"),
        (["--dataset", "{tmp}/no_such_images"], "dataset '{tmp}/no_such_images' does not exist"),
        (["--output-dir", "{tmp}/notes.txt/data"], "--output-dir '{tmp}/notes.txt/data' cannot be created: '{tmp}/notes.txt' is a file"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_timing_or_writing(tmp_path, capsys, arguments, message):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "data"
    argv = ["benchmark", "data", "--images", "8", "--output-dir", str(out), *(argument.format(tmp=tmp_path) for argument in arguments)]
    line = refused_before_writing(argv, capsys, out, tmp_path / "notes.txt" / "data")
    assert message.format(tmp=tmp_path) in line
