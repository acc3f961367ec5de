"""The report's input: a plain, typed, immutable ``ReportData`` built from the store.

``load_report_data`` is the only function in ``reports`` that touches the store; charts, tables, audio and
the template take ``ReportData``. Values are kept in SI units (seconds, bytes, ratios 0..1); formatting
happens in ``reports.tables``. Strings that came from a device (facts, error text) are untrusted and are
only ever rendered through the autoescaping template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Tuple

LENGTH_CLASSES = ("short", "medium", "long")
STAGES = ("frontend", "acoustic", "vocoder")
COMPONENTS = ("acoustic", "vocoder")
# The variant every ratio is taken against (same device).
REFERENCE_VARIANT = "original"
# The headline metric of the cross-device matrix and the trend chart.
HEADLINE_CLASS = "short"

# Verdict kinds, in the order of severity the banner uses.
PASS = "pass"
BUDGET_FAILED = "budget_failed"
REGRESSION = "regression"
COULD_NOT_MEASURE = "could_not_measure"
NO_BASELINE = "no_baseline"
VERDICT_KINDS = (PASS, NO_BASELINE, REGRESSION, BUDGET_FAILED, COULD_NOT_MEASURE)


@dataclass(frozen=True)
class Metric:
    """One comparable quantity: how it is named, in which unit it is stored, which way is better."""

    key: str
    label: str
    unit: str  # unit of the stored value: "s", "bytes", "ratio", "x", "score", "dB", "count"
    lower_is_better: bool


# The one registry of metric keys the report knows (budget checks name these keys).
METRICS: Mapping[str, Metric] = {
    m.key: m
    for m in (
        Metric("size_bytes", "Size (total)", "bytes", True),
        Metric("size_acoustic_bytes", "Size (acoustic)", "bytes", True),
        Metric("size_vocoder_bytes", "Size (vocoder)", "bytes", True),
        Metric("params", "Parameters", "count", True),
        Metric("latency_p50_s", "Latency p50", "s", True),
        Metric("latency_p90_s", "Latency p90", "s", True),
        Metric("latency_p99_s", "Latency p99", "s", True),
        Metric("rtf", "Real-time factor", "ratio", True),
        Metric("first_inference_s", "First inference", "s", True),
        Metric("load_s", "Load time", "s", True),
        Metric("peak_rss_bytes", "Peak RSS", "bytes", True),
        Metric("mcd_db", "Mel distortion", "dB", True),
        Metric("mel_l1", "Mel L1", "score", True),
        Metric("emotion_id_accuracy", "Emotion identifiability", "ratio", False),
        Metric("mos", "MOS", "score", False),
    )
}


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    started_at: str = ""
    finished_at: Optional[str] = None
    status: str = ""  # complete | incomplete | running
    preset: str = ""
    code_version: str = ""
    variants: Tuple[str, ...] = ()
    devices: Tuple[str, ...] = ()


@dataclass(frozen=True)
class LatencyStats:
    """Steady-state latency of one length class (nearest-rank percentiles, n always shown)."""

    n: int
    p50_s: float
    p90_s: float
    p99_s: Optional[float] = None
    mean_s: Optional[float] = None
    rtf: Optional[float] = None


@dataclass(frozen=True)
class VariantResult:
    """One (device, variant) pair: what the store summarised for it. Missing numbers are None."""

    device: str
    variant: str
    status: str = "ok"  # ok | failed | unreachable | timeout | ineligible | missing
    error: Optional[str] = None
    sizes: Mapping[str, int] = field(default_factory=dict)  # component -> bytes
    params: Mapping[str, int] = field(default_factory=dict)  # component -> count
    latency: Mapping[str, LatencyStats] = field(default_factory=dict)  # length class -> stats
    rtf: Optional[float] = None  # over all steady-state samples: sum(total_s) / sum(audio_s)
    first_inference_s: Optional[float] = None
    load_s: Optional[float] = None  # acoustic + vocoder load
    import_s: Optional[float] = None
    peak_rss_bytes: Optional[int] = None
    mcd_db: Optional[float] = None
    mel_l1: Optional[float] = None
    emotion_id_accuracy: Optional[float] = None
    mos: Optional[float] = None
    mos_n: Optional[int] = None
    throttled: bool = False
    hot: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_bytes(self) -> Optional[int]:
        return sum(self.sizes.values()) if self.sizes else None

    @property
    def params_total(self) -> Optional[int]:
        return sum(self.params.values()) if self.params else None

    def value(self, metric: str, length_class: Optional[str] = None) -> Optional[float]:
        """The stored value of a ``METRICS`` key (latency keys need a length class)."""
        if metric.startswith("latency_"):
            stats = self.latency.get(length_class or HEADLINE_CLASS)
            if stats is None:
                return None
            return getattr(stats, metric[len("latency_") :])
        if metric == "size_bytes":
            return self.size_bytes
        if metric == "params":
            return self.params_total
        if metric.startswith("size_") and metric.endswith("_bytes"):
            return self.sizes.get(metric[len("size_") : -len("_bytes")])
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}")
        return getattr(self, metric)


class Sample(NamedTuple):
    """One steady-state iteration of one (device, variant)."""

    length_class: str
    phones: int
    audio_s: float
    frontend_s: float
    acoustic_s: float
    vocoder_s: float
    total_s: float


@dataclass(frozen=True)
class BudgetCheck:
    """One budget the gate evaluated: ``value`` against ``limit`` (<= limit when lower is better)."""

    device: str
    variant: str
    metric: str  # a METRICS key
    value: Optional[float]
    limit: float
    passed: bool
    length_class: Optional[str] = None


@dataclass(frozen=True)
class Regression:
    """Current vs baseline samples of one (device, variant, length class), judged on raw samples."""

    device: str
    variant: str
    length_class: str
    baseline_median_s: float
    current_median_s: float
    ratio: float  # current median / baseline median
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    p_value: Optional[float] = None
    regressed: bool = False
    improved: bool = False
    metric: str = "latency_p50_s"


@dataclass(frozen=True)
class Cause:
    """Why the verdict is what it is: one line the banner shows."""

    kind: str  # a VERDICT_KINDS value
    device: Optional[str] = None
    variant: Optional[str] = None
    metric: Optional[str] = None
    length_class: Optional[str] = None
    value: Optional[float] = None
    limit: Optional[float] = None
    message: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: str  # a VERDICT_KINDS value
    exit_code: int
    causes: Tuple[Cause, ...] = ()
    checks: Tuple[BudgetCheck, ...] = ()
    baseline_run_id: Optional[str] = None

    def check(
        self, device: str, variant: str, metric: str, length_class: Optional[str] = None
    ) -> Optional[BudgetCheck]:
        for c in self.checks:
            if (c.device, c.variant, c.metric) == (device, variant, metric) and (
                c.length_class is None or c.length_class == length_class
            ):
                return c
        return None


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    identity: Mapping[str, Any] = field(default_factory=dict)
    facts_before: Mapping[str, Any] = field(default_factory=dict)
    facts_after: Mapping[str, Any] = field(default_factory=dict)
    throttled: bool = False
    hot: bool = False


@dataclass(frozen=True)
class Attempt:
    device: str
    variant: str
    status: str
    error: Optional[str] = None
    throttled: bool = False
    hot: bool = False


@dataclass(frozen=True)
class TrendPoint:
    """The headline metric of one earlier (or this) run, for the nightly trend chart."""

    run_id: str
    started_at: str
    device: str
    variant: str
    value_s: float  # short-sentence p90


@dataclass(frozen=True)
class AudioClip:
    variant: str
    emotion: str
    source: Path  # the artifact's samples/<emotion>.wav as the store recorded it


@dataclass(frozen=True)
class ReportData:
    run: RunInfo
    verdict: Verdict
    results: Tuple[VariantResult, ...] = ()
    samples: Mapping[Tuple[str, str], Tuple[Sample, ...]] = field(default_factory=dict)
    devices: Tuple[DeviceInfo, ...] = ()
    attempts: Tuple[Attempt, ...] = ()
    regressions: Tuple[Regression, ...] = ()
    history: Tuple[TrendPoint, ...] = ()
    audio: Tuple[AudioClip, ...] = ()
    budgets: Mapping[str, Any] = field(default_factory=dict)  # as recorded with the run, for display

    @property
    def device_names(self) -> Tuple[str, ...]:
        names = list(self.run.devices)
        for r in self.results:
            if r.device not in names:
                names.append(r.device)
        return tuple(names)

    @property
    def variant_names(self) -> Tuple[str, ...]:
        names = list(self.run.variants)
        for r in self.results:
            if r.variant not in names:
                names.append(r.variant)
        return tuple(names)

    def result(self, device: str, variant: str) -> Optional[VariantResult]:
        for r in self.results:
            if r.device == device and r.variant == variant:
                return r
        return None

    def results_for(self, device: str) -> Tuple[VariantResult, ...]:
        order = {v: i for i, v in enumerate(self.variant_names)}
        return tuple(sorted((r for r in self.results if r.device == device), key=lambda r: order[r.variant]))

    def device(self, name: str) -> Optional[DeviceInfo]:
        for d in self.devices:
            if d.name == name:
                return d
        return None


# --------------------------------------------------------------------------------------------------
# From the store. Everything below adapts harness.store / harness.gate output to the types above.
# --------------------------------------------------------------------------------------------------

#: How many earlier runs the trend chart looks back over.
HISTORY_RUNS = 30


def load_report_data(store, run_id: str, baseline: Optional[str] = None) -> ReportData:
    """Build the ``ReportData`` of one run from a ``harness.store.Store`` (the only store access)."""
    meta = store.run(run_id)  # StoreError (a UserError) for an unknown run id
    run = RunInfo(
        run_id=run_id,
        started_at=str(meta.get("started_at") or ""),
        finished_at=_opt_str(meta.get("ended_at")),
        status=str(meta.get("status") or ""),
        preset=str(meta.get("preset") or ""),
        code_version=str(meta.get("code_version") or ""),
        variants=tuple(meta.get("variants") or ()),
        devices=tuple(meta.get("devices") or ()),
    )
    budgets = dict(meta.get("budgets") or {})
    attempts_df = store.attempts_df(run_id)
    attempts = tuple(_attempts(attempts_df))
    effective = {key: a["status"] for key, a in store.effective_attempts(run_id).items()}
    verdict_dict = _verdict_dict(store, run_id, budgets, baseline)
    return ReportData(
        run=run,
        verdict=verdict_from_dict(verdict_dict),
        results=tuple(_results(store.summary_df(run_id), attempts, effective)),
        samples=_samples(store.samples_df(run_id)),
        devices=tuple(_devices(store.facts(run_id), attempts)),
        attempts=attempts,
        regressions=tuple(regressions_from_dict(verdict_dict)),
        history=tuple(_history(store, run)),
        audio=tuple(_audio(store.artifacts(run_id))),
        budgets=budgets,
    )


def _verdict_dict(
    store, run_id: str, budgets: Mapping[str, Any], baseline: Optional[str]
) -> Mapping[str, Any]:
    """The stored verdict of the run; the gate is asked afresh only for another baseline or none stored."""
    stored = store.verdict(run_id) if baseline is None else None
    if stored is not None:
        return stored
    from harness import gate  # reports depends on harness, never the other way round

    return gate.evaluate(store, run_id, budgets, baseline=baseline).to_dict()


def verdict_from_dict(d: Mapping[str, Any]) -> Verdict:
    """Adapt ``harness.gate.Verdict.to_dict()`` to the report's ``Verdict``."""
    checks = tuple(
        BudgetCheck(
            device=str(c.get("device")),
            variant=str(c.get("variant")),
            metric=str(c.get("metric")),
            value=_opt_float(c.get("value")),
            limit=float(c.get("limit")),
            passed=bool(c.get("passed")),
            length_class=_opt_str(c.get("length_class")),
        )
        for c in d.get("checks", ())
    )
    causes = tuple(
        Cause(
            kind=str(c.get("kind")),
            device=_opt_str(c.get("device")),
            variant=_opt_str(c.get("variant")),
            metric=_opt_str(c.get("metric")),
            length_class=_opt_str(c.get("length_class")),
            value=_opt_float(c.get("value")),
            limit=_opt_float(c.get("limit")),
            message=str(c.get("message") or ""),
        )
        for c in d.get("causes", ())
    )
    return Verdict(
        kind=str(d.get("outcome") or d.get("kind")),
        exit_code=int(d.get("exit_code", 0)),
        causes=causes,
        checks=checks,
        baseline_run_id=_opt_str(d.get("baseline_run_id")),
    )


