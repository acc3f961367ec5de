"""Export of the reference Sambert-HifiGan to ONNX graphs for the onnxruntime runtime (controller side).

The Sambert decoder and the duration predictor are autoregressive, so their loops are not exported: the
graphs are the pieces between the loops, and ``devices.ondevice.ort`` runs the loops in numpy. The graphs
(batch size 1; names are ``devices.ondevice.ort.GRAPHS``)::

    text           sy, tone, syllable_flag, word_segment, emotion, speaker [1,T] int64
                   -> text [1,T,P] (with the pitch/energy embeddings), spk, emo, dur_cond [1,T,D]
    duration_step  x [1,1,1], cond [1,1,D], h, c [layers,1,H] -> y [1,1,1], h_out, c_out
    memory         text, spk, emo, index int64 [1,F], valid, positions [1,F] (F = steps*r)
                   -> memory [1,steps,Dm], mem_k_i, mem_v_i [1,H,steps,dh] per decoder layer i
    decoder_step   frame [1,1,80], memory_step [1,1,Dm], per layer past_k_i, past_v_i [1,H,P,dh] (steps
                   [lo, t), P may be 0), mem_k_i, mem_v_i [1,H,W,dh] (memory window [t, hi))
                   -> y [1,1,r*80], per layer k_i, v_i [1,H,1,dh]
    postnet        dec [1,F,80], keep [1,F,1] -> mel [1,F,80] = (dec + postnet(dec, keep)) * keep
    vocoder        mel [1,80,frames] -> wav [1,1,samples]

The wrappers below reuse the model's submodules (same weights, same functions); the decoder step is the
banded form (``PncaDecoder._infer_banded``, equal to ``_infer_full`` within rounding) whatever the model's
``optimized`` flag. Export uses the TorchScript exporter (``dynamo=False``, opset 17): it runs on every
supported torch and needs no onnxscript. The bytes are deterministic (same weights -> same bytes).

``quantize`` applies ONNX Runtime dynamic int8 to the graphs (MatMul/Gemm by default, convolutions
opt-in); ``agreement`` measures an exported model against torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import os
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from devices.ondevice import ort as ort_runtime
from devices.ondevice.models.hifigan import HifiGan
from devices.ondevice.models.layers import attend, duration_position_code, merge_heads
from devices.ondevice.models.sambert import Sambert
from devices.ondevice.outputs import rel_rms
from variants.errors import VariantsError

OPSET = 17
QUANT_COMPONENTS = ("acoustic", "vocoder", "both")
#: The model part each graph is made of: named in an ExportError when no finer module is known.
GRAPH_MODULES = {
    "text": "encoder",
    "duration_step": "variance_adaptor.duration_predictor",
    "memory": "decoder.layers (cross_attn.kv)",
    "decoder_step": "decoder.layers",
    "postnet": "postnet",
    "vocoder": "vocoder",
}
_EXAMPLE_PHONES = 5  # example sizes for tracing: distinct from every fixed dimension
_EXAMPLE_STEPS = 4
_EXAMPLE_PAST = 2
_EXAMPLE_WINDOW = 3
_EXAMPLE_MEL_FRAMES = 6

# torch >= 2.5 has a second (dynamo) exporter behind the same function: ask for the TorchScript one (older
# torch has only that one and no ``dynamo`` argument).
_TORCHSCRIPT_EXPORTER = (
    {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
)


class ExportError(VariantsError):
    """A model cannot be exported to ONNX (not the reference fp32 architecture, or the exporter failed on
    a module: the message names it)."""


# ------------------------------------------------------------------------------------------ wrappers


class TextGraph(nn.Module):
    """ids -> text (text_hid + pitch/energy embeddings), spk, emo, dur_cond (``Sambert._conditions``)."""

    def __init__(self, acoustic: Sambert) -> None:
        super().__init__()
        self.acoustic = acoustic

    def forward(self, sy, tone, syllable_flag, word_segment, emotion, speaker):
        c = self.acoustic._conditions(sy, tone, syllable_flag, word_segment, emotion, speaker)
        return c["text"], c["spk"], c["emo"], c["dur_cond"]


class DurationStepGraph(nn.Module):
    """One step of ``DurationPredictor.infer`` with the LSTM state explicit (zeros at step 0)."""

    def __init__(self, acoustic: Sambert) -> None:
        super().__init__()
        self.predictor = acoustic.variance_adaptor.duration_predictor

    def forward(self, x, cond, h, c):
        p = self.predictor
        out, (h_out, c_out) = p.lstm(torch.cat([p.prenet(x), cond], dim=-1), (h, c))
        return F.relu(p.fc(out)), h_out, c_out


class MemoryGraph(nn.Module):
    """``Sambert.prepare``'s memory from numpy-computed frame indices, and every layer's projected memory."""

    def __init__(self, acoustic: Sambert) -> None:
        super().__init__()
        self.r = acoustic.r
        self.variance_adaptor = acoustic.variance_adaptor  # its dur_timescales buffer
        self.layers = acoustic.decoder.layers

    def forward(self, text, spk, emo, index, valid, positions):
        r = self.r
        frame_index = index[0]
        keep = valid.unsqueeze(-1)
        lr_text = torch.index_select(text, 1, frame_index) * keep  # length_regulate
        lr_text = lr_text + duration_position_code(positions, self.variance_adaptor.dur_timescales)
        group_index = frame_index[::r]  # each decoder step's first frame
        group_keep = keep[:, ::r]
        memory = torch.cat(
            [
                lr_text.reshape(1, -1, r * lr_text.size(-1)),
                torch.index_select(spk, 1, group_index) * group_keep,
                torch.index_select(emo, 1, group_index) * group_keep,
            ],
            dim=-1,
        )
        outputs = [memory]
        for layer in self.layers:
            outputs.extend(layer.cross_attn.project_memory(memory))
        return tuple(outputs)


class DecoderStepGraph(nn.Module):
    """One step of ``PncaDecoder._infer_banded`` with the band's caches explicit."""

    def __init__(self, acoustic: Sambert) -> None:
        super().__init__()
        self.decoder = acoustic.decoder

    def forward(self, frame, memory_step, *caches):
        d = self.decoder
        x = d._input(frame, memory_step)
        new_kv = []
        for i, layer in enumerate(d.layers):
            past_k, past_v, mem_k, mem_v = caches[4 * i : 4 * i + 4]
            q, k, v = layer.self_attn.project(layer.attn_norm(x))
            kc = torch.cat([past_k, k], dim=2)
            vc = torch.cat([past_v, v], dim=2)
            x = x + layer.self_attn.out(merge_heads(attend(q, kc, vc)))
            x = x + layer.cross_attn.out(merge_heads(attend(q, mem_k, mem_v)))
            x = layer.ffn(x)
            new_kv.extend([k, v])
        return (d.out_proj(d.norm(x)), *new_kv)


