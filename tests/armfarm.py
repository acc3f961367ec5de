"""Emulated aarch64 boards (Raspberry Pi 5 / Pi 4 class) for the SSH test farm (tests/sshfarm.py).

A board is Debian 12's aarch64 Python 3.11 run by qemu-user (``qemu-aarch64-static``, called explicitly: no
binfmt_misc) with the CPU of the board and that board's aarch64 torch wheel, behind a real sshd on loopback.
``.ci/arm-boards`` prepares the shared parts once (an arm64 sysroot and one folder per torch version); each
board then gets its own small folder:

    <board>/root/          qemu's -L prefix: an absolute path the emulated process opens is looked up here
                           first and, when it exists here, used instead of the host's
        etc, lib, usr/*    symlinks into the shared sysroot
        usr/local/lib/python3.11/dist-packages -> the board's torch folder (as `pip install` puts it)
        proc/cpuinfo       the recorded /proc/cpuinfo (tests/data/boards/<name>/cpuinfo)
        proc/device-tree   -> ../sys/firmware/devicetree/base (as on the board); its `model` ends with NUL
    <board>/bin/python     the board's Python command (the Device's ``python``): a /bin/sh script that execs
                           qemu; python3 links to it
    <board>/bin/vcgencmd   prints the recorded `vcgencmd get_throttled` line (only with a recorded one)

The emulated interpreter's ``sys.executable`` is the wrapper (qemu ``-0``), so child interpreters the agent
starts with ``sys.executable`` work: an emulated process cannot exec an aarch64 ELF itself. Host programs
(``/bin/sh``, ``vcgencmd``) run natively. The emulated process sees ``platform.machine() == "aarch64"`` but
the host's core count, memory, /proc/<pid> and /sys files (only what the board root holds is replaced;
listing ``/proc`` shows only the board's own entries there).

```python
farm = SSHFarm(tmp_path)
dev = add_board(farm, "pi5")                  # a Device whose python is the board's wrapper
t = SSHTransport(dev, farm.known_hosts)
t.run([dev.python, "-c", "import platform; print(platform.machine())"], timeout=60)   # aarch64
t.run(["vcgencmd", "get_throttled"], timeout=10)                                       # throttled=0x0
```

Under emulation ``import torch`` takes 15-40 s and arithmetic is 100-300x slower than native; ``pi4`` is the
board whose torch (2.10, built for ARMv8.2) dies with SIGILL on its Cortex-A72.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sshfarm import SSHFarm, SSHServer, free_port

from devices.inventory import Device

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / ".ci" / "arm-boards"
DATA = Path(__file__).resolve().parent / "data" / "boards"
ARM_ROOT_ENV = "EDGEBENCH_ARM_ROOT"   # a prepared cache folder to use instead of running .ci/arm-boards
SETUP_TIMEOUT_S = 60.0                # --check only looks
PYTHON_IN_SYSROOT = "usr/bin/python3.11"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
QEMU_NAME = "qemu-aarch64-static"
#: The PATH of an SSH session on a board: the board's bin folder first, then sshd's default for root.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ArmUnavailable(RuntimeError):
    """The emulated boards cannot be prepared here (no qemu-user, no network for the first setup, ...)."""


# -- the shared cache (.ci/arm-boards)

_cache_root: Path | None = None
_cache_error: str | None = None


def _check_cache(root: Path, where: str) -> Path:
    if not (root / "sysroot" / PYTHON_IN_SYSROOT).is_file():
        raise ArmUnavailable(f"{where}: {root} has no sysroot/{PYTHON_IN_SYSROOT} "
                             "(not a folder made by .ci/arm-boards)")
    return root


def arm_cache_root() -> Path:
    """The folder ``.ci/arm-boards --check`` prints (sysroot/, torch-<version>/): the tests never install or
    download (``.ci/run`` prepares the boards; on a developer machine run ``bash .ci/arm-boards`` once).
    Asked once per session and remembered, failure included; ``$EDGEBENCH_ARM_ROOT`` names a prepared
    folder instead. Raises ArmUnavailable with the script's message when the boards are not prepared."""
    global _cache_root, _cache_error
    override = os.environ.get(ARM_ROOT_ENV, "")
    if override:
        return _check_cache(Path(override), f"${ARM_ROOT_ENV}")
    if _cache_root is not None:
        return _cache_root
    if _cache_error is not None:
        raise ArmUnavailable(_cache_error)
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT), "--check"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _cache_error = f"{SETUP_SCRIPT}: {exc}"
        raise ArmUnavailable(_cache_error) from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        _cache_error = (f"{SETUP_SCRIPT} failed (exit {proc.returncode}): "
                        f"{(proc.stderr.strip() or proc.stdout.strip())[-2000:]}")
        raise ArmUnavailable(_cache_error)
    try:
        _cache_root = _check_cache(Path(lines[-1]), str(SETUP_SCRIPT))
    except ArmUnavailable as exc:
        _cache_error = str(exc)
        raise
    return _cache_root


