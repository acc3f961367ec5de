"""Where edgebench keeps its state: ``.edgebench/`` in the current directory unless EDGEBENCH_HOME is set.

The state directory holds the SSH ``known_hosts`` that edgebench trusts (and nothing else does), the cache
(agent bundles, built variants), the local device's work directory and the default results database.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EDGEBENCH_HOME"
DEFAULT_DIR_NAME = ".edgebench"


def state_dir(create: bool = True) -> Path:
    """The state directory (absolute); created unless ``create`` is False."""
    env = os.environ.get(ENV_VAR)
    path = Path(env).expanduser() if env else Path.cwd() / DEFAULT_DIR_NAME
    path = path.absolute()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def known_hosts_path(base: Path | None = None) -> Path:
    """edgebench's own known_hosts file (``edgebench devices trust NAME`` writes it)."""
    return (base or state_dir()) / "known_hosts"


def cache_dir(base: Path | None = None) -> Path:
    return (base or state_dir()) / "cache"


def local_device_dir(base: Path | None = None) -> Path:
    """The built-in ``local`` device's work directory (bundles and artifacts pushed to this machine)."""
    return (base or state_dir()) / "local-device"


def results_db_path(base: Path | None = None) -> Path:
    """The default results store (SQLite)."""
    return (base or state_dir()) / "results.sqlite"


def devices_toml_path() -> Path:
    """The default inventory: ``devices.toml`` in the current directory."""
    return Path.cwd() / "devices.toml"


def inventory_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The inventory ``edgebench run`` and ``edgebench devices`` read: ``explicit`` when given, else
    ./devices.toml when it exists, else None (only the built-in local device)."""
    if explicit is not None:
        return Path(explicit)
    default = devices_toml_path()
    return default if default.exists() else None
