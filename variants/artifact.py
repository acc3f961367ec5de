"""Writing artifacts (controller side). The format and its one reader live in the on-device package:
``devices.ondevice.artifact`` (manifest/config reader with the version check, hashing) and
``devices.ondevice.load`` (weights into the rebuilt structure); their names are re-exported here for
the controller's code. Writes are atomic (a temporary sibling directory renamed into place).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from devices.ondevice.artifact import (  # noqa: F401 - re-exported: the controller's one reader
    ARTIFACT_FORMAT_VERSION,
    COMPONENTS,
    HASHED_FILES,
    ONNX_FORMAT_VERSION,
    RUNTIMES,
    SUPPORTED_FORMAT_VERSIONS,
    content_hash,
    list_samples,
    read_config,
    read_manifest,
    runtime_of,
    sha256_bytes,
    sha256_file,
    verify_files,
)
from devices.ondevice.load import (  # noqa: F401 - re-exported
    REFERENCE_FACTORY,
    LoadedArtifact,
    apply_transforms,
    build_structure,
    load_artifact,
    load_component,
    quantize_module,
    resolve_factory,
    symbol_table,
)
from variants.errors import ArtifactError  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Artifact:
    """A saved artifact directory (immutable value)."""

    path: Path
    manifest: Dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


# ----------------------------------------------------------------------------------- serialising


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
    return _write_artifact(
        Path(dir), ARTIFACT_FORMAT_VERSION, blobs,
        params={"acoustic": count_params(acoustic), "vocoder": count_params(vocoder)},
        sizes={"acoustic": len(blobs["acoustic.pt"]), "vocoder": len(blobs["vocoder.pt"])},
        manifest_extra=manifest_extra, samples=samples,
    )


def save_onnx_artifact(
    dir: Path,
    graphs: Mapping[str, bytes],
    onnx_meta: Mapping[str, Any],
    model_cfg_dict: Mapping[str, Any],
    params: Mapping[str, int],
    manifest_extra: Optional[Mapping[str, Any]] = None,
    samples: Optional[Mapping[str, bytes]] = None,
) -> Artifact:
    """Write an ONNX Runtime artifact (format version 2) atomically: ``<graph>.onnx`` for each graph of
    ``graphs`` (name -> serialized ONNX, from ``variants.onnx_export``), config.json with ``runtime =
    "onnxruntime"``, the ``onnx`` metadata and the model section (the voice's symbol table, the dims).
    ``sizes`` are the bytes of each component's graphs; ``params`` the weights of the source model."""
    from devices.ondevice.ort import ACOUSTIC_GRAPHS, VOCODER_GRAPHS

    missing = sorted(set(ACOUSTIC_GRAPHS + VOCODER_GRAPHS) - set(graphs))
    if missing:
        raise ValueError(f"save_onnx_artifact: graphs missing: {missing}")  # programming error
    config = {
        "format_version": ONNX_FORMAT_VERSION,
        "runtime": "onnxruntime",
        "model": model_section(model_cfg_dict),
        "transforms": [],
        "onnx": dict(onnx_meta),
    }
    blobs = {"config.json": _json_bytes(config)}
    blobs.update({f"{name}.onnx": bytes(data) for name, data in sorted(graphs.items())})
    sizes = {"acoustic": sum(len(graphs[g]) for g in ACOUSTIC_GRAPHS),
             "vocoder": sum(len(graphs[g]) for g in VOCODER_GRAPHS)}
    return _write_artifact(Path(dir), ONNX_FORMAT_VERSION, blobs, params=dict(params), sizes=sizes,
                           manifest_extra=manifest_extra, samples=samples, runtime="onnxruntime")


def _write_artifact(
    dir: Path,
    format_version: int,
    blobs: Mapping[str, bytes],
    params: Mapping[str, int],
    sizes: Mapping[str, int],
    manifest_extra: Optional[Mapping[str, Any]],
    samples: Optional[Mapping[str, bytes]],
    runtime: str = "torch",
) -> Artifact:
    dir.parent.mkdir(parents=True, exist_ok=True)
    files = {name: sha256_bytes(data) for name, data in blobs.items()}
    manifest: Dict[str, Any] = {
        "format_version": format_version,
        "name": None,
        "recipe": [],
        "parent": None,
        "preset": None,
        "seed": None,
        "params": dict(params),
        "sizes": dict(sizes),
        "files": files,
        "content_hash": content_hash(files),
        "torch_version": torch.__version__,
        "code_version": None,
        "quality": None,
        "samples": {},
        "built_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    if runtime != "torch":
        manifest["runtime"] = runtime
    for key, value in (manifest_extra or {}).items():
        if key in ("format_version", "files", "content_hash", "sizes", "params", "samples", "runtime"):
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


