"""harness.gate and the gate / compare / history / mos commands on real store files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from records import make_identity, make_manifest, make_record

from harness import gate
from harness.budgets import default_budgets, load_budgets
from harness.cli import main
from harness.store import Store

VARIANTS = ("original", "pruned")


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def add_run(st, *, seed=0, slowdown=None, rss=None, statuses=None, devices=("pi4-a",), manifests=None,
            classes=("short", "medium", "long"), budgets=None):
    """One run; per-variant slowdown / peak RSS / attempt status (None: no attempt at all)."""
    slowdown, rss, statuses = slowdown or {}, rss or {}, statuses or {}
    rid = st.start_run({}, (budgets or default_budgets()).to_dict(), "test", "tiny", list(VARIANTS),
                       list(devices))
    for v in VARIANTS:
        st.record_artifact(rid, v, f"/artifacts/{v}", (manifests or {}).get(v, make_manifest(v)))
        for d in devices:
            status = statuses.get((d, v), "ok")
            if status is None:
                continue
            record = None
            if status in ("ok", "failed"):
                record = make_record(v, samples_per_class=45, seed=seed, slowdown=slowdown.get(v, 1.0),
                                     peak_rss_bytes=rss.get(v, 312_000_000), classes=classes, status=status)
            error = None if status == "ok" else f"{status}: detail"
            st.record_attempt(rid, d, make_identity(d), v, status, error, record)
    st.finish_run(rid, "complete")
    return rid


def judged(st, rid, **kw):
    v = gate.evaluate(st, rid, save=True, device_classes={}, **kw)
    json.dumps(v.to_dict(), allow_nan=False)   # the verdict is plain JSON
    return v


def test_first_run_has_no_baseline_and_passes(st):
    v = judged(st, add_run(st))
    assert v.outcome == "no_baseline" and v.exit_code == 0 and v.outcomes == ["no_baseline"]
    assert v.baselines == {"pi4-a": None}
    assert {c.metric for c in v.checks} == {"acoustic_size_mb", "latency_p90_ms_short", "peak_rss_mib", "mos",
                                            "emotion_id_accuracy"}
    mos = [c for c in v.checks if c.metric == "mos"]
    assert all(c.status == "skipped" for c in mos)    # optional: no MOS imported yet


def test_second_run_passes_against_the_first(st):
    first = add_run(st, seed=0)
    judged(st, first)
    v = judged(st, add_run(st, seed=1))
    assert v.outcome == "pass" and v.exit_code == 0
    assert v.baselines == {"pi4-a": first} and len(v.comparisons) == 6 and not v.regressions


def test_regression_is_exit_1_with_ratio_ci_and_p(st):
    judged(st, add_run(st, seed=0))
    v = judged(st, add_run(st, seed=1, slowdown={"pruned": 1.2}))
    assert v.outcome == "regressed" and v.exit_code == 1
    assert {(r.variant, r.length_class) for r in v.regressions} == {("pruned", c) for c in
                                                                     ("short", "medium", "long")}
    r = v.to_dict()["regressions"][0]
    assert r["ratio"] > 1.05 and r["ci_low"] <= r["ratio"] <= r["ci_high"] and r["p_value"] < 0.01


def test_budget_failure_is_exit_1(st):
    v = judged(st, add_run(st, rss={"pruned": 600 * 2**20}))
    assert v.outcome == "budget_failed" and v.exit_code == 1
    failed = v.failed_checks
    assert [(c.metric, c.variant) for c in failed] == [("peak_rss_mib", "pruned")]
    assert failed[0].value == pytest.approx(600.0) and failed[0].budget == 512.0
    assert "violates" in failed[0].message


def test_budget_failure_and_regression_both_listed(st):
    judged(st, add_run(st, seed=0))
    v = judged(st, add_run(st, seed=1, slowdown={"pruned": 1.2}, rss={"pruned": 600 * 2**20}))
    assert v.outcome == "budget_failed" and v.outcomes == ["budget_failed", "regressed"] and v.exit_code == 1


@pytest.mark.parametrize("status", ["unreachable", "timeout", "failed", None])
def test_could_not_measure_is_exit_2_and_wins(st, status):
    v = judged(st, add_run(st, statuses={("pi4-a", "pruned"): status}, rss={"original": 600 * 2**20}))
    assert v.outcome == "could_not_measure" and v.exit_code == 2
    assert "budget_failed" in v.outcomes
    assert [(u.variant, u.status) for u in v.unmeasured] == [("pruned", status or "missing")]


def test_ineligible_is_reported_not_failed(st):
    v = judged(st, add_run(st, statuses={("pi4-a", "pruned"): "ineligible"}))
    assert v.exit_code == 0 and [u.variant for u in v.ineligible] == ["pruned"] and not v.unmeasured


def test_budgeted_metric_without_a_value_could_not_be_measured(tmp_path, st):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[budgets]\nlatency_p90_ms_long = 5000\n")
    v = judged(st, add_run(st, classes=("short",)), budgets=load_budgets(path))
    missing = [c for c in v.checks if c.status == "not_measured"]
    assert {c.metric for c in missing} == {"latency_p90_ms_long"} and v.exit_code == 2


def test_mos_and_emotion_budgets(st):
    manifests = {"pruned": make_manifest("pruned", emotion_id_accuracy=0.8)}
    st.import_mos([{"variant": "original", "mos": 4.1}, {"variant": "pruned", "mos": 3.5}])
    v = judged(st, add_run(st, manifests=manifests))
    failed = {(c.metric, c.variant) for c in v.failed_checks}
    assert failed == {("mos", "pruned"), ("emotion_id_accuracy", "pruned")}


def test_class_and_variant_overrides_apply(tmp_path, st):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[class.pi4]\npeak_rss_mib = 200\n[variant.pruned]\npeak_rss_mib = 400\n")
    rid = add_run(st)
    v = gate.evaluate(st, rid, load_budgets(path), device_classes={"pi4-a": "pi4"})
    rss = {c.variant: (c.budget, c.status) for c in v.checks if c.metric == "peak_rss_mib"}
    assert rss == {"original": (200.0, "fail"), "pruned": (400.0, "pass")}
    assert all(c.device_class == "pi4" for c in v.checks)


def test_stored_budgets_are_used_by_default(tmp_path, st):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[budgets]\npeak_rss_mib = 100\n")
    v = gate.evaluate(st, add_run(st, budgets=load_budgets(path)), device_classes={}, save=False)
    assert v.outcome == "budget_failed"
    assert st.verdict(v.run_id) is None   # save=False: a dry run


def test_evaluate_saves_the_verdict_by_default(st):
    rid = add_run(st)
    v = gate.evaluate(st, rid, device_classes={})
    assert st.verdict(rid) == json.loads(json.dumps(v.to_dict()))


def test_junit_xml_parses_back(tmp_path, st):
    judged(st, add_run(st, seed=0, devices=("pi4-a", "pi4-b")))
    rid = add_run(st, seed=1, slowdown={"pruned": 1.2}, rss={"original": 600 * 2**20},
                  statuses={("pi4-b", "pruned"): "unreachable"}, devices=("pi4-a", "pi4-b"))
    v = judged(st, rid)
    path = gate.write_junit(v, tmp_path / "out" / "gate.xml")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == len(v.checks) + len(v.comparisons) + 1
    failures = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    assert int(suite.get("failures")) == len(failures) == len(v.failed_checks) + len(v.regressions)
    assert int(suite.get("errors")) == len(errors) == 1
    assert errors[0].get("classname") == "measure.pi4-b"
    assert "unreachable" in errors[0].find("error").get("message")
    rss = [c for c in failures if c.get("name") == "peak_rss_mib"]
    assert rss and "512" in rss[0].find("failure").get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["outcome"] == "could_not_measure" and props["exit_code"] == "2"


# ------------------------------------------------------------------------------------------- commands


def run_cli(*args, cwd, home):
    env = dict(os.environ, EDGEBENCH_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_gate_command_in_a_subprocess(tmp_path):
    home = tmp_path / "home"
    with Store(home / "results.sqlite") as s:
        first = add_run(s, seed=0)
        second = add_run(s, seed=1, slowdown={"pruned": 1.2})
    out = run_cli("gate", "--run", first, "--json", cwd=tmp_path, home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outcome"] == "no_baseline"
    out = run_cli("gate", "--junit", str(tmp_path / "j.xml"), cwd=tmp_path, home=home)  # latest run
    assert out.returncode == 1, out.stderr
    assert "regressed" in out.stdout
    ET.parse(tmp_path / "j.xml")
    with Store(home / "results.sqlite") as s:
        assert s.verdict(second)["outcome"] == "regressed"


def test_gate_command_exit_2_and_bad_budgets(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    with Store(store) as s:
        rid = add_run(s, statuses={("pi4-a", "pruned"): "timeout"})
    assert main(["gate", "--store", str(store), "--run", rid, "--json"]) == 2
    bad = tmp_path / "budgets.toml"
    bad.write_text("version = 1\n[budgets]\nspeed = 3\n")
    capsys.readouterr()
    assert main(["gate", "--store", str(store), "--budgets", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgebench: error: ") and "budgets.speed" in err
    assert main(["gate", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert main(["gate", "--store", str(store), "--run", "nope"]) == 2


def test_compare_and_history_json(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    with Store(store) as s:
        a = add_run(s, seed=0)
        b = add_run(s, seed=1, slowdown={"pruned": 1.2})
    assert main(["compare", b, a, "--store", str(store), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    verdicts = {(c["variant"], c["length_class"]): c["verdict"] for c in data["comparisons"]}
    assert verdicts[("pruned", "short")] == "regressed" and verdicts[("original", "short")] == "unchanged"
    assert main(["compare", b, a, "--store", str(store)]) == 0
    assert "regressed" in capsys.readouterr().out
    assert main(["history", "--store", str(store), "--variant", "pruned", "--limit", "1", "--json"]) == 0
    hist = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in hist["runs"]] == [b]
    assert {(r["variant"], r["length_class"]) for r in hist["rows"]} == {("pruned", c) for c in
                                                                          ("short", "medium", "long")}
    assert all(r["n"] == 45 and r["p90_ms"] >= r["p50_ms"] for r in hist["rows"])
    assert main(["history", "--store", str(store)]) == 0
    assert b in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("variant,mos\noriginal,4.0\npruned,great\n", "line 3, column mos"),
        ("variant,mos\noriginal,7\n", "line 2, column mos"),
        ("variant,mos,n_listeners\noriginal,4.0,0\n", "line 2, column n_listeners"),
        ("variant,mos\n,4.0\n", "line 2, column variant"),
        ("variant,score\noriginal,4.0\n", "line 1, column score"),
        ("variant\noriginal\n", "line 1"),
        ("variant,mos\noriginal,4.0,3\n", "line 2"),
        ("variant,mos\n", "no scores"),
        ("variant,mos\npruned_quantized,4.0\n", "column variant: unknown variant 'pruned_quantized'"),
    ],
)
def test_mos_import_rejects_bad_rows_and_writes_nothing(tmp_path, capsys, text, where):
    store = tmp_path / "r.sqlite"
    csv = tmp_path / "scores.csv"
    csv.write_text(text, encoding="utf-8")
    assert main(["mos", "import", str(csv), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgebench: error: {csv}") and where in err
    with Store(store) as s:
        assert s.mos_df().empty


def test_mos_import_and_list(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    csv = tmp_path / "scores.csv"
    csv.write_text("variant,mos,n_listeners\noriginal,4.1,20\npruned+quantized,3.9,\n", encoding="utf-8")
    assert main(["mos", "import", str(csv), "--store", str(store), "--source", "panel-1"]) == 0
    assert "imported 2" in capsys.readouterr().out
    assert main(["mos", "list", "--store", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["variant"], r["mos"], r["n"], r["source"]) for r in rows] == [
        ("original", 4.1, 20, "panel-1"), ("pruned+quantized", 3.9, None, "panel-1")]


def test_throttled_measurement_is_a_warning(st):
    rid = st.start_run({}, default_budgets().to_dict(), "test", "tiny", ["original"], ["pi4-a"])
    st.record_artifact(rid, "original", "/artifacts/original", make_manifest("original"))
    st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None,
                      make_record(samples_per_class=30, throttled=True))
    v = gate.evaluate(st, rid, device_classes={})
    assert any("throttled" in w for w in v.warnings) and v.exit_code == 0
