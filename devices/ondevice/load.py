"""Loading an artifact's weights into the rebuilt model structure (torch; Python 3.8+, torch 1.13+).

Runs on the device (the agent's worker) and on the controller (recipes, quality checks).
"""

from __future__ import annotations

import importlib
import inspect
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from devices.ondevice.artifact import (  # noqa: F401 - REFERENCE_FACTORY re-exported
    COMPONENTS,
    LEGACY_FACTORIES,
    REFERENCE_FACTORY,
    read_config,
    read_manifest,
    runtime_of,
    verify_files,
)
from devices.ondevice.errors import ArtifactError
from devices.ondevice.symbols import symbol_table  # noqa: F401 - re-exported

_QUANT_MODULE_TYPES = {"Linear": torch.nn.Linear, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
_QUANT_DTYPES = {"qint8": torch.qint8, "float16": torch.float16}


@dataclass
class LoadedArtifact:
    acoustic: torch.nn.Module
    vocoder: torch.nn.Module
    manifest: Dict[str, Any]
    config: Dict[str, Any]


def resolve_factory(spec: str):
    """Import ``"package.module:callable"``; raise ArtifactError if it cannot be found."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ArtifactError(f"model factory {spec!r}: expected 'package.module:callable'")
    mod_name, attr = spec.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ArtifactError(f"model factory {spec!r}: cannot import {mod_name!r} ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: their error
        text = " ".join(str(exc).split())
        raise ArtifactError(f"model factory {spec!r}: importing {mod_name!r} raised "
                            f"{type(exc).__name__}: {text}") from exc
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ArtifactError(f"model factory {spec!r}: {mod_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ArtifactError(f"model factory {spec!r}: not callable")
    return obj


def build_structure(model: Mapping[str, Any], component: str, seed: int = 0) -> torch.nn.Module:
    """Instantiate one component's structure (random weights) from config.json's ``model`` section."""
    factory = LEGACY_FACTORIES.get(model.get("factory"), model.get("factory", REFERENCE_FACTORY))
    cfg = model.get("config")
    if factory == REFERENCE_FACTORY:
        # Build only the requested component (the agent times each load separately).
        models = importlib.import_module("devices.ondevice.models")
        mc = models.ModelConfig.from_dict(cfg)
        if component == "acoustic":
            return models.build_acoustic(mc.acoustic, seed=seed)
        return models.build_vocoder(mc.vocoder, seed=seed)
    pair = resolve_factory(factory)(cfg, seed)
    return pair[COMPONENTS.index(component)]


def quantize_module(
    module: torch.nn.Module,
    dtype: str = "qint8",
    modules: Sequence[str] = ("Linear", "LSTM"),
    inplace: bool = False,
) -> torch.nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` (torch.quantization on old releases), warnings silenced."""
    try:
        qdyn = torch.ao.quantization.quantize_dynamic
    except AttributeError:  # pragma: no cover - torch < 1.10
        qdyn = torch.quantization.quantize_dynamic
    spec = {_QUANT_MODULE_TYPES[m] for m in modules}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.8 deprecates torch.ao.quantization in favour of torchao
        out = qdyn(module, spec, dtype=_QUANT_DTYPES[dtype], inplace=inplace)
    return out.eval()


def apply_transforms(
    module: torch.nn.Module,
    transforms: Sequence[Mapping[str, Any]],
    component: str,
    where: str = "config.json",
) -> torch.nn.Module:
    """Re-apply the structural transforms recorded for ``component`` (before load_state_dict)."""
    for i, t in enumerate(transforms):
        if t.get("component") != component:
            continue
        op = t.get("op")
        if op == "quantize_dynamic":
            dtype = t.get("dtype", "qint8")
            mods = t.get("modules", ["Linear", "LSTM"])
            if dtype not in _QUANT_DTYPES or any(m not in _QUANT_MODULE_TYPES for m in mods):
                raise ArtifactError(f"{where}: transforms[{i}]: unsupported dtype/modules {dtype!r} {mods!r}")
            module = quantize_module(module, dtype, mods, inplace=True)
        else:
            raise ArtifactError(f"{where}: transforms[{i}]: unknown op {op!r}; rebuild with this edgebench")
    return module


def _signature_has(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return False


#: torch >= 2.1: ``torch.load(mmap=True)`` maps the file instead of reading it into memory, and
#: ``load_state_dict(assign=True)`` keeps the loaded tensors instead of copying them into the module's.
MMAP = _signature_has(torch.load, "mmap")
ASSIGN = _signature_has(torch.nn.Module.load_state_dict, "assign")
META_CONTEXT = hasattr(torch.device("cpu"), "__enter__")  # torch >= 2.0: ``with torch.device("meta")``


def _torch_load(path: Path, quantized: bool):
    """The state_dict of ``path``: memory-mapped where torch can (no copy of the file in memory), else read
    whole. Dynamically quantized LSTMs pickle torch.ScriptObjects, which weights_only loading refuses; those
    files are only loaded after their sha256 matched the manifest."""
    kwargs: Dict[str, Any] = {"map_location": "cpu", "weights_only": not quantized}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")  # torch's own, quantized
        if MMAP:
            try:
                return torch.load(str(path), mmap=True, **kwargs)
            except RuntimeError:
                pass  # a file torch cannot map (an old serialisation format): read it whole below
        with open(path, "rb") as f:
            data = f.read()
        try:
            return torch.load(io.BytesIO(data), **kwargs)
        except TypeError:  # pragma: no cover - torch without weights_only
            kwargs.pop("weights_only")
            return torch.load(io.BytesIO(data), **kwargs)


def _bare_structure(model: Mapping[str, Any], component: str):
    """The reference structure on the meta device (no memory, no initialisation), or None where that cannot
    be done (a plugin factory, a torch without the meta-device context or ``assign``)."""
    factory = LEGACY_FACTORIES.get(model.get("factory"), model.get("factory", REFERENCE_FACTORY))
    if factory != REFERENCE_FACTORY or not (META_CONTEXT and ASSIGN):
        return None
    models = importlib.import_module("devices.ondevice.models")
    mc = models.ModelConfig.from_dict(model.get("config"))
    with torch.device("meta"):
        return models.Sambert(mc.acoustic) if component == "acoustic" else models.HifiGan(mc.vocoder)


def _load_component(dir: Path, config: Mapping[str, Any], component: str) -> torch.nn.Module:
    """Rebuild one component and load its weights. An fp32 reference component is built on the meta device
    and takes the loaded (memory-mapped) tensors as they are: the weights exist once in memory, never as a
    random initialisation plus a file buffer plus a copy (what loading cost before: about 2.6 times the
    files). Quantized and plugin components are built for real, then loaded from the mapped file (building
    a quantized one from empty quantized modules instead was measured: no lower peak)."""
    if runtime_of(config, str(dir / "config.json")) != "torch":
        raise ArtifactError(f"{dir}: an artifact for {config.get('runtime')}, not torch: it holds ONNX "
                            "graphs (load it with devices.ondevice.ort.load)")
    transforms = [t for t in config.get("transforms", []) if t.get("component") == component]
    path = dir / f"{component}.pt"
    module = None if transforms else _bare_structure(config["model"], component)
    assign = module is not None
    if module is None:
        module = build_structure(config["model"], component)
        module = apply_transforms(module, transforms, component, where=str(dir / "config.json"))
    state = _torch_load(path, quantized=bool(transforms))
    try:
        if assign:
            module.load_state_dict(state, strict=True, assign=True)
        else:
            module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{path}: does not match the structure in config.json ({str(exc)[:300]})"
        ) from None
    if assign and any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise ArtifactError(f"{path}: does not hold every tensor of the structure in config.json")
    return module.eval()


def load_component(dir: Path, component: str, verify: bool = True) -> torch.nn.Module:
    """Rebuild one component (``"acoustic"`` or ``"vocoder"``) and load its weights; eval mode."""
    if component not in COMPONENTS:
        raise ArtifactError(f"unknown component {component!r} (expected one of {', '.join(COMPONENTS)})")
    dir = Path(dir)
    config = read_config(dir)
    if verify:
        verify_files(dir, names=("config.json", f"{component}.pt"))
    return _load_component(dir, config, component)


def load_artifact(dir: Path, verify: bool = True) -> LoadedArtifact:
    dir = Path(dir)
    manifest = read_manifest(dir)
    config = read_config(dir)
    if verify:
        verify_files(dir, manifest)
    return LoadedArtifact(
        acoustic=_load_component(dir, config, "acoustic"),
        vocoder=_load_component(dir, config, "vocoder"),
        manifest=manifest,
        config=config,
    )
