"""Comparison tables built from ``ReportData``: one model rendered three ways (HTML, CSV, Markdown).

A ``ComparisonTable`` has one row per variant and runtime of one device (``quantized`` on torch,
``quantized@onnxruntime`` on ONNX Runtime: ``variants.runtimes``); every ``Cell`` carries its raw value (the
metric's unit, for CSV), its display text, the stored verdict's budget check (pass / fail / disturbed /
none) with the budget shown, and the ratio against ``original`` on torch on the same device (on every
runtime: "would ORT meet the budget where torch does not" reads against one reference). Columns are
``harness.vocabulary`` metrics: a column's key is the metric's key and the CSV header. Status is never
colour only: cells carry ✓ / ✗ / ⚠ too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence, Tuple

from harness import vocabulary as vocab
from harness.vocabulary import LENGTH_CLASSES, METRICS, latency_key, ttfa_key
from reports.model import HEADLINE_CLASS, HEADLINE_METRIC, REFERENCE_VARIANT, ReportData, VariantResult
from variants.runtimes import split_measured

PASS_MARK = "✓"
FAIL_MARK = "✗"
DISTURBED_MARK = "⚠"
#: A budget check's status (harness.vocabulary.CHECK_STATUSES) as a cell status; skipped: no mark.
CELL_STATUS = {
    vocab.CHECK_PASS: "pass",
    vocab.CHECK_FAIL: "fail",
    vocab.CHECK_NOT_MEASURED: "fail",
    vocab.CHECK_DISTURBED: "disturbed",
}

# The seed article's method table ("多方案对比分析") and budgets: what stakeholders compare against.
# size_change / speed_change are the article's relative claims (-0.40 = "↓ 40 %", +1.30 = "↑ 130 %").
ARTICLE_TITLE = "Sambert model pruning and compression: can it run on edge devices?"
ARTICLE_TITLE_ZH = "Sambert模型剪枝压缩:在边缘设备上运行的可能性"
ARTICLE_DATE = "2026-01-09"


@dataclass(frozen=True)
class ArticleMethod:
    variant: str
    name: str
    name_zh: str
    size_change: Optional[float]  # None: the article makes no claim (a row edgebench adds)
    speed_change: Optional[float]
    quality: str  # the article's "音质影响"


ARTICLE_METHODS: Tuple[ArticleMethod, ...] = (
    ArticleMethod("unstructured", "Unstructured pruning", "非结构化剪枝", -0.40, 0.15, "small"),
    ArticleMethod("pruned", "Structured pruning", "结构化剪枝", -0.60, 1.30, "medium"),
    ArticleMethod("quantized", "Dynamic int8 quantization", "动态量化", -0.65, 2.00, "small"),
    ArticleMethod("distilled", "Knowledge distillation", "知识蒸馏", -0.50, 1.80, "small"),
    ArticleMethod("pruned+quantized", "Pruning + int8", "剪枝+量化", -0.70, 2.20, "acceptable"),
    # Not in the article: what edgebench's rewrite of the same weights buys on its own (recipe 'optimize').
    ArticleMethod("optimized", "Implementation rewrite (edgebench)", "实现优化", None, None, "none"),
)
ARTICLE_BUDGETS: Tuple[Tuple[str, str], ...] = (
    ("Model size", "≤ 100 MB (torch.save state_dict)"),
    ("Latency, short sentence", "≤ 800 ms"),
    ("Peak memory", "≤ 512 MB RSS"),
    ("Quality", "MOS ≥ 3.8"),
    ("Emotion", "identifiability > 90 %"),
)


# ------------------------------------------------------------------------------------------------
# Formatting (one place; SI in, text out)
# ------------------------------------------------------------------------------------------------


def _three_figures(x: float) -> str:
    return f"{x:.2f}" if x < 10 else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def _scaled(v: Optional[float], units: Sequence[Tuple[str, float]], base: str) -> str:
    """``v`` in the largest of ``units`` (name, scale) it reaches, about three significant figures."""
    if v is None:
        return "—"
    for unit, scale in units:
        if v >= scale:
            return f"{_three_figures(v / scale)} {unit}".rstrip()
    return f"{v:.0f} {base}".rstrip()


def fmt_seconds(v: Optional[float]) -> str:
    if v is not None and v < 1.0:
        return f"{_three_figures(v * 1000.0)} ms"
    return "—" if v is None else f"{v:.2f} s"


def fmt_bytes(v: Optional[float]) -> str:
    return _scaled(v, (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)), "B")


def fmt_bytes_iec(v: Optional[float]) -> str:
    """Memory in binary units (the gate budgets peak RSS in MiB)."""
    return _scaled(v, (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)), "B")


def fmt_count(v: Optional[float]) -> str:
    return _scaled(v, (("G", 1e9), ("M", 1e6), ("k", 1e3)), "")


def fmt_ratio_pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def fmt_plain(v: Optional[float], digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


#: A metric's unit (harness.vocabulary) -> its formatter; bytes budgeted in MiB are shown in binary units.
FORMATTERS: Mapping[str, Callable[[Optional[float]], str]] = {
    "s": fmt_seconds,
    "bytes": fmt_bytes,
    "count": fmt_count,
    "fraction": fmt_ratio_pct,
    "x": lambda v: fmt_plain(v, 3),
    "dB": lambda v: "—" if v is None else f"{v:.2f} dB",
    "score": lambda v: fmt_plain(v, 2),
}


def fmt_metric(metric: str, v: Optional[float]) -> str:
    m = METRICS[metric]
    if m.unit == "bytes" and m.display_unit == "MiB":
        return fmt_bytes_iec(v)
    return FORMATTERS[m.unit](v)


def fmt_limit(metric: str, limit: float) -> str:
    op = "≤" if METRICS[metric].lower_is_better else "≥"
    return f"{op} {fmt_metric(metric, limit)}"


# ------------------------------------------------------------------------------------------------
# The comparison table
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # a harness.vocabulary.METRICS key: the CSV header
    label: str  # HTML / Markdown header
    group: str  # the spanning header above it
    ratio: Optional[str] = None  # "speedup" | "pct": how the note compares against original

    @property
    def metric(self) -> vocab.Metric:
        return METRICS[self.key]


@dataclass(frozen=True)
class Cell:
    value: Optional[float]
    text: str
    status: Optional[str] = None  # "pass" | "fail" | "disturbed" | None (no budget)
    budget: Optional[str] = None  # "≤ 800 ms"
    note: Optional[str] = None  # ratio vs original, or n
    ratio: Optional[float] = None  # the note's number (speed-up x or fraction of original)
    disturbed: Optional[str] = None  # what disturbed the measurement this cell's budget check judged

    @property
    def mark(self) -> str:
        return {"pass": PASS_MARK, "fail": FAIL_MARK, "disturbed": DISTURBED_MARK}.get(self.status or "", "")


@dataclass(frozen=True)
class TableRow:
    variant: str
    status: str
    error: Optional[str]
    cells: Tuple[Cell, ...]
    throttled: bool = False
    hot: bool = False
    disturbed: Optional[str] = None  # what disturbed the pair's measurement

    @property
    def name(self) -> str:
        """The variant without its runtime (``quantized`` of ``quantized@onnxruntime``)."""
        return split_measured(self.variant)[0]

    @property
    def runtime(self) -> str:
        return split_measured(self.variant)[1]

    @property
    def failed_budgets(self) -> int:
        return sum(1 for c in self.cells if c.status == "fail")


@dataclass(frozen=True)
class ComparisonTable:
    device: str
    columns: Tuple[Column, ...]
    rows: Tuple[TableRow, ...]

    @property
    def groups(self) -> Tuple[Tuple[str, int], ...]:
        """(group label, column span) in order, for the two-level header."""
        out: list = []
        for c in self.columns:
            if out and out[-1][0] == c.group:
                out[-1][1] += 1
            else:
                out.append([c.group, 1])
        return tuple((g, n) for g, n in out)


def comparison_columns(length_classes: Sequence[str] = LENGTH_CLASSES,
                       streaming: bool = False) -> Tuple[Column, ...]:
    """The comparison table's columns; ``streaming`` (a pair measured streaming synthesis) adds the time to
    first audio per length class and the real-time margin."""
    cols = [
        Column("size_acoustic_bytes", "acoustic", "Size"),
        Column("size_vocoder_bytes", "vocoder", "Size"),
        Column("size_total_bytes", "total", "Size", ratio="pct"),
        Column("params", "total", "Params", ratio="pct"),
    ]
    for lc in length_classes:
        cols.append(Column(latency_key(lc, "p50"), "p50", f"Latency · {lc}"))
        cols.append(Column(latency_key(lc, "p90"), "p90", f"Latency · {lc}", ratio="speedup"))
    if streaming:
        for lc in length_classes:
            cols.append(Column(ttfa_key(lc, "p50"), "p50", f"First audio · {lc}"))
            cols.append(Column(ttfa_key(lc, "p90"), "p90", f"First audio · {lc}", ratio="speedup"))
        cols.append(Column("rt_margin_s", "worst chunk", "Real-time margin"))
    cols += [
        Column("rtf", "RTF", "Runtime", ratio="speedup"),
        Column("first_inference_s", "first inf.", "Runtime"),
        Column("load_s", "load", "Runtime"),
        Column("peak_rss_bytes", "peak RSS", "Memory", ratio="pct"),
        Column("mcd_db", "mel dist.", "Quality"),
        Column("emotion_id_accuracy", "emotion ID", "Quality"),
        Column("mos", "MOS", "Quality"),
    ]
    return tuple(cols)


def _ratio(
    col: Column, value: Optional[float], ref: Optional[float]
) -> Tuple[Optional[float], Optional[str]]:
    if col.ratio is None or value is None or ref is None or value <= 0 or ref <= 0:
        return None, None
    if col.ratio == "speedup":
        x = ref / value
        return x, f"{x:.2f}×"
    x = value / ref
    return x, f"{x * 100:.0f} %"


def _cell(data: ReportData, r: VariantResult, col: Column, ref: Optional[VariantResult]) -> Cell:
    value = r.value(col.key) if r.ok or r.latency or r.sizes else None
    text = fmt_metric(col.key, value)
    check = data.verdict.check(r.device, r.variant, col.key) if data.verdict is not None else None
    status = budget = disturbed = None
    if check is not None:
        status = CELL_STATUS.get(check.status)
        budget = fmt_limit(col.key, check.limit)
        disturbed = check.disturbed
    ratio = note = None
    if ref is not None and ref.variant != r.variant:
        ratio, note = _ratio(col, value, ref.value(col.key))
    m = col.metric
    if m.stat == "p50" and m.length_class in r.latency:
        note = f"n = {r.latency[m.length_class].n}"
    if col.key == "mos" and r.mos_n:
        note = f"{r.mos_n} listeners"
    return Cell(value, text, status=status, budget=budget, note=note, ratio=ratio, disturbed=disturbed)


def comparison_table(data: ReportData, device: str) -> ComparisonTable:
    results = data.results_for(device)
    present = [lc for lc in LENGTH_CLASSES if any(lc in r.latency for r in results)] or [HEADLINE_CLASS]
    columns = comparison_columns(present, streaming=any(r.stream_chunk_frames for r in results))
    ref = data.result(device, REFERENCE_VARIANT)
    ref = ref if ref is not None and ref.ok else None
    rows = tuple(
        TableRow(
            variant=r.variant,
            status=r.status,
            error=r.error,
            throttled=r.throttled,
            hot=r.hot,
            disturbed=r.disturbed,
            cells=tuple(_cell(data, r, c, ref) for c in columns),
        )
        for r in results
    )
    return ComparisonTable(device=device, columns=columns, rows=rows)


def comparison_tables(data: ReportData) -> Tuple[ComparisonTable, ...]:
    return tuple(comparison_table(data, d) for d in data.device_names if data.results_for(d))


# ------------------------------------------------------------------------------------------------
# Cross-device matrix of the headline metric (short-sentence p90)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    metric: str  # a harness.vocabulary.METRICS key
    devices: Tuple[str, ...]
    rows: Tuple[Tuple[str, Tuple[Cell, ...]], ...]  # (variant, one cell per device)


def headline_matrix(data: ReportData, metric: str = HEADLINE_METRIC) -> Matrix:
    devices = data.device_names  # planned devices too: a device with nothing measured shows "not run"
    col = Column(metric, METRICS[metric].stat or "", "", ratio="speedup")
    rows = []
    for variant in data.variant_names:
        cells = []
        for device in devices:
            r = data.result(device, variant)
            if r is None:
                cells.append(Cell(value=None, text="not run"))
                continue
            ref = data.result(device, REFERENCE_VARIANT)
            cell = _cell(data, r, col, ref if ref is not None and ref.ok else None)
            if not r.ok and cell.value is None:
                cell = Cell(value=None, text=r.status, status="fail")
            cells.append(cell)
        rows.append((variant, tuple(cells)))
    return Matrix(metric=metric, devices=devices, rows=tuple(rows))


# ------------------------------------------------------------------------------------------------
# Measured vs the article's claims
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One device's measured change of a variant against original (short-sentence p90 for speed)."""

    device: str
    size: str
    speed: str
    size_met: Optional[bool]
    speed_met: Optional[bool]


