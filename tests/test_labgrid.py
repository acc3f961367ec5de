"""devices.labgrid against a real labgrid coordinator and exporter on loopback (tests/labgridfarm.py).

One farm per module; every test leaves every place released (the autouse fixture kicks leftovers, so one
failure cannot cascade). Processes that hold a place are real child interpreters, killed with real signals.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import require_service
from labgridfarm import LabgridFarm, labgrid_available
from sshfarm import free_port

from devices.errors import DevicesError
from devices.labgrid import Coordinator, LabgridError, NetworkService, PlaceBusy, PlaceInfo

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def require_labgrid() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("labgrid needs Python 3.10 or newer")
    require_service(labgrid_available(), "labgrid (pip install .[farm])")


@pytest.fixture
def with_labgrid():
    require_labgrid()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    require_labgrid()
    farm = LabgridFarm(tmp_path_factory.mktemp("labgrid"))
    try:
        farm.add_place("pi-1", port=2201, username="root", tags={"arch": "aarch64", "board": "rpi4"})
        farm.add_place("pi-2", port=2202, username="pi", tags={"arch": "aarch64", "board": "rpi5"})
        farm.add_place("x86-1", port=None, username="bench", tags={"arch": "x86_64"})
        farm.add_place("bare", network=False, tags={"arch": "riscv64"})
        farm.start_exporter()
        yield farm
    finally:
        farm.stop()


@pytest.fixture(autouse=True)
def all_released(request):
    yield
    if "farm" in request.fixturenames:
        leftovers = request.getfixturevalue("farm").release_all()
        assert leftovers == [], f"places left held: {leftovers}"


def lab(farm: LabgridFarm, owner: str = "edgebench-test", **kw) -> Coordinator:
    return Coordinator(farm.address, owner=owner, **kw)


# -- listing and selecting -------------------------------------------------------------------------


def test_places_lists_tags_holders_and_network_services(farm):
    places = {p.name: p for p in lab(farm).places()}
    assert sorted(places) == ["bare", "pi-1", "pi-2", "x86-1"]
    assert places["pi-1"] == PlaceInfo("pi-1", {"arch": "aarch64", "board": "rpi4"}, None,
                                       NetworkService("127.0.0.1", "root", 2201))
    assert places["pi-2"].network == NetworkService("127.0.0.1", "pi", 2202)
    assert places["x86-1"].network == NetworkService("127.0.0.1", "bench", 22)   # no port exported
    assert places["bare"].network is None and places["bare"].tags == {"arch": "riscv64"}
    assert all(p.acquired_by is None for p in places.values())


def test_select_by_name_and_by_tags(farm):
    coord = lab(farm)
    assert [p.name for p in coord.select(["pi-2", "pi-1", "pi-2"])] == ["pi-2", "pi-1"]
    assert [p.name for p in coord.select(tags={"arch": "aarch64"})] == ["pi-1", "pi-2"]
    assert [p.name for p in coord.select(tags={"arch": "aarch64", "board": "rpi5"})] == ["pi-2"]
    assert coord.select(["pi-1"], tags={"arch": "x86_64"}) == []
    assert coord.select(tags={"arch": "mips"}) == []
    assert [p.name for p in coord.select()] == ["bare", "pi-1", "pi-2", "x86-1"]


def test_unknown_place_is_an_error_naming_the_coordinator(farm):
    coord = lab(farm)
    with pytest.raises(LabgridError) as err:
        coord.select(["pi-1", "pi-9"])
    assert "'pi-9'" in str(err.value) and farm.address in str(err.value) and "pi-1" in str(err.value)
    assert isinstance(err.value, DevicesError)
    with pytest.raises(LabgridError, match="unknown labgrid place 'nope'") as err:
        with coord.hold("nope", wait_s=5):
            pass
    assert not isinstance(err.value, PlaceBusy)


# -- hold ------------------------------------------------------------------------------------------


def test_hold_yields_the_service_and_releases_after(farm):
    coord = lab(farm)
    assert coord.identity == f"{HOST}/edgebench-test"
    with coord.hold("pi-2", wait_s=5) as ssh:
        assert ssh == NetworkService("127.0.0.1", "pi", 2202)
        assert farm.holder("pi-2") == coord.identity
        assert {p.name: p.acquired_by for p in coord.places()}["pi-2"] == coord.identity
    assert farm.holder("pi-2") is None


def test_two_owners_on_one_host_are_distinct_holders(farm):
    first, second = lab(farm, "edgebench-run-a"), lab(farm, "edgebench-run-b")
    assert first.identity != second.identity
    assert first.identity.split("/")[0] == second.identity.split("/")[0] == HOST
    with first.hold("pi-1", wait_s=5):
        started = time.monotonic()
        with pytest.raises(PlaceBusy) as err:
            with second.hold("pi-1", wait_s=1, poll_s=0.2):
                pytest.fail("a second owner got a held place")
        elapsed = time.monotonic() - started
        assert farm.holder("pi-1") == first.identity      # the failed attempt did not touch the hold
    assert 1.0 <= elapsed < 5.0
    busy = err.value
    assert (busy.place, busy.holder) == ("pi-1", first.identity) and busy.waited_s >= 1.0
    assert str(busy).startswith(f"place 'pi-1' is held by {first.identity}; waited 1 s")
    assert farm.address in str(busy)
    assert isinstance(busy, LabgridError)


def test_a_waiting_owner_gets_the_place_when_it_is_released(farm):
    first, second = lab(farm, "edgebench-run-a"), lab(farm, "edgebench-run-b")
    held, release = threading.Event(), threading.Event()

    def hold_briefly():
        with first.hold("pi-1", wait_s=5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    try:
        assert held.wait(10)
        threading.Timer(0.7, release.set).start()
        started = time.monotonic()
        with second.hold("pi-1", wait_s=10, poll_s=0.1) as ssh:
            waited = time.monotonic() - started
            assert ssh.port == 2201 and farm.holder("pi-1") == second.identity
    finally:
        release.set()
        thread.join(10)
    assert 0.5 <= waited < 5.0


def test_the_same_owner_does_not_hold_a_place_twice(farm):
    coord = lab(farm)
    with coord.hold("pi-1", wait_s=5):
        with pytest.raises(PlaceBusy, match=f"held by {coord.identity}"):
            with coord.hold("pi-1", wait_s=0):
                pass
        assert farm.holder("pi-1") == coord.identity
    assert farm.holder("pi-1") is None


def test_wait_uses_the_given_clock_and_sleep(farm):
    now = [100.0]
    sleeps = []

    def fake_sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    with lab(farm, "edgebench-run-a").hold("pi-1", wait_s=5):
        with pytest.raises(PlaceBusy) as err:
            with lab(farm, "edgebench-run-b").hold("pi-1", wait_s=30, poll_s=10, clock=lambda: now[0],
                                                   sleep=fake_sleep):
                pass
    assert sleeps == [10, 10, 10] and err.value.waited_s == 30
    assert "waited 30 s" in str(err.value)


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_hold_releases_when_the_body_raises(farm, exc_type):
    coord = lab(farm)
    with pytest.raises(exc_type):
        with coord.hold("x86-1", wait_s=5):
            assert farm.holder("x86-1") == coord.identity
            raise exc_type("stop")
    assert farm.holder("x86-1") is None


def test_an_interrupt_while_waiting_leaves_the_holder_alone(farm):
    def interrupted_sleep(seconds):
        raise KeyboardInterrupt

    first, second = lab(farm, "edgebench-run-a"), lab(farm, "edgebench-run-b")
    with first.hold("pi-1", wait_s=5):
        with pytest.raises(KeyboardInterrupt):
            with second.hold("pi-1", wait_s=30, sleep=interrupted_sleep):
                pass
        assert farm.holder("pi-1") == first.identity
    assert farm.holder("pi-1") is None


def test_an_interrupt_while_the_acquire_is_in_flight_still_releases(farm):
    """The exporter is stopped, so the coordinator's AcquirePlace waits for it; a KeyboardInterrupt lands
    meanwhile; the exporter resumes and the place is granted, and hold gives it back before raising."""

    def on_alarm(signum, frame):
        raise KeyboardInterrupt

    exporter = farm.exporter.pid
    previous = signal.signal(signal.SIGALRM, on_alarm)
    resume = threading.Timer(1.0, os.kill, (exporter, signal.SIGCONT))
    os.kill(exporter, signal.SIGSTOP)
    try:
        resume.start()
        signal.setitimer(signal.ITIMER_REAL, 0.4)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            with lab(farm).hold("pi-1", wait_s=5):
                pytest.fail("the body ran although the caller was interrupted")
        assert time.monotonic() - started >= 0.9        # it waited for the request to finish
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resume.cancel()
        os.kill(exporter, signal.SIGCONT)
    assert farm.holder("pi-1") is None


def test_a_place_without_network_service_is_an_error_and_released(farm):
    coord = lab(farm)
    with pytest.raises(LabgridError, match="'bare' needs exactly one NetworkService resource, it has none"):
        with coord.hold("bare", wait_s=5):
            pytest.fail("held a place without a NetworkService")
    assert farm.holder("bare") is None


def test_first_release_does_not_free_another_owners_hold(farm):
    first, second = lab(farm, "edgebench-run-a"), lab(farm, "edgebench-run-b")
    hold = first.hold("pi-2", wait_s=5)
    hold.__enter__()
    farm.kick("pi-2")
    with second.hold("pi-2", wait_s=0):
        hold.__exit__(None, None, None)                     # first's release: conditional on holding it
        assert farm.holder("pi-2") == second.identity
    assert farm.holder("pi-2") is None


# -- controllers that die --------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import signal, sys, time
    from devices.labgrid import Coordinator

    def on_term(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    lab = Coordinator(sys.argv[1], owner=sys.argv[2])
    with lab.hold(sys.argv[3], wait_s=10) as ssh:
        print("HELD", ssh.port, flush=True)
        time.sleep(60)
""")


