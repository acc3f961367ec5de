"""HifiGan generator, KAN-TTS flavour (``kantts/models/hifigan/hifigan.py``, ``hifigan_v1_16k.yaml``).

Per upsampling stage: ``x + sin(x)``, then the sum of a ConvTranspose branch (LeakyReLU, then the
transposed conv, its last kernel - stride samples cut) and a "repeat" branch (nearest upsample, LeakyReLU,
conv k7), then the average of the stage's residual blocks; after the last stage LeakyReLU with slope 0.01,
``conv_post``, tanh. Causal padding by default (points 19-21 of the kantts-small fixture's README).
Weight norm is applied at construction (as in training) and folded into plain convolutions by
``remove_weight_norm()``; ``build_vocoder`` folds it, so the inference graph and the state_dict hold plain
``weight`` / ``bias`` tensors.

Runs on the device too: Python 3.8+, torch 1.13+ (``torch.nn.utils.parametrizations.weight_norm`` where it
exists, else the older ``torch.nn.utils.weight_norm``).
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .presets import HifiGanConfig


def _apply_weight_norm(module: nn.Module) -> nn.Module:
    parametrizations = getattr(nn.utils, "parametrizations", None)
    if parametrizations is not None and hasattr(parametrizations, "weight_norm"):
        return parametrizations.weight_norm(module)
    return nn.utils.weight_norm(module)


def _remove_weight_norm(module: nn.Module) -> None:
    parametrize = getattr(nn.utils, "parametrize", None)
    if parametrize is not None and parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    elif hasattr(module, "weight_g"):
        nn.utils.remove_weight_norm(module)


class CausalConv1d(nn.Module):
    """Conv1d padded on the left only (causal) or on both sides; the conv itself is ``.conv``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, causal: bool = True) -> None:
        super().__init__()
        total = (kernel - 1) * dilation
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed to exactly ``stride`` x input length (trim on the right when causal)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, causal: bool = True) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(c_in, c_out, kernel, stride)
        trim = kernel - stride
        self.trim = (0, trim) if causal else (trim // 2, trim - trim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(x)
        left, right = self.trim
        return y[:, :, left : y.size(-1) - right]


class ResidualBlock(nn.Module):
    """Per dilation d: LeakyReLU, conv(k, d), LeakyReLU, conv(k, 1), residual."""

    def __init__(self, channels: int, kernel: int, dilations, slope: float, causal: bool) -> None:
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList([CausalConv1d(channels, channels, kernel, d, causal) for d in dilations])
        self.convs2 = nn.ModuleList([CausalConv1d(channels, channels, kernel, 1, causal) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            h = c1(F.leaky_relu(x, self.slope))
            x = x + c2(F.leaky_relu(h, self.slope))
        return x


class RepeatUpsample(nn.Module):
    """Nearest-neighbour upsample by ``rate``, LeakyReLU, conv (KAN-TTS ``repeat_upsample`` branch)."""

    def __init__(self, c_in: int, c_out: int, rate: int, kernel: int, slope: float, causal: bool) -> None:
        super().__init__()
        self.rate = rate
        self.slope = slope
        self.conv = CausalConv1d(c_in, c_out, kernel, 1, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.repeat_interleave(x, self.rate, dim=-1)
        return self.conv(F.leaky_relu(x, self.slope))


class HifiGan(nn.Module):
    """mel [B, 80, frames] -> waveform [B, 1, frames * hop] in [-1, 1]."""

    def __init__(self, cfg: HifiGanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.slope = cfg.leaky_slope
        self.conv_pre = CausalConv1d(cfg.in_channels, c, cfg.kernel_size, 1, cfg.causal)
        self.ups = nn.ModuleList()
        self.repeat_ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernels)):
            c_in, c_out = c >> i, c >> (i + 1)
            self.ups.append(CausalConvTranspose1d(c_in, c_out, kernel, rate, cfg.causal))
            if cfg.repeat_upsample:
                self.repeat_ups.append(
                    RepeatUpsample(c_in, c_out, rate, cfg.repeat_kernel, self.slope, cfg.causal)
                )
            for k in cfg.resblock_kernels:
                self.resblocks.append(ResidualBlock(c_out, k, cfg.resblock_dilations, self.slope, cfg.causal))
        self.conv_post = CausalConv1d(c >> len(cfg.upsample_rates), 1, cfg.kernel_size, 1, cfg.causal)
        self._weight_normed: List[nn.Module] = []

    def init_weights(self) -> None:
        """KAN-TTS ``reset_parameters``: conv weights ~ N(0, init_std) (call under a seeded RNG)."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                    m.weight.normal_(0.0, self.cfg.init_std)

    def apply_weight_norm(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                _apply_weight_norm(m)
                self._weight_normed.append(m)

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain ``weight`` tensors (numerically the same convolution)."""
        for m in self._weight_normed:
            _remove_weight_norm(m)
        self._weight_normed = []

    def context_frames(self) -> Tuple[int, int]:
        """(left, right): mel frames of context that decide the output of a frame (its receptive field,
        rounded up, plus one frame of margin): a chunk vocoded with that much context on both sides gives
        the samples of the whole utterance. ``right`` is 0 for the causal configuration."""
        cfg = self.cfg
        left = right = 0.0

        def conv(total: int, rate: int) -> Tuple[float, float]:
            if cfg.causal:
                return total / rate, 0.0
            return (total // 2) / rate, (total - total // 2) / rate

        def add(ctx: Tuple[float, float]) -> None:
            nonlocal left, right
            left, right = left + ctx[0], right + ctx[1]

        add(conv(cfg.kernel_size - 1, 1))
        rate = 1
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernels):
            trim = k - u
            trim_left = 0 if cfg.causal else trim // 2
            up = (math.ceil((k - 1 - trim_left) / u) / rate, math.ceil(trim_left / u) / rate)
            rate *= u
            if cfg.repeat_upsample:
                rep = conv(cfg.repeat_kernel - 1, rate)
                up = (max(up[0], rep[0]), max(up[1], rep[1]))
            add(up)
            blocks = [(0.0, 0.0)]
            for kernel in cfg.resblock_kernels:
                bl = br = 0.0
                for d in cfg.resblock_dilations:
                    for total in ((kernel - 1) * d, kernel - 1):
                        cl, cr = conv(total, rate)
                        bl, br = bl + cl, br + cr
                blocks.append((bl, br))
            add((max(b[0] for b in blocks), max(b[1] for b in blocks)))
        add(conv(cfg.kernel_size - 1, rate))
        return math.ceil(left) + 1, (math.ceil(right) + 1 if right > 0 else 0)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        n_kernels = len(self.cfg.resblock_kernels)
        for i, up in enumerate(self.ups):
            x = x + torch.sin(x)
            if self.cfg.repeat_upsample:
                x = up(F.leaky_relu(x, self.slope)) + self.repeat_ups[i](x)
            else:
                x = up(F.leaky_relu(x, self.slope))
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs = xs + self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels
        x = self.conv_post(F.leaky_relu(x, 0.01))
        return torch.tanh(x)
