"""``hf-freqkd push`` and ``push_to_hub: true``: the exported student reaches the Hub API, and nothing else.

The Hub is a loopback server (tests/hub_server.py) that records requests and commits, and serves
the committed files back through the Hub's download routes. The upload runs in a subprocess with
HF_ENDPOINT pointing at it (huggingface_hub reads it at import) and HF_HUB_OFFLINE=0 in that
subprocess only; error paths run in-process with huggingface_hub's constants patched. A pushed
student is loaded back by its repo id in a fresh subprocess with an empty cache, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import yaml
from huggingface_hub import ModelCard, constants

from hf_freqkd import DistillationConfig, DistillationTrainer
from hf_freqkd.cli import main
from hf_freqkd.export import RUN_RECORD, export_student

from .helpers import exported_files, tiny_run_config
from .hub_server import FAKE_USER, LoopbackHub

FAKE_TOKEN = "hf_FAKEconfigTOKENvalue0123456789"
FAKE_ENV_TOKEN = "hf_FAKEenvTOKENvalue9876543210"
#: a resnet8 export: weights, config, card and the modeling code of the CIFAR zoo (hf_freqkd.remote_code)
EXPORT_FILES = sorted(exported_files())
REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A run folder as a finished run leaves it: record + exported student with its card."""
    run_dir = tmp_path / "run"
    record = {
        "mode": "distill",
        "config": {"student_model": "resnet8", "teacher_model": "resnet14", "methods": {"kd": {}}, "dataset": "digits"},
        "training": {"max_steps": 2, "seed": 0},
        "num_classes": 10,
        "metrics": {"eval_accuracy": 0.5, "eval_top5_accuracy": 0.9},
    }
    export_student(timm.create_model("resnet8", num_classes=10), run_dir / "student", record, model_name="run")
    (run_dir / RUN_RECORD).write_text(json.dumps(record))
    return run_dir


