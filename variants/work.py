"""Work counting: what each stage of a synthesis computes, counted from the operations it runs.

For one input (a sentence's phone ids), ``count_work`` runs the acoustic model and the vocoder once on
the controller under a torch dispatch mode that sees every operator call, and adds up per stage:

* ``macs``: multiply-accumulates of the operators that do the arithmetic: matrix products (``mm``,
  ``addmm``, ``bmm``, ``baddbmm``), convolutions (``convolution``, plain and transposed, any groups and
  dilation), LSTMs (``mkldnn_rnn_layer``, ``lstm``, ``quantized_lstm``: 4·H·(in + H) per step and
  direction) and dynamic int8 linears (``quantized::linear_dynamic``, shape from the packed weight).
  Element-wise work (activations, norms, softmax) is not counted: next to the products it is small, and
  its cost on a device shows up as dispatch overhead instead;
* ``ops``: operator calls, each one a trip through the runtime's dispatcher (views included: they cost a
  dispatch too). An autoregressive decoder makes thousands of tiny calls; their count times a device's
  per-call overhead is the floor of its time however fast the arithmetic;
* ``weight_bytes``: bytes of the stage's parameters and buffers as the artifact stores them (int8 for
  dynamic-quantized layers): what a stage must stream from memory at least once per call.

Stages are the acoustic model's top-level parts (``encoder`` with the emotion and speaker tables,
``variance_adaptor``, ``decoder``, ``postnet``; ``acoustic_other`` for the glue in the model's own code:
length regulation, masks) and ``vocoder``. An operation belongs to the innermost stage whose code is
running (found on the Python stack), so the decoder's step loop counts for the decoder even where the
loop body calls no module.

The counts are exact for the reference architecture (``tests/test_work.py`` checks them against formulas
written from the configuration) and for any model built from these operators; a model with other
arithmetic operators gets those counted as ops only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

#: Product shapes kept per stage in a manifest.
SHAPES_PER_STAGE = 3
ACOUSTIC_STAGES = ("encoder", "variance_adaptor", "decoder", "postnet", "acoustic_other")
STAGES = (*ACOUSTIC_STAGES, "vocoder")
#: Top-level children of the acoustic model counted with another stage.
_FOLDED = {"emotion_emb": "encoder", "speaker_emb": "encoder"}


@dataclass(frozen=True)
class StageWork:
    """What one stage did for one input."""

    stage: str
    macs: int
    ops: int
    weight_bytes: int

    def to_dict(self) -> dict:
        return {"stage": self.stage, "macs": self.macs, "ops": self.ops, "weight_bytes": self.weight_bytes}


@dataclass(frozen=True)
class Work:
    """The work of one synthesis: per stage, with the input's phones and the frames it produced."""

    phones: int
    frames: int
    stages: Mapping[str, StageWork]
    #: (stage, *shape) of the products -> their MACs, a shape being (rows, inner, columns) of a matrix
    #: product or (frames, channels in, channels out, kernel, groups) of a 1-D convolution: where each
    #: stage's arithmetic goes (a product of one row runs far below a device's peak)
    shapes: Mapping[tuple, int] = field(default_factory=dict)

    def stage_shapes(self, stage: str, n: int = SHAPES_PER_STAGE) -> list:
        """The ``n`` product shapes of ``stage`` with the most MACs: ``[*shape, macs]``."""
        mine = [(k[1:], v) for k, v in self.shapes.items() if k[0] == stage]
        return [[*shape, macs] for shape, macs in sorted(mine, key=lambda kv: (-kv[1], kv[0]))[:n]]

    def top_shapes(self, n: int = 12, per_stage: int = 2) -> list:
        """The ``per_stage`` busiest product shapes of each stage, most MACs first, at most ``n``: what the
        device micro-benchmarks time besides the large shape."""
        busiest = [s for stage in STAGES for s in self.stage_shapes(stage, per_stage)]
        return [s[:-1] for s in sorted(busiest, key=lambda s: -s[-1])[:n]]

    @property
    def acoustic(self) -> StageWork:
        parts = [self.stages[s] for s in ACOUSTIC_STAGES if s in self.stages]
        return StageWork("acoustic", sum(p.macs for p in parts), sum(p.ops for p in parts),
                         sum(p.weight_bytes for p in parts))

    def to_dict(self) -> dict:
        return {"phones": self.phones, "frames": self.frames,
                "stages": {name: {**w.to_dict(), "shapes": self.stage_shapes(name)}
                           for name, w in self.stages.items()},
                "top_shapes": self.top_shapes()}


