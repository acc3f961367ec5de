"""Dynamic quantization step (``torch.ao.quantization.quantize_dynamic``).

PyTorch's dynamic int8 covers ``nn.Linear`` and ``nn.LSTM`` (and GRU): weights are stored as int8 and
activations quantized on the fly, so no calibration is needed. The reference Sambert writes its kernel-1
convolutions as Linear so they are covered too; HifiGan is all convolutions and stays fp32, as in the
seed article. The structure change is recorded as a transform in config.json, which
:func:`variants.artifact.apply_transforms` re-applies to the rebuilt structure before ``load_state_dict``
(the same function is used here, so build and load quantize identically).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

from torch import nn

from variants.artifact import quantize_module

try:  # torch >= 1.10
    from torch.ao.nn.quantized import dynamic as _qdyn
except ImportError:  # pragma: no cover
    from torch.nn.quantized import dynamic as _qdyn

QUANTIZED_TYPES = (_qdyn.Linear, _qdyn.LSTM, _qdyn.GRU)


def quantize_transform(args: Mapping) -> Dict:
    """The config.json transform describing a ``quantize`` step."""
    return {
        "op": "quantize_dynamic",
        "component": args["component"],
        "dtype": args["dtype"],
        "modules": list(args["modules"]),
    }


def quantize(acoustic: nn.Module, vocoder: nn.Module, args: Mapping) -> Tuple[nn.Module, nn.Module, Dict]:
    """Quantize one component (a copy; inputs untouched). Returns (acoustic, vocoder, transform)."""
    transform = quantize_transform(args)
    if args["component"] == "acoustic":
        acoustic = quantize_module(acoustic, args["dtype"], args["modules"], inplace=False)
    else:
        vocoder = quantize_module(vocoder, args["dtype"], args["modules"], inplace=False)
    return acoustic, vocoder, transform


def quantized_module_names(module: nn.Module) -> Dict[str, str]:
    """``{module path: type name}`` of every dynamically quantized submodule (for tests and reports)."""
    return {name: type(m).__name__ for name, m in module.named_modules() if isinstance(m, QUANTIZED_TYPES)}
