"""``edgebench devices list|add|check|trust``: the device inventory (devices.toml) and its health.

The work is done by plain keyword-argument functions (``list_devices``, ``add_device``, ``check``,
``trust``) callable from Python; ``from_args`` only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import tomli_w

from devices import health as health_mod
from devices import hostkeys
from devices.errors import InventoryError
from devices.inventory import Device, Inventory, load_inventory, parse_device, parse_labgrid, tomllib
from harness import paths

NAME = "devices"
HELP = "List, add, check (health) and trust (SSH host key) the devices in devices.toml."
CHECK_FAILED_EXIT = 1   # `devices check`: some device is ineligible


def _inventory_path(path: str | Path | None) -> Path:
    """The devices.toml ``devices add`` writes (it may not exist yet)."""
    return Path(path) if path else paths.devices_toml_path()


def _load(path: str | Path | None) -> Inventory:
    """The inventory, found as ``edgebench run`` finds it (``paths.inventory_path``)."""
    return load_inventory(paths.inventory_path(path))


def _load_farm(path: str | Path | None) -> Inventory:
    """The inventory with its labgrid groups expanded to one device per place (asks the coordinator)."""
    from devices import labgrid

    return labgrid.expand_places(_load(path))


def list_devices(inventory: str | Path | None = None, farm: bool = False) -> list:
    """Every device, the built-in local one first; ``farm``: labgrid groups as their places."""
    return list((_load_farm if farm else _load)(inventory).devices.values())


def add_device(name: str, inventory: str | Path | None = None, replace: bool = False, **fields) -> Device:
    """Validate ``[devices.NAME]`` and write it to devices.toml (created if missing; drops comments)."""
    path = _inventory_path(inventory)
    data: dict = {}
    if path.exists():
        load_inventory(path)   # refuse to append to a file that is already invalid
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    tables = data.setdefault("devices", {})
    if name in tables and not replace:
        raise InventoryError(f"{path}: devices.{name}: already exists (use --replace to overwrite it)")
    entry = {k: v for k, v in fields.items() if v is not None and v != [] and v != ()}
    if "tags" in entry:
        entry["tags"] = list(entry["tags"])
    labgrid = parse_labgrid(data["labgrid"], str(path)) if "labgrid" in data else None
    device = parse_device(name, entry, str(path), labgrid)
    tables[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            tomli_w.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return device


def check(selectors=("all",), inventory: str | Path | None = None, state_dir: Path | None = None,
          timeout: float = health_mod.CHECK_TIMEOUT_S) -> list:
    """Health of the selected devices (``all``, names or ``tag:T``), checked in parallel."""
    inv = _load_farm(inventory)
    selectors = list(selectors) or ["all"]
    devices = list(inv.devices.values()) if selectors == ["all"] else inv.select(selectors)
    state = state_dir or paths.state_dir()
    from devices.ondevice.artifact import RUNTIMES

    # eligible when any runtime runs there; the RUNTIMES column says which
    return health_mod.check_devices(devices, known_hosts=paths.known_hosts_path(state), state_dir=state,
                                    timeout=timeout, runtimes=RUNTIMES)


def trust(name: str, inventory: str | Path | None = None, state_dir: Path | None = None,
          replace: bool = False) -> hostkeys.TrustResult:
    """Fetch NAME's SSH host key and record it in edgebench's known_hosts."""
    inv = _load(inventory)
    device = inv.devices.get(name) or _load_farm(inventory).get(name)   # a place of a group, by name
    if device.is_labgrid:
        from devices import labgrid

        if device.place is None:
            raise InventoryError(f"{name}: a group of labgrid places whose coordinator could not be asked "
                                 "for them; trust each place's device by name (`edgebench devices list "
                                 "--farm` lists them)")
        device = labgrid.network_service(device)   # where the place's board is; not acquired
    state = state_dir or paths.state_dir()
    return hostkeys.trust(device, paths.known_hosts_path(state), replace=replace)


# ------------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--inventory", metavar="PATH",
                        help="devices.toml to use (default: ./devices.toml)")
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="show every device (the built-in local one too) with its tags")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--farm", action="store_true",
                   help="ask the labgrid coordinator: each group of places (place_tags) as its places")

    p = sub.add_parser("add", help="add a validated device entry to devices.toml")
    p.add_argument("name")
    p.add_argument("--host")
    p.add_argument("--place", help="a board of the labgrid farm ([labgrid] in devices.toml): its place's "
                                   "name (instead of --host/--port/--user)")
    p.add_argument("--port", type=int)
    p.add_argument("--user")
    p.add_argument("--key-file", dest="key_file")
    p.add_argument("--python", help='the Python on the device (default "python3")')
    p.add_argument("--tag", dest="tags", action="append", default=[], help="repeatable")
    p.add_argument("--threads", type=int)
    p.add_argument("--cpus", type=int, help="local device only: pin to N CPUs")
    p.add_argument("--work-dir", dest="work_dir")
    p.add_argument("--budget-class", dest="budget_class")
    p.add_argument("--connect-timeout", dest="connect_timeout", type=float)
    p.add_argument("--quantized-engine", dest="quantized_engine",
                   help="torch.backends.quantized.engine on the board (default: the board's own)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing entry")

    p = sub.add_parser("check", help="health of devices in parallel (exit 1 when any is ineligible)")
    p.add_argument("selectors", nargs="*", default=["all"], metavar="DEVICE",
                   help="names or tag:T (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=health_mod.CHECK_TIMEOUT_S, help="seconds per device")

    p = sub.add_parser("trust", help="fetch a device's SSH host key, show its fingerprint, record it")
    p.add_argument("name")
    p.add_argument("--replace", action="store_true", help="replace a key that changed (device reinstalled)")


def _mib(value) -> str:
    return f"{value / 1024**2:.0f} MiB" if isinstance(value, int) else "-"


def _table(rows: list) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def from_args(args: argparse.Namespace) -> int:
    action = args.devices_command
    if action == "list":
        devices = list_devices(args.inventory, farm=args.farm)
        if args.json:
            print(json.dumps([d.to_dict() for d in devices], indent=2))
            return 0
        rows = [("NAME", "ADDRESS", "TAGS", "THREADS", "CPUS", "BUDGET CLASS")]
        for d in devices:
            rows.append((d.name, "this machine" if d.is_local else d.address, ",".join(d.tags) or "-",
                         d.threads or "-", d.cpus or "-", d.budget_class or "-"))
        print(_table(rows))
        return 0
    if action == "add":
        keys = ("host", "place", "port", "user", "key_file", "python", "tags", "threads", "cpus", "work_dir",
                "budget_class", "connect_timeout", "quantized_engine")
        fields = {k: getattr(args, k) for k in keys}
        device = add_device(args.name, inventory=args.inventory, replace=args.replace, **fields)
        path = _inventory_path(args.inventory)
        print(f"added {device.name} ({device.address}) to {path}")
        if not device.is_local:
            print(f"next: verify its host key with `edgebench devices trust {device.name}`")
        return 0
    if action == "check":
        results = check(args.selectors, inventory=args.inventory, timeout=args.timeout)
        if args.json:
            print(json.dumps([h.to_dict() for h in results], indent=2))
        else:
            rows = [("DEVICE", "STATUS", "MACHINE", "PYTHON", "RUNTIMES", "TORCH", "QENGINE", "ONNXRUNTIME",
                     "DISK FREE", "MEM AVAIL", "TEMP", "REASON")]
            for h in results:
                f = h.facts
                temp = f.get("temp_c")
                usable = [r for r, problem in h.runtimes.items() if problem is None]
                # the runtimes a device lacks are not a failure of the device: said next to its warnings
                notes = [f"{r}: {p}" for r, p in h.runtimes.items() if p] if h.ok else []
                rows.append((h.device, "ok" if h.ok else "INELIGIBLE", f.get("machine") or "-",
                             f.get("python") or "-", ",".join(usable) or "-",
                             f.get("torch") or "-", f.get("quantized_engine") or "-",
                             f.get("onnxruntime") or "-",
                             _mib(f.get("disk_free_bytes")), _mib(f.get("mem_available_bytes")),
                             f"{temp:.0f}C" if isinstance(temp, (int, float)) else "-",
                             h.reason or "; ".join([*h.warnings, *notes]) or ""))
            print(_table(rows))
        return 0 if all(h.ok for h in results) else CHECK_FAILED_EXIT
    if action == "trust":
        result = trust(args.name, inventory=args.inventory, replace=args.replace)
        print(f"{result.device} ({result.host_id}): {result.key_type} {result.fingerprint}")
        if result.status == "unchanged":
            print("already trusted with this key")
        elif result.status == "replaced":
            print(f"replaced the previous key {result.previous_fingerprint}")
        else:
            kind = "ecdsa" if result.key_type.startswith("ecdsa") else (
                "ed25519" if "ed25519" in result.key_type else "rsa")
            print(f"recorded in {paths.known_hosts_path()}; compare the fingerprint with the device's "
                  f"(ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub)")
        return 0
    print(f"edgebench devices: unknown action {action!r}", file=sys.stderr)  # pragma: no cover
    return 2
