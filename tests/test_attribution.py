"""A regression told apart as device drift or a model regression (harness/attribution.py), through the
gate on stored runs (hand-made records, a real SQLite store): each rule of the attribution with the
evidence it cites, and the opt-in that turns device drift into "disturbed"."""

from __future__ import annotations

import pytest
from test_gate import add_run, judged

from harness.attribution import DEVICE_DRIFT, MODEL_REGRESSION, UNATTRIBUTED
from harness.budgets import Budgets, RegressionSettings
from harness.store import Store

BOTH = {"original": 2.0, "pruned": 2.0}


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def limits(mac_per_s=40e9, int8=160e9, copy=25e9, s_per_op=3e-6, n=50):
    def entry(v):
        return {"median": v, "q1": v * 0.98, "q3": v * 1.02, "n": n}

    return {"format": "edgebench.microbench", "version": 1, "matmul_fp32": entry(mac_per_s),
            "matmul_int8": entry(int8), "copy": entry(copy), "dispatch": entry(s_per_op)}


def attributions(verdict):
    return {(c.device, c.variant, c.length_class): (c.attribution, c.attribution_evidence)
            for c in verdict.regressions}


def test_a_board_whose_own_limits_halved_is_device_drift_and_still_fails_by_default(st):
    base = add_run(st, seed=0)
    st.record_microbench(base, "pi4-a", "id", limits())
    judged(st, base)
    rid = add_run(st, seed=1, slowdown=BOTH)
    st.record_microbench(rid, "pi4-a", "id", limits(mac_per_s=20e9, s_per_op=6e-6))
    v = judged(st, rid)
    found = attributions(v)
    assert len(found) == 6 and {a for a, _ in found.values()} == {DEVICE_DRIFT}
    evidence = found[("pi4-a", "original", "short")][1]
    assert "matrix-product rate 2.00x as slow" in evidence and "per-call overhead 2.00x" in evidence
    assert v.outcome == "regressed" and v.exit_code == 1          # the exit code rules did not change
    assert "device drift:" in v.causes()[0].message


def test_opting_in_makes_device_drift_disturbed_exit_2_and_keeps_model_regressions_failing(st):
    budgets = Budgets(regression=RegressionSettings(device_drift="disturbed"))
    base = add_run(st, seed=0, budgets=budgets)
    st.record_microbench(base, "pi4-a", "id", limits())
    judged(st, base)
    rid = add_run(st, seed=1, slowdown=BOTH, budgets=budgets)
    st.record_microbench(rid, "pi4-a", "id", limits(mac_per_s=20e9, s_per_op=6e-6))
    v = judged(st, rid)
    assert v.outcome == "disturbed" and v.exit_code == 2 and not v.regressions
    assert all(c.disturbed.startswith("device drift:") for c in v.comparisons if c.verdict == "disturbed")
    # a steady board and one variant slower: the model, and it still fails
    rid = add_run(st, seed=2, slowdown={"pruned": 1.3}, budgets=budgets)
    st.record_microbench(rid, "pi4-a", "id", limits(mac_per_s=40.4e9))
    v = judged(st, rid, baseline=base)
    assert v.outcome == "regressed" and {a for a, _ in attributions(v).values()} == {MODEL_REGRESSION}


def test_one_variant_slower_on_two_devices_is_the_model(st):
    judged(st, add_run(st, seed=0, devices=("pi4-a", "pi4-b")))
    v = judged(st, add_run(st, seed=1, devices=("pi4-a", "pi4-b"), slowdown={"pruned": 1.3}))
    found = attributions(v)
    assert {(d, var) for d, var, _ in found} == {("pi4-a", "pruned"), ("pi4-b", "pruned")}
    assert {a for a, _ in found.values()} == {MODEL_REGRESSION}
    assert "pruned is slower on 2 devices (pi4-a, pi4-b)" in found[("pi4-a", "pruned", "short")][1]


def test_every_variant_alike_on_one_board_while_another_board_is_steady_is_device_drift(st):
    # no micro-benchmarks at all: the evidence is the pattern across variants and devices
    judged(st, add_run(st, seed=0, devices=("pi4-a", "pi4-b")))
    rid = add_run(st, seed=1, devices=("pi4-a", "pi4-b"), device_slowdown={"pi4-b": 2.0})
    v = judged(st, rid)
    found = attributions(v)
    assert {d for d, _, _ in found} == {"pi4-b"} and {a for a, _ in found.values()} == {DEVICE_DRIFT}
    assert "every variant on pi4-b slowed alike" in found[("pi4-b", "pruned", "short")][1]
    assert "while pi4-a did not" in found[("pi4-b", "pruned", "short")][1]


def test_every_variant_slower_on_a_steady_lone_board_is_not_guessed(st):
    base = add_run(st, seed=0)
    st.record_microbench(base, "pi4-a", "id", limits())
    judged(st, base)
    rid = add_run(st, seed=1, slowdown=BOTH)
    st.record_microbench(rid, "pi4-a", "id", limits(mac_per_s=39e9))
    found = attributions(judged(st, rid))
    assert {a for a, _ in found.values()} == {UNATTRIBUTED}
    assert "every variant on pi4-a slowed" in found[("pi4-a", "original", "short")][1]


def test_a_board_that_drifted_less_than_the_variant_slowed_does_not_excuse_it(st):
    base = add_run(st, seed=0)
    st.record_microbench(base, "pi4-a", "id", limits())
    judged(st, base)
    rid = add_run(st, seed=1, slowdown={"pruned": 3.0})
    st.record_microbench(rid, "pi4-a", "id", limits(mac_per_s=30e9))      # 1.33x, the variant 3x
    found = attributions(judged(st, rid))
    assert {a for a, _ in found.values()} == {UNATTRIBUTED}
