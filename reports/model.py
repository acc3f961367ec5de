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

# Verdict kinds: the gate's outcomes (harness.gate), most serious first.
PASS = "pass"
BUDGET_FAILED = "budget_failed"
REGRESSION = "regressed"
COULD_NOT_MEASURE = "could_not_measure"
NO_BASELINE = "no_baseline"
VERDICT_KINDS = (COULD_NOT_MEASURE, BUDGET_FAILED, REGRESSION, NO_BASELINE, PASS)
# Budget check statuses (harness.gate): "skipped" is an optional metric without a value.
CHECK_PASS, CHECK_FAIL, CHECK_SKIPPED, CHECK_NOT_MEASURED = "pass", "fail", "skipped", "not_measured"


@dataclass(frozen=True)
class Metric:
    """One comparable quantity: how it is named, in which unit it is stored, which way is better."""

    key: str
    label: str
    unit: str  # unit of the stored value: "s", "bytes" (shown in MB), "bytes_iec" (shown in MiB), "ratio",
    # "score", "dB", "count"
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
        Metric("peak_rss_bytes", "Peak RSS", "bytes_iec", True),
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
    status: str  # CHECK_PASS | CHECK_FAIL | CHECK_SKIPPED | CHECK_NOT_MEASURED
    length_class: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.status == CHECK_PASS

    @property
    def failed(self) -> bool:
        return self.status in (CHECK_FAIL, CHECK_NOT_MEASURED)


@dataclass(frozen=True)
class Regression:
    """Current vs baseline samples of one (device, variant, length class), judged on raw samples."""

    device: str
    variant: str
    length_class: str
    baseline_median_s: Optional[float]  # None when a side had no samples ("insufficient")
    current_median_s: Optional[float]
    ratio: Optional[float]  # current median / baseline median; None when "insufficient"
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    p_value: Optional[float] = None
    verdict: str = "unchanged"  # regressed | improved | unchanged | insufficient (harness.regress)
    baseline_run_id: Optional[str] = None
    n_baseline: Optional[int] = None
    n_current: Optional[int] = None

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    @property
    def improved(self) -> bool:
        return self.verdict == "improved"


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
    baselines: Mapping[str, Optional[str]] = field(default_factory=dict)  # device -> baseline run id
    warnings: Tuple[str, ...] = ()

    @property
    def baseline_text(self) -> str:
        runs = sorted({b for b in self.baselines.values() if b})
        if not runs:
            return "none"
        return runs[0] if len(runs) == 1 else ", ".join(runs)

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
class BudgetLine:
    """One budget in force, for display: where it applies, what, and the limit with its unit."""

    scope: str  # "all devices", "device class pi4", "variant pruned", "regression test"
    metric: str  # the budget's name as in budgets.toml
    limit: str  # "≤ 800 ms"
    description: str = ""


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
    budgets: Tuple[BudgetLine, ...] = ()  # the budgets in force, for display
    model_source: Mapping[str, Any] = field(default_factory=dict)  # the original's manifest "source"

    @property
    def random_weights(self) -> bool:
        """True when the model is a seeded preset or factory (its audio is not speech)."""
        return self.model_source.get("kind", "seeded") == "seeded"

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
    """Build the ``ReportData`` of one run from a ``harness.store.Store`` (the only store access).

    The verdict is the one the gate stored for the run; the gate is asked afresh (without saving) when
    none is stored or when ``baseline`` names another run to compare with.
    """
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
    attempts = tuple(_attempts(store.attempts_df(run_id)))
    effective_attempts = store.effective_attempts(run_id)
    effective = {key: a["status"] for key, a in effective_attempts.items()}
    identities = {device: dict(a.get("identity") or {}) for (device, _), a in effective_attempts.items()}
    gate_verdict = _gate_verdict(store, run_id, baseline)
    return ReportData(
        run=run,
        verdict=verdict_from_gate(gate_verdict),
        results=tuple(_results(store.summary_df(run_id), attempts, effective)),
        samples=_samples(store.samples_df(run_id)),
        devices=tuple(_devices(store.facts(run_id), attempts, identities)),
        attempts=attempts,
        regressions=tuple(regressions_from_gate(gate_verdict)),
        history=tuple(_history(store, run)),
        audio=tuple(_audio(store.artifacts(run_id))),
        budgets=tuple(budget_lines_from_gate(gate_verdict.get("budgets") or {})),
        model_source=_model_source(store.artifacts(run_id)),
    )


