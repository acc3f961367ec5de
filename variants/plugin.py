"""User models: ``model = "package.module:factory"`` in edgebench.toml (or ``--model`` / ``model_factory=``).

A factory is ``factory(config: dict | None, seed: int) -> (acoustic, vocoder)`` returning two
``nn.Module`` objects that obey the reference model's call conventions:

* ``acoustic(sy=, tone=, syllable_flag=, word_segment=, emotion=, speaker=)`` (LongTensor [1, T] each, from
  ``devices.ondevice.frontend.text_to_ids(...).to_tensors()``) returns an object with ``.mel``
  [1, frames, 80] and
  ``.durations`` [1, T]; ``acoustic(..., durations=d)`` forces those durations (used by the quality proxies);
* ``vocoder(mel.transpose(1, 2))`` returns audio [1, 1, samples] at 16 kHz.

The factory string is recorded in the artifact's config.json, and the artifact is rebuilt on the device by
calling it again with the recorded config (so the module must be importable there: add it to the agent
bundle). The structure-changing steps (``prune``, ``distill``) need the reference structure and config
keys; ``quantize`` and ``unstructured_prune`` work on any model built from Linear/LSTM layers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import torch
from torch import nn

from variants.artifact import resolve_factory
from variants.errors import ArtifactError, VariantsError

CHECK_TEXT = "今天天气真好。"


def load_factory(spec: str) -> Callable[..., Any]:
    """Import the factory; a bad spec raises VariantsError naming it."""
    try:
        return resolve_factory(spec)
    except ArtifactError as exc:
        raise VariantsError(f"model = {spec!r}: {str(exc).split(': ', 1)[-1]}") from None


def _raised(exc: BaseException) -> str:
    """``Type: message`` on one line (the CLI prints an expected error as one line)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_models(spec: str, config: Optional[Mapping[str, Any]], seed: int) -> Tuple[nn.Module, nn.Module]:
    """Call the factory and check it returned two modules; both are put in eval mode. A factory that
    raises is the user's error, not edgebench's: VariantsError naming the factory (one line, exit 2)."""
    factory = load_factory(spec)
    try:
        pair = factory(dict(config) if config is not None else None, seed)
    except Exception as exc:  # noqa: BLE001 - any error of user code is reported, never a traceback
        raise VariantsError(f"model = {spec!r}: the factory raised {_raised(exc)}") from exc
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)
    if not ok:
        raise VariantsError(
            f"model = {spec!r}: the factory must return (acoustic, vocoder) nn.Modules, "
            f"got {type(pair).__name__}"
        )
    return pair[0].eval(), pair[1].eval()


def check_conventions(spec: str, config: Optional[Mapping[str, Any]], seed: int = 0) -> None:
    """Run one short sentence through a user's model and check the call conventions; VariantsError if not."""
    from devices.ondevice.frontend import text_to_ids

    acoustic, vocoder = build_models(spec, config, seed)
    inputs = text_to_ids(CHECK_TEXT, emotion="happy").to_tensors()
    where = f"model = {spec!r}"
    try:
        _check_outputs(where, acoustic, vocoder, inputs)
    except VariantsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model failed on a sentence: their error
        raise VariantsError(f"{where}: running the model on {CHECK_TEXT!r} raised {_raised(exc)}") from exc


def _check_outputs(where: str, acoustic: nn.Module, vocoder: nn.Module, inputs: Mapping[str, Any]) -> None:
    with torch.inference_mode():
        out = acoustic(**inputs)
        mel, durations = getattr(out, "mel", None), getattr(out, "durations", None)
        if not isinstance(mel, torch.Tensor) or mel.dim() != 3 or mel.shape[0] != 1 or mel.shape[2] != 80:
            raise VariantsError(
                f"{where}: acoustic(...).mel must be a tensor [1, frames, 80], got "
                f"{getattr(mel, 'shape', type(mel).__name__)}"
            )
        if not isinstance(durations, torch.Tensor) or tuple(durations.shape) != tuple(inputs["sy"].shape):
            raise VariantsError(
                f"{where}: acoustic(...).durations must be [1, phones] "
                f"({tuple(inputs['sy'].shape)}), got {getattr(durations, 'shape', None)}"
            )
        forced = acoustic(**inputs, durations=durations).mel
        if forced.shape != mel.shape:
            raise VariantsError(
                f"{where}: acoustic(..., durations=d) must give the same frames as d, "
                f"got {tuple(forced.shape)} vs {tuple(mel.shape)}"
            )
        wav = vocoder(mel.transpose(1, 2))
        if not isinstance(wav, torch.Tensor) or wav.dim() != 3 or wav.shape[:2] != (1, 1):
            raise VariantsError(
                f"{where}: vocoder(mel.transpose(1, 2)) must return audio [1, 1, samples], "
                f"got {getattr(wav, 'shape', type(wav).__name__)}"
            )
