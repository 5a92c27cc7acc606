"""FAM-KD's layers: the global branch is per-frequency complex channel mixing, the high-pass step
zeroes the released code's box, and the optimised paths compute the reference paths' function."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hf_freqkd.layers import frequency_attention
from hf_freqkd.layers.frequency_attention import FrequencyAttention, LocalSelfAttention, high_pass_mask


def released_box_mask(height: int, width: int, ratio: float) -> torch.Tensor:
    """The released code's step on a spectrum of ones: fftshift, zero [c - r, c + r), shift back."""
    shifted = torch.fft.fftshift(torch.ones(height, width))
    cy, cx = int(height / 2), int(width / 2)
    rh, rw = int(ratio * cy), int(ratio * cx)
    shifted[cy - rh:cy + rh, cx - rw:cx + rw] = 0
    return torch.fft.ifftshift(shifted).bool()


def module(in_channels: int, out_channels: int, size, ratio: float = 0.1) -> FrequencyAttention:
    return FrequencyAttention(in_channels, out_channels, size, ratio).double()


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (7, 10)])
def test_global_branch_is_a_loop_of_complex_matrix_products_over_frequencies(size, reference):
    layer = module(3, 4, size)
    layer.reference = reference
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    kernel = layer.complex_filter()  # (C_in, C_out, H, W)
    spectrum = torch.fft.fft2(x, norm="ortho")
    mixed = torch.zeros(2, 4, *size, dtype=torch.complex128)
    for u in range(size[0]):
        for v in range(size[1]):
            mixed[:, :, u, v] = spectrum[:, :, u, v] @ kernel[:, :, u, v]
    expected = torch.fft.ifft2(mixed * released_box_mask(*size, 0.1), norm="ortho").real
    torch.testing.assert_close(layer.global_branch(x), expected, rtol=1e-10, atol=1e-12)


def test_high_pass_zeroes_dc_and_its_three_neighbours_at_32x32():
    zeroed = torch.nonzero(~torch.fft.fftshift(high_pass_mask(32, 32, 0.1))).tolist()
    # After fftshift DC sits at (16, 16); the released box [15, 17) also takes (15, 15), (15, 16), (16, 15).
    assert sorted(map(tuple, zeroed)) == [(15, 15), (15, 16), (16, 15), (16, 16)]


@pytest.mark.parametrize("size", [(h, w) for h in (1, 2, 7, 8, 15, 16) for w in (1, 5, 16)])
def test_high_pass_zeroes_nothing_at_16x16_and_below(size):
    assert high_pass_mask(*size, 0.1).all()


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (56, 56), (25, 40), (33, 21), (16, 16), (7, 7)])
@pytest.mark.parametrize("ratio", [0.1, 0.3, 1.0])
def test_high_pass_mask_matches_the_released_box(size, ratio):
    assert torch.equal(high_pass_mask(*size, ratio), released_box_mask(*size, ratio))


@pytest.mark.parametrize("reference", [False, True])
def test_high_pass_step_acts_on_the_module_output(reference):
    # Identity mixing: the output spectrum is the input's after the step. Taking the real part then
    # averages each frequency with its mirror: DC (its own mirror) is zeroed outright; its three box
    # neighbours and their mirrors (outside the asymmetric box) keep half.
    layer = module(2, 2, (32, 32))
    layer.reference = reference
    with torch.no_grad():
        layer.filter.zero_()
        layer.filter[..., 0] += torch.eye(2, dtype=torch.float64)
    x = torch.randn(3, 2, 32, 32, dtype=torch.float64)
    ratio = torch.fft.fft2(layer.global_branch(x), norm="ortho") / torch.fft.fft2(x, norm="ortho")
    expected = torch.ones(32, 32, dtype=torch.float64)
    expected[0, 0] = 0
    for u, v in [(0, -1), (-1, 0), (-1, -1), (0, 1), (1, 0), (1, 1)]:
        expected[u, v] = 0.5
    torch.testing.assert_close(ratio.real, expected.expand_as(ratio.real), rtol=0, atol=1e-9)
    torch.testing.assert_close(ratio.imag, torch.zeros_like(ratio.imag), rtol=0, atol=1e-9)


def fast_and_reference(fast, channels, size, forward, extra):
    """[output, input gradient, *extra(layer)] of ``fast`` and of its copy on the reference path, for
    the same float64 input and the same random output weighting."""
    reference = copy.deepcopy(fast)
    reference.reference = True
    x = torch.randn(4, channels[0], *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, channels[1], *size, dtype=torch.float64)
    results = []
    for layer in (fast, reference):
        x.grad = None
        output = forward(layer, x)
        (output * weight).sum().backward()
        results.append([output.detach(), x.grad.clone(), *extra(layer)])
    return results


