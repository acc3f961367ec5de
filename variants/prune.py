"""Pruning steps: structured (whole heads and FFN channels, tensors really shrink) and unstructured (L1).

Structured pruning works on the module names the reference Sambert keeps stable:
``encoder.layers[i].attn`` / ``.ffn`` and ``decoder.layers[i].self_attn`` / ``.cross_attn`` / ``.ffn``.
One head is sliced consistently from every projection that carries it: the fused ``qkv`` rows (in each of
the q, k and v blocks) and the ``out`` projection's input columns; in a decoder (PNCA) layer the query is
shared by the self- and the memory attention, so a head is one unit there: its ``self_attn.qkv`` rows, the
memory attention's ``kv`` rows (k and v blocks) and both ``out`` projections' columns go together (the
layer's target is ``decoder.layers[i].self_attn``). An FFN channel is a row of ``w1`` with its bias and a
column of ``w2`` (kernel-1 ``Conv1d`` in the original implementation, ``Linear`` after ``optimize``).
The pruned model is rebuilt from its new per-layer config (``enc_heads``, ``enc_ffn``,
``dec_heads``, ``dec_ffn``) and loaded with ``strict=True``, so the config alone rebuilds the artifact.

Importance: ``activation`` (default) runs a few calibration sentences and scores a head by the mean L2
norm of its context vectors (the input of ``out``) times the norm of its ``out`` columns, and an FFN channel
by its mean |ReLU activation| times the norm of its ``w2`` column; ``weight_norm`` uses the norms of the
weights that carry the head/channel only. Embeddings (linguistic, emotion, speaker), positional encodings,
the variance adaptor and the post-net are never pruned; ``protect`` keeps named layers whole (by default
the first encoder attention layer, as the seed article recommends).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from variants.errors import RecipeError
from variants.recipes import n_removed, plan_prune

ATTN_KINDS = {"attn": "self", "self_attn": "pnca"}
#: Projection names unstructured pruning sparsifies (attention and FFN weights).
UNSTRUCTURED_TARGETS = ("qkv", "kv", "out", "w1", "w2")


@dataclass(frozen=True)
class Prunable:
    path: str  # e.g. "encoder.layers.3.attn"
    side: str  # "enc" | "dec"
    layer: int
    kind: str  # "self" (encoder) | "pnca" (decoder: self + memory attention, shared query) | "ffn"


def prunable_modules(acoustic: nn.Module) -> List[Prunable]:
    """The attention and FFN modules structured pruning acts on, in model order."""
    out = []
    for side, stack in (("enc", "encoder"), ("dec", "decoder")):
        layers = getattr(getattr(acoustic, stack, None), "layers", None)
        if layers is None:
            raise RecipeError(
                f"structured pruning needs acoustic.{stack}.layers (the reference Sambert structure)"
            )
        for i, layer in enumerate(layers):
            for name in ("attn", "self_attn", "ffn"):
                if hasattr(layer, name):
                    out.append(Prunable(f"{stack}.layers.{i}.{name}", side, i, ATTN_KINDS.get(name, "ffn")))
    return out


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


# ------------------------------------------------------------------------------------ importance


def _out_cols(attn: nn.Module) -> torch.Tensor:
    """The ``out`` projection's columns per head: [d_out, h, dh]."""
    return attn.out.weight.detach().reshape(attn.out.weight.shape[0], attn.n_heads, attn.d_head)


def _head_weight_norms(attn: nn.Module, kind: str, cross: nn.Module = None) -> torch.Tensor:
    h, dh = attn.n_heads, attn.d_head
    score = _out_cols(attn).pow(2).sum(dim=(0, 2))
    score = score + attn.qkv.weight.detach().reshape(3, h, dh, -1).pow(2).sum(dim=(0, 2, 3))
    if kind == "pnca":
        score = score + _out_cols(cross).pow(2).sum(dim=(0, 2))
        score = score + cross.kv.weight.detach().reshape(2, h, dh, -1).pow(2).sum(dim=(0, 2, 3))
    return score.sqrt()


