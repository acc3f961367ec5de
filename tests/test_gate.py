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


def disturb(record, reason="other processes had 40 % of the CPU"):
    """A record whose first process was disturbed and never measured clean again (the store's flags)."""
    record["disturbed"] = True
    record["processes"][0].update(disturbed=True, disturbed_reason=reason)
    return record


def add_run(st, *, seed=0, slowdown=None, rss=None, statuses=None, devices=("pi4-a",), manifests=None,
            classes=("short", "medium", "long"), budgets=None, disturbed=(), budget_class=None, config=None,
            device_slowdown=None):
    """One run; per-variant slowdown / peak RSS / attempt status (None: no attempt at all) / disturbed;
    ``device_slowdown``: a further factor per device (every variant on it).

    ``budget_class``: stored in every attempt's identity (as the orchestrator records it); None: the
    identity has no ``budget_class`` key (a run stored before classes were recorded).
    """
    slowdown, rss, statuses = slowdown or {}, rss or {}, statuses or {}
    rid = st.start_run(config or {}, (budgets or default_budgets()).to_dict(), "test", "tiny", list(VARIANTS),
                       list(devices))
    for v in VARIANTS:
        st.record_artifact(rid, v, f"/artifacts/{v}", (manifests or {}).get(v, make_manifest(v)))
        for d in devices:
            status = statuses.get((d, v), "ok")
            if status is None:
                continue
            record = None
            if status in ("ok", "failed"):
                factor = slowdown.get(v, 1.0) * (device_slowdown or {}).get(d, 1.0)
                record = make_record(v, samples_per_class=45, seed=seed, slowdown=factor,
                                     peak_rss_bytes=rss.get(v, 312_000_000), classes=classes, status=status)
                if v in disturbed:
                    disturb(record)
            error = None if status == "ok" else f"{status}: detail"
            identity = make_identity(d)
            if budget_class is not None:
                identity["budget_class"] = budget_class
            st.record_attempt(rid, d, identity, v, status, error, record)
    st.finish_run(rid, "complete")
    return rid


def judged(st, rid, **kw):
    v = gate.evaluate(st, rid, save=True, **kw)
    json.dumps(v.to_dict(), allow_nan=False)   # the verdict is plain JSON
    assert gate.stored_verdict(st, rid) == v   # and reads back as the same value
    return v


def test_first_run_has_no_baseline_and_passes(st):
    v = judged(st, add_run(st))
    assert v.outcome == "no_baseline" and v.exit_code == 0 and v.outcomes == ("no_baseline",)
    assert v.baselines == {"pi4-a": None}
    assert {c.metric for c in v.checks} == {"size_acoustic_bytes", "latency_short_p90_s", "peak_rss_bytes",
                                            "mos", "emotion_id_accuracy"}
    assert {c["budget_key"] for c in v.to_dict()["checks"]} == {
        "acoustic_size_mb", "latency_p90_ms_short", "peak_rss_mib", "mos", "emotion_id_accuracy"}
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
    assert [(c.metric, c.variant) for c in failed] == [("peak_rss_bytes", "pruned")]
    assert failed[0].value == pytest.approx(600 * 2**20) and failed[0].limit == 512 * 2**20
    assert "peak_rss_mib = 600 MiB" in failed[0].message and "violates budget <= 512 MiB" in failed[0].message


def test_budget_failure_and_regression_both_listed(st):
    judged(st, add_run(st, seed=0))
    v = judged(st, add_run(st, seed=1, slowdown={"pruned": 1.2}, rss={"pruned": 600 * 2**20}))
    assert v.outcome == "budget_failed" and v.outcomes == ("budget_failed", "regressed") and v.exit_code == 1


@pytest.mark.parametrize("status", ["unreachable", "timeout", "failed", None])
def test_could_not_measure_is_exit_2_and_wins(st, status):
    v = judged(st, add_run(st, statuses={("pi4-a", "pruned"): status}, rss={"original": 600 * 2**20}))
    assert v.outcome == "could_not_measure" and v.exit_code == 2
    assert "budget_failed" in v.outcomes
    assert [(u.variant, u.status) for u in v.unmeasured] == [("pruned", status or "missing")]


def test_an_ineligible_pair_could_not_be_measured(st):
    v = judged(st, add_run(st, statuses={("pi4-a", "pruned"): "ineligible"}))
    assert v.outcome == "could_not_measure" and v.exit_code == 2
    assert [(u.variant, u.status, u.allowed) for u in v.unmeasured] == [("pruned", "ineligible", False)]


