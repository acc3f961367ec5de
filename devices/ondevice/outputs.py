"""Do a device's outputs equal the controller's? One sentence, synthesised on both sides.

The device (the worker, after its measurement, outside every timed span) synthesises one corpus sentence
and sends its durations, mel and waveform (``device_outputs``). The controller loads the same artifact,
forces the device's durations (so both mels have the same frames), runs the acoustic model and then its
vocoder on the device's mel, and compares (``compare``):

* ``durations_differ``: phones whose predicted frame count differs. A quantized duration head on another
  int8 engine can round a phone differently; that is reported, and only the mel/waveform decide.
* ``mel_max_abs``: the largest |device - controller| over the mel (log-magnitude units), with the
  device's durations on both sides; ``mel_rel_rms``: rms(device - controller) / rms(controller).
* ``wav_max_abs``: the largest |device - controller| over the waveform (full scale 1.0), both from the
  device's mel.

Tolerances (``TOLERANCES``), from measurements (README, "Outputs across boards"): fp32 models agree far
below 1e-4 across x86/aarch64 and torch 2.0-2.13. Dynamic int8 differs between quantized engines (x86 or
fbgemm on x86; qnnpack or onednn on ARM): the weights are the same int8 values, but each engine packs
them and quantizes activations its own way (qnnpack ignores ``reduce_range``). Measured on x86 with the
other engines, same weights, seeded ``base`` and ``tiny``: mel relative rms 1.8-2.4 %, max |diff|
0.03-0.06 (mel peak about 1.7). The int8 tolerance (10 % relative rms) sits well above that and well below
what a different model gives (of the order of 100 %). A check above its tolerance fails the record: a
board that computes something else is not measuring the variant.

On the device: standard library and the artifact's runtime (torch, or numpy and onnxruntime); the comparison
(controller side) uses numpy. Python 3.8+.
"""

from __future__ import annotations

import base64
import struct
import sys
from typing import Any, Dict, Mapping

#: max |diff| allowed, by precision class of the variant ("int8" when any component is quantized).
TOLERANCES = {
    "fp32": {"mel_max_abs": 1e-3, "mel_rel_rms": 1e-4, "wav_max_abs": 1e-3},
    "int8": {"mel_max_abs": 0.5, "mel_rel_rms": 0.1, "wav_max_abs": 5e-2},
}
OUTPUTS_VERSION = 1


def encode(values) -> Dict[str, Any]:
    """A float tensor or array as {"shape", "f32": base64 of little-endian float32} (no numpy needed)."""
    data = values.detach() if hasattr(values, "detach") else values
    flat = [float(v) for v in data.reshape(-1).tolist()]
    packed = struct.pack(f"<{len(flat)}f", *flat)
    return {"shape": list(values.shape), "f32": base64.b64encode(packed).decode("ascii")}


def decode(obj: Mapping[str, Any]):
    """The values ``encode`` wrote, as a numpy float32 array (controller side)."""
    import numpy as np

    raw = base64.b64decode(obj["f32"])
    n = len(raw) // 4
    return np.frombuffer(raw[: 4 * n], dtype="<f4").astype(np.float32).reshape(obj["shape"])


def _is_torch(model) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _no_grad(model):
    """torch.inference_mode for a torch model; nothing for an onnxruntime one (which never imports torch)."""
    if _is_torch(model):
        return sys.modules["torch"].inference_mode()
    import contextlib

    return contextlib.nullcontext()


def _array(values):
    """numpy float64 view of a tensor or an array (controller side)."""
    import numpy as np

    data = values.detach().cpu().numpy() if hasattr(values, "detach") else values
    return np.asarray(data, dtype=np.float64)


def rel_rms(diff, ref) -> float:
    """rms(diff) / rms(ref) (0 when both are empty or zero); numpy arrays."""
    import numpy as np

    if not diff.size:
        return 0.0
    num = float(np.sqrt(np.mean(np.square(diff))))
    den = float(np.sqrt(np.mean(np.square(ref))))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def synthesize(frontend_module, symbols, acoustic, vocoder, sentence, emotion: str,
               durations=None, to_inputs=None) -> tuple:
    """(inputs, acoustic output, waveform) for one sentence; ``durations`` forces the frames per phone.
    ``to_inputs`` turns the frontend's ids into the runtime's inputs (default: torch tensors)."""
    ids = frontend_module.text_to_ids(sentence.text, emotion=emotion, symbols=symbols)
    inputs = to_inputs(ids) if to_inputs is not None else ids.to_tensors()
    with _no_grad(acoustic):
        out = acoustic(**inputs) if durations is None else acoustic(**inputs, durations=durations)
        wav = vocoder(out.mel.swapaxes(1, 2))
    return inputs, out, wav


