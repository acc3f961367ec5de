"""The on-device package needs only the standard library and a runtime: torch, or numpy and onnxruntime (plus
the bundled pypinyin); and the bundle ships it whole: a new module under devices/ondevice travels without
anyone editing a file list."""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import pytest

import devices.ondevice
from devices import bundle
from devices.ondevice import artifact as reader
from devices.ondevice.errors import ArtifactError

PACKAGE = Path(devices.ondevice.__file__).parent
ALLOWED_THIRD_PARTY = {"torch", "pypinyin", "numpy", "onnxruntime"}


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_ondevice_imports_only_stdlib_a_runtime_and_itself():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if name == "devices.ondevice" or name.startswith("devices.ondevice."):
                continue
            if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "__future__":
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent.parent)}:{line}: imports {name}")
    assert not bad, "\n".join(bad)


def test_the_scan_catches_a_controller_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom devices.errors import DevicesError\nimport numpy as np\n")
    names = [name for _, name in _imports(probe)]
    assert names == ["os", "devices.errors", "numpy"]


def test_bundle_ships_the_package_whole(tmp_path):
    b = bundle.build_bundle(tmp_path)
    with zipfile.ZipFile(b.path) as zf:
        names = set(zf.namelist())
    expected = {f"devices/ondevice/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")
                if "__pycache__" not in p.parts}
    assert expected <= names
    controller_side = {n for n in names if n.startswith(("devices/", "variants/", "harness/"))} - expected
    assert controller_side == {"devices/__init__.py"}


def test_the_reader_refuses_an_unknown_format_version(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format_version": 99, "content_hash": "x"}')
    with pytest.raises(ArtifactError, match="format_version 99 is not supported"):
        reader.read_manifest(tmp_path)
