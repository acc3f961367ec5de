"""Shared test configuration. Fixtures that start real services live in their own modules."""

from __future__ import annotations

import pytest
from sshfarm import FarmDevice, SSHFarm, sshd_available


@pytest.fixture
def ssh_farm(tmp_path):
    """Three real sshd on loopback: ``good-1`` and ``good-2`` (trusted), ``untrusted`` (host key not in
    the farm's known_hosts; that file is ``farm.state_dir / "known_hosts"``, so EDGEBENCH_HOME=farm.state_dir
    works for the CLI, and ``farm.write_inventory(path)`` writes a devices.toml).
    ``farm.unreachable_device()`` gives a port where nothing listens;
    ``farm.kill(name)`` / ``farm.restart(name)`` take one down and bring it back."""
    if not sshd_available():
        pytest.skip("needs OpenSSH sshd and ssh-keygen")
    farm = SSHFarm(tmp_path / "sshfarm")
    try:
        farm.add("good-1", trusted=True)
        farm.add("good-2", trusted=True)
        farm.add("untrusted", trusted=False)
        yield farm
    finally:
        farm.stop_all()


@pytest.fixture
def ssh_device(tmp_path):
    """One trusted real sshd on loopback: ``.device``, ``.known_hosts``, ``.state_dir``, ``.transport()``,
    ``.kill()``, ``.restart()``."""
    if not sshd_available():
        pytest.skip("needs OpenSSH sshd and ssh-keygen")
    farm = SSHFarm(tmp_path / "sshfarm")
    try:
        farm.add("dev", trusted=True)
        yield FarmDevice(farm, "dev")
    finally:
        farm.stop_all()
