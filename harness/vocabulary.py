"""The one vocabulary of gate, store, report and exports: which metrics exist and what a verdict can say.

Standard library only: ``reports`` imports it without torch, pandas or the store.

**Metrics** (``METRICS``, key -> ``Metric``). A metric's ``key`` names it everywhere: verdict checks, report
cells, CSV columns. Its value is kept in ``unit`` (SI: seconds, bytes, ...); ``display_unit`` and ``scale``
say how budgets and gate messages show it (``display = value / scale``: 0.8 s is 800 ms). ``budget_key`` is
its name in ``budgets.toml`` (None: it cannot be budgeted), in display units. ``columns`` and ``combine``
say how to read it from ``results.summary_df`` rows of one (device, variant) (``value_of``). ``disturbable``:
interference from other load on the device can inflate it (timing; not a process's own peak memory, size
or quality).

**Outcomes** (``OUTCOMES``, most serious first) are what a verdict says, each with its exit code. **Check
statuses** (``CHECK_STATUSES``) are what one budget check says; **comparison verdicts**
(``COMPARISON_VERDICTS``) what one regression comparison says. Each status names the outcome it gives the
verdict (None: none) and how JUnit XML shows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

MB = 1e6
MIB = 2**20
LENGTH_CLASSES = ("short", "medium", "long")
LATENCY_STATS = ("p50", "p90", "p99")
LOWER, HIGHER = "lower", "higher"

# How ``value_of`` reads a metric from the summary rows of one pair.
FROM_CLASS_ROW = "class_row"  # ``columns[0]`` of the row of ``length_class``
FROM_PAIR = "pair"  # ``columns[0]``: the same on every row of the pair (header, artifact, MOS)
SUM = "sum"  # the sum of ``columns`` (None when all are missing)
AUDIO_WEIGHTED = "audio_weighted"  # sum(columns[0] * audio_s) / sum(audio_s) over the rows
MINIMUM = "min"  # the smallest columns[0] over the rows (None when every row lacks it)


@dataclass(frozen=True)
class Metric:
    """One quantity measured (or known) for a (device, variant) pair."""

    key: str
    label: str
    unit: str  # of the stored value: "s", "bytes", "count", "x", "fraction", "score", "dB"
    better: str  # LOWER or HIGHER
    description: str
    display_unit: str = ""
    scale: float = 1.0  # display value = value / scale
    budget_key: str | None = None
    default_budget: float | None = None  # in display units
    optional: bool = False  # budgeted but without a value: the check is skipped, not "not measured"
    disturbable: bool = False
    length_class: str | None = None
    stat: str | None = None
    columns: tuple[str, ...] = ()
    combine: str = FROM_PAIR

    @property
    def lower_is_better(self) -> bool:
        return self.better == LOWER

    @property
    def op(self) -> str:
        return "<=" if self.better == LOWER else ">="

    def meets(self, value: float, limit: float) -> bool:
        """Does ``value`` meet the budget ``limit`` (both in ``unit``)?"""
        return value <= limit if self.better == LOWER else value >= limit

    def to_display(self, value: float) -> float:
        return value / self.scale

    def from_display(self, value: float) -> float:
        return value * self.scale

    def display_text(self, value: float | None) -> str:
        """``value`` (in ``unit``) in display units, about four significant figures: ``812.3 ms``."""
        if value is None:
            return "—"
        return f"{self.to_display(value):.4g} {self.display_unit}".rstrip()

    def value_of(self, rows: Sequence[Mapping[str, Any]]) -> float | None:
        """This metric from the ``results.summary_df`` rows (as dicts) of one (device, variant)."""
        if not rows:
            return None
        if self.combine == FROM_CLASS_ROW:
            row = next((r for r in rows if r.get("length_class") == self.length_class), None)
            return None if row is None else _number(row.get(self.columns[0]))
        if self.combine == FROM_PAIR:
            return _number(rows[0].get(self.columns[0]))
        if self.combine == SUM:
            parts = [_number(rows[0].get(c)) for c in self.columns]
            present = [p for p in parts if p is not None]
            return sum(present) if present else None
        if self.combine == AUDIO_WEIGHTED:
            pairs = [(_number(r.get(self.columns[0])), _number(r.get("audio_s"))) for r in rows]
            pairs = [(v, a) for v, a in pairs if v is not None and a is not None and a > 0]
            audio = sum(a for _, a in pairs)
            return sum(v * a for v, a in pairs) / audio if audio > 0 else None
        if self.combine == MINIMUM:
            values = [v for v in (_number(r.get(self.columns[0])) for r in rows) if v is not None]
            return min(values) if values else None
        raise ValueError(f"metric {self.key!r}: unknown combine {self.combine!r}")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def latency_key(length_class: str, stat: str = "p90") -> str:
    """The key of a latency metric: ``latency_short_p90_s``."""
    return f"latency_{length_class}_{stat}_s"


def _latency(length_class: str, stat: str, default_budget: float | None = None) -> Metric:
    return Metric(
        latency_key(length_class, stat), f"Latency {stat} ({length_class})", "s", LOWER,
        f"{stat} of total synthesis time per sentence, {length_class} sentences (nearest rank)",
        display_unit="ms", scale=1e-3,
        budget_key=None if stat == "p99" else f"latency_{stat}_ms_{length_class}",
        default_budget=default_budget, disturbable=True, length_class=length_class, stat=stat,
        columns=(stat,), combine=FROM_CLASS_ROW,
    )  # fmt: skip


def ttfa_key(length_class: str, stat: str = "p90") -> str:
    """The key of a time-to-first-audio metric: ``ttfa_short_p90_s``."""
    return f"ttfa_{length_class}_{stat}_s"


def _ttfa(length_class: str, stat: str) -> Metric:
    return Metric(
        ttfa_key(length_class, stat), f"Time to first audio {stat} ({length_class})", "s", LOWER,
        f"{stat} of the time from text in to the first audio chunk out, {length_class} sentences (streaming "
        "synthesis; the whole synthesis time when not streaming)",
        display_unit="ms", scale=1e-3, budget_key=f"ttfa_{stat}_ms_{length_class}", disturbable=True,
        length_class=length_class, stat=stat, columns=(f"ttfa_{stat}",), combine=FROM_CLASS_ROW,
    )  # fmt: skip


#: The one metric registry, in display order.
METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("size_acoustic_bytes", "Size (acoustic)", "bytes", LOWER,
               "acoustic model size, torch.save(state_dict) bytes (onnxruntime: its ONNX graphs' bytes)",
               display_unit="MB", scale=MB,
               budget_key="acoustic_size_mb", default_budget=100.0, columns=("size_acoustic_bytes",)),
        Metric("size_vocoder_bytes", "Size (vocoder)", "bytes", LOWER,
               "vocoder size, torch.save(state_dict) bytes (onnxruntime: its ONNX graph's bytes)",
               display_unit="MB", scale=MB,
               budget_key="vocoder_size_mb", columns=("size_vocoder_bytes",)),
        Metric("size_total_bytes", "Size (total)", "bytes", LOWER, "acoustic model + vocoder size",
               display_unit="MB", scale=MB, columns=("size_acoustic_bytes", "size_vocoder_bytes"),
               combine=SUM),
        Metric("params", "Parameters", "count", LOWER, "acoustic model + vocoder parameters",
               display_unit="M", scale=1e6, columns=("params_acoustic", "params_vocoder"), combine=SUM),
        _latency("short", "p90", 800.0),
        _latency("medium", "p90"),
        _latency("long", "p90"),
        _latency("short", "p50"),
        _latency("medium", "p50"),
        _latency("long", "p50"),
        _latency("short", "p99"),
        _latency("medium", "p99"),
        _latency("long", "p99"),
        _ttfa("short", "p90"),
        _ttfa("medium", "p90"),
        _ttfa("long", "p90"),
        _ttfa("short", "p50"),
        _ttfa("medium", "p50"),
        _ttfa("long", "p50"),
        Metric("rt_margin_s", "Real-time margin", "s", HIGHER,
               "streaming: how early the worst audio chunk was ready before the previous one finished "
               "playing (negative: playback stalled)", display_unit="ms", scale=1e-3,
               budget_key="rt_margin_ms", optional=True, disturbable=True, columns=("rt_margin_min",),
               combine=MINIMUM),
        Metric("rtf", "Real-time factor", "x", LOWER,
               "real-time factor over all sentences (synthesis s / audio s)", display_unit="x",
               budget_key="rtf", disturbable=True, columns=("rtf",), combine=AUDIO_WEIGHTED),
        Metric("first_inference_s", "First inference", "s", LOWER,
               "first inference after loading (median over processes)", display_unit="s",
               budget_key="first_inference_s", disturbable=True, columns=("first_inference_s",)),
        Metric("load_s", "Load time", "s", LOWER, "acoustic + vocoder load (median over processes)",
               display_unit="s", disturbable=True, columns=("acoustic_load_s", "vocoder_load_s"),
               combine=SUM),
        Metric("peak_rss_bytes", "Peak RSS", "bytes", LOWER,
               "peak resident memory of a measuring process (max over processes)", display_unit="MiB",
               scale=MIB, budget_key="peak_rss_mib", default_budget=512.0,
               columns=("peak_rss_bytes",)),  # other processes' CPU use does not grow this one's memory
        Metric("mcd_db", "Mel distortion", "dB", LOWER, "mel-cepstral distortion against original",
               display_unit="dB", columns=("quality_mcd_db",)),
        Metric("mel_l1", "Mel L1", "score", LOWER, "mean absolute mel difference against original",
               columns=("quality_mel_l1",)),
        Metric("emotion_id_accuracy", "Emotion identifiability", "fraction", HIGHER,
               "emotion identifiability of the artifact (classifier proxy)", budget_key="emotion_id_accuracy",
               default_budget=0.90, optional=True, columns=("emotion_id_accuracy",)),
        Metric("mos", "MOS", "score", HIGHER, "mean opinion score from the latest listening test import",
               budget_key="mos", default_budget=3.8, optional=True, columns=("mos",)),
    )
}  # fmt: skip

#: budgets.toml key -> metric, in registry order.
BUDGET_METRICS: dict[str, Metric] = {m.budget_key: m for m in METRICS.values() if m.budget_key}
#: The built-in budgets (the source article's targets), budgets.toml key -> display-unit value.
DEFAULT_BUDGETS: dict[str, float] = {
    k: m.default_budget for k, m in BUDGET_METRICS.items() if m.default_budget is not None
}


# ---------------------------------------------------------------------------------------------- outcomes

PASS = "pass"
NO_BASELINE = "no_baseline"
BUDGET_FAILED = "budget_failed"
REGRESSED = "regressed"
DISTURBED = "disturbed"
COULD_NOT_MEASURE = "could_not_measure"


@dataclass(frozen=True)
class Outcome:
    name: str
    exit_code: int
    label: str
    meaning: str


#: Most serious first: the first that applies is the verdict's outcome.
OUTCOMES: dict[str, Outcome] = {
    o.name: o
    for o in (
        Outcome(COULD_NOT_MEASURE, 2, "Could not measure",
                "At least one device/variant pair or budgeted metric has no measurement."),
        Outcome(DISTURBED, 2, "Disturbed",
                "A measurement that missed a budget or looked slower than its baseline was disturbed by "
                "other load on the device: measure it again."),
        Outcome(BUDGET_FAILED, 1, "Budget failed", "At least one measurement is over its budget."),
        Outcome(REGRESSED, 1, "Regression", "A variant got slower than the baseline run."),
        Outcome(NO_BASELINE, 0, "No baseline", "Every budget met; no baseline run to check for regressions."),
        Outcome(PASS, 0, "Pass", "Every budget met and no regression against the baseline."),
    )
}  # fmt: skip
OUTCOME_ORDER: tuple[str, ...] = tuple(OUTCOMES)
EXIT_CODES: dict[str, int] = {name: o.exit_code for name, o in OUTCOMES.items()}


def order_outcomes(outcomes: Iterable[str]) -> tuple[str, ...]:
    """Distinct outcomes, most serious first; ``PASS`` only when there is no other."""
    present = set(outcomes)
    unknown = present - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown outcome(s): {', '.join(sorted(unknown))}")
    return tuple(o for o in OUTCOME_ORDER if o in present and o != PASS) or (PASS,)


# ------------------------------------------------------------------------------ check statuses, verdicts

CHECK_PASS = "pass"
CHECK_FAIL = "fail"
CHECK_SKIPPED = "skipped"
CHECK_NOT_MEASURED = "not_measured"
CHECK_DISTURBED = DISTURBED

IMPROVED, UNCHANGED, INSUFFICIENT = "improved", "unchanged", "insufficient"

JUNIT_FAILURE, JUNIT_ERROR, JUNIT_SKIPPED = "failure", "error", "skipped"


@dataclass(frozen=True)
class Status:
    """What one budget check or one regression comparison says.

    ``outcome``: the verdict outcome it makes (None: it does not count against the run). ``junit``: the
    JUnit element it becomes ("failure" exit 1, "error" exit 2, "skipped", or None: a plain pass), whose
    ``type`` attribute is the outcome.
    """

    name: str
    outcome: str | None
    junit: str | None
    meaning: str


def _junit_of(outcome: str | None) -> str | None:
    if outcome is None:
        return None
    return JUNIT_ERROR if EXIT_CODES[outcome] == 2 else JUNIT_FAILURE


CHECK_STATUSES: dict[str, Status] = {
    s.name: s
    for s in (
        Status(CHECK_PASS, None, None, "meets its budget"),
        Status(CHECK_FAIL, BUDGET_FAILED, _junit_of(BUDGET_FAILED), "violates its budget"),
        Status(CHECK_NOT_MEASURED, COULD_NOT_MEASURE, _junit_of(COULD_NOT_MEASURE), "no value measured"),
        Status(CHECK_DISTURBED, DISTURBED, _junit_of(DISTURBED),
               "violates its budget, but the measurement was disturbed"),
        Status(CHECK_SKIPPED, None, JUNIT_SKIPPED, "optional metric without a value"),
    )
}  # fmt: skip

COMPARISON_VERDICTS: dict[str, Status] = {
    s.name: s
    for s in (
        Status(REGRESSED, REGRESSED, _junit_of(REGRESSED), "significantly slower than the baseline"),
        Status(DISTURBED, DISTURBED, _junit_of(DISTURBED),
               "slower than the baseline, but one side's measurement was disturbed"),
        Status(IMPROVED, None, None, "significantly faster than the baseline"),
        Status(UNCHANGED, None, None, "no significant change"),
        Status(INSUFFICIENT, None, None, "too few samples to judge"),
    )
}  # fmt: skip

#: An unmeasured (device, variant) pair (any attempt status but "ok", or "missing": never attempted).
UNMEASURED_OUTCOME = COULD_NOT_MEASURE
