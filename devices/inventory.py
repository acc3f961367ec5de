"""The device inventory: ``devices.toml`` plus the built-in ``local`` device.

```toml
[devices.pi4-1]
host = "192.168.1.40"
port = 22                       # default 22
user = "pi"
key_file = "~/.ssh/edgebench"   # key authentication only
python = "/usr/bin/python3"     # default "python3"
tags = ["pi4", "arm64"]
threads = 4
work_dir = "~/.edgebench"       # default
budget_class = "pi4"
connect_timeout = 10            # seconds, default 10
quantized_engine = "qnnpack"    # torch.backends.quantized.engine; default: the board's own

[devices.local]                 # optional: tune the built-in device (this machine)
cpus = 2                        # pin to 2 CPUs (sched_setaffinity / taskset)
threads = 2
tags = ["ci"]
```

Unknown keys and bad values raise InventoryError naming the file and the key; so does a ``key_file`` that
does not exist (``~`` expanded, a relative path taken from the working directory, as SSH will read it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from devices.errors import InventoryError
from devices.ondevice.protocol import MAX_THREADS, QUANTIZED_ENGINES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCAL = "local"
DEFAULT_PORT = 22
DEFAULT_PYTHON = "python3"
DEFAULT_WORK_DIR = "~/.edgebench"
DEFAULT_CONNECT_TIMEOUT = 10.0

REMOTE_KEYS = ("host", "port", "user", "key_file", "python", "tags", "threads", "work_dir",
               "budget_class", "connect_timeout", "quantized_engine")
LOCAL_KEYS = ("python", "tags", "threads", "cpus", "work_dir", "budget_class", "quantized_engine")


@dataclass(frozen=True)
class Device:
    """One device. ``host`` is None for the built-in local device (this machine)."""

    name: str
    host: str | None = None
    port: int = DEFAULT_PORT
    user: str | None = None
    key_file: str | None = None
    python: str = DEFAULT_PYTHON
    tags: tuple = ()
    threads: int | None = None
    cpus: int | None = None
    work_dir: str | None = None
    budget_class: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    quantized_engine: str | None = None     # None: the board's default engine

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def address(self) -> str:
        """``user@host:port`` for messages; ``local`` for this machine."""
        if self.is_local:
            return LOCAL
        return f"{self.user}@{self.host}:{self.port}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "local": self.is_local, "tags": list(self.tags)}
        for key in ("host", "port", "user", "key_file", "python", "threads", "cpus", "work_dir",
                    "budget_class", "connect_timeout", "quantized_engine"):
            d[key] = getattr(self, key)
        return d


def local_device(**overrides: Any) -> Device:
    """The built-in device: this machine, running the agent with the controller's Python."""
    values: dict[str, Any] = {"name": LOCAL, "python": sys.executable}
    values.update(overrides)
    return Device(**values)


