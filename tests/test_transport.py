"""Transports: quoting, timeouts, retries and failures, locally and against real sshd on loopback."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

import pytest
from sshfarm import keygen

from devices.errors import HostKeyError, TransportError
from devices.inventory import local_device
from devices.transport import LocalTransport, SSHTransport, build_command, open_transport

PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


def hostile_args(tmp_path):
    return [f"$(touch {tmp_path}/pwned1)", f"`touch {tmp_path}/pwned2`", f"; touch {tmp_path}/pwned3",
            "with spaces", "it's \"quoted\"", "a\nnewline", "*", "$HOME", "~user", "", "--", "|| true"]


def assert_nothing_ran(tmp_path):
    assert not list(tmp_path.glob("pwned*"))


def test_build_command_quotes_every_argument():
    cmd = build_command(["python3", "-c", "print(1)", "a b", "$(x)"], env={"A": "1 2"})
    assert cmd == "env 'A=1 2' python3 -c 'print(1)' 'a b' '$(x)'"
    assert build_command(["~/venv/bin/python3", "~/$(x)"]) == "~/venv/bin/python3 ~/'$(x)'"
    with pytest.raises(TransportError, match="invalid environment variable name"):
        build_command(["true"], env={"A;rm": "x"})


def test_local_hostile_arguments_pass_through(tmp_path):
    t = LocalTransport(local_device(), tmp_path / "work")
    args = hostile_args(tmp_path)
    r = t.run([sys.executable, "-c", PRINT_ARGV, *args], timeout=30)
    assert r.exit_code == 0 and json.loads(r.stdout) == args
    assert_nothing_ran(tmp_path)


def test_local_env_stdin_exit_codes_and_missing_command(tmp_path):
    t = open_transport(local_device(), state_dir=tmp_path)
    assert t.work_dir == str(tmp_path / "local-device")
    code = "import os, sys; d = sys.stdin.read(); print(os.environ['EB_X'] + d); sys.exit(3)"
    r = t.run([sys.executable, "-c", code], timeout=30, env={"EB_X": "v "}, stdin=b"in")
    assert (r.exit_code, r.stdout.strip()) == (3, "v in")
    r = t.run(["/nonexistent/python9"], timeout=5)
    assert r.exit_code == 127 and "not found" in r.stderr


def test_local_timeout_kills_the_process_group(tmp_path):
    t = LocalTransport(local_device(), tmp_path)
    marker = tmp_path / "survived"
    code = f"import time; time.sleep(3); open({str(marker)!r}, 'w').close()"
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 0.5s"):
        t.run([sys.executable, "-c", code], timeout=0.5)
    assert time.monotonic() - start < 3
    time.sleep(3.2)
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_local_cpu_pinning(tmp_path):
    t = LocalTransport(local_device(cpus=1), tmp_path)
    r = t.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"], timeout=30)
    assert r.stdout.strip() == "1"
    with pytest.raises(TransportError, match="only .* CPUs are available"):
        LocalTransport(local_device(cpus=100000), tmp_path)


def test_local_put_is_atomic_and_counts_bytes(tmp_path):
    t = LocalTransport(local_device(), tmp_path / "work")
    (tmp_path / "work").mkdir()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5000))
    assert t.put(src, str(tmp_path / "work" / "dst.bin"), timeout=10) == 5000
    assert (tmp_path / "work" / "dst.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["dst.bin"]


# ------------------------------------------------------------------------------------ real sshd

@pytest.mark.ssh
def test_ssh_run_quoting_env_stdin_and_put(ssh_device, tmp_path):
    with ssh_device.transport() as t:
        args = hostile_args(tmp_path)
        r = t.run([sys.executable, "-c", PRINT_ARGV, *args], timeout=30)
        assert r.exit_code == 0 and json.loads(r.stdout) == args
        assert_nothing_ran(tmp_path)
        code = ("import os, sys; sys.stderr.write('err'); print(os.environ['EB_Y'] + sys.stdin.read()); "
                "sys.exit(4)")
        r = t.run([sys.executable, "-c", code], timeout=30, env={"EB_Y": "$(touch x) "}, stdin=b"abc")
        assert (r.exit_code, r.stdout.strip(), r.stderr) == (4, "$(touch x) abc", "err")
        src = tmp_path / "payload.bin"
        src.write_bytes(os.urandom(300_000))
        dst = ssh_device.device.work_dir + "/payload.bin"
        assert t.put(src, dst, timeout=30) == 300_000
        assert open(dst, "rb").read() == src.read_bytes()
        assert sorted(os.listdir(ssh_device.device.work_dir)) == ["payload.bin"]   # no tmp file left
        with pytest.raises(TransportError, match="cannot write"):
            t.put(src, "/nonexistent-dir/x.bin", timeout=10)


@pytest.mark.ssh
def test_ssh_command_timeout_is_bounded_and_kills_the_remote_command(ssh_device, tmp_path):
    marker = tmp_path / "survived"
    code = f"import time; time.sleep(4); open({str(marker)!r}, 'w').close()"
    with ssh_device.transport() as t:
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"timed out after 1.0s \(remote process \d+ killed\)"):
            t.run([sys.executable, "-c", code], timeout=1.0)
        assert time.monotonic() - start < 5
        r = t.run(["sh", "-c", "echo out; echo err >&2"], timeout=10)     # the transport is still usable
        assert (r.exit_code, r.stdout, r.stderr) == (0, "out\n", "err\n")   # no pid marker left in stderr
    time.sleep(4.5)
    assert not marker.exists()


@pytest.mark.ssh
def test_unreachable_port_fails_within_connect_timeout(ssh_farm):
    dev = ssh_farm.unreachable_device(connect_timeout=2.0)
    t = SSHTransport(dev, ssh_farm.known_hosts)
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot connect to .*gave up after 3 attempt\(s\)"):
        t.run(["true"], timeout=60)
    assert time.monotonic() - start < 2.0 + 1.0


@pytest.mark.ssh
def test_silent_server_fails_within_connect_timeout(ssh_farm):
    """A port that accepts TCP but never speaks SSH (a hung device): banner timeout, bounded."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        dev = ssh_farm.unreachable_device(port=listener.getsockname()[1], connect_timeout=1.5)
        start = time.monotonic()
        with pytest.raises(TransportError, match="cannot connect"):
            SSHTransport(dev, ssh_farm.known_hosts).run(["true"], timeout=60)
        assert time.monotonic() - start < 1.5 + 1.5
    finally:
        listener.close()


