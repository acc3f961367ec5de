"""The comparison table: cells, budgets, ratios against original, CSV and Markdown exports."""

from __future__ import annotations

import csv
import io

import pytest
from report_data import make_report_data

from harness.verdict import Check, Verdict
from reports import tables
from reports.model import LatencyStats, ReportData, RunInfo, VariantResult


@pytest.fixture(scope="module")
def data() -> ReportData:
    return make_report_data()


def _cell(table: tables.ComparisonTable, variant: str, key: str) -> tables.Cell:
    row = next(r for r in table.rows if r.variant == variant)
    return row.cells[[c.key for c in table.columns].index(key)]


@pytest.mark.parametrize(
    ("fmt", "value", "text"),
    [
        (tables.fmt_seconds, 0.000812, "0.81 ms"),
        (tables.fmt_seconds, 0.0423, "42.3 ms"),
        (tables.fmt_seconds, 0.8, "800 ms"),
        (tables.fmt_seconds, 2.345, "2.35 s"),
        (tables.fmt_bytes, 78_000_000, "78.0 MB"),
        (tables.fmt_bytes, 512_000_000, "512 MB"),
        (tables.fmt_bytes, 1_300_000_000, "1.30 GB"),
        (tables.fmt_bytes, 950, "950 B"),
        (tables.fmt_count, 12_300_000, "12.3 M"),
        (tables.fmt_ratio_pct, 0.91, "91.0 %"),
        (tables.fmt_seconds, None, "—"),
    ],
)
def test_formatting(fmt, value, text):
    assert fmt(value) == text


def test_limits_show_direction():
    assert tables.fmt_limit("latency_short_p90_s", 0.8) == "≤ 800 ms"
    assert tables.fmt_limit("peak_rss_bytes", 512 * 2**20) == "≤ 512 MiB"
    assert tables.fmt_limit("emotion_id_accuracy", 0.9) == "≥ 90.0 %"
    assert tables.fmt_limit("mos", 3.8) == "≥ 3.80"


def test_one_row_per_variant_in_run_order(data):
    table = tables.comparison_table(data, "pi4")
    assert [r.variant for r in table.rows] == list(data.run.variants)
    assert table.groups[0] == ("Size", 3)
    assert ("Latency · short", 2) in table.groups


def test_cells_carry_budget_verdict_and_budget_text(data):
    table = tables.comparison_table(data, "pi4")
    slow = _cell(table, "original", "latency_short_p90_s")
    fast = _cell(table, "pruned+quantized", "latency_short_p90_s")
    assert (slow.status, slow.mark, slow.budget) == ("fail", "✗", "≤ 800 ms")
    assert (fast.status, fast.mark) == ("pass", "✓")
    # No budget on p50: no verdict, no mark (never colour without a budget).
    assert _cell(table, "original", "latency_short_p50_s").status is None
    assert _cell(table, "original", "latency_short_p50_s").note == "n = 30"


def test_ratios_against_original_on_the_same_device(data):
    table = tables.comparison_table(data, "pi4")
    orig = data.result("pi4", "original")
    pq = data.result("pi4", "pruned+quantized")
    speedup = _cell(table, "pruned+quantized", "latency_short_p90_s")
    assert speedup.ratio == pytest.approx(orig.latency["short"].p90_s / pq.latency["short"].p90_s)
    assert speedup.note.endswith("×")
    size = _cell(table, "pruned+quantized", "size_total_bytes")
    assert size.ratio == pytest.approx(pq.size_bytes / orig.size_bytes)
    assert size.note.endswith("%")
    # original itself carries no ratio.
    assert _cell(table, "original", "size_total_bytes").ratio is None


def test_a_pair_that_could_not_be_measured_keeps_its_row(data):
    table = tables.comparison_table(data, "n100")
    row = next(r for r in table.rows if r.variant == "distilled")
    assert row.status == "timeout"
    assert all(c.value is None and c.text == "—" for c in row.cells)


def test_headline_matrix_is_variant_by_device(data):
    m = tables.headline_matrix(data)
    assert m.devices == ("pi4", "n100")
    rows = dict(m.rows)
    assert rows["original"][0].status == "fail"
    assert rows["distilled"][1].text == "timeout" and rows["distilled"][1].status == "fail"