def _gate_verdict(store, run_id: str, baseline: Optional[str]) -> Mapping[str, Any]:
    stored = store.verdict(run_id) if baseline is None else None
    if stored is not None:
        return stored
    from harness import gate

    return gate.evaluate(store, run_id, baseline=baseline, save=False).to_dict()


def report_metric(gate_metric: str) -> Optional[Tuple[str, Optional[str], float]]:
    """A gate metric (harness.budgets.METRICS) as (report METRICS key, length class, scale to SI units)."""
    from harness.budgets import MB, MIB
    from harness.budgets import METRICS as GATE_METRICS

    m = GATE_METRICS.get(gate_metric)
    if m is None:
        return None
    if m.length_class is not None:  # latency_<stat>_ms_<class>
        return f"latency_{gate_metric.split('_')[1]}_s", m.length_class, 1e-3
    known = {
        "acoustic_size_mb": ("size_acoustic_bytes", MB),
        "vocoder_size_mb": ("size_vocoder_bytes", MB),
        "peak_rss_mib": ("peak_rss_bytes", float(MIB)),
        "rtf": ("rtf", 1.0),
        "first_inference_s": ("first_inference_s", 1.0),
        "mos": ("mos", 1.0),
        "emotion_id_accuracy": ("emotion_id_accuracy", 1.0),
    }
    if gate_metric not in known:
        return None
    key, scale = known[gate_metric]
    return key, None, scale


def verdict_from_gate(d: Mapping[str, Any]) -> Verdict:
    """Adapt ``harness.gate.Verdict.to_dict()`` (version 1) to the report's ``Verdict`` with its causes."""
    checks, causes = [], []
    for c in d.get("unmeasured", ()):
        causes.append(
            Cause(COULD_NOT_MEASURE, c.get("device"), c.get("variant"), message=f"{c.get('status')}: "
                  f"{c.get('error') or 'no reason recorded'}")
        )  # fmt: skip
    for c in d.get("checks", ()):
        mapped = report_metric(str(c["metric"]))
        if mapped is None:  # a metric this report does not know: still say why the gate failed
            if c["status"] in (CHECK_FAIL, CHECK_NOT_MEASURED):
                kind = BUDGET_FAILED if c["status"] == CHECK_FAIL else COULD_NOT_MEASURE
                causes.append(Cause(kind, c["device"], c["variant"], message=str(c.get("message") or "")))
            continue
        key, length_class, scale = mapped
        value = _opt_float(c.get("value"))
        check = BudgetCheck(
            device=str(c["device"]),
            variant=str(c["variant"]),
            metric=key,
            value=None if value is None else value * scale,
            limit=float(c["budget"]) * scale,
            status=str(c["status"]),
            length_class=length_class,
        )
        checks.append(check)
        if check.status == CHECK_FAIL:
            causes.append(
                Cause(BUDGET_FAILED, check.device, check.variant, key, length_class, check.value, check.limit)
            )
        elif check.status == CHECK_NOT_MEASURED:
            causes.append(Cause(COULD_NOT_MEASURE, check.device, check.variant, key, length_class,
                                message="no value was measured for a budgeted metric"))  # fmt: skip
    for r in d.get("regressions", ()):
        causes.append(
            Cause(REGRESSION, r.get("device"), r.get("variant"), length_class=r.get("length_class"))
        )
    baselines = dict(d.get("baselines") or {})
    for device, base in baselines.items():
        if base is None:
            causes.append(
                Cause(NO_BASELINE, device, message="no earlier passing run on this device to compare with")
            )
    return Verdict(
        kind=str(d["outcome"]),
        exit_code=int(d["exit_code"]),
        causes=tuple(causes),
        checks=tuple(checks),
        baselines=baselines,
        warnings=tuple(str(w) for w in d.get("warnings", ())),
    )