@pytest.mark.ssh
def test_wrong_user_or_key_fails_fast_without_retry(ssh_device, tmp_path):
    sleeps = []

    def transport(**overrides):
        device = ssh_device.with_overrides(**overrides)
        return SSHTransport(device, ssh_device.known_hosts, sleep=sleeps.append)

    start = time.monotonic()
    with pytest.raises(TransportError, match="authentication failed for nosuchuser@127.0.0.1"):
        transport(user="nosuchuser").run(["true"], timeout=30)
    other = keygen(tmp_path / "other_key")
    with pytest.raises(TransportError, match="key authentication only"):
        transport(key_file=str(other)).run(["true"], timeout=30)
    with pytest.raises(TransportError, match="does not exist"):
        transport(key_file=str(tmp_path / "missing")).run(["true"], timeout=30)
    assert time.monotonic() - start < 10 and sleeps == []


@pytest.mark.ssh
def test_connect_retries_are_bounded(ssh_farm):
    sleeps = []
    dev = ssh_farm.unreachable_device(connect_timeout=30.0)
    t = SSHTransport(dev, ssh_farm.known_hosts, sleep=sleeps.append)
    with pytest.raises(TransportError, match="gave up after 3 attempt"):
        t.run(["true"], timeout=60)
    assert sleeps == [0.25, 0.5]


@pytest.mark.ssh
def test_killed_device_mid_command_is_a_transport_error_and_not_retried(ssh_device, tmp_path):
    t = ssh_device.transport()
    t.run(["true"], timeout=10)
    killer = threading.Timer(0.5, ssh_device.kill)
    killer.start()
    start = time.monotonic()
    runs = tmp_path / "runs.txt"
    with pytest.raises(TransportError, match="connection lost|timed out"):
        t.run(["sh", "-c", 'echo started >> "$1"; sleep 20', "sh", str(runs)], timeout=15)
    assert time.monotonic() - start < 10
    killer.join()
    ssh_device.restart()
    assert t.run(["echo", "back"], timeout=20).stdout == "back\n"    # reconnects on next use
    t.close()
    assert runs.read_text() == "started\n"                           # commands are never retried


@pytest.mark.ssh
def test_transfer_is_retried_inside_its_timeout(ssh_device, tmp_path, monkeypatch):
    import paramiko

    real_open_sftp = paramiko.SSHClient.open_sftp
    failures = []

    def flaky_open_sftp(self):
        if not failures:
            failures.append(1)
            raise EOFError("link dropped")
        return real_open_sftp(self)

    monkeypatch.setattr(paramiko.SSHClient, "open_sftp", flaky_open_sftp)
    sleeps = []
    t = SSHTransport(ssh_device.device, ssh_device.known_hosts, sleep=sleeps.append)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    assert t.put(src, ssh_device.device.work_dir + "/f.bin", timeout=20) == 1000
    assert failures == [1] and sleeps == [0.25]
    failures.clear()
    monkeypatch.setattr(paramiko.SSHClient, "open_sftp", lambda self: (_ for _ in ()).throw(EOFError("down")))
    with pytest.raises(TransportError, match=r"sending f.bin .* failed: down \(after 3 attempt\(s\)"):
        t.put(src, ssh_device.device.work_dir + "/g.bin", timeout=20)
    t.close()


@pytest.mark.ssh
def test_open_transport_picks_ssh_and_rejects_untrusted(ssh_farm):
    t = open_transport(ssh_farm.device("untrusted"), known_hosts=ssh_farm.known_hosts)
    assert isinstance(t, SSHTransport)
    with pytest.raises(HostKeyError, match="edgebench devices trust untrusted"):
        t.run(["true"], timeout=10)


def test_closing_a_local_transport_from_another_thread_kills_what_is_in_flight(tmp_path):
    """An interrupted run closes its transports from the main thread: the command in flight on the local
    device (its own process group, so Ctrl-C never reaches it) must end then, not run to completion."""
    t = LocalTransport(local_device(), tmp_path)
    threading.Timer(0.5, t.close).start()
    start = time.monotonic()
    result = t.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=120)
    assert time.monotonic() - start < 30
    assert result.exit_code < 0   # killed by a signal
    t.close()   # closing again, with nothing in flight, is harmless
    assert t.run([sys.executable, "-c", "print('after')"], timeout=60).stdout.strip() == "after"
