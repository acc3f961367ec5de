"""Building blocks of Sambert (KAN-TTS ``kantts/models/sambert``), written for compression.

Kernel-1 convolutions are written as ``nn.Linear`` (numerically the same) so PyTorch dynamic int8
quantization (Linear + LSTM only) covers them. Attention modules read their head layout from the
``n_heads`` / ``d_head`` attributes and never touch ``.weight`` in ``forward``, so they keep working after
head pruning (any head count >= 1) and after dynamic quantization.

Runs on the device too: Python 3.8+, torch 1.13+.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(positions: torch.Tensor, depth: int) -> torch.Tensor:
    """Sinusoidal encoding of (possibly fractional) positions: [...] -> [..., depth] (sin even, cos odd)."""
    idx = torch.arange(depth, device=positions.device)
    inv_timescale = torch.pow(10000.0, -2.0 * torch.div(idx, 2, rounding_mode="floor").float() / depth)
    angles = positions.float().unsqueeze(-1) * inv_timescale
    even = (idx % 2 == 0).to(angles.dtype)
    return torch.sin(angles) * even + torch.cos(angles) * (1.0 - even)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Scaled dot-product attention. q [B,H,Lq,dh], k/v [B,H,Lk,dh], mask [Lq,Lk] bool True = allowed."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _split_heads(x: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.reshape(b, t, n_heads, d_head).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class MultiHeadSelfAttention(nn.Module):
    """Fused-qkv self-attention (no norm, no residual: the block owns those).

    ``qkv: Linear(d_in, 3*h*dh)`` laid out as [q heads | k heads | v heads], ``out: Linear(h*dh, d_out)``.
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
        return _split_heads(q, h, dh), _split_heads(k, h, dh), _split_heads(v, h, dh)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.out(_merge_heads(_attend(q, k, v, mask)))


class CrossAttention(nn.Module):
    """Attention from decoder states to the memory: ``q: Linear(d_model, h*dh)``,
    ``kv: Linear(d_mem, 2*h*dh)`` laid out as [k heads | v heads], ``out: Linear(h*dh, d_model)``."""

    def __init__(self, d_model: int, d_mem: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_head
        self.q = nn.Linear(d_model, n_heads * d_head)
        self.kv = nn.Linear(d_mem, 2 * n_heads * d_head)
        self.out = nn.Linear(n_heads * d_head, d_model)

    def project_query(self, x: torch.Tensor) -> torch.Tensor:
        return _split_heads(self.q(x), self.n_heads, self.d_head)

    def project_memory(self, memory: torch.Tensor):
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.n_heads, self.d_head), _split_heads(v, self.n_heads, self.d_head)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        k, v = self.project_memory(memory)
        return self.out(_merge_heads(_attend(self.project_query(x), k, v, mask)))


class ConvFeedForward(nn.Module):
    """Pre-LN FFN with residual: ``w1`` Conv1d(d, ffn, k) + ReLU, ``w2`` kernel-1 conv as Linear(ffn, d)."""

    def __init__(self, d_model: int, d_ffn: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w1 = nn.Conv1d(d_model, d_ffn, kernel_size, padding=(kernel_size - 1) // 2)
        self.w2 = nn.Linear(d_ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.w1(self.norm(x).transpose(1, 2))).transpose(1, 2)
        return x + self.w2(h)


class LinearFeedForward(nn.Module):
    """Pre-LN FFN with residual, both kernel-1 convs written as Linear: ``w1`` (d->ffn), ``w2`` (ffn->d)."""

    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w1 = nn.Linear(d_model, d_ffn)
        self.w2 = nn.Linear(d_ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w2(F.relu(self.w1(self.norm(x))))


class Prenet(nn.Module):
    """Linear + ReLU stack (KAN-TTS ``Prenet``; dropout is a training-time detail and left out), optional
    final Linear projection."""

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
    """FSMN feed-forward, kernel-1 convs as Linear: ``w1`` (d_in->ffn, ReLU), ``w2`` (->memory, no bias)."""

    def __init__(self, d_in: int, d_ffn: int, d_out: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_in, d_ffn)
        self.w2 = nn.Linear(d_ffn, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(x)))


class MemoryBlock(nn.Module):
    """FSMN memory: depthwise Conv1d over time (no bias) plus identity. ``shift`` moves context to the past:
    left = (k-1)/2 + shift frames, right = (k-1)/2 - shift frames."""

    def __init__(self, d: int, kernel_size: int, shift: int = 0) -> None:
        super().__init__()
        half = (kernel_size - 1) // 2
        self.left = half + shift
        self.right = half - shift
        if self.right < 0:
            raise ValueError(f"FSMN shift {shift} too large for kernel {kernel_size}")
        self.conv_dw = nn.Conv1d(d, d, kernel_size, groups=d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x.transpose(1, 2), (self.left, self.right))
        return x + self.conv_dw(h).transpose(1, 2)


class FsmnEncoder(nn.Module):
    """KAN-TTS ``FsmnEncoderV2``: per layer ffn -> memory block, residual when the width is unchanged."""

    def __init__(
        self, d_in: int, ffn_dims: Sequence[int], d_memory: int, kernel_size: int, shift: int
    ) -> None:
        super().__init__()
        dims_in: List[int] = [d_in] + [d_memory] * (len(ffn_dims) - 1)
        self.ffns = nn.ModuleList([FsmnFeedForward(a, f, d_memory) for a, f in zip(dims_in, ffn_dims)])
        self.memories = nn.ModuleList([MemoryBlock(d_memory, kernel_size, shift) for _ in ffn_dims])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ffn, memory in zip(self.ffns, self.memories):
            h = memory(ffn(x))
            x = h + x if h.size(-1) == x.size(-1) else h
        return x
