"""A farm of real OpenSSH servers on loopback for integration tests.

Each server is ``/usr/sbin/sshd -D -e -f <cfg>`` on a free 127.0.0.1 port with its own generated host
key; one generated client key logs in as the current user (root in CI, any user elsewhere). The
device's Python is this interpreter (the test venv has torch) and its work dir is under the farm's tmp
directory, so nothing outside tmp is touched (except ``/run/sshd``, which sshd needs when run as root).

```python
farm = SSHFarm(tmp_path); farm.add("good-1"); farm.trust("good-1")
dev = farm.device("good-1")           # devices.inventory.Device
farm.kill("good-1")                   # SIGKILL the server and every session it started
farm.restart("good-1")                # same port, same host key
farm.stop_all()
```
"""

from __future__ import annotations

import atexit
import base64
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
import tomli_w

from devices.hostkeys import host_id
from devices.inventory import Device
from devices.transport import SSHTransport

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin:" + os.environ.get("PATH", ""))
SSH_KEYGEN = shutil.which("ssh-keygen")
START_TIMEOUT_S = 10.0
_KILL_LOCK = threading.Lock()   # kill() may come from a timer thread (a device dying mid-run)


def sshd_available() -> bool:
    return SSHD is not None and SSH_KEYGEN is not None


def keygen(path: Path, key_type: str = "ed25519") -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", key_type, "-N", "", "-C", "edgebench-test", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (via /proc), children first discovered breadth-first."""
    children: dict[int, list] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class SSHServer:
    name: str
    port: int
    dir: Path
    host_key: Path
    proc: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def write_config(self, authorized_keys: Path) -> None:
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "MaxStartups 50",
            "MaxSessions 50",
            "LoginGraceTime 20",
            "LogLevel INFO",
            # The sessions run the user's login shell with HOME set to the board's own folder, so the
            # machine's shell start-up files (a .bashrc with `pyenv init` on the development and CI
            # machines) do not run on the test boards: a session killed mid-rehash leaves pyenv's lock
            # behind, and every later command would wait for it and print its warning on stderr.
            f"SetEnv HOME={self.dir}",
            "",
        ]))

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation dir
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"sshd {self.name} did not listen on port {self.port} within {START_TIMEOUT_S}s")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the listener and every process it started (open sessions die like a powered-off device)."""
        with _KILL_LOCK:
            proc, self.proc = self.proc, None
            if proc is None or proc.poll() is not None:
                return
            for pid in [proc.pid] + _descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=10)


class SSHFarm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.root / "state"
        self.state_dir.mkdir(exist_ok=True)
        self.known_hosts = self.state_dir / "known_hosts"
        self.client_key = keygen(self.root / "client_key")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text((self.root / "client_key.pub").read_text())
        self.user = getpass.getuser()
        self.servers: dict[str, SSHServer] = {}
        atexit.register(self.stop_all)   # a crashed test or script must not leave sshd running

    def add(self, name: str, trusted: bool = False, start: bool = True) -> SSHServer:
        d = self.root / name
        d.mkdir()
        (d / "work").mkdir()
        last = None
        for _ in range(5):   # a free port can be taken between free_port() and sshd's bind
            server = SSHServer(name, free_port(), d, keygen(d / "host_key") if not (d / "host_key").exists()
                               else d / "host_key")
            server.write_config(self.authorized_keys)
            try:
                if start:
                    server.start()
                break
            except RuntimeError as exc:
                last = exc
        else:
            raise RuntimeError(f"could not start sshd {name}: {last}")
        self.servers[name] = server
        if trusted:
            self.trust(name)
        return server

    def device(self, name: str, **overrides) -> Device:
        server = self.servers[name]
        values = dict(name=name, host="127.0.0.1", port=server.port, user=self.user,
                      key_file=str(self.client_key), python=sys.executable, work_dir=str(server.dir / "work"),
                      connect_timeout=5.0, tags=("farm",))
        values.update(overrides)
        return Device(**values)

    def unreachable_device(self, name: str = "unreachable", **overrides) -> Device:
        """A device on a loopback port where nothing listens (connection refused)."""
        values = dict(name=name, host="127.0.0.1", port=free_port(), user=self.user,
                      key_file=str(self.client_key), python=sys.executable,
                      work_dir=str(self.root / name / "work"), connect_timeout=3.0, tags=("farm",))
        values.update(overrides)
        return Device(**values)

    def host_public_key(self, name: str) -> paramiko.PKey:
        key_type, data = (Path(str(self.servers[name].host_key) + ".pub").read_text().split()[:2])
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(data))

    def trust(self, name: str, key: paramiko.PKey | None = None) -> None:
        """Record the server's host key (read from its file: no network) in the farm's known_hosts."""
        keys = paramiko.HostKeys()
        if self.known_hosts.exists():
            keys.load(str(self.known_hosts))
        key = key or self.host_public_key(name)
        hid = host_id("127.0.0.1", self.servers[name].port)
        keys._entries = [e for e in keys._entries if hid not in e.hostnames]
        keys.add(hid, key.get_name(), key)
        keys.save(str(self.known_hosts))

    def transport(self, name: str, **overrides) -> SSHTransport:
        return SSHTransport(self.device(name, **overrides), self.known_hosts)

    def kill(self, name: str) -> None:
        self.servers[name].kill()

    def restart(self, name: str) -> None:
        server = self.servers[name]
        server.kill()
        server.start()

    def inventory_toml(self, names=None) -> str:
        tables = {}
        for name in names or self.servers:
            dev = self.device(name)
            tables[name] = {"host": dev.host, "port": dev.port, "user": dev.user, "key_file": dev.key_file,
                            "python": dev.python, "work_dir": dev.work_dir, "tags": list(dev.tags),
                            "connect_timeout": dev.connect_timeout}
        return tomli_w.dumps({"devices": tables})

    def write_inventory(self, path: Path | None = None, names=None) -> Path:
        path = path or self.root / "devices.toml"
        path.write_text(self.inventory_toml(names))
        return path

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.kill()


@dataclass
class FarmDevice:
    """One trusted device of a farm (the ``ssh_device`` fixture)."""

    farm: SSHFarm
    name: str

    @property
    def device(self) -> Device:
        return self.farm.device(self.name)

    @property
    def server(self) -> SSHServer:
        return self.farm.servers[self.name]

    @property
    def known_hosts(self) -> Path:
        return self.farm.known_hosts

    @property
    def state_dir(self) -> Path:
        return self.farm.state_dir

    def transport(self, **overrides) -> SSHTransport:
        return self.farm.transport(self.name, **overrides)

    def kill(self) -> None:
        self.farm.kill(self.name)

    def restart(self) -> None:
        self.farm.restart(self.name)

    def with_overrides(self, **overrides) -> Device:
        return replace(self.device, **overrides)