class PostnetGraph(nn.Module):
    def __init__(self, acoustic: Sambert) -> None:
        super().__init__()
        self.postnet = acoustic.postnet

    def forward(self, dec, keep):
        return (dec + self.postnet(dec, keep)) * keep


# ------------------------------------------------------------------------------------------ export


def _check_reference(acoustic: nn.Module, vocoder: nn.Module) -> None:
    need = "the onnxruntime runtime needs the reference fp32 architecture"
    for label, model, cls in (("acoustic", acoustic, Sambert), ("vocoder", vocoder, HifiGan)):
        if type(model) is not cls:
            raise ExportError(
                f"ONNX export: the {label} model is {type(model).__module__}.{type(model).__name__}, not the "
                f"reference {cls.__name__}; {need}"
            )
    for prefix, model in (("", acoustic), ("vocoder.", vocoder)):
        for name, module in model.named_modules():
            kind = type(module).__module__
            if ".quantized" in kind or kind.startswith("torch.ao.nn.intrinsic"):
                raise ExportError(
                    f"ONNX export of '{prefix}{name}' failed: it is torch-quantized ({kind}."
                    f"{type(module).__name__}); {need} (export the fp32 model, then use ONNX Runtime "
                    "quantization)"
                )
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        for name, tensor in tensors:
            if tensor.is_floating_point() and tensor.dtype != torch.float32:
                raise ExportError(f"ONNX export of '{prefix}{name}' failed: {tensor.dtype}; {need}")