@dataclass(frozen=True)
class ClaimRow:
    method: ArticleMethod
    claimed_size: str
    claimed_speed: str
    measured: Tuple[Optional[Measured], ...]  # one per ``ClaimTable.devices``; None: not measured


@dataclass(frozen=True)
class ClaimTable:
    devices: Tuple[str, ...]
    rows: Tuple[ClaimRow, ...]


def _change(x: Optional[float]) -> str:
    if x is None:
        return "—"
    if round(x * 100) == 0:
        return "± 0 %"
    arrow = "↓" if x < 0 else "↑"
    return f"{arrow} {abs(x) * 100:.0f} %"


def _measured(data: ReportData, device: str, m: ArticleMethod) -> Optional[Measured]:
    ref, r = data.result(device, REFERENCE_VARIANT), data.result(device, m.variant)
    if ref is None or r is None or not ref.ok or not r.ok:
        return None
    size_change = speed_change = None
    if r.size_bytes and ref.size_bytes:
        size_change = r.size_bytes / ref.size_bytes - 1.0
    rp, op = r.value(HEADLINE_METRIC), ref.value(HEADLINE_METRIC)
    if rp and op:
        speed_change = op / rp - 1.0
    return Measured(
        device=device,
        size=_change(size_change),
        speed=_change(speed_change),
        size_met=None if size_change is None or m.size_change is None else size_change <= m.size_change,
        speed_met=None if speed_change is None or m.speed_change is None else speed_change >= m.speed_change,
    )