def device_outputs(frontend_module, symbols, acoustic, vocoder, sentence, emotion: str,
                   engine, to_inputs=None) -> Dict[str, Any]:
    """What the device sends: the sentence, its durations, mel and waveform, and the engine used (None for
    onnxruntime)."""
    _, out, wav = synthesize(frontend_module, symbols, acoustic, vocoder, sentence, emotion,
                             to_inputs=to_inputs)
    return {
        "version": OUTPUTS_VERSION, "sentence_id": sentence.id, "emotion": emotion,
        "quantized_engine": engine,
        "durations": [int(d) for d in out.durations[0].tolist()],
        "mel": encode(out.mel[0]), "wav": encode(wav.reshape(-1)),
    }


def compare(outputs: Mapping[str, Any], frontend_module, symbols, acoustic, vocoder, sentence,
            precision: str) -> Dict[str, Any]:
    """The check of a device's ``outputs`` against this process's models (see the module docstring): torch
    modules or onnxruntime models (``devices.ondevice.ort``), whichever the artifact is for."""
    import numpy as np

    mel_dev = decode(outputs["mel"])
    wav_dev = decode(outputs["wav"]).astype(np.float64)
    if _is_torch(acoustic):
        torch = sys.modules["torch"]
        forced = torch.tensor([outputs["durations"]], dtype=torch.long)
        mel_in = torch.from_numpy(mel_dev.copy()).unsqueeze(0).transpose(1, 2)
        to_inputs = None
    else:
        forced = np.array([outputs["durations"]], dtype=np.int64)
        mel_in = np.ascontiguousarray(mel_dev[None].swapaxes(1, 2))
        to_inputs = _arrays
    _, own, _ = synthesize(frontend_module, symbols, acoustic, vocoder, sentence, outputs["emotion"],
                           to_inputs=to_inputs)
    _, out, _ = synthesize(frontend_module, symbols, acoustic, vocoder, sentence, outputs["emotion"],
                           durations=forced, to_inputs=to_inputs)
    with _no_grad(vocoder):
        wav_ctl = _array(vocoder(mel_in)).reshape(-1)
    own_durations = [int(d) for d in own.durations[0].tolist()]
    differ = sum(1 for a, b in zip(own_durations, outputs["durations"]) if a != b)
    differ += abs(len(own_durations) - len(outputs["durations"]))
    mel_ctl = _array(out.mel[0])
    mel_dev = mel_dev.astype(np.float64)
    if tuple(mel_ctl.shape) != tuple(mel_dev.shape) or wav_ctl.shape != wav_dev.shape:
        mel_diff = wav_diff = mel_rel = float("inf")
    else:
        mel_diff = float(np.abs(mel_ctl - mel_dev).max()) if mel_dev.size else 0.0
        wav_diff = float(np.abs(wav_ctl - wav_dev).max()) if wav_dev.size else 0.0
        mel_rel = rel_rms(mel_dev - mel_ctl, mel_ctl)
    tol = TOLERANCES[precision]
    ok = mel_rel <= tol["mel_rel_rms"] and mel_diff <= tol["mel_max_abs"] and wav_diff <= tol["wav_max_abs"]
    return {
        "sentence_id": outputs["sentence_id"], "emotion": outputs["emotion"],
        "quantized_engine": outputs.get("quantized_engine"), "precision": precision,
        "phones": len(outputs["durations"]), "durations_differ": differ,
        "mel_max_abs": round(mel_diff, 8) if mel_diff != float("inf") else None,
        "mel_rel_rms": round(mel_rel, 8) if mel_rel != float("inf") else None,
        "wav_max_abs": round(wav_diff, 8) if wav_diff != float("inf") else None,
        "tolerance": dict(tol), "ok": bool(ok),
    }


def _arrays(ids):
    return ids.to_arrays()
