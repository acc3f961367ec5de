"""Strict host-key checking against edgebench's own known_hosts, and `edgebench devices trust`."""

from __future__ import annotations

import subprocess

import paramiko
import pytest
from sshfarm import keygen

from devices import hostkeys
from devices.errors import HostKeyError, TransportError
from devices.transport import SSHTransport
from harness.cli import main

pytestmark = pytest.mark.ssh


def ssh_keygen_fingerprint(pub_path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub_path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def test_unknown_key_rejected_trusted_accepted(ssh_farm):
    with pytest.raises(HostKeyError) as err:
        ssh_farm.transport("untrusted").run(["true"], timeout=10)
    msg = str(err.value)
    assert "not trusted" in msg and "edgebench devices trust untrusted" in msg
    assert ssh_keygen_fingerprint(ssh_farm.servers["untrusted"].host_key.with_suffix(".pub")) in msg
    with ssh_farm.transport("good-1") as t:
        assert t.run(["echo", "ok"], timeout=10).stdout == "ok\n"


def test_user_known_hosts_are_ignored(ssh_farm, tmp_path):
    """Only edgebench's file counts: an empty one rejects even hosts trusted elsewhere."""
    empty = tmp_path / "empty_known_hosts"
    with pytest.raises(HostKeyError):
        SSHTransport(ssh_farm.device("good-1"), empty).run(["true"], timeout=10)


def test_changed_key_rejected(ssh_farm, tmp_path):
    impostor = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "impostor")))
    ssh_farm.trust("good-2", key=impostor)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED .*--replace"):
        ssh_farm.transport("good-2").run(["true"], timeout=10)


def test_trust_records_fetched_key_tofu(ssh_farm, tmp_path):
    known = tmp_path / "state" / "known_hosts"
    dev = ssh_farm.device("untrusted")
    result = hostkeys.trust(dev, known)
    expected = ssh_keygen_fingerprint(ssh_farm.servers["untrusted"].host_key.with_suffix(".pub"))
    assert (result.status, result.fingerprint, result.key_type) == ("added", expected, "ssh-ed25519")
    assert result.host_id == f"[127.0.0.1]:{dev.port}"
    with SSHTransport(dev, known) as t:
        assert t.run(["true"], timeout=10).exit_code == 0
    assert hostkeys.trust(dev, known).status == "unchanged"
    # a different key for the same host is refused unless --replace
    other = ssh_farm.device("good-1", port=dev.port)
    impostor = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "impostor")))
    keys = paramiko.HostKeys(str(known))
    keys.add(result.host_id, "ssh-ed25519", impostor)
    keys.save(str(known))
    with pytest.raises(HostKeyError, match="already trusted with a different key"):
        hostkeys.trust(other, known)
    replaced = hostkeys.trust(other, known, replace=True)
    assert replaced.status == "replaced" and replaced.fingerprint == expected
    assert len(hostkeys.trusted_keys(known, "127.0.0.1", dev.port)) == 1


def test_trust_unreachable_is_a_clear_error(ssh_farm, tmp_path):
    with pytest.raises(TransportError, match="cannot connect to 127.0.0.1"):
        hostkeys.trust(ssh_farm.unreachable_device(), tmp_path / "kh")


def test_cli_trust_prints_fingerprint(ssh_farm, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEBENCH_HOME", str(tmp_path / "home"))
    inventory = ssh_farm.write_inventory(tmp_path / "devices.toml")
    assert main(["devices", "-i", str(inventory), "trust", "untrusted"]) == 0
    out = capsys.readouterr().out
    assert ssh_keygen_fingerprint(ssh_farm.servers["untrusted"].host_key.with_suffix(".pub")) in out
    assert (tmp_path / "home" / "known_hosts").exists()
    assert main(["devices", "-i", str(inventory), "trust", "nope"]) == 2
    assert "unknown device 'nope'" in capsys.readouterr().err
