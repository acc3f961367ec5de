"""Quality proxies of a variant against the original, on a fixed evaluation set (no listeners needed).

* **Mel fidelity**: the variant is run with the original's durations (``durations=``), so its frames are
  aligned with the original's; we report the mean absolute difference of the log-mel frames (``mel_l1``)
  and the mel-cepstral distortion ``mcd_db`` = (10 / ln 10) * sqrt(2 * sum_k (c_k - c'_k)^2), averaged
  over frames, where c = orthonormal DCT-II of the log-mel frame (the model's output is a log-mel
  spectrogram) and k = 1..24 (c_0, the frame energy, excluded as usual).
* **Emotion identifiability**: for every sentence and emotion, is the variant's output nearest (MCD) to the
  original's output for the *same* emotion among all 7? The accuracy over all (sentence, emotion) pairs is
  the proxy of the article's "emotion recognition rate". All outputs of one sentence share the original's
  neutral durations, so only the emotion conditioning differs between candidates.

The evaluation set is a fixed list of corpus sentences (``default_corpus(seed=0)``), so numbers are
comparable between builds; ``n`` in the result is the number of (sentence, emotion) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

MCD_COEFFS = 24
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix [n, n]: c = D @ x."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def mel_cepstrum(log_mel: torch.Tensor, n_coeffs: int = MCD_COEFFS) -> torch.Tensor:
    """[..., frames, n_mels] log-mel -> [..., frames, n_coeffs] cepstral coefficients 1..n_coeffs."""
    n_mels = log_mel.shape[-1]
    d = dct_matrix(n_mels)[1 : n_coeffs + 1]
    return log_mel.to(torch.float64) @ d.T


def _aligned(reference: torch.Tensor, test: torch.Tensor, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    a, b = reference.reshape(-1, reference.shape[-1]), test.reshape(-1, test.shape[-1])
    if a.shape != b.shape:
        raise ValueError(f"{what}: frames not aligned {tuple(a.shape)} vs {tuple(b.shape)}; pass durations=")
    return a, b


def mcd_db(reference: torch.Tensor, test: torch.Tensor, n_coeffs: int = MCD_COEFFS) -> float:
    """Mean mel-cepstral distortion in dB over aligned frames ([1, frames, 80] or [frames, 80])."""
    a, b = _aligned(reference, test, "mcd_db")
    diff = mel_cepstrum(a, n_coeffs) - mel_cepstrum(b, n_coeffs)
    return float((_MCD_SCALE * diff.pow(2).sum(dim=-1).sqrt()).mean())


def mel_l1(reference: torch.Tensor, test: torch.Tensor) -> float:
    a, b = _aligned(reference, test, "mel_l1")
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().mean())


def emotion_identification(
    variant: Dict[Tuple[str, str], torch.Tensor], original: Dict[Tuple[str, str], torch.Tensor]
) -> float:
    """Fraction of (sentence, emotion) whose output is nearest (MCD) to the original's same emotion."""
    hits = total = 0
    for (sid, emo), mel in variant.items():
        candidates = {e: m for (s, e), m in original.items() if s == sid}
        nearest = min(sorted(candidates), key=lambda e: mcd_db(candidates[e], mel))
        hits += int(nearest == emo)
        total += 1
    return hits / max(1, total)


@dataclass
class EvalItem:
    sentence_id: str
    emotion: str
    inputs: Dict[str, torch.Tensor]
    durations: torch.Tensor  # the original's durations for this sentence (neutral), [1, T]


@dataclass
class Reference:
    """The original's outputs on the evaluation set, computed once per build."""

    items: List[EvalItem]
    mels: Dict[Tuple[str, str], torch.Tensor] = field(default_factory=dict)


def evaluation_sentences(n_sentences: int = 2, seed: int = 0) -> List[Tuple[str, str]]:
    """The fixed evaluation sentences: the first ``n_sentences`` short ones of the default corpus."""
    from devices.ondevice.corpus import default_corpus

    corpus = default_corpus(seed=seed)
    short = [s for s in corpus if s.length_class == "short"] or list(corpus)
    return [(s.id, s.text) for s in short[:n_sentences]]


def build_reference(
    original: nn.Module,
    sentences: Sequence[Tuple[str, str]] | None = None,
    emotions: Sequence[str] | None = None,
    symbols=None,
) -> Reference:
    """Run the original acoustic model on every (sentence, emotion) with the sentence's neutral durations.
    ``symbols``: the voice's symbol table (None: the frontend's built-in one)."""
    from devices.ondevice.frontend import EMOTIONS, text_to_ids

    sentences = list(sentences) if sentences is not None else evaluation_sentences()
    emotions = tuple(emotions or EMOTIONS)
    ref = Reference(items=[])
    with torch.inference_mode():
        for sid, text in sentences:
            first = text_to_ids(text, emotion=emotions[0], symbols=symbols).to_tensors()
            durations = original(**first).durations
            for emo in emotions:
                inputs = text_to_ids(text, emotion=emo, symbols=symbols).to_tensors()
                ref.items.append(EvalItem(sid, emo, inputs, durations))
                ref.mels[(sid, emo)] = original(**inputs, durations=durations).mel
    return ref


def evaluate(acoustic: nn.Module, reference: Reference) -> Dict[str, float]:
    """Quality proxies of ``acoustic`` against the reference: mel_l1, mcd_db, emotion_id_accuracy, n."""
    outputs: Dict[Tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        for item in reference.items:
            outputs[(item.sentence_id, item.emotion)] = acoustic(**item.inputs, durations=item.durations).mel
    keys = list(outputs)
    return {
        "mel_l1": sum(mel_l1(reference.mels[k], outputs[k]) for k in keys) / len(keys),
        "mcd_db": sum(mcd_db(reference.mels[k], outputs[k]) for k in keys) / len(keys),
        "emotion_id_accuracy": emotion_identification(outputs, reference.mels),
        "n": len(keys),
    }
