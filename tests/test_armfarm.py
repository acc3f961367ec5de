"""ARM tests: emulated aarch64 boards (tests/armfarm.py) behind real sshd on loopback.

Each board is qemu-user running Debian 12's aarch64 Python with that board's CPU and torch; the checks run
over SSH exactly as the controller reaches a device: the board's ``python`` is the Device's python command.
Select them with ``-m arm``; ``bash .ci/arm-boards`` prepares the shared sysroot and torch wheels once
(about a minute and ~1.2 GB; ``.ci/run`` does it), or ``$EDGEBENCH_ARM_ROOT`` names a prepared folder.
"""

from __future__ import annotations

import json

import pytest
from armfarm import BOARDS, add_board, require_arm_boards
from sshfarm import SSHFarm

from devices.transport import SSHTransport

pytestmark = [pytest.mark.arm, pytest.mark.ssh]

COMMAND_TIMEOUT_S = 60.0
TORCH_TIMEOUT_S = 150.0      # `import torch` under emulation: ~20 s here, 40 s+ on a busy machine

FACTS = r"""
import json, os, platform, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import platform; print(platform.machine())"],
                       capture_output=True, text=True, timeout=60)
print(json.dumps({
    "machine": platform.machine(),
    "executable": sys.executable,
    "model": open("/proc/device-tree/model", "rb").read().decode("latin-1"),
    "cpuinfo": open("/proc/cpuinfo").read(),
    "child": [child.returncode, child.stdout.strip()],
}))
"""


@pytest.fixture(scope="module")
def arm_boards(tmp_path_factory):
    """name -> (Device, SSHTransport) for every board in armfarm.BOARDS, one sshd each."""
    require_arm_boards()
    farm = SSHFarm(tmp_path_factory.mktemp("armfarm"))
    boards = {}
    try:
        for name in BOARDS:
            dev = add_board(farm, name)
            boards[name] = (dev, SSHTransport(dev, farm.known_hosts))
        yield boards
    finally:
        for _, transport in boards.values():
            transport.close()
        farm.stop_all()   # every sshd and every session it started (emulated interpreters included)


@pytest.mark.parametrize("name", list(BOARDS))
def test_armfarm_board_is_aarch64_with_its_recorded_identity(arm_boards, name):
    dev, t = arm_boards[name]
    spec = BOARDS[name]
    r = t.run([dev.python, "-c", FACTS], timeout=COMMAND_TIMEOUT_S)
    assert r.exit_code == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["machine"] == "aarch64"
    assert facts["model"] == spec.model + "\0"
    assert facts["cpuinfo"] == spec.cpuinfo
    # sys.executable is the board's python command, so the agent can start child interpreters
    assert facts["executable"] == dev.python
    assert facts["child"] == [0, "aarch64"]


@pytest.mark.parametrize("name", list(BOARDS))
def test_armfarm_vcgencmd_prints_the_recorded_throttled_line(arm_boards, name):
    dev, t = arm_boards[name]
    r = t.run(["vcgencmd", "get_throttled"], timeout=COMMAND_TIMEOUT_S)
    assert (r.exit_code, r.stdout) == (0, BOARDS[name].throttled + "\n")
    # ... and from the board's Python too (the session's PATH reaches the emulated process)
    code = "import subprocess; print(subprocess.check_output(['vcgencmd', 'get_throttled']).decode(), end='')"
    r = t.run([dev.python, "-c", code], timeout=COMMAND_TIMEOUT_S)
    assert (r.exit_code, r.stdout) == (0, BOARDS[name].throttled + "\n"), r.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_armfarm_torch_sigill_on_pi4_and_imports_on_pi5(arm_boards):
    code = "import torch; print(torch.__version__.split('+')[0])"
    # Through sh, as a shell on the board reports it (an exec'd interpreter killed by a signal leaves
    # sshd nothing but an exit-signal, which is not an exit status).
    dev, t = arm_boards["pi4"]
    r = t.run(["sh", "-c", '"$@"; exit $?', "sh", dev.python, "-c", code], timeout=TORCH_TIMEOUT_S)
    assert r.exit_code in (-4, 132), (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    dev, t = arm_boards["pi5"]
    r = t.run([dev.python, "-c", code], timeout=TORCH_TIMEOUT_S)
    assert (r.exit_code, r.stdout.strip()) == (0, "2.10.0"), r.stderr
