"""Distillation step: a shallower student trained briefly to match the teacher's mel output.

The student keeps an evenly spaced subset of the teacher's encoder and decoder layers (``layers`` =
fraction kept, always layer 0 whose input width differs) and is initialised from them (layer dropping,
as DistilBERT does); everything else (embeddings, variance adaptor, post-net) is copied. It is then
trained for ``steps`` Adam steps on generated sentences: the teacher's free-running output is the target,
the student runs with the teacher's durations and, where the model offers it (the reference Sambert's
``teacher_mel=``), the parallel teacher-forced decoder pass fed with the teacher's decoder frames, so one
step is one parallel forward/backward instead of an autoregressive loop. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from variants.recipes import plan_distill

_LAYER_KEY = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$")


def student_config(model_config: Mapping, keep: Mapping[str, Sequence[int]]) -> Dict:
    ac = dict(model_config["acoustic"])
    for side, (hk, fk) in (("encoder", ("enc_heads", "enc_ffn")), ("decoder", ("dec_heads", "dec_ffn"))):
        ac[hk] = [ac[hk][i] for i in keep[side]]
        ac[fk] = [ac[fk][i] for i in keep[side]]
    return {**model_config, "acoustic": ac}


def init_from_teacher(student: nn.Module, teacher: nn.Module, keep: Mapping[str, Sequence[int]]) -> None:
    """Copy the teacher's weights into the student: student layer j <- teacher layer keep[side][j]."""
    t_state = teacher.state_dict()
    new_state = {}
    for key in student.state_dict():
        m = _LAYER_KEY.match(key)
        src = key if m is None else f"{m.group(1)}.layers.{keep[m.group(1)][int(m.group(2))]}.{m.group(3)}"
        new_state[key] = t_state[src].clone()
    student.load_state_dict(new_state, strict=True)


def generated_sentences(n: int, seed: int, min_chars: int = 6, max_chars: int = 24) -> List[str]:
    """``n`` seeded pseudo-sentences: random runs of the corpus' characters, ending with a full stop."""
    from devices.ondevice.corpus import default_corpus

    chars = sorted({c for s in default_corpus(seed=0) for c in s.text if "\u4e00" <= c <= "\u9fff"})
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_chars, max_chars)
        body = "".join(rng.choice(chars) for _ in range(length))
        cut = rng.randint(2, max(2, length - 2))
        out.append(body[:cut] + "，" + body[cut:] + "。")
    return out


def training_set(
    teacher: nn.Module, n: int, seed: int, symbols=None
) -> List[Tuple[Dict[str, torch.Tensor], object]]:
    """(inputs, teacher output) pairs on generated sentences, emotions cycling; teacher run once each."""
    from devices.ondevice.frontend import EMOTIONS, text_to_ids

    pairs = []
    with torch.no_grad():
        for i, text in enumerate(generated_sentences(n, seed)):
            inputs = text_to_ids(text, emotion=EMOTIONS[i % len(EMOTIONS)], symbols=symbols).to_tensors()
            pairs.append((inputs, teacher(**inputs)))
    return pairs


def _supports_teacher_mel(model: nn.Module) -> bool:
    import inspect

    try:
        return "teacher_mel" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def distill(
    teacher: nn.Module,
    model_config: Mapping,
    args: Mapping,
    build_acoustic: Callable[[Dict], nn.Module],
    seed: int = 0,
    symbols=None,
) -> Tuple[nn.Module, Dict, Dict]:
    """Build and train the student. Returns ``(student, student_config_dict, report)``; teacher untouched."""
    keep = plan_distill(model_config, args)
    new_config = student_config(model_config, keep)
    torch.manual_seed(seed)
    student = build_acoustic(new_config)
    init_from_teacher(student, teacher, keep)
    data = training_set(teacher, args["sentences"], seed, symbols)
    parallel = _supports_teacher_mel(student)
    student.eval()  # no dropout in these models; eval keeps inference-time behaviour while training
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=args["lr"])
    losses = []
    with torch.enable_grad():
        for step in range(args["steps"]):
            inputs, target = data[step % len(data)]
            kwargs = {"durations": target.durations}
            if parallel:
                kwargs["teacher_mel"] = target.mel_decoder
            out = student(**inputs, **kwargs)
            loss = F.l1_loss(out.mel, target.mel)
            if parallel:
                loss = loss + F.l1_loss(out.mel_decoder, target.mel_decoder)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    for p in student.parameters():
        p.requires_grad_(False)
    report = {
        "kept_layers": {k: list(v) for k, v in keep.items()},
        "steps": args["steps"],
        "parallel_decoder": parallel,
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
    }
    return student.eval(), new_config, report