# -------------------------------------------------------------------------------------- MAC formulas


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _mm(args) -> int:
    a, b = args[0], args[1]
    return _numel(a.shape[:-1]) * int(a.shape[-1]) * int(b.shape[-1])


def _linear(args) -> int:
    x, weight = args[0], args[1]     # weight [out, in]
    return _numel(x.shape[:-1]) * int(weight.shape[0]) * int(weight.shape[1])


def _matmul(args) -> int:
    a, b = args[0], args[1]
    a_shape = list(a.shape) if a.dim() > 1 else [1, int(a.shape[0])]
    b_shape = list(b.shape) if b.dim() > 1 else [int(b.shape[0]), 1]
    batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    return _numel(batch) * int(a_shape[-2]) * int(a_shape[-1]) * int(b_shape[-1])


def _conv(args, out) -> int:
    weight = args[1]                 # [C_out, C_in/groups, k...]: every output position meets the kernel
    return int(out.shape[0]) * _numel(out.shape[2:]) * _numel(weight.shape)


def _conv_transpose(args, out) -> int:
    x, weight = args[0], args[1]     # [C_in, C_out/groups, k...]: every input position meets the kernel
    return int(x.shape[0]) * _numel(x.shape[2:]) * _numel(weight.shape)


def _addmm(args) -> int:
    return _mm(args[1:3])


def _bmm(args) -> int:
    a, b = args[0], args[1]
    return int(a.shape[0]) * int(a.shape[1]) * int(a.shape[2]) * int(b.shape[2])


def _baddbmm(args) -> int:
    return _bmm(args[1:3])


def _convolution(args, out) -> int:
    transposed = bool(args[6]) if len(args) > 6 else False
    return _conv_transpose(args, out) if transposed else _conv(args, out)


def _mkldnn_rnn_layer(args) -> int:
    # (input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode, hidden_size, ...): one direction
    # of one layer
    x, w_ih, w_hh = args[0], args[1], args[2]
    steps = _numel(x.shape[:-1])
    return steps * (_numel(w_ih.shape) + _numel(w_hh.shape))


def _lstm_stack(x, hidden: int, num_layers: int, bidirectional: bool) -> int:
    """4·H·(in + H) per step, direction and layer; a layer after the first reads H per direction."""
    dirs = 2 if bidirectional else 1
    steps = _numel(x.shape[:-1])
    total = 0
    d_in = int(x.shape[-1])
    for _ in range(num_layers):
        total += dirs * steps * 4 * hidden * (d_in + hidden)
        d_in = hidden * dirs
    return total


def _lstm_input(args) -> int:
    # aten.lstm.input / aten.quantized_lstm.input: (input, hx, params, has_biases, num_layers, dropout,
    # train, bidirectional, batch_first, ...)
    x, hx = args[0], args[1]
    hidden = int(hx[0].shape[-1])
    return _lstm_stack(x, hidden, int(args[4]), bool(args[7]))


def _linear_dynamic(args) -> int:
    x, packed = args[0], args[1]
    weight = torch.ops.quantized.linear_unpack(packed)[0]   # [out, in]
    return _numel(x.shape[:-1]) * int(weight.shape[0]) * int(weight.shape[1])


