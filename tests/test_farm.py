"""A shared board farm end to end: a real labgrid coordinator and exporter, places whose NetworkService
points at real sshd boards on loopback, real `edgebench run` controllers (subprocesses) and one real
PostgreSQL store.

1. Two controllers start at once on the same three places: each measures every pair, labgrid keeps them
   off each other's boards (checked from the stored timestamps: each process's controller window), and
   one of them, SIGKILLed mid-run, leaves its place held until its ``--resume`` releases it and
   completes the run; the other waits for that place and finishes.
2. SIGTERM: the controller stops at once, gives its place back, records nothing for the process it cut
   short; ``--resume`` completes the run.
3. A place an operator holds for the whole wait is recorded ``busy`` (not unreachable); the gate says it
   could not measure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import tomli_w
from conftest import require_service
from labgridfarm import LabgridFarm, labgrid_available
from sshfarm import SSHFarm, sshd_available

pytestmark = [pytest.mark.slow]

VARIANTS = ["original", "quantized"]
BOARDS = ["pi-1", "pi-2", "pi-3"]
# One fresh process per pair, a handful of iterations on short sentences: enough to hold a board for a
# few seconds per pair, and short on a loaded 2-core machine.
PROTOCOL = {"threads": 1, "processes": 1, "warmup": 1, "min_iters": 3, "min_seconds": 0.0,
            "max_iters": 10, "sentences": ["short"], "timeout_s": 300}
BUDGETS = {"version": 1, "budgets": {"latency_p90_ms_short": 600000, "peak_rss_mib": 16384,
                                     "emotion_id_accuracy": 0.0}}
RUN_TIMEOUT_S = 900


def require_farm() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("labgrid needs Python 3.10 or newer")
    require_service(labgrid_available(), "labgrid (pip install .[farm])")
    require_service(sshd_available(), "OpenSSH sshd and ssh-keygen")


class Farm:
    """The SSH boards, the labgrid farm over them, devices.toml naming the places, and one home (state
    dir: known_hosts, build cache) per controller."""

    def __init__(self, tmp: Path, boards=BOARDS, wait_s: float = 600):
        self.tmp = tmp
        self.ssh = SSHFarm(tmp / "ssh")
        self.lab = LabgridFarm(tmp / "labgrid")
        for name in boards:
            server = self.ssh.add(name, trusted=True)
            self.lab.add_place(name, port=server.port, username=self.ssh.user, tags={"arch": "test"})
        self.lab.start_exporter()
        devices = {}
        for name in boards:
            dev = self.ssh.device(name)
            # the place gives host, port and user; the rest is the inventory's, as for a real board
            devices[name] = {"place": name, "key_file": dev.key_file, "python": dev.python,
                             "work_dir": dev.work_dir, "connect_timeout": 5.0}
        self.inventory = tmp / "devices.toml"
        self.inventory.write_text(tomli_w.dumps({
            "labgrid": {"coordinator": self.lab.address, "wait_s": wait_s, "timeout_s": 10},
            "devices": devices}))
        self.budgets = tmp / "budgets.toml"
        self.budgets.write_text(tomli_w.dumps(BUDGETS))

    def config(self, name: str, store: str, devices=BOARDS) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(tomli_w.dumps({
            "preset": "tiny", "variants": VARIANTS, "devices": list(devices),
            "inventory": str(self.inventory), "budgets": str(self.budgets), "store": store,
            "out_dir": str(self.tmp / name / "out"), "protocol": PROTOCOL}))
        return path

    def home(self, name: str) -> Path:
        home = self.tmp / name / "home"
        if not home.exists():
            home.mkdir(parents=True)
            shutil.copy(self.ssh.known_hosts, home / "known_hosts")
        return home

    def start(self, name: str, config: Path, *args: str) -> subprocess.Popen:
        env = dict(os.environ, EDGEBENCH_HOME=str(self.home(name)), PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json", "--no-report",
                *args]
        return subprocess.Popen(argv, cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, EDGEBENCH_HOME=str(self.home(name)), PYTHONUNBUFFERED="1")
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=self.tmp, env=env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)

    def stop(self) -> None:
        self.lab.stop()
        self.ssh.stop_all()


@pytest.fixture
def farm(tmp_path):
    require_farm()
    farm = Farm(tmp_path)
    try:
        yield farm
    finally:
        farm.stop()


def explain(stdout: str):
    """The part of a run's JSON that says why it did not pass."""
    try:
        payload = json.loads(stdout)
    except ValueError:
        return stdout[-3000:]
    verdict = payload.get("verdict") or {}
    return {"pairs": payload.get("pairs"), "unmeasured": verdict.get("unmeasured"),
            "failed": [c for c in verdict.get("checks") or [] if c.get("status") not in ("pass", None)]}


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def rows(url: str, sql: str, *params) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def run_of(url: str, controller_dir: Path) -> str | None:
    """The run a controller started (its configuration's out_dir is under its own folder)."""
    try:
        found = rows(url, "SELECT id, config_json FROM runs")
    except Exception:  # noqa: BLE001 - the schema is not there yet
        return None
    mine = [r["id"] for r in found if json.loads(r["config_json"]).get("out_dir", "").startswith(
        str(controller_dir))]
    return mine[0] if mine else None