def regressions_from_gate(d: Mapping[str, Any]) -> Iterable[Regression]:
    """Every comparison with a baseline (regressed, improved, unchanged, insufficient)."""
    for r in d.get("comparisons", ()):
        yield Regression(
            device=str(r["device"]),
            variant=str(r["variant"]),
            length_class=str(r["length_class"]),
            baseline_median_s=_opt_float(r.get("baseline_median")),
            current_median_s=_opt_float(r.get("candidate_median")),
            ratio=_opt_float(r.get("ratio")),
            ci_low=_opt_float(r.get("ci_low")),
            ci_high=_opt_float(r.get("ci_high")),
            p_value=_opt_float(r.get("p_value")),
            verdict=str(r["verdict"]),
            baseline_run_id=_opt_str(r.get("baseline_run_id")),
            n_baseline=_opt_int(r.get("n_baseline")),
            n_current=_opt_int(r.get("n_candidate")),
        )


def budget_lines_from_gate(budgets: Mapping[str, Any]) -> Iterable[BudgetLine]:
    """The budgets the gate applied (``Budgets.to_dict()``), one line per metric and scope."""
    from harness.budgets import METRICS as GATE_METRICS

    scopes = [("all devices", budgets.get("budgets") or {})]
    scopes += [(f"device class {k}", v) for k, v in (budgets.get("class") or {}).items()]
    scopes += [(f"variant {k}", v) for k, v in (budgets.get("variant") or {}).items()]
    for scope, table in scopes:
        for name, value in table.items():
            m = GATE_METRICS.get(name)
            if value is None:
                yield BudgetLine(scope, name, "off", m.description if m else "")
            elif m is None:
                yield BudgetLine(scope, name, str(value))
            else:
                op = "≤" if m.direction == "max" else "≥"
                unit = "" if m.unit in ("x", "score", "fraction") else f" {m.unit}"
                yield BudgetLine(scope, name, f"{op} {value:g}{unit}", m.description)
    regression = budgets.get("regression") or {}
    if regression:
        text = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in regression.items())
        yield BudgetLine("regression test", "settings", text, "Mann-Whitney U and bootstrap CI on medians")


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


def _devices(facts, attempts: Tuple[Attempt, ...], identities: Mapping[str, Mapping[str, Any]]):
    """Facts of each device: the first record-level "before" and the last "after" of the run."""
    if facts.empty:
        return
    meta = {"run_id", "attempt_id", "device", "device_identity", "variant", "process", "phase"}
    facts = facts.sort_values(["attempt_id", "process"], kind="stable")
    for device, g in facts.groupby("device", sort=False):
        whole = g[g["process"] == -1]
        g = whole if not whole.empty else g

        mine = [a for a in attempts if a.device == device]
        yield DeviceInfo(
            name=str(device),
            identity=dict(identities.get(device) or {}),
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
    from variants.frontend import EMOTIONS  # the voice's emotion order: neutral first

    def order(item: Tuple[str, Any]) -> Tuple[int, str]:
        return (EMOTIONS.index(item[0]) if item[0] in EMOTIONS else len(EMOTIONS), item[0])

    for variant, entry in artifacts.items():
        base = Path(str(entry["path"]))
        for emotion, rel in sorted(((entry.get("manifest") or {}).get("samples") or {}).items(), key=order):
            yield AudioClip(variant=str(variant), emotion=str(emotion), source=base / str(rel))


def _model_source(artifacts: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """Where the measured model's weights came from (any artifact's manifest: they share the root)."""
    for entry in artifacts.values():
        source = (entry.get("manifest") or {}).get("source")
        if isinstance(source, Mapping):
            return dict(source)
    return {}


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
