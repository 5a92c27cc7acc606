"""The fused C kernel of the local self-attention computes the reference's function and gradients,
is used only where it applies (float32 on the CPU), and falls back to the torch path when it cannot
be built or is turned off."""

from __future__ import annotations

import copy
import logging
import subprocess
from pathlib import Path

import pytest
import torch

from hf_freqkd.layers import native
from hf_freqkd.layers.frequency_attention import LocalSelfAttention

requires_kernel = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture(autouse=True)
def fresh_kernel(monkeypatch):
    monkeypatch.delenv(native.DISABLE_VARIABLE, raising=False)
    native._load.cache_clear()
    yield
    native._load.cache_clear()


def float32_against_float64_reference(layer: LocalSelfAttention, x: torch.Tensor, guide: torch.Tensor):
    """Output and every gradient of ``layer`` (float32, default path) and of the unfold reference in float64."""
    reference = copy.deepcopy(layer).double()
    reference.reference = True
    weight = torch.randn(x.shape[0], x.shape[1], *x.shape[-2:], dtype=torch.float64)
    results = []
    for module, dtype in ((layer, torch.float32), (reference, torch.float64)):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (x, guide)]
        output = module(*inputs)
        (output * weight.to(dtype)).sum().backward()
        results.append([output.detach(), *(t.grad for t in inputs), *(p.grad for p in module.parameters())])
    return results


@requires_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("shape, guide_size", [((3, 6, 7, 9), (7, 9)), ((2, 5, 8, 8), (4, 4)), ((1, 4, 1, 1), (1, 1)), ((4, 16, 16, 16), (8, 8))])
def test_native_kernel_equals_the_unfold_reference_with_gradients(shape, guide_size, kernel_size, threads):
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layer = LocalSelfAttention(shape[1], kernel_size=kernel_size)
        x = torch.randn(*shape, dtype=torch.float64)
        guide = torch.randn(shape[0], shape[1], *guide_size, dtype=torch.float64)
        assert native.local_attention_kernel(x.float()) is not None
        got, expected = float32_against_float64_reference(layer, x, guide)
    finally:
        torch.set_num_threads(previous)
    assert all(g.abs().sum() > 0 for g in got[1:])
    for value, reference in zip(got, expected):
        # float32 against float64: relative to the largest entry, a few float32 roundings
        scale = reference.abs().max().item()
        torch.testing.assert_close(value.double(), reference, rtol=0, atol=1e-5 * max(scale, 1e-3))


@requires_kernel
def test_native_kernel_and_torch_path_agree_in_float32(monkeypatch):
    torch.manual_seed(1)
    layer = LocalSelfAttention(8)
    x, guide = torch.randn(4, 8, 12, 10, requires_grad=True), torch.randn(4, 8, 6, 5, requires_grad=True)
    results = []
    for enabled in ("1", "0"):
        monkeypatch.setenv(native.DISABLE_VARIABLE, enabled)
        native._load.cache_clear()
        assert (native.local_attention_kernel(x) is not None) == (enabled == "1")
        x.grad = guide.grad = None
        layer.zero_grad()
        output = layer(x, guide)
        output.square().sum().backward()
        results.append([output.detach(), x.grad.clone(), guide.grad.clone(), *(p.grad.clone() for p in layer.parameters())])
    for native_value, torch_value in zip(*results):
        torch.testing.assert_close(native_value, torch_value, rtol=1e-4, atol=1e-5)


def test_kernel_applies_only_to_float32_cpu_tensors():
    assert native.local_attention_kernel(torch.zeros(1, dtype=torch.float64)) is None
    assert native.local_attention_kernel(torch.zeros(1, dtype=torch.bfloat16)) is None


def test_kernel_is_off_with_the_environment_variable(monkeypatch):
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    assert native.local_attention_kernel(torch.zeros(1)) is None


def test_without_a_compiler_the_layer_warns_and_uses_the_torch_path(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_FREQKD_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.local_attention_kernel(torch.zeros(1)) is None
    assert "no C compiler found" in caplog.text and "using the torch path" in caplog.text
    layer = LocalSelfAttention(4)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    layer(x, x).sum().backward()  # trains on the torch path
    assert x.grad is not None and not list(tmp_path.rglob("*.so"))


@requires_kernel
def test_the_library_is_built_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_FREQKD_CACHE", str(tmp_path))
    assert native.local_attention_kernel(torch.zeros(1)) is not None
    built = list((tmp_path / "native").glob("local_attention-*.so"))
    assert len(built) == 1 and not [p for p in (tmp_path / "native").iterdir() if p.is_dir()]  # no scratch left
    modified = built[0].stat().st_mtime_ns
    native._load.cache_clear()
    assert native.local_attention_kernel(torch.zeros(1)) is not None
    assert built[0].stat().st_mtime_ns == modified


@requires_kernel
def test_a_library_built_for_another_target_is_rebuilt_not_loaded(monkeypatch, tmp_path):
    # A home folder shared by cluster nodes of two CPU kinds: each kind gets, and loads, its own build.
    monkeypatch.setenv("HF_FREQKD_CACHE", str(tmp_path))
    this_target = native.compiler_target()
    builds = []
    build = native._build
    monkeypatch.setattr(native, "_build", lambda source, target: builds.append(target) or build(source, target))
    monkeypatch.setattr(native, "compiler_target", lambda: "x86_64\n-march= znver4\n-mavx512f [enabled]")
    other = native.local_attention_kernel(torch.zeros(1))
    monkeypatch.setattr(native, "compiler_target", lambda: this_target)
    native._load.cache_clear()
    here = native.local_attention_kernel(torch.zeros(1))
    assert len(builds) == 2 and builds[0] != builds[1]
    assert Path(here._name) == builds[1] and Path(other._name) == builds[0]
    native._load.cache_clear()
    native.local_attention_kernel(torch.zeros(1))
    assert len(builds) == 2  # this target's build is found, not redone
    assert sorted((tmp_path / "native").glob("local_attention-*.so")) == sorted(builds)


@requires_kernel
def test_the_compiler_target_names_the_instruction_sets_and_is_asked_once(monkeypatch):
    native.compiler_target.cache_clear()
    commands = []
    run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command) or run(command, **kwargs))
    target = native.compiler_target()
    assert native.compiler_target() == target and len(commands) <= 2
    assert "-march=" in target or "flags" in target
    assert native.library_path().name.startswith("local_attention-")


@requires_kernel
def test_loading_the_kernel_keeps_subnormal_floats(monkeypatch, tmp_path):
    # A library linked with -ffast-math would turn on flush-to-zero for the whole process on load.
    monkeypatch.setenv("HF_FREQKD_CACHE", str(tmp_path))
    assert native.local_attention_kernel(torch.zeros(1)) is not None
    tiny = torch.tensor(1e-38, dtype=torch.float32) / 1000
    assert tiny.item() > 0


@requires_kernel
def test_native_kernel_takes_an_empty_batch():
    layer = LocalSelfAttention(4)
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    output = layer(x, x)
    output.sum().backward()
    assert output.shape == (0, 4, 6, 6) and x.grad.shape == x.shape