#: (operator, overload, rule(args, out) -> MACs). Under inference_mode (how the agent synthesizes) the
#: dispatcher hands over composite operators (linear, matmul, conv1d, lstm) whole; under no_grad their
#: parts (addmm, bmm, convolution, mkldnn_rnn_layer). Both are here; an overload a torch build does not
#: have is skipped.
_RULES = (
    ("linear", "default", lambda a, o: _linear(a)),
    ("matmul", "default", lambda a, o: _matmul(a)),
    ("conv1d", "default", _conv),
    ("conv1d", "padding", _conv),
    ("conv2d", "default", _conv),
    ("conv_transpose1d", "default", _conv_transpose),
    ("conv_transpose1d", "input", _conv_transpose),
    ("mm", "default", lambda a, o: _mm(a)),
    ("addmm", "default", lambda a, o: _addmm(a)),
    ("bmm", "default", lambda a, o: _bmm(a)),
    ("baddbmm", "default", lambda a, o: _baddbmm(a)),
    ("convolution", "default", _convolution),
    ("lstm", "input", lambda a, o: _lstm_input(a)),
    ("quantized_lstm", "input", lambda a, o: _lstm_input(a)),
    ("mkldnn_rnn_layer", "default", lambda a, o: _mkldnn_rnn_layer(a)),
)


def _ints(value, default: int) -> list:
    if value is None:
        return [default]
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _conv1d_shape(args, out) -> Optional[tuple]:
    """(frames out, channels in, channels out, kernel, groups) of a stride-1, dilation-1 1-D convolution of
    batch 1, else None."""
    x, weight = args[0], args[1]
    if weight.dim() != 3 or x.dim() != 3 or int(x.shape[0]) != 1:
        return None
    stride = _ints(args[3] if len(args) > 3 else None, 1)
    dilation = _ints(args[5] if len(args) > 5 else None, 1)
    if stride != [1] or dilation != [1]:
        return None
    groups = int(args[-1]) if len(args) > 6 else 1
    return (int(out.shape[-1]), int(x.shape[1]), int(weight.shape[0]), int(weight.shape[2]), groups)


def _product_shape(func, args, out) -> Optional[tuple]:
    """Where a product's MACs went, as the device micro-benchmarks can time it again: ``(rows, inner,
    columns)`` of a 2-D product the way a linear layer runs it, ``(frames, channels in, channels out,
    kernel, groups)`` of a 1-D convolution; else None."""
    name = getattr(func, "__name__", "")
    try:
        if name.startswith("conv1d."):
            return _conv1d_shape(args, out)
        if name.startswith("convolution.") and not (len(args) > 6 and args[6]):
            return _conv1d_shape(args, out)
        if name.startswith("linear.") or name.startswith("linear_dynamic"):
            weight = args[1] if name.startswith("linear.") else torch.ops.quantized.linear_unpack(args[1])[0]
            return (_numel(args[0].shape[:-1]), int(weight.shape[1]), int(weight.shape[0]))
        if name.startswith("addmm."):
            return (int(args[1].shape[0]), int(args[1].shape[1]), int(args[2].shape[1]))
        if name.startswith("mm."):
            return (int(args[0].shape[0]), int(args[0].shape[1]), int(args[1].shape[1]))
    except (AttributeError, IndexError, RuntimeError):
        return None
    return None


def _mac_rules() -> Dict[Any, Callable]:
    rules: Dict[Any, Callable] = {}
    for name, overload, rule in _RULES:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and overload in packet.overloads():
            rules[getattr(packet, overload)] = rule
    try:
        rules[torch.ops.quantized.linear_dynamic.default] = lambda a, o: _linear_dynamic(a)
    except (AttributeError, RuntimeError):   # a torch without the quantized engines
        pass
    return rules


# ----------------------------------------------------------------------------------------- counting


