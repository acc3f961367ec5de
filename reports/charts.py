"""Charts as inline SVG strings (matplotlib, no pyplot state, text drawn as paths so no font is needed).

Every function takes ``ReportData`` (and a device where the chart is per device) and returns an SVG
string ready to inline into the report, or ``None`` when there is nothing to draw. Labels are drawn
with a CJK-capable font when this machine has one; otherwise non-ASCII characters are replaced so no
glyph renders as a box.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib
from matplotlib.figure import Figure

from harness.vocabulary import LENGTH_CLASSES, latency_key
from reports.model import HEADLINE_CLASS, STAGES, ReportData, Sample

# Families that render Chinese, in order of preference.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)
PALETTE = (
    "#3b6fb6",
    "#e08a2c",
    "#3f9a5b",
    "#c8453c",
    "#8a63b8",
    "#8c6d4f",
    "#d16ba5",
    "#6f7a86",
    "#b5a22e",
    "#2ea7b5",
)
STAGE_COLOURS = {"frontend": "#9aa5b1", "acoustic": "#3b6fb6", "vocoder": "#e08a2c"}
BUDGET_COLOUR = "#c8453c"
INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e4e7eb"


@lru_cache(maxsize=1)
def cjk_family() -> Optional[str]:
    """The first installed font family that renders CJK, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for family in CJK_FAMILIES:
        if family in installed:
            return family
    return None


def label(text: str) -> str:
    """Text safe to draw: unchanged with a CJK font (or when ASCII), else non-ASCII replaced by '?'."""
    text = str(text)
    if text.isascii() or cjk_family() is not None:
        return text
    return "".join(ch if ord(ch) < 128 else "?" for ch in text)


def _rc() -> Dict[str, object]:
    family = [cjk_family(), "DejaVu Sans"] if cjk_family() else ["DejaVu Sans"]
    return {
        "svg.fonttype": "path",
        "svg.hashsalt": "edgebench",  # stable element ids: identical input, identical SVG
        "font.family": "sans-serif",
        "font.sans-serif": family,
        "font.size": 9.5,
        "axes.edgecolor": "#9aa5b1",
        "axes.labelcolor": INK,
        "axes.titlesize": 10.5,
        "axes.titleweight": "bold",
        "axes.titlecolor": INK,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": GRID,
        "grid.linewidth": 0.8,
        "xtick.color": MUTED,
        "ytick.color": MUTED,
        "xtick.labelcolor": INK,
        "ytick.labelcolor": INK,
        "legend.frameon": False,
        "figure.dpi": 72,
        "axes.unicode_minus": False,
    }


# boxplot's ``vert`` became ``orientation`` in matplotlib 3.10 (``vert`` is deprecated from 3.11).
_HORIZONTAL = (
    {"orientation": "horizontal"}
    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
    else {"vert": False}
)

