"""Building blocks of Sambert (KAN-TTS ``kantts/models/sambert``).

Two implementations share every module and parameter name (``variants.modelscope`` maps the original
checkpoint's names onto them):

* ``as_linear=False`` (the ``original`` model): kernel-1 convolutions are ``nn.Conv1d`` as in KAN-TTS, so
  they cost what the original costs and PyTorch dynamic int8 (Linear and LSTM only) does not reach them;
* ``as_linear=True`` (written by the ``optimize`` recipe step): the same weights as ``nn.Linear``
  (numerically the same, cheaper on the device, and quantizable).

Attention modules read their head layout from ``n_heads`` / ``d_head`` and never touch ``.weight`` in
``forward``, so they keep working after head pruning (any head count >= 1) and dynamic quantization.

Runs on the device too: Python 3.8+, torch 1.13+.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def encoder_position_table(max_len: int, depth: int) -> torch.Tensor:
    """KAN-TTS text-encoder sinusoid table [1, max_len, depth]: positions 1..max_len, channel j < depth/2
    uses the angle pos / 10000^(j / (depth/2 - 1)); sines in the first half, cosines in the second."""
    half = depth // 2
    positions = torch.arange(1, max_len + 1, dtype=torch.float32).unsqueeze(1)
    exponent = torch.arange(half, dtype=torch.float32) / float(max(half - 1, 1))
    angles = positions / torch.pow(10000.0, exponent).unsqueeze(0)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).unsqueeze(0)


def duration_timescales(depth: int) -> torch.Tensor:
    """Timescales of the duration position code: channel i uses 10000^(2*floor(i/2) / depth). (KAN-TTS
    stores this tensor as ``inv_timescales``; the angle is position / timescale.)"""
    idx = torch.arange(depth)
    return torch.pow(10000.0, 2.0 * torch.div(idx, 2, rounding_mode="floor").float() / depth)


def duration_position_code(positions: torch.Tensor, timescales: torch.Tensor) -> torch.Tensor:
    """[...] positions -> [..., depth]: position / timescale, even channels sine, odd channels cosine
    (interleaved); position 0 (padding) gives [0, 1, 0, 1, ...]."""
    angles = positions.float().unsqueeze(-1) / timescales
    even = (torch.arange(timescales.numel(), device=angles.device) % 2 == 0).to(angles.dtype)
    return torch.sin(angles) * even + torch.cos(angles) * (1.0 - even)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Scaled dot-product attention (temperature sqrt(d_head)). q [B,H,Lq,dh], k/v [B,H,Lk,dh],
    mask [Lq,Lk] bool, True = allowed."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def split_heads(x: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.reshape(b, t, n_heads, d_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def pointwise(d_in: int, d_out: int, bias: bool, as_linear: bool) -> nn.Module:
    """A kernel-1 convolution: ``nn.Conv1d(d_in, d_out, 1)`` or the same weights as ``nn.Linear``."""
    return nn.Linear(d_in, d_out, bias=bias) if as_linear else nn.Conv1d(d_in, d_out, 1, bias=bias)


def _channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a pointwise layer to x [B,T,C]."""
    if isinstance(module, nn.Conv1d):
        return module(x.transpose(1, 2)).transpose(1, 2)
    return module(x)