def require_arm_boards() -> None:
    """The check every ARM test starts with: sshd, qemu-user and the prepared boards, or the test is skipped
    (failed under EDGEBENCH_REQUIRE_SERVICES, as in CI)."""
    from conftest import require_service
    from sshfarm import sshd_available

    require_service(sshd_available(), "OpenSSH sshd and ssh-keygen")
    try:
        qemu_path()
        arm_cache_root()
    except ArmUnavailable as exc:
        require_service(False, f"emulated aarch64 boards from .ci/arm-boards ({exc})")


def qemu_path() -> str:
    path = shutil.which(QEMU_NAME)
    if path is None:
        raise ArmUnavailable(f"{QEMU_NAME} not found (.ci/arm-boards installs qemu-user-static)")
    return path


# -- board specs (recorded facts in tests/data/boards/<name>/)


@dataclass(frozen=True)
class BoardSpec:
    name: str
    qemu_cpu: str              # qemu -cpu
    torch: str                 # the torch-<version> folder of the cache
    model: str                 # /proc/device-tree/model without its NUL
    cpuinfo: str               # /proc/cpuinfo, exactly
    throttled: str | None = None   # the `vcgencmd get_throttled` line (no newline); None: no vcgencmd
    onnxruntime: bool = False      # numpy and onnxruntime (the cache's ort-<version>) installed beside torch

    @classmethod
    def recorded(cls, name: str, qemu_cpu: str, torch: str, data: Path = DATA,
                 onnxruntime: bool = False) -> BoardSpec:
        folder = data / name
        throttled = folder / "throttled"
        return cls(name=name, qemu_cpu=qemu_cpu, torch=torch, onnxruntime=onnxruntime,
                   model=(folder / "model").read_text().rstrip("\n"),
                   cpuinfo=(folder / "cpuinfo").read_text(),
                   throttled=throttled.read_text().strip() if throttled.exists() else None)


BOARDS: dict[str, BoardSpec] = {spec.name: spec for spec in (
    # Raspberry Pi 5 (Cortex-A76, ARMv8.2) with the current torch line.
    BoardSpec.recorded("pi5", "cortex-a76", "2.10.0"),
    # Raspberry Pi 4 (Cortex-A72, ARMv8.0) with an old torch that still runs on it.
    BoardSpec.recorded("pi4-oldtorch", "cortex-a72", "2.0.1"),
    # Raspberry Pi 4 with torch 2.10, whose aarch64 wheel needs ARMv8.2: `import torch` dies with SIGILL;
    # onnxruntime and numpy are installed too, and run on it.
    BoardSpec.recorded("pi4", "cortex-a72", "2.10.0", onnxruntime=True),
)}


# -- one board's folder


@dataclass(frozen=True)
class Board:
    spec: BoardSpec
    dir: Path
    root: Path          # qemu -L prefix
    bin: Path           # the board's PATH folder (python, python3, vcgencmd)
    python: Path        # the wrapper: the board's python command
    torch_dir: Path

    @property
    def path(self) -> str:
        """PATH for a session on the board."""
        return f"{self.bin}:{BASE_PATH}"


def _overlay(dest: Path, base: Path | None, own: dict) -> None:
    """``dest`` gets a symlink to every entry of ``base`` except where ``own`` (relative path parts ->
    bytes for a file, or ("link", target) for a symlink) puts the board's own entries: those become real
    folders, recursively, so the shared sysroot is never written to."""
    dest.mkdir(parents=True, exist_ok=True)
    heads: dict[str, dict] = {}
    for parts, value in own.items():
        heads.setdefault(parts[0], {})[parts[1:]] = value
    names = set(heads)
    if base is not None and base.is_dir():
        names.update(entry.name for entry in base.iterdir())
    for name in sorted(names):
        target = dest / name
        mine = heads.get(name)
        if mine is None:
            target.symlink_to(base / name)
        elif () in mine:
            value = mine[()]
            if isinstance(value, tuple):
                target.symlink_to(value[1])
            else:
                target.write_bytes(value)
        else:
            sub = base / name if base is not None and (base / name).is_dir() else None
            _overlay(target, sub, mine)


def _wrapper(spec: BoardSpec, qemu: str, root: Path) -> str:
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        f"# Emulated board {spec.name} ({spec.model}): Debian 12 aarch64 Python 3.11 under qemu-user,",
        f"# CPU {spec.qemu_cpu}, torch {spec.torch}. Made by tests/armfarm.py.",
        "# -L: absolute paths that exist under the board root are read from there (proc/cpuinfo, usr/...).",
        "# -0 \"$0\": the interpreter's sys.executable is this script, so it can start child interpreters.",
        "ulimit -c 0 2>/dev/null   # qemu writes a core file of the emulated process on a fatal signal",
        f"exec {q(qemu)} -cpu {q(spec.qemu_cpu)} -L {q(str(root))} -0 \"$0\" "
        f"{q(str(root / PYTHON_IN_SYSROOT))} \"$@\"",
        "",
    ])