_XML_HEAD = re.compile(r"^.*?(?=<svg)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SIZE_ATTR = re.compile(r'(<svg[^>]*?)\s(?:width|height)="[^"]*"')


def _to_svg(fig: Figure, title: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    svg = _COMMENT.sub("", _XML_HEAD.sub("", buf.getvalue(), count=1))
    # Drop the fixed size so CSS scales the chart to the column; the viewBox keeps the aspect ratio.
    for _ in range(2):
        svg = _SIZE_ATTR.sub(r"\1", svg, count=1)
    escaped = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escaped}" class="chart" ', 1)


def variant_colours(variants: Sequence[str]) -> Dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _ms(values: Iterable[float]) -> List[float]:
    return [v * 1000.0 for v in values]


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _device_samples(data: ReportData, device: str) -> List[Tuple[str, Tuple[Sample, ...]]]:
    return [(v, data.samples[(device, v)]) for v in data.variant_names if data.samples.get((device, v))]


def _budget_limit(data: ReportData, device: str, metric: str) -> Optional[float]:
    """The budget the stored verdict checked ``metric`` against on ``device`` (None: none, or no verdict)."""
    for c in data.verdict.checks if data.verdict is not None else ():
        if c.device == device and c.metric == metric:
            return c.limit
    return None


def _latency_limit(data: ReportData, device: str, length_class: str) -> Optional[float]:
    return _budget_limit(data, device, latency_key(length_class, "p90"))


# ------------------------------------------------------------------------------------------------


def latency_distributions(data: ReportData, device: str) -> Optional[str]:
    """Box plots of raw steady-state latency per variant, one panel per sentence length class."""
    per_variant = _device_samples(data, device)
    if not per_variant:
        return None
    classes = [lc for lc in LENGTH_CLASSES if any(s.length_class == lc for _, ss in per_variant for s in ss)]
    colours = variant_colours(data.variant_names)
    names = [v for v, _ in per_variant]
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(3.9 * len(classes) + 1.2, 0.42 * len(names) + 1.3))
        axes = fig.subplots(1, len(classes), sharey=True, squeeze=False)[0]
        for ax, lc in zip(axes, classes):
            series = [_ms(s.total_s for s in ss if s.length_class == lc) for _, ss in per_variant]
            positions = list(range(len(names), 0, -1))
            keep = [(p, s, v) for p, s, v in zip(positions, series, names) if s]
            bp = ax.boxplot(
                [s for _, s, _ in keep],
                positions=[p for p, _, _ in keep],
                **_HORIZONTAL,
                widths=0.55,
                patch_artist=True,
                showfliers=True,
                flierprops={"marker": ".", "markersize": 3, "markeredgecolor": MUTED},
                medianprops={"color": INK, "linewidth": 1.4},
                whiskerprops={"color": MUTED},
                capprops={"color": MUTED},
            )
            for patch, (_, _, v) in zip(bp["boxes"], keep):
                patch.set_facecolor(colours[v])
                patch.set_alpha(0.75)
                patch.set_edgecolor(colours[v])
            limit = _latency_limit(data, device, lc)
            if limit is not None:
                ax.axvline(limit * 1000, color=BUDGET_COLOUR, linestyle="--", linewidth=1.2)
                ax.text(
                    limit * 1000,
                    len(names) + 0.45,
                    f" p90 budget {limit * 1000:.0f} ms",
                    color=BUDGET_COLOUR,
                    fontsize=8,
                    va="bottom",
                )
            ax.set_title(f"{lc} sentences")
            ax.set_xlabel("latency per sentence (ms)")
            ax.set_xlim(left=0)
            ax.set_ylim(0.4, len(names) + 0.9)
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(list(range(len(names), 0, -1)), [label(v) for v in names])
        fig.subplots_adjust(wspace=0.08)
        return _to_svg(fig, f"Latency distribution per variant on {device}")


def stage_breakdown(data: ReportData, device: str) -> Optional[str]:
    """Median time per stage (frontend / acoustic / vocoder) per variant, stacked, per length class."""
    per_variant = _device_samples(data, device)
    if not per_variant:
        return None
    classes = [lc for lc in LENGTH_CLASSES if any(s.length_class == lc for _, ss in per_variant for s in ss)]
    names = [v for v, _ in per_variant]
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(3.9 * len(classes) + 1.2, 0.42 * len(names) + 1.5))
        axes = fig.subplots(1, len(classes), sharey=True, squeeze=False)[0]
        for ax, lc in zip(axes, classes):
            ys = list(range(len(names), 0, -1))
            left = [0.0] * len(names)
            for stage in STAGES:
                widths = []
                for _, ss in per_variant:
                    vals = [getattr(s, f"{stage}_s") for s in ss if s.length_class == lc]
                    widths.append(_median(vals) * 1000 if vals else 0.0)
                ax.barh(ys, widths, left=left, height=0.6, color=STAGE_COLOURS[stage], label=stage)
                left = [a + b for a, b in zip(left, widths)]
            for y, total in zip(ys, left):
                if total > 0:
                    ax.text(
                        total,
                        y,
                        f" {total:.0f} ms" if total >= 10 else f" {total:.1f} ms",
                        va="center",
                        fontsize=8,
                        color=INK,
                    )
            ax.set_xlim(0, max(left) * 1.22 if max(left) > 0 else 1)
            ax.set_title(f"{lc} sentences (medians)")
            ax.set_xlabel("ms")
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(list(range(len(names), 0, -1)), [label(v) for v in names])
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.02 + 0.25 / len(names))
        )
        fig.subplots_adjust(wspace=0.08)
        return _to_svg(fig, f"Time per stage per variant on {device}")


