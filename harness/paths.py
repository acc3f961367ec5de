"""Where edgebench keeps its state: ``.edgebench/`` in the current directory unless EDGEBENCH_HOME is set.

The state directory holds the SSH ``known_hosts`` that edgebench trusts (and nothing else does), the cache
(agent bundles, built variants), the local device's work directory and the default results database.
It is private whatever the umask: edgebench creates its directories with mode 0700 and its files
(known_hosts, results.sqlite) with mode 0600 (``private_dir``, ``private_file``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EDGEBENCH_HOME"
DEFAULT_DIR_NAME = ".edgebench"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; every directory it creates gets mode 0700 (set explicitly: the umask cannot widen
    it). Directories that already exist are left as they are."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    for created in reversed(missing):
        os.chmod(created, PRIVATE_DIR_MODE)
    return path


def private_file(path: str | os.PathLike) -> Path:
    """Create ``path`` (empty; its missing directories private) with mode 0600 unless it exists; an
    existing file is left as it is. For files another library then opens (SQLite gives its -wal and -shm
    files the database file's mode)."""
    path = Path(path)
    if not path.exists():
        private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:  # created meanwhile by another process: theirs
            return path
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        finally:
            os.close(fd)
    return path


def state_dir(create: bool = True) -> Path:
    """The state directory (absolute); created (mode 0700) unless ``create`` is False."""
    env = os.environ.get(ENV_VAR)
    path = Path(env).expanduser() if env else Path.cwd() / DEFAULT_DIR_NAME
    path = path.absolute()
    if create:
        private_dir(path)
    return path


def known_hosts_path(base: Path | None = None) -> Path:
    """edgebench's own known_hosts file (``edgebench devices trust NAME`` writes it)."""
    return (base or state_dir()) / "known_hosts"


def cache_dir(base: Path | None = None, create: bool = False) -> Path:
    """The cache (agent bundles, built variants); ``create``: made now, private like the state directory,
    so that the folders a build then creates inside it are out of other users' reach."""
    path = (base or state_dir()) / "cache"
    return private_dir(path) if create else path


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
