"""The ``optimize`` recipe step: the same weights in edgebench's faster implementation of Sambert.

``original`` runs what the original KAN-TTS code runs (kernel-1 ``Conv1d`` layers, a decoder that attends
over its whole history under a mask and grows its cache). ``optimize`` rebuilds the acoustic model with
``SambertConfig.optimized = True``: every kernel-1 convolution becomes an ``nn.Linear`` holding the same
weights (its ``[out, in, 1]`` weight squeezed to ``[out, in]``), which PyTorch dynamic int8 can quantize,
and the decoder computes attention on the bands only with a preallocated cache. The output equals the
original's within float rounding (tested to 1e-5). The vocoder is unchanged.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Mapping, Tuple

import torch
from torch import nn

from variants.errors import RecipeError


def optimized_state(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> Dict:
    """``state`` with kernel-1 conv weights reshaped to the Linear shapes of ``target`` (same keys)."""
    out = {}
    for key, value in state.items():
        want = target.get(key)
        if want is not None and value.dim() == want.dim() + 1 and value.shape[-1] == 1:
            value = value.squeeze(-1)
        out[key] = value
    return out


def optimize(
    acoustic: nn.Module, model_config: Mapping, build_acoustic: Callable[[Dict], nn.Module]
) -> Tuple[nn.Module, Dict, Dict]:
    """Return ``(optimized acoustic, new config dict, report)``; ``acoustic`` is left untouched."""
    ac = (model_config or {}).get("acoustic") if isinstance(model_config, Mapping) else None
    if not isinstance(ac, Mapping) or "optimized" not in ac:
        raise RecipeError("step 'optimize' needs the reference Sambert (config acoustic.optimized)")
    new_config = copy.deepcopy(dict(model_config))
    new_config["acoustic"] = {**new_config["acoustic"], "optimized": True}
    fast = build_acoustic(new_config)
    target = fast.state_dict()
    state = optimized_state(acoustic.state_dict(), target)
    fast.load_state_dict(state, strict=True)
    converted = sum(1 for k, v in acoustic.state_dict().items() if v.dim() != target[k].dim())
    report = {"kernel1_convs_as_linear": converted, "already_optimized": bool(ac.get("optimized"))}
    return fast.eval(), new_config, report