class _Counter(TorchDispatchMode):
    """Counts operator calls and MACs per stage; the stage is that of the innermost running Python
    function that belongs to one stage's classes (``_code_owners``)."""

    def __init__(self, owners: Mapping[Any, str], shared: set, modules: Mapping[int, str], default: str):
        super().__init__()
        self.owners = owners
        self.shared = shared
        self.modules = modules
        self.default = default
        self.rules = _mac_rules()
        self.macs: Dict[str, int] = {}
        self.ops: Dict[str, int] = {}
        self.shapes: Dict[tuple, int] = {}

    def _stage(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            stage = self.owners.get(frame.f_code)
            if stage is not None:
                return stage
            if frame.f_code in self.shared:   # e.g. nn.Conv1d.forward: whose module is it?
                stage = self.modules.get(id(frame.f_locals.get("self")))
                if stage is not None:
                    return stage
            frame = frame.f_back
        return self.default

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        stage = self._stage()
        self.ops[stage] = self.ops.get(stage, 0) + 1
        rule = self.rules.get(func)
        if rule is not None:
            macs = int(rule(args, out))
            self.macs[stage] = self.macs.get(stage, 0) + macs
            shape = _product_shape(func, args, out)
            if shape is not None:
                key = (stage, *shape)
                self.shapes[key] = self.shapes.get(key, 0) + macs
        return out


def _stage_of(child: str) -> str:
    """The stage of the acoustic model's top-level child ``child``."""
    return _FOLDED.get(child, child if child in ACOUSTIC_STAGES else "acoustic_other")


def _stage_modules(acoustic: nn.Module, vocoder: nn.Module) -> Dict[str, list]:
    stages: Dict[str, list] = {stage: [] for stage in STAGES}
    stages["acoustic_other"].append(acoustic)
    for name, child in acoustic.named_children():
        stage = _stage_of(name)
        stages[stage].extend(child.modules())
    stages["vocoder"].extend(vocoder.modules())
    return stages


def _code_owners(acoustic: nn.Module, vocoder: nn.Module) -> tuple:
    """(code object -> stage, shared code objects, id(module) -> stage).

    The methods of a class whose modules all belong to one stage belong to that stage. A class used by
    several stages (nn.Linear, LayerNorm, an FSMN used by the predictors and the post-net) is shared: a
    frame running its code is attributed by the module it runs on. Looking up code objects first keeps
    the walk up the stack cheap (a frame's locals are read only for shared code)."""
    stages_of: Dict[type, set] = {}
    modules: Dict[int, str] = {}
    for stage, members in _stage_modules(acoustic, vocoder).items():
        for module in members:
            modules.setdefault(id(module), stage)
            for cls in type(module).__mro__:
                if cls is nn.Module or cls is object:
                    break
                stages_of.setdefault(cls, set()).add(stage)
    owners: Dict[Any, str] = {}
    shared: set = set()
    for cls, stages in stages_of.items():
        for attr in vars(cls).values():
            code = getattr(getattr(attr, "__func__", attr), "__code__", None)   # staticmethod, classmethod
            if code is None:
                continue
            if len(stages) == 1:
                owners[code] = next(iter(stages))
            else:
                shared.add(code)
    return owners, shared, modules


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's stored tensors (its state_dict: parameters, buffers, and the int8 weights
    inside dynamic-quantized layers' packed parameters)."""

    def size(value: Any, depth: int = 0) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(size(v, depth + 1) for v in value)
        if isinstance(value, torch._C.ScriptObject) and depth < 8:   # packed params: their own state
            try:
                return size(value.__getstate__(), depth + 1)
            except (RuntimeError, AttributeError):
                return 0
        return 0

    return sum(size(v) for v in module.state_dict().values())


def _stage_weight_bytes(acoustic: nn.Module, vocoder: nn.Module) -> Dict[str, int]:
    out = {stage: 0 for stage in STAGES}
    counted = 0
    for name, child in acoustic.named_children():
        stage = _stage_of(name)
        b = weight_bytes(child)
        out[stage] += b
        counted += b
    out["acoustic_other"] += max(0, weight_bytes(acoustic) - counted)   # the model's own buffers
    out["vocoder"] = weight_bytes(vocoder)
    return out


def count_work(acoustic: nn.Module, vocoder: nn.Module, inputs: Mapping[str, torch.Tensor],
               synthesize: Optional[Callable[[nn.Module, nn.Module, Mapping[str, torch.Tensor]], Any]] = None
               ) -> Work:
    """Run one synthesis of ``inputs`` (the acoustic model's keyword arguments: ``sy``, ``tone``,
    ``syllable_flag``, ``word_segment``, ``emotion``, ``speaker``, each [1, phones]) and count its work.

    ``synthesize(acoustic, vocoder, inputs)`` runs it (default: the reference models' call: the acoustic
    model, then the vocoder on its mel) and returns the number of mel frames produced."""
    synthesize = synthesize or _reference_synthesis
    counter = _Counter(*_code_owners(acoustic, vocoder), "acoustic_other")
    with torch.inference_mode(), counter:
        frames = int(synthesize(acoustic, vocoder, inputs))
    sizes = _stage_weight_bytes(acoustic, vocoder)
    stages = {stage: StageWork(stage, counter.macs.get(stage, 0), counter.ops.get(stage, 0), sizes[stage])
              for stage in STAGES}
    phones = int(next(iter(inputs.values())).shape[-1])
    return Work(phones=phones, frames=frames, stages=stages, shapes=dict(counter.shapes))


def _reference_synthesis(acoustic, vocoder, inputs) -> int:
    out = acoustic(**inputs)
    # the reference model reports its frames; a plugin model following its conventions has the mel
    frames = int(out.frames.max()) if getattr(out, "frames", None) is not None else int(out.mel.shape[1])
    vocoder(out.mel.transpose(1, 2))
    return frames


# ------------------------------------------------------------------------------ per sentence, manifest

#: Version of the manifest's ``work`` entry (a different one is counted again).
WORK_VERSION = 3
#: The emotion a sentence is counted with; a sample of another emotion is scaled by its frames.
COUNT_EMOTION = "neutral"
#: Stages whose work grows with the phones of the input; the others grow with the mel frames.
PER_PHONE = ("encoder", "variance_adaptor")


def counted_sentences(classes) -> list:
    """The corpus sentences counted for ``classes``: the first of each class (canonical order). A sample
    of another sentence of the class is scaled from it by phones and frames (``scale``)."""
    from devices.ondevice.corpus import default_corpus

    out = []
    for cls in classes:
        first = next((s for s in default_corpus(0) if s.length_class == cls), None)
        if first is not None:
            out.append(first)
    return out


def count_corpus(acoustic: nn.Module, vocoder: nn.Module, symbols, classes) -> dict:
    """The manifest's ``work`` entry: the work of one sentence per length class (``counted_sentences``),
    and the model's largest product shapes (what the device's micro-benchmarks also time)."""
    from devices.ondevice.frontend import text_to_ids

    sentences: Dict[str, dict] = {}
    top: list = []
    for sentence in counted_sentences(classes):
        inputs = text_to_ids(sentence.text, emotion=COUNT_EMOTION, symbols=symbols).to_tensors()
        work = count_work(acoustic, vocoder, inputs)
        sentences[sentence.id] = {"length_class": sentence.length_class, **work.to_dict()}
        if not top:   # the first (shortest) sentence's; another length's rows are timed as the nearest
            top = work.top_shapes()
    return {"version": WORK_VERSION, "emotion": COUNT_EMOTION, "sentences": sentences, "top_shapes": top,
            "runtime_ops": True}


def scale(entry: Mapping[str, Any], length_class: str, phones: int, frames: int) -> Optional[dict]:
    """Per stage {macs, ops, weight_bytes} of a sample of ``length_class`` with ``phones`` and ``frames``,
    from the manifest's ``work`` entry: the class's counted sentence scaled by phones (encoder, variance
    adaptor) or frames (the rest); exact for the counted sentence itself. None without a count for the
    class."""
    counted = next((w for w in (entry.get("sentences") or {}).values()
                    if w.get("length_class") == length_class), None)
    if counted is None or not counted.get("phones") or not counted.get("frames"):
        return None
    out = {}
    for stage, w in counted["stages"].items():
        f = phones / counted["phones"] if stage in PER_PHONE else frames / counted["frames"]
        out[stage] = {"macs": w["macs"] * f, "ops": w["ops"] * f if w.get("ops") is not None else None,
                      "weight_bytes": w["weight_bytes"],
                      "shapes": [[*s[:-1], s[-1] * f] for s in w.get("shapes") or []]}
    return out