def hub_env(tmp_path: Path, endpoint: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(
        HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1"
    )
    if token:
        env["HF_TOKEN"] = token
    return env


@pytest.fixture
def in_process_hub(monkeypatch, tmp_path):
    """The loopback Hub for in-process calls: endpoint and offline switch patched, no token anywhere."""
    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_cached_login"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield hub


def test_push_commits_the_export_with_the_token(finished_run, tmp_path):
    before = snapshot(finished_run / "student")
    with LoopbackHub() as hub:
        command = [
            sys.executable,
            "-m",
            "hf_freqkd.cli",
            "push",
            "--run",
            str(finished_run),
            "--repo-id",
            "me/resnet8-kd",
            "--private",
            "--revision",
            "dev",
            "--commit-message",
            "first student",
        ]
        result = subprocess.run(
            command, env=hub_env(tmp_path, hub.endpoint, FAKE_ENV_TOKEN), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr[-2000:]
    [commit] = hub.recorder.commits
    assert (
        result.stdout.strip()
        == f"pushed {finished_run / 'student'} to {hub.endpoint}/me/resnet8-kd/commit/{commit.oid}"
    )
    assert (commit.repo_id, commit.revision, commit.summary) == ("me/resnet8-kd", "dev", "first student")
    assert sorted(commit.files) == EXPORT_FILES
    assert commit.files == before  # byte for byte what was exported locally
    [created] = hub.recorder.created
    assert (created["name"], created["organization"]) == ("resnet8-kd", "me")
    assert created.get("visibility") == "private" or created.get("private") is True  # by huggingface_hub version
    assert hub.recorder.branches == [("me/resnet8-kd", "dev")]
    authorized = [auth for method, path, auth in hub.recorder.requests if method == "POST"]
    assert authorized and all(auth == f"Bearer {FAKE_ENV_TOKEN}" for auth in authorized)
    assert snapshot(finished_run / "student") == before


def test_push_without_token_says_so_and_keeps_the_export(finished_run, in_process_hub, capsys):
    before = snapshot(finished_run / "student")
    assert main(["push", "--run", str(finished_run), "--repo-id", "me/resnet8-kd"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "hf-freqkd push: error: no Hugging Face token: set HF_TOKEN, run `hf auth login`, "
        "or set hub_token in the config; "
        f"the exported student stays in {finished_run / 'student'}"
    )
    assert snapshot(finished_run / "student") == before
    assert in_process_hub.recorder.requests == []


def test_push_offline_says_so(finished_run, in_process_hub, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    assert main(["push", "--run", str(finished_run), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1 is set, so nothing can be uploaded" in err and len(err.strip().splitlines()) == 1


def test_push_to_an_unreachable_hub_keeps_the_export(finished_run, in_process_hub, monkeypatch, capsys):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    before = snapshot(finished_run / "student")
    assert main(["push", "--run", str(finished_run), "--repo-id", "me/x"]) == 3  # a failed upload, not bad input
    err = capsys.readouterr().err
    assert f"cannot reach the Hub at {closed}" in err and "the exported student stays in" in err
    assert len(err.strip().splitlines()) == 1 and FAKE_ENV_TOKEN not in err
    assert snapshot(finished_run / "student") == before


def test_rejected_token_is_named(finished_run, in_process_hub, monkeypatch, capsys):
    in_process_hub.recorder.reject_token = True
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    assert main(["push", "--run", str(finished_run), "--repo-id", "me/x"]) == 3
    err = capsys.readouterr().err
    assert "rejected the token (HTTP 401)" in err and len(err.strip().splitlines()) == 1 and FAKE_ENV_TOKEN not in err


@pytest.mark.parametrize("repo_id", ["me/too/deep", "me/bad name", "/leading", "me/", "me/x--y..z"])
def test_malformed_repo_id_is_refused_before_any_request(finished_run, in_process_hub, monkeypatch, capsys, repo_id):
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    assert main(["push", "--run", str(finished_run), "--repo-id", repo_id]) == 2
    assert f"--repo-id = {repo_id!r} is not a valid Hub repo id: expected USER/NAME" in capsys.readouterr().err
    assert in_process_hub.recorder.requests == []


def test_push_of_a_run_without_export_is_one_clear_line(finished_run, in_process_hub, monkeypatch, capsys):
    import shutil

    shutil.rmtree(finished_run / "student")
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    assert main(["push", "--run", str(finished_run), "--repo-id", "me/x"]) == 2
    err = capsys.readouterr().err
    assert f"run folder '{finished_run}' holds no exported student" in err and len(err.strip().splitlines()) == 1
    assert in_process_hub.recorder.requests == []


def test_push_writes_a_missing_card_but_keeps_an_edited_one(finished_run, in_process_hub, monkeypatch):
    from hf_freqkd.push import push_run

    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    (finished_run / "student" / "README.md").unlink()
    push_run(finished_run, "me/x")
    assert ModelCard.load(finished_run / "student" / "README.md").data.eval_results
    edited = (finished_run / "student" / "README.md").read_text() + "\nHand-written notes.\n"
    (finished_run / "student" / "README.md").write_text(edited)
    push_run(finished_run, "me/x")
    assert in_process_hub.recorder.commits[-1].files["README.md"].decode() == edited


# ----------------------------------------------------------------------------------------------
# push_to_hub in the config: the student alone, pushed once at the end; the token never on disk

#: kd + fam from a resnet14 teacher, two steps, saved and evaluated at each.
TINY_RUN = tiny_run_config(
    teacher_model="resnet14",
    methods={"kd": {}, "fam": {}},
    max_train_samples=32,
    max_eval_samples=32,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    max_steps=2,
    save_strategy="steps",
    save_steps=1,
    eval_strategy="steps",
    eval_steps=1,
    logging_steps=1,
)


def test_run_pushes_the_student_once_and_never_writes_the_token(tmp_path):
    output_dir = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **TINY_RUN,
                "output_dir": str(output_dir),
                "push_to_hub": True,
                "hub_model_id": "me/resnet8-fam",
                "hub_private_repo": True,
                "report_to": "tensorboard",
            }
        )
    )
    with LoopbackHub() as hub:
        env = {**hub_env(tmp_path, hub.endpoint, FAKE_ENV_TOKEN), "HF_FREQKD_LOG_LEVEL": "INFO"}
        command = [sys.executable, "-m", "hf_freqkd.cli", "distill", "--config", str(config), f"hub_token={FAKE_TOKEN}"]
        result = subprocess.run(command, env=env, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert f"student pushed to {hub.endpoint}/me/resnet8-fam/commit/".encode() in result.stdout

    # One commit, the student alone, authorised with the config's token (it wins over HF_TOKEN).
    [commit] = hub.recorder.commits
    assert sorted(commit.files) == EXPORT_FILES
    assert commit.files == snapshot(output_dir / "student")
    assert all(auth == f"Bearer {FAKE_TOKEN}" for method, _, auth in hub.recorder.requests if method == "POST")
    assert ModelCard.load(output_dir / "student" / "README.md").data.eval_results

    # No file of the run - checkpoints, training_args.bin (a pickle), trainer_state, the record,
    # the card, TensorBoard events - nor the console output holds either token.
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any("tfevents" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        for token in (FAKE_TOKEN, FAKE_ENV_TOKEN):
            assert token.encode() not in data, f"{token} written to {path}"
            assert token[3:].encode() not in data, f"part of {token} written to {path}"
    for stream in (result.stdout, result.stderr):
        assert FAKE_TOKEN.encode() not in stream and FAKE_ENV_TOKEN.encode() not in stream


def test_push_to_hub_without_token_stops_before_training(tmp_path, in_process_hub, capsys):
    output_dir = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({**TINY_RUN, "output_dir": str(output_dir), "push_to_hub": True, "report_to": "none"})
    )
    assert main(["distill", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "push_to_hub is true but no Hugging Face token" in err and len(err.strip().splitlines()) == 1
    assert not output_dir.exists()


@pytest.fixture
def quiet_datasets():
    """datasets' progress bars go to stderr; the test checks that stderr holds the error line alone."""
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def test_upload_failing_after_a_finished_run_says_what_was_kept_and_how_to_push_again(
    tmp_path, in_process_hub, monkeypatch, capsys, quiet_datasets
):
    output_dir = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {**TINY_RUN, "output_dir": str(output_dir), "push_to_hub": True, "hub_model_id": "me/kept", "report_to": "none"}
        )
    )
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    in_process_hub.recorder.reject_token = True
    assert main(["distill", "--config", str(config)]) == 3  # not 2: nothing about the input was wrong
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    [line] = lines
    assert line.startswith("hf-freqkd distill: error: training finished, but the Hub at")
    assert "rejected the token (HTTP 401)" in line and FAKE_ENV_TOKEN not in line
    assert f"kept: the exported student in {output_dir / 'student'}, the run record, checkpoint-1, checkpoint-2." in line
    assert line.endswith(f"To push again: hf-freqkd push --run {output_dir} --repo-id me/kept")
    # What the message says was kept is there, and the run is recorded as finished.
    assert sorted(p.name for p in (output_dir / "student").iterdir()) == EXPORT_FILES
    assert {"checkpoint-1", "checkpoint-2"} <= {p.name for p in output_dir.iterdir()}
    assert json.loads((output_dir / RUN_RECORD).read_text())["status"] == "finished"
    # The command it gives works once the Hub takes the token.
    in_process_hub.recorder.reject_token = False
    assert main(["push", "--run", str(output_dir), "--repo-id", "me/kept"]) == 0
    assert sorted(in_process_hub.recorder.commits[-1].files) == EXPORT_FILES


def test_trainer_push_to_hub_sends_the_student_not_the_distiller(tmp_path, in_process_hub):
    from hf_freqkd.data import load_digits_dataset, with_image_transform
    from hf_freqkd.models import resolve_input_config

    args = DistillationConfig(
        output_dir=str(tmp_path / "nb"),
        methods={"kd": {}, "fam": {}},
        push_to_hub=True,
        hub_model_id="nb",
        hub_token=FAKE_TOKEN,
        max_steps=1,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        disable_tqdm=True,
    )
    student = timm.create_model("resnet8", num_classes=10)
    config = {**resolve_input_config(student), "input_size": (3, 8, 8)}
    train = with_image_transform(
        load_digits_dataset()["train"].select(range(16)), "image", "label", config, training=True, augmentation="none"
    )
    trainer = DistillationTrainer(model=student, teacher="resnet14", args=args, train_dataset=train)
    # The Trainer's own push is off and the token is out of the arguments it pickles.
    assert (args.push_to_hub, args.hub_token) == (False, None)
    assert trainer.hub_settings.token == FAKE_TOKEN and FAKE_TOKEN not in repr(trainer.hub_settings)
    trainer.train()
    assert in_process_hub.recorder.requests == []  # nothing pushed during training
    url = trainer.push_to_hub()
    [commit] = in_process_hub.recorder.commits
    # A NAME-only repo id lands in the token owner's namespace, as with the Trainer.
    assert commit.repo_id == f"{FAKE_USER}/nb" and url.startswith(f"{in_process_hub.endpoint}/{FAKE_USER}/nb/commit/")
    assert sorted(commit.files) == EXPORT_FILES
    card = ModelCard.load(tmp_path / "nb" / "student" / "README.md")
    assert {"kd", "fam", "knowledge-distillation"} <= set(card.data.tags)
    assert FAKE_TOKEN.encode() not in (tmp_path / "nb" / "checkpoint-1" / "training_args.bin").read_bytes()


# ----------------------------------------------------------------------------------------------
# The loop closed: what was pushed loads back from the Hub by id, as a user loads it

LOAD_FROM_HUB = """
import json, sys
import torch
import hf_freqkd  # noqa: F401  registers the CIFAR zoo, as the model card says
from huggingface_hub import ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

repo_id, library, images_file, out_file = sys.argv[1:]
torch.set_num_threads(int({threads}))
images = torch.load(images_file)
if library == "timm":
    import timm
    model = timm.create_model(f"hf-hub:{{repo_id}}", pretrained=True).eval()
    with torch.no_grad():
        logits = model(images)
else:
    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(repo_id).eval()
    with torch.no_grad():
        logits = model(pixel_values=images).logits
card = ModelCard.load(repo_id)
snapshot = snapshot_download(repo_id)
misses = []
for call in (
    lambda: hf_hub_download(repo_id, "missing.bin"),
    lambda: hf_hub_download(repo_id, "config.json", revision="no-such-branch"),
    lambda: hf_hub_download("me/no-such-repo", "config.json"),
):
    try:
        call()
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as error:
        misses.append(type(error).__name__)
torch.save(
    {{
        "type": type(model).__name__,
        "logits": logits,
        "card": hf_hub_download(repo_id, "README.md"),
        "eval_results": sorted((r.metric_type, r.metric_value) for r in card.data.eval_results),
        "snapshot": snapshot,
        "misses": misses,
    }},
    out_file,
)
"""


def load_back_from_hub(tmp_path: Path, hub: LoopbackHub, repo_id: str, library: str, images) -> dict:
    """Load ``repo_id`` in a fresh process: HF_ENDPOINT at the loopback Hub, online, an empty cache, no token."""
    import torch

    torch.save(images, tmp_path / "images.pt")
    env = hub_env(tmp_path, hub.endpoint, None)
    env.update(
        HF_HOME=str(tmp_path / "fresh_hf_home"),
        HF_HUB_CACHE=str(tmp_path / "fresh_hf_home" / "hub"),
        TRANSFORMERS_OFFLINE="0",
    )
    script = LOAD_FROM_HUB.format(threads=torch.get_num_threads())
    command = [sys.executable, "-c", script, repo_id, library, str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    for downloaded in (loaded["snapshot"], loaded["card"]):  # into the fresh cache, nowhere else
        assert Path(downloaded).is_relative_to(tmp_path / "fresh_hf_home" / "hub")
    return loaded


def check_served_back(loaded: dict, hub: LoopbackHub, repo_id: str, folder: Path) -> None:
    """The download saw exactly the pushed export; misses raised huggingface_hub's own errors."""
    assert hub.recorder.unrouted == [], hub.recorder.unrouted  # every request the loaders made was a route the Hub has
    assert snapshot(Path(loaded["snapshot"])) == hub.recorder.files(repo_id) == snapshot(folder)
    assert Path(loaded["card"]).read_bytes() == (folder / "README.md").read_bytes()
    assert loaded["misses"] == ["RemoteEntryNotFoundError", "RevisionNotFoundError", "RepositoryNotFoundError"]
    # The weights came through the download route, by branch or by the commit it points to.
    head = hub.recorder.commits[-1].oid
    downloads = {path for method, path, _ in hub.recorder.requests if method == "GET"}
    assert downloads & {f"/{repo_id}/resolve/{rev}/model.safetensors" for rev in ("main", head)}


def test_pushed_timm_student_loads_back_from_the_hub_by_id(tmp_path, in_process_hub, monkeypatch):
    import torch

    from hf_freqkd.push import push_run
    from hf_freqkd.run import run

    # A real (tiny) distillation of the CIFAR-zoo resnet8, exported with its card, then pushed.
    output_dir = tmp_path / "resnet8_kd"
    run(
        "distill",
        defaults={
            **TINY_RUN,
            "max_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            "output_dir": str(output_dir),
            "report_to": "none",
        },
    )
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    folder, url = push_run(output_dir, "me/resnet8-kd")
    assert url.startswith(f"{in_process_hub.endpoint}/me/resnet8-kd/commit/")

    local = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = local(images)
    loaded = load_back_from_hub(tmp_path, in_process_hub, "me/resnet8-kd", "timm", images)

    assert loaded["type"] == type(local).__name__
    assert torch.equal(loaded["logits"], expected)
    metrics = json.loads((output_dir / RUN_RECORD).read_text())["metrics"]
    assert loaded["eval_results"] == sorted(
        # the card rounds to 4 digits (model_card.py)
        [("accuracy", round(metrics["eval_accuracy"], 4)), ("top_5_accuracy", round(metrics["eval_top5_accuracy"], 4))]
    )
    check_served_back(loaded, in_process_hub, "me/resnet8-kd", folder)


def test_pushed_transformers_student_loads_back_from_the_hub_by_id(tmp_path, in_process_hub, monkeypatch):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from hf_freqkd.push import push_run

    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
    )
    student = ViTForImageClassification(config).eval()
    run_dir = tmp_path / "vit_kd"
    record = {
        "mode": "distill",
        "config": {
            "student_model": "tiny-vit",
            "teacher_model": "resnet14",
            "methods": {"kd": {}},
            "dataset": "digits",
        },
        "training": {"max_steps": 2, "seed": 0},
        "num_classes": 10,
        "metrics": {"eval_accuracy": 0.25, "eval_top5_accuracy": 0.75},
    }
    export_student(student, run_dir / "student", record, model_name="vit_kd")
    (run_dir / RUN_RECORD).write_text(json.dumps(record))
    monkeypatch.setenv("HF_TOKEN", FAKE_ENV_TOKEN)
    folder, _ = push_run(run_dir, "me/vit-kd")

    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = student(pixel_values=images).logits
    loaded = load_back_from_hub(tmp_path, in_process_hub, "me/vit-kd", "transformers", images)

    assert loaded["type"] == "ViTForImageClassification"
    assert torch.equal(loaded["logits"], expected)
    assert loaded["eval_results"] == [("accuracy", 0.25), ("top_5_accuracy", 0.75)]
    check_served_back(loaded, in_process_hub, "me/vit-kd", folder)
