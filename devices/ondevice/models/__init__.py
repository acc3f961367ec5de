"""The reference workload: Sambert acoustic model + KAN-TTS HifiGan vocoder with seeded random weights.

``build_acoustic(cfg, seed)`` / ``build_vocoder(cfg, seed)`` return modules in eval mode whose weights are
bit-identical for the same config, seed and torch version in any process; the global RNG is left as it was.
``reference(cfg_dict, seed)`` is the artifact factory ``devices.ondevice.models:reference``.

Runs on the device too (travels in the agent bundle): Python 3.8+, torch 1.13+.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from .hifigan import HifiGan
from .presets import PRESETS, HifiGanConfig, ModelConfig, SambertConfig, get_preset
from .sambert import AcousticOutput, Sambert

__all__ = [
    "AcousticOutput",
    "HifiGan",
    "HifiGanConfig",
    "ModelConfig",
    "PRESETS",
    "Sambert",
    "SambertConfig",
    "build_acoustic",
    "build_vocoder",
    "count_parameters",
    "get_preset",
    "reference",
]


def build_acoustic(cfg: SambertConfig, seed: int = 0) -> Sambert:
    """Sambert in eval mode, seeded init (duration output set to realistic frames per phone)."""
    if not isinstance(cfg, SambertConfig):
        raise TypeError(f"build_acoustic: expected SambertConfig, got {type(cfg).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sambert(cfg)
        model.init_duration_output()
    return model.eval()


def build_vocoder(cfg: HifiGanConfig, seed: int = 0, fold_weight_norm: bool = True) -> HifiGan:
    """HifiGan in eval mode, seeded init. Weight norm (if configured) is applied then, unless
    ``fold_weight_norm=False`` (e.g. to fine-tune), folded into plain convs."""
    if not isinstance(cfg, HifiGanConfig):
        raise TypeError(f"build_vocoder: expected HifiGanConfig, got {type(cfg).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HifiGan(cfg)
        model.init_weights()
    if cfg.weight_norm:
        model.apply_weight_norm()
        if fold_weight_norm:
            model.remove_weight_norm()
    return model.eval()


def reference(config: Union[ModelConfig, Dict[str, Any]], seed: int = 0) -> Tuple[Sambert, HifiGan]:
    """Artifact factory: (acoustic, vocoder) from a ModelConfig or its ``to_dict()``."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return build_acoustic(cfg.acoustic, seed), build_vocoder(cfg.vocoder, seed)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
