"""Build variants: original model -> recipe steps -> artifact directories (through the build cache).

``build_variants`` validates every requested recipe against the model configuration first (RecipeError
before any work), then materialises each recipe prefix once: the artifact of ``[prune]`` is the parent of
``[prune, quantize]``, and every prefix is a build-cache entry keyed by (model, recipe prefix, seed, code
version). Finished artifacts are copied from the cache into ``out/<variant dir>``. Quality proxies
(variants.quality) and the listening samples (``samples/<emotion>.wav``) are computed once per cache entry.
"""

from __future__ import annotations

import copy
import io
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from variants import artifact as art
from variants.cache import BuildCache, cache_key, code_version
from variants.errors import VariantsError
from variants.recipes import BUILTIN_VARIANTS, DEFAULT_VARIANTS, Recipe, Step, check_recipe, resolve_variants
from variants.runtimes import measured_name

SAMPLE_RATE = 16000
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltVariant:
    name: str
    path: Path
    manifest: Dict[str, Any]
    cached: bool


@dataclass
class _Node:
    """One materialised recipe prefix: its cache entry and (when built or loaded here) its models."""

    key: str
    path: Path
    cached: bool
    model: Dict[str, Any]  # config.json "model" section
    transforms: List[Dict[str, Any]]
    acoustic: Optional[nn.Module] = None
    vocoder: Optional[nn.Module] = None
    runtime: str = "torch"

    def models(self) -> Tuple[Any, Any]:
        """The node's models: torch modules, or for an onnxruntime node its sessions behind torch-like calls
        (``TorchFacade``: tensors in, tensors out), so samples and quality proxies treat both alike."""
        if self.acoustic is None or self.vocoder is None:
            if self.runtime == "onnxruntime":
                from devices.ondevice import ort

                acoustic, vocoder = ort.load(self.path, threads=1)
                self.acoustic, self.vocoder = TorchFacade(acoustic), TorchFacade(vocoder)
            else:
                loaded = art.load_artifact(self.path)
                self.acoustic, self.vocoder = loaded.acoustic, loaded.vocoder
        return self.acoustic, self.vocoder


