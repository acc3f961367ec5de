"""Device drift told apart from a model regression on real runs: the local device, pinned to one CPU, is
measured twice; in the second run its throughput is halved (tests/cpucap.py stops its processes half of
every 10 ms, the way a CPU quota or a cycling throttle caps a board). Every variant slows about 2x, and so
do the device's own micro-benchmarks: the gate attributes the slowdown to the device, with the evidence.
(The single variant slower on two devices, attributed to the model, is tests/test_attribution.py.)"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import tomli_w

from harness.attribution import DEVICE_DRIFT
from harness.pipeline import RunRequest, execute
from harness.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, inventory: Path) -> Path:
    config = tmp_path / f"{inventory.stem}.edgebench.toml"
    config.write_text(tomli_w.dumps({
        "preset": "tiny", "variants": ["original", "quantized"], "devices": ["local"],
        "inventory": str(inventory), "store": str(tmp_path / "results.sqlite"),
        "out_dir": str(tmp_path / "out"),
        "microbench_s": 0.3, "microbench_max_age_s": 0,
        "protocol": {"threads": 1, "processes": 2, "warmup": 1, "min_iters": 7, "min_seconds": 0.3,
                     "max_iters": 40, "sentences": ["short"], "timeout_s": 600},
    }))
    return config


def test_a_board_whose_throughput_halved_is_device_drift_not_a_model_regression(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBENCH_HOME", str(tmp_path / "state"))
    plain = tmp_path / "plain.toml"
    plain.write_text(tomli_w.dumps({"devices": {"local": {"cpus": 1}}}))
    capped_python = tmp_path / "capped-python"
    capped_python.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'cpucap.py'} 0.5 0.01 "
                             f"{sys.executable} \"$@\"\n")
    capped_python.chmod(capped_python.stat().st_mode | stat.S_IXUSR)
    capped = tmp_path / "capped.toml"
    capped.write_text(tomli_w.dumps({"devices": {"local": {"cpus": 1, "python": str(capped_python)}}}))

    first = execute(RunRequest(config_path=_config(tmp_path, plain), report=False), show_progress=False)
    assert first.complete and first.verdict.outcome in ("no_baseline", "budget_failed")
    second = execute(RunRequest(config_path=_config(tmp_path, capped), report=False), show_progress=False)
    assert second.complete

    with Store(tmp_path / "results.sqlite") as store:
        limits = {rid: store.microbench(rid)["local"] for rid in (first.run_id, second.run_id)}
    assert all(row["reused_from"] is None and "error" not in row["doc"] for row in limits.values())
    before, after = (limits[r]["doc"]["matmul_fp32"]["sustained"] for r in (first.run_id, second.run_id))
    assert 1.5 < before / after < 3.0, (before, after)          # the board's own products: about half

    slower = [c for c in second.verdict.comparisons if c.attribution is not None]
    assert {c.variant for c in slower} == {"original", "quantized"}, second.verdict.comparisons
    assert {c.attribution for c in slower} == {DEVICE_DRIFT}
    assert all("own micro-benchmarks moved" in c.attribution_evidence for c in slower)
    # the first run explained: tiny's acoustic model makes thousands of tiny calls; the report says so
    from harness import explain
    from harness.roofline import DISPATCH
    from reports.render import render_run

    with Store(tmp_path / "results.sqlite") as store:
        exp = explain.explain(store, first.run_id)
        html = render_run(store, first.run_id, tmp_path / "report").read_text()
    assert exp.missing == [] and len(exp.phases) == 4
    assert exp.of("local", "original", "acoustic").placement.bound == DISPATCH
    assert "Why these times" in html and "Roofline of local" in html and "dispatch-bound" in html
    with Store(tmp_path / "results.sqlite") as store:
        html = render_run(store, second.run_id, tmp_path / "report2").read_text()
    assert "board or model?" in html and "device drift</b>: local&#39;s own micro-benchmarks moved" in html
    # the gate's exit rules are unchanged: a slowdown is still a failure (or, where the interference probe
    # saw the worker lose its CPU, "disturbed": measure again)
    assert second.verdict.outcome in ("regressed", "disturbed") and second.verdict.exit_code in (1, 2)
