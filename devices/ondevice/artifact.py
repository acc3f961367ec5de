"""The artifact format, as read on the device and on the controller (one reader, one version check).

Standard library only (no torch: the agent's supervisor reads manifests without paying for torch),
Python 3.8+. Loading the weights is ``devices.ondevice.load``; writing is ``variants.artifact``.

Layout of an artifact directory::

    manifest.json   what was built and how (recipe, parent hash, params, sizes, sha256 of files,
                    content hash, builder's torch and code version, quality proxies, samples)
    config.json     how to rebuild the structure: model factory + config (per-layer dims after
                    pruning) and the transforms re-applied before load_state_dict (quantize_dynamic)
    acoustic.pt     torch.save(acoustic.state_dict())
    vocoder.pt      torch.save(vocoder.state_dict())
    samples/*.wav   listening samples (listed in the manifest, not part of the content hash)

An artifact for ONNX Runtime (format version 2, ``config.json`` ``runtime = "onnxruntime"``) holds the
model as ONNX graphs instead of the two state_dicts: ``<graph>.onnx`` for each graph of
``devices.ondevice.ort.GRAPHS``, and config.json's ``onnx`` section (opset, exporter versions, graph hashes,
ORT quantization). It is loaded with numpy and onnxruntime only (``devices.ondevice.ort``).

Identity is the content hash: sha256 over the sorted ``"name:sha256"`` lines of the hashed files (the
manifest's ``files``: config.json and the weights, .pt or .onnx).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from devices.ondevice.errors import ArtifactError

# Version history of the on-disk format (config.json and manifest.json share it):
#   1 -- first version (manifest, config with factory + transforms, per-component state_dicts).
#   2 -- the runtime axis: config.json ``runtime``; an "onnxruntime" artifact holds ONNX graphs (written as 2;
#        torch artifacts are still written as 1, which every reader of 2 reads).
ARTIFACT_FORMAT_VERSION = 1
ONNX_FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)

COMPONENTS = ("acoustic", "vocoder")
HASHED_FILES = ("config.json", "acoustic.pt", "vocoder.pt")  # a torch artifact's
RUNTIMES = ("torch", "onnxruntime")
REFERENCE_FACTORY = "devices.ondevice.models:reference"
# Factories recorded by earlier layouts of the code, read as today's (config.json is hashed: it keeps them).
LEGACY_FACTORIES = {"variants.models:reference": REFERENCE_FACTORY}
MANIFEST = "manifest.json"
CONFIG = "config.json"


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
    return _read_json(Path(dir) / MANIFEST)


def read_config(dir: Path) -> Dict[str, Any]:
    return _read_json(Path(dir) / CONFIG)


def runtime_of(config: Mapping[str, Any], where: str = "config.json") -> str:
    """The runtime an artifact is for: config.json's ``runtime`` ("torch" when absent: format 1)."""
    runtime = config.get("runtime", "torch")
    if runtime not in RUNTIMES:
        raise ArtifactError(f"{where}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}; rebuild the "
                            "artifact with this edgebench")
    return runtime


def verify_files(
    dir: Path, manifest: Optional[Mapping[str, Any]] = None, names: Optional[Sequence[str]] = None
) -> None:
    """Check the sha256 of hashed files (default: every file the manifest lists) against the manifest;
    raise ArtifactError naming the bad file."""
    dir = Path(dir)
    manifest = manifest if manifest is not None else read_manifest(dir)
    files = manifest.get("files") or {}
    if names is None:
        names = sorted(files) or HASHED_FILES
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


def list_samples(dir: Path) -> List[Path]:
    dir = Path(dir)
    return [dir / rel for _, rel in sorted(read_manifest(dir).get("samples", {}).items())]
