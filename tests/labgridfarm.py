"""A real labgrid farm on loopback for integration tests: one coordinator, one exporter, places.

``labgrid-coordinator`` listens on a free 127.0.0.1 port with its working directory (where it keeps
``places.yaml`` and ``resources.yaml``) under the farm's tmp directory. One ``labgrid-exporter`` exports,
for every board, a group named after the board holding one ``NetworkService`` resource (address
127.0.0.1, the board's port and username). Places are set up the way an operator does it, with
``labgrid-client`` (``create``, ``add-match EXPORTER/BOARD/NetworkService``, ``set-tags``), so the farm
shares no code with ``devices.labgrid``, the code under test.

```python
farm = LabgridFarm(tmp_path)                               # starts the coordinator
farm.add_place("pi-1", port=2201, username="root", tags={"arch": "aarch64"})
farm.add_place("bare", network=False)                      # a place with no NetworkService
farm.start_exporter()                                      # exports every board; waits for them
farm.holder("pi-1")                                        # "host/user" or None (labgrid-client show)
farm.kick("pi-1"); farm.release_all()                      # labgrid-client release --kick
farm.stop()                                                # terminate, then kill, every process
```

``add_place`` after ``start_exporter`` restarts the exporter so it exports the new board too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sshfarm import free_port

#: Bounds (seconds) of the farm's waits; generous for a loaded CI machine, reached only on failure.
START_TIMEOUT_S = 20.0
CLIENT_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
EXPORTER_NAME = "edgebench-farm"


def _tool(name: str) -> str | None:
    """A labgrid command: next to this interpreter (the venv's bin, which need not be on PATH), else PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


COORDINATOR = _tool("labgrid-coordinator")
EXPORTER = _tool("labgrid-exporter")
CLIENT = _tool("labgrid-client")


def labgrid_available() -> bool:
    """labgrid importable here (devices.labgrid needs it) and its three commands found."""
    return (sys.version_info >= (3, 10) and importlib.util.find_spec("labgrid") is not None
            and None not in (COORDINATOR, EXPORTER, CLIENT))


def _clean_env() -> dict:
    """This environment without labgrid's own variables (LG_PLACE, LG_COORDINATOR, ... of a developer)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LG_")}


@dataclass
class Board:
    name: str
    port: int | None
    username: str
    tags: dict = field(default_factory=dict)
    network: bool = True


class LabgridFarm:
    def __init__(self, tmp_path: Path):
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.boards: dict[str, Board] = {}
        self.coordinator: subprocess.Popen | None = None
        self.exporter: subprocess.Popen | None = None
        self._logs: list = []
        try:
            self._start_coordinator()
        except BaseException:
            self.stop()
            raise

    # -- processes ---------------------------------------------------------------------------------

    def _spawn(self, argv: list, log_name: str) -> subprocess.Popen:
        log = open(self.dir / log_name, "ab")
        self._logs.append(log)
        env = _clean_env()
        env["PYTHONUNBUFFERED"] = "1"
        return subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log_tail(self, log_name: str, chars: int = 3000) -> str:
        try:
            return (self.dir / log_name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait(self, ready, proc: subprocess.Popen, what: str, log_name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{self.log_tail(log_name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S:g} s:\n"
                                   f"{self.log_tail(log_name)}")
            time.sleep(0.05)

    def _start_coordinator(self) -> None:
        self.coordinator = self._spawn([COORDINATOR, "--listen", self.address], "coordinator.log")
        self._wait(lambda: "listening on" in self.log_tail("coordinator.log", 100_000), self.coordinator,
                   f"labgrid-coordinator on {self.address}", "coordinator.log")

    def _exporter_config(self) -> str:
        lines = []
        for board in self.boards.values():
            if not board.network:
                continue
            lines += [f"{board.name}:", "  NetworkService:", "    address: 127.0.0.1",
                      f"    username: {board.username}"]
            if board.port is not None:
                lines.append(f"    port: {board.port}")
        return "\n".join(lines) + "\n" if lines else "{}\n"

    def start_exporter(self) -> None:
        """(Re)start the exporter with every board so far; return once the coordinator lists them all."""
        if self.exporter is not None:
            self._stop_process(self.exporter)
            self.exporter = None
            self._wait_resources(set())   # the old exporter's resources are gone (its name is free again)
        config = self.dir / "exporter.yaml"
        config.write_text(self._exporter_config())
        self.exporter = self._spawn([EXPORTER, "--coordinator", self.address, "--name", EXPORTER_NAME,
                                     "--hostname", "127.0.0.1", str(config)], "exporter.log")
        self._wait_resources({f"{EXPORTER_NAME}/{b.name}/NetworkService"
                              for b in self.boards.values() if b.network}, self.exporter)

    def _wait_resources(self, expected: set, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            listed = {line.strip() for line in self.client("resources").splitlines() if line.strip()}
            if listed == expected:
                return
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"labgrid-exporter exited with {proc.returncode}:\n"
                                   f"{self.log_tail('exporter.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator lists resources {sorted(listed)}, expected "
                                   f"{sorted(expected)}\n{self.log_tail('exporter.log')}")
            time.sleep(0.1)

    @staticmethod
    def _stop_process(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # its own session (start_new_session): only its processes
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=STOP_GRACE_S)

    def stop(self) -> None:
        """Stop every process the farm started: SIGTERM, and SIGKILL after STOP_GRACE_S."""
        self._stop_process(self.exporter)
        self._stop_process(self.coordinator)
        self.exporter = self.coordinator = None
        for log in self._logs:
            log.close()
        self._logs.clear()

    # -- labgrid-client ----------------------------------------------------------------------------

    def client(self, *args: str, place: str | None = None, check: bool = True) -> str:
        argv = [CLIENT, "-x", self.address] + (["-p", place] if place else []) + list(args)
        out = subprocess.run(argv, cwd=self.dir, env=_clean_env(), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[1:])} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def add_place(self, name: str, port: int | None = None, username: str = "root", tags: dict | None = None,
                  *, network: bool = True) -> Board:
        """A place matching ``EXPORTER/<name>/NetworkService`` (unless ``network`` is False: no match, so
        the place has no NetworkService); restarts a running exporter to export the new board."""
        board = Board(name, port, username, dict(tags or {}), network)
        self.client("create", place=name)
        if network:
            self.client("add-match", f"{EXPORTER_NAME}/{name}/NetworkService", place=name)
        if board.tags:
            self.client("set-tags", *(f"{k}={v}" for k, v in board.tags.items()), place=name)
        self.boards[name] = board
        if network and self.exporter is not None:
            self.start_exporter()
        return board

    def holder(self, place: str) -> str | None:
        """Who holds ``place`` now (``host/user``), as ``labgrid-client show`` reports it; None when free."""
        for line in self.client("show", place=place).splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "acquired":
                return None if value == "None" else value
        raise RuntimeError(f"labgrid-client show {place} printed no 'acquired' line")

    def held(self) -> dict:
        """{place: holder} of every acquired place (``labgrid-client who``)."""
        rows = self.client("who").splitlines()[1:]
        held = {}
        for row in rows:
            parts = row.split()
            if len(parts) >= 3:
                user, host, place = parts[:3]
                held[place] = f"{host}/{user}"
        return held

    def kick(self, place: str) -> None:
        """Release ``place`` whoever holds it, as an operator does (``release --kick``)."""
        self.client("release", "--kick", place=place)

    def release_all(self) -> list:
        held = sorted(self.held())
        for place in held:
            self.kick(place)
        return held