@contextlib.contextmanager
def _module_tracker(root: nn.Module, prefix: str) -> Iterator[List[str]]:
    """The names of the modules whose forward is running (innermost last), for the error message."""
    stack: List[str] = []
    handles = []

    def pre(name):
        def hook(module, args):
            stack.append(name)

        return hook

    def post(module, args, output):
        if stack:
            stack.pop()

    for name, module in root.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre(prefix + name)))
            handles.append(module.register_forward_hook(post))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _export_graph(
    graph: str,
    wrapper: nn.Module,
    root: nn.Module,
    prefix: str,
    args: Tuple[torch.Tensor, ...],
    inputs: Sequence[str],
    outputs: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> bytes:
    buf = io.BytesIO()
    with _module_tracker(root, prefix) as stack:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings of shape checks, exporter deprecation
                torch.onnx.export(
                    wrapper,
                    args,
                    buf,
                    **_TORCHSCRIPT_EXPORTER,
                    opset_version=OPSET,
                    input_names=list(inputs),
                    output_names=list(outputs),
                    dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                    do_constant_folding=True,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one error naming the module
            where = stack[-1] if stack else GRAPH_MODULES[graph]
            text = " ".join(str(exc).split())[:500]
            message = f"ONNX export of '{where}' ({graph}) failed: {type(exc).__name__}: {text}"
            raise ExportError(message) from exc
    return _normalized(buf.getvalue())


def _normalized(data: bytes) -> bytes:
    """The model without what may differ between two exports of the same weights (doc strings)."""
    model = onnx.load_from_string(data)
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    return model.SerializeToString(deterministic=True)


def _graph_info(data: bytes, inputs: Sequence[str], outputs: Sequence[str]) -> Dict[str, Any]:
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "inputs": list(inputs),
        "outputs": list(outputs),
    }


def model_meta(acoustic: Sambert, vocoder: HifiGan) -> Dict[str, Any]:
    """The dims ``devices.ondevice.ort`` needs (config.json ``onnx.acoustic`` / ``onnx.vocoder``)."""
    cfg = acoustic.cfg
    layers = acoustic.decoder.layers
    predictor = acoustic.variance_adaptor.duration_predictor
    return {
        "acoustic": {
            "r": int(cfg.outputs_per_step),
            "n_mels": int(cfg.n_mels),
            "max_len": int(acoustic.encoder.position_enc.size(1)),
            "max_frames": int(cfg.max_frames),
            "vocab": {
                "sy": acoustic.encoder.sy_emb.num_embeddings,
                "tone": acoustic.encoder.tone_emb.num_embeddings,
                "syllable_flag": acoustic.encoder.syllable_flag_emb.num_embeddings,
                "word_segment": acoustic.encoder.word_segment_emb.num_embeddings,
                "emotion": acoustic.emotion_emb.num_embeddings,
                "speaker": acoustic.speaker_emb.num_embeddings,
            },
            "dur_cond_dim": int(predictor.lstm.input_size - predictor.prenet.layers[-1].out_features),
            "dur_lstm_layers": int(predictor.lstm.num_layers),
            "dur_lstm_hidden": int(predictor.lstm.hidden_size),
            "memory_dim": int(cfg.memory_dim),
            "dec_layers": len(layers),
            "dec_heads": [int(layer.self_attn.n_heads) for layer in layers],
            "dec_d_head": [int(layer.self_attn.d_head) for layer in layers],
        },
        "vocoder": {"n_mels": int(vocoder.cfg.in_channels), "hop_length": int(vocoder.cfg.hop_length)},
    }


def _specs(acoustic: Sambert, vocoder: HifiGan) -> Dict[str, Dict[str, Any]]:
    """Per graph: wrapper, root module for error names, example args, input/output names, dynamic axes."""
    cfg = acoustic.cfg
    dims = model_meta(acoustic, vocoder)["acoustic"]
    n_layers, r = dims["dec_layers"], dims["r"]
    t, steps = _EXAMPLE_PHONES, _EXAMPLE_STEPS
    frames = steps * r
    phones = {1: "phones"}
    ids = tuple(torch.zeros(1, t, dtype=torch.long) for _ in ort_runtime.STREAMS)
    with torch.no_grad():
        c = acoustic._conditions(*ids)
    text, spk, emo, dur_cond = c["text"], c["spk"], c["emo"], c["dur_cond"]
    lstm = acoustic.variance_adaptor.duration_predictor.lstm
    state = torch.zeros(lstm.num_layers, 1, lstm.hidden_size)
    index = torch.tensor([[0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4]], dtype=torch.long)[:, :frames]
    index = F.pad(index, (0, frames - index.size(1)), value=t - 1)
    valid = torch.ones(1, frames)
    valid[:, -2:] = 0.0
    positions = torch.arange(1, frames + 1, dtype=torch.float32).unsqueeze(0) * valid

    mem_out = ["memory"] + [f"mem_{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]
    step_in = ["frame", "memory_step"] + [
        f"{name}_{i}" for i in range(n_layers) for name in ("past_k", "past_v", "mem_k", "mem_v")
    ]
    step_out = ["y"] + [f"{kv}_{i}" for i in range(n_layers) for kv in ("k", "v")]
    caches = []
    for layer in acoustic.decoder.layers:
        h, dh = layer.self_attn.n_heads, layer.self_attn.d_head
        caches += [torch.zeros(1, h, _EXAMPLE_PAST, dh)] * 2 + [torch.zeros(1, h, _EXAMPLE_WINDOW, dh)] * 2
    step_axes = {}
    for i in range(n_layers):
        step_axes.update({f"past_k_{i}": {2: "past"}, f"past_v_{i}": {2: "past"}})
        step_axes.update({f"mem_k_{i}": {2: "window"}, f"mem_v_{i}": {2: "window"}})
    mem_axes = {name: {2: "steps"} for name in mem_out[1:]}
    mem_axes.update({"memory": {1: "steps"}, "text": phones, "spk": phones, "emo": phones})
    mem_axes.update({"index": {1: "frames"}, "valid": {1: "frames"}, "positions": {1: "frames"}})
    mel = torch.zeros(1, cfg.n_mels, _EXAMPLE_MEL_FRAMES)
    return {
        "text": dict(
            wrapper=TextGraph(acoustic), root=acoustic, prefix="", args=ids,
            inputs=list(ort_runtime.STREAMS), outputs=["text", "spk", "emo", "dur_cond"],
            axes={name: phones for name in list(ort_runtime.STREAMS) + ["text", "spk", "emo", "dur_cond"]},
        ),
        "duration_step": dict(
            wrapper=DurationStepGraph(acoustic), root=acoustic, prefix="",
            args=(torch.zeros(1, 1, 1), dur_cond[:, :1], state, state),
            inputs=["x", "cond", "h", "c"], outputs=["y", "h_out", "c_out"], axes={},
        ),
        "memory": dict(
            wrapper=MemoryGraph(acoustic), root=acoustic, prefix="",
            args=(text, spk, emo, index, valid, positions),
            inputs=["text", "spk", "emo", "index", "valid", "positions"], outputs=mem_out, axes=mem_axes,
        ),
        "decoder_step": dict(
            wrapper=DecoderStepGraph(acoustic), root=acoustic, prefix="",
            args=(torch.zeros(1, 1, cfg.n_mels), torch.zeros(1, 1, dims["memory_dim"]), *caches),
            inputs=step_in, outputs=step_out, axes=step_axes,
        ),
        "postnet": dict(
            wrapper=PostnetGraph(acoustic), root=acoustic, prefix="",
            args=(torch.zeros(1, frames, cfg.n_mels), valid.unsqueeze(-1)),
            inputs=["dec", "keep"], outputs=["mel"],
            axes={"dec": {1: "frames"}, "keep": {1: "frames"}, "mel": {1: "frames"}},
        ),
        "vocoder": dict(
            wrapper=vocoder, root=vocoder, prefix="vocoder.", args=(mel,), inputs=["mel"], outputs=["wav"],
            axes={"mel": {2: "frames"}, "wav": {2: "samples"}},
        ),
    }


def export(acoustic: nn.Module, vocoder: nn.Module) -> Tuple[Dict[str, bytes], Dict[str, Any]]:
    """(graphs: name -> serialized ONNX, meta for config.json ``onnx``). ExportError when the models are
    not the reference fp32 Sambert/HifiGan or a module cannot be exported (the message names it)."""
    _check_reference(acoustic, vocoder)
    was_training = (acoustic.training, vocoder.training)
    acoustic.eval()
    vocoder.eval()
    graphs: Dict[str, bytes] = {}
    info: Dict[str, Any] = {}
    try:
        specs = _specs(acoustic, vocoder)
        for name in ort_runtime.GRAPHS:
            s = specs[name]
            data = _export_graph(name, s["wrapper"], s["root"], s["prefix"], s["args"], s["inputs"],
                                 s["outputs"], s["axes"])
            graphs[name] = data
            info[name] = _graph_info(data, s["inputs"], s["outputs"])
    finally:
        acoustic.train(was_training[0])
        vocoder.train(was_training[1])
    meta: Dict[str, Any] = {
        "opset": OPSET,
        "exporter": {"method": "torchscript", "torch": torch.__version__, "onnx": onnx.__version__},
        **model_meta(acoustic, vocoder),
        "graphs": info,
        "quantized": None,
    }
    return graphs, meta


# ------------------------------------------------------------------------------------------ quantization


def _component_graphs(component: str) -> Tuple[str, ...]:
    if component == "acoustic":
        return ort_runtime.ACOUSTIC_GRAPHS
    if component == "vocoder":
        return ort_runtime.VOCODER_GRAPHS
    if component == "both":
        return ort_runtime.GRAPHS
    raise ValueError(f"quantize: component {component!r} is not one of {', '.join(QUANT_COMPONENTS)}")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger: drop it."""

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logging.root.addFilter(drop)
    try:
        yield
    finally:
        logging.root.removeFilter(drop)


def quantize(
    graphs: Mapping[str, bytes],
    meta: Mapping[str, Any],
    component: str = "acoustic",
    ops: Sequence[str] = ("MatMul", "Gemm"),
) -> Tuple[Dict[str, bytes], Dict[str, Any]]:
    """ONNX Runtime dynamic int8 (``quantize_dynamic``, QInt8 weights, activations quantized on the fly) of
    the graphs of ``component`` ("acoustic", "vocoder", "both"), on the node types ``ops`` (MatMul and Gemm
    by default; "Conv" only when asked). Returns new graphs and meta (``quantized`` filled in, hashes
    updated); the inputs are left untouched."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = _component_graphs(component)
    ops = [str(op) for op in ops]
    if not ops:
        raise ValueError("quantize: ops must name at least one node type (e.g. MatMul)")
    if meta.get("quantized"):
        raise ValueError("quantize: these graphs are already quantized")
    out = dict(graphs)
    new_meta = dict(meta)
    new_meta["graphs"] = {k: dict(v) for k, v in meta["graphs"].items()}
    with tempfile.TemporaryDirectory(prefix="edgebench-ortq-") as tmp:
        for name in names:
            src = os.path.join(tmp, f"{name}.onnx")
            dst = os.path.join(tmp, f"{name}.int8.onnx")
            with open(src, "wb") as f:
                f.write(graphs[name])
            with warnings.catch_warnings(), _quiet_root_logger():
                warnings.simplefilter("ignore")
                quantize_dynamic(src, dst, op_types_to_quantize=ops, weight_type=QuantType.QInt8)
            with open(dst, "rb") as f:
                data = _normalized(f.read())
            out[name] = data
            info = new_meta["graphs"][name]
            info.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    new_meta["quantized"] = {
        "component": component,
        "ops": ops,
        "weight_type": "QInt8",
        "onnxruntime": onnxruntime.__version__,
    }
    return out, new_meta


# ------------------------------------------------------------------------------------------ agreement


def agreement(
    acoustic: nn.Module,
    vocoder: nn.Module,
    ort_acoustic: ort_runtime.OrtAcoustic,
    ort_vocoder: ort_runtime.OrtVocoder,
    inputs_list: Sequence[Mapping[str, torch.Tensor]],
) -> Dict[str, Any]:
    """The onnxruntime model against torch on each inputs dict (LongTensors [1,T]): ORT with torch's
    durations forced (mel: max abs and rms(diff)/rms(ref), max over items), each runtime's vocoder on the
    torch mel (max abs), and the phones whose ORT-predicted durations differ from torch's (total)."""
    out: Dict[str, Any] = {"n": 0, "mel_rel_rms": 0.0, "mel_max_abs": 0.0, "wav_max_abs": 0.0,
                           "durations_differ": 0}
    for inputs in inputs_list:
        with torch.inference_mode():
            ref = acoustic(**inputs)
            wav_ref = vocoder(ref.mel.transpose(1, 2)).numpy()
        durations = ref.durations.numpy()
        mel_ref = ref.mel.numpy()
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        predicted = ort_acoustic.durations(**arrays)
        forced = ort_acoustic(**arrays, durations=durations)
        wav = ort_vocoder(np.ascontiguousarray(mel_ref.transpose(0, 2, 1)))
        if forced.mel.shape != mel_ref.shape:
            raise ValueError(f"agreement: ORT mel {forced.mel.shape} != torch mel {mel_ref.shape}")
        diff = forced.mel.astype(np.float64) - mel_ref.astype(np.float64)
        out["n"] += 1
        out["mel_rel_rms"] = max(out["mel_rel_rms"], rel_rms(diff, mel_ref.astype(np.float64)))
        out["mel_max_abs"] = max(out["mel_max_abs"], float(np.abs(diff).max()) if diff.size else 0.0)
        if wav.shape != wav_ref.shape:
            raise ValueError(f"agreement: ORT wav {wav.shape} != torch wav {wav_ref.shape}")
        wav_diff = np.abs(wav.astype(np.float64) - wav_ref.astype(np.float64))
        out["wav_max_abs"] = max(out["wav_max_abs"], float(wav_diff.max()) if wav_diff.size else 0.0)
        out["durations_differ"] += int((predicted != durations).sum())
    return out


def graph_op_types(data: bytes) -> Dict[str, int]:
    """{op type: count} of a serialized graph (for tests and reports)."""
    counts: Dict[str, int] = {}
    for node in onnx.load_from_string(data).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
