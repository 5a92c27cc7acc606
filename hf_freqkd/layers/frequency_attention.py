"""FAM-KD's two layers (Pham et al., "Frequency Attention for Knowledge Distillation", WACV 2024).

:class:`FrequencyAttention` is the frequency attention module: a global branch that mixes channels
frequency by frequency with a learnable complex filter and drops the lowest frequencies, a local
1x1 convolution, their sum weighted by two learnable scalars, then BatchNorm (and ReLU).

:class:`LocalSelfAttention` is the 3x3 local self-attention the knowledge-review variant fuses a
stage's student feature with the residual from the deeper stage (Stand-Alone Self-Attention,
Ramachandran et al. 2019, as the released code uses it).

Each has two paths computing the same function: the default is optimised, ``reference=True`` is a
direct transcription of the paper and the released code, kept to check the optimised one (the
tests compare outputs and gradients). The optimised local attention runs, on float32 CPU tensors, a
fused C kernel (``local_attention.c``, built at first use by :mod:`hf_freqkd.layers.native`), and
otherwise (GPU, float64, no compiler, ``HF_FREQKD_NATIVE=0``) the batch-chunked torch code below.

Why the optimised global branch may use ``rfft2``. With ``X = fft2(x)`` of a real ``x``,
``Y(k) = M(k) * sum_i X_i(k) K_io(k)`` (``M`` the high-pass mask) and ``out = Re(ifft2(Y))``:
``Re(ifft2(Y)) = ifft2(Z)`` with ``Z(k) = (Y(k) + conj(Y(-k))) / 2``, and ``X(-k) = conj(X(k))``
gives ``Z(k) = sum_i X_i(k) E_io(k)`` with ``E(k) = (M(k) K(k) + M(-k) conj(K(-k))) / 2``. ``Z`` is
Hermitian, so ``out = irfft2(Z)`` needs ``Z`` on half the frequencies only: half the transforms and
half the channel mixing, for the price of forming ``E`` once per step (independent of the batch).
The mixing is one complex batched matmul with the frequency axis first, ``(H W', B, C_in) @ (H W',
C_in, C_out)``; the filter is stored frequency-first so forming ``E`` is a gather and two
elementwise operations.

Why the optimised module has no separate local branch. The 1x1 convolution is channel mixing with
the same real matrix ``W`` at every pixel, hence at every frequency: ``rfft2(conv(x) - b) = X W``.
Both branches being linear, ``gamma_global * global + gamma_local * local = irfft2(Z') + gamma_local
* b`` with ``Z'(k) = sum_i X_i(k) (gamma_global E_io(k) + gamma_local W_oi)`` (a real ``W`` keeps
``Z'`` Hermitian). Adding ``W`` to the filter costs a filter-sized operation per step instead of a
convolution and its backward, and the step keeps one map per module (the BatchNorm input) where
the two branches, their scaled copies and their sum kept four.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import native


def high_pass_half_sizes(height: int, width: int, ratio: float) -> tuple[int, int]:
    """Half-sizes of the centred box of low frequencies the released code zeroes (after fftshift)."""
    return int(ratio * (height // 2)), int(ratio * (width // 2))


def high_pass_mask(height: int, width: int, ratio: float) -> torch.Tensor:
    """``(height, width)`` bool mask in ``torch.fft`` order (no shift): False where a frequency is zeroed.

    The released code zeroes ``[c - r, c + r)`` around the centre ``c = n // 2`` of the shifted
    spectrum on each axis, i.e. the signed frequencies ``-r .. r - 1`` (an asymmetric box: at 32x32,
    ``r = 1``, DC and its three neighbours towards negative frequencies). ``r`` is 0 for maps of
    16x16 and smaller at the default ratio 0.1, so nothing is zeroed there.
    """
    half_h, half_w = high_pass_half_sizes(height, width, ratio)
    rows = torch.fft.fftfreq(height, 1.0 / height).round().long()
    cols = torch.fft.fftfreq(width, 1.0 / width).round().long()
    # fftfreq puts n/2 of an even axis at -n/2, as fftshift does: the box matches the shifted slice.
    low_rows = (rows >= -half_h) & (rows < half_h)
    low_cols = (cols >= -half_w) & (cols < half_w)
    return ~(low_rows[:, None] & low_cols[None, :])


def global_filter_reference(x: torch.Tensor, filter_complex: torch.Tensor, high_pass_ratio: float) -> torch.Tensor:
    """The global branch as published: full fft2, per-frequency mixing, box zeroed after fftshift, real part.

    ``x``: ``(B, C_in, H, W)`` real; ``filter_complex``: ``(C_in, C_out, H, W)`` complex.
    """
    spectrum = torch.fft.fft2(x, norm="ortho")
    mixed = torch.einsum("bihw,iohw->bohw", spectrum, filter_complex)
    shifted = torch.fft.fftshift(mixed, dim=(-2, -1))
    height, width = shifted.shape[-2:]
    centre_h, centre_w = height // 2, width // 2
    half_h, half_w = high_pass_half_sizes(height, width, high_pass_ratio)
    shifted = shifted.clone()
    shifted[..., centre_h - half_h:centre_h + half_h, centre_w - half_w:centre_w + half_w] = 0
    mixed = torch.fft.ifftshift(shifted, dim=(-2, -1))
    return torch.fft.ifft2(mixed, s=(height, width), norm="ortho").real


class SingleValueSafeBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises a training batch holding a single value per channel - the
    1x1 pooled stage at batch size 1, e.g. the last partial batch of an epoch - with its running
    statistics, where ``nn.BatchNorm2d`` raises. The statistics are not updated from that batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1 and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class FrequencyAttention(nn.Module):
    """The frequency attention module: ``C_in`` -> ``C_out`` channels on ``size`` maps.

    ``out = act(BN(gamma_global * Re(ifft2(M * (fft2(x) K))) + gamma_local * conv1x1(x)))``

    Args:
        in_channels, out_channels: channel counts of input and output.
        size: ``(H, W)`` of the maps it takes (the filter has one entry per frequency).
        high_pass_ratio: relative half-size of the zeroed box of low frequencies (0 keeps all).
        activation: ReLU after the BatchNorm (the knowledge-review variant); False ends at the BatchNorm.
        reference: compute the two branches as published, the global one with :func:`global_filter_reference`
            (slower, same result; the default path folds the local branch into the frequency filter).

    Parameters: ``filter`` ``(H, W, C_in, C_out, 2)`` holds the real and imaginary parts of the
    paper's ``K[i, o, u, v]`` frequency-first (:meth:`complex_filter` returns it as ``(C_in, C_out,
    H, W)``), both initialised ``U[0, 1) / (C_in * C_out)`` as in the released code; ``local`` (1x1
    conv with bias, PyTorch's default initialisation); ``gamma_global`` and ``gamma_local`` at 0.5.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: tuple[int, int],
        high_pass_ratio: float = 0.1,
        activation: bool = True,
        reference: bool = False,
    ):
        super().__init__()
        height, width = size
        if min(in_channels, out_channels, height, width) < 1:
            raise ValueError(f"FrequencyAttention needs positive channels and size, got {in_channels} -> {out_channels} on {size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.size = (height, width)
        self.high_pass_ratio = high_pass_ratio
        self.reference = reference
        self.filter = nn.Parameter(torch.rand(height, width, in_channels, out_channels, 2) / (in_channels * out_channels))
        self.local = nn.Conv2d(in_channels, out_channels, 1)
        self.gamma_global = nn.Parameter(torch.tensor(0.5))
        self.gamma_local = nn.Parameter(torch.tensor(0.5))
        self.norm = SingleValueSafeBatchNorm2d(out_channels)
        # In place: the BatchNorm's backward needs its input, not its output, so no map is kept for the ReLU.
        self.act = nn.ReLU(inplace=True) if activation else nn.Identity()
        # E(k) = keep(k) K(k) + keep_negated(k) conj(K(-k)) on the half spectrum (the 1/2 and the
        # conjugation's sign folded into the factors); K(-k) is read with one gather.
        half_width = width // 2 + 1
        rows, cols = torch.arange(height)[:, None], torch.arange(half_width)[None, :]
        negated_index = ((-rows) % height * width + (-cols) % width).reshape(-1)
        mask = high_pass_mask(height, width, high_pass_ratio).float()
        keep = mask[:, :half_width] / 2
        keep_negated = (mask.reshape(-1)[negated_index] / 2).reshape(height, half_width)
        self.register_buffer("negated_index", negated_index, persistent=False)
        self.register_buffer("keep", keep[:, :, None, None, None], persistent=False)
        conjugate_sign = torch.tensor([1.0, -1.0])  # on the (real, imaginary) axis
        self.register_buffer("keep_negated", keep_negated[:, :, None, None, None] * conjugate_sign, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, size={self.size}, high_pass_ratio={self.high_pass_ratio}"

    def complex_filter(self) -> torch.Tensor:
        """The paper's ``K``: ``(C_in, C_out, H, W)`` complex."""
        return torch.view_as_complex(self.filter).permute(2, 3, 0, 1)

    def global_branch(self, x: torch.Tensor) -> torch.Tensor:
        # Half precision has no CPU FFT and would round the filter's small entries (1 / (C_in C_out)).
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.filter.dtype)
            if self.reference:
                return global_filter_reference(x, self.complex_filter(), self.high_pass_ratio)
            return self._global_branch_half_spectrum(x)

    def _global_branch_half_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix_half_spectrum(x, None, None, None)

    def _mix_half_spectrum(self, x, gamma_global, local_weight, gamma_local) -> torch.Tensor:
        """``irfft2(Z)``, ``Z(k) = rfft2(x)(k) @ (gamma_global E(k) + gamma_local W)`` (``None``: ``E`` alone)."""
        batch = x.shape[0]
        height, width = self.size
        half_width = width // 2 + 1
        spectrum = _FrequencyMajorSpectrum.apply(x)  # (H W', B, C_in)
        mixed = _FilteredMixing.apply(
            spectrum, self.filter, gamma_global, local_weight, gamma_local, self.negated_index, self.keep, self.keep_negated
        )  # (H W', B, C_out)
        mixed = mixed.view(height, half_width, batch, self.out_channels).permute(2, 3, 0, 1)
        return torch.fft.irfft2(mixed, s=(height, width), norm="ortho")

    def both_branches(self, x: torch.Tensor) -> torch.Tensor:
        """``gamma_global * global + gamma_local * local``, before the BatchNorm."""
        if self.reference:
            return self.gamma_global * self.global_branch(x) + self.gamma_local * self.local(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.filter.dtype)
            local_weight = self.local.weight.to(self.filter.dtype).view(self.out_channels, self.in_channels).t()
            mixed = self._mix_half_spectrum(x, self.gamma_global, local_weight, self.gamma_local)
            # In place: the inverse FFT keeps nothing for its backward.
            return mixed.add_((self.gamma_local * self.local.bias.to(mixed.dtype)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size or x.shape[1] != self.in_channels:
            raise ValueError(
                f"FrequencyAttention was built for ({self.in_channels}, {self.size[0]}, {self.size[1]}) inputs "
                f"but got {tuple(x.shape[1:])}: its filter has one entry per frequency of a {self.size[0]}x{self.size[1]} map"
            )
        return self.act(self.norm(self.both_branches(x)))


def _effective_filter(kernel, negated_index, keep, keep_negated) -> torch.Tensor:
    """``E = keep * K[:, :W'] + keep_negated * K(-k)`` as ``(H * W', C_in, C_out)`` complex, the last factor
    carrying conj's sign; ``kernel`` is the ``(H, W, C_in, C_out, 2)`` filter parameter."""
    height, width = kernel.shape[:2]
    half_width = keep.shape[1]
    negated = kernel.view(height * width, *kernel.shape[2:]).index_select(0, negated_index)
    negated = negated.view(height, half_width, *negated.shape[1:])
    effective = torch.addcmul(kernel[:, :half_width] * keep, negated, keep_negated)
    return torch.view_as_complex(effective.view(height * half_width, *effective.shape[2:]))


def _effective_filter_backward(grad, kernel_shape, negated_index, keep, keep_negated) -> torch.Tensor:
    """The filter's gradient from ``E``'s: one filter-sized tensor (autograd would allocate and fill
    several, for the slice, the gather and the products, each tens of MB for large maps)."""
    height, width = kernel_shape[:2]
    half_width = keep.shape[1]
    grad = torch.view_as_real(grad.contiguous()).view(height, half_width, *kernel_shape[2:])
    grad_kernel = grad.new_empty(kernel_shape)
    torch.mul(grad, keep, out=grad_kernel[:, :half_width])
    grad_kernel[:, half_width:].zero_()
    negated = (grad * keep_negated).view(height * half_width, *kernel_shape[2:])
    grad_kernel.view(height * width, *kernel_shape[2:]).index_add_(0, negated_index, negated)
    return grad_kernel


class _FilteredMixing(torch.autograd.Function):
    """``Z = spectrum @ (gamma_global * E + gamma_local * W)`` frequency by frequency: a complex ``bmm``
    of ``(F, B, C_in)`` and ``(F, C_in, C_out)``; ``gamma_global``, ``W`` and ``gamma_local`` may be
    None (then ``Z = spectrum @ E``).

    The kernel is formed here from the filter, and formed again in the backward pass, so the graph
    keeps nothing filter-sized but the filter itself: autograd would keep ``E`` (for
    ``gamma_global``'s gradient) and the kernel (for the spectrum's), two ``(F, C_in, C_out)`` complex
    tensors per module (40 MB per module of ResNet32x4 -> ResNet8x4) for the price of one
    gather and two elementwise products. The gradient arrives as a permuted view (of the inverse
    FFT's input); it is made batch-major first: with its batch stride, ``bmm`` would copy each of
    the F small matrices on its own.
    """

    @staticmethod
    def forward(ctx, spectrum, kernel, gamma_global, local_weight, gamma_local, negated_index, keep, keep_negated):
        ctx.save_for_backward(spectrum, kernel, gamma_global, local_weight, gamma_local, negated_index, keep, keep_negated)
        effective = _effective_filter(kernel, negated_index, keep, keep_negated)
        return torch.bmm(spectrum, _combined_kernel(effective, gamma_global, local_weight, gamma_local))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        spectrum, kernel, gamma_global, local_weight, gamma_local, negated_index, keep, keep_negated = ctx.saved_tensors
        needs = ctx.needs_input_grad
        effective = _effective_filter(kernel, negated_index, keep, keep_negated)
        grad = grad.contiguous()
        grad_spectrum = None
        if needs[0]:
            grad_spectrum = torch.bmm(grad, _combined_kernel(effective, gamma_global, local_weight, gamma_local).mH)
        grad_mixing = torch.bmm(spectrum.mH, grad)  # d kernel, (F, C_in, C_out) complex
        grads = [grad_spectrum, None, None, None, None, None, None, None]
        if needs[2]:  # d gamma_global = Re <d kernel, E>
            grads[2] = (torch.view_as_real(grad_mixing) * torch.view_as_real(effective)).sum().reshape(gamma_global.shape)
        del effective
        if needs[3] or needs[4]:  # W is real and the same at every frequency
            grad_local = torch.view_as_real(grad_mixing.sum(0))[..., 0]
            if needs[3]:
                grads[3] = gamma_local * grad_local
            if needs[4]:
                grads[4] = (grad_local * local_weight).sum().reshape(gamma_local.shape)
        if needs[1]:
            grad_effective = grad_mixing.mul_(gamma_global) if gamma_global is not None else grad_mixing
            grads[1] = _effective_filter_backward(grad_effective, kernel.shape, negated_index, keep, keep_negated)
        return tuple(grads)


def _combined_kernel(effective, gamma_global, local_weight, gamma_local) -> torch.Tensor:
    if gamma_global is None:
        return effective
    kernel = effective * gamma_global
    return kernel if local_weight is None else kernel.add_(local_weight * gamma_local)


class _FrequencyMajorSpectrum(torch.autograd.Function):
    """``rfft2(x, norm="ortho")`` of a ``(B, C, H, W)`` map, laid out frequency-major ``(H * W', B, C)``.

    Frequency-major because, as a strided view (batch stride 1), ``bmm`` would copy each of the
    mixing's matrices on its own. Written out because autograd's ``rfft2`` keeps its whole input for
    the backward pass (it reads only its size), a map per module per step. The backward is the
    adjoint of the one-sided transform: ``Re(ifft2(g zero-padded to the full spectrum))``, which
    equals ``irfft2(g * m)`` with ``m`` 1 on the self-conjugate columns (0, and W / 2 for even W)
    and 1/2 elsewhere - ``irfft2`` reads only the Hermitian part of those columns and mirrors the
    others - at the cost of one inverse real transform instead of a full complex one.
    """

    @staticmethod
    def forward(ctx, x):
        batch, channels, height, width = x.shape
        ctx.size = (height, width)
        spectrum = torch.fft.rfft2(x, norm="ortho")
        return spectrum.permute(2, 3, 0, 1).contiguous().view(-1, batch, channels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        height, width = ctx.size
        half_width = width // 2 + 1
        grad = grad.view(height, half_width, *grad.shape[1:]).permute(2, 3, 0, 1)
        weights = torch.full((half_width,), 0.5, dtype=grad.real.dtype, device=grad.device)
        weights[0] = 1.0
        if width % 2 == 0:
            weights[-1] = 1.0
        return torch.fft.irfft2(grad * weights, s=(height, width), norm="ortho")


class LocalSelfAttention(nn.Module):
    """Local self-attention over ``kernel_size`` windows: queries from ``guide``, keys and values from ``x``.

    ``out[c, p] = sum_j softmax_j(q[c, p] * (k[c, p + d_j] + r[c, j])) * v[c, p + d_j]`` over the
    ``kernel_size**2`` offsets ``d_j`` of the window, with ``q``, ``k``, ``v`` bias-free 1x1
    convolutions (of ``guide``, ``x``, ``x``), keys and values zero outside the map, and learned
    relative-position terms ``r``: the first ``C // 2`` channels get a term per window row, the
    others one per window column. The attention logits are per channel (the product is elementwise,
    not a dot product over a group), so the released code's 4 groups do not change the result and
    there is no groups argument.

    ``guide`` may have another spatial size than ``x``: it is resized (nearest) to ``x``'s, as the
    released code resizes the residual before the attention. The optimised path convolves first and
    resizes the queries (a 1x1 convolution commutes with nearest resizing), which is cheaper and keeps
    the small map rather than the resized one for the backward pass.

    Initialisation as in the released code: convolutions Kaiming-normal (fan_out, ReLU), relative
    terms N(0, 1).
    """

    def __init__(self, channels: int, kernel_size: int = 3, reference: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"LocalSelfAttention needs an odd kernel_size, got {kernel_size}")
        self.channels, self.kernel_size, self.reference = channels, kernel_size, reference
        self.query = nn.Conv2d(channels, channels, 1, bias=False)
        self.key = nn.Conv2d(channels, channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.rel_h = nn.Parameter(torch.randn(channels // 2, kernel_size))
        self.rel_w = nn.Parameter(torch.randn(channels - channels // 2, kernel_size))
        for conv in (self.query, self.key, self.value):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}"

    def relative_terms(self) -> torch.Tensor:
        """``r``: ``(C, kernel_size**2)``, window offsets in row-major order."""
        size = self.kernel_size
        rows = self.rel_h[:, :, None].expand(-1, size, size)
        cols = self.rel_w[:, None, :].expand(-1, size, size)
        return torch.cat([rows, cols], 0).reshape(self.channels, size * size)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if guide.dim() != 4 or guide.shape[:2] != x.shape[:2]:
            raise ValueError(
                f"LocalSelfAttention needs a guide with x's batch and channels, got {tuple(guide.shape)} and {tuple(x.shape)}"
            )
        size = tuple(x.shape[-2:])
        if self.reference:
            return self._forward_reference(x, _resize_nearest(guide, size))
        # Under autocast, keep the window softmax and its sums of nine products in the parameters' dtype.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, guide = x.to(self.query.weight.dtype), guide.to(self.query.weight.dtype)
            # One convolution computes keys and values; zero-padding them afterwards equals convolving
            # the zero-padded map (no bias) and keeps x (which the caller's graph holds anyway), not a padded copy.
            keys_values = F.pad(F.conv2d(x, torch.cat([self.key.weight, self.value.weight])), [self.kernel_size // 2] * 4)
            return _LocalAttention.apply(self.query(guide), keys_values, self.relative_terms(), self.kernel_size)

    def _forward_reference(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """As the released code: unfold the padded keys and values, softmax over the window."""
        batch, channels, height, width = x.shape
        size, pad = self.kernel_size, self.kernel_size // 2
        padded = F.pad(x, [pad] * 4)
        query = self.query(guide)
        keys = self.key(padded).unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H, W, size, size)
        values = self.value(padded).unfold(2, size, 1).unfold(3, size, 1)
        keys_h, keys_w = keys.split([channels // 2, channels - channels // 2], 1)
        keys = torch.cat((keys_h + self.rel_h[:, None, None, :, None], keys_w + self.rel_w[:, None, None, None, :]), 1)
        keys = keys.contiguous().view(batch, channels, height, width, size * size)
        values = values.contiguous().view(batch, channels, height, width, size * size)
        weights = F.softmax(query.unsqueeze(-1) * keys, dim=-1)
        return torch.einsum("bchwk,bchwk->bchw", weights, values)


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")


def _windows(padded: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """``(size, size, B, C, H, W)`` view of the sliding windows of a padded ``(B, C, H + 2p, W + 2p)`` map."""
    batch, channels = padded.shape[:2]
    stride_b, stride_c, stride_h, stride_w = padded.stride()
    return padded.as_strided(
        (size, size, batch, channels, height, width), (stride_h, stride_w, stride_b, stride_c, stride_h, stride_w)
    )


#: Size of the ``(k*k, b, C, H, W)`` float32 temporaries per batch chunk in the local attention: the
#: dozen passes over them then hit the cache instead of memory. 2 MiB (about the L2 cache of a core)
#: made the ``fam`` method's step about 20% faster than 8 MiB on a 2-core EPYC (ResNet20 -> ResNet8).
ATTENTION_CHUNK_BYTES = 2 << 20


def _shifted_keys(query: torch.Tensor, keys: torch.Tensor, relative: torch.Tensor, size: int) -> torch.Tensor:
    """``key + r`` over the window: ``(size * size, B, C, H, W)``."""
    batch, channels, height, width = query.shape
    shifted = query.new_empty((size * size, batch, channels, height, width))
    torch.add(
        _windows(keys, size, height, width),
        relative.t().reshape(size, size, 1, channels, 1, 1),
        out=shifted.view(size, size, batch, channels, height, width),
    )
    return shifted


def _attention_weights(query: torch.Tensor, keys: torch.Tensor, relative: torch.Tensor, size: int) -> torch.Tensor:
    """Softmax over the window of ``query * (key + r)``: ``(size * size, B, C, H, W)``."""
    return torch.softmax(_shifted_keys(query, keys, relative, size).mul_(query), 0)


class _LocalAttention(torch.autograd.Function):
    """Window softmax attention on zero-padded keys and values, over strided window views.

    Autograd through ``unfold`` materialises and keeps several ``(B, C, H, W, k*k)`` tensors
    (windows of keys and values, logits, weights) and scatters window gradients back. Here the batch
    is processed in chunks whose ``k*k``-sized temporaries fit in cache, nothing of that size is
    kept between the passes (the backward pass recomputes the weights of its chunk, and with them the
    chunk's output, so not even the output is kept), and window sums are accumulated offset by offset
    into ``(b, C, H, W)`` tensors. Queries computed on a smaller
    guide are resized (nearest) here and kept at their own size for the backward pass. On float32
    CPU tensors both passes run the fused kernel of :mod:`hf_freqkd.layers.native` instead of the
    chunks (same saved tensors; the chunked code stays the path for every other device and dtype).
    """

    @staticmethod
    def forward(ctx, guide_query, keys_values, relative, size):
        """``keys_values``: zero-padded keys and values stacked on the channel axis, ``(B, 2C, H + 2p, W + 2p)``;
        ``guide_query``: ``(B, C, h, w)`` queries, resized (nearest) to ``H x W``."""
        height, width = keys_values.shape[2] - size + 1, keys_values.shape[3] - size + 1
        query = _resize_nearest(guide_query, (height, width))
        batch, channels = query.shape[:2]
        kernel = native.local_attention_kernel(query, keys_values, relative)
        ctx.size, ctx.native = size, kernel is not None
        if kernel is not None:
            ctx.save_for_backward(guide_query, keys_values, relative)
            return native.forward(kernel, query, keys_values, relative, size)
        keys, values = keys_values.split(channels, 1)
        step = max(1, ATTENTION_CHUNK_BYTES // (4 * size * size * channels * height * width))
        out = torch.zeros_like(query)
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            weights = _attention_weights(query[chunk], keys[chunk], relative, size)
            value_windows = _windows(values[chunk], size, height, width)
            _weighted_sum(weights, value_windows, out[chunk])
        ctx.save_for_backward(guide_query, keys_values, relative)
        ctx.step = step
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        guide_query, keys_values, relative = ctx.saved_tensors
        size = ctx.size
        height, width = keys_values.shape[2] - size + 1, keys_values.shape[3] - size + 1
        query = _resize_nearest(guide_query, (height, width))
        batch, channels = query.shape[:2]
        if ctx.native:
            grad_query, grad_keys_values, grad_relative = native.backward(
                native.local_attention_kernel(query), query, keys_values, relative, grad_out, size
            )
            return _resize_backward(grad_query, guide_query), grad_keys_values, grad_relative, None
        step = ctx.step
        keys, values = keys_values.split(channels, 1)
        grad_out = grad_out.contiguous()
        grad_query = torch.empty_like(query)
        grad_keys_values = torch.zeros_like(keys_values)
        grad_keys, grad_values = grad_keys_values.split(channels, 1)
        grad_relative = query.new_zeros(size * size, channels)
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            query_chunk, grad_chunk = query[chunk], grad_out[chunk]
            shifted_keys = _shifted_keys(query_chunk, keys[chunk], relative, size)
            weights = torch.softmax(shifted_keys * query_chunk, 0)
            value_windows = _windows(values[chunk], size, height, width)
            out = _weighted_sum(weights, value_windows, torch.zeros_like(query_chunk))
            # Softmax backward with g_j = grad_out * v_j: d logits_j = a_j (g_j - sum_i a_i g_i)
            # = a_j * grad_out * (v_j - out), since sum_i a_i v_i is the output.
            grad_logits = torch.empty_like(weights)
            torch.sub(value_windows, out, out=grad_logits.view(size, size, *weights.shape[1:]))
            grad_logits.mul_(weights).mul_(grad_chunk)
            # d query = sum_j d logits_j * (k_j + r_j)
            torch.sum(shifted_keys.mul_(grad_logits), 0, out=grad_query[chunk])
            del shifted_keys
            # (window row, window column) views; they overlap, so gradients accumulate offset by offset.
            grad_key_windows = _windows(grad_keys[chunk], size, height, width)
            grad_value_windows = _windows(grad_values[chunk], size, height, width)
            for j in range(size * size):
                grad_value_windows[divmod(j, size)].addcmul_(weights[j], grad_chunk)
            grad_logits.mul_(query_chunk)
            for j in range(size * size):
                grad_key_windows[divmod(j, size)].add_(grad_logits[j])
            grad_relative += grad_logits.sum((1, 3, 4))
        return _resize_backward(grad_query, guide_query), grad_keys_values, grad_relative.t(), None


def _weighted_sum(weights: torch.Tensor, value_windows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out += sum_j weights[j] * value window j`` (``weights`` ``(k*k, b, C, H, W)``, windows ``(k, k, b, C, H, W)``)."""
    size = value_windows.shape[0]
    for j in range(size * size):
        out.addcmul_(weights[j], value_windows[divmod(j, size)])
    return out


def _resize_backward(grad_query: torch.Tensor, guide_query: torch.Tensor) -> torch.Tensor:
    """The backward of the nearest resize of ``guide_query``: sum over each source pixel's copies."""
    if grad_query.shape == guide_query.shape:
        return grad_query
    return torch.ops.aten.upsample_nearest2d_backward(grad_query, list(grad_query.shape[-2:]), list(guide_query.shape))
