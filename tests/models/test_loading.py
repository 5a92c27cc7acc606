"""load_model (timm names, folders, prefixes, missing folders, Hub ids offline), load_checkpoint (files, folders, safety) and input configs."""

from __future__ import annotations

import json
import socket
import time

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification

from hf_freqkd.errors import MissingPathError, ModelError
from hf_freqkd.models import load_checkpoint, load_model, model_num_classes, read_state_dict, resolve_input_config
from hf_freqkd.sources import _probe_hub


def tiny_vit_config(**overrides) -> ViTConfig:
    values = dict(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )
    values.update(overrides)
    return ViTConfig(**values)


def resnet(seed: int, num_classes: int = 5):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=num_classes).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32)


# ----------------------------------------------------------------------------------------------
# load_model


def test_timm_name_with_num_classes(images):
    model = load_model("test_resnet", num_classes=7)
    assert isinstance(model, timm.models.ResNet)
    assert model.num_classes == 7
    assert model_num_classes(model) == 7
    assert model.eval()(images).shape == (2, 7)


def test_timm_model_kwargs_are_passed_and_recorded():
    model = load_model("test_vit", num_classes=3, model_kwargs={"img_size": 32})
    assert model.patch_embed.img_size == (32, 32)
    assert model.hf_freqkd_model_args == {"img_size": 32}


def test_bad_name_suggests_close_timm_names():
    with pytest.raises(ValueError) as error:
        load_model("test_resnett")
    message = str(error.value)
    assert "'test_resnett' is not a timm model name" in message
    assert "close timm names:" in message and "test_resnet" in message.split("close timm names:")[1]


@pytest.mark.parametrize("source", ["", None])
def test_empty_source_is_rejected(source):
    with pytest.raises(ValueError, match="model source"):
        load_model(source)


def test_timm_prefix(images):
    model = load_model("timm:test_resnet", num_classes=4)
    assert isinstance(model, timm.models.ResNet)
    assert model.eval()(images).shape == (2, 4)


def test_timm_prefix_hands_the_name_to_timm():
    # Without the prefix hf_freqkd rejects the name itself; with it, the name goes straight to timm.
    with pytest.raises(ValueError, match="is not a timm model name"):
        load_model("not_a_model")
    with pytest.raises(RuntimeError, match=r"Unknown model \(not_a_model\)"):
        load_model("timm:not_a_model")


def test_transformers_local_folder_gives_identical_logits(tmp_path):
    torch.manual_seed(1)
    original = ViTForImageClassification(tiny_vit_config()).eval()
    original.save_pretrained(tmp_path / "vit")
    pixels = torch.randn(2, 3, 16, 16)
    for source in (str(tmp_path / "vit"), "transformers:" + str(tmp_path / "vit")):
        loaded = load_model(source).eval()
        assert isinstance(loaded, ViTForImageClassification)
        assert model_num_classes(loaded) == 10
        assert torch.equal(loaded(pixel_values=pixels).logits, original(pixel_values=pixels).logits)


def test_transformers_local_folder_with_another_num_classes(tmp_path):
    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path / "vit")
    loaded = load_model(str(tmp_path / "vit"), num_classes=4).eval()
    assert model_num_classes(loaded) == 4
    assert loaded(pixel_values=torch.randn(1, 3, 16, 16)).logits.shape == (1, 4)


def test_timm_local_folder_gives_identical_logits(tmp_path, images):
    original = resnet(seed=1)
    timm.models.save_for_hf(original, str(tmp_path / "res"), safe_serialization=True)
    assert (tmp_path / "res" / "model.safetensors").is_file()
    loaded = load_model(str(tmp_path / "res")).eval()
    assert isinstance(loaded, timm.models.ResNet)
    assert loaded.num_classes == 5
    assert torch.equal(loaded(images), original(images))


def test_folder_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json") as error:
        load_model(str(tmp_path / "empty"))
    assert "Trainer checkpoint" not in str(error.value)


def test_checkpoint_folder_given_as_model_gets_a_hint(tmp_path):
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    save_file(resnet(0).state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="has no config.json.*looks like a Trainer checkpoint"):
        load_model(str(folder))