def _ffn_weight_norms(ffn: nn.Module) -> torch.Tensor:
    w1 = ffn.w1.weight.detach()
    rows = w1.reshape(w1.shape[0], -1).pow(2).sum(dim=1)
    w2 = ffn.w2.weight.detach()
    cols = w2.reshape(w2.shape[0], w2.shape[1], -1).pow(2).sum(dim=(0, 2))
    return (rows * cols).sqrt()


def _w2_column_norms(ffn: nn.Module) -> torch.Tensor:
    w2 = ffn.w2.weight.detach()
    return w2.reshape(w2.shape[0], w2.shape[1], -1).pow(2).sum(dim=(0, 2)).sqrt()


class _ActivationStats:
    """Forward pre-hooks on ``out`` (attention) and ``w2`` (FFN) accumulating per-head / per-channel norms."""

    def __init__(self, acoustic: nn.Module, targets: Sequence[Prunable]) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.handles = []
        for t in targets:
            mod = _get(acoustic, t.path)
            if t.kind == "ffn":
                self.handles.append(mod.w2.register_forward_pre_hook(self._ffn_hook(t.path)))
            else:
                self.handles.append(mod.out.register_forward_pre_hook(self._head_hook(t.path, mod)))
                if t.kind == "pnca":  # the memory attention's heads are the same heads
                    cross = _get(acoustic, t.path.rsplit(".", 1)[0] + ".cross_attn")
                    self.handles.append(cross.out.register_forward_pre_hook(self._head_hook(t.path, mod)))

    def _add(self, key: str, value: torch.Tensor, n: int) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.counts[key] = self.counts.get(key, 0) + n

    def _head_hook(self, key: str, attn: nn.Module):
        def hook(_mod, inputs):
            x = inputs[0].detach()
            x = x.reshape(-1, attn.n_heads, attn.d_head)
            self._add(key, x.norm(dim=-1).sum(dim=0), x.shape[0])

        return hook

    def _ffn_hook(self, key: str):
        def hook(mod, inputs):
            x = inputs[0].detach()
            if isinstance(mod, nn.Conv1d):  # [B, C, T]: channels on axis 1
                x = x.transpose(1, 2)
            x = x.reshape(-1, x.shape[-1])
            self._add(key, x.abs().sum(dim=0), x.shape[0])

        return hook

    def mean(self, key: str) -> torch.Tensor | None:
        if key not in self.sums:
            return None
        return self.sums[key] / max(1, self.counts[key])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def importance_scores(
    acoustic: nn.Module,
    targets: Sequence[Prunable],
    method: str = "activation",
    calibration: Sequence[Mapping[str, torch.Tensor]] = (),
) -> Dict[str, torch.Tensor]:
    """Score every head (attention modules) or channel (FFN modules) of ``targets``; higher = keep."""
    def cross_of(t: Prunable):
        return _get(acoustic, t.path.rsplit(".", 1)[0] + ".cross_attn") if t.kind == "pnca" else None

    weight_scores = {}
    for t in targets:
        mod = _get(acoustic, t.path)
        if t.kind == "ffn":
            weight_scores[t.path] = _ffn_weight_norms(mod)
        elif method == "weight_norm":
            weight_scores[t.path] = _head_weight_norms(mod, t.kind, cross_of(t))
        else:
            out_norm = _out_cols(mod).pow(2).sum(dim=(0, 2))
            if t.kind == "pnca":
                out_norm = out_norm + _out_cols(cross_of(t)).pow(2).sum(dim=(0, 2))
            weight_scores[t.path] = out_norm.sqrt()
    if method == "weight_norm":
        return weight_scores
    if not calibration:
        raise RecipeError("step 'prune': importance='activation' needs calibration sentences")
    stats = _ActivationStats(acoustic, targets)
    try:
        with torch.inference_mode():
            for inputs in calibration:
                acoustic(**inputs)
    finally:
        stats.close()
    scores = {}
    for t in targets:
        act = stats.mean(t.path)
        if act is None:  # never ran (e.g. a branch unused at inference): fall back to weights
            scores[t.path] = (
                _head_weight_norms(_get(acoustic, t.path), t.kind, cross_of(t))
                if t.kind != "ffn"
                else _ffn_weight_norms(_get(acoustic, t.path))
            )
        elif t.kind == "ffn":
            scores[t.path] = act * _w2_column_norms(_get(acoustic, t.path))
        else:
            scores[t.path] = act * weight_scores[t.path]
    return scores


