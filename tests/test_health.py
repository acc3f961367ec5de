"""Device health: eligibility rules, failures recorded per device, parallel checks, `devices check`."""

from __future__ import annotations

import json
import sys

import pytest

from devices import health
from devices.errors import HostKeyError, TransportError
from devices.health import Health, check, check_devices, judge
from devices.inventory import local_device
from devices.testing import FakeTransport
from devices.transport import LocalTransport
from harness.cli import main

GOOD_FACTS = {"python": "3.8.10", "torch": "1.13.1", "quantized_engine": "qnnpack",
              "disk_free_bytes": 10 * 1024**3, "mem_available_bytes": 2 * 1024**3, "temp_c": 48.0,
              "work_dir": "/home/pi/.edgebench"}


def fake_with_facts(facts=None, **reply):
    t = FakeTransport()
    if facts is not None:
        reply = {"stdout": json.dumps(facts) + "\n", **reply}
    t.on(lambda argv: argv[1:2] == ["-c"], **reply)
    return t


def test_good_device_is_eligible():
    t = fake_with_facts(GOOD_FACTS)
    h = check(t, t.device)
    assert h.ok and h.reason is None and h.facts["torch"] == "1.13.1" and h.warnings == ()
    argv = t.runs()[0].argv
    assert argv[0] == t.device.python and argv[3] == t.work_dir


@pytest.mark.parametrize("change, reason", [
    ({"python": "3.7.3"}, "Python 3.7.3 < 3.8"),
    ({"torch": None, "torch_error": "ModuleNotFoundError: No module named 'torch'"}, "torch not importable"),
    ({"torch": "1.12.0"}, "torch 1.12.0 < 1.13"),
    ({"disk_free_bytes": 10 * 1024**2}, "only 10 MiB free disk"),
    ({"mem_available_bytes": 64 * 1024**2}, "only 64 MiB memory available"),
    ({"temp_c": 83.5}, "too hot: 84 °C"),
])
def test_ineligible_reasons(change, reason):
    ok_reason, _ = judge({**GOOD_FACTS, **change})
    assert reason in ok_reason


def test_a_torch_that_dies_with_sigill_is_a_cpu_mismatch():
    reason, _ = judge({**GOOD_FACTS, "torch": None, "torch_error": "import torch died with SIGILL",
                       "torch_signal": "SIGILL"})
    assert reason.startswith("torch cannot run on this CPU: import torch died with SIGILL "
                             "(illegal instruction")


def test_a_configured_engine_the_board_lacks_is_ineligible():
    facts = {**GOOD_FACTS, "quantized_engines": ["qnnpack", "onednn"]}
    assert judge(facts, "qnnpack") == (None, [])
    reason, _ = judge(facts, "fbgemm")
    assert reason == ("quantized_engine 'fbgemm' is not supported by torch 1.13.1 here "
                      "(supported: qnnpack, onednn)")


def test_local_board_whose_torch_dies_with_sigill(tmp_path):
    """The health snippet imports torch in a child: a signal there is a reason, never a lost session."""
    shim = tmp_path / "shim"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shim} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    dev = local_device(python=str(python))
    h = check(LocalTransport(dev, tmp_path / "work"), dev)
    assert not h.ok and h.reachable
    assert "torch cannot run on this CPU: import torch died with SIGILL (illegal instruction" in h.reason
    assert h.facts["python"] and h.facts["torch"] is None


def test_missing_engine_and_unknowns_are_warnings():
    reason, warnings = judge({**GOOD_FACTS, "quantized_engine": "none", "disk_free_bytes": None})
    assert reason is None and any("quantized" in w for w in warnings) and "free disk unknown" in warnings


def test_device_failures_become_ineligible_not_exceptions():
    assert "Python not found" in check(fake_with_facts(exit_code=127, stderr="python3: not found"),
                                       local_device()).reason
    h = check(fake_with_facts(raises=TransportError("device 'x': cannot connect")), local_device())
    assert not h.ok and h.reason.startswith("unreachable: device 'x': cannot connect")
    untrusted = fake_with_facts(raises=HostKeyError("not trusted; run `edgebench devices trust x`"))
    h = check(untrusted, local_device())
    assert not h.ok and h.reason.startswith("host key: not trusted") and "devices trust x" in h.reason
    h = check(fake_with_facts(stdout="garbage"), local_device())
    assert not h.ok and "printed no facts" in h.reason


def test_local_device_health(tmp_path):
    h = health.check_device(local_device(), state_dir=tmp_path)
    assert isinstance(h, Health) and h.device == "local"
    assert h.facts["python"] and h.facts["torch"] and h.facts["quantized_engine"]
    assert h.facts["work_dir"] == str(tmp_path / "local-device")
    assert h.ok or "too hot" in h.reason or "free" in h.reason or "memory" in h.reason


@pytest.mark.ssh
def test_farm_checks_in_parallel_and_others_go_on(ssh_farm):
    devices = [ssh_farm.device("good-1"), ssh_farm.device("untrusted"), ssh_farm.unreachable_device(),
               ssh_farm.device("good-2")]
    results = check_devices(devices, known_hosts=ssh_farm.known_hosts)
    by_name = {h.device: h for h in results}
    assert [h.device for h in results] == ["good-1", "untrusted", "unreachable", "good-2"]
    assert by_name["good-1"].facts["torch"] and by_name["good-2"].facts["python"]
    assert "not trusted" in by_name["untrusted"].reason and not by_name["untrusted"].ok
    assert "cannot connect" in by_name["unreachable"].reason and not by_name["unreachable"].ok


@pytest.mark.ssh
def test_cli_check_json_and_table(ssh_farm, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEBENCH_HOME", str(ssh_farm.state_dir))   # the farm's known_hosts
    inventory = ssh_farm.write_inventory(tmp_path / "devices.toml", names=["good-1", "untrusted"])
    code = main(["devices", "-i", str(inventory), "check", "--json", "tag:farm"])
    rows = {r["device"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 1 and set(rows) == {"good-1", "untrusted"}
    assert rows["untrusted"]["ok"] is False and "devices trust untrusted" in rows["untrusted"]["reason"]
    assert main(["devices", "-i", str(inventory), "check", "good-1"]) in (0, 1)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["DEVICE", "STATUS", "MACHINE", "PYTHON"] and "good-1" in out


def test_health_facts_and_agent_facts_give_the_same_identity(tmp_path):
    """Failed attempts are identified from health facts, measured ones from the agent's: same machine,
    same fingerprint, or results of one board would be split (or a comparison would warn) for nothing."""
    import json
    import subprocess
    import sys

    from devices.health import HEALTH_SNIPPET
    from devices.measure import device_identity
    from devices.ondevice.agent import facts as agent_facts

    out = subprocess.run([sys.executable, "-c", HEALTH_SNIPPET, str(tmp_path)], capture_output=True,
                         text=True, check=True, timeout=120)
    health = json.loads(out.stdout.strip().splitlines()[-1])
    agent = agent_facts.collect(import_torch=True)
    assert device_identity("local", health) == device_identity("local", agent)