def regressions_from_dict(d: Mapping[str, Any]) -> Iterable[Regression]:
    for r in d.get("regressions", ()):
        yield Regression(
            device=str(r.get("device")),
            variant=str(r.get("variant")),
            length_class=str(r.get("length_class")),
            baseline_median_s=float(r.get("baseline_median_s")),
            current_median_s=float(r.get("current_median_s")),
            ratio=float(r.get("ratio")),
            ci_low=_opt_float(r.get("ci_low")),
            ci_high=_opt_float(r.get("ci_high")),
            p_value=_opt_float(r.get("p_value")),
            regressed=bool(r.get("regressed")),
            improved=bool(r.get("improved", False)),
        )


def _attempts(df) -> Iterable[Attempt]:
    for row in df.to_dict("records"):
        yield Attempt(
            device=str(row["device"]),
            variant=str(row["variant"]),
            status=str(row["status"]),
            error=_opt_str(row.get("error")),
            throttled=bool(_opt(row.get("throttled"))),
            hot=bool(_opt(row.get("hot"))),
        )


def _results(summary, attempts: Tuple[Attempt, ...], effective: Mapping[Tuple[str, str], str]):
    """One ``VariantResult`` per (device, variant) that was attempted, measured or not."""
    by_pair: dict = {}
    for row in summary.to_dict("records"):
        by_pair.setdefault((str(row["device"]), str(row["variant"])), []).append(row)
    last_error = {(a.device, a.variant): a.error for a in attempts}
    for device, variant in dict.fromkeys([*by_pair, *((a.device, a.variant) for a in attempts)]):
        group = by_pair.get((device, variant), [])
        first = group[0] if group else {}
        status = effective.get((device, variant), "ok" if group else "missing")
        yield VariantResult(
            device=device,
            variant=variant,
            status=status,
            error=None if status == "ok" else last_error.get((device, variant)),
            sizes={
                c: int(first[f"size_{c}_bytes"]) for c in COMPONENTS if _opt(first.get(f"size_{c}_bytes"))
            },
            params={c: int(first[f"params_{c}"]) for c in COMPONENTS if _opt(first.get(f"params_{c}"))},
            latency={
                str(r["length_class"]): LatencyStats(
                    n=int(r["n"]),
                    p50_s=float(r["p50"]),
                    p90_s=float(r["p90"]),
                    p99_s=_opt_float(r.get("p99")),
                    mean_s=_opt_float(r.get("mean")),
                    rtf=_opt_float(r.get("rtf")),
                )
                for r in group
            },
            rtf=_overall_rtf(group),
            first_inference_s=_opt_float(first.get("first_inference_s")),
            load_s=_sum_opt(first.get("acoustic_load_s"), first.get("vocoder_load_s")),
            import_s=_opt_float(first.get("import_s")),
            peak_rss_bytes=_opt_int(first.get("peak_rss_bytes")),
            mcd_db=_opt_float(first.get("quality_mcd_db")),
            mel_l1=_opt_float(first.get("quality_mel_l1")),
            emotion_id_accuracy=_opt_float(first.get("emotion_id_accuracy")),
            mos=_opt_float(first.get("mos")),
            mos_n=_opt_int(first.get("mos_n")),
            throttled=bool(_opt(first.get("throttled"))),
            hot=bool(_opt(first.get("hot"))),
        )