class MultiHeadSelfAttention(nn.Module):
    """Fused-qkv attention projections (no norm, no residual: the block owns those).

    ``qkv: Linear(d_in, 3*h*dh)`` laid out as [q heads | k heads | v heads] (KAN-TTS ``w_qkv`` /
    ``w_x_qkv``), ``out: Linear(h*dh, d_out)`` (``fc`` / ``fc_x``).
    """

    def __init__(self, d_in: int, d_out: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_head
        self.qkv = nn.Linear(d_in, 3 * n_heads * d_head)
        self.out = nn.Linear(n_heads * d_head, d_out)

    def project(self, x: torch.Tensor):
        """x [B,T,d_in] -> q, k, v each [B,H,T,dh]."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h, dh = self.n_heads, self.d_head
        return split_heads(q, h, dh), split_heads(k, h, dh), split_heads(v, h, dh)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.out(merge_heads(attend(q, k, v, mask)))


class MemoryAttention(nn.Module):
    """The PNCA block's attention over the decoder memory. It has no query projection of its own: the
    block's self-attention query is shared (KAN-TTS ``MultiHeadPNCAAttention``). ``kv: Linear(d_mem,
    2*h*dh)`` laid out as [k heads | v heads] (``w_h_kv``), ``out: Linear(h*dh, d_model)`` (``fc_h``)."""

    def __init__(self, d_model: int, d_mem: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_head
        self.kv = nn.Linear(d_mem, 2 * n_heads * d_head)
        self.out = nn.Linear(n_heads * d_head, d_model)

    def project_memory(self, memory: torch.Tensor):
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.n_heads, self.d_head), split_heads(v, self.n_heads, self.d_head)


class ConvFeedForward(nn.Module):
    """Encoder FFN with residual: LayerNorm, ``w1`` Conv1d(d, ffn, k, padding (k-1)/2) + ReLU, ``w2`` kernel-1
    conv (ffn -> d; Linear when ``as_linear``)."""

    def __init__(self, d_model: int, d_ffn: int, kernel_size: int = 3, as_linear: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w1 = nn.Conv1d(d_model, d_ffn, kernel_size, padding=(kernel_size - 1) // 2)
        self.w2 = pointwise(d_ffn, d_model, True, as_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.w1(self.norm(x).transpose(1, 2)))
        if isinstance(self.w2, nn.Conv1d):
            return x + self.w2(h).transpose(1, 2)
        return x + self.w2(h.transpose(1, 2))


class PointwiseFeedForward(nn.Module):
    """Decoder FFN with residual: LayerNorm, ``w1`` kernel-1 conv (d -> ffn) + ReLU, ``w2`` kernel-1 conv
    (ffn -> d); both Linear when ``as_linear``."""

    def __init__(self, d_model: int, d_ffn: int, as_linear: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w1 = pointwise(d_model, d_ffn, True, as_linear)
        self.w2 = pointwise(d_ffn, d_model, True, as_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        if isinstance(self.w1, nn.Conv1d):
            return x + self.w2(F.relu(self.w1(h.transpose(1, 2)))).transpose(1, 2)
        return x + _channels_last(self.w2, F.relu(self.w1(h)))


class Prenet(nn.Module):
    """Linear + ReLU stack (KAN-TTS ``Prenet``; dropout is a training-time detail and left out), optional
    final Linear projection (no activation)."""

    def __init__(self, d_in: int, units: Sequence[int], d_out: int = 0) -> None:
        super().__init__()
        dims = [d_in] + list(units)
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.proj = nn.Linear(dims[-1], d_out) if d_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        if self.proj is not None:
            x = self.proj(x)
        return x


class FsmnFeedForward(nn.Module):
    """FSMN feed-forward: ``w1`` kernel-1 conv (d_in -> ffn) + ReLU, ``w2`` kernel-1 conv (-> memory, no
    bias); Linear when ``as_linear``. x [B,T,C] -> [B,T,memory]."""

    def __init__(self, d_in: int, d_ffn: int, d_out: int, as_linear: bool = False) -> None:
        super().__init__()
        self.w1 = pointwise(d_in, d_ffn, True, as_linear)
        self.w2 = pointwise(d_ffn, d_out, False, as_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.w1, nn.Conv1d):
            return self.w2(F.relu(self.w1(x.transpose(1, 2)))).transpose(1, 2)
        return _channels_last(self.w2, F.relu(self.w1(x)))


class MemoryBlock(nn.Module):
    """FSMN memory (KAN-TTS ``MemoryBlockV2``): zero the masked frames, depthwise Conv1d over time (no bias)
    padded left (k-1)/2 + shift and right (k-1)/2 - shift, add the input, zero the masked frames again."""

    def __init__(self, d: int, kernel_size: int, shift: int = 0) -> None:
        super().__init__()
        half = (kernel_size - 1) // 2
        self.left = half + shift
        self.right = half - shift
        if self.right < 0:
            raise ValueError(f"FSMN shift {shift} too large for kernel {kernel_size}")
        self.conv_dw = nn.Conv1d(d, d, kernel_size, groups=d, bias=False)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B,T,C]; keep [B,T,1] (1 = valid frame) or None (every frame valid)."""
        if keep is not None:
            x = x * keep
        h = self.conv_dw(F.pad(x.transpose(1, 2), (self.left, self.right))).transpose(1, 2)
        out = x + h
        return out * keep if keep is not None else out


class FsmnEncoder(nn.Module):
    """KAN-TTS ``FsmnEncoderV2``: per layer ffn -> memory block, plus the layer input when the widths match
    (not in the first layer)."""

    def __init__(
        self,
        d_in: int,
        ffn_dims: Sequence[int],
        d_memory: int,
        kernel_size: int,
        shift: int,
        as_linear: bool = False,
    ) -> None:
        super().__init__()
        dims_in: List[int] = [d_in] + [d_memory] * (len(ffn_dims) - 1)
        self.ffns = nn.ModuleList(
            [FsmnFeedForward(a, f, d_memory, as_linear) for a, f in zip(dims_in, ffn_dims)]
        )
        self.memories = nn.ModuleList([MemoryBlock(d_memory, kernel_size, shift) for _ in ffn_dims])

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        for ffn, memory in zip(self.ffns, self.memories):
            h = memory(ffn(x), keep)
            x = h + x if h.size(-1) == x.size(-1) else h
        return x