def article_claims(data: ReportData) -> ClaimTable:
    """The article's method table next to what this run measured on each device (vs original there)."""
    rows = []
    devices = tuple(d for d in data.device_names if (r := data.result(d, REFERENCE_VARIANT)) and r.ok)
    for m in ARTICLE_METHODS:
        measured = tuple(_measured(data, d, m) for d in devices)
        if any(x is not None for x in measured):
            rows.append(ClaimRow(m, _change(m.size_change), _change(m.speed_change), measured))
    return ClaimTable(devices=devices, rows=tuple(rows))


# ------------------------------------------------------------------------------------------------
# Exports
# ------------------------------------------------------------------------------------------------


def _csv_number(v: Optional[float]) -> str:
    if v is None:
        return ""
    return repr(int(v)) if float(v).is_integer() else f"{v:.6g}"


def to_csv(tables: Iterable[ComparisonTable]) -> str:
    """All devices in one CSV: raw SI numbers, ratios against original, and the failed budgets."""
    tables = list(tables)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not tables:
        writer.writerow(["device", "variant", "status"])
        return buf.getvalue()
    # Columns can differ between devices (length classes measured); take the union in order.
    columns: list = []
    for t in tables:
        for c in t.columns:
            if c.key not in [x.key for x in columns]:
                columns.append(c)
    header = ["device", "variant", "status", "runtime"]
    for c in columns:
        header.append(c.key)
        if c.ratio == "speedup":
            header.append(f"{c.key}_speedup_x")
        elif c.ratio == "pct":
            header.append(f"{c.key}_fraction_of_original")
    header += ["budget_failures", "budget_disturbed", "throttled", "hot", "disturbed", "error"]
    writer.writerow(header)
    for t in tables:
        index = {c.key: i for i, c in enumerate(t.columns)}
        for row in t.rows:
            line = [t.device, row.variant, row.status, row.runtime]
            failures, disturbed = [], []
            for c in columns:
                cell = row.cells[index[c.key]] if c.key in index else None
                line.append(_csv_number(cell.value) if cell else "")
                if c.ratio is not None:
                    line.append(_csv_number(cell.ratio) if cell and cell.ratio is not None else "")
                if cell is not None and cell.status == "fail":
                    failures.append(f"{c.key} {cell.budget}")
                if cell is not None and cell.status == "disturbed":
                    disturbed.append(f"{c.key} {cell.budget}")
            line += ["; ".join(failures), "; ".join(disturbed), str(row.throttled).lower(),
                     str(row.hot).lower(), row.disturbed or "", row.error or ""]  # fmt: skip
            writer.writerow(line)
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(tables: Iterable[ComparisonTable], title: Optional[str] = None) -> str:
    """One Markdown table per device; every checked cell shows ✓/✗ and its budget."""
    lines = []
    if title:
        lines += [f"# {_md_escape(title)}", ""]
    for t in tables:
        lines += [f"## {_md_escape(t.device)}", ""]
        header = ["variant"] + [f"{c.group} {c.label}" for c in t.columns]
        lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        lines.append("|" + "---|" + "---:|" * len(t.columns))
        for row in t.rows:
            name = row.variant if row.status == "ok" else f"{row.variant} ({row.status})"
            if row.throttled or row.hot:
                name += " ⚠"
            if row.disturbed:
                name += " (disturbed)"
            parts = [name]
            for cell in row.cells:
                text = cell.text
                if cell.mark:
                    why = ", disturbed" if cell.status == "disturbed" else ""
                    text = f"{cell.mark} {text} ({cell.budget}{why})"
                if cell.note:
                    text += f" · {cell.note}"
                parts.append(text)
            lines.append("| " + " | ".join(_md_escape(p) for p in parts) + " |")
        lines.append("")
    lines.append(
        "✓ budget met · ✗ budget failed · ⚠ over budget on a disturbed measurement (measure again) · "
        "× (speed-up) and % are against `original` on the same device · ⚠ after a variant: throttled or hot"
    )
    return "\n".join(lines) + "\n"