def _overall_rtf(group) -> Optional[float]:
    """RTF over every class: total synthesis seconds / total audio seconds (the store's definition)."""
    audio = sum(float(r["audio_s"]) for r in group if _opt(r.get("audio_s")))
    synth = sum(
        float(r["rtf"]) * float(r["audio_s"]) for r in group if _opt(r.get("rtf")) and _opt(r.get("audio_s"))
    )
    return synth / audio if audio > 0 else None


def _samples(df) -> Mapping[Tuple[str, str], Tuple[Sample, ...]]:
    out: dict = {}
    cols = ["device", "variant", *Sample._fields]
    for device, variant, *rest in df[cols].itertuples(index=False, name=None):
        out.setdefault((str(device), str(variant)), []).append(
            Sample(str(rest[0]), *(0 if _opt(v) is None else v for v in rest[1:]))
        )
    return {k: tuple(v) for k, v in out.items()}


def _devices(facts, attempts: Tuple[Attempt, ...]) -> Iterable[DeviceInfo]:
    """Facts of each device: the first record-level "before" and the last "after" of the run."""
    if facts.empty:
        return
    meta = {"run_id", "attempt_id", "device", "device_identity", "variant", "process", "phase"}
    facts = facts.sort_values(["attempt_id", "process"], kind="stable")
    for device, g in facts.groupby("device", sort=False):
        whole = g[g["process"] == -1]
        g = whole if not whole.empty else g

        mine = [a for a in attempts if a.device == device]
        identity = g["device_identity"].dropna()
        yield DeviceInfo(
            name=str(device),
            identity={"fingerprint": str(identity.iloc[0])} if not identity.empty else {},
            facts_before=_facts_of(g, "before", last=False, meta=meta),
            facts_after=_facts_of(g, "after", last=True, meta=meta),
            throttled=any(a.throttled for a in mine),
            hot=any(a.hot for a in mine),
        )


