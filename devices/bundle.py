"""The agent bundle: one deterministic zip with everything the device needs besides Python and torch.

Contents: the on-device package ``devices.ondevice`` whole (agent, protocol, artifact reader and loader,
frontend, symbols, corpus, model code: standard library and torch only; ``devices/__init__.py`` comes with
it as its parent), the pure-Python ``pypinyin`` package (its dictionaries are JSON files read from disk,
so the device extracts the zip into a directory), the launcher ``edgebench_agent.py`` and optional extra user
model modules. Entries are sorted and carry fixed timestamps and modes, so the sha256 only changes when a
file does; the zip is cached under ``<state_dir>/cache/bundles/``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from devices.errors import DevicesError

LAUNCHER_NAME = "edgebench_agent.py"
LAUNCHER = '''"""edgebench agent launcher: runs devices.ondevice.agent from the bundle beside this file."""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
runpy.run_module("devices.ondevice.agent", run_name="__main__", alter_sys=True)
'''
# The on-device package, shipped whole (paths relative to the parent of ``devices``).
ONDEVICE_PACKAGE = "devices.ondevice"
THIRD_PARTY = ("pypinyin",)
INCLUDE_SUFFIXES = (".py", ".json")
EXCLUDE_DIRS = ("__pycache__", "__pyinstaller", "tests")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
CACHE_VERSION = 1


@dataclass(frozen=True)
class Bundle:
    path: Path       # the zip
    sha256: str
    size: int


def _package_root(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DevicesError(f"cannot build the agent bundle: package {name!r} is not importable")
    return Path(next(iter(spec.submodule_search_locations)))


def _walk(root: Path, arc_prefix: str) -> dict:
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for fn in filenames:
            if fn.endswith(INCLUDE_SUFFIXES):
                path = Path(dirpath) / fn
                files[f"{arc_prefix}/{path.relative_to(root).as_posix()}"] = path
    return files


def _extra_module_files(item) -> dict:
    """An extra model module: a path to a .py file or a package directory, or an importable module name."""
    if isinstance(item, Path) or (isinstance(item, str) and (os.sep in item or item.endswith(".py"))):
        path = Path(item)
        if path.is_file() and path.suffix == ".py":
            return {path.name: path}
        if path.is_dir() and (path / "__init__.py").is_file():
            return _walk(path, path.name)
        raise DevicesError(f"extra model module {item}: expected a .py file or a package directory")
    spec = importlib.util.find_spec(str(item))
    if spec is None or spec.origin is None and not spec.submodule_search_locations:
        raise DevicesError(f"extra model module {item!r} is not importable")
    if "." in str(item):
        raise DevicesError(f"extra model module {item!r}: give the top-level module or package")
    if spec.submodule_search_locations:
        return _walk(Path(next(iter(spec.submodule_search_locations))), str(item))
    return {Path(spec.origin).name: Path(spec.origin)}


def bundle_files(extra_modules: Iterable = ()) -> dict:
    """archive name -> source path, for every file that goes into the bundle."""
    files: dict[str, Path] = {}
    files["devices/__init__.py"] = _package_root("devices") / "__init__.py"
    files.update(_walk(_package_root(ONDEVICE_PACKAGE), ONDEVICE_PACKAGE.replace(".", "/")))
    for name in THIRD_PARTY:
        files.update(_walk(_package_root(name), name))
    for item in extra_modules:
        for arc, path in _extra_module_files(item).items():
            if arc in files or arc == LAUNCHER_NAME:
                raise DevicesError(f"extra model module {item}: {arc} clashes with a bundled file")
            files[arc] = path
    missing = sorted(arc for arc, path in files.items() if not path.is_file())
    if missing:
        raise DevicesError(f"cannot build the agent bundle: missing {', '.join(missing)}")
    return files


def _fingerprint(files: dict) -> str:
    """Cheap cache key: names, sizes and mtimes of the sources (the zip's sha256 is the real identity)."""
    h = hashlib.sha256(f"edgebench-bundle-cache-{CACHE_VERSION}\n".encode())
    for arc in sorted(files):
        st = files[arc].stat()
        h.update(f"{arc}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _zip_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    entries = {arc: path.read_bytes() for arc, path in files.items()}
    entries[LAUNCHER_NAME] = LAUNCHER.encode()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc in sorted(entries):
            info = zipfile.ZipInfo(arc, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, entries[arc], compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_bundle(state_dir: Path, extra_modules: Iterable = ()) -> Bundle:
    """Build (or reuse from ``<state_dir>/cache/bundles``) the agent bundle zip."""
    files = bundle_files(tuple(extra_modules))
    cache = Path(state_dir) / "cache" / "bundles"
    index = cache / "index" / f"{_fingerprint(files)}.json"
    if index.is_file():
        try:
            entry = json.loads(index.read_text())
            path = cache / entry["file"]
            if path.is_file() and path.stat().st_size == entry["size"]:
                return Bundle(path=path, sha256=entry["sha256"], size=entry["size"])
        except (ValueError, KeyError, TypeError, OSError):
            pass  # a damaged index entry: rebuild below
    bundle = make_bundle(files, cache)
    _write_atomic(index, json.dumps({"file": bundle.path.name, "sha256": bundle.sha256,
                                     "size": bundle.size}).encode())
    return bundle


def make_bundle(files: dict, out_dir: Path) -> Bundle:
    """Write the deterministic zip of ``files`` (archive name -> path) plus the launcher into ``out_dir``."""
    data = _zip_bytes(files)
    sha = hashlib.sha256(data).hexdigest()
    path = Path(out_dir) / f"edgebench-agent-{sha[:12]}.zip"
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha):
        _write_atomic(path, data)
    return Bundle(path=path, sha256=sha, size=len(data))
