"""Transports: run a command on a device and copy a file to it.

``LocalTransport`` runs on this machine (a subprocess, optionally pinned to N CPUs); ``SSHTransport`` goes
through fabric with strict host-key checking against edgebench's own known_hosts, key authentication
only, and a bounded timeout at every level. Both run the same agent bundle the same way.

Retries: connecting and transfers are retried (bounded count, backoff) inside their parent timeout;
commands are never retried (a measurement must not run twice without anyone knowing).

Arguments are never interpreted by a shell (SSH: each one ``shlex.quote``d), with one exception on both
transports: a leading ``~/`` means the login user's home (devices.toml paths such as ``python`` and
``work_dir`` use it).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import paramiko

from devices.errors import HostKeyError, TransportError
from devices.inventory import Device

CONNECT_RETRIES = 2        # attempts = 1 + retries, all inside the device's connect_timeout
TRANSFER_RETRIES = 2       # attempts = 1 + retries, all inside the put() timeout
BACKOFF_S = 0.25           # first pause between attempts; doubles
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_POLL_S = 0.01


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Transport(ABC):
    """Run commands on one device and copy files to it. Use as a context manager or call close()."""

    device: Device
    #: Where bundles and artifacts live on the device (may start with ``~/`` on SSH devices).
    work_dir: str

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` (no shell); raise TransportError when unreachable or past ``timeout`` seconds."""

    @abstractmethod
    def put(self, local: Path, remote: str, timeout: float) -> int:
        """Copy a file atomically (temporary name, then rename); returns the bytes sent."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_env(env: Mapping[str, str] | None) -> dict:
    env = dict(env or {})
    for key, value in env.items():
        if not _ENV_NAME.match(str(key)):
            raise TransportError(f"invalid environment variable name {key!r}")
        if not isinstance(value, str):
            raise TransportError(f"environment variable {key}: expected a string, got {value!r}")
    return env


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------- local

_PIN_SHIM = (
    "import os,sys;os.sched_setaffinity(0,[int(c) for c in sys.argv[1].split(',')]);"
    "os.execvp(sys.argv[2],sys.argv[2:])"
)


class LocalTransport(Transport):
    """This machine: each command is a subprocess (its own process group, killed on timeout)."""

    def __init__(self, device: Device, work_dir: Path):
        self.device = device
        self.work_dir = str(Path(work_dir).absolute())
        self._cpu_list = self._pick_cpus(device.cpus)
        self._running: set = set()            # commands in flight, killed by close()
        self._lock = threading.Lock()

    @staticmethod
    def _pick_cpus(n: int | None) -> list[int] | None:
        if n is None:
            return None
        if not hasattr(os, "sched_getaffinity"):
            raise TransportError("local device: cpus = N needs sched_setaffinity (Linux)")
        available = sorted(os.sched_getaffinity(0))
        if n > len(available):
            raise TransportError(
                f"local device: cpus = {n} but only {len(available)} CPUs are available to this process"
            )
        return available[:n]

    @property
    def cpu_list(self) -> list[int] | None:
        """The CPUs commands are pinned to (None: not pinned)."""
        return self._cpu_list

    def run(self, argv, timeout, env=None, stdin=None):
        argv = [os.path.expanduser(a) if a.startswith("~/") else a for a in map(str, argv)]
        if not argv:
            raise TransportError("empty command")
        full_env = dict(os.environ)
        full_env.update(_check_env(env))
        if self._cpu_list is not None:
            argv = [sys.executable, "-c", _PIN_SHIM, ",".join(map(str, self._cpu_list))] + argv
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, start_new_session=True,
            )
        except FileNotFoundError:
            return CommandResult(127, "", f"{argv[0]}: command not found", time.monotonic() - start)
        except PermissionError:
            return CommandResult(126, "", f"{argv[0]}: permission denied", time.monotonic() - start)
        with self._lock:
            self._running.add(proc)
        try:
            out, err = proc.communicate(input=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise TransportError(
                f"local: command {shlex.join(argv[:3])}... timed out after {timeout:.1f}s (killed)"
            ) from None
        except BaseException:
            self._kill(proc)
            raise
        finally:
            with self._lock:
                self._running.discard(proc)
        return CommandResult(proc.returncode, _decode(out), _decode(err), time.monotonic() - start)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.communicate()

    def put(self, local, remote, timeout):
        local = Path(local)
        target = Path(os.path.expanduser(remote))
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        deadline = time.monotonic() + timeout
        sent = 0
        try:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
                    sent += len(chunk)
                    if time.monotonic() > deadline:
                        raise TransportError(f"local: copying {local} timed out after {timeout:.1f}s")
            os.replace(tmp, target)
        except OSError as exc:
            raise TransportError(f"local: cannot copy {local} to {target}: {exc}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return sent

    def close(self):
        """Kill the commands still running (their own process groups): an interrupted run closes its
        transports from another thread so that what is in flight ends now, as an SSH disconnect does."""
        with self._lock:
            running = list(self._running)
        for proc in running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ----------------------------------------------------------------------------------------------- ssh

def quote_arg(arg: str) -> str:
    """shlex.quote, except that a leading ``~/`` stays unquoted so the login shell expands it."""
    arg = str(arg)
    if arg.startswith("~/") and len(arg) > 2:
        return "~/" + shlex.quote(arg[2:])
    return shlex.quote(arg)


def build_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The remote command line: every argument quoted, environment through ``env NAME=VALUE``."""
    if not argv:
        raise TransportError("empty command")
    env = _check_env(env)
    parts = []
    if env:
        parts.append("env")
        parts.extend(shlex.quote(f"{k}={v}") for k, v in env.items())
    parts.extend(quote_arg(a) for a in argv)
    return " ".join(parts)


