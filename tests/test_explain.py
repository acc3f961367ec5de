"""harness/explain.py: a stored run's phases placed against its device's stored limits, on hand-made
records (tests/records.py: acoustic 45 % of each sample) with a hand-written work count, in a real
SQLite store. The counts are chosen so that the acoustic model is dispatch-bound and the vocoder
compute-bound; quantizing the acoustic model makes it 1.3x slower, as the placement predicts."""

from __future__ import annotations

import pytest
from records import make_identity, make_manifest, make_record
from test_attribution import limits

from harness import explain, results
from harness.roofline import COMPUTE, DISPATCH
from harness.store import Store

#: short-01 as counted: 12 phones, 72 frames (records.py: 2 and 12 per character, 6 characters)
COUNTED = {"phones": 12, "frames": 72}
DECODER = {"macs": 1_000_000, "ops": 10_000, "weight_bytes": 400_000}
VOCODER = {"macs": 1_200_000_000, "ops": 300, "weight_bytes": 4_000_000}


def work(ops=None):
    stages = {"encoder": {"macs": 100_000, "ops": 100, "weight_bytes": 100_000},
              "decoder": {**DECODER, "ops": ops or DECODER["ops"]}, "vocoder": VOCODER}
    return {"version": 1, "sentences": {"short-01": {"length_class": "short", **COUNTED, "stages": stages}}}


def store_run(st, *, with_limits=True, with_work=True, quantized_ops=16_000):
    rid = st.start_run({}, {}, "test", "tiny", ["original", "quantized"], ["pi4-a"])
    for variant, slowdown, ops in (("original", 1.0, None), ("quantized", 1.3, quantized_ops)):
        manifest = make_manifest(variant)
        if variant == "quantized":
            manifest["recipe"] = [{"step": "quantize", "component": "acoustic"}]
        if with_work:
            manifest["work"] = work(ops)
        st.record_artifact(rid, variant, f"/a/{variant}", manifest)
        st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), variant, "ok", None,
                          make_record(variant, classes=("short",), samples_per_class=30, slowdown=slowdown))
    if with_limits:
        st.record_microbench(rid, "pi4-a", "fp", limits(mac_per_s=40e9, int8=160e9, s_per_op=3e-6))
    return rid


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        yield s


def test_each_phase_is_placed_with_the_work_scaled_to_each_sample(st):
    rid = store_run(st)
    exp = explain.explain(st, rid)
    assert exp.missing == []
    acoustic = exp.of("pi4-a", "original", "acoustic")
    vocoder = exp.of("pi4-a", "original", "vocoder")
    samples = results.samples_df(st, rid)
    mine = samples[samples["variant"] == "original"]
    # encoder work grows with phones, decoder and vocoder work with frames (from the counted sentence)
    want_macs = sum(100_000 * p / 12 + 1_000_000 * f / 72 for p, f in zip(mine["phones"], mine["frames"]))
    assert acoustic.placement.macs == pytest.approx(want_macs, rel=1e-6)
    assert acoustic.placement.seconds == pytest.approx(mine["acoustic_s"].sum())
    assert acoustic.n == len(mine) and acoustic.dominant_stage == "decoder"
    assert acoustic.placement.bound == DISPATCH and not acoustic.placement.int8
    assert vocoder.placement.bound == COMPUTE
    assert "dispatch-bound" in acoustic.sentence() and "operator calls x 3.0 us" in acoustic.sentence()
    assert exp.of("pi4-a", "quantized", "acoustic").placement.int8
    assert not exp.of("pi4-a", "quantized", "vocoder").placement.int8
    d = acoustic.to_dict()
    assert d["bound"] == DISPATCH and d["rate_q1"] <= d["rate_median"] <= d["rate_q3"]


def test_the_dispatch_bound_prediction_for_int8_is_held_against_the_run(st):
    # the quantized decoder makes 16,000 calls instead of 10,000 (its quantize calls): its counted work
    # predicts 0.75x (acoustic 0.75 ms per frame, dispatch floor 0.42 -> 0.67 ms), measured 1 / 1.3
    checks = explain.check_predictions(explain.explain(st, store_run(st)))
    assert [(c.phase, c.change, c.variant) for c in checks] == [("acoustic", "int8", "quantized")]
    c = checks[0]
    assert c.expect_faster is False and c.speedup == pytest.approx(1 / 1.3, rel=0.08) and c.matched
    assert c.predicted_speedup == pytest.approx(0.75, abs=0.02)
    assert "its counted work predicted 0.75x" in c.sentence() and c.sentence().endswith(": matched")


def test_a_slowdown_the_counted_work_does_not_explain_is_a_missed_prediction(st):
    # the same 1.3x slowdown with no extra calls: the counts predict no change; the run says otherwise
    checks = explain.check_predictions(explain.explain(st, store_run(st, quantized_ops=10_000)))
    assert checks[0].predicted_speedup == pytest.approx(1.0, abs=0.01) and not checks[0].matched
    assert checks[0].sentence().endswith("did not match")


def test_nothing_is_guessed_without_limits_or_counted_work(st):
    exp = explain.explain(st, store_run(st, with_limits=False))
    assert exp.phases == [] and exp.missing == ["pi4-a: no micro-benchmarks in this run"]
    exp = explain.explain(st, store_run(st, with_work=False))
    assert exp.phases == [] and "original: no counted work (not counted)" in exp.missing
    rid = store_run(st, with_limits=False)
    st.record_microbench(rid, "pi4-a", "fp", {"error": "torch is not importable here"})
    exp = explain.explain(st, rid)
    assert exp.missing == ["pi4-a: no usable micro-benchmarks (torch is not importable here)"]