class TorchFacade:
    """An onnxruntime model (``devices.ondevice.ort``) called like the torch one: tensors in (numpy to ORT),
    tensors out; the acoustic model's result has ``mel`` and ``durations`` like ``AcousticOutput``."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        def arr(v):
            return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v

        out = self.model(*(arr(a) for a in args), **{k: arr(v) for k, v in kwargs.items()})
        if hasattr(out, "mel"):
            return _FacadeOutput(torch.from_numpy(out.mel), torch.from_numpy(out.durations))
        return torch.from_numpy(out)


@dataclass(frozen=True)
class _FacadeOutput:
    mel: torch.Tensor
    durations: torch.Tensor


def _quiet(_msg: str) -> None:
    pass


class _Builder:
    def __init__(
        self,
        model: Dict[str, Any],
        preset: Optional[str],
        seed: int,
        cache: BuildCache,
        quality: bool,
        progress: Progress,
        quality_sentences: int = 2,
        voice=None,
    ) -> None:
        self.voice = voice  # variants.modelscope.Voice: the root's weights come from a model directory
        self.model = model
        self.preset = preset
        self.seed = seed
        self.cache = cache
        self.quality = quality
        self.quality_sentences = quality_sentences
        self.progress = progress
        self.code = code_version()
        self.nodes: Dict[str, _Node] = {}
        self._reference = None
        self.symbols = art.symbol_table({"model": model})
        # what identifies the root's weights in the cache: the checkpoints' hashes, not where they lie
        self.key_model = dict(model)
        if voice is not None:
            self.key_model["source"] = {k: v for k, v in voice.source.items() if k != "model_dir"}

    # -------------------------------------------------------------------------------- model factory
    def build_pair(self, model: Mapping[str, Any]) -> Tuple[nn.Module, nn.Module]:
        if self.voice is not None:
            from variants.modelscope import build_voice

            return build_voice(self.voice)
        from variants.plugin import build_models

        return build_models(model["factory"], model["config"], self.seed)

    def build_acoustic_for(self, factory: str) -> Callable[[Dict], nn.Module]:
        def build(cfg: Dict) -> nn.Module:
            return art.build_structure({"factory": factory, "config": cfg}, "acoustic", seed=self.seed)

        return build

    # -------------------------------------------------------------------------------- inputs
    def calibration(self, n: int) -> List[Dict[str, torch.Tensor]]:
        from devices.ondevice.corpus import default_corpus
        from devices.ondevice.frontend import EMOTIONS, text_to_ids

        corpus = [s for s in default_corpus(seed=0) if s.length_class in ("short", "medium")]
        return [
            text_to_ids(
                corpus[i % len(corpus)].text, emotion=EMOTIONS[i % len(EMOTIONS)], symbols=self.symbols
            ).to_tensors()
            for i in range(n)
        ]

    def reference(self):
        if self._reference is None:
            from variants.quality import build_reference, evaluation_sentences

            self.progress("quality: running the original on the evaluation set")
            sentences = evaluation_sentences(self.quality_sentences)
            self._reference = build_reference(self.root().models()[0], sentences, symbols=self.symbols)
        return self._reference

    # -------------------------------------------------------------------------------- nodes
    def root(self) -> _Node:
        return self.node(())

    def node(self, steps: Tuple[Step, ...], name: str = "original") -> _Node:
        """The artifact of a recipe prefix: from this build, from the cache, or built now (parents first)."""
        recipe_list = [s.to_dict() for s in steps]
        key = cache_key(self.key_model, recipe_list, self.seed, self.code)
        if key in self.nodes:
            return self.nodes[key]
        hit = self._cached(key)
        if hit is not None:
            return hit
        parent = self.node(steps[:-1], _prefix_name(steps[:-1], name)) if steps else None
        started = time.perf_counter()
        if parent is None:
            where = f" from {self.voice.source['model_dir']}" if self.voice is not None else ""
            verb = "loading" if where else "building"
            self.progress(f"{name}: {verb} the original model{where}")
            acoustic, vocoder = self.build_pair(self.model)
            model, transforms, report = dict(self.model), [], None
        else:
            step = steps[-1]
            self.progress(f"{name}: step {len(steps)} '{step.op}'")
            acoustic, vocoder, model, transforms, report = self.apply(step, parent)
        seconds = time.perf_counter() - started
        self.progress(f"{name}: synthesising samples")
        samples, sample_text = self.samples(acoustic, vocoder)
        extra = {
            "name": name if steps else "original",
            "recipe": recipe_list,
            "parent": art.read_manifest(parent.path)["content_hash"] if parent is not None else None,
            "preset": self.preset,
            "seed": self.seed,
            "code_version": self.code,
            "build": {"step_report": report, "seconds": round(seconds, 3), "cache_key": key},
            "sample_text": sample_text,
            "source": self.source(),
        }
        path = self.cache.path(key)
        art.save_artifact(path, acoustic, vocoder, model, transforms, extra, samples=samples)
        node = _Node(key, path, False, model, transforms, acoustic, vocoder)
        self.nodes[key] = node
        return node

    def _cached(self, key: str) -> Optional[_Node]:
        hit = self.cache.lookup(key)
        if hit is None:
            return None
        config = art.read_config(hit)
        node = _Node(key, hit, True, config["model"], config["transforms"], runtime=art.runtime_of(config))
        self.nodes[key] = node
        return node

    def onnx_node(self, steps: Tuple[Step, ...], name: str) -> _Node:
        """The onnxruntime artifact of a recipe: its fp32 torch weights exported as ONNX graphs
        (``variants.onnx_export``). A recipe ending in ``quantize`` exports its parent's fp32 weights and
        quantizes the graphs with ONNX Runtime's dynamic int8 (the step's ``onnx_ops``, MatMul/Gemm by
        default): torch's dynamically quantized modules do not export. The manifest records how far the
        ONNX Runtime outputs are from torch fp32 on the same weights (``onnx_agreement``)."""
        from variants import onnx_export

        recipe_list = [s.to_dict() for s in steps]
        runtime_key = {"runtime": "onnxruntime", "opset": onnx_export.OPSET}
        key = cache_key(self.key_model, [*recipe_list, runtime_key], self.seed, self.code)
        if key in self.nodes:
            return self.nodes[key]
        hit = self._cached(key)
        if hit is not None:
            return hit
        quant = steps[-1] if steps and steps[-1].op == "quantize" else None
        source_steps = steps[:-1] if quant is not None else steps
        source = self.node(source_steps, _prefix_name(source_steps, name))
        acoustic, vocoder = source.models()
        started = time.perf_counter()
        self.progress(f"{name}: exporting ONNX graphs")
        graphs, meta = onnx_export.export(acoustic, vocoder)
        if quant is not None:
            args = quant.args
            self.progress(f"{name}: onnxruntime dynamic int8 ({', '.join(args['onnx_ops'])})")
            graphs, meta = onnx_export.quantize(graphs, meta, component=args["component"],
                                                ops=tuple(args["onnx_ops"]))
        seconds = time.perf_counter() - started
        from devices.ondevice import ort

        ort_acoustic = ort.OrtAcoustic(graphs, meta, threads=1)
        ort_vocoder = ort.OrtVocoder(graphs, meta, threads=1)
        self.progress(f"{name}: onnxruntime against torch")
        agreement = onnx_export.agreement(acoustic, vocoder, ort_acoustic, ort_vocoder, self.calibration(4))
        agreement["against"] = ("torch fp32, the same weights before quantization" if quant is not None
                                else "torch, the same weights")
        self.progress(f"{name} on onnxruntime: synthesising samples")
        samples, sample_text = self.samples(TorchFacade(ort_acoustic), TorchFacade(ort_vocoder))
        source_manifest = art.read_manifest(source.path)
        extra = {
            "name": measured_name(name if steps else "original", "onnxruntime"),
            "recipe": recipe_list,
            "parent": source_manifest["content_hash"],
            "preset": self.preset,
            "seed": self.seed,
            "code_version": self.code,
            "build": {"step_report": {"onnx": {k: meta[k] for k in ("opset", "exporter") if k in meta},
                                      "quantized": meta.get("quantized")},
                      "seconds": round(seconds, 3), "cache_key": key},
            "sample_text": sample_text,
            "source": self.source(),
            "onnx_agreement": agreement,
        }
        path = self.cache.path(key)
        art.save_onnx_artifact(path, graphs, meta, source.model, source_manifest["params"], extra, samples)
        node = _Node(key, path, False, source.model, [], TorchFacade(ort_acoustic), TorchFacade(ort_vocoder),
                     runtime="onnxruntime")
        self.nodes[key] = node
        return node

    def source(self) -> Dict[str, Any]:
        """Where the weights came from: a model directory (voice, checkpoint files and their sha256) or
        the seeded random initialisation of a preset or factory."""
        if self.voice is not None:
            return {"kind": "model_dir", **self.voice.source}
        return {"kind": "seeded", "preset": self.preset, "factory": self.model["factory"], "seed": self.seed}

    def apply(self, step: Step, parent: _Node):
        args = step.args
        acoustic, vocoder = parent.models()
        model, transforms = copy.deepcopy(parent.model), list(parent.transforms)
        report: Optional[Dict[str, Any]] = None
        if step.op == "prune":
            from variants.prune import structured_prune

            activation = args["importance"] == "activation"
            calib = self.calibration(args["calibration_sentences"]) if activation else ()
            acoustic, cfg, report = structured_prune(
                acoustic, model["config"], args, self.build_acoustic_for(model["factory"]), calib
            )
            ed = report["encoder_decoder_params"]
            report = {"encoder_decoder_params": ed, "reduction": round(1 - ed["after"] / ed["before"], 4)}
            model["config"] = cfg
        elif step.op == "unstructured_prune":
            from variants.prune import unstructured_prune

            acoustic, report = unstructured_prune(acoustic, args["amount"])
        elif step.op == "distill":
            from variants.distill import distill

            acoustic, cfg, report = distill(
                acoustic,
                model["config"],
                args,
                self.build_acoustic_for(model["factory"]),
                seed=self.seed,
                symbols=self.symbols,
            )
            model["config"] = cfg
        elif step.op == "optimize":
            from variants.optimize import optimize

            build = self.build_acoustic_for(model["factory"])
            acoustic, cfg, report = optimize(acoustic, model["config"], build)
            model["config"] = cfg
        elif step.op == "quantize":
            from variants.quantize import quantize

            acoustic, vocoder, transform = quantize(acoustic, vocoder, args)
            transforms.append(transform)
        else:  # recipes.STEPS and this dispatch disagree: a programming error
            raise RuntimeError(f"no implementation for step {step.op!r}")
        return acoustic, vocoder, model, transforms, report

    # -------------------------------------------------------------------------------- samples, quality
    def samples(self, acoustic: nn.Module, vocoder: nn.Module) -> Tuple[Dict[str, bytes], str]:
        from devices.ondevice.frontend import EMOTIONS, text_to_ids

        text = sample_sentence()
        out = {}
        with torch.inference_mode():
            for emo in EMOTIONS:
                mel = acoustic(**text_to_ids(text, emotion=emo, symbols=self.symbols).to_tensors()).mel
                wav = vocoder(mel.transpose(1, 2).contiguous()).reshape(-1)
                out[emo] = wav_bytes(wav)
        return out, text

    def ensure_work(self, node: _Node, classes: Sequence[str], torch_node: Optional[_Node] = None) -> None:
        """The manifest's ``work`` (``variants.work.count_corpus``) for ``classes``, counted once per cache
        entry. An onnxruntime node takes the MACs and weight bytes of its recipe's torch artifact
        (``torch_node``: the same arithmetic); its operator calls are ONNX Runtime's, not counted
        (``ops`` None). A model the counter cannot run is recorded with the reason, not an error."""
        from variants import work as work_mod

        manifest = art.read_manifest(node.path)
        current = manifest.get("work") or {}
        wanted = {s.id for s in work_mod.counted_sentences(classes)}
        if current.get("version") == work_mod.WORK_VERSION and (
                "error" in current or wanted <= set(current.get("sentences") or {})):
            return
        if node.runtime == "onnxruntime":
            if torch_node is None:
                return
            self.ensure_work(torch_node, classes)
            entry = dict(art.read_manifest(torch_node.path).get("work") or {})
            if "sentences" in entry:
                entry["sentences"] = {
                    sid: {**w, "stages": {k: {**v, "ops": None} for k, v in w["stages"].items()}}
                    for sid, w in entry["sentences"].items()}
                entry["runtime_ops"] = False
        else:
            self.progress(f"{manifest.get('name')}: counting work")
            acoustic, vocoder = node.models()
            try:
                entry = work_mod.count_corpus(acoustic, vocoder, self.symbols, classes)
            except Exception as exc:  # noqa: BLE001 - a plugin model the counter cannot run: say why
                entry = {"version": work_mod.WORK_VERSION,
                         "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        art.update_manifest(node.path, work=entry)

    def ensure_quality(self, node: _Node) -> Dict[str, Any]:
        manifest = art.read_manifest(node.path)
        current = manifest.get("quality")
        n_expected = self.quality_sentences * 7  # (sentence, emotion) pairs
        if not self.quality or (current is not None and current.get("n") == n_expected):
            return manifest
        from variants.quality import emotion_identification, evaluate

        ref = self.reference()
        if node.key == self.root().key:
            accuracy = emotion_identification(ref.mels, ref.mels)
            quality = {"mel_l1": 0.0, "mcd_db": 0.0, "emotion_id_accuracy": accuracy, "n": len(ref.items)}
        else:
            self.progress(f"{manifest.get('name')}: quality proxies")
            quality = evaluate(node.models()[0], ref)
        return art.update_manifest(node.path, quality=quality)


def _prefix_name(steps: Tuple[Step, ...], name: str) -> str:
    """Name of an intermediate artifact: the built-in variant with exactly these steps, else ``name[:n]``."""
    for builtin, recipe in BUILTIN_VARIANTS.items():
        if tuple(recipe.steps) == tuple(steps):
            return builtin
    return f"{name}[:{len(steps)}]"


def sample_sentence() -> str:
    """The fixed sentence of the listening samples: the corpus' sample sentence."""
    from devices.ondevice.corpus import sample_sentence as corpus_sample

    return corpus_sample().text


