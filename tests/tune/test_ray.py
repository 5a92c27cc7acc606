"""``backend: ray``: the search through transformers' Ray Tune backend on a local Ray instance, two
trials side by side (the ``ray`` extra; skipped where Ray is not installed)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import yaml

ray = pytest.importorskip("ray")


def test_the_ray_backend_runs_two_trials_on_two_workers_and_writes_the_same_report(tune_config, tmp_path):
    config = tune_config({"backend": "ray", "n_trials": 2, "workers": 2, "pruner": "none"})
    # The command in an interpreter of its own, as a user runs it: Ray pickles the trainer, and state that
    # other tests of this process leave behind (hooks, handlers) must not decide whether that works.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from hf_freqkd.cli import main; sys.exit(main(sys.argv[1:]))", "tune", "--config", str(config)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "search"
    rows = list(csv.DictReader(open(folder / "trials.csv")))
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert all(row["method"] in ("kd", "figkd") and 0 <= float(row["objective"]) <= 1 for row in rows)
    assert set(yaml.safe_load((folder / "best.yaml").read_text())["methods"]) & {"kd", "figkd"}
    # Each trial trained in its own folder, its distillation rebuilt for its method.
    records = sorted(folder.glob("run-*/hf_freqkd_run.json"))
    assert len(records) == 2
    assert "best: trial" in result.stdout