# Runs the command through sh, which first reports its pid and process group on stderr (removed from
# the result) so a command that timed out can be killed on the device, then execs the command.
_PID_MARKER = b"edgebench-remote-pid"
_WRAPPER = ('g=; read -r _p _c _s _pp g _r 2>/dev/null </proc/$$/stat; '
            'echo "edgebench-remote-pid $$ ${g:-$$}" >&2; exec "$@"')


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The command line sent to the device: ``sh -c WRAPPER edgebench <quoted argv>``."""
    return f"sh -c {shlex.quote(_WRAPPER)} edgebench {build_command(argv, env)}"


def _split_pid_marker(err: bytes) -> tuple:
    """((pid, pgid) or None, stderr without the marker line)."""
    start = err.find(_PID_MARKER)
    if start < 0 or (start > 0 and err[start - 1:start] != b"\n"):
        return None, err
    end = err.find(b"\n", start)
    if end < 0:
        end = len(err)
    parts = err[start:end].split()
    rest = err[:start] + err[end + 1:]
    try:
        return (int(parts[1]), int(parts[2])), rest
    except (IndexError, ValueError):
        return None, err


class SSHTransport(Transport):
    """A device over SSH (fabric). Connects lazily on first use and reuses the connection."""

    def __init__(self, device: Device, known_hosts: Path, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if device.is_local:
            raise TransportError("SSHTransport needs a remote device")
        self.device = device
        self.work_dir = device.work_dir or "~/.edgebench"
        self.known_hosts = Path(known_hosts)
        self._clock = clock
        self._sleep = sleep
        self._conn = None

    # -- connecting

    def _new_connection(self, timeout: float):
        import fabric

        from devices.hostkeys import RejectUnknownHostKey, load_known_hosts

        config = fabric.Config(lazy=True, ssh_config=paramiko.SSHConfig())
        conn = fabric.Connection(
            self.device.host, user=self.device.user, port=self.device.port, config=config,
            connect_kwargs={
                "key_filename": [os.path.expanduser(self.device.key_file)],
                "look_for_keys": False, "allow_agent": False,
                "timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
                "channel_timeout": timeout,
            },
        )
        # fabric installs AutoAddPolicy (accepts any key); edgebench trusts only its own known_hosts.
        conn.client.set_missing_host_key_policy(RejectUnknownHostKey(self.device.name, self.known_hosts))
        known = load_known_hosts(self.known_hosts)
        client_keys = conn.client.get_host_keys()
        for hostname in known.keys():
            for key_type, key in known.lookup(hostname).items():
                client_keys.add(hostname, key_type, key)
        return conn

    def _connect(self, deadline: float):
        if self._conn is not None and self._conn.is_connected:
            return self._conn
        self.close()
        from devices.hostkeys import changed_key_error

        dev = self.device
        key_file = os.path.expanduser(dev.key_file or "")
        if not dev.key_file or not os.path.isfile(key_file):
            raise TransportError(f"device {dev.name!r}: key_file {dev.key_file!r} does not exist")
        start = self._clock()
        give_up = min(deadline, start + dev.connect_timeout)
        backoff = BACKOFF_S
        attempt = 0
        while True:
            attempt += 1
            remaining = give_up - self._clock()
            conn = self._new_connection(max(remaining, 0.05))
            try:
                conn.open()
                self._conn = conn
                return conn
            except HostKeyError:
                conn.close()
                raise
            except paramiko.BadHostKeyException as exc:
                conn.close()
                raise changed_key_error(dev, self.known_hosts, exc) from None
            except paramiko.PasswordRequiredException:
                conn.close()
                raise TransportError(
                    f"device {dev.name!r}: key {dev.key_file} is encrypted; edgebench needs a key "
                    f"without a passphrase (it never asks for passwords)"
                ) from None
            except paramiko.AuthenticationException as exc:
                conn.close()
                raise TransportError(
                    f"device {dev.name!r}: authentication failed for {dev.address} with key {dev.key_file} "
                    f"({exc}); edgebench uses key authentication only: add the public key to the "
                    f"device's ~/.ssh/authorized_keys or fix user/key_file in devices.toml"
                ) from None
            except (paramiko.SSHException, EOFError, OSError, socket.timeout) as exc:
                conn.close()
                last = str(exc) or type(exc).__name__
                elapsed = self._clock() - start
                pause = min(backoff, give_up - self._clock())
                if attempt > CONNECT_RETRIES or pause <= 0:
                    raise TransportError(
                        f"device {dev.name!r}: cannot connect to {dev.address}: {last} "
                        f"(gave up after {attempt} attempt(s), {elapsed:.1f}s; connect_timeout "
                        f"{dev.connect_timeout:g}s)"
                    ) from None
                self._sleep(pause)
                backoff *= 2

    # -- commands

    def run(self, argv, timeout, env=None, stdin=None):
        command = remote_command([str(a) for a in argv], env)
        start = self._clock()
        deadline = start + timeout
        conn = self._connect(deadline)
        dev = self.device
        try:
            chan = conn.client.get_transport().open_session(timeout=max(deadline - self._clock(), 0.05))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise TransportError(f"device {dev.name!r}: cannot open a session: {exc}") from None
        out, err = bytearray(), bytearray()
        try:
            chan.settimeout(max(deadline - self._clock(), 0.05))
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            while True:
                busy = False
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                    busy = True
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                    busy = True
                if busy:
                    continue
                if chan.exit_status_ready() or chan.closed:
                    if not chan.recv_ready() and not chan.recv_stderr_ready():
                        break
                    continue
                if not conn.is_connected:
                    raise TransportError(
                        f"device {dev.name!r}: connection lost during {argv[0]} after "
                        f"{self._clock() - start:.1f}s"
                    )
                if self._clock() > deadline:
                    raise socket.timeout()
                time.sleep(_POLL_S)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        except socket.timeout:
            chan.close()
            killed = self._kill_remote(err)
            raise TransportError(
                f"device {dev.name!r}: command {argv[0]} timed out after {timeout:.1f}s ({killed})"
            ) from None
        except TransportError:
            chan.close()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            self.close()
            raise TransportError(f"device {dev.name!r}: connection lost during {argv[0]}: {exc}") from None
        if status == -1:
            self.close()
            raise TransportError(
                f"device {dev.name!r}: connection lost during {argv[0]} (no exit status) after "
                f"{self._clock() - start:.1f}s"
            )
        chan.close()
        _, stderr = _split_pid_marker(bytes(err))
        return CommandResult(status, _decode(bytes(out)), _decode(stderr), self._clock() - start)

    def _kill_remote(self, err: bytearray) -> str:
        """Best effort after a timeout: TERM, then KILL, the command's process group on the device
        (sshd does not stop a command whose channel was closed)."""
        ids, _ = _split_pid_marker(bytes(err))
        if ids is None:
            return "remote process not found"
        pid, pgid = ids
        if pid <= 1 or pgid <= 1:
            return "remote process not found"
        script = ('kill -TERM -- "-$1" 2>/dev/null || kill -TERM "$2" 2>/dev/null; sleep 1; '
                  'kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$2" 2>/dev/null; true')
        try:
            conn = self._connect(self._clock() + 5.0)
            chan = conn.client.get_transport().open_session(timeout=5.0)
            chan.settimeout(5.0)
            chan.exec_command(shlex.join(["sh", "-c", script, "kill", str(pgid), str(pid)]))
            give_up = time.monotonic() + 5.0
            while not chan.exit_status_ready() and time.monotonic() < give_up:
                time.sleep(0.05)
            chan.close()
        except (OSError, EOFError, paramiko.SSHException, TransportError):
            return f"could not kill remote process {pid}"
        return f"remote process {pid} killed"

    # -- transfers

    def put(self, local, remote, timeout):
        local = Path(local)
        if not local.is_file():
            raise TransportError(f"cannot send {local}: no such file")
        size = local.stat().st_size
        # SFTP paths are relative to the login directory; "~/x" means "x" there.
        target = remote[2:] if remote.startswith("~/") else remote
        directory, _, name = target.rpartition("/")
        tmp_name = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = f"{directory}/{tmp_name}" if directory else tmp_name
        start = self._clock()
        deadline = start + timeout
        dev = self.device
        backoff = BACKOFF_S
        attempt = 0

        def check_deadline(done: int, total: int) -> None:
            if self._clock() > deadline:
                raise socket.timeout(f"transfer timed out after {timeout:.1f}s ({done}/{total} bytes)")

        while True:
            attempt += 1
            sftp = None
            try:
                conn = self._connect(deadline)
                sftp = conn.client.open_sftp()
                sftp.get_channel().settimeout(max(deadline - self._clock(), 0.05))
                sftp.put(str(local), tmp, callback=check_deadline, confirm=True)
                sftp.posix_rename(tmp, target)
                sftp.close()
                return size
            except TransportError:
                raise   # connecting has its own retries inside the connect timeout
            except OSError as exc:
                if sftp is not None:
                    try:
                        sftp.remove(tmp)
                    except (OSError, paramiko.SSHException, EOFError):
                        pass
                    sftp.close()
                if getattr(exc, "errno", None) is not None and not isinstance(exc, socket.timeout):
                    # An SFTP status (no such directory, permission denied): retrying cannot help.
                    raise TransportError(f"device {dev.name!r}: cannot write {remote}: {exc}") from None
                last = str(exc) or type(exc).__name__
            except (paramiko.SSHException, EOFError) as exc:
                last = str(exc) or type(exc).__name__
            self.close()
            pause = min(backoff, deadline - self._clock())
            if attempt > TRANSFER_RETRIES or pause <= 0:
                raise TransportError(
                    f"device {dev.name!r}: sending {local.name} to {remote} failed: {last} "
                    f"(after {attempt} attempt(s), {self._clock() - start:.1f}s of {timeout:.1f}s)"
                )
            self._sleep(pause)
            backoff *= 2

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def open_transport(device: Device, known_hosts: Path | None = None,
                   state_dir: Path | None = None) -> Transport:
    """The transport for a device. ``known_hosts`` is edgebench's own file (in the state directory);
    the local device works under ``<state_dir>/local-device`` (state_dir defaults to known_hosts' folder)
    unless it sets ``work_dir``."""
    if state_dir is None and known_hosts is not None:
        state_dir = Path(known_hosts).parent
    if device.is_local:
        if device.work_dir:
            work = Path(os.path.expanduser(device.work_dir))
        elif state_dir is not None:
            work = Path(state_dir) / "local-device"
        else:
            raise TransportError("the local device needs a state directory (or work_dir) to work in")
        work.mkdir(parents=True, exist_ok=True)
        return LocalTransport(device, work)
    if known_hosts is None:
        known_hosts = Path(state_dir) / "known_hosts" if state_dir is not None else None
    if known_hosts is None:
        raise TransportError(f"device {device.name!r}: no known_hosts file given")
    return SSHTransport(device, known_hosts)