# ------------------------------------------------------------------------------------ slicing


def _head_index(keep: Sequence[int], d_head: int, n_heads: int, blocks: int) -> torch.Tensor:
    idx = [b * n_heads * d_head + k * d_head + j for b in range(blocks) for k in keep for j in range(d_head)]
    return torch.tensor(idx, dtype=torch.long)


def _keep_top(scores: torch.Tensor, n_keep: int, tiebreak: torch.Tensor | None = None) -> List[int]:
    """Indices of the ``n_keep`` highest scores, in order; ties go to ``tiebreak`` then the lower index
    (e.g. FFN channels that never fired on the calibration sentences are ranked by their weight norms)."""

    def key(i: int):
        return (-float(scores[i]), -float(tiebreak[i]) if tiebreak is not None else 0.0, i)

    return sorted(sorted(range(scores.numel()), key=key)[:n_keep])


def slice_state_dict(
    state: Dict[str, torch.Tensor],
    acoustic: nn.Module,
    keep: Mapping[str, Sequence[int]],
    targets: Sequence[Prunable],
) -> Dict[str, torch.Tensor]:
    """Return a new state dict with the kept heads/channels of every target."""
    out = dict(state)
    for t in targets:
        if t.path not in keep:
            continue
        mod = _get(acoustic, t.path)
        k = list(keep[t.path])
        p = t.path + "."
        if t.kind == "ffn":
            idx = torch.tensor(k, dtype=torch.long)
            out[p + "w1.weight"] = state[p + "w1.weight"].index_select(0, idx).clone()
            if p + "w1.bias" in state:
                out[p + "w1.bias"] = state[p + "w1.bias"].index_select(0, idx).clone()
            out[p + "w2.weight"] = state[p + "w2.weight"].index_select(1, idx).clone()
            continue
        h, dh = mod.n_heads, mod.d_head
        rows = _head_index(k, dh, h, 3)
        out[p + "qkv.weight"] = state[p + "qkv.weight"].index_select(0, rows).clone()
        if p + "qkv.bias" in state:
            out[p + "qkv.bias"] = state[p + "qkv.bias"].index_select(0, rows).clone()
        cols = _head_index(k, dh, h, 1)
        out[p + "out.weight"] = state[p + "out.weight"].index_select(1, cols).clone()
        if t.kind == "pnca":  # the same heads of the memory attention
            c = t.path.rsplit(".", 1)[0] + ".cross_attn."
            kv_rows = _head_index(k, dh, h, 2)
            out[c + "kv.weight"] = state[c + "kv.weight"].index_select(0, kv_rows).clone()
            if c + "kv.bias" in state:
                out[c + "kv.bias"] = state[c + "kv.bias"].index_select(0, kv_rows).clone()
            out[c + "out.weight"] = state[c + "out.weight"].index_select(1, cols).clone()
    return out


def encoder_decoder_params(acoustic: nn.Module) -> int:
    """Parameters in the encoder and decoder layer stacks (what the article's ratio refers to)."""
    total = 0
    for stack in ("encoder", "decoder"):
        layers = getattr(getattr(acoustic, stack, None), "layers", None)
        if layers is not None:
            total += sum(p.numel() for p in layers.parameters())
    return total


