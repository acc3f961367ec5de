"""edgebench's own known_hosts: the only host keys an SSH device is checked against.

Trust on first use, but explicit: ``edgebench devices trust NAME`` fetches the device's host key, prints
its SHA256 fingerprint (compare it with ``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`` on the
device) and records it. An unknown or changed key is a HostKeyError at connect time, never accepted
silently (fabric's default is paramiko's AutoAddPolicy; edgebench uses a rejecting policy instead).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko

from devices.errors import HostKeyError, TransportError
from devices.inventory import Device


def host_id(host: str, port: int) -> str:
    """The known_hosts name OpenSSH and paramiko use: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint (base64 without padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """Parse edgebench's known_hosts (a missing file is empty)."""
    keys = paramiko.HostKeys()
    if Path(path).exists():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"{path}: cannot read known_hosts: {exc}") from None
    return keys


def trusted_keys(path: Path, host: str, port: int) -> dict:
    """key type -> PKey recorded for this host (empty when it was never trusted)."""
    entry = load_known_hosts(path).lookup(host_id(host, port))
    return dict(entry) if entry else {}


class RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse hosts that are not in edgebench's known_hosts, with a message saying what to do."""

    def __init__(self, device_name: str, known_hosts: Path):
        self.device_name = device_name
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"device {self.device_name!r}: host key of {hostname} is not trusted "
            f"({key.get_name()} {fingerprint(key)} not in {self.known_hosts}); "
            f"check the fingerprint and run `edgebench devices trust {self.device_name}`"
        )


def changed_key_error(device: Device, known_hosts: Path, exc: paramiko.BadHostKeyException) -> HostKeyError:
    return HostKeyError(
        f"device {device.name!r}: HOST KEY CHANGED for {host_id(device.host, device.port)}: "
        f"got {exc.key.get_name()} {fingerprint(exc.key)}, trusted {fingerprint(exc.expected_key)} "
        f"({known_hosts}); if the device was reinstalled, verify the new key and run "
        f"`edgebench devices trust {device.name} --replace`"
    )


def fetch_host_key(host: str, port: int, timeout: float, key_types: tuple = ()) -> paramiko.PKey:
    """Connect, run the key exchange only (no authentication) and return the server's host key."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port} to fetch its host key: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        if key_types:
            opts = transport.get_security_options()
            opts.key_types = [k for k in key_types if k in opts.key_types] or opts.key_types
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise TransportError(f"SSH key exchange with {host}:{port} failed: {exc}") from None
    finally:
        transport.close()


@dataclass(frozen=True)
class TrustResult:
    device: str
    host_id: str
    key_type: str
    fingerprint: str
    status: str        # "added" | "unchanged" | "replaced"
    previous_fingerprint: str | None = None


def trust(device: Device, known_hosts: Path, replace: bool = False,
          timeout: float | None = None) -> TrustResult:
    """Fetch the device's host key and record it in edgebench's known_hosts.

    A host already trusted with a different key is refused unless ``replace`` (the key changed: that is
    either a reinstalled device or an attack, so a person must say which).
    """
    if device.is_local:
        raise HostKeyError("the built-in local device is this machine; it has no host key to trust")
    known_hosts = Path(known_hosts)
    hid = host_id(device.host, device.port)
    keys = load_known_hosts(known_hosts)
    existing = dict(keys.lookup(hid) or {})
    key = fetch_host_key(device.host, device.port, timeout or device.connect_timeout,
                         key_types=tuple(existing))
    fp = fingerprint(key)
    previous = existing.get(key.get_name())
    if previous is not None and previous.asbytes() == key.asbytes():
        return TrustResult(device.name, hid, key.get_name(), fp, "unchanged")
    if existing and not replace:
        old = next(iter(existing.values()))
        raise HostKeyError(
            f"device {device.name!r}: {hid} is already trusted with a different key "
            f"({old.get_name()} {fingerprint(old)}); it now presents {key.get_name()} {fp}. "
            f"If the device was reinstalled, run `edgebench devices trust {device.name} --replace`"
        )
    # Rewrite the file without this host's old entries, then add the new key.
    fresh = paramiko.HostKeys()
    for entry in keys._entries:  # paramiko has no public iterator over entries with hashed names
        if hid in entry.hostnames or _matches(entry, hid):
            continue
        fresh._entries.append(entry)
    fresh.add(hid, key.get_name(), key)
    _save_atomic(fresh, known_hosts)
    status = "replaced" if existing else "added"
    prev_fp = fingerprint(next(iter(existing.values()))) if existing else None
    return TrustResult(device.name, hid, key.get_name(), fp, status, prev_fp)


def _matches(entry: paramiko.hostkeys.HostKeyEntry, hid: str) -> bool:
    for name in entry.hostnames:
        if name.startswith("|1|") and paramiko.HostKeys.hash_host(hid, name) == name:
            return True
    return False


def _save_atomic(keys: paramiko.HostKeys, path: Path) -> None:
    """Write the file with mode 0600 (its folder, when created here, 0700): private whatever the umask."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=str(path.parent))
    os.close(fd)
    try:
        keys.save(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