def latency_vs_length(data: ReportData, device: str) -> Optional[str]:
    """Latency against sentence length (phones), and real-time factor against audio length."""
    per_variant = _device_samples(data, device)
    if not per_variant:
        return None
    colours = variant_colours(data.variant_names)
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(12.5, 3.9))
        ax1, ax2 = fig.subplots(1, 2)
        for v, ss in per_variant:
            ax1.scatter(
                [s.phones for s in ss],
                _ms(s.total_s for s in ss),
                s=9,
                alpha=0.55,
                color=colours[v],
                label=label(v),
                linewidths=0,
            )
            pts = [(s.audio_s, s.total_s / s.audio_s) for s in ss if s.audio_s > 0]
            ax2.scatter(
                [a for a, _ in pts], [r for _, r in pts], s=9, alpha=0.55, color=colours[v], linewidths=0
            )
        ax1.set_xlabel("sentence length (phones)")
        ax1.set_ylabel("latency (ms)")
        ax1.set_title("Latency vs sentence length")
        ax1.set_xlim(left=0)
        ax1.set_ylim(bottom=0)
        ax2.axhline(1.0, color=BUDGET_COLOUR, linestyle="--", linewidth=1.1)
        ax2.text(ax2.get_xlim()[0], 1.0, " real time (RTF 1)", color=BUDGET_COLOUR, fontsize=8, va="bottom")
        ax2.set_xlabel("audio length (s)")
        ax2.set_ylabel("real-time factor (compute s / audio s)")
        ax2.set_title("Real-time factor vs audio length")
        ax2.set_ylim(bottom=0)
        ax1.legend(loc="upper left", markerscale=2.2, fontsize=8.5)
        fig.subplots_adjust(wspace=0.22)
        return _to_svg(fig, f"Latency and real-time factor against sentence length on {device}")


#: Phase marks of a memory timeline: worker mark -> (marker, legend text).
TIMELINE_MARKS = (
    ("import", "o", "torch + model code imported"),
    ("load", "s", "weights loaded"),
    ("first_inference", "D", "first inference done"),
    ("warmup", "^", "steady state starts"),
    ("steady", "v", "steady state ends"),
)


def memory_timelines(data: ReportData, device: str) -> Optional[str]:
    """RSS over time of one measured process per variant (the first one with a timeline), as the agent
    polled it from outside, with the phases marked; the dashed line is the peak-RSS budget."""
    chosen = {}
    for p in data.processes_of(device):
        if p.memory_timeline and p.memory_timeline.get("t_s") and p.variant not in chosen:
            chosen[p.variant] = p.memory_timeline
    if not chosen:
        return None
    colours = variant_colours(data.variant_names)
    mib = 2**20
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(12.5, 3.9))
        ax = fig.subplots()
        top = 0.0
        for variant, tl in chosen.items():
            t, rss = tl["t_s"], [r / mib for r in tl["rss_bytes"]]
            top = max(top, max(rss))
            ax.plot(t, rss, color=colours[variant], linewidth=1.3, label=label(variant))
            for key, marker, _ in TIMELINE_MARKS:
                at = (tl.get("marks") or {}).get(key)
                if at is None or not t:
                    continue
                i = min(range(len(t)), key=lambda j: abs(t[j] - at))
                ax.plot([at], [rss[i]], marker=marker, color=colours[variant], markersize=6, linestyle="")
        limit = _budget_limit(data, device, "peak_rss_bytes")
        if limit is not None:
            top = _budget_line(ax, "y", limit / mib, top, "peak RSS budget", "MiB")
        for _, marker, text in TIMELINE_MARKS:
            ax.plot([], [], marker=marker, color="#555555", linestyle="", label=text)
        ax.set_xlabel("seconds since the process started")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("Memory of one process per variant")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0, top=top * 1.08 if top else None)
        ax.legend(loc="lower right", fontsize=7.5, ncol=2)
        return _to_svg(fig, f"Resident memory over time of one process per variant on {device}")