@pytest.mark.parametrize("status", ["ineligible", "unreachable", None])
def test_allow_unmeasured_lists_the_pair_as_a_warning_and_the_rest_decides(st, status):
    rid = add_run(st, statuses={("pi4-a", "pruned"): status})
    v = judged(st, rid, allow_unmeasured=True)
    assert v.outcome == "no_baseline" and v.exit_code == 0 and v.allow_unmeasured
    assert [(u.variant, u.allowed) for u in v.unmeasured] == [("pruned", True)]
    assert any("pi4-a/pruned was not measured" in w and "--allow-unmeasured" in w for w in v.warnings)
    assert {c.variant for c in v.checks} == {"original"}
    v = judged(st, add_run(st, statuses={("pi4-a", "pruned"): status}, rss={"original": 600 * 2**20}),
               allow_unmeasured=True)
    assert v.outcome == "budget_failed" and v.exit_code == 1   # the measured pair still decides


def test_a_run_whose_only_device_is_ineligible_exits_2_even_when_unmeasured_pairs_are_allowed(st):
    statuses = {("pi4-a", v): "ineligible" for v in VARIANTS}
    rid = add_run(st, statuses=statuses)
    assert judged(st, rid).exit_code == 2
    v = judged(st, rid, allow_unmeasured=True)
    assert v.outcome == "could_not_measure" and v.exit_code == 2 and not v.checks
    assert not any(u.allowed for u in v.unmeasured)
    assert any("nothing was measured" in w for w in v.warnings)
    assert v.causes()[0].outcome == "could_not_measure"


def test_a_failed_timing_budget_on_disturbed_data_is_disturbed_not_budget_failed(st):
    rid = add_run(st, slowdown={"pruned": 5.0}, disturbed={"pruned"})
    v = judged(st, rid)
    assert v.outcome == "disturbed" and v.exit_code == 2 and v.outcomes == ("disturbed", "no_baseline")
    status = {c.metric: c.status for c in v.checks if c.variant == "pruned"}
    assert status["latency_short_p90_s"] == "disturbed"
    assert status["size_acoustic_bytes"] == "pass"   # size does not depend on the device's load
    (p90,) = [c for c in v.disturbed_checks if c.metric == "latency_short_p90_s"]
    assert "40 % of the CPU" in p90.disturbed and "measure it again" in p90.message
    assert not v.failed_checks
    assert [(d.device, d.variant) for d in v.disturbances] == [("pi4-a", "pruned")]
    assert {c.outcome for c in v.causes()} == {"disturbed", "no_baseline"}


def test_a_passed_budget_on_disturbed_data_stays_a_pass_and_is_noted(st):
    v = judged(st, add_run(st, disturbed={"pruned"}))
    assert v.outcome == "no_baseline" and v.exit_code == 0
    p90 = v.check("pi4-a", "pruned", "latency_short_p90_s")
    assert p90.status == "pass" and "40 % of the CPU" in p90.disturbed
    assert "measured while disturbed" in p90.message
    assert v.check("pi4-a", "pruned", "size_acoustic_bytes").disturbed is None
    assert any("pi4-a/pruned: measured while disturbed" in w for w in v.warnings)


def test_size_and_quality_failures_on_disturbed_data_still_fail(st):
    manifests = {"pruned": make_manifest("pruned", acoustic_bytes=150_000_000, emotion_id_accuracy=0.5)}
    v = judged(st, add_run(st, manifests=manifests, disturbed={"pruned"}))
    assert v.outcome == "budget_failed" and v.exit_code == 1
    assert {c.metric for c in v.failed_checks} == {"size_acoustic_bytes", "emotion_id_accuracy"}


def test_a_regression_on_disturbed_data_is_disturbed(st):
    judged(st, add_run(st, seed=0))
    v = judged(st, add_run(st, seed=1, slowdown={"pruned": 1.2}, disturbed={"pruned"}))
    assert v.outcome == "disturbed" and v.exit_code == 2 and "regressed" not in v.outcomes
    assert not v.regressions
    slower = [c for c in v.comparisons if c.variant == "pruned"]
    assert {c.verdict for c in slower} == {"disturbed"}
    assert all(c.disturbed.startswith("this run: ") for c in slower)