@dataclass(frozen=True)
class Inventory:
    devices: dict = field(default_factory=dict)   # name -> Device, "local" first
    source: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.devices)

    def get(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise InventoryError(
                f"{self._where()}: unknown device {name!r}; known devices: {', '.join(self.names)}"
            ) from None

    def select(self, selectors: Iterable[str]) -> list[Device]:
        """Devices by name or ``tag:T``, in the order given, without duplicates."""
        chosen: list[Device] = []
        for sel in selectors:
            sel = sel.strip()
            if sel.startswith("tag:"):
                tag = sel[4:]
                hits = [d for d in self.devices.values() if tag in d.tags]
                if not hits:
                    tags = sorted({t for d in self.devices.values() for t in d.tags})
                    raise InventoryError(
                        f"{self._where()}: no device has tag {tag!r}; known tags: "
                        f"{', '.join(tags) or '(none)'}"
                    )
            else:
                hits = [self.get(sel)]
            for d in hits:
                if d not in chosen:
                    chosen.append(d)
        return chosen

    def _where(self) -> str:
        return str(self.source) if self.source else "devices inventory"


def _fail(source: str, key: str, message: str) -> InventoryError:
    return InventoryError(f"{source}: {key}: {message}")


def _check_str(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, key, f"expected a non-empty string, got {value!r}")
    return value


def _check_int(source: str, key: str, value: Any, lo: int, hi: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise _fail(source, key, f"expected {what}, got {shown}")
    return value


def parse_device(name: str, table: Any, source: str = "devices.toml") -> Device:
    """Validate one ``[devices.NAME]`` table."""
    prefix = f"devices.{name}"
    if not isinstance(table, Mapping):
        raise _fail(source, prefix, f"expected a table, got {table!r}")
    if not name or any(c.isspace() for c in name) or name.startswith("tag:"):
        raise _fail(source, prefix, "a device name must be non-empty, without spaces, not 'tag:...'")
    is_local = name == LOCAL
    allowed = LOCAL_KEYS if is_local else REMOTE_KEYS
    for key in table:
        if key not in allowed:
            hint = " (the built-in local device is this machine)" if is_local and key in REMOTE_KEYS else ""
            raise _fail(source, f"{prefix}.{key}", f"unknown key{hint}; allowed: {', '.join(allowed)}")
    values: dict[str, Any] = {"name": name}
    k = lambda key: f"{prefix}.{key}"  # noqa: E731
    if not is_local:
        if "host" not in table:
            raise _fail(source, k("host"), "missing (the device's address)")
        values["host"] = _check_str(source, k("host"), table["host"])
        if "user" not in table:
            raise _fail(source, k("user"), "missing (the SSH login on the device)")
        values["user"] = _check_str(source, k("user"), table["user"])
        if "key_file" not in table:
            raise _fail(source, k("key_file"), "missing (edgebench uses key authentication only)")
        values["key_file"] = _check_str(source, k("key_file"), table["key_file"])
        if "port" in table:
            values["port"] = _check_int(source, k("port"), table["port"], 1, 65535, "an integer 1-65535")
        if "connect_timeout" in table:
            v = table["connect_timeout"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 600:
                raise _fail(source, k("connect_timeout"), f"expected seconds in (0, 600], got {v!r}")
            values["connect_timeout"] = float(v)
        # Found now, not at the first connection mid-run. Read as the SSH transport reads it: ~ expanded,
        # a relative path relative to the working directory.
        key_path = os.path.expanduser(values["key_file"])
        if not os.path.isfile(key_path):
            what = "is not a file" if os.path.exists(key_path) else "does not exist"
            raise _fail(source, k("key_file"), f"{values['key_file']} {what} (the SSH private key to log in "
                                               "with; create one with ssh-keygen -t ed25519)")
        values["work_dir"] = DEFAULT_WORK_DIR
    else:
        values["python"] = sys.executable
    if "python" in table:
        values["python"] = _check_str(source, k("python"), table["python"])
    if "work_dir" in table:
        values["work_dir"] = _check_str(source, k("work_dir"), table["work_dir"])
    if "budget_class" in table:
        values["budget_class"] = _check_str(source, k("budget_class"), table["budget_class"])
    if "threads" in table:
        values["threads"] = _check_int(source, k("threads"), table["threads"], 1, MAX_THREADS,
                                       f"an integer >= 1 and <= {MAX_THREADS}")
    if "quantized_engine" in table:
        engine = table["quantized_engine"]
        if engine not in QUANTIZED_ENGINES:
            raise _fail(source, k("quantized_engine"),
                        f"expected one of {', '.join(QUANTIZED_ENGINES)}, got {engine!r}")
        values["quantized_engine"] = engine
    if "cpus" in table:
        values["cpus"] = _check_int(source, k("cpus"), table["cpus"], 1, 4096, "an integer >= 1")
    if "tags" in table:
        tags = table["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t and " " not in t for t in tags):
            raise _fail(source, k("tags"), f"expected a list of words, got {tags!r}")
        values["tags"] = tuple(dict.fromkeys(tags))
    return Device(**values)


def parse_inventory(data: Mapping, source: str = "devices.toml") -> dict:
    """Validate a parsed devices.toml; returns name -> Device with ``local`` first."""
    for key in data:
        if key != "devices":
            raise _fail(source, key, "unknown key; devices.toml holds only [devices.NAME] tables")
    tables = data.get("devices", {})
    if not isinstance(tables, Mapping):
        raise _fail(source, "devices", "expected tables [devices.NAME]")
    devices: dict[str, Device] = {LOCAL: local_device()}
    for name, table in tables.items():
        devices[name] = parse_device(name, table, source)
    return devices


def load_inventory(path: Path | str | None = None) -> Inventory:
    """Read devices.toml (a missing file given as None means: only the built-in local device)."""
    if path is None:
        return Inventory(devices={LOCAL: local_device()}, source=None)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(f"{path}: no such file") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: invalid TOML: {exc}") from None
    return Inventory(devices=parse_inventory(data, str(path)), source=path)