def test_folder_with_foreign_config_json(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(ValueError, match="neither 'architecture' \\(timm\\) nor 'model_type'"):
        load_model(str(tmp_path / "odd"))


# ----------------------------------------------------------------------------------------------
# Missing local folders and Hub ids: told apart before any download


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working directory, holding a teacher exported to runs/digits/teacher/student."""
    timm.models.save_for_hf(resnet(seed=0), str(tmp_path / "runs" / "digits" / "teacher" / "student"), safe_serialization=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_hub_download(monkeypatch):
    """Fails the test if transformers is asked for a config, from the Hub or anywhere."""
    import transformers

    def refuse(name, *args, **kwargs):
        pytest.fail(f"'{name}' was sent to transformers")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def test_relative_teacher_folder_loads(project, images):
    loaded = load_model("runs/digits/teacher/student").eval()
    assert torch.equal(loaded(images), resnet(seed=0)(images))


@pytest.mark.parametrize(
    "source, near",
    [
        ("runs/digts/teacher/student", "runs/digits/teacher/student"),  # a typo: not a valid repo id either
        ("runs/digits/teacher/studnet", "runs/digits/teacher/student"),
        ("runs/teacher", None),  # a valid repo id, but runs/ is a local folder
        ("./teacher", None),
        ("teacher.safetensors", None),
    ],
)
def test_missing_model_folder_is_not_taken_for_a_hub_id(project, no_hub_download, source, near):
    start = time.perf_counter()
    with pytest.raises(MissingPathError) as error:
        load_model(source)
    assert time.perf_counter() - start < 2
    message = str(error.value)
    assert message.startswith(f"model '{source}' does not exist (no ")
    assert "local model folder" in message
    assert (f"Did you mean '{near}'?" in message) == (near is not None)


def test_weights_file_given_as_model_gets_a_hint(tmp_path):
    save_file(resnet(0).state_dict(), str(tmp_path / "weights.safetensors"))
    with pytest.raises(ModelError, match="is a file, not a model folder.*pass this file as its checkpoint"):
        load_model(str(tmp_path / "weights.safetensors"))


@pytest.mark.parametrize("source", ["some-org/not-cached-vit", "hf-hub:some-org/not-cached-resnet"])
def test_hub_model_id_while_offline_is_one_fast_line(project, monkeypatch, source):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelError) as error:
        load_model(source, num_classes=10)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert message.startswith(f"model '{source}' is not a local path (nothing of that name in {project})")
    assert "not in the Hugging Face cache while HF_HUB_OFFLINE=1" in message and "\n" not in message


def test_hub_model_id_without_network_is_not_retried(project, monkeypatch, no_hub_download):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    _probe_hub.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(ModelError, match="cannot be reached .*local model folder.*set HF_HUB_OFFLINE=1"):
            load_model("some-org/vit")
        assert time.perf_counter() - start < 5
    finally:
        _probe_hub.cache_clear()


def test_hub_model_id_still_loads_from_a_hub_that_answers(tmp_path, monkeypatch):
    # The Hub code path is kept: a loopback Hub serving a transformers config.json.
    from tests.hub_server import LoopbackHub

    with LoopbackHub() as hub:
        repo = hub.recorder.create_repo("some-org/tiny-vit")
        repo.trees[repo.branches["main"]] = {"config.json": tiny_vit_config().to_json_string().encode()}
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        _probe_hub.cache_clear()
        try:
            model = load_model("some-org/tiny-vit", num_classes=3)
        finally:
            _probe_hub.cache_clear()
    assert isinstance(model, ViTForImageClassification)
    assert model_num_classes(model) == 3
    assert any(path.startswith("/some-org/tiny-vit/resolve/") and path.endswith("/config.json") for _, path, _ in hub.recorder.requests)


# ----------------------------------------------------------------------------------------------
# load_checkpoint


def test_checkpoint_from_safetensors_file(tmp_path, images):
    source = resnet(seed=1)
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    target = resnet(seed=2)
    assert not same_weights(source, target)
    load_checkpoint(target, str(tmp_path / "weights.safetensors"))
    assert same_weights(source, target)
    assert torch.equal(target(images), source(images))


def test_checkpoint_through_load_model(tmp_path, images):
    source = resnet(seed=1)
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    loaded = load_model("test_resnet", num_classes=5, checkpoint=str(tmp_path / "weights.safetensors")).eval()
    assert torch.equal(loaded(images), source(images))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_checkpoint_from_torch_file(tmp_path, wrap):
    source = resnet(seed=1)
    state = source.state_dict() if wrap is None else {wrap: source.state_dict(), "epoch": 3}
    torch.save(state, tmp_path / "weights.pt")
    target = resnet(seed=2)
    load_checkpoint(target, str(tmp_path / "weights.pt"))
    assert same_weights(source, target)


class NotATensor:
    pass


def test_torch_file_is_read_with_weights_only(tmp_path):
    # A pickle holding an arbitrary object must not be unpickled (that could run code).
    state = dict(resnet(seed=1).state_dict())
    state["payload"] = NotATensor()
    torch.save(state, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="could not be read"):
        read_state_dict(str(tmp_path / "unsafe.pt"))


def test_checkpoint_folder_of_a_distiller(tmp_path, images):
    # The Trainer saves a Distiller: "student.model.*" keys plus the methods' own modules.
    source = resnet(seed=1)
    state = {f"student.model.{key}": value for key, value in source.state_dict().items()}
    state["methods.fitnet.proj.weight"] = torch.randn(4, 4)
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    target = resnet(seed=2)
    load_checkpoint(target, str(folder))
    assert same_weights(source, target)
    assert torch.equal(target(images), source(images))


def test_checkpoint_folder_with_student_keys_only(tmp_path):
    source = resnet(seed=1)
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    save_file({f"student.model.{k}": v for k, v in source.state_dict().items()}, str(folder / "model.safetensors"))
    target = resnet(seed=2)
    load_checkpoint(target, str(folder))
    assert same_weights(source, target)


def test_checkpoint_folder_without_weights_lists_its_content(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no model.safetensors.*trainer_state.json"):
        load_checkpoint(resnet(0), str(tmp_path / "run"))


def test_missing_checkpoint_names_the_path(tmp_path):
    path = str(tmp_path / "nowhere" / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere/weights.safetensors"):
        load_checkpoint(resnet(0), path)


def test_missing_checkpoint_suggests_the_near_name(tmp_path):
    (tmp_path / "run" / "checkpoint-20").mkdir(parents=True)
    with pytest.raises(MissingPathError, match=r"checkpoint '.*checkpoint-2' does not exist .*Did you mean '.*run/checkpoint-20'\?"):
        load_checkpoint(resnet(0), str(tmp_path / "run" / "checkpoint-2"))


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.pt", "garbage.bin"])
def test_file_that_is_not_a_checkpoint(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(torch.randint(0, 256, (512,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=f"checkpoint '.*{name}' could not be read"):
        load_checkpoint(resnet(0), str(path))


def test_torch_file_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        load_checkpoint(resnet(0), str(tmp_path / "list.pt"))


def test_checkpoint_of_another_architecture(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=5, img_size=32)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    target = resnet(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_checkpoint(target, str(tmp_path / "vit.safetensors"))
    message = str(error.value)
    assert "does not fit ResNet" in message
    assert "missing (e.g. " in message and "bn1." in message
    assert "unexpected (e.g. " in message and "blocks." in message
    # Nothing was loaded.
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_checkpoint_with_another_head_size(tmp_path):
    save_file(resnet(seed=1, num_classes=7).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"with another shape \(e.g. fc\.(weight|bias): checkpoint \(7"):
        load_checkpoint(resnet(seed=2, num_classes=5), str(tmp_path / "w.safetensors"))


# ----------------------------------------------------------------------------------------------
# resolve_input_config


def test_input_config_of_timm_vit_follows_img_size():
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    config = resolve_input_config(model)
    assert config["input_size"] == (3, 32, 32)
    assert len(config["mean"]) == 3 and len(config["std"]) == 3


def test_input_config_of_grayscale_timm_model():
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1)
    config = resolve_input_config(model)
    assert config["input_size"][0] == 1
    assert len(config["mean"]) == 1 and len(config["std"]) == 1


def test_input_config_of_transformers_vit():
    model = ViTForImageClassification(tiny_vit_config(num_channels=1))
    config = resolve_input_config(model)
    assert config["input_size"] == (1, 16, 16)
    assert config["crop_pct"] == 1.0
