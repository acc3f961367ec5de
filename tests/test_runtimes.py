"""The runtime axis: every variant measured on torch and on ONNX Runtime in one run, side by side.

* The tiny preset's core variants on both runtimes on the local device, through the real CLI: eight pairs,
  interleaved, the onnxruntime ones with their output check against the controller's own ORT run, the
  report showing both runtimes and the torch/ORT agreement recorded at build time.
* A loopback sshd device whose Python has numpy and onnxruntime but no torch: its onnxruntime pairs are
  measured, its torch pairs are ineligible with the reason, and ``devices check`` says which runtimes it has.
* The logic around it (names, configuration, budgets, per-runtime eligibility) with plain values.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from conftest import require_service

from devices.health import judge, runtime_problems
from harness.budgets import parse_budgets
from harness.config import parse_config
from harness.errors import ConfigError
from variants.runtimes import measured_name, measured_names, split_measured

ROOT = Path(__file__).resolve().parents[1]
CORE = ["original", "pruned", "quantized", "pruned+quantized"]
QUICK_PROTOCOL = {"threads": 1, "processes": 1, "warmup": 1, "min_iters": 3, "min_seconds": 0.0,
                  "max_iters": 20, "sentences": ["short"], "timeout_s": 300}
GENEROUS_BUDGETS = {"version": 1, "budgets": {"latency_p90_ms_short": 600000, "peak_rss_mib": 16384,
                                                "emotion_id_accuracy": 0.0}}
RUN_TIMEOUT_S = 1200


# ------------------------------------------------------------------------------------------ logic


def test_measured_names_round_trip():
    assert measured_name("quantized") == "quantized"
    assert measured_name("pruned+quantized", "onnxruntime") == "pruned+quantized@onnxruntime"
    assert split_measured("pruned+quantized@onnxruntime") == ("pruned+quantized", "onnxruntime")
    assert split_measured("original") == ("original", "torch")
    both = measured_names(["a", "b"], ["torch", "onnxruntime"])
    assert both == ["a", "b", "a@onnxruntime", "b@onnxruntime"]
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        measured_name("a", "tflite")


def test_config_runtimes_are_checked_naming_the_key(tmp_path):
    cfg = parse_config({"runtimes": ["torch", "onnxruntime"]}, "edgebench.toml", base_dir=tmp_path)
    assert cfg.runtimes == ("torch", "onnxruntime")
    assert parse_config(cfg.to_dict(), "stored", base_dir=tmp_path).runtimes == cfg.runtimes
    assert parse_config({}, "edgebench.toml", base_dir=tmp_path).runtimes == ("torch",)
    with pytest.raises(ConfigError, match=r"edgebench.toml: runtimes\[1\]: unknown runtime 'tflite'"):
        parse_config({"runtimes": ["torch", "tflite"]}, "edgebench.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="runtimes: a runtime is listed twice"):
        parse_config({"runtimes": ["torch", "torch"]}, "edgebench.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="protocol"):
        parse_config({"protocol": {"ort_graph_optimization": "max"}}, "edgebench.toml", base_dir=tmp_path)


def test_a_variant_budget_applies_on_every_runtime_unless_the_runtime_has_its_own():
    budgets = parse_budgets({"version": 1, "variant": {"pruned": {"latency_p90_ms_short": 700},
                                                       "pruned@onnxruntime": {"peak_rss_mib": 300}}},
                            "budgets.toml")
    assert budgets.limit("latency_p90_ms_short", variant="pruned@onnxruntime") == 700
    assert budgets.limit("peak_rss_mib", variant="pruned@onnxruntime") == 300
    assert budgets.limit("peak_rss_mib", variant="pruned") == 512  # the default: the ORT table is its own
    assert budgets.limit("latency_p90_ms_short", variant="quantized@onnxruntime") == 800


GOOD = {"python": "3.11.2", "torch": "2.10.0", "quantized_engine": "qnnpack",
        "quantized_engines": ["qnnpack"], "onnxruntime": "1.31.1", "ort_providers": ["CPUExecutionProvider"],
        "disk_free_bytes": 10**10, "mem_available_bytes": 4 * 1024**3, "temp_c": 50.0}


def test_a_device_is_eligible_with_one_runtime_and_each_pair_is_judged_by_its_own():
    no_torch = {**GOOD, "torch": None, "torch_error": "ModuleNotFoundError: No module named 'torch'"}
    assert judge(no_torch, runtimes=("torch", "onnxruntime"))[0] is None
    problems = runtime_problems(no_torch)
    assert problems["onnxruntime"] is None and problems["torch"].startswith("torch not importable")
    reason, _ = judge(no_torch, runtimes=("torch",))
    assert reason.startswith("torch not importable")
    no_ort = {**GOOD, "onnxruntime": None, "onnxruntime_error": "No module named 'onnxruntime'"}
    expected = "onnxruntime not importable (No module named 'onnxruntime')"
    assert runtime_problems(no_ort)["onnxruntime"] == expected
    neither = {**no_torch, "onnxruntime": None}
    reason, _ = judge(neither, runtimes=("torch", "onnxruntime"))
    assert "torch not importable" in reason and "onnxruntime not importable" in reason
    assert runtime_problems({**GOOD, "onnxruntime": "1.10.0"})["onnxruntime"] == "onnxruntime 1.10.0 < 1.14"


# ------------------------------------------------------------------------------------------ end to end


def _cli(args, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def _rows(db: Path, sql: str) -> list:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _facts(db: Path, attempt_id: int) -> dict:
    """The device facts the first process of an attempt reported before it ran."""
    (row,) = _rows(db, f"SELECT facts_json FROM facts WHERE attempt_id = {int(attempt_id)} AND process = 0 "
                       "AND phase = 'before'")
    return json.loads(row["facts_json"])


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_core_variants_on_both_runtimes_in_one_run_on_the_local_device(tmp_path):
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(tomli_w.dumps(GENEROUS_BUDGETS))
    config = tmp_path / "edgebench.toml"
    config.write_text(tomli_w.dumps({
        "preset": "tiny", "variants": CORE, "runtimes": ["torch", "onnxruntime"], "devices": ["local"],
        "budgets": str(budgets), "store": str(tmp_path / "results.sqlite"), "out_dir": str(tmp_path / "out"),
        "protocol": QUICK_PROTOCOL,
    }))
    proc = _cli(["run", "--config", str(config), "--json"], tmp_path / "home", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    db = tmp_path / "results.sqlite"
    rows = _rows(db, "SELECT id, variant, status, error, header_json FROM attempts ORDER BY id")
    expected = {*CORE, *(f"{v}@onnxruntime" for v in CORE)}
    assert {r["variant"] for r in rows} == expected and all(r["status"] == "ok" for r in rows), \
        [(r["variant"], r["status"], r["error"]) for r in rows]
    # interleaved: the two runtimes' pairs alternate in the measuring order, not one runtime after the other
    order = [split_measured(r["variant"])[1] for r in rows]
    assert order != sorted(order) and order != sorted(order, reverse=True)

    for r in rows:
        header = json.loads(r["header_json"])
        proc0 = header["processes"][0]
        check = proc0["output_check"]
        assert check["ok"], (r["variant"], check)
        facts = _facts(db, r["id"])
        if r["variant"].endswith("@onnxruntime"):
            assert facts["onnxruntime"] and facts["ort_providers"] == ["CPUExecutionProvider"]
            assert check["precision"] == ("int8" if "quantized" in r["variant"] else "fp32")
            assert header["protocol"]["ort_graph_optimization"] == "all"
        else:
            assert facts["torch"] and check["quantized_engine"]

    artifacts = {r["variant"]: json.loads(r["manifest_json"])
                 for r in _rows(db, "SELECT variant, manifest_json FROM artifacts")}
    for v in CORE:
        manifest = artifacts[f"{v}@onnxruntime"]
        assert manifest["runtime"] == "onnxruntime" and all(n.endswith((".onnx", ".json"))
                                                              for n in manifest["files"])
        agreement = manifest["onnx_agreement"]
        limit = 0.1 if "quantized" in v else 1e-4
        assert agreement["n"] >= 1 and agreement["mel_rel_rms"] <= limit, (v, agreement)
        assert manifest["parent"] == artifacts["original" if v == "quantized" else
                                               "pruned" if v == "pruned+quantized" else v]["content_hash"]

    report = Path(out["report"]).read_text(encoding="utf-8")
    assert report.count('<span class="tag runtime">onnxruntime</span>') == len(CORE)
    assert 'class="simple runtime-agreement"' in report and "quantized@onnxruntime" in report
    table = list(csv.DictReader(io.StringIO((Path(out["report"]).parent / "comparison.csv").read_text())))
    assert sorted(r["runtime"] for r in table) == ["onnxruntime"] * 4 + ["torch"] * 4
    ort_row = next(r for r in table if r["variant"] == "original@onnxruntime")
    assert float(ort_row["latency_short_p90_s_speedup_x"]) > 0  # a ratio against torch original

    # A budget for one variant on one runtime: only that pair fails at the gate.
    strict = tmp_path / "strict.toml"
    strict.write_text(tomli_w.dumps({**GENEROUS_BUDGETS,
                                     "variant": {"pruned@onnxruntime": {"acoustic_size_mb": 0.001}}}))
    gate = _cli(["gate", "--store", str(db), "--budgets", str(strict), "--json"], tmp_path / "home", tmp_path)
    assert gate.returncode == 1, gate.stderr[-2000:]
    failed = {(c["variant"], c["metric"]) for c in json.loads(gate.stdout)["checks"] if c["status"] == "fail"}
    assert failed == {("pruned@onnxruntime", "size_acoustic_bytes")}, failed


def _ort_only_python() -> str | None:
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "ort-only-python"), "--check"], capture_output=True,
                          text=True, timeout=60)
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_a_board_without_torch_measures_the_onnxruntime_variants(ssh_farm, tmp_path):
    python = _ort_only_python()
    require_service(python is not None, "a torch-free Python with numpy and onnxruntime "
                                        "(.ci/ort-only-python makes it)")
    farm = ssh_farm
    farm.add("no-torch", trusted=True)
    inventory = tmp_path / "devices.toml"
    inventory.write_text(farm.inventory_toml(names=["no-torch"]).replace(
        f'python = "{sys.executable}"', f'python = "{python}"'))
    assert python in inventory.read_text()
    home = farm.state_dir
    check = _cli(["devices", "--inventory", str(inventory), "check", "no-torch", "--json"], home, tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    (health,) = json.loads(check.stdout)
    assert health["ok"] and health["runtimes"]["onnxruntime"] is None
    assert health["runtimes"]["torch"].startswith("torch not importable")
    table = _cli(["devices", "--inventory", str(inventory), "check", "no-torch"], home, tmp_path)
    line = next(x for x in table.stdout.splitlines() if x.startswith("no-torch"))
    assert " onnxruntime " in line and "torch not importable" in line

    budgets = tmp_path / "budgets.toml"
    budgets.write_text(tomli_w.dumps(GENEROUS_BUDGETS))
    config = tmp_path / "edgebench.toml"
    config.write_text(tomli_w.dumps({
        "preset": "tiny", "variants": ["original", "quantized"], "runtimes": ["torch", "onnxruntime"],
        "devices": ["no-torch"], "inventory": str(inventory), "budgets": str(budgets),
        "store": str(tmp_path / "results.sqlite"), "out_dir": str(tmp_path / "out"),
        "protocol": QUICK_PROTOCOL,
    }))
    proc = _cli(["run", "--config", str(config), "--json"], home, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]  # the torch pairs could not be measured
    rows = {r["variant"]: r for r in _rows(tmp_path / "results.sqlite",
                                           "SELECT id, variant, status, error, header_json FROM attempts")}
    for v in ("original", "quantized"):
        assert rows[v]["status"] == "ineligible" and "torch not importable" in rows[v]["error"], dict(rows[v])
        ort = rows[f"{v}@onnxruntime"]
        assert ort["status"] == "ok", (ort["error"], proc.stderr[-2000:])
        header = json.loads(ort["header_json"])
        facts = _facts(tmp_path / "results.sqlite", ort["id"])
        assert facts["torch"] is None and facts["onnxruntime"]
        assert header["processes"][0]["output_check"]["ok"]
