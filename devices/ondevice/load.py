"""Loading an artifact's weights into the rebuilt model structure (torch; Python 3.8+, torch 1.13+).

Runs on the device (the agent's worker) and on the controller (recipes, quality checks).
"""

from __future__ import annotations

import importlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from devices.ondevice.artifact import COMPONENTS, read_config, read_manifest, verify_files
from devices.ondevice.errors import ArtifactError

REFERENCE_FACTORY = "devices.ondevice.models:reference"
# Factories recorded by earlier layouts of the code, read as today's (config.json is hashed: it keeps them).
LEGACY_FACTORIES = {"variants.models:reference": REFERENCE_FACTORY}
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


def _torch_load(path: Path, quantized: bool):
    with open(path, "rb") as f:
        data = f.read()
    kwargs: Dict[str, Any] = {"map_location": "cpu"}
    # Dynamically quantized LSTMs pickle torch.ScriptObjects, which weights_only loading refuses; those
    # files are only loaded after their sha256 matched the manifest.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")  # torch's own, quantized
        try:
            return torch.load(io.BytesIO(data), weights_only=not quantized, **kwargs)
        except TypeError:  # pragma: no cover - torch without weights_only
            return torch.load(io.BytesIO(data), **kwargs)


def _load_component(dir: Path, config: Mapping[str, Any], component: str) -> torch.nn.Module:
    transforms = [t for t in config.get("transforms", []) if t.get("component") == component]
    module = build_structure(config["model"], component)
    module = apply_transforms(module, transforms, component, where=str(dir / "config.json"))
    state = _torch_load(dir / f"{component}.pt", quantized=bool(transforms))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{dir / (component + '.pt')}: does not match the structure in config.json ({str(exc)[:300]})"
        ) from None
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


def symbol_table(config: Mapping[str, Any]):
    """The input symbol table of an artifact's config.json: the loaded voice's dictionaries, or None
    (the frontend's built-in table: the seeded presets and plugin models)."""
    model = config.get("model") or {}
    cfg = model.get("config") if isinstance(model, Mapping) else None
    factory = model.get("factory", REFERENCE_FACTORY) if isinstance(model, Mapping) else None
    if LEGACY_FACTORIES.get(factory, factory) != REFERENCE_FACTORY or not isinstance(cfg, Mapping):
        return None
    if cfg.get("symbols") is None:
        return None
    from devices.ondevice.symbols import SymbolTable

    return SymbolTable.from_dict(cfg["symbols"], "config.json: model.config.symbols")


