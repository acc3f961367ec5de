"""The one vocabulary (harness.vocabulary) and the verdict contract (harness.verdict): versions, migration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import results
from harness import vocabulary as vocab
from harness.budgets import default_budgets
from harness.cli import main
from harness.store import Store
from harness.verdict import VERDICT_VERSION, Check, Verdict, VerdictFormatError, read_verdict

# A verdict as edgebench stored it before the format had "disturbed" (version 1), trimmed.
VERSION_1 = {
    "format": "edgebench.verdict", "version": 1, "run_id": "20261123-020000-0001",
    "outcome": "budget_failed", "outcomes": ["budget_failed", "no_baseline"], "exit_code": 1,
    "created_at": "2026-11-23T03:00:00+00:00",
    "checks": [
        {"metric": "latency_p90_ms_short", "device": "pi4", "device_identity": "9f2c41d07ab3",
         "device_class": "pi4", "variant": "original", "value": 1150.0, "budget": 800.0, "unit": "ms",
         "direction": "max", "status": "fail", "message": "latency_p90_ms_short = 1150 ms ..."},
        {"metric": "peak_rss_mib", "device": "pi4", "device_identity": "9f2c41d07ab3", "device_class": "pi4",
         "variant": "original", "value": 300.0, "budget": 512.0, "unit": "MiB", "direction": "max",
         "status": "pass", "message": ""},
        {"metric": "mos", "device": "pi4", "device_identity": "9f2c41d07ab3", "device_class": "pi4",
         "variant": "original", "value": None, "budget": 3.8, "unit": "score", "direction": "min",
         "status": "skipped", "message": ""},
    ],
    "regressions": [], "comparisons": [],
    "unmeasured": [],
    "ineligible": [{"device": "pi4", "variant": "distilled", "status": "ineligible", "error": "too big"}],
    "baselines": {"pi4": None}, "warnings": [], "budgets": default_budgets().to_dict(),
}  # fmt: skip


def test_outcomes_in_order_of_seriousness_with_their_exit_codes():
    assert vocab.OUTCOME_ORDER == (
        "could_not_measure", "disturbed", "budget_failed", "regressed", "no_baseline", "pass"
    )
    assert vocab.EXIT_CODES == {"could_not_measure": 2, "disturbed": 2, "budget_failed": 1, "regressed": 1,
                                "no_baseline": 0, "pass": 0}  # fmt: skip
    assert vocab.order_outcomes(["pass", "regressed", "disturbed", "regressed"]) == ("disturbed", "regressed")
    assert vocab.order_outcomes([]) == ("pass",)
    with pytest.raises(ValueError):
        vocab.order_outcomes(["great"])


def test_every_status_names_a_known_outcome_and_junit_element():
    for status in (*vocab.CHECK_STATUSES.values(), *vocab.COMPARISON_VERDICTS.values()):
        assert status.outcome is None or status.outcome in vocab.OUTCOMES
        assert status.junit in (None, "failure", "error", "skipped")
        if status.outcome is not None:  # exit 2 is an error, exit 1 a failure
            assert status.junit == ("error" if vocab.EXIT_CODES[status.outcome] == 2 else "failure")
    assert vocab.CHECK_STATUSES["disturbed"].outcome == vocab.COMPARISON_VERDICTS["disturbed"].outcome


def test_metrics_read_from_the_columns_the_store_writes(tmp_path):
    from records import make_identity, make_manifest, make_record

    with Store(tmp_path / "r.sqlite") as st:
        rid = st.start_run({}, {}, "test", "tiny", ["original"], ["pi4-a"])
        st.record_artifact(rid, "original", "/a", make_manifest("original"))
        st.import_mos([{"variant": "original", "mos": 4.0}])
        record = make_record(samples_per_class=30, stream_chunk_frames=40)
        st.record_attempt(rid, "pi4-a", make_identity(), "original", "ok", None, record)
        summary = results.summary_df(st, rid)
        whole_id = st.start_run({}, {}, "test", "tiny", ["original"], ["pi4-a"])
        st.record_artifact(whole_id, "original", "/a", make_manifest("original"))
        st.record_attempt(whole_id, "pi4-a", make_identity(), "original", "ok", None,
                          make_record(samples_per_class=30))
        whole = results.summary_df(st, whole_id).to_dict("records")
    rows = summary.to_dict("records")
    for m in vocab.METRICS.values():
        assert set(m.columns) <= set(summary.columns), m.key
        assert m.value_of(rows) is not None, m.key
    p90 = vocab.METRICS["latency_medium_p90_s"].value_of(rows)
    assert p90 == summary[summary["length_class"] == "medium"]["p90"].iloc[0]
    rtf = vocab.METRICS["rtf"].value_of(rows)
    assert rtf == pytest.approx(sum(r["rtf"] * r["audio_s"] for r in rows) / sum(r["audio_s"] for r in rows))
    assert vocab.METRICS["size_total_bytes"].value_of(rows) == 48_500_000 + 19_400_000
    assert vocab.METRICS["mos"].value_of([]) is None
    # streaming: first audio after a fifth of the time, the worst chunk's margin over every process
    assert vocab.METRICS["ttfa_medium_p90_s"].value_of(rows) == pytest.approx(p90 / 5)
    assert vocab.METRICS["rt_margin_s"].value_of(rows) == pytest.approx(0.05)
    # whole-utterance synthesis: the first audio comes with the last, and there is no margin to speak of
    ttfa, latency = (vocab.METRICS[k].value_of(whole) for k in ("ttfa_short_p90_s", "latency_short_p90_s"))
    assert ttfa == latency
    assert vocab.METRICS["rt_margin_s"].value_of(whole) is None


def test_a_verdict_round_trips_through_its_dict():
    check = Check("latency_short_p90_s", "pi4", "original", 1.15, 0.8, "disturbed", disturbed="load")
    v = Verdict("r", "disturbed", ("disturbed",), checks=(check,), warnings=("w",))
    d = json.loads(json.dumps(v.to_dict()))
    assert d["version"] == VERDICT_VERSION and d["exit_code"] == 2
    assert d["checks"][0]["budget_key"] == "latency_p90_ms_short" and d["checks"][0]["unit"] == "s"
    assert read_verdict(d) == v


def test_version_1_is_migrated_and_keeps_its_outcome():
    v = read_verdict(VERSION_1)
    assert (v.outcome, v.exit_code) == ("budget_failed", 1)
    p90 = v.check("pi4", "original", "latency_short_p90_s")
    assert p90.status == "fail" and p90.value == pytest.approx(1.15) and p90.limit == pytest.approx(0.8)
    assert v.check("pi4", "original", "peak_rss_bytes").limit == 512 * 2**20
    assert v.check("pi4", "original", "mos").value is None
    # Version 1 never counted an ineligible pair: migrated, it is an unmeasured pair that did not count.
    assert [(u.variant, u.status, u.allowed) for u in v.unmeasured] == [("distilled", "ineligible", True)]
    assert not v.counted_unmeasured


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": VERDICT_VERSION + 1}, f"version {VERDICT_VERSION + 1} is newer than this edgebench"),
        ({"format": "something.else"}, "not an edgebench verdict"),
        ({"version": "2"}, "bad verdict format version '2'"),
        ({"checks": [{**VERSION_1["checks"][0], "metric": "latency_p95_ms"}]}, "'latency_p95_ms'"),
        ({"outcome": "great"}, "damaged verdict"),
    ],
)
def test_an_unreadable_verdict_is_a_clear_error_saying_how_to_fix_it(change, expected):
    with pytest.raises(VerdictFormatError) as err:
        read_verdict({**VERSION_1, **change}, where="verdict of run X")
    text = str(err.value)
    assert text.startswith("verdict of run X: ") and expected in text
    assert "upgrade edgebench" in text or "edgebench gate --run" in text


def test_the_report_refuses_a_newer_verdict_in_one_line(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    with Store(store) as st:
        rid = st.start_run({}, {}, "test", "tiny", ["original"], ["pi4"])
        st.save_verdict(rid, {**VERSION_1, "run_id": rid, "version": 99})
    assert main(["report", "--store", str(store), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgebench: error: verdict of run ") and "version 99 is newer" in err
    assert "\n" not in err


def test_vocabulary_and_verdict_import_without_torch_pandas_or_the_store():
    code = ("import sys, harness.vocabulary, harness.verdict; "
            "print(sorted(m for m in ('torch', 'pandas', 'harness.store') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