def pareto(data: ReportData, device: str) -> Optional[str]:
    """Acoustic model size vs short-sentence p90, coloured by mel distortion; non-dominated ones joined."""
    pts = []
    for r in data.results_for(device):
        size, p90 = r.sizes.get("acoustic"), r.value(latency_key(HEADLINE_CLASS, "p90"))
        if size and p90:
            pts.append((r.variant, size / 1e6, p90 * 1000, r.mcd_db))
    if not pts:
        return None
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(12.5, 4.6))
        ax = fig.subplots()
        fidelity = [p[3] for p in pts if p[3] is not None]
        kwargs = {}
        if fidelity:
            kwargs = {"c": [p[3] if p[3] is not None else min(fidelity) for p in pts], "cmap": "viridis_r"}
        else:
            kwargs = {"color": PALETTE[0]}
        sc = ax.scatter(
            [p[1] for p in pts],
            [p[2] for p in pts],
            s=90,
            edgecolors="white",
            linewidths=1.2,
            zorder=3,
            **kwargs,
        )
        _annotate(ax, [(name, x, y) for name, x, y, _ in pts])
        front = sorted(pts, key=lambda p: (p[1], p[2]))
        frontier, best = [], float("inf")
        for p in front:
            if p[2] < best:
                frontier.append(p)
                best = p[2]
        if len(frontier) > 1:
            ax.plot(
                [p[1] for p in frontier],
                [p[2] for p in frontier],
                color=MUTED,
                linestyle=":",
                linewidth=1.2,
                zorder=2,
                label="Pareto front (smaller and faster)",
            )
        lat_limit = _latency_limit(data, device, HEADLINE_CLASS)
        size_limit = _budget_limit(data, device, "size_acoustic_bytes")
        xmax = _budget_line(
            ax, "x", size_limit and size_limit / 1e6, max(p[1] for p in pts), "size budget", "MB"
        )
        ymax = _budget_line(
            ax, "y", lat_limit and lat_limit * 1000, max(p[2] for p in pts), "p90 budget", "ms"
        )
        ax.set_xlim(0, xmax * 1.08)
        ax.set_ylim(0, ymax * 1.12)
        ax.set_xlabel("acoustic model size (MB; the vocoder is the same in every variant)")
        ax.set_ylabel(f"{HEADLINE_CLASS}-sentence p90 (ms)")
        ax.set_title("Size vs latency vs fidelity")
        if fidelity:
            cb = fig.colorbar(sc, ax=ax, shrink=0.85, pad=0.02)
            cb.set_label("mel distortion (dB, lower is better)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8.5)
        return _to_svg(fig, f"Pareto view of size, latency and fidelity on {device}")


def _budget_line(ax, axis: str, limit: Optional[float], data_max: float, name: str, unit: str) -> float:
    """Draw a budget line when it is near the data; one far beyond it (the tiny preset's 0.5 MB model
    against a 100 MB budget) is only named in the legend, so the points are not squashed into a corner.
    Returns the axis maximum to use."""
    style = {"color": BUDGET_COLOUR, "linestyle": "--" if axis == "y" else "-.", "linewidth": 1.1}
    if limit is None:
        return data_max
    if limit > 2.5 * data_max:
        ax.plot([], [], label=f"{name} {limit:g} {unit} (off the chart: every variant is within it)", **style)
        return data_max
    (ax.axhline if axis == "y" else ax.axvline)(limit, label=f"{name} {limit:g} {unit}", **style)
    return max(data_max, limit)


def _annotate(ax, points: Sequence[Tuple[str, float, float]]) -> None:
    """Label each point, moving a label below its point when it would sit on an earlier one."""
    xs = [x for _, x, _ in points] + [0.0]
    ys = [y for _, _, y in points] + [0.0]
    xspan = (max(xs) - min(xs)) or 1.0
    yspan = (max(ys) - min(ys)) or 1.0
    placed: List[Tuple[float, float]] = []
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        fx, fy = x / xspan, y / yspan
        clash = any(abs(fx - px) < 0.12 and abs(fy - py) < 0.07 for px, py in placed)
        offset = (7, -13) if clash else (7, 5)
        ax.annotate(label(name), (x, y), xytext=offset, textcoords="offset points", fontsize=8.5, color=INK)
        placed.append((fx, fy + (-0.05 if clash else 0.0)))


def trends(data: ReportData) -> Optional[str]:
    """Short-sentence p90 over the nightly history, one panel per device, budget line dashed."""
    if not data.history:
        return None
    runs: List[str] = []
    for p in sorted(data.history, key=lambda p: (p.started_at, p.run_id)):
        if p.run_id not in runs:
            runs.append(p.run_id)
    if len(runs) < 2:
        return None
    devices = [d for d in data.device_names if any(p.device == d for p in data.history)]
    colours = variant_colours(
        data.variant_names + tuple(sorted({p.variant for p in data.history} - set(data.variant_names)))
    )
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(12.5, 3.1 * len(devices) + 0.4))
        axes = fig.subplots(len(devices), 1, squeeze=False, sharex=True)[:, 0]
        x_of = {r: i for i, r in enumerate(runs)}
        for ax, device in zip(axes, devices):
            variants = [
                v for v in colours if any(p.device == device and p.variant == v for p in data.history)
            ]
            for v in variants:
                pts = sorted(
                    (x_of[p.run_id], p.value_s * 1000)
                    for p in data.history
                    if p.device == device and p.variant == v
                )
                ax.plot(
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    marker="o",
                    markersize=3.5,
                    linewidth=1.5,
                    color=colours[v],
                    label=label(v),
                )
            limit = _latency_limit(data, device, HEADLINE_CLASS)
            if limit is not None:
                ax.axhline(limit * 1000, color=BUDGET_COLOUR, linestyle="--", linewidth=1.1)
                ax.text(
                    0,
                    limit * 1000,
                    f" budget {limit * 1000:.0f} ms",
                    color=BUDGET_COLOUR,
                    fontsize=8,
                    va="bottom",
                )
            if data.run.run_id in x_of:
                ax.axvspan(
                    x_of[data.run.run_id] - 0.35, x_of[data.run.run_id] + 0.35, color="#fff3c4", zorder=0
                )
            ax.set_title(f"{label(device)}: {HEADLINE_CLASS}-sentence p90 per nightly run")
            ax.set_ylabel("ms")
            ax.set_ylim(bottom=0)
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8.5)
        ticks = list(range(len(runs)))
        axes[-1].set_xticks(ticks, [label(r) for r in runs], rotation=30, ha="right", fontsize=8)
        return _to_svg(fig, "Nightly trend of the headline latency")


