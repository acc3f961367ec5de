"""The HTML report: rendered from hand-made ReportData and from a real store file; escaping; the CLI."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from records import make_identity, make_manifest, make_record
from report_data import make_report_data

from harness import gate
from harness.budgets import default_budgets
from harness.cli import main
from harness.store import Store
from harness.verdict import Comparison, Verdict
from harness.vocabulary import BUDGET_FAILED, COULD_NOT_MEASURE, OUTCOME_ORDER, REGRESSED
from reports import charts
from reports.model import AudioClip, load_report_data
from reports.render import CSV_FILE, MARKDOWN_FILE, REPORT_FILE, VERDICT_TEXT, render_report, render_run

HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = make_report_data(root / "src", hostile_fact=HOSTILE)
    return render_report(data, root / "out", generated_at="2026-11-23 06:00 UTC")


@pytest.fixture(scope="module")
def html(rendered) -> str:
    return rendered.read_text(encoding="utf-8")


def test_writes_the_report_and_both_table_exports(rendered):
    out = rendered.parent
    assert rendered.name == REPORT_FILE
    assert (out / CSV_FILE).read_text(encoding="utf-8").startswith("device,variant,status,")
    assert (out / MARKDOWN_FILE).read_text(encoding="utf-8").startswith("# edgebench run ")


def test_verdict_and_its_causes_come_first(html):
    body = html[html.index("<body>") :]
    verdict = body.index('id="verdict"')
    assert verdict < body.index('id="overview"') < body.index('id="device-1"')
    banner = body[verdict : body.index('id="overview"')]
    assert "Could not measure" in banner and "exit code 2" in banner
    # The cause of the verdict's own kind is listed first, then the others with value vs budget.
    causes = re.findall(r'<span class="kind">([^<]*)</span><span class="where">([^<]*)</span>', banner)
    assert causes[0] == ("could not measure", "n100 · distilled")
    assert ("budget failed", "pi4 · original") in causes
    assert "Latency p90 (short) = 1.15 s vs budget ≤ 800 ms" in banner
    assert "short sentences: median 1.12× the baseline (95 % CI 1.07–1.18, p = 0.0004)" in banner


def test_comparison_tables_matrix_and_sections(html):
    assert html.count('<table class="comparison">') == 2
    assert '<table class="matrix">' in html
    for section in ("regressions", "trends", "audio", "devices", "reference"):
        assert f'id="{section}"' in html
    # Status is never colour alone: marks and budget text are in the cells.
    assert '<span class="mark" aria-label="fail">✗</span><span class="v">1.15 s</span>' in html
    assert "≤ 800 ms" in html and "✓" in html
    assert "⚠ throttled" in html
    assert "measurement exceeded its timeout (900 s) in process 2 of 3" in html


def test_charts_are_inline_svg_with_text_as_paths(html):
    svgs = re.findall(r"<svg\b[^>]*>", html)
    # 4 per device (distribution, stages, length, pareto) + the trend.
    assert len(svgs) == 9
    assert all('class="chart"' in s and 'role="img"' in s for s in svgs)
    assert "<text" not in html  # fonts embedded as paths: renders the same without the font
    assert "<!--" not in html


def test_self_contained_no_external_reference(html):
    assert "Content-Security-Policy" in html
    assert "<script" not in html
    assert "<link" not in html and "@import" not in html
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("#", "audio/", "data:")), attr


def test_device_strings_are_escaped(html):
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_audio_copied_beside_the_report_and_referenced_relatively(rendered, html):
    wav = rendered.parent / "audio" / "pruned-quantized" / "happy.wav"
    assert wav.is_file() and wav.stat().st_size > 1000
    assert 'src="audio/pruned-quantized/happy.wav"' in html
    assert html.count("<audio ") == 6 * 7


def test_small_audio_is_embedded_when_allowed(tmp_path):
    data = replace(make_report_data(tmp_path / "src", n_per_class=5), samples={}, history=())
    report = render_report(data, tmp_path / "out", embed_audio_max_bytes=1_000_000)
    text = report.read_text(encoding="utf-8")
    assert text.count('src="data:audio/wav;base64,') == 6 * 7
    assert not (tmp_path / "out" / "audio").exists()


def test_a_missing_sample_file_is_reported_not_fatal(tmp_path):
    data = make_report_data(None, n_per_class=5)
    clip = AudioClip("original", "happy", tmp_path / "nope.wav")
    data = replace(data, audio=(clip,), samples={}, history=())
    text = render_report(data, tmp_path / "out").read_text(encoding="utf-8")
    assert "sample file missing" in text


@pytest.mark.parametrize("kind", OUTCOME_ORDER)
def test_every_verdict_kind_has_its_banner(tmp_path, kind):
    data = make_report_data(None, n_per_class=5)
    verdict = Verdict(data.run.run_id, kind)
    data = replace(data, verdict=verdict, samples={}, history=())
    text = render_report(data, tmp_path).read_text(encoding="utf-8")
    label = VERDICT_TEXT[kind][0]
    assert f'class="verdict v-{kind}"' in text
    assert f'<div class="label">{label}</div>' in text
    assert f"<title>edgebench · {data.run.run_id} · {label}</title>" in text
    assert f"exit code {verdict.exit_code}" in text


def test_a_run_without_a_stored_verdict_says_so(tmp_path):
    data = replace(make_report_data(None, n_per_class=5), verdict=None, samples={}, history=())
    text = render_report(data, tmp_path).read_text(encoding="utf-8")
    assert 'class="verdict v-none"' in text and "No verdict" in text and "edgebench gate --run" in text
    assert "exit code" not in text and 'aria-label="pass"' not in text  # no budget marks without a verdict


def test_charts_use_ascii_labels_without_a_cjk_font(monkeypatch):
    monkeypatch.setattr(charts, "cjk_family", lambda: None)
    assert charts.label("剪枝 pruned") == "?? pruned"
    monkeypatch.setattr(charts, "cjk_family", lambda: "Noto Sans CJK SC")
    assert charts.label("剪枝 pruned") == "剪枝 pruned"


def test_charts_are_deterministic():
    data = make_report_data(None, n_per_class=5)
    assert charts.pareto(data, "pi4") == charts.pareto(data, "pi4")


# ------------------------------------------------------------------------------------ from the store


def _store_run(path: Path, artifacts_root: Path) -> tuple[Store, str]:
    """Two gated runs in a real store file: a passing baseline night, then a night where original got
    5x slower (budget failed, regressed) and quantized timed out (could not measure)."""
    import numpy as np
    import soundfile as sf

    store = Store(path)
    variants = ["original", "pruned", "quantized"]
    run_id = ""
    for night, started in enumerate(("2026-11-22T02:00:00+00:00", "2026-11-23T02:00:00+00:00")):
        run_id = store.start_run(
            {"preset": "tiny"}, default_budgets().to_dict(), "test", "tiny", variants, ["pi4-a"],
            run_id=f"2026112{2 + night}-020000-000{night}", started_at=started,
        )  # fmt: skip
        for i, v in enumerate(variants):
            manifest = make_manifest(v, acoustic_bytes=48_500_000 // (i + 1))
            folder = artifacts_root / v
            (folder / "samples").mkdir(parents=True, exist_ok=True)
            manifest["samples"] = {}
            for emotion in ("neutral", "happy"):
                sf.write(folder / "samples" / f"{emotion}.wav", np.zeros(1600, dtype="float32"), 16000)
                manifest["samples"][emotion] = f"samples/{emotion}.wav"
            store.record_artifact(run_id, v, str(folder), manifest)
            identity = make_identity("pi4-a")
            if v == "quantized" and night == 1:
                store.record_attempt(run_id, "pi4-a", identity, v, "timeout", "timed out after 900 s", None)
                continue
            slowdown = 5.0 if (v == "original" and night == 1) else 1.0 - 0.3 * i
            throttled = v == "original" and night == 1
            record = make_record(
                v, seed=night * 10 + i, slowdown=slowdown, throttled=throttled, hostname=HOSTILE
            )
            store.record_attempt(run_id, "pi4-a", identity, v, "ok", None, record)
        store.finish_run(run_id, "complete" if night == 0 else "incomplete")
        gate.evaluate(store, run_id, save=True)  # saved: the first night becomes the second's baseline
    return store, run_id


@pytest.fixture()
def store_run(tmp_path):
    store, run_id = _store_run(tmp_path / "results.sqlite", tmp_path / "artifacts")
    yield store, run_id
    store.close()


def test_report_data_from_a_real_store(store_run):
    store, run_id = store_run
    data = load_report_data(store, run_id)
    assert data.run.run_id == run_id and data.run.status == "incomplete"
    assert data.verdict.outcome == COULD_NOT_MEASURE and data.verdict.exit_code == 2
    orig = data.result("pi4-a", "original")
    assert orig.ok and orig.throttled
    assert set(orig.latency) == {"short", "medium", "long"}
    assert orig.latency["short"].n > 0 and orig.latency["short"].p50_s <= orig.latency["short"].p90_s
    assert orig.sizes == {"acoustic": 48_500_000, "vocoder": 19_400_000}
    assert orig.emotion_id_accuracy == 0.95 and orig.mcd_db == 4.2
    assert orig.load_s == pytest.approx(0.3) and orig.first_inference_s == pytest.approx(0.8)
    timeout = data.result("pi4-a", "quantized")
    assert timeout.status == "timeout" and "900 s" in timeout.error and not timeout.latency
    assert len(data.samples[("pi4-a", "pruned")]) == sum(
        r.n for r in data.result("pi4-a", "pruned").latency.values()
    )
    assert data.devices[0].facts_before["cpu_model"] == "Cortex-A72"
    assert {p.run_id for p in data.history} == {"20261122-020000-0000", run_id}
    assert {(c.variant, c.emotion) for c in data.audio} >= {("original", "happy"), ("quantized", "neutral")}
    # The verdict the gate stored: checks in the metrics' units, causes naming device/variant/metric.
    assert data.verdict == gate.stored_verdict(store, run_id)
    assert data.verdict.baselines == {"pi4-a": "20261122-020000-0000"}
    kinds = {(c.outcome, c.variant) for c in data.verdict.causes()}
    assert {(COULD_NOT_MEASURE, "quantized"), (BUDGET_FAILED, "original"), (REGRESSED, "original")} <= kinds
    check = data.verdict.check("pi4-a", "original", "latency_short_p90_s")
    assert check.status == "fail" and check.limit == pytest.approx(0.8)
    assert check.value == pytest.approx(orig.latency["short"].p90_s)
    rss = data.verdict.check("pi4-a", "pruned", "peak_rss_bytes")
    assert rss.passed and rss.limit == 512 * 2**20
    regressed = [r for r in data.comparisons if r.regressed]
    assert {(r.variant, r.length_class) for r in regressed} >= {("original", "short")}
    assert all(r.ratio > 4 and r.p_value < 0.01 for r in regressed)
    assert any(b.metric == "latency_p90_ms_short" and b.limit == "≤ 800 ms" for b in data.budgets)


def test_render_run_from_a_real_store(store_run, tmp_path):
    store, run_id = store_run
    report = render_run(store, run_id, tmp_path / "out")
    text = report.read_text(encoding="utf-8")
    assert "Could not measure" in text and "timeout: timed out after 900 s" in text
    assert "Latency p90 (short) = " in text and "vs budget ≤ 800 ms" in text
    # The regression's size and confidence in the banner.
    assert re.search(
        r"short sentences: median \d\.\d\d× the baseline \(95 % CI \d\.\d\d–\d\.\d\d, p = ", text
    )
    assert HOSTILE not in text and "&lt;script&gt;" in text
    assert (tmp_path / "out" / "audio" / "original" / "happy.wav").is_file()
    assert len(re.findall(r"<svg\b", text)) >= 4


def test_cli_renders_the_latest_run(store_run, tmp_path, capsys):
    store, run_id = store_run
    out = tmp_path / "cli-out"
    assert main(["report", "--store", str(store.path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / REPORT_FILE)
    assert (out / REPORT_FILE).is_file() and (out / CSV_FILE).is_file()


def test_cli_unknown_run_is_one_line_exit_2(store_run, capsys):
    store, _ = store_run
    assert main(["report", "--store", str(store.path), "--run", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgebench: error: ") and "nope" in err and "\n" not in err


def test_cli_without_a_store_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_regression_verdict_names_the_ratio(tmp_path):
    data = make_report_data(None, n_per_class=5)
    verdict = Verdict(data.run.run_id, REGRESSED, comparisons=data.verdict.comparisons)
    data = replace(data, verdict=verdict, samples={}, history=())
    text = render_report(data, tmp_path).read_text(encoding="utf-8")
    assert "pi4 · quantized" in text and "short sentences: median 1.12× the baseline" in text


def test_a_run_where_nothing_was_measured_still_renders(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        run_id = store.start_run({}, {}, "test", "tiny", ["original", "pruned"], ["local", "pi4-a"])
        store.record_attempt(
            run_id, "pi4-a", None, "original", "unreachable", "ssh: timed out after 10 s", None
        )
        store.finish_run(run_id, "incomplete")
        text = render_run(store, run_id, tmp_path / "none").read_text(encoding="utf-8")
        assert 'class="verdict v-none"' in text  # never gated: the report does not judge it itself
        gate.evaluate(store, run_id)
        text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    assert 'class="verdict v-could_not_measure"' in text
    assert "ssh: timed out after 10 s" in text
    assert "never attempted" in text  # the planned pairs nobody tried are causes too
    assert text.count(">not run<") >= 3  # the matrix keeps every planned device and variant
    assert "<svg" not in text  # no samples: no charts, and no error either


def test_a_failed_attempt_that_a_retry_fixed_says_so(store_run, tmp_path):
    store, run_id = store_run
    store.record_attempt(run_id, "pi4-a", make_identity("pi4-a"), "pruned", "failed", "agent crashed", None)
    store.record_attempt(run_id, "pi4-a", make_identity("pi4-a"), "pruned", "ok", None, make_record("pruned"))
    text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    assert "agent crashed" in text and "a retry succeeded" in text


def test_an_insufficient_comparison_without_a_ratio_renders(tmp_path):
    """harness.regress leaves ratio, CI and p empty when a side has fewer than min_samples samples."""
    nan = float("nan")
    reg = Comparison("pi4", None, "b", None, "pruned", "long", 6, 6, nan, nan, nan, nan, nan, nan,
                     "insufficient")
    assert reg.ratio is None and reg.to_dict()["baseline_median"] is None
    data = make_report_data(None, n_per_class=5)
    verdict = replace(data.verdict, comparisons=data.verdict.comparisons + (reg,))
    text = render_report(replace(data, verdict=verdict), tmp_path).read_text(encoding="utf-8")
    assert "too few samples" in text


def test_the_report_never_judges_the_run(store_run, tmp_path, monkeypatch):
    store, run_id = store_run

    def no_judging(*args, **kwargs):
        raise AssertionError("the report ran the gate")

    monkeypatch.setattr(gate, "evaluate", no_judging)
    text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    assert 'class="verdict v-could_not_measure"' in text


def test_cli_gate_judges_and_stores_first_and_baseline_needs_it(tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    with Store(store) as st:
        run_id = st.start_run({}, default_budgets().to_dict(), "test", "tiny", ["original"], ["pi4-a"])
        st.record_artifact(run_id, "original", "/artifacts/original", make_manifest("original"))
        st.record_attempt(run_id, "pi4-a", make_identity(), "original", "ok", None, make_record())
    out = tmp_path / "out"
    assert main(["report", "--store", str(store), "--out", str(out)]) == 0
    assert "no stored verdict" in capsys.readouterr().err
    assert 'class="verdict v-none"' in (out / REPORT_FILE).read_text(encoding="utf-8")
    assert main(["report", "--store", str(store), "--out", str(out), "--baseline", run_id]) == 2
    assert "add --gate" in capsys.readouterr().err
    assert main(["report", "--store", str(store), "--out", str(out), "--gate"]) == 0
    with Store(store) as st:
        assert st.verdict(run_id)["outcome"] == "no_baseline"
    assert 'class="verdict v-no_baseline"' in (out / REPORT_FILE).read_text(encoding="utf-8")


def test_disturbed_measurements_are_marked_in_the_table_and_the_banner(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        run_id = store.start_run({}, default_budgets().to_dict(), "test", "tiny", ["original", "pruned"],
                                 ["pi4-a"])  # fmt: skip
        for variant, slowdown in (("original", 5.0), ("pruned", 1.0)):
            store.record_artifact(run_id, variant, f"/artifacts/{variant}", make_manifest(variant))
            record = make_record(variant, slowdown=slowdown)
            record["disturbed"] = True
            record["processes"][1].update(disturbed=True, disturbed_reason="a backup job took 2 cores")
            store.record_attempt(run_id, "pi4-a", make_identity(), variant, "ok", None, record)
        verdict = gate.evaluate(store, run_id)
        assert verdict.outcome == "disturbed"
        data = load_report_data(store, run_id)
        text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
        csv_text = (tmp_path / "out" / CSV_FILE).read_text(encoding="utf-8")
    assert "a backup job took 2 cores" in data.result("pi4-a", "pruned").disturbed
    banner = text[text.index('id="verdict"') : text.index('id="overview"')]
    assert 'class="verdict v-disturbed"' in text and "exit code 2" in banner
    assert "Latency p90 (short) = " in banner and "disturbed: process 1: a backup job took 2 cores" in banner
    assert '<ul class="disturbances">' in banner
    assert text.count('<span class="tag warn disturbed"') == 2  # both rows of the comparison table
    # and the process that stayed disturbed, with its reason, in the device's process table
    tag = '<span class="tag warn process-disturbed">disturbed</span> a backup job took 2 cores'
    assert text.count(tag) == 2
    assert '<span class="mark" aria-label="disturbed">⚠</span>' in text
    assert "budget_disturbed" in csv_text and "a backup job took 2 cores" in csv_text


def test_the_output_check_of_a_board_is_shown_per_process(tmp_path):
    check = {"sentence_id": "s01", "emotion": "happy", "quantized_engine": "qnnpack", "precision": "int8",
             "phones": 22, "durations_differ": 1, "mel_max_abs": 0.043, "mel_rel_rms": 0.0183,
             "wav_max_abs": 0.0, "ok": True,
             "tolerance": {"mel_max_abs": 0.5, "mel_rel_rms": 0.1, "wav_max_abs": 0.05}}
    with Store(tmp_path / "results.sqlite") as store:
        run_id = store.start_run({}, default_budgets().to_dict(), "test", "tiny", ["quantized"], ["pi5-a"])
        store.record_artifact(run_id, "quantized", "/artifacts/quantized", make_manifest("quantized"))
        record = make_record("quantized")
        record["processes"][0]["output_check"] = check
        store.record_attempt(run_id, "pi5-a", make_identity(), "quantized", "ok", None, record)
        gate.evaluate(store, run_id)
        text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    cells = [c.split("</td>")[0] for c in text.split('<td class="output-check">')[1:]]
    assert cells[0] == "agrees (int8, qnnpack): mel 1.83 % rms, max |diff| 0.043; 1/22 durations differ"
    assert set(cells[1:]) == {"—"}   # the other processes did not check


def test_a_streaming_run_shows_time_to_first_audio_and_says_which_mode(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        runs = {}
        for chunk in (40, None):
            rid = store.start_run({}, default_budgets().to_dict(), "test", "tiny", ["original"], ["pi5-a"])
            store.record_artifact(rid, "original", "/artifacts/original", make_manifest("original"))
            store.record_attempt(rid, "pi5-a", make_identity(), "original", "ok", None,
                                 make_record("original", stream_chunk_frames=chunk))
            gate.evaluate(store, rid)
            runs[chunk] = render_run(store, rid, tmp_path / f"out-{chunk}").read_text(encoding="utf-8")
            csv_text = (tmp_path / f"out-{chunk}" / CSV_FILE).read_text(encoding="utf-8")
            assert ("ttfa_short_p90_s" in csv_text.splitlines()[0]) == (chunk is not None)
    streamed, whole = runs[40], runs[None]
    assert "streaming synthesis in chunks of 40 mel frames (500 ms of audio)" in streamed
    assert "First audio · short" in streamed and "Real-time margin" in streamed
    assert "whole-utterance synthesis (as the source article measured" in whole
    assert "First audio" not in whole


def test_the_memory_timeline_of_a_process_per_variant_is_drawn(tmp_path):
    timeline = {"t_s": [0.25 * i for i in range(40)],
                "rss_bytes": [min(i, 20) * 25 * 2**20 for i in range(40)],
                "hwm_bytes": [min(i, 20) * 25 * 2**20 for i in range(40)],
                "marks": {"import": 2.0, "load": 3.5, "first_inference": 4.0, "warmup": 4.5, "steady": 9.5}}
    with Store(tmp_path / "results.sqlite") as store:
        run_id = store.start_run({}, default_budgets().to_dict(), "test", "tiny", ["original"], ["pi5-a"])
        store.record_artifact(run_id, "original", "/artifacts/original", make_manifest("original"))
        record = make_record("original")
        record["processes"][0]["memory_timeline"] = timeline
        store.record_attempt(run_id, "pi5-a", make_identity(), "original", "ok", None, record)
        gate.evaluate(store, run_id)
        data = load_report_data(store, run_id)
        text = render_run(store, run_id, tmp_path / "out").read_text(encoding="utf-8")
    assert data.processes_of("pi5-a")[0].memory_timeline["marks"]["load"] == 3.5
    assert 'aria-label="Resident memory over time of one process per variant on pi5-a"' in text
    assert "with the phases marked" in text
