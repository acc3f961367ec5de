"""Render one run as a self-contained HTML report plus the comparison table as CSV and Markdown.

``render_run(store, run_id, out_dir)`` is the entry point the CLI and the orchestrator call;
``render_report(data, out_dir)`` does the work from a ``ReportData`` (tests build one by hand).
The template is autoescaped: every string that came from a device is shown as text. The only markup
passed through unescaped is the SVG that matplotlib produced here (its text is drawn as paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

import jinja2
from markupsafe import Markup

from harness.verdict import Cause, Verdict
from harness.vocabulary import (
    BUDGET_FAILED,
    COULD_NOT_MEASURE,
    DISTURBED,
    METRICS,
    NO_BASELINE,
    OUTCOMES,
    PASS,
    REGRESSED,
)
from reports import charts, tables
from reports.audio import AudioGrid, collect_audio
from reports.model import HEADLINE_CLASS, DeviceInfo, ReportData, load_report_data

REPORT_FILE = "report.html"
CSV_FILE = "comparison.csv"
MARKDOWN_FILE = "comparison.md"
# The banner lists this many causes, then says how many more there are.
MAX_CAUSES = 12
# A WAV this small or smaller is embedded in the HTML (base64) rather than copied beside it.
DEFAULT_EMBED_AUDIO_MAX_BYTES = 0

ICONS = {
    PASS: "✓", NO_BASELINE: "?", REGRESSED: "✗", BUDGET_FAILED: "✗", DISTURBED: "≈", COULD_NOT_MEASURE: "!"
}
#: Banner kind of a run the gate never judged (no stored verdict).
NO_VERDICT = "none"
#: outcome (or NO_VERDICT) -> (label, icon, summary) of the banner.
VERDICT_TEXT = {
    **{name: (o.label, ICONS[name], o.meaning) for name, o in OUTCOMES.items()},
    NO_VERDICT: (
        "No verdict",
        "–",
        "The gate has not judged this run: run `edgebench gate --run RUN_ID` (or `edgebench report --gate`), "
        "then render the report again.",
    ),
}

# Facts shown in the device table, in this order (the agent's FACTS keys).
FACT_ROWS = (
    ("board_model", "Board"),
    ("cpu_model", "CPU"),
    ("cpu_part", "CPU core"),
    ("cpu_features", "CPU features"),
    ("cores", "Cores"),
    ("machine", "Architecture"),
    ("os", "OS"),
    ("python", "Python"),
    ("torch", "torch"),
    ("quantized_engine", "Quantized engine"),
    ("governor", "Governor"),
    ("freq_mhz", "Frequency (MHz)"),
    ("temp_c", "Temperature (°C)"),
    ("throttled_flags", "Throttle flags"),
    ("throttled_conditions", "Throttling"),
    ("load_avg", "Load average"),
    ("mem_total_bytes", "Memory"),
    ("mem_available_bytes", "Memory available"),
    ("hostname", "Hostname"),
)


@dataclass(frozen=True)
class CauseLine:
    kind: str
    where: str
    what: str


@dataclass(frozen=True)
class DeviceSection:
    name: str
    table: tables.ComparisonTable
    charts: Tuple[Tuple[str, Markup], ...]  # (caption, svg)
    flagged: bool


@dataclass(frozen=True)
class FactRow:
    label: str
    values: Tuple[Tuple[str, Optional[str]], ...]  # per device: (before, after if different)


def _fact_text(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if key.startswith("mem_"):
        return tables.fmt_bytes(float(value))
    if key == "load_avg" and isinstance(value, (list, tuple)):
        return " / ".join(f"{float(x):.2f}" for x in value)
    if key == "throttled_conditions" and isinstance(value, (list, tuple)):
        return ", ".join(str(x) for x in value) or "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(x) for x in value)
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


MS_PER_FRAME = 12.5  # hop 200 at 16 kHz (contracts.md)


def synthesis_mode(data: ReportData) -> str:
    """Which synthesis the numbers come from: whole utterance (what the source article measured) or
    streaming in chunks (with time to first audio)."""
    chunks = sorted({r.stream_chunk_frames for r in data.results if r.ok and r.stream_chunk_frames})
    whole = any(r.ok and not r.stream_chunk_frames for r in data.results)
    parts = []
    if whole or not chunks:
        parts.append("whole-utterance synthesis (as the source article measured: the first audio comes when "
                     "the whole sentence is done)")
    for n in chunks:
        parts.append(f"streaming synthesis in chunks of {n} mel frames ({n * MS_PER_FRAME:g} ms of audio): "
                     "the decoder hands frames over as it produces them, the vocoder runs chunk by chunk, "
                     "and the time to first audio is measured per sentence")
    return "; ".join(parts)


def fact_rows(devices: Sequence[DeviceInfo]) -> Tuple[FactRow, ...]:
    rows = []
    known = {k for k, _ in FACT_ROWS}
    extra = sorted({k for d in devices for k in d.facts_before if k not in known})
    for key, name in list(FACT_ROWS) + [(k, k) for k in extra]:
        values = []
        for d in devices:
            before = _fact_text(key, d.facts_before.get(key))
            after = _fact_text(key, d.facts_after.get(key)) if key in d.facts_after else before
            values.append((before, after if after != before else None))
        if any(b != "—" or a for b, a in values):
            rows.append(FactRow(name, tuple(values)))
    return tuple(rows)


def _where(*parts: Optional[str]) -> str:
    return " · ".join(p for p in parts if p)


def cause_lines(data: ReportData) -> Tuple[CauseLine, ...]:
    """The stored verdict's causes, most serious outcome first (the banner's outcome leads)."""
    if data.verdict is None:
        return ()
    return tuple(describe_cause(c) for c in data.verdict.causes())


def describe_cause(c: Cause) -> CauseLine:
    """One banner line: a budget check with value vs budget in the table's units, else the cause's text;
    a disturbed one names what disturbed it."""
    metric = METRICS.get(c.metric or "")
    what = c.message
    if c.outcome in (BUDGET_FAILED, DISTURBED) and metric is not None and None not in (c.value, c.limit):
        value, limit = tables.fmt_metric(metric.key, c.value), tables.fmt_limit(metric.key, c.limit)
        what = f"{metric.label} = {value} vs budget {limit}"
    elif metric is not None and not what:
        what = f"{metric.label}: no value"
    what = what or VERDICT_TEXT[c.outcome][2]
    if c.disturbed:
        what += f" — disturbed: {c.disturbed}"
    return CauseLine(kind=c.outcome, where=_where(c.device, c.variant), what=what)


def baseline_text(verdict: Optional[Verdict]) -> str:
    runs = sorted({b for b in (verdict.baselines.values() if verdict is not None else ()) if b})
    return ", ".join(runs) if runs else "none"


def _device_charts(data: ReportData, device: str) -> Tuple[Tuple[str, Markup], ...]:
    out = []
    for caption, fn in (
        (
            "Latency distribution of every steady-state sample (box: quartiles, line: median).",
            charts.latency_distributions,
        ),
        ("Where the time goes: median per stage.", charts.stage_breakdown),
        (
            "Latency against sentence length, and real-time factor (compute time / audio time).",
            charts.latency_vs_length,
        ),
        (
            "Size vs latency vs fidelity: down and left is better; colour is the mel distortion against "
            "original (yellow: closest).",
            charts.pareto,
        ),
        (
            "Roofline: each phase's achieved rate against the multiply-accumulates it does per operator "
            "call, under this device's measured limits (micro-benchmarks of this run). Near the diagonal: "
            "the calls take the time; near a horizontal: the arithmetic does.",
            charts.roofline,
        ),
        (
            "Resident memory of one process per variant, polled from outside every 0.25 s (the high-water "
            "mark between polls is in the peak RSS), with the phases marked.",
            charts.memory_timelines,
        ),
    ):
        svg = fn(data, device)
        if svg:
            out.append((caption, Markup(svg)))
    return tuple(out)


def when(iso: Optional[str]) -> str:
    """An ISO timestamp as ``2026-11-24 19:08 UTC`` (unparseable text is shown as it is)."""
    if not iso:
        return "—"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=True,  # every template, whatever its extension: device strings are untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = tables.fmt_seconds
    env.filters["pct"] = tables.fmt_ratio_pct
    env.filters["when"] = when
    return env


def model_source_text(source: Mapping[str, Any]) -> str:
    """One line saying where the measured weights came from."""
    if source.get("kind") == "model_dir":
        return (
            f"voice {source.get('voice')} of {source.get('model_dir')} "
            f"({source.get('acoustic_checkpoint')}, sha256 {str(source.get('acoustic_sha256'))[:12]})"
        )
    if source.get("preset"):
        return f"the seeded '{source['preset']}' preset"
    if source.get("factory"):
        return f"the seeded model factory {source['factory']}"
    return "a seeded preset"


def render_html(data: ReportData, audio: AudioGrid, generated_at: Optional[str] = None) -> str:
    sections = [
        DeviceSection(
            name=t.device,
            table=t,
            charts=_device_charts(data, t.device),
            flagged=any(r.throttled or r.hot for r in t.rows),
        )
        for t in tables.comparison_tables(data)
    ]
    trend_svg = charts.trends(data)
    verdict = data.verdict
    kind = verdict.outcome if verdict is not None else NO_VERDICT
    label, icon, summary = VERDICT_TEXT[kind]
    # Every attempt that failed, and whether a retry of the same pair later succeeded.
    failed_attempts = [
        (a, bool((r := data.result(a.device, a.variant)) and r.ok)) for a in data.attempts if a.status != "ok"
    ]
    flagged = [a for a in data.attempts if a.throttled or a.hot]
    template = _environment().get_template("report.html")
    return template.render(
        data=data,
        run=data.run,
        verdict=verdict,
        verdict_kind=kind,
        exit_code=None if verdict is None else verdict.exit_code,
        baseline_text=baseline_text(verdict),
        warnings=() if verdict is None else verdict.warnings,
        disturbances=() if verdict is None else verdict.disturbances,
        verdict_label=label,
        verdict_icon=icon,
        verdict_summary=summary,
        causes=cause_lines(data),
        max_causes=MAX_CAUSES,
        sections=sections,
        matrix=tables.headline_matrix(data),
        headline_class=HEADLINE_CLASS,
        synthesis_mode=synthesis_mode(data),
        regressions=sorted(data.comparisons, key=lambda c: c.outcome is None),  # regressions first
        trend_svg=Markup(trend_svg) if trend_svg else None,
        audio=audio,
        random_weights=data.random_weights,
        model_source_text=model_source_text(data.model_source),
        devices=data.devices,
        fact_rows=fact_rows(data.devices),
        failed_attempts=failed_attempts,
        flagged_attempts=flagged,
        claims=tables.article_claims(data),
        article_budgets=tables.ARTICLE_BUDGETS,
        article_title=tables.ARTICLE_TITLE,
        article_title_zh=tables.ARTICLE_TITLE_ZH,
        article_date=tables.ARTICLE_DATE,
        budgets=data.budgets,
        generated_at=generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        pass_mark=tables.PASS_MARK,
        fail_mark=tables.FAIL_MARK,
        disturbed_mark=tables.DISTURBED_MARK,
    )


def render_report(
    data: ReportData,
    out_dir: Path,
    *,
    embed_audio_max_bytes: int = DEFAULT_EMBED_AUDIO_MAX_BYTES,
    generated_at: Optional[str] = None,
) -> Path:
    """Write ``report.html`` (+ ``audio/``), ``comparison.csv`` and ``comparison.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    audio = collect_audio(data.audio, out_dir, data.variant_names, embed_max_bytes=embed_audio_max_bytes)
    html = render_html(data, audio, generated_at=generated_at)
    comparison = tables.comparison_tables(data)
    _write(out_dir / CSV_FILE, tables.to_csv(comparison))
    _write(out_dir / MARKDOWN_FILE, tables.to_markdown(comparison, title=f"edgebench run {data.run.run_id}"))
    report = out_dir / REPORT_FILE
    _write(report, html)
    return report


def render_run(store, run_id: str, out_dir: Path, **kwargs: Any) -> Path:
    """Render the report of ``run_id`` (with its stored verdict) from the store; returns the path of
    ``report.html``."""
    return render_report(load_report_data(store, run_id), out_dir, **kwargs)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