def roofline(data: ReportData, device: str) -> Optional[str]:
    """Achieved MAC rate against MACs per operator call, log-log, with the device's two roofs: the
    dispatch roof (a call's overhead caps the rate at MACs-per-call / seconds-per-call: the diagonal) and
    the compute roofs (the fp32 and int8 matrix-product peaks: the horizontals). A point near the diagonal
    spends its time in calls, one near a horizontal in arithmetic."""
    phases = [p for p in data.phases_of(device) if p.ops_counted and p.placement.ops > 0 and p.placement.macs]
    bounds = data.explanation.bounds.get(device) if data.explanation is not None else None
    if not phases or bounds is None:
        return None
    colours = variant_colours(data.variant_names)
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(12.5, 4.8))
        ax = fig.subplots()
        xs = [p.placement.macs / p.placement.ops for p in phases]
        lo, hi = min(xs) / 10, max(max(xs) * 10, bounds.mac_per_s_int8 * bounds.s_per_op * 3)
        grid = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        roofs = ((bounds.mac_per_s_fp32, "fp32", "-"), (bounds.mac_per_s_int8, "int8", "--"))
        for peak, name, style in roofs:
            ax.plot(grid, [min(peak, x / bounds.s_per_op) for x in grid], color=MUTED, linestyle=style,
                    linewidth=1.3, label=f"{name} roof: {peak / 1e9:.1f} GMAC/s peak, "
                                         f"{bounds.s_per_op * 1e6:.1f} µs per call")
        marker = {"acoustic": "o", "vocoder": "s"}
        for p, x in zip(phases, xs):
            ax.scatter([x], [p.placement.achieved_mac_per_s], s=80, marker=marker.get(p.phase, "o"),
                       color=colours.get(p.variant, PALETTE[0]), edgecolors="white", linewidths=1.0, zorder=3)
        _annotate(ax, [(f"{p.variant} {p.phase}", x, p.placement.achieved_mac_per_s)
                       for p, x in zip(phases, xs)])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("multiply-accumulates per operator call (counted)")
        ax.set_ylabel("achieved MAC/s")
        ax.set_title(f"Each phase against {device}'s measured limits (○ acoustic, □ vocoder)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8.5)
        return _to_svg(fig, f"Roofline of {device}: achieved rate against work per call")
