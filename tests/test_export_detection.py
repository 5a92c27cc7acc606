"""Export, model card and push of a detector: the exported student gives the boxes it gave in the run.

One tiny detection run (RetinaNet on the CIFAR ResNet-8, 2 steps on 32 px generated shapes,
checkpoints at steps 1 and 2) is shared by the tests. Its detector keeps every candidate
(``score_threshold: 0``, 10 detections per image) so that an untrained network still gives boxes
to compare, and so that the export must carry the constructor arguments (``model_args``) exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard, constants
from safetensors.torch import load_file

import hf_freqkd  # registers the detectors in timm, as the model card says
import hf_freqkd.run
from hf_freqkd.export import export_run
from hf_freqkd.models import load_model
from hf_freqkd.push import push_run
from hf_freqkd.run import prepare_run, run
from hf_freqkd.tasks import get_task

from .helpers import exported_files, tiny_run_config
from .hub_server import LoopbackHub

DETECTOR_ARGS = {"score_threshold": 0.0, "detections_per_image": 10}
EVAL_IMAGES = 8


def detection_run_config(output_dir) -> dict:
    """A 2-step RetinaNet run on 32 px shapes that saves a checkpoint at each step."""
    return tiny_run_config(
        output_dir, student_model="retinanet_resnet8", student_model_kwargs=DETECTOR_ARGS, task="detection",
        dataset="shapes_detection", image_size=32, max_eval_samples=None, per_device_eval_batch_size=EVAL_IMAGES,
        dataset_config_name=f"num_train=16,num_test={EVAL_IMAGES},image_size=32,num_classes=3,seed=0",
        max_steps=2, save_strategy="steps", save_steps=1,
    )


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    """(run folder, the run's detections on its evaluation set, the first evaluation batch) of a
    ``run("teacher", ...)``: the trainer it builds is kept to ask it for its predictions afterwards."""
    output_dir = tmp_path_factory.mktemp("runs") / "shapes_retinanet"
    trainers = []

    def keeping_the_trainer(*args, **kwargs):
        prepared = prepare_run(*args, **kwargs)
        trainers.append(prepared[0])
        return prepared

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_freqkd.run, "prepare_run", keeping_the_trainer)
        run("teacher", defaults=detection_run_config(output_dir))
    [trainer] = trainers
    detections = torch.as_tensor(trainer.predict(trainer.eval_dataset).predictions)
    batch = next(iter(trainer.get_eval_dataloader()))
    return output_dir, detections, batch


def test_the_exported_detector_gives_the_runs_detections_with_timm_and_load_model(detection_run):
    output_dir, run_detections, batch = detection_run
    folder = output_dir / "student"
    assert {p.name for p in folder.iterdir()} == exported_files()
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "retinanet_resnet8" and config["num_classes"] == 3
    assert config["model_args"] == {**DETECTOR_ARGS, "in_chans": 3}  # the detector as it was built, thresholds included
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]

    assert run_detections.shape == (EVAL_IMAGES, DETECTOR_ARGS["detections_per_image"], 6)
    assert (run_detections[..., 5] >= 0).all()  # every slot holds a box: the comparison covers real detections
    for model in (timm.create_model(f"local-dir:{folder}", pretrained=True), load_model(str(folder))):
        assert type(model).__name__ == "TimmDetector"
        with torch.no_grad():
            output = model.eval()(batch["pixel_values"])
        assert output.losses is None  # no labels: detections only
        assert torch.equal(output.detections, run_detections)


def student_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The detector's weights in a Trainer checkpoint (a Distiller state dict), by timm name."""
    state = load_file(str(checkpoint_dir / "model.safetensors"))
    return {k[len("student.model."):]: v for k, v in state.items() if k.startswith("student.model.")}


def test_export_of_a_checkpoint_is_the_detector_at_that_step(detection_run, tmp_path):
    output_dir, run_detections, batch = detection_run
    folder = export_run(output_dir, checkpoint="checkpoint-1", to=tmp_path / "step1")
    reference = timm.create_model("retinanet_resnet8", num_classes=3, **DETECTOR_ARGS)
    reference.load_state_dict(student_state(output_dir / "checkpoint-1"))
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    with torch.no_grad():
        expected = reference.eval()(batch["pixel_values"]).detections
        assert torch.equal(loaded.eval()(batch["pixel_values"]).detections, expected)
    assert not torch.equal(expected, run_detections)  # step 1 is not the final detector
    exported = load_file(str(folder / "model.safetensors"))
    assert exported.keys() == student_state(output_dir / "checkpoint-2").keys()  # the detector alone, no Distiller keys
    # No evaluation ran up to step 1: the card has no metrics, but the detection task all the same.
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "object-detection" and not card.data.eval_results


def test_a_trainer_api_run_records_the_arguments_its_checkpoints_are_rebuilt_with(tmp_path):
    # export_run rebuilds the student of a checkpoint from the run record; a trainer used directly
    # (not through run()) writes its own record, which must hold them too.
    trainer = prepare_run("teacher", defaults=detection_run_config(tmp_path / "run"))[0]
    assert trainer.run_record["config"]["student_model_kwargs"] == DETECTOR_ARGS


def test_the_card_is_an_object_detection_card_with_the_defined_map_figures(detection_run):
    output_dir, _, _ = detection_run
    record = json.loads((output_dir / "hf_freqkd_run.json").read_text())
    metrics = record["metrics"]
    # 32 px images hold no COCO "large" object (area > 96^2): its AP is COCO's undefined -1, not a score.
    assert metrics["eval_map_large"] == -1.0
    card_keys = {f"eval_{key}" for key in get_task("detection").card_metrics}
    defined = {key: value for key, value in metrics.items() if key in card_keys and value != -1.0}
    assert "eval_map" in defined and "eval_map_50" in defined

    card = ModelCard.load(output_dir / "student" / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("timm", "object-detection")
    assert set(card.data.tags) == {"hf_freqkd", "object-detection", "timm"}  # a teacher run: no distillation methods
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {key[len("eval_"):]: round(value, 4) for key, value in defined.items()}
    assert {r.task_type for r in card.data.eval_results} == {"object-detection"}
    assert {r.dataset_name for r in card.data.eval_results} == {"shapes_detection"}

    text = card.content
    assert "Object detector `retinanet_resnet8` trained alone, with its own detection losses on the labels and no teacher, on `shapes_detection`" in text
    assert "| eval_map_large | undefined |" in text and "-1" not in text.split("## Evaluation")[1].split("undefined:")[0]
    # How to load it: timm (hf_freqkd registers the architecture), and what the forward returns.
    assert "import hf_freqkd  # registers retinanet_resnet8 in timm" in text
    assert 'timm.create_model("local-dir:<path>", pretrained=True)' in text
    assert "output.detections  # (B, N, 6) rows x1, y1, x2, y2, score, class" in text
    # and transformers, through the modeling code the export carries (hf_freqkd.remote_code)
    assert 'pipeline("object-detection", model="<repo id or path>", trust_remote_code=True)' in text
    assert 'AutoModelForObjectDetection.from_pretrained("<repo id or path>", trust_remote_code=True)' in text


@pytest.fixture
def in_process_hub(monkeypatch, tmp_path):
    """The loopback Hub (tests/hub_server.py) for in-process calls, with a token in the environment."""
    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        # hf_hub_download builds its URLs from this template, made from HF_ENDPOINT at import
        url_template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_cached_login"))
        monkeypatch.setenv("HF_TOKEN", "hf_FAKEdetectionTOKEN0123456789")
        yield hub


def test_a_pushed_detector_has_an_object_detection_card_and_loads_back_by_repo_id(detection_run, in_process_hub, tmp_path):
    output_dir, run_detections, batch = detection_run
    folder, url = push_run(output_dir, "me/shapes-retinanet")
    assert folder == output_dir / "student" and url.startswith(f"{in_process_hub.endpoint}/me/shapes-retinanet/commit/")
    [commit] = in_process_hub.recorder.commits
    assert set(commit.files) == exported_files()
    uploaded = ModelCard(commit.files["README.md"].decode())
    assert uploaded.data.pipeline_tag == "object-detection"
    assert uploaded.data.model_name == "shapes_retinanet"
    uploaded_types = {r.metric_type for r in uploaded.data.eval_results}
    assert {"map", "map_50"} <= uploaded_types and "map_large" not in uploaded_types
    assert commit.files["README.md"] == (folder / "README.md").read_bytes()

    # As the card says: timm.create_model("hf-hub:<repo id>", pretrained=True), served by the loopback Hub.
    model = timm.create_model("hf-hub:me/shapes-retinanet", pretrained=True, cache_dir=tmp_path / "cache")
    downloads = {path for method, path, _ in in_process_hub.recorder.requests if method == "GET"}
    assert "/me/shapes-retinanet/resolve/main/model.safetensors" in downloads and not in_process_hub.recorder.unrouted
    with torch.no_grad():
        assert torch.equal(model.eval()(batch["pixel_values"]).detections, run_detections)