def test_csv_has_raw_si_numbers_ratios_and_failures(data):
    text = tables.to_csv(tables.comparison_tables(data))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(data.results)
    pi_orig = next(r for r in rows if r["device"] == "pi4" and r["variant"] == "original")
    assert float(pi_orig["latency_short_p90_s"]) == pytest.approx(
        data.result("pi4", "original").latency["short"].p90_s, rel=1e-5
    )
    assert int(pi_orig["size_acoustic_bytes"]) == 49_200_000
    assert "latency_short_p90_s ≤ 800 ms" in pi_orig["budget_failures"]
    assert pi_orig["throttled"] == "true"
    pq = next(r for r in rows if r["device"] == "pi4" and r["variant"] == "pruned+quantized")
    assert float(pq["latency_short_p90_s_speedup_x"]) > 1.5
    assert 0 < float(pq["size_total_bytes_fraction_of_original"]) < 1
    timeout = next(r for r in rows if r["device"] == "n100" and r["variant"] == "distilled")
    assert timeout["status"] == "timeout" and timeout["latency_short_p90_s"] == ""
    assert "900 s" in timeout["error"]


def test_markdown_marks_every_checked_cell(data):
    md = tables.to_markdown(tables.comparison_tables(data), title="run x")
    assert md.startswith("# run x\n")
    assert "## pi4" in md and "## n100" in md
    assert "✗ 690 MiB (≤ 512 MiB)" in md
    assert "✓" in md
    assert "distilled (timeout)" in md
    # Each table row has as many cells as the header.
    for block in md.split("## ")[1:]:
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        assert len({ln.count(" | ") for ln in lines if not ln.startswith("|---")}) == 1


def test_markdown_escapes_pipes_in_names():
    r = VariantResult("dev|1", "a|b", latency={"short": LatencyStats(n=3, p50_s=0.1, p90_s=0.2)})
    data = ReportData(run=RunInfo("r"), verdict=Verdict("r", "pass"), results=(r,))
    md = tables.to_markdown(tables.comparison_tables(data))
    assert "a\\|b" in md and "dev\\|1" in md


def test_article_claims_compare_measured_change_with_the_claim(data):
    claims = tables.article_claims(data)
    assert claims.devices == ("pi4", "n100")
    rows = {r.method.variant: r for r in claims.rows}
    pq = rows["pruned+quantized"]
    assert pq.claimed_size == "↓ 70 %" and pq.claimed_speed == "↑ 220 %"
    pi4 = pq.measured[0]
    assert pi4.device == "pi4" and pi4.size == "↓ 63 %"
    assert pi4.size_met is False  # 25.6 MB of 68.6 MB is a 63 % cut, short of the claimed 70 %
    assert rows["unstructured"].measured[0].size == "± 0 %"
    assert rows["distilled"].measured[1] is None  # timed out on the n100: nothing to compare


def test_without_original_there_are_no_ratios():
    r = VariantResult("d", "pruned", sizes={"acoustic": 10}, latency={"short": LatencyStats(3, 0.1, 0.2)})
    checks = (
        Check("latency_short_p90_s", "d", "pruned", 0.2, 0.1, "fail"),
        Check("mos", "d", "pruned", None, 3.8, "skipped"),  # optional, no MOS imported
    )
    data = ReportData(run=RunInfo("r"), verdict=Verdict("r", "budget_failed", checks=checks), results=(r,))
    table = tables.comparison_table(data, "d")
    assert all(c.ratio is None for c in table.rows[0].cells)
    assert _cell(table, "pruned", "latency_short_p90_s").status == "fail"
    mos = _cell(table, "pruned", "mos")
    assert (mos.status, mos.mark, mos.budget, mos.text) == (None, "", "≥ 3.80", "—")
    assert tables.article_claims(data).rows == ()


def test_a_disturbed_check_is_its_own_mark_in_html_csv_and_markdown():
    why = "process 1: other processes had 40 % of the CPU"
    r = VariantResult("d", "pruned", latency={"short": LatencyStats(30, 0.7, 0.9)},
                      peak_rss_bytes=300 * 2**20, disturbed=why)
    checks = (
        Check("latency_short_p90_s", "d", "pruned", 0.9, 0.8, "disturbed", disturbed=why),
        Check("peak_rss_bytes", "d", "pruned", 300.0 * 2**20, 512.0 * 2**20, "pass", disturbed=why),
    )
    data = ReportData(run=RunInfo("r"), verdict=Verdict("r", "disturbed", checks=checks), results=(r,))
    table = tables.comparison_table(data, "d")
    p90, rss = _cell(table, "pruned", "latency_short_p90_s"), _cell(table, "pruned", "peak_rss_bytes")
    assert (p90.status, p90.mark, p90.disturbed) == ("disturbed", "⚠", why)
    assert (rss.status, rss.mark) == ("pass", "✓")  # a pass on disturbed data stays a pass
    assert table.rows[0].disturbed == why and table.rows[0].failed_budgets == 0
    (row,) = csv.DictReader(io.StringIO(tables.to_csv([table])))
    assert row["budget_failures"] == "" and row["budget_disturbed"] == "latency_short_p90_s ≤ 800 ms"
    assert row["disturbed"] == why
    md = tables.to_markdown([table])
    assert "pruned (disturbed)" in md and "⚠ 900 ms (≤ 800 ms, disturbed)" in md
