"""The artifact format: one directory per built variant, loadable by a fresh process on the device.

Travels in the agent bundle: standard library and torch only, Python 3.8 and torch 1.13 compatible.

Layout::

    manifest.json   what was built and how (recipe, parent hash, params, sizes, sha256 of files,
                    content hash, builder's torch and code version, quality proxies, samples)
    config.json     how to rebuild the structure: model factory + config (per-layer dims after
                    pruning) and the transforms re-applied before load_state_dict (quantize_dynamic)
    acoustic.pt     torch.save(acoustic.state_dict())
    vocoder.pt      torch.save(vocoder.state_dict())
    samples/*.wav   listening samples (listed in the manifest, not part of the content hash)

Identity is the content hash: sha256 over the sorted ``"name:sha256"`` lines of config.json,
acoustic.pt and vocoder.pt. Writes are atomic (a temporary sibling directory renamed into place).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from variants.errors import ArtifactError

# Version history of the on-disk format (config.json and manifest.json share it):
#   1 -- first version (manifest, config with factory + transforms, per-component state_dicts).
ARTIFACT_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

COMPONENTS = ("acoustic", "vocoder")
HASHED_FILES = ("config.json", "acoustic.pt", "vocoder.pt")
REFERENCE_FACTORY = "variants.models:reference"
_QUANT_MODULE_TYPES = {"Linear": torch.nn.Linear, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
_QUANT_DTYPES = {"qint8": torch.qint8, "float16": torch.float16}


@dataclass(frozen=True)
class Artifact:
    """A saved artifact directory (immutable value)."""

    path: Path
    manifest: Dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


@dataclass
class LoadedArtifact:
    acoustic: torch.nn.Module
    vocoder: torch.nn.Module
    manifest: Dict[str, Any]
    config: Dict[str, Any]


# ----------------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(files: Mapping[str, str]) -> str:
    """sha256 over the sorted ``name:sha256`` lines of the hashed files."""
    lines = "".join(f"{name}:{files[name]}\n" for name in sorted(files))
    return sha256_bytes(lines.encode("utf-8"))


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------------- params


def _count_state(value: Any, in_cell: bool = False) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() if value.dim() > 0 else 0  # 0-d: scale / zero_point bookkeeping
    if isinstance(value, (list, tuple)):
        return sum(_count_state(v, in_cell) for v in value)
    if isinstance(value, torch.ScriptObject):
        state = value.__getstate__()
        kind = state[-1] if isinstance(state, tuple) and state and isinstance(state[-1], str) else ""
        if "CellParams" in kind:
            return _count_state(state[0], in_cell=True)
        if in_cell and "LinearPackedParams" in kind:
            return _count_state(state[0][0])  # weight only: the cell lists its biases itself
        return _count_state(state)
    return 0


def count_params(module: torch.nn.Module) -> int:
    """Number of weights, also for dynamically quantized modules (packed weights, not Parameters).
    Buffers (the stored position tables) are not weights and are not counted (they are in the size)."""
    buffers = {name for name, _ in module.named_buffers()}
    return sum(_count_state(v) for k, v in module.state_dict().items() if k not in buffers)


# ----------------------------------------------------------------------------------- writing


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place; an existing directory is replaced."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _write_file_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_section(model_cfg_dict: Mapping[str, Any], factory: Optional[str] = None) -> Dict[str, Any]:
    """config.json's ``model``: ``{"factory": ..., "config": ...}``.

    A bare ModelConfig dict gets the reference factory.
    """
    if "factory" in model_cfg_dict and "config" in model_cfg_dict and len(model_cfg_dict) == 2:
        return {"factory": str(model_cfg_dict["factory"]), "config": model_cfg_dict["config"]}
    return {"factory": factory or REFERENCE_FACTORY, "config": dict(model_cfg_dict)}


def save_artifact(
    dir: Path,
    acoustic: torch.nn.Module,
    vocoder: torch.nn.Module,
    model_cfg_dict: Mapping[str, Any],
    transforms: Sequence[Mapping[str, Any]] = (),
    manifest_extra: Optional[Mapping[str, Any]] = None,
    samples: Optional[Mapping[str, bytes]] = None,
) -> Artifact:
    """Write an artifact directory atomically and return it.

    ``model_cfg_dict`` is ``{"factory": "module:callable", "config": dict|None}`` (or a bare
    ``ModelConfig.to_dict()``, meaning the reference model). ``transforms`` are re-applied to the
    rebuilt structure before ``load_state_dict``. ``manifest_extra`` adds keys (name, recipe, parent,
    preset, seed, quality, ...). ``samples`` maps a sample name (an emotion) to WAV bytes, written to
    ``samples/<name>.wav`` and listed under the manifest's ``samples`` (not in the content hash).
    """
    dir = Path(dir)
    dir.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "model": model_section(model_cfg_dict),
        "transforms": [dict(t) for t in transforms],
    }
    blobs = {
        "config.json": _json_bytes(config),
        "acoustic.pt": state_dict_bytes(acoustic),
        "vocoder.pt": state_dict_bytes(vocoder),
    }
    files = {name: sha256_bytes(data) for name, data in blobs.items()}
    manifest: Dict[str, Any] = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "name": None,
        "recipe": [],
        "parent": None,
        "preset": None,
        "seed": None,
        "params": {"acoustic": count_params(acoustic), "vocoder": count_params(vocoder)},
        "sizes": {"acoustic": len(blobs["acoustic.pt"]), "vocoder": len(blobs["vocoder.pt"])},
        "files": files,
        "content_hash": content_hash(files),
        "torch_version": torch.__version__,
        "code_version": None,
        "quality": None,
        "samples": {},
        "built_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    for key, value in (manifest_extra or {}).items():
        if key in ("format_version", "files", "content_hash", "sizes", "params", "samples"):
            raise ValueError(f"manifest_extra may not set {key!r}")  # programming error
        manifest[key] = value
    tmp = Path(tempfile.mkdtemp(dir=str(dir.parent), prefix=f".{dir.name}.tmp-"))
    try:
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
        if samples:
            (tmp / "samples").mkdir()
            for sname, data in sorted(samples.items()):
                rel = f"samples/{sname}.wav"
                (tmp / rel).write_bytes(data)
                manifest["samples"][sname] = rel
        (tmp / "manifest.json").write_bytes(_json_bytes(manifest))
        _atomic_replace_dir(tmp, dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(dir, manifest)


def update_manifest(dir: Path, **fields: Any) -> Dict[str, Any]:
    """Set manifest keys that are not part of the content hash (e.g. ``quality``), atomically."""
    dir = Path(dir)
    manifest = read_manifest(dir)
    for key in fields:
        if key in ("format_version", "files", "content_hash", "sizes", "params"):
            raise ValueError(f"cannot update {key!r}: it describes the hashed content")
    manifest.update(fields)
    _write_file_atomic(dir / "manifest.json", _json_bytes(manifest))
    return manifest


# ----------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (not an artifact directory, or an interrupted build)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); rebuild the artifact") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{path}: format_version {version!r} is not supported by this edgebench (it reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); rebuild the artifact with this version "
            "(`edgebench build`) or use the edgebench release that wrote it"
        )
    return data


def read_manifest(dir: Path) -> Dict[str, Any]:
    return _read_json(Path(dir) / "manifest.json")


def read_config(dir: Path) -> Dict[str, Any]:
    return _read_json(Path(dir) / "config.json")


def verify_files(
    dir: Path, manifest: Optional[Mapping[str, Any]] = None, names: Sequence[str] = HASHED_FILES
) -> None:
    """Check the sha256 of hashed files against the manifest; raise ArtifactError naming the bad file."""
    dir = Path(dir)
    manifest = manifest if manifest is not None else read_manifest(dir)
    files = manifest.get("files") or {}
    for name in names:
        expected = files.get(name)
        path = dir / name
        if expected is None:
            raise ArtifactError(f"{dir / 'manifest.json'}: files.{name}: missing sha256")
        if not path.exists():
            raise ArtifactError(f"{path}: missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: sha256 {actual[:12]} does not match the manifest ({expected[:12]}); "
                "the artifact is corrupt or was modified: rebuild it"
            )


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
    factory = model.get("factory", REFERENCE_FACTORY)
    cfg = model.get("config")
    if factory == REFERENCE_FACTORY:
        # Build only the requested component (the agent times each load separately).
        models = importlib.import_module("variants.models")
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
    if model.get("factory", REFERENCE_FACTORY) != REFERENCE_FACTORY or not isinstance(cfg, Mapping):
        return None
    if cfg.get("symbols") is None:
        return None
    from variants.symbols import SymbolTable

    return SymbolTable.from_dict(cfg["symbols"], "config.json: model.config.symbols")


def list_samples(dir: Path) -> List[Path]:
    dir = Path(dir)
    return [dir / rel for _, rel in sorted(read_manifest(dir).get("samples", {}).items())]