@pytest.mark.parametrize(
    "channels, size, ratio",
    [((3, 5), (32, 32), 0.1), ((4, 4), (7, 7), 0.1), ((2, 3), (1, 1), 0.1), ((3, 2), (6, 10), 0.5), ((2, 2), (25, 25), 0.1),
     ((2, 3), (5, 8), 1.0), ((3, 3), (2, 1), 0.1)],
)
def test_half_spectrum_path_equals_full_fft_reference_with_gradients(channels, size, ratio):
    fast = module(*channels, size, ratio)
    results = fast_and_reference(
        fast, channels, size, lambda layer, x: layer.global_branch(x), lambda layer: [layer.filter.grad.clone()]
    )
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [(4, 6), (5, 7), (8, 8), (3, 1), (1, 2), (6, 5)])
def test_frequency_major_spectrum_and_its_gradient_equal_torch_rfft2(size):
    # torch.fft.rfft2 (and its autograd) is the reference; the written-out backward is its adjoint.
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    spectrum = frequency_attention._FrequencyMajorSpectrum.apply(x)
    expected = torch.fft.rfft2(x, norm="ortho")
    torch.testing.assert_close(spectrum, expected.permute(2, 3, 0, 1).reshape(-1, 2, 3), rtol=0, atol=0)
    grad = torch.randn_like(spectrum)
    (got,) = torch.autograd.grad(spectrum, x, grad)
    (want,) = torch.autograd.grad(expected, x, grad.view(size[0], -1, 2, 3).permute(2, 3, 0, 1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(frequency_attention._FrequencyMajorSpectrum.apply, (x,))


def saved_storages(run) -> list[int]:
    """Storage addresses of every tensor autograd saves for the backward pass while ``run()`` runs."""
    saved = []

    def pack(tensor):
        saved.append(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return saved


def test_module_keeps_neither_its_input_nor_a_copy_of_the_spectrum_layout_for_backward():
    # autograd's rfft2 would keep the module's input (it reads only its size): a map per module per step.
    layer = FrequencyAttention(4, 4, (8, 8)).train()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    inner = x * 1.0
    assert inner.untyped_storage().data_ptr() not in saved_storages(lambda: layer(inner))


@pytest.mark.parametrize("native", ["1", "0"])
def test_local_attention_keeps_no_output_sized_map_for_backward(native, monkeypatch):
    # The backward recomputes the weights and the output; only the (small) queries, the keys and
    # values and the relative terms are kept.
    monkeypatch.setenv("HF_FREQKD_NATIVE", native)
    attention = LocalSelfAttention(4)
    x, guide = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 4, 3, 3, requires_grad=True)
    outputs = []
    saved = saved_storages(lambda: outputs.append(attention(x, guide)))
    assert outputs[0].untyped_storage().data_ptr() not in saved


@pytest.mark.parametrize("activation", [True, False])
@pytest.mark.parametrize(
    "channels, size, ratio", [((3, 5), (32, 32), 0.1), ((4, 2), (7, 10), 0.5), ((2, 3), (1, 1), 0.1), ((3, 3), (6, 5), 1.0)]
)
def test_module_with_the_local_branch_in_the_filter_equals_the_two_branch_reference(channels, size, ratio, activation):
    # The fast path adds the 1x1 convolution's matrix to the frequency filter (and its bias after the
    # inverse FFT); the reference computes both branches as published. Same output, same gradients.
    torch.manual_seed(0)
    fast = FrequencyAttention(*channels, size, ratio, activation=activation).double().train()
    with torch.no_grad():  # away from the defaults, so that each parameter's part in the output shows
        fast.gamma_global.fill_(0.7)
        fast.gamma_local.fill_(-1.3)
        fast.norm.weight.uniform_(0.5, 1.5)
        fast.norm.bias.uniform_(-0.5, 0.5)
    results = fast_and_reference(
        fast, channels, size, lambda layer, x: layer(x),
        lambda layer: [layer.norm.running_mean.clone()] + [p.grad.clone() for p in layer.parameters()],
    )
    assert results[0][1].abs().sum() > 0 and fast.local.weight.grad.abs().sum() > 0
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_module_initialisation_and_output():
    layer = FrequencyAttention(4, 6, (8, 8))
    assert layer.filter.shape == (8, 8, 4, 6, 2)
    assert layer.filter.min() >= 0 and layer.filter.max() < 1 / 24
    assert layer.filter.std() > 0.1 / 24  # uniform, not a constant
    assert layer.gamma_global.item() == 0.5 and layer.gamma_local.item() == 0.5
    x = torch.randn(5, 4, 8, 8)
    layer.train()
    out = layer(x)
    assert out.shape == (5, 6, 8, 8) and out.min() >= 0  # ends with BN + ReLU
    expected = torch.relu(layer.norm(0.5 * layer.global_branch(x) + 0.5 * layer.local(x)))
    torch.testing.assert_close(out, expected)


def test_module_rejects_a_map_of_another_size():
    layer = FrequencyAttention(4, 6, (8, 8))
    with pytest.raises(ValueError, match=r"built for \(4, 8, 8\) inputs but got \(4, 16, 16\)"):
        layer(torch.randn(2, 4, 16, 16))


def test_global_branch_runs_in_float32_under_bfloat16_autocast():
    layer = FrequencyAttention(4, 4, (8, 8))
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.global_branch(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer.global_branch(x.bfloat16().float()))


# ----------------------------------------------------------------------------------------------
# Local self-attention


def test_local_attention_is_a_window_softmax_per_channel():
    torch.manual_seed(0)
    layer = LocalSelfAttention(4).double()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    guide = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    out = layer(x, guide)
    query, keys, values = layer.query(guide), layer.key(x), layer.value(x)
    for c, i, j in [(0, 0, 0), (1, 2, 3), (2, 4, 5), (3, 0, 5)]:
        logits, vals = [], []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inside = 0 <= i + dy < 5 and 0 <= j + dx < 6
                key = keys[0, c, i + dy, j + dx] if inside else torch.zeros((), dtype=torch.float64)
                relative = layer.rel_h[c, dy + 1] if c < 2 else layer.rel_w[c - 2, dx + 1]
                logits.append(query[0, c, i, j] * (key + relative))
                vals.append(values[0, c, i + dy, j + dx] if inside else torch.zeros((), dtype=torch.float64))
        expected = (torch.softmax(torch.stack(logits), 0) * torch.stack(vals)).sum()
        torch.testing.assert_close(out[0, c, i, j], expected)


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["whole-batch", "one-sample-chunks"])
@pytest.mark.parametrize("channels, size", [(4, (8, 8)), (5, (6, 7)), (1, (3, 3)), (16, (1, 1))])
def test_local_attention_fast_path_equals_unfold_reference_with_gradients(channels, size, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(frequency_attention, "ATTENTION_CHUNK_BYTES", chunk_bytes)
    fast = LocalSelfAttention(channels).double()
    reference = copy.deepcopy(fast)
    reference.reference = True
    x = torch.randn(3, channels, *size, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(3, channels, *size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, channels, *size, dtype=torch.float64)
    results = []
    for layer in (fast, reference):
        x.grad = guide.grad = None
        output = layer(x, guide)
        (output * weight).sum().backward()
        results.append([output.detach(), x.grad.clone(), guide.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    assert all(g.abs().sum() > 0 for g in results[0][1:] if g.numel())
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("guide_size", [(4, 3), (1, 1), (16, 14)])
def test_local_attention_resizes_the_guide_to_x_nearest(guide_size, reference):
    # The fast path convolves the small guide and resizes the queries; the reference resizes the guide
    # first, as the released code. Both equal the attention on a guide resized beforehand.
    layer = LocalSelfAttention(4, reference=reference).double()
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 4, *guide_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    results = []
    for resize_first in (False, True):
        x.grad = guide.grad = None
        output = layer(x, F.interpolate(guide, size=(8, 7), mode="nearest") if resize_first else guide)
        (output * weight).sum().backward()
        results.append([output.detach(), x.grad.clone(), guide.grad.clone()])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_local_attention_rejects_a_guide_of_other_channels():
    layer = LocalSelfAttention(4)
    with pytest.raises(ValueError, match=r"guide with x's batch and channels, got \(2, 3, 6, 6\) and \(2, 4, 6, 6\)"):
        layer(torch.randn(2, 4, 6, 6), torch.randn(2, 3, 6, 6))


def test_local_attention_runs_in_float32_under_bfloat16_autocast():
    layer = LocalSelfAttention(4)
    x, guide = torch.randn(2, 4, 6, 6).bfloat16(), torch.randn(2, 4, 6, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, guide)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, layer(x.float(), guide.float()))