#: Listening samples are scaled to at most this peak and this RMS (-6 / -20 dBFS): a trained voice
#: sounds normal, and random weights (a near full-scale buzz) cannot blast a stakeholder's ears.
SAMPLE_PEAK = 0.5
SAMPLE_RMS = 0.1


def wav_bytes(wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV, scaled to a safe level (peak <= SAMPLE_PEAK, RMS <= SAMPLE_RMS)."""
    import numpy as np
    import soundfile as sf

    data = wav.detach().to(torch.float32).numpy().astype(np.float32)
    peak = float(np.abs(data).max()) if data.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64)))) if data.size else 0.0
    if peak > 0:
        data = data * min(SAMPLE_PEAK / peak, SAMPLE_RMS / max(rms, 1e-12))
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _publish(src: Path, dest: Path, name: str) -> Dict[str, Any]:
    """Copy a cache entry to ``dest`` (atomically) unless an identical one is there; set the variant name."""
    manifest = dict(art.read_manifest(src))
    manifest["name"] = name
    if dest.exists():
        try:
            current = art.read_manifest(dest)
        except VariantsError:
            current = None
        if current == manifest:
            return manifest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=str(dest.parent), prefix=f".{dest.name}.tmp-"))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / "manifest.json").write_bytes(art._json_bytes(manifest))
        art._atomic_replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def resolve_model(
    preset: str, model_factory: Optional[str], model_config: Optional[Mapping], voice=None
) -> Dict[str, Any]:
    """config.json's model section for a preset of the reference model, a loaded model directory's voice
    or a user's factory."""
    from devices.ondevice.models import ModelConfig, get_preset

    if voice is not None:
        return {"factory": art.REFERENCE_FACTORY, "config": dict(voice.model_config)}
    if model_factory in (None, art.REFERENCE_FACTORY):
        try:
            if model_config is not None:
                cfg = ModelConfig.from_dict(dict(model_config))
            else:
                cfg = get_preset(preset)
        except ValueError as exc:
            raise VariantsError(f"model config: {exc}") from None
        return {"factory": art.REFERENCE_FACTORY, "config": cfg.to_dict()}
    from variants.plugin import load_factory

    load_factory(model_factory)  # import errors before any work
    return {"factory": model_factory, "config": dict(model_config) if model_config is not None else None}


def build_variants(
    preset: str = "base",
    variants: Sequence[str] = DEFAULT_VARIANTS,
    out: Path = Path("edgebench-out/artifacts"),
    seed: int = 0,
    cache_dir: Optional[Path] = None,
    quality: bool = True,
    model_factory: Optional[str] = None,
    progress: Optional[Progress] = None,
    recipes: Optional[Mapping[str, Recipe]] = None,
    model_config: Optional[Mapping[str, Any]] = None,
    quality_sentences: int = 2,
    threads: Optional[int] = 1,
    model_dir: Optional[Path] = None,
    voice: Optional[str] = None,
    loaded_voice=None,
    runtimes: Sequence[str] = ("torch",),
    work_classes: Sequence[str] = (),
) -> List[BuiltVariant]:
    """Build (or fetch from the cache) every variant; return them in the order asked.

    ``threads`` is torch's intra-op thread count while building (None: leave it): one thread is the
    fastest on a shared machine, where OpenMP spin-waiting makes small ops 10x slower under load.
    ``quality_sentences`` is the size of the fixed evaluation set (x 7 emotions).
    ``recipes`` adds user-defined variants (name -> Recipe from ``parse_recipe``); ``model_factory`` is a
    user's ``"package.module:factory"`` (see variants.plugin) with its ``model_config``; ``cache_dir``
    defaults to ``out/.cache``. ``model_dir`` (with ``voice``, default: the directory's first) loads the
    original model from a ModelScope model directory instead of a preset (``variants.modelscope``).
    Invalid recipes and unusable model directories raise before anything is built. ``loaded_voice`` is
    ``variants.modelscope.load_voice(model_dir, voice)`` when the caller has read it already.
    ``runtimes``: "torch" builds the torch artifacts; "onnxruntime" also exports each variant for ONNX Runtime
    (``<variant dir>.onnxruntime``, named ``variant@onnxruntime``: ``variants.runtimes``). The torch artifacts
    come first in the result, then the onnxruntime ones, each in the order asked.
    ``work_classes``: count each variant's work (``variants.work``) on one sentence of each of these length
    classes into its manifest's ``work`` (what the report places against a device's limits).
    """
    progress = progress or _quiet
    out = Path(out)
    loaded = loaded_voice
    if loaded is None and model_dir is not None:
        from variants.modelscope import load_voice

        loaded = load_voice(Path(model_dir), voice)
    model = resolve_model(preset, model_factory, model_config, loaded)
    resolved = resolve_variants(list(variants), recipes)
    for recipe in resolved:
        check_recipe(recipe, model["config"])
    if model_factory not in (None, art.REFERENCE_FACTORY) and any(r != "torch" for r in runtimes):
        raise VariantsError(f"runtimes: onnxruntime needs the reference Sambert-HifiGan (its ONNX export is "
                            f"edgebench's); the model factory {model_factory!r} runs on torch only")
    if model_factory not in (None, art.REFERENCE_FACTORY):
        from variants.plugin import check_conventions

        check_conventions(model["factory"], model["config"], seed)
    cache = BuildCache(Path(cache_dir) if cache_dir is not None else out / ".cache")
    builder = _Builder(
        model,
        None if loaded is not None else preset,
        seed,
        cache,
        quality,
        progress,
        quality_sentences,
        loaded,
    )
    results = []
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for runtime in runtimes:
            for recipe in resolved:
                name = measured_name(recipe.name, runtime)
                if runtime == "torch":
                    node = builder.node(tuple(recipe.steps), recipe.name)
                    dest = out / recipe.dirname
                else:
                    node = builder.onnx_node(tuple(recipe.steps), recipe.name)
                    dest = out / f"{recipe.dirname}.{runtime}"
                if work_classes:
                    twin = builder.node(tuple(recipe.steps), recipe.name) if runtime != "torch" else None
                    builder.ensure_work(node, work_classes, twin)
                builder.ensure_quality(node)
                manifest = _publish(node.path, dest, name)
                progress(f"{name}: {'cached' if node.cached else 'built'} -> {dest}")
                results.append(BuiltVariant(name, dest, manifest, node.cached))
    finally:
        torch.set_num_threads(old_threads)
    return results
