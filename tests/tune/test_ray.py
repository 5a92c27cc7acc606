"""``backend: ray``: the search through transformers' Ray Tune backend on a local Ray instance, two
trials side by side (the ``ray`` extra; skipped where Ray is not installed)."""

from __future__ import annotations

import csv

import pytest
import yaml

from hf_freqkd.cli import main

ray = pytest.importorskip("ray")


def test_the_ray_backend_runs_two_trials_on_two_workers_and_writes_the_same_report(tune_config, tmp_path, capsys):
    config = tune_config({"backend": "ray", "n_trials": 2, "workers": 2, "pruner": "none"})
    try:
        assert main(["tune", "--config", str(config)]) == 0
    finally:
        ray.shutdown()
    folder = tmp_path / "search"
    rows = list(csv.DictReader(open(folder / "trials.csv")))
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert all(row["method"] in ("kd", "figkd") and 0 <= float(row["objective"]) <= 1 for row in rows)
    assert set(yaml.safe_load((folder / "best.yaml").read_text())["methods"]) & {"kd", "figkd"}
    # Each trial trained in its own folder, its distillation rebuilt for its method.
    records = sorted(folder.glob("run-*/hf_freqkd_run.json"))
    assert len(records) == 2
    assert "best: trial" in capsys.readouterr().out
