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

[labgrid]                       # boards borrowed from a labgrid farm (pip install 'edgebench[farm]')
coordinator = "lab.example:20408"
wait_s = 600                    # how long to wait for a place someone else holds; then "busy"
timeout_s = 10                  # each request to the coordinator

[devices.pi5-1]                 # one place, by name: host, port and user come from its NetworkService
place = "pi5-1"
key_file = "~/.ssh/edgebench"
budget_class = "pi5"

[devices.arm-farm]              # every place with these tags: one device each, named after the place,
place_tags = { arch = "aarch64" }   # tagged with the group's name (select them as arm-farm or tag:arm-farm)
key_file = "~/.ssh/edgebench"
```

A labgrid device is held (acquired) only while it is measured and always released (see
``devices.labgrid``). Its host key must be trusted like any other's (``edgebench devices trust NAME``
reads the address from the place without acquiring it).

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
#: A labgrid device names its place (or the tags of its places) instead of an address.
PLACE_KEYS = ("place", "place_tags", "key_file", "python", "tags", "threads", "work_dir", "budget_class",
              "connect_timeout", "quantized_engine")
LABGRID_KEYS = ("coordinator", "wait_s", "timeout_s")
DEFAULT_PLACE_WAIT_S = 600.0
DEFAULT_COORDINATOR_TIMEOUT_S = 10.0
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
    # A board of a labgrid farm: its place (host, port and user are filled in from the place's
    # NetworkService once it is held), or, for a group not yet expanded, the tags its places carry.
    place: str | None = None
    place_tags: tuple = ()                  # ((key, value), ...)
    coordinator: str | None = None
    place_wait_s: float = DEFAULT_PLACE_WAIT_S
    coordinator_timeout_s: float = DEFAULT_COORDINATOR_TIMEOUT_S

    @property
    def is_local(self) -> bool:
        return self.host is None and not self.is_labgrid

    @property
    def is_labgrid(self) -> bool:
        return self.place is not None or bool(self.place_tags)

    @property
    def address(self) -> str:
        """``user@host:port`` for messages; ``local`` for this machine; a labgrid place not held yet by
        its name and coordinator."""
        if self.is_local:
            return LOCAL
        if self.host is None:
            what = (f"place {self.place}" if self.place is not None else
                    "places tagged " + ",".join(f"{k}={v}" for k, v in self.place_tags))
            return f"labgrid {what} at {self.coordinator}"
        return f"{self.user}@{self.host}:{self.port}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "local": self.is_local, "tags": list(self.tags)}
        for key in ("host", "port", "user", "key_file", "python", "threads", "cpus", "work_dir",
                    "budget_class", "connect_timeout", "quantized_engine"):
            d[key] = getattr(self, key)
        if self.is_labgrid:
            d.update(place=self.place, place_tags=dict(self.place_tags), coordinator=self.coordinator,
                     place_wait_s=self.place_wait_s)
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
            elif sel not in self.devices and any(sel in d.tags and d.place for d in self.devices.values()):
                hits = [d for d in self.devices.values() if sel in d.tags and d.place]  # a labgrid group
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


def parse_device(name: str, table: Any, source: str = "devices.toml",
                 labgrid: Mapping[str, Any] | None = None) -> Device:
    """Validate one ``[devices.NAME]`` table (``labgrid``: the parsed ``[labgrid]`` settings, which a
    device with ``place`` or ``place_tags`` needs)."""
    prefix = f"devices.{name}"
    if not isinstance(table, Mapping):
        raise _fail(source, prefix, f"expected a table, got {table!r}")
    if not name or any(c.isspace() for c in name) or name.startswith("tag:"):
        raise _fail(source, prefix, "a device name must be non-empty, without spaces, not 'tag:...'")
    is_local = name == LOCAL
    on_farm = not is_local and ("place" in table or "place_tags" in table)
    allowed = LOCAL_KEYS if is_local else PLACE_KEYS if on_farm else REMOTE_KEYS
    for key in table:
        if key not in allowed:
            if is_local and key in REMOTE_KEYS:
                hint = " (the built-in local device is this machine)"
            elif on_farm and key in REMOTE_KEYS:
                hint = " (a labgrid place's NetworkService gives its address, port and user)"
            else:
                hint = ""
            raise _fail(source, f"{prefix}.{key}", f"unknown key{hint}; allowed: {', '.join(allowed)}")
    values: dict[str, Any] = {"name": name}
    k = lambda key: f"{prefix}.{key}"  # noqa: E731
    if on_farm:
        if "place" in table and "place_tags" in table:
            raise _fail(source, k("place_tags"), "give either place (one place) or place_tags (every place "
                                                 "with these tags), not both")
        if labgrid is None:
            key = "place" if "place" in table else "place_tags"
            raise _fail(source, k(key), "needs a [labgrid] table with the coordinator's address")
        values.update(coordinator=labgrid["coordinator"], place_wait_s=labgrid["wait_s"],
                      coordinator_timeout_s=labgrid["timeout_s"])
        if "place" in table:
            values["place"] = _check_str(source, k("place"), table["place"])
        else:
            tags = table["place_tags"]
            if (not isinstance(tags, Mapping) or not tags
                    or not all(isinstance(t, str) and t and isinstance(v, (str, int))
                               and not isinstance(v, bool) for t, v in tags.items())):
                raise _fail(source, k("place_tags"), f"expected a table of tag = value, got {tags!r}")
            values["place_tags"] = tuple(sorted((t, str(v)) for t, v in tags.items()))
    if not is_local:
        if not on_farm:
            if "host" not in table:
                raise _fail(source, k("host"), "missing (the device's address; or place = \"NAME\" for a "
                                               "board of a labgrid farm)")
            values["host"] = _check_str(source, k("host"), table["host"])
            if "user" not in table:
                raise _fail(source, k("user"), "missing (the SSH login on the device)")
            values["user"] = _check_str(source, k("user"), table["user"])
        if "key_file" not in table:
            raise _fail(source, k("key_file"), "missing (edgebench uses key authentication only)")
        values["key_file"] = _check_str(source, k("key_file"), table["key_file"])
        if "port" in table and not on_farm:
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
        if key not in ("devices", "labgrid"):
            raise _fail(source, key, "unknown key; devices.toml holds [devices.NAME] tables and [labgrid]")
    tables = data.get("devices", {})
    if not isinstance(tables, Mapping):
        raise _fail(source, "devices", "expected tables [devices.NAME]")
    labgrid = parse_labgrid(data["labgrid"], source) if "labgrid" in data else None
    devices: dict[str, Device] = {LOCAL: local_device()}
    for name, table in tables.items():
        devices[name] = parse_device(name, table, source, labgrid)
    return devices


def parse_labgrid(table: Any, source: str = "devices.toml") -> dict:
    """Validate ``[labgrid]``: the coordinator's address (host:port, or host for labgrid's default port),
    how long to wait for a busy place, and the bound of each request to the coordinator."""
    if not isinstance(table, Mapping):
        raise _fail(source, "labgrid", f"expected a table, got {table!r}")
    for key in table:
        if key not in LABGRID_KEYS:
            raise _fail(source, f"labgrid.{key}", f"unknown key; allowed: {', '.join(LABGRID_KEYS)}")
    if "coordinator" not in table:
        raise _fail(source, "labgrid.coordinator", "missing (the coordinator's host:port, e.g. "
                                                   "\"lab.example:20408\")")
    address = _check_str(source, "labgrid.coordinator", table["coordinator"])
    if any(c.isspace() for c in address) or "/" in address.split("://", 1)[-1]:
        raise _fail(source, "labgrid.coordinator", f"expected host:port, got {address!r}")
    out = {"coordinator": address, "wait_s": DEFAULT_PLACE_WAIT_S, "timeout_s": DEFAULT_COORDINATOR_TIMEOUT_S}
    for key, hi in (("wait_s", 86400), ("timeout_s", 600)):
        if key in table:
            v = table[key]
            zero_ok = key == "wait_s"   # 0: do not wait for a busy place
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or v > hi
                    or not (v >= 0 if zero_ok else v > 0)):
                span = f"{'[' if zero_ok else '('}0, {hi}]"
                raise _fail(source, f"labgrid.{key}", f"expected seconds in {span}, got {v!r}")
            out[key] = float(v)
    return out


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
