"""Recipes: a variant is a named, ordered list of compression steps with parameters.

A recipe is validated completely before any model is built or any file is written:
unknown steps or parameters, values of the wrong type or outside their range, steps in an
impossible order (nothing can follow ``quantize``) and, given the model configuration, pruning
that would remove every head or FFN channel of a layer all raise :class:`RecipeError` with a
message naming where the recipe came from (``source``), the step and the parameter.

Serialised form (stored in the manifest, accepted from user configuration)::

    [{"step": "prune", "heads": 0.5, "ffn": 0.6}, {"step": "quantize"}]

Built-in variants (:data:`BUILTIN_VARIANTS`) reproduce the rows of the seed article's method
comparison table: ``original`` (fp32, no step: the original implementation's cost), ``pruned``
(structured), ``quantized`` (dynamic int8), ``pruned+quantized``, ``unstructured`` (L1, masks folded in:
same size on disk) and ``distilled`` (a shallower student); ``optimized`` adds edgebench's faster
implementation of the same weights (``optimize``: kernel-1 convolutions as Linear, banded decoder
attention with a preallocated cache), so what the rewrite alone buys is measured on its own. None of the
other built-ins includes ``optimize``; a custom recipe can (``[{step = "optimize"}, {step = "quantize"}]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from variants.errors import RecipeError

# Module paths structured pruning may touch (and so may be named in ``protect``).
_PRUNABLE = re.compile(
    r"^(encoder\.layers\.(\d+)\.(attn|ffn)|decoder\.layers\.(\d+)\.(self_attn|cross_attn|ffn))$"
)
_VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_+\-]{0,63}$")
QUANT_MODULES = ("Linear", "LSTM", "GRU")
ONNX_QUANT_OPS = ("MatMul", "Gemm", "Conv", "LSTM")
REFERENCE_CONFIG_KEYS = ("enc_heads", "enc_ffn", "dec_heads", "dec_ffn")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a step: its type, default and a range check returning an error text or None."""

    kind: str  # "ratio" | "fraction" | "int" | "float" | "choice" | "names"
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Return (normalised value, error text or None)."""
        if self.kind in ("ratio", "fraction", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return value, f"expected a number, got {value!r}"
            value = float(value)
            if self.kind == "ratio" and not 0.0 <= value < 1.0:
                return value, f"must be in [0, 1), got {value}"
            if self.kind == "fraction" and not 0.0 < value <= 1.0:
                return value, f"must be in (0, 1], got {value}"
            if self.kind == "float" and (
                (self.low is not None and value < self.low) or (self.high is not None and value > self.high)
            ):
                return value, f"must be in [{self.low}, {self.high}], got {value}"
            return value, None
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return value, f"expected an integer, got {value!r}"
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                return value, f"must be in [{int(self.low)}, {int(self.high)}], got {value}"
            return value, None
        if self.kind == "choice":
            if value not in self.choices:
                return value, f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
            return value, None
        if self.kind == "names":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                return value, f"expected a list of names, got {value!r}"
            bad = [v for v in value if not isinstance(v, str) or (self.choices and v not in self.choices)]
            if bad:
                allowed = f" (allowed: {', '.join(self.choices)})" if self.choices else ""
                return value, f"unknown name(s) {bad!r}{allowed}"
            return tuple(value), None
        raise RuntimeError(f"bad ParamSpec kind {self.kind}")  # programming error


@dataclass(frozen=True)
class StepSpec:
    name: str
    doc: str
    params: Mapping[str, ParamSpec]


STEPS: dict[str, StepSpec] = {
    "prune": StepSpec(
        "prune",
        "Structured pruning of the acoustic model: whole attention heads and FFN channels, tensors shrink.",
        {
            "heads": ParamSpec("ratio", 0.5, "fraction of attention heads removed per prunable layer"),
            "ffn": ParamSpec("ratio", 0.6, "fraction of FFN channels removed per prunable layer"),
            "importance": ParamSpec(
                "choice", "activation", "how heads/channels are ranked", choices=("activation", "weight_norm")
            ),
            "calibration_sentences": ParamSpec(
                "int", 4, "corpus sentences used for activation importance", low=1, high=64
            ),
            "protect": ParamSpec(
                "names",
                ("encoder.layers.0.attn",),
                "module paths never pruned (embeddings and positional encodings never are)",
            ),
        },
    ),
    "unstructured_prune": StepSpec(
        "unstructured_prune",
        "L1 unstructured pruning of attention/FFN weights (torch.nn.utils.prune), masks folded in.",
        {"amount": ParamSpec("ratio", 0.4, "fraction of weights zeroed in every attention/FFN projection")},
    ),
    "quantize": StepSpec(
        "quantize",
        "Dynamic quantization (torch.ao.quantization.quantize_dynamic) of one component.",
        {
            "dtype": ParamSpec("choice", "qint8", "weight dtype", choices=("qint8", "float16")),
            "modules": ParamSpec(
                "names", ("Linear", "LSTM"), "module types quantized", choices=QUANT_MODULES
            ),
            "component": ParamSpec("choice", "acoustic", "which model", choices=("acoustic", "vocoder")),
            "onnx_ops": ParamSpec(
                "names", ("MatMul", "Gemm"),
                "ONNX op types quantized (onnxruntime.quantization dynamic int8, QInt8 weights) when the "
                "variant runs on onnxruntime; Conv is opt-in: int8 convolutions made vocoders slower in "
                "published measurements",
                choices=ONNX_QUANT_OPS,
            ),
        },
    ),
    "optimize": StepSpec(
        "optimize",
        "edgebench's faster implementation of the same weights: kernel-1 convs as Linear (so dynamic int8 "
        "reaches them), banded decoder attention with a preallocated cache. Outputs equal within 1e-5.",
        {},
    ),
    "distill": StepSpec(
        "distill",
        "Shallower student (fewer encoder/decoder layers) trained to match the teacher's mel output.",
        {
            "layers": ParamSpec("fraction", 0.5, "fraction of encoder and decoder layers the student keeps"),
            "steps": ParamSpec("int", 60, "optimizer steps", low=0, high=1000),
            "lr": ParamSpec("float", 1e-3, "Adam learning rate", low=1e-6, high=1.0),
            "sentences": ParamSpec(
                "int", 8, "generated training sentences (teacher mels cached)", low=1, high=256
            ),
        },
    ),
}


@dataclass(frozen=True)
class Step:
    """One validated step with every parameter filled in (defaults included)."""

    op: str
    params: tuple = ()  # sorted (key, value) pairs; values are hashable (lists become tuples)

    @property
    def args(self) -> dict:
        return dict(self.params)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"step": self.op}
        for k, v in self.params:
            out[k] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple = field(default_factory=tuple)
    description: str = ""

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.steps]

    def prefix(self, n: int) -> Recipe:
        return Recipe(self.name if n == len(self.steps) else f"{self.name}[:{n}]", self.steps[:n])

    @property
    def dirname(self) -> str:
        return variant_dirname(self.name)


def variant_dirname(name: str) -> str:
    """Directory name of a variant on disk: ``pruned+quantized`` -> ``pruned-quantized``."""
    return name.replace("+", "-")


def make_step(op: str, source: str = "recipe", index: int = 1, **params: Any) -> Step:
    """Validate one step (type and range of every parameter) and fill in defaults."""
    where = f"{source}: step {index}"
    spec = STEPS.get(op)
    if spec is None:
        raise RecipeError(f"{where}: unknown step {op!r} (known steps: {', '.join(sorted(STEPS))})")
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise RecipeError(
            f"{where} ({op!r}): unknown parameter {unknown[0]!r} (known: {', '.join(sorted(spec.params))})"
        )
    values = {}
    for key, pspec in spec.params.items():
        value, err = pspec.coerce(params[key]) if key in params else (pspec.default, None)
        if err:
            raise RecipeError(f"{where} ({op!r}).{key}: {err}")
        values[key] = value
    if op == "prune":
        for name in values["protect"]:
            if not _PRUNABLE.match(name):
                raise RecipeError(
                    f"{where} ('prune').protect: {name!r} is not a prunable module path "
                    "(expected e.g. 'encoder.layers.0.attn', 'decoder.layers.3.ffn')"
                )
    return Step(op, tuple(sorted(values.items())))


def _check_order(steps: Sequence[Step], source: str) -> None:
    for i, step in enumerate(steps):
        if step.op == "quantize" and i != len(steps) - 1:
            nxt = steps[i + 1].op
            raise RecipeError(
                f"{source}: step {i + 2} ({nxt!r}) comes after 'quantize' (step {i + 1}): quantized weights "
                "cannot be pruned, distilled or quantized again; put 'quantize' last"
            )


def parse_recipe(obj: Any, source: str, name: str = "custom") -> Recipe:
    """Turn user configuration into a validated :class:`Recipe`.

    ``obj`` is a list of step tables (``[{"step": "prune", "heads": 0.25}, {"step": "quantize"}]``) or a
    table with a ``steps`` list (and optional ``description``). ``source`` names the file and key the
    recipe came from (``"edgebench.toml: variants.small"``); every error message starts with it.
    """
    description = ""
    if isinstance(obj, Mapping):
        extra = sorted(set(obj) - {"steps", "description"})
        if extra:
            raise RecipeError(f"{source}: unknown key {extra[0]!r} (a recipe has 'steps' and 'description')")
        if "steps" not in obj:
            raise RecipeError(f"{source}: missing 'steps' (a list of step tables)")
        description = str(obj.get("description", ""))
        obj = obj["steps"]
    if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
        raise RecipeError(f"{source}: expected a list of steps, got {type(obj).__name__}")
    if not _VARIANT_NAME.match(name):
        raise RecipeError(f"{source}: invalid variant name {name!r} (lower-case letters, digits, _ + -)")
    steps = []
    for i, raw in enumerate(obj, start=1):
        if not isinstance(raw, Mapping):
            raise RecipeError(f'{source}: step {i}: expected a table like {{step = "prune"}}, got {raw!r}')
        if "step" not in raw:
            raise RecipeError(f"{source}: step {i}: missing 'step' (one of {', '.join(sorted(STEPS))})")
        params = {k: v for k, v in raw.items() if k != "step"}
        steps.append(make_step(str(raw["step"]), source, i, **params))
    _check_order(steps, source)
    return Recipe(name, tuple(steps), description)


def recipe_from_list(name: str, steps: Sequence[Mapping], source: str = "manifest") -> Recipe:
    return parse_recipe(list(steps), source, name=name)


# ---------------------------------------------------------------------------------------------
# Model-dependent checks: pure arithmetic on the config dict, shared with prune.py / distill.py.


def n_removed(total: int, ratio: float) -> int:
    """How many of ``total`` heads/channels a ratio removes (round half up; never negative)."""
    return int(total * ratio + 0.5)


def _acoustic_lists(model_config: Mapping | None, op: str, source: str) -> dict:
    ac = (model_config or {}).get("acoustic") if isinstance(model_config, Mapping) else None
    if not isinstance(ac, Mapping) or any(not isinstance(ac.get(k), list) for k in REFERENCE_CONFIG_KEYS):
        raise RecipeError(
            f"{source}: step {op!r} needs the reference Sambert structure (config acoustic.enc_heads, "
            "enc_ffn, dec_heads, dec_ffn lists); this model's config does not have them"
        )
    return {k: list(ac[k]) for k in REFERENCE_CONFIG_KEYS}


def plan_prune(model_config: Mapping, args: Mapping, source: str = "recipe") -> dict:
    """Per-layer counts after structured pruning: {"enc_heads": [...], "enc_ffn": [...], ...}.

    Raises RecipeError if a layer would lose every head or channel, or ``protect`` names a layer
    the model does not have.
    """
    lists = _acoustic_lists(model_config, "prune", source)
    protect = set(args.get("protect", ()))
    for name in protect:
        m = _PRUNABLE.match(name)
        if m.group(2) is not None:
            idx, n = int(m.group(2)), len(lists["enc_heads"])
        else:
            idx, n = int(m.group(4)), len(lists["dec_heads"])
        if idx >= n:
            raise RecipeError(
                f"{source}: step 'prune'.protect: {name!r} does not exist (the model has {n} such layers)"
            )
    out = {}
    for side, attn_names in (("enc", ("attn",)), ("dec", ("self_attn", "cross_attn"))):
        prefix = "encoder" if side == "enc" else "decoder"
        heads, ffn = [], []
        for i, (h, f) in enumerate(zip(lists[f"{side}_heads"], lists[f"{side}_ffn"])):
            attn_protected = any(f"{prefix}.layers.{i}.{a}" in protect for a in attn_names)
            k = 0 if attn_protected else n_removed(h, args["heads"])
            if k >= h:
                raise RecipeError(
                    f"{source}: step 'prune'.heads={args['heads']} would remove every head of "
                    f"{prefix}.layers.{i} ({h} heads); lower the ratio or protect the layer"
                )
            c = 0 if f"{prefix}.layers.{i}.ffn" in protect else n_removed(f, args["ffn"])
            if c >= f:
                raise RecipeError(
                    f"{source}: step 'prune'.ffn={args['ffn']} would remove every channel of "
                    f"{prefix}.layers.{i}.ffn ({f} channels); lower the ratio"
                )
            heads.append(h - k)
            ffn.append(f - c)
        out[f"{side}_heads"], out[f"{side}_ffn"] = heads, ffn
    return out


def plan_distill(model_config: Mapping, args: Mapping, source: str = "recipe") -> dict:
    """Indices of teacher layers the student keeps: {"encoder": [...], "decoder": [...]} (evenly spaced)."""
    lists = _acoustic_lists(model_config, "distill", source)
    out = {}
    for side, key in (("encoder", "enc_heads"), ("decoder", "dec_heads")):
        n = len(lists[key])
        keep = max(1, int(n * args["layers"] + 0.5))
        # evenly spaced, always including layer 0 (the encoder's first layer changes the width)
        if keep > 1:
            out[side] = sorted({int(round(j * (n - 1) / (keep - 1))) for j in range(keep)})
        else:
            out[side] = [0]
    return out


def _apply_plan_to_config(model_config: dict, step: Step, source: str) -> dict:
    """Config after a step (only the dims validation needs); used to check multi-step recipes."""
    if step.op == "prune":
        plan = plan_prune(model_config, step.args, source)
        return {**model_config, "acoustic": {**model_config["acoustic"], **plan}}
    if step.op == "distill":
        keep = plan_distill(model_config, step.args, source)
        ac = dict(model_config["acoustic"])
        for side, (hk, fk) in (("encoder", ("enc_heads", "enc_ffn")), ("decoder", ("dec_heads", "dec_ffn"))):
            ac[hk] = [ac[hk][i] for i in keep[side]]
            ac[fk] = [ac[fk][i] for i in keep[side]]
        return {**model_config, "acoustic": ac}
    return model_config


def check_recipe(recipe: Recipe, model_config: Mapping | None, source: str | None = None) -> None:
    """Validate a recipe against a model configuration (dict form) before any work."""
    source = source or f"variant {recipe.name!r}"
    _check_order(recipe.steps, source)
    cfg = dict(model_config) if isinstance(model_config, Mapping) else None
    for step in recipe.steps:
        if step.op in ("prune", "distill"):
            # raises RecipeError if the model lacks the structure
            cfg = _apply_plan_to_config(cfg, step, source)


def _builtin(name: str, description: str, *steps: tuple) -> Recipe:
    return Recipe(
        name,
        tuple(make_step(op, f"builtin {name}", i, **p) for i, (op, p) in enumerate(steps, 1)),
        description,
    )


BUILTIN_VARIANTS: dict[str, Recipe] = {
    r.name: r
    for r in (
        _builtin("original", "fp32 reference (the original implementation)"),
        _builtin("optimized", "the same weights, edgebench's faster implementation", ("optimize", {})),
        _builtin("pruned", "structured: attention heads + FFN channels", ("prune", {})),
        _builtin("quantized", "dynamic int8 (Linear, LSTM) of the acoustic model", ("quantize", {})),
        _builtin(
            "pruned+quantized", "structured pruning, then dynamic int8", ("prune", {}), ("quantize", {})
        ),
        _builtin(
            "unstructured", "L1 unstructured pruning, masks removed (same size)", ("unstructured_prune", {})
        ),
        _builtin("distilled", "half-depth student trained on the original's mels", ("distill", {})),
    )
}
DEFAULT_VARIANTS = ("original", "optimized", "pruned", "quantized", "pruned+quantized")


def resolve_variants(names: Sequence[str], user_recipes: Mapping[str, Recipe] | None = None) -> list[Recipe]:
    """Look up variant names among user recipes (first) and the built-ins; unknown names raise RecipeError."""
    user_recipes = user_recipes or {}
    out, seen = [], set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        recipe = user_recipes.get(name) or BUILTIN_VARIANTS.get(name)
        if recipe is None:
            known = sorted(set(BUILTIN_VARIANTS) | set(user_recipes))
            raise RecipeError(f"unknown variant {name!r} (known: {', '.join(known)})")
        if recipe.name != name:
            recipe = Recipe(name, recipe.steps, recipe.description)
        out.append(recipe)
    return out