def prepare_board(spec: BoardSpec, dest: Path, cache_root: Path | None = None) -> Board:
    """Make the board's folder ``dest`` (see the module docstring); the shared parts come from
    ``cache_root`` (default: arm_cache_root())."""
    cache_root = Path(cache_root) if cache_root is not None else arm_cache_root()
    sysroot = cache_root / "sysroot"
    torch_dir = cache_root / f"torch-{spec.torch}"
    if not (torch_dir / "torch").is_dir():
        raise ArmUnavailable(f"board {spec.name}: {torch_dir} has no torch (is torch {spec.torch} in "
                             f".ci/arm-boards' TORCH_VERSIONS?)")
    qemu = qemu_path()
    dest = Path(dest)
    root, bin_dir = dest / "root", dest / "bin"
    site = tuple(SITE_PACKAGES.split("/"))
    # the board's dist-packages: torch's folder, or (with onnxruntime) a folder of links to both installs
    packages = {site: ("link", torch_dir)}
    if spec.onnxruntime:
        ort_dirs = sorted(cache_root.glob("ort-*"))
        if not ort_dirs or not (ort_dirs[-1] / "onnxruntime").is_dir():
            raise ArmUnavailable(f"board {spec.name}: no aarch64 onnxruntime under {cache_root} "
                                 "(.ci/arm-boards installs it)")
        packages = {(*site, entry.name): ("link", entry)
                    for folder in (torch_dir, ort_dirs[-1]) for entry in sorted(folder.iterdir())
                    if not entry.name.startswith(".")}
    own = {
        **packages,
        ("proc", "cpuinfo"): spec.cpuinfo.encode(),
        # On the board /proc/device-tree is this same (absolute) link; relative here so that it resolves
        # inside the board root both for qemu's lookup on the host and for the emulated process.
        ("proc", "device-tree"): ("link", "../sys/firmware/devicetree/base"),
        ("sys", "firmware", "devicetree", "base", "model"): spec.model.encode() + b"\0",
    }
    _overlay(root, sysroot, own)
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(_wrapper(spec, qemu, root))
    python.chmod(0o755)
    (bin_dir / "python3").symlink_to("python")
    if spec.throttled is not None:
        vcgencmd = bin_dir / "vcgencmd"
        vcgencmd.write_text("\n".join([
            "#!/bin/sh",
            f"# vcgencmd of the emulated board {spec.name}: only the recorded get_throttled.",
            'case "$1" in',
            f"    get_throttled) echo {shlex.quote(spec.throttled)} ;;",
            '    *) echo "vcgencmd (emulated board): only get_throttled is recorded" >&2; exit 2 ;;',
            "esac",
            "",
        ]))
        vcgencmd.chmod(0o755)
    return Board(spec=spec, dir=dest, root=root, bin=bin_dir, python=python, torch_dir=torch_dir)


# -- the SSH farm


def _set_session_path(server: SSHServer, path: str) -> None:
    """Add PATH to the server's SetEnv line (sshd honours only the first SetEnv line; its values override
    sshd's default PATH)."""
    if any(c.isspace() or c in '"\\' for c in path):
        raise ArmUnavailable(f"board PATH {path!r}: sshd's SetEnv cannot take spaces, quotes or backslashes")
    lines = server.config.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("SetEnv "):
            lines[i] = f"{line} PATH={path}"
            break
    else:
        lines.append(f"SetEnv PATH={path}")
    server.config.write_text("\n".join(lines) + "\n")


def add_board(farm: SSHFarm, spec: BoardSpec | str, name: str | None = None, trusted: bool = True,
              **overrides) -> Device:
    """Add an sshd for an emulated board to ``farm`` and return its Device: ``python`` is the board's
    wrapper, tags ``farm``, ``arm`` and the spec's name; ``overrides`` go to ``farm.device``. The board's
    folder is ``farm.servers[name].dir / "board"``. (``farm.device(name)`` alone gives the host's python:
    keep the returned Device.)"""
    spec = BOARDS[spec] if isinstance(spec, str) else spec
    name = name or spec.name
    cache_root = arm_cache_root()
    server = farm.add(name, trusted=False, start=False)
    board = prepare_board(spec, server.dir / "board", cache_root)
    last = None
    for _ in range(5):   # as SSHFarm.add: the free port can be taken before sshd binds it
        _set_session_path(server, board.path)
        try:
            server.start()
            break
        except RuntimeError as exc:
            last = exc
            server.port = free_port()
            server.write_config(farm.authorized_keys)
    else:
        raise RuntimeError(f"could not start sshd {name}: {last}")
    if trusted:
        farm.trust(name)
    values = dict(python=str(board.python), tags=("farm", "arm", spec.name))
    values.update(overrides)
    return farm.device(name, **values)