def ok_pairs(url: str, run_id: str) -> set:
    return {(r["device"], r["variant"]) for r in rows(
        url, "SELECT device, variant FROM attempts WHERE run_id = %s AND status = 'ok'", run_id)}


def windows(url: str) -> dict:
    """device -> [(start, end, run id)] of every stored process: when its controller had the board."""
    out: dict = {}
    for r in rows(url, "SELECT run_id, device, header_json FROM attempts WHERE header_json IS NOT NULL"):
        for proc in json.loads(r["header_json"]).get("processes") or []:
            start, end = (datetime.fromisoformat(t) for t in proc["controller_window"])
            out.setdefault(r["device"], []).append((start, end, r["run_id"]))
    return out


def test_two_controllers_share_the_farm_one_killed_then_resumed(farm, postgres):
    url = postgres.new_database()
    config = {name: farm.config(name, url) for name in ("a", "b")}
    a = farm.start("a", config["a"])
    b = farm.start("b", config["b"])
    # Kill controller a (SIGKILL: nothing runs on its way out) once one of its pairs is stored: it holds
    # a place then, or is about to.
    killed_run = held = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while a.poll() is None and time.monotonic() < deadline:
        run_a = run_of(url, farm.tmp / "a")
        if run_a and ok_pairs(url, run_a):
            held = farm.lab.held()
            a.send_signal(signal.SIGKILL)
            killed_run = run_a
            break
        time.sleep(0.2)
    _, a_err = finish(a, 60)
    assert killed_run is not None, f"controller a never stored a pair:\n{a_err[-3000:]}"
    assert a.returncode == -signal.SIGKILL
    # What a held when it died stays held (the coordinator does not tie a place to its client's
    # connection) until the killed run is resumed: the resume releases what its controller left held,
    # then measures what is missing.
    owner = f"/edgebench-{killed_run}"
    stale = sorted(p for p, holder in (held or {}).items() if holder.endswith(owner))
    time.sleep(1.0)
    assert sorted(p for p, h in farm.lab.held().items() if h.endswith(owner)) == stale
    resumed = farm.cli("a", "run", "--config", str(config["a"]), "--resume", killed_run, "--json",
                       "--no-report")
    assert resumed.returncode == 0, (resumed.stderr[-3000:], explain(resumed.stdout))
    assert json.loads(resumed.stdout)["run_id"] == killed_run
    for place in stale:
        assert f"released labgrid place {farm.lab.address}/{place}" in resumed.stderr
    b_out, b_err = finish(b)
    assert b.returncode == 0, b_err[-3000:]
    b_run = json.loads(b_out)["run_id"]
    assert b_run != killed_run

    # Every pair measured by each controller, once.
    everything = {(d, v) for d in BOARDS for v in VARIANTS}
    for run_id in (killed_run, b_run):
        assert ok_pairs(url, run_id) == everything, run_id
        stored = rows(url, "SELECT device, variant, status, error FROM attempts WHERE run_id = %s", run_id)
        assert [r["status"] for r in stored].count("ok") == len(everything)
        assert {r["status"] for r in stored} == {"ok"}, [r for r in stored if r["status"] != "ok"]
    # No board was measured by two controllers at once.
    for device, spans in windows(url).items():
        spans.sort()
        assert {run for *_, run in spans} == {killed_run, b_run}, device
        for (s1, e1, r1), (s2, e2, r2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"{device}: {r1} {s1}..{e1} overlaps {r2} {s2}..{e2}"
    # Every place given back.
    assert farm.lab.held() == {}
    # The stored attempts say which place measured them.
    headers = rows(url, "SELECT header_json FROM attempts WHERE run_id = %s", b_run)
    assert {json.loads(h["header_json"])["labgrid"]["place"] for h in headers} == set(BOARDS)
    # history, gate and report read the shared store.
    history = farm.cli("b", "history", "--store", url, "--json")
    assert history.returncode == 0, history.stderr
    gate = farm.cli("b", "gate", "--store", url, "--run", b_run, "--budgets", str(farm.budgets), "--json")
    assert gate.returncode == 0, gate.stderr[-2000:]
    report = farm.cli("b", "report", "--store", url, "--run", killed_run, "--out", str(farm.tmp / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (farm.tmp / "report" / "report.html").is_file()


def test_sigterm_gives_the_place_back_and_resume_completes(farm, postgres):
    url = postgres.new_database()
    config = farm.config("solo", url, devices=["pi-1"])
    proc = farm.start("solo", config)
    run_id = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        found = run_of(url, farm.tmp / "solo")
        if found and ok_pairs(url, found) and farm.lab.held():
            run_id = found
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    out, err = finish(proc, 120)
    assert run_id is not None, f"no pair was stored:\n{err[-3000:]}"
    if proc.returncode != 143:   # it had finished by itself just before the signal
        pytest.skip("the run finished before SIGTERM arrived")
    assert "terminated" in err
    assert farm.lab.held() == {}, "SIGTERM left the place held"
    statuses = [r["status"] for r in rows(url, "SELECT status FROM attempts WHERE run_id = %s", run_id)]
    assert set(statuses) <= {"ok", "partial"}, statuses   # the cut-short process is not a failure
    resumed = farm.cli("solo", "run", "--config", str(config), "--resume", run_id, "--json", "--no-report")
    assert resumed.returncode == 0, (resumed.stderr[-3000:], explain(resumed.stdout))
    assert ok_pairs(url, run_id) == {("pi-1", v) for v in VARIANTS}
    assert farm.lab.held() == {}


def test_a_place_held_by_someone_else_is_busy_not_unreachable(tmp_path, postgres):
    require_farm()
    farm = Farm(tmp_path, boards=["pi-1", "pi-2"], wait_s=2)
    try:
        farm.lab.client("acquire", place="pi-2")   # an operator's session on the board
        url = postgres.new_database()
        result = farm.cli("x", "run", "--config", str(farm.config("x", url, devices=["pi-1", "pi-2"])),
                          "--json", "--no-report")
        assert result.returncode == 2, result.stderr[-3000:]
        payload = json.loads(result.stdout)
        by_pair = {(p["device"], p["variant"]): p for p in payload["pairs"]}
        assert {by_pair[("pi-1", v)]["status"] for v in VARIANTS} == {"ok"}
        for v in VARIANTS:
            pair = by_pair[("pi-2", v)]
            assert pair["status"] == "busy"
            assert "pi-2" in pair["error"] and "held by" in pair["error"]
        assert payload["verdict"]["outcome"] == "could_not_measure"
        assert farm.lab.held() == {"pi-2": farm.lab.holder("pi-2")}   # the operator's hold, untouched
        # A group of places by tags: `devices list --farm` asks the coordinator, one device per place.
        group = tmp_path / "group.toml"
        group.write_text(tomli_w.dumps({
            "labgrid": {"coordinator": farm.lab.address},
            "devices": {"boards": {"place_tags": {"arch": "test"}, "key_file": str(farm.ssh.client_key),
                                   "tags": ["nightly"]}}}))
        listed = farm.cli("x", "devices", "-i", str(group), "list", "--farm", "--json")
        assert listed.returncode == 0, listed.stderr
        names = {d["name"]: d for d in json.loads(listed.stdout)}
        assert set(names) == {"local", "pi-1", "pi-2"}
        assert names["pi-2"]["place"] == "pi-2" and names["pi-2"]["tags"] == ["nightly", "boards"]
        plain = farm.cli("x", "devices", "-i", str(group), "list", "--json")   # no coordinator asked
        assert {d["name"] for d in json.loads(plain.stdout)} == {"local", "boards"}
    finally:
        farm.stop()
