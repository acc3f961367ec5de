"""End to end through the real CLI (a subprocess), real sshd devices on loopback, a real SQLite store.

1. A farm of three SSH devices plus ``local``, four tiny variants; one device's sshd is killed mid-run.
   The run finishes, the dead device's remaining pairs are recorded with the reason, the gate exits 2,
   and ``run --resume`` after restarting that sshd measures only the missing pairs.
2. A deliberately slower model (a real bigger vocoder, not a sleep) under the same variant name is
   reported as a regression by ``compare`` and fails the gate with exit 1.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

pytestmark = [pytest.mark.slow]

CORE = ["original", "pruned", "quantized", "pruned+quantized"]
# Small but honest: one fresh process per variant, short sentences, a handful of iterations.
# One torch thread: the machine is shared, and idle torch threads spinning on a busy core distort timings.
QUICK_PROTOCOL = {"threads": 1, "processes": 1, "warmup": 1, "min_iters": 3, "min_seconds": 0.0,
                  "max_iters": 20, "sentences": ["short"], "timeout_s": 300}
# Budgets no tiny model on a loaded 2-core machine can miss: only the outcome under test decides.
GENEROUS_BUDGETS = {"version": 1, "budgets": {"latency_p90_ms_short": 600000, "peak_rss_mib": 16384,
                                                "emotion_id_accuracy": 0.0}}
RUN_TIMEOUT_S = 900


def cli(args, home: Path, cwd: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, **values) -> Path:
    path.write_text(tomli_w.dumps(values))
    return path


def attempts(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT device, variant, status, error FROM attempts ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # the table does not exist yet
        return []
    finally:
        con.close()


def test_farm_device_dies_mid_run_then_resume_completes_only_missing(ssh_farm, tmp_path):
    farm = ssh_farm
    farm.add("victim", trusted=True)
    inventory = farm.write_inventory(tmp_path / "devices.toml", names=["good-1", "good-2", "victim"])
    budgets = write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)
    config = write_config(
        tmp_path / "edgebench.toml", preset="tiny", variants=CORE,
        devices=["local", "good-1", "good-2", "victim"], inventory=str(inventory), budgets=str(budgets),
        store=str(tmp_path / "results.sqlite"), out_dir=str(tmp_path / "out"), protocol=QUICK_PROTOCOL,
    )
    db = tmp_path / "results.sqlite"
    env = dict(os.environ, EDGEBENCH_HOME=str(farm.state_dir), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the victim's sshd (listener and sessions) as soon as its first pair has landed in the store.
    killed = False
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if not killed and db.exists() and any(
                r["device"] == "victim" and r["status"] == "ok" for r in attempts(db)):
            farm.kill("victim")
            killed = True
        time.sleep(0.2)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, (f"the victim never finished a pair before the run ended: "
                    f"{[dict(r) for r in attempts(db)]}\n{err[-3000:]}")
    assert proc.returncode == 2, err[-3000:]  # could not measure everything
    payload = json.loads(out)
    run_id = payload["run_id"]
    assert payload["verdict"]["outcome"] == "could_not_measure"

    rows = attempts(db)
    by_pair = {(r["device"], r["variant"]): r for r in rows}
    assert len(by_pair) == 16  # every pair has an attempt
    for device in ("local", "good-1", "good-2"):
        assert all(by_pair[(device, v)]["status"] == "ok" for v in CORE), [dict(r) for r in rows]
    victim = [by_pair[("victim", v)] for v in CORE]
    assert any(r["status"] == "ok" for r in victim)  # the pair that landed before the kill (interleaved)
    dead = [r for r in victim if r["status"] != "ok"]
    assert dead, "the victim measured everything although its sshd was killed"
    for r in dead:
        assert r["status"] in ("unreachable", "timeout", "failed")
        assert "victim" in r["error"] and r["error"].strip()
    missing = {("victim", r["variant"]) for r in dead}

    gate = cli(["gate", "--run", run_id, "--config", str(config), "--json"], farm.state_dir, tmp_path)
    assert gate.returncode == 2, gate.stderr
    assert json.loads(gate.stdout)["outcome"] == "could_not_measure"

    farm.restart("victim")
    resumed = cli(["run", "--config", str(config), "--resume", run_id, "--json"], farm.state_dir, tmp_path)
    assert resumed.returncode == 0, (resumed.stderr[-3000:], resumed.stdout[-4000:])
    again = json.loads(resumed.stdout)
    assert again["run_id"] == run_id
    assert {(p["device"], p["variant"]) for p in again["pairs"]} == missing
    assert all(p["status"] == "ok" for p in again["pairs"])
    # Nothing measured before was measured again: one ok attempt per pair.
    ok = [(r["device"], r["variant"]) for r in attempts(db) if r["status"] == "ok"]
    assert sorted(ok) == sorted(set(ok)) and len(ok) == 16


def test_bigger_model_is_a_regression_and_fails_the_gate(tmp_path):
    from devices.ondevice.models import get_preset

    home = tmp_path / "state"
    budgets = write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)
    protocol = dict(QUICK_PROTOCOL, min_iters=15, max_iters=30)
    small = get_preset("tiny").to_dict()
    big = json.loads(json.dumps(small))
    big["vocoder"]["channels"] = small["vocoder"]["channels"] * 16  # ~250x the vocoder's MACs, ~4x total
    common = dict(variants=["original"], devices=["local"], budgets=str(budgets),
                  store=str(tmp_path / "results.sqlite"), out_dir=str(tmp_path / "out"), protocol=protocol)
    fast_cfg = write_config(tmp_path / "fast.toml", model_config=small, **common)
    slow_cfg = write_config(tmp_path / "slow.toml", model_config=big, **common)

    fast = cli(["run", "--config", str(fast_cfg), "--json", "--no-report"], home, tmp_path)
    assert fast.returncode == 0, fast.stderr[-3000:]
    base_id = json.loads(fast.stdout)["run_id"]
    slow = cli(["run", "--config", str(slow_cfg), "--json", "--no-report"], home, tmp_path)
    slow_payload = json.loads(slow.stdout)
    run_id = slow_payload["run_id"]
    # The run's own gate already picks the last passing run on this device as the baseline.
    assert slow.returncode == 1, slow.stderr[-3000:]
    assert "regressed" in slow_payload["verdict"]["outcomes"]

    compare = cli(["compare", run_id, base_id, "--config", str(slow_cfg), "--json"], home, tmp_path)
    assert compare.returncode == 0, compare.stderr
    rows = json.loads(compare.stdout)["comparisons"]
    short = [r for r in rows if r["variant"] == "original" and r["length_class"] == "short"]
    assert short and short[0]["verdict"] == "regressed" and short[0]["ratio"] > 1.05

    gate = cli(["gate", "--run", run_id, "--baseline", base_id, "--config", str(slow_cfg), "--json"],
               home, tmp_path)
    assert gate.returncode == 1, gate.stderr
    verdict = json.loads(gate.stdout)
    assert verdict["outcome"] == "regressed"
    assert verdict["regressions"][0]["variant"] == "original"


def test_untrusted_and_unreachable_devices_are_recorded_and_the_others_measured(ssh_farm, tmp_path):
    farm = ssh_farm
    inventory = farm.write_inventory(tmp_path / "devices.toml", names=["good-1", "untrusted"])
    with inventory.open("a") as f:  # a third device on a loopback port where nothing listens
        dead = farm.unreachable_device("dead")
        f.write(f'\n[devices.dead]\nhost = "127.0.0.1"\nport = {dead.port}\nuser = "{dead.user}"\n'
                f'key_file = "{dead.key_file}"\nconnect_timeout = 3.0\n')
    config = write_config(
        tmp_path / "edgebench.toml", preset="tiny", variants=["original", "quantized"],
        devices=["good-1", "untrusted", "dead"], inventory=str(inventory),
        budgets=str(write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)),
        store=str(tmp_path / "results.sqlite"), out_dir=str(tmp_path / "out"), protocol=QUICK_PROTOCOL,
    )
    result = cli(["run", "--config", str(config), "--json"], farm.state_dir, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    by_pair = {(r["device"], r["variant"]): r for r in attempts(tmp_path / "results.sqlite")}
    assert by_pair[("good-1", "original")]["status"] == "ok"
    assert by_pair[("good-1", "quantized")]["status"] == "ok"
    for variant in ("original", "quantized"):
        untrusted = by_pair[("untrusted", variant)]
        assert untrusted["status"] == "unreachable", dict(untrusted)
        assert "devices trust untrusted" in untrusted["error"]
        assert by_pair[("dead", variant)]["status"] == "unreachable", dict(by_pair[("dead", variant)])
    # The untrusted host key was not recorded by the attempt.
    assert str(farm.servers["untrusted"].port) not in farm.known_hosts.read_text()


def test_controller_killed_mid_run_loses_nothing_and_resume_finishes(tmp_path):
    import signal

    home = tmp_path / "state"
    db = tmp_path / "results.sqlite"
    config = write_config(
        tmp_path / "edgebench.toml", preset="tiny", variants=CORE, devices=["local"],
        budgets=str(write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)),
        store=str(db), out_dir=str(tmp_path / "out"), protocol=QUICK_PROTOCOL,
    )
    env = dict(os.environ, EDGEBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists() and any(r["status"] == "ok" for r in attempts(db)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = [dict(r) for r in attempts(db) if r["status"] == "ok"]
    assert 1 <= len(before) < len(CORE)
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT id FROM runs").fetchone()[0]
    con.close()

    resumed = cli(["run", "--config", str(config), "--resume", run_id, "--json"], home, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    measured_now = {p["variant"] for p in json.loads(resumed.stdout)["pairs"]}
    assert measured_now == set(CORE) - {r["variant"] for r in before}
    after = [dict(r) for r in attempts(db) if r["status"] == "ok"]
    assert sorted(r["variant"] for r in after) == sorted(CORE)
    assert all(r in after for r in before)  # nothing measured before the kill was lost or redone


def test_run_on_a_modelscope_model_directory(tmp_path):
    """`edgebench run --model-dir DIR` loads the voice, builds the core variants plus `optimized`,
    measures them on the local device and writes a report that names where the weights came from."""
    from conftest import require_kantts_small

    model_dir = require_kantts_small()
    home = tmp_path / "state"
    budgets = write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)
    config = write_config(tmp_path / "edgebench.toml", budgets=str(budgets), protocol=QUICK_PROTOCOL)
    out = tmp_path / "report"
    result = cli(["run", "--config", str(config), "--model-dir", str(model_dir), "--out", str(out), "--json"],
                 home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    measured = {p["variant"] for p in payload["pairs"] if p["status"] == "ok"}
    assert measured == {"original", "optimized", "pruned", "quantized", "pruned+quantized"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "zhitian_emo" in html and "Implementation rewrite" in html
    assert "not speech" not in html  # a model directory's weights are not the seeded random ones


def test_a_bad_model_directory_is_one_line_exit_2_and_writes_nothing(tmp_path):
    home = tmp_path / "state"
    broken = tmp_path / "model"
    (broken / "voices").mkdir(parents=True)
    (broken / "voices" / "voices.json").write_text('{"voices": ["zhitian_emo"]}')
    result = cli(["run", "--model-dir", str(broken), "--preset", "tiny"], home, tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "zhitian_emo: missing" in lines[0], result.stderr
    assert not home.exists() and not (tmp_path / "edgebench-out").exists()


def test_a_controller_killed_between_rounds_leaves_a_partial_pair_that_resume_completes(tmp_path):
    """Interleaved rounds of one process per variant: SIGKILL the controller as soon as the first process
    of a pair is stored (its attempt is partial). --resume completes that same attempt, not a new one."""
    home = tmp_path / "state"
    budgets = write_config(tmp_path / "budgets.toml", **GENEROUS_BUDGETS)
    config = write_config(
        tmp_path / "edgebench.toml", preset="tiny", variants=["original", "quantized"], devices=["local"],
        budgets=str(budgets), store=str(tmp_path / "results.sqlite"), out_dir=str(tmp_path / "out"),
        protocol=dict(QUICK_PROTOCOL, processes=2),
    )
    db = tmp_path / "results.sqlite"
    env = dict(os.environ, EDGEBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json",
                             "--no-report"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    partial = []
    while proc.poll() is None and time.monotonic() < deadline:
        if db.exists():
            partial = [r for r in attempts(db) if r["status"] == "partial"]
            if partial:
                proc.kill()
                break
        time.sleep(0.05)
    proc.communicate(timeout=60)
    assert partial, "no pair was ever half-measured"
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT id FROM runs").fetchone()[0]
    first = con.execute("SELECT id, device, variant FROM attempts WHERE status = 'partial'").fetchone()
    con.close()
    resumed = cli(["run", "--config", str(config), "--resume", run_id, "--json", "--no-report"],
                  home, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, variant, status, header_json FROM attempts ORDER BY id").fetchall()
    con.close()
    completed = [r for r in rows if r[0] == first[0]]
    assert completed and completed[0][2] == "ok"  # the same attempt, completed
    assert len(json.loads(completed[0][3])["processes"]) >= 2
    assert sorted(r[1] for r in rows if r[2] == "ok") == ["original", "quantized"]