def test_a_regression_against_a_disturbed_baseline_is_disturbed(st):
    """A run whose data stayed disturbed passes (interference only slows down), but the automatic
    baseline skips it: a slow baseline would hide a regression. Against one named explicitly, a
    regression is "disturbed", never "regressed"."""
    clean = add_run(st, seed=2)
    assert judged(st, clean).exit_code == 0
    first = add_run(st, seed=0, disturbed={"pruned"})
    assert judged(st, first).exit_code == 0   # a pass on disturbed data
    slow = add_run(st, seed=1, slowdown={"pruned": 1.2})
    v = judged(st, slow)
    assert v.baselines == {"pi4-a": clean}  # not the disturbed run in between
    assert v.outcome == "regressed"
    v = gate.evaluate(st, slow, baseline=first, save=False)
    assert v.outcome == "disturbed" and not v.regressions
    slower = [c for c in v.comparisons if c.variant == "pruned"]
    assert slower and all(c.disturbed.startswith(f"baseline run {first}: ") for c in slower)
    assert [(d.run_id, d.variant) for d in v.disturbances] == [(first, "pruned")]


def test_disturbed_checks_and_comparisons_are_their_own_junit_type(tmp_path, st):
    judged(st, add_run(st, seed=0))
    v = judged(st, add_run(st, seed=1, slowdown={"pruned": 5.0}, disturbed={"pruned", "original"}))
    root = ET.fromstring(gate.junit_xml(v))
    errors = [e for case in root.iter("testcase") for e in case.findall("error")]
    assert errors and {e.get("type") for e in errors} == {"disturbed"}
    assert not list(root.iter("failure"))
    noted = [case for case in root.iter("testcase") if case.find("system-out") is not None]
    assert noted and all("measured while disturbed" in case.find("system-out").text for case in noted)
    props = {p.get("name"): p.get("value") for p in root.find("testsuite").find("properties")}
    assert (props["outcome"], props["exit_code"]) == ("disturbed", "2")


def test_budgeted_metric_without_a_value_could_not_be_measured(tmp_path, st):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[budgets]\nlatency_p90_ms_long = 5000\n")
    v = judged(st, add_run(st, classes=("short",)), budgets=load_budgets(path))
    missing = [c for c in v.checks if c.status == "not_measured"]
    assert {c.metric for c in missing} == {"latency_long_p90_s"} and v.exit_code == 2


def test_mos_and_emotion_budgets(st):
    manifests = {"pruned": make_manifest("pruned", emotion_id_accuracy=0.8)}
    st.import_mos([{"variant": "original", "mos": 4.1}, {"variant": "pruned", "mos": 3.5}])
    v = judged(st, add_run(st, manifests=manifests))
    failed = {(c.metric, c.variant) for c in v.failed_checks}
    assert failed == {("mos", "pruned"), ("emotion_id_accuracy", "pruned")}


def _class_budgets(tmp_path):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[class.pi4]\npeak_rss_mib = 200\n[variant.pruned]\npeak_rss_mib = 400\n")
    return load_budgets(path)


def _rss_limits(v):
    return {c.variant: (c.limit / 2**20, c.status) for c in v.checks if c.metric == "peak_rss_bytes"}


def test_class_and_variant_overrides_apply_with_the_class_stored_with_the_run(tmp_path, st):
    rid = add_run(st, budget_class="pi4")
    v = gate.evaluate(st, rid, _class_budgets(tmp_path), device_classes={"pi4-a": "n100"})
    assert _rss_limits(v) == {"original": (200.0, "fail"), "pruned": (400.0, "pass")}
    assert all(c.device_class == "pi4" for c in v.checks)   # the stored class wins over a mapping
    assert v.device_classes == {"pi4-a": "pi4"}


def test_budget_classes_never_come_from_the_current_inventory(tmp_path, st, monkeypatch):
    """A run stored without classes: an explicit mapping, else the inventory its configuration names."""
    monkeypatch.chdir(tmp_path)
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    (tmp_path / "devices.toml").write_text(   # today's inventory in the working directory: never read
        f'[devices.pi4-a]\nhost = "10.0.0.1"\nuser = "pi"\nkey_file = "{key}"\nbudget_class = "pi4"\n')
    v = gate.evaluate(st, add_run(st), _class_budgets(tmp_path), save=False)
    assert _rss_limits(v) == {"original": (512.0, "pass"), "pruned": (400.0, "pass")}
    assert any("no budget class stored" in w for w in v.warnings)
    v = gate.evaluate(st, add_run(st), _class_budgets(tmp_path), device_classes={"pi4-a": "pi4"}, save=False)
    assert _rss_limits(v)["original"] == (200.0, "fail")
    rid = add_run(st, config={"inventory": str(tmp_path / "devices.toml")})
    v = gate.evaluate(st, rid, _class_budgets(tmp_path), save=False)
    assert _rss_limits(v)["original"] == (200.0, "fail")
    assert any("read from" in w and "devices.toml" in w for w in v.warnings)


