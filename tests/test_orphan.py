"""An agent whose controller is gone stops its worker and frees the device lock within a bounded time,
on the local device and over a real SSH connection (loopback sshd). A controller killed mid-run must never
leave a board measuring, and holding its lock, for the next run."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devices.ondevice.protocol import Protocol

PY = sys.executable
STOP_WITHIN_S = 20.0
#: A measurement that would run for an hour if nobody stopped it.
LONG = Protocol(processes=3, min_seconds=3000, max_iters=100000, threads=1, timeout_s=3600,
                sentences=("short",)).agent_args()


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> Path:
    from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
    from variants.artifact import save_artifact

    cfg = get_preset("tiny")
    tmp = tmp_path_factory.mktemp("orphan") / "staging"
    art = save_artifact(tmp, build_acoustic(cfg.acoustic), build_vocoder(cfg.vocoder), cfg.to_dict(),
                        manifest_extra={"name": "original"})
    return art.path


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _find(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and " measure " in cmdline and _alive(int(entry)):
                pids.append(int(entry))
    return pids


def _wait(predicate, timeout: float, what: str):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _lock_is_free(work_dir: Path) -> bool:
    path = work_dir / "measure.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _kill_everything(marker: str) -> None:
    for pid in _find(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_local_agent_stops_when_its_controller_dies(tmp_path, tiny_artifact):
    work = tmp_path / "work"
    marker = f"orphan-local-{os.getpid()}"
    starter = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-m", "devices.ondevice.agent", "measure", "--artifact",
                              {str(tiny_artifact)!r}, "--variant", {marker!r}, "--work-dir", {str(work)!r},
                              *{LONG!r}], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        print(p.pid, flush=True)
        time.sleep(600)
    """)
    controller = subprocess.Popen([PY, "-c", starter], stdout=subprocess.PIPE, text=True)
    try:
        agent_pid = int(controller.stdout.readline())
        worker = _wait(lambda: _children(agent_pid), 90, "the agent's worker")[0]
        controller.kill()
        controller.wait()
        started = time.monotonic()
        _wait(lambda: not _alive(agent_pid) and not _alive(worker), STOP_WITHIN_S, "the agent to stop")
        assert time.monotonic() - started < STOP_WITHIN_S
        assert _lock_is_free(work)
    finally:
        controller.kill()
        _kill_everything(marker)


def test_an_agent_over_ssh_stops_when_its_controller_dies(ssh_device, tmp_path, tiny_artifact):
    """The controller is a separate process measuring over a real SSH connection; it is SIGKILLed while
    the remote worker runs. The remote agent (reparented once sshd closes the session) must stop."""
    inventory = tmp_path / "devices.toml"
    inventory.write_text(ssh_device.farm.inventory_toml(["dev"]))
    marker = f"orphan-ssh-{os.getpid()}"
    controller_code = textwrap.dedent(f"""
        from pathlib import Path
        from devices.inventory import load_inventory
        from devices.measure import measure_variant
        from devices.ondevice.protocol import Protocol
        from devices.transport import open_transport
        device = load_inventory(Path({str(inventory)!r})).devices["dev"]
        transport = open_transport(device, known_hosts=Path({str(ssh_device.known_hosts)!r}),
                                   state_dir=Path({str(ssh_device.state_dir)!r}))
        protocol = Protocol(processes=3, min_seconds=3000, max_iters=100000, threads=1, timeout_s=3600,
                            sentences=("short",))
        measure_variant(transport, device, Path({str(tiny_artifact)!r}), {marker!r}, protocol,
                        state_dir=Path({str(ssh_device.state_dir)!r}))
    """)
    controller = subprocess.Popen([PY, "-c", controller_code], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
    try:
        def agent_started():
            if controller.poll() is not None:
                raise AssertionError(f"the controller ended early: {controller.stderr.read()[-2000:]}")
            return _find(marker)

        agent_pid = _wait(agent_started, 180, "the agent on the SSH device")[0]
        worker = _wait(lambda: _children(agent_pid), 120, "the remote worker")[0]
        controller.kill()
        controller.wait()
        _wait(lambda: not _find(marker) and not _alive(worker), STOP_WITHIN_S + 10,
              "the remote agent and its worker to stop")
    finally:
        controller.kill()
        _kill_everything(marker)
