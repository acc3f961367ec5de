"""edgebench end to end on emulated aarch64 boards (tests/armfarm.py), through the real CLI over real sshd.

One run, three boards, the four core tiny variants built by this controller's torch:

* ``pi5``: Cortex-A76, torch 2.10 (the newest CPU-only aarch64 wheel), its own default quantized engine;
* ``pi4-oldtorch``: Cortex-A72, torch 2.0.1 (version skew: artifacts saved by torch 2.13 load on 2.0),
  ``quantized_engine = "qnnpack"`` in devices.toml;
* ``pi4``: Cortex-A72 with torch 2.10, whose wheel needs ARMv8.2: its torch pairs are ineligible with the
  illegal-instruction reason, while the other two are measured in the same run; it also has numpy and
  onnxruntime, and a second run measures the onnxruntime variants on it (a board torch cannot run on).

Every pair's first process also checks the board's outputs against this controller's (fp32 and int8
across engines). Under emulation arithmetic is 100-300x slower: nothing here is a speed claim, and the
protocol keeps interpreter starts few (one process per variant, three short sentences).
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
from armfarm import BOARDS, add_board, require_arm_boards
from sshfarm import SSHFarm

from devices.bundle import build_bundle
from devices.push import ensure_bundle
from devices.transport import SSHTransport

pytestmark = [pytest.mark.arm, pytest.mark.ssh, pytest.mark.slow]

CORE = ["original", "pruned", "quantized", "pruned+quantized"]
PROTOCOL = {"threads": 1, "processes": 1, "warmup": 0, "min_iters": 3, "min_seconds": 0.0, "max_iters": 3,
            "sentences": ["short"], "timeout_s": 900}
BUDGETS = {"version": 1, "budgets": {"latency_p90_ms_short": 3_600_000, "peak_rss_mib": 16384,
                                     "emotion_id_accuracy": 0.0}}
RUN_TIMEOUT_S = 1500
ENGINES = {"pi4-oldtorch": "qnnpack"}


@pytest.fixture(scope="module")
def arm_farm(tmp_path_factory):
    require_arm_boards()
    farm = SSHFarm(tmp_path_factory.mktemp("arm-e2e"))
    try:
        devices = {}
        for name in BOARDS:
            extra = {"quantized_engine": ENGINES[name]} if name in ENGINES else {}
            devices[name] = add_board(farm, name, **extra)
        yield farm, devices
    finally:
        farm.stop_all()


def _inventory(path: Path, devices: dict) -> Path:
    tables = {}
    for name, d in devices.items():
        table = {"host": d.host, "port": d.port, "user": d.user, "key_file": d.key_file, "python": d.python,
                 "work_dir": d.work_dir, "tags": list(d.tags)}
        if d.quantized_engine:
            table["quantized_engine"] = d.quantized_engine
        tables[name] = table
    path.write_text(tomli_w.dumps({"devices": tables}))
    return path


def test_the_bundle_imports_on_a_board_with_only_the_standard_library_and_torch(arm_farm, tmp_path):
    """Every module of devices.ondevice but the onnxruntime runtime (``ort``: numpy and onnxruntime, which
    this board lacks) imports on the old-torch board from the pushed bundle, and what it pulls in is the
    standard library, torch (with its own dependencies) and the bundled pypinyin."""
    farm, devices = arm_farm
    dev = devices["pi4-oldtorch"]
    with SSHTransport(dev, farm.known_hosts) as t:
        pushed = ensure_bundle(t, build_bundle(tmp_path / "state"))
        code = "\n".join([
            "import importlib, json, pkgutil, sys",
            f"sys.path.insert(0, {pushed.remote_path!r})",
            "import devices.ondevice as pkg",
            "names = [m.name for m in pkgutil.walk_packages(pkg.__path__, 'devices.ondevice.')",
            "         if m.name != 'devices.ondevice.ort']",
            "for name in names: importlib.import_module(name)",
            "tops = sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))",
            "print(json.dumps({'modules': names, 'tops': tops, 'torch': sys.modules['torch'].__version__}))",
        ])
        r = t.run([dev.python, "-c", code], timeout=300)
        assert r.exit_code == 0, r.stderr[-2000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])
        numpy = t.run([dev.python, "-c", "import numpy"], timeout=120)
    assert got["torch"].startswith("2.0.1")
    assert {"devices.ondevice.agent.worker", "devices.ondevice.load", "devices.ondevice.models.sambert",
            "devices.ondevice.outputs", "devices.ondevice.frontend"} <= set(got["modules"])
    torch_and_its_dependencies = {"torch", "typing_extensions", "sympy", "mpmath", "networkx", "filelock",
                                  "fsspec", "jinja2", "markupsafe", "functorch", "torchgen"}
    interpreter = {"__main__", "__mp_main__", "sitecustomize"}   # Debian's sitecustomize, stdlib's own names
    assert set(got["tops"]) - {"devices", "pypinyin"} - interpreter <= torch_and_its_dependencies, got["tops"]
    assert numpy.exit_code != 0 and "No module named 'numpy'" in numpy.stderr   # the board really is bare


# About 4.5 minutes on a quiet 2-core machine; on a busy one, disturbed processes are measured again (each
# another emulated interpreter): the run's own timeout is the bound, not pytest's default 600 s.
@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_core_variants_measured_on_two_arm_boards_and_the_pi4_torch_is_ineligible(arm_farm, tmp_path):
    farm, devices = arm_farm
    inventory = _inventory(tmp_path / "devices.toml", devices)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(tomli_w.dumps(BUDGETS))
    config = tmp_path / "edgebench.toml"
    db = tmp_path / "results.sqlite"
    config.write_text(tomli_w.dumps({
        "preset": "tiny", "variants": CORE, "devices": list(devices), "inventory": str(inventory),
        "budgets": str(budgets), "store": str(db), "out_dir": str(tmp_path / "out"), "protocol": PROTOCOL,
        "run_timeout_s": RUN_TIMEOUT_S - 300,   # the harness gives up (and records it) before the test does
        "microbench_s": 0.1,                    # emulated: the shape shrinks, the repeats stay few
    }))
    env = dict(os.environ, EDGEBENCH_HOME=str(farm.state_dir), PYTHONUNBUFFERED="1")
    health = subprocess.run([sys.executable, "-m", "harness.cli", "devices", "-i", str(inventory), "check"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    print(health.stdout)
    assert health.returncode == 0, health.stderr[-2000:]   # every board has a runtime that runs there
    lines = {line.split()[0]: line for line in health.stdout.splitlines()[1:] if line.strip()}
    assert lines["pi5"].split()[1:6] == ["ok", "aarch64", "3.11.2", "torch", "2.10.0"]
    assert lines["pi4-oldtorch"].split()[1:7] == ["ok", "aarch64", "3.11.2", "torch", "2.0.1", "qnnpack"]
    assert lines["pi4"].split()[1:5] == ["ok", "aarch64", "3.11.2", "onnxruntime"]
    assert "torch: torch cannot run on this CPU" in lines["pi4"] and "died with SIGILL" in lines["pi4"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    print(f"arm run: {time.monotonic() - start:.0f}s, exit {proc.returncode}")
    assert proc.returncode == 2, proc.stderr[-3000:]   # pi4's pairs could not be measured: incomplete

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT id, device, variant, status, error, header_json FROM attempts").fetchall()
    by = {(r["device"], r["variant"]): r for r in rows}
    assert len(by) == 12, [(r["device"], r["variant"], r["status"]) for r in rows]

    for variant in CORE:
        row = by[("pi4", variant)]
        assert row["status"] == "ineligible", dict(row)
        assert ("torch cannot run on this CPU: import torch died with SIGILL (illegal instruction"
                in row["error"])

    expected = {"pi5": ("2.10.0", "Raspberry Pi 5 Model B Rev 1.0", "Cortex-A76 (0x41:0xd0b)"),
                "pi4-oldtorch": ("2.0.1", "Raspberry Pi 4 Model B Rev 1.5", "Cortex-A72 (0x41:0xd08)")}
    for board, (torch_version, model, core) in expected.items():
        for variant in CORE:
            row = by[(board, variant)]
            assert row["status"] == "ok", (board, variant, row["error"], proc.stderr[-2000:])
            header = json.loads(row["header_json"])
            first = header["processes"][0]
            check = first["output_check"]
            print(f"output check {board:13} {variant:17} {check['precision']} engine "
                  f"{check['quantized_engine']}: mel rel rms {check['mel_rel_rms']}, max |diff| "
                  f"{check['mel_max_abs']}, wav max |diff| {check['wav_max_abs']}, durations differ "
                  f"{check['durations_differ']}/{check['phones']}")
            assert check["ok"], (board, variant, check)
            assert check["precision"] == ("int8" if "quantized" in variant else "fp32")
            facts = [json.loads(f["facts_json"]) for f in con.execute(
                "SELECT facts_json FROM facts WHERE attempt_id = ?", (row["id"],))]
            assert facts, (board, variant)
            for f in facts:
                assert f["machine"] == "aarch64" and f["torch"].startswith(torch_version)
                assert f["board_model"] == model and f["cpu_part"] == core
                assert "asimd" in f["cpu_features"]
                assert f["throttled_flags"] == BOARDS[board].throttled.split("=", 1)[1]
            engines = {f["quantized_engine"] for f in facts} - {None}
            if board in ENGINES:
                assert engines == {ENGINES[board]}
                assert header["protocol"]["quantized_engine"] == ENGINES[board]
                assert check["quantized_engine"] == ENGINES[board]
            else:
                assert len(engines) == 1 and engines <= {"qnnpack", "onednn"}
    # each torch board measured its own limits with its own torch (2.10 and 2.0.1), within seconds of
    # emulated time (the large product shrinks); the board whose torch dies measured none
    limits = {r["device"]: json.loads(r["doc_json"]) for r in con.execute("SELECT * FROM microbench")}
    assert set(limits) == {"pi5", "pi4-oldtorch"}, limits
    for board, doc in limits.items():
        assert "error" not in doc and doc["torch"].startswith(expected[board][0]), (board, doc)
        assert doc["matmul_fp32"]["median"] > 0 and doc["dispatch"]["n"] >= 3
        fp32, per_call = doc["matmul_fp32"], doc["dispatch"]["median"]
        print(f"micro-benchmarks {board}: {doc['seconds']:.1f}s, large shape {fp32['shape']}, "
              f"fp32 {fp32['median'] / 1e9:.3f} GMAC/s, {per_call * 1e6:.0f} us/call")
    con.close()


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_the_pi4_whose_torch_dies_measures_the_onnxruntime_variants(arm_farm, tmp_path):
    """The board torch 2.10 cannot run on measures the same weights on onnxruntime (numpy and onnxruntime
    only: the worker never imports torch), and its outputs agree with the x86 controller's ORT run."""
    farm, devices = arm_farm
    inventory = _inventory(tmp_path / "devices.toml", {"pi4": devices["pi4"]})
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(tomli_w.dumps(BUDGETS))
    config = tmp_path / "edgebench.toml"
    db = tmp_path / "results.sqlite"
    config.write_text(tomli_w.dumps({
        "preset": "tiny", "variants": ["original", "quantized"], "runtimes": ["torch", "onnxruntime"],
        "devices": ["pi4"], "inventory": str(inventory), "budgets": str(budgets), "store": str(db),
        "out_dir": str(tmp_path / "out"), "protocol": PROTOCOL, "run_timeout_s": RUN_TIMEOUT_S - 300,
    }))
    env = dict(os.environ, EDGEBENCH_HOME=str(farm.state_dir), PYTHONUNBUFFERED="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--config", str(config), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    print(f"arm onnxruntime run: {time.monotonic() - start:.0f}s, exit {proc.returncode}")
    assert proc.returncode == 2, proc.stderr[-3000:]   # the torch pairs could not be measured
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT id, variant, status, error, header_json FROM attempts").fetchall()
    by = {r["variant"]: r for r in rows}
    for variant in ("original", "quantized"):
        assert by[variant]["status"] == "ineligible" and "SIGILL" in by[variant]["error"], dict(by[variant])
        row = by[f"{variant}@onnxruntime"]
        assert row["status"] == "ok", (variant, row["error"], proc.stderr[-2000:])
        check = json.loads(row["header_json"])["processes"][0]["output_check"]
        print(f"output check pi4 {variant}@onnxruntime {check['precision']}: mel rel rms "
              f"{check['mel_rel_rms']}, max |diff| {check['mel_max_abs']}, wav max |diff| "
              f"{check['wav_max_abs']}, durations differ {check['durations_differ']}/{check['phones']}")
        assert check["ok"] and check["precision"] == ("int8" if variant == "quantized" else "fp32"), check
        (facts,) = [json.loads(f["facts_json"]) for f in con.execute(
            "SELECT facts_json FROM facts WHERE attempt_id = ? AND process = 0 AND phase = 'before'",
            (row["id"],))]
        assert facts["machine"] == "aarch64" and facts["cpu_part"] == "Cortex-A72 (0x41:0xd08)"
        assert facts["onnxruntime"] and facts["ort_providers"] == ["CPUExecutionProvider"]
    con.close()
