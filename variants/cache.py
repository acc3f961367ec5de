"""Build cache: artifacts stored under a key of (model, recipe prefix, seed, code version).

An entry is a complete artifact directory ``<cache_dir>/<key>/``. Rebuilding an unchanged variant is a
lookup plus a copy; every prefix of a recipe is its own entry, so ``pruned+quantized`` reuses the
``pruned`` entry (its parent) and the original is built once per model and seed.

The code version is a hash of the variants source files (models, frontend, corpus and the recipe steps):
editing any of them invalidates the cache, editing the harness or the reports does not.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from variants.artifact import ArtifactError, read_manifest, verify_files

_VARIANTS_DIR = Path(__file__).resolve().parent
CACHE_KEY_VERSION = 1  # bump when the key's inputs change meaning


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (first 16 hex digits) over the variants package's Python sources, by relative path."""
    h = hashlib.sha256()
    for path in sorted(_VARIANTS_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(_VARIANTS_DIR).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_key(
    model: Mapping[str, Any], recipe_steps: Sequence[Mapping[str, Any]], seed: int, code: str | None = None
) -> str:
    """Key of one artifact: ``model`` is config.json's model section (factory + config)."""
    payload = {
        "v": CACHE_KEY_VERSION,
        "model": model,
        "recipe": list(recipe_steps),
        "seed": seed,
        "code": code or code_version(),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class BuildCache:
    """Artifact directories by key. ``lookup`` verifies the files so a corrupt entry is rebuilt, not used."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, verify: bool = True) -> Path | None:
        path = self.path(key)
        if not (path / "manifest.json").exists():
            return None
        try:
            manifest = read_manifest(path)
            if verify:
                verify_files(path, manifest)
        except ArtifactError:
            return None  # stale format or corrupt: the caller rebuilds and overwrites it atomically
        return path