def _facts_of(rows, phase: str, last: bool, meta: set) -> dict:
    rows = rows[rows["phase"] == phase]
    if rows.empty:
        return {}
    row = rows.iloc[-1 if last else 0].to_dict()
    return {k: v for k, v in row.items() if k not in meta and _opt(v) is not None}


def _history(store, run: RunInfo) -> Iterable[TrendPoint]:
    """Short-sentence p90 of the stored runs up to this one (the nightly trend)."""
    df = store.history_df(limit=HISTORY_RUNS)
    if df.empty:
        return
    df = df[(df["length_class"] == HEADLINE_CLASS) & (df["started_at"] <= run.started_at)]
    for row in df.to_dict("records"):
        yield TrendPoint(
            run_id=str(row["run_id"]),
            started_at=str(row["started_at"]),
            device=str(row["device"]),
            variant=str(row["variant"]),
            value_s=float(row["p90"]),
        )


def _audio(artifacts: Mapping[str, Mapping[str, Any]]) -> Iterable[AudioClip]:
    """The listening samples each artifact's manifest lists (``samples``: emotion -> relative path)."""
    for variant, entry in artifacts.items():
        base = Path(str(entry["path"]))
        for emotion, rel in sorted(((entry.get("manifest") or {}).get("samples") or {}).items()):
            yield AudioClip(variant=str(variant), emotion=str(emotion), source=base / str(rel))


def _opt(v: Any) -> Any:
    """None for None and NaN (pandas fills missing numbers with NaN), the value otherwise."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _opt_float(v: Any) -> Optional[float]:
    v = _opt(v)
    return None if v is None else float(v)


def _opt_int(v: Any) -> Optional[int]:
    v = _opt(v)
    return None if v is None else int(v)


def _opt_str(v: Any) -> Optional[str]:
    v = _opt(v)
    return None if v is None else str(v)


def _sum_opt(*values: Any) -> Optional[float]:
    present = [float(v) for v in (_opt(x) for x in values) if v is not None]
    return sum(present) if present else None