def structured_prune(
    acoustic: nn.Module,
    model_config: Mapping,
    args: Mapping,
    build_acoustic: Callable[[Dict], nn.Module],
    calibration: Sequence[Mapping[str, torch.Tensor]] = (),
) -> Tuple[nn.Module, Dict, Dict]:
    """Prune heads and FFN channels of ``acoustic`` (left untouched).

    ``model_config`` is the ModelConfig dict of ``acoustic``; ``build_acoustic(config_dict)`` builds a fresh
    acoustic model for a config dict. Returns ``(pruned, new_config_dict, report)`` where ``report`` has the
    kept indices per module and the encoder/decoder parameter counts before and after.
    """
    plan = plan_prune(model_config, args)  # RecipeError before any work
    targets = prunable_modules(acoustic)
    protect = set(args["protect"])
    # Cross-attention follows the layer's dec_heads: protecting either attention of a decoder layer
    # keeps both.
    active = []
    for t in targets:
        prefix = t.path.rsplit(".", 1)[0]
        if t.kind == "ffn":
            if t.path not in protect:
                active.append(t)
        elif not any(f"{prefix}.{a}" in protect for a in ("attn", "self_attn", "cross_attn")):
            active.append(t)
    scores = importance_scores(acoustic, active, args["importance"], calibration)
    tiebreak = (
        importance_scores(acoustic, active, "weight_norm") if args["importance"] != "weight_norm" else {}
    )
    keep: Dict[str, List[int]] = {}
    for t in active:
        mod = _get(acoustic, t.path)
        if t.kind == "ffn":
            total = mod.w2.weight.shape[1]
            n_keep = plan[f"{t.side}_ffn"][t.layer]
            if n_keep != total - n_removed(total, args["ffn"]):  # config and module disagree
                raise RecipeError(f"step 'prune': {t.path} has {total} channels, the config disagrees")
        else:
            total = mod.n_heads
            n_keep = plan[f"{t.side}_heads"][t.layer]
        keep[t.path] = _keep_top(scores[t.path], n_keep, tiebreak.get(t.path))
    new_config = copy.deepcopy(dict(model_config))
    new_config["acoustic"] = {**new_config["acoustic"], **plan}
    pruned = build_acoustic(new_config)
    state = slice_state_dict(acoustic.state_dict(), acoustic, keep, active)
    pruned.load_state_dict(state, strict=True)
    pruned.eval()
    kept = dict(keep)
    for path in list(keep):  # a decoder layer's memory attention keeps the heads of its self-attention
        if path.endswith(".self_attn"):
            kept[path.rsplit(".", 1)[0] + ".cross_attn"] = keep[path]
    report = {
        "kept": kept,
        "encoder_decoder_params": {
            "before": encoder_decoder_params(acoustic),
            "after": encoder_decoder_params(pruned),
        },
    }
    return pruned, new_config, report


def unstructured_prune(acoustic: nn.Module, amount: float) -> Tuple[nn.Module, Dict]:
    """L1 unstructured pruning of every attention/FFN projection weight; masks folded in (``prune.remove``).

    The tensors keep their shape (zeros are stored), so the size on disk does not change: the point of
    the seed article's table row. Models without the reference structure get every Linear pruned.
    Returns ``(pruned copy, report)``.
    """
    from torch.nn.utils import prune as tprune

    model = copy.deepcopy(acoustic)
    zeroed = total = 0
    try:
        paths = [t.path for t in prunable_modules(model)]
        paths += [p.rsplit(".", 1)[0] + ".cross_attn" for p in paths if p.endswith(".self_attn")]
        targets = [
            getattr(_get(model, path), name)
            for path in paths
            for name in UNSTRUCTURED_TARGETS
            if hasattr(getattr(_get(model, path), name, None), "weight")
        ]
    except RecipeError:  # a user model without the reference structure: every Linear
        targets = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for sub in targets:
        tprune.l1_unstructured(sub, name="weight", amount=amount)
        tprune.remove(sub, "weight")
        zeroed += int((sub.weight == 0).sum())
        total += sub.weight.numel()
    model.eval()
    return model, {"zeroed": zeroed, "of": total, "sparsity": zeroed / max(1, total)}