def test_stored_budgets_are_used_by_default(tmp_path, st):
    path = tmp_path / "budgets.toml"
    path.write_text("version = 1\n[budgets]\npeak_rss_mib = 100\n")
    v = gate.evaluate(st, add_run(st, budgets=load_budgets(path)), save=False)
    assert v.outcome == "budget_failed"
    assert st.verdict(v.run_id) is None   # save=False: a dry run


def test_evaluate_saves_the_verdict_by_default(st):
    rid = add_run(st)
    v = gate.evaluate(st, rid)
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


def test_gate_command_allow_unmeasured_and_disturbed_json(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    with Store(store) as s:
        rid = add_run(s, statuses={("pi4-a", "pruned"): "ineligible"})
        only = add_run(s, statuses={("pi4-a", v): "ineligible" for v in VARIANTS})
        slow = add_run(s, slowdown={"pruned": 5.0}, disturbed={"pruned"})
    assert main(["gate", "--store", str(store), "--run", rid]) == 2
    assert main(["gate", "--store", str(store), "--run", rid, "--allow-unmeasured"]) == 0
    assert main(["gate", "--store", str(store), "--run", only, "--allow-unmeasured"]) == 2
    capsys.readouterr()
    assert main(["gate", "--store", str(store), "--run", slow, "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["outcome"] == "disturbed" and data["exit_code"] == 2 and data["version"] == 2
    (p90,) = [c for c in data["checks"]
              if c["variant"] == "pruned" and c["budget_key"] == "latency_p90_ms_short"]
    assert p90["status"] == "disturbed" and "40 % of the CPU" in p90["disturbed"] and p90["unit"] == "s"
    assert data["disturbances"][0]["variant"] == "pruned"


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
    v = gate.evaluate(st, rid)
    assert any("throttled" in w for w in v.warnings) and v.exit_code == 0


def test_a_memory_budget_failed_on_disturbed_data_is_still_budget_failed(st):
    """Other processes' CPU use does not grow a process's own peak RSS: a memory budget failure is real
    whatever the device's load (a rerun would fail again), so it stays budget_failed (exit 1)."""
    v = judged(st, add_run(st, rss={"pruned": 600 * 2**20}, disturbed={"pruned"}))
    status = {c.metric: c.status for c in v.checks if c.variant == "pruned"}
    assert status["peak_rss_bytes"] == "fail" and v.outcome == "budget_failed" and v.exit_code == 1


def test_a_time_to_first_audio_budget_gates_a_streaming_run(tmp_path, st):
    """``ttfa_p90_ms_short`` gates a release like the latency budgets: met when streaming gets the first
    audio out early, failed when the same run synthesised whole utterances (first audio = last audio)."""
    path = tmp_path / "budgets.toml"
    budgets_text = "version = 1\n[budgets]\nttfa_p90_ms_short = {limit}\nrt_margin_ms = 0\n"
    rid = st.start_run({}, {}, "test", "tiny", ["original"], ["pi4-a"])
    st.record_artifact(rid, "original", "/artifacts/original", make_manifest("original"))
    record = make_record("original", samples_per_class=45, stream_chunk_frames=40)
    st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), "original", "ok", None, record)
    short = [s["total_s"] for p in record["processes"] for s in p["samples"] if s["length_class"] == "short"]
    limit_ms = 1e3 * max(short) / 2            # above every streamed first audio, below every latency
    path.write_text(budgets_text.format(limit=limit_ms))
    v = gate.evaluate(st, rid, budgets=load_budgets(path), save=False)
    checks = {c.metric: c for c in v.checks if c.variant == "original"}
    assert checks["ttfa_short_p90_s"].status == "pass" and checks["rt_margin_s"].status == "pass"
    whole = st.start_run({}, {}, "test", "tiny", ["original"], ["pi4-a"])
    st.record_artifact(whole, "original", "/artifacts/original", make_manifest("original"))
    st.record_attempt(whole, "pi4-a", make_identity("pi4-a"), "original", "ok", None,
                      make_record("original", samples_per_class=45))
    v = gate.evaluate(st, whole, budgets=load_budgets(path), save=False)
    checks = {c.metric: c for c in v.checks if c.variant == "original"}
    assert v.outcome == "budget_failed" and checks["ttfa_short_p90_s"].status == "fail"
    assert "ttfa_p90_ms_short" in checks["ttfa_short_p90_s"].message
    assert checks["rt_margin_s"].status == "skipped"   # optional: whole utterances have no chunks