def start_holder(farm: LabgridFarm, owner: str, place: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, farm.address, owner, place], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("HELD"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the child did not hold {place}: {line!r} {err[-2000:]}")
    return proc


def test_sigterm_releases_the_place(farm):
    proc = start_holder(farm, "edgebench-term", place="pi-1")
    try:
        assert farm.holder("pi-1") == f"{HOST}/edgebench-term"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 143, err
    assert farm.holder("pi-1") is None


def test_sigkill_leaves_the_place_held_until_release_stale(farm):
    owner = "edgebench-killed"
    proc = start_holder(farm, owner, place="pi-2")
    proc.kill()
    proc.communicate(timeout=10)
    assert farm.holder("pi-2") == f"{HOST}/{owner}"          # nobody released it
    other = lab(farm, "edgebench-other")
    with other.hold("pi-1", wait_s=5):
        with pytest.raises(PlaceBusy):
            with other.hold("pi-2", wait_s=0.3, poll_s=0.1):
                pass
        assert lab(farm, "edgebench-bystander").release_stale() == []   # others' holds are left alone
        assert farm.holder("pi-2") == f"{HOST}/{owner}"
        assert lab(farm, owner).release_stale() == ["pi-2"]   # the restarted run frees its board ...
        assert farm.holder("pi-1") == other.identity          # ... and only its own
    assert farm.holder("pi-2") is None
    assert lab(farm, owner).release_stale() == []


# -- an unusable coordinator -----------------------------------------------------------------------


def test_unreachable_coordinator_fails_fast(with_labgrid):
    address = f"127.0.0.1:{free_port()}"
    coord = Coordinator(address, owner="edgebench-test", timeout_s=3)
    started = time.monotonic()
    with pytest.raises(LabgridError) as err:
        coord.places()
    assert time.monotonic() - started < 3
    message = str(err.value)
    assert message.startswith(f"labgrid coordinator {address} is unreachable") and "\n" not in message
    with pytest.raises(LabgridError, match="unreachable") as err:
        with coord.hold("pi-1", wait_s=30):
            pass
    assert not isinstance(err.value, PlaceBusy)
    assert time.monotonic() - started < 6


def test_a_silent_coordinator_times_out(with_labgrid):
    with socket.socket() as listener:                # accepts TCP, never speaks HTTP/2
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(LabgridError, match=f"labgrid coordinator {address} did not answer within 1 s"):
            Coordinator(address, owner="edgebench-test", timeout_s=1).places()
        assert time.monotonic() - started < 4


def test_address_without_port_gets_the_default_port(with_labgrid):
    assert Coordinator("127.0.0.1", owner="x").address == "127.0.0.1:20408"
    assert Coordinator("[::1]", owner="x").address == "[::1]:20408"
    assert Coordinator("lab:1234", owner="x").address == "lab:1234"


@pytest.mark.parametrize("owner", ["", "a/b", "two words", "tab\there"])
def test_owner_must_be_one_word_without_a_slash(owner):
    with pytest.raises(ValueError, match="labgrid owner"):
        Coordinator("127.0.0.1:1", owner=owner)


# -- without labgrid -------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_importing_the_module_does_not_import_labgrid():
    out = run_python("import sys, devices.labgrid; "
                     "print(sorted(m for m in sys.modules if m.split('.')[0] in ('labgrid', 'grpc')))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_labgrid_a_coordinator_is_a_clear_error():
    out = run_python(textwrap.dedent("""
        import sys
        sys.modules["labgrid"] = None          # as if not installed
        from devices.labgrid import Coordinator, LabgridError
        try:
            Coordinator("127.0.0.1:1", owner="edgebench-x")
        except LabgridError as exc:
            print(exc)
    """))
    assert out.returncode == 0, out.stderr
    assert "labgrid is not installed" in out.stdout and "edgebench[farm]" in out.stdout
