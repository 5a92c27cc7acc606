"""Local path or Hub id: told apart without the network; missing paths get near names; a Hub that cannot answer is one line."""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

from hf_freqkd.errors import MissingPathError
from hf_freqkd.sources import (
    _probe_hub,
    hub_offline_message,
    hub_unreachable_message,
    is_hub_repo_id,
    looks_like_path,
    missing_path_error,
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working directory: data/my_images and runs/digits/teacher/student exist."""
    (tmp_path / "data" / "my_images").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "teacher" / "student").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def closed_hub(monkeypatch):
    """Online mode, with the Hub endpoint at a local port nobody listens on (as without network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    _probe_hub.cache_clear()
    yield constants.ENDPOINT
    _probe_hub.cache_clear()


@pytest.mark.parametrize(
    "name",
    ["./teacher", "/abs/folder", "~/data", "a/b/c", "train.parquet", "data/train.parquet", "weights.safetensors", "data/other_images"],
)
def test_path_shaped_names(project, name):
    assert looks_like_path(name)


@pytest.mark.parametrize("name", ["uoft-cs/cifar10", "google/vit-base-patch16-224", "digits", "org/model.v2"])
def test_hub_shaped_names(project, name):
    # 'org/...' with no local 'org/' folder stays a Hub id; so does a plain name.
    assert not looks_like_path(name)
    assert is_hub_repo_id(name)


def test_existing_path_is_a_path_whatever_its_shape(project):
    assert looks_like_path("data/my_images")
    assert looks_like_path("runs")


@pytest.mark.parametrize("name", ["a/b/c", "my images", "org--x/y", "/org/name", "org/", ""])
def test_invalid_repo_ids(name):
    assert not is_hub_repo_id(name)


def test_missing_path_suggests_the_sibling_and_keeps_the_rest(project):
    error = missing_path_error("model", "runs/digts/teacher/student", "a model folder")
    assert isinstance(error, MissingPathError) and isinstance(error, FileNotFoundError)
    message = str(error)
    assert message.startswith("model 'runs/digts/teacher/student' does not exist (no 'digts' in 'runs'")
    assert f"relative to {project}" in message
    assert "expected a model folder" in message
    assert message.endswith("Did you mean 'runs/digits/teacher/student'?")


def test_missing_path_suggests_known_names(project):
    message = str(missing_path_error("dataset", "digit", "a folder", known_names=["digits", "shapes_segmentation"]))
    assert "no 'digit' in the current folder" in message
    assert message.endswith("Did you mean 'digits'?")


def test_missing_absolute_path_without_near_names(tmp_path):
    message = str(missing_path_error("checkpoint", str(tmp_path / "nowhere" / "w.safetensors"), "a weights file"))
    assert f"no 'nowhere' in '{tmp_path}'" in message
    assert "relative to" not in message and "Did you mean" not in message


def test_unreachable_hub_is_one_fast_line(closed_hub):
    start = time.perf_counter()
    message = hub_unreachable_message("dataset", "org/name", "give a local folder")
    assert time.perf_counter() - start < 5
    assert message.startswith("dataset 'org/name' is not a local path")
    assert f"the Hugging Face Hub ({closed_hub}) cannot be reached" in message
    assert "give a local folder; to use a copy already in the Hugging Face cache, set HF_HUB_OFFLINE=1" in message


def test_offline_mode_sends_nothing(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("hf_freqkd.sources._probe_hub", lambda endpoint: pytest.fail("offline mode must not probe the Hub"))
    assert hub_unreachable_message("model", "org/name", "give a folder") is None
    message = hub_offline_message("model", "org/name", "give a folder")
    assert "not in the Hugging Face cache while HF_HUB_OFFLINE=1" in message and "give a folder" in message


def test_hub_that_answers_is_reachable_even_with_an_error_status(monkeypatch):
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        _probe_hub.cache_clear()
        assert hub_unreachable_message("model", "org/name", "give a folder") is None
    finally:
        server.shutdown()
        server.server_close()
        _probe_hub.cache_clear()
