"""The report's input: a plain, typed, immutable ``ReportData`` built from the store.

``load_report_data`` is the only function in ``reports`` that touches the store; charts, tables, audio and
the template take ``ReportData``. Metrics, outcomes and check statuses are ``harness.vocabulary``'s; the
verdict is the one the gate stored (``harness.verdict``), rendered as it is and never judged again here
(``ReportData.verdict`` is None when the run was never gated). Values are kept in their metric's unit
(seconds, bytes, fractions 0..1); formatting happens in ``reports.tables``. Strings that came from a device
(facts, error text) are untrusted and are only ever rendered through the autoescaping template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Tuple

from harness import results
from harness.explain import check_predictions, explain
from harness.verdict import Comparison, Verdict, read_verdict
from harness.vocabulary import BUDGET_METRICS, LENGTH_CLASSES, METRICS, latency_key

__all__ = ["LENGTH_CLASSES", "METRICS", "Comparison", "Verdict"]

STAGES = ("frontend", "acoustic", "vocoder")
COMPONENTS = ("acoustic", "vocoder")
# The variant every ratio is taken against (same device).
REFERENCE_VARIANT = "original"
# The headline metric of the cross-device matrix and the trend chart.
HEADLINE_CLASS = "short"
HEADLINE_METRIC = latency_key(HEADLINE_CLASS, "p90")
#: Streaming synthesis metrics (time to first audio, real-time margin): ``VariantResult.streaming``.
STREAMING_METRICS = tuple(k for k in METRICS if k.startswith("ttfa_") or k == "rt_margin_s")


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
    status: str = "ok"  # ok | failed | unreachable | timeout | ineligible | busy | missing
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
    disturbed: Optional[str] = None  # what disturbed the measurement (store: summary ``disturbed_reason``)
    stream_chunk_frames: Optional[int] = None  # streaming synthesis chunk; None: whole-utterance synthesis
    streaming: Mapping[str, Optional[float]] = field(default_factory=dict)  # ttfa_* / rt_margin_s metrics

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_bytes(self) -> Optional[int]:
        return sum(self.sizes.values()) if self.sizes else None

    @property
    def params_total(self) -> Optional[int]:
        return sum(self.params.values()) if self.params else None

    def value(self, metric: str) -> Optional[float]:
        """The value of a ``harness.vocabulary.METRICS`` key (KeyError for another name)."""
        m = METRICS[metric]
        if metric in STREAMING_METRICS:
            return self.streaming.get(metric)
        if m.length_class is not None:
            stats = self.latency.get(m.length_class)
            return None if stats is None else getattr(stats, f"{m.stat}_s")
        if metric == "size_total_bytes":
            return self.size_bytes
        if metric == "params":
            return self.params_total
        if metric in ("size_acoustic_bytes", "size_vocoder_bytes"):
            return self.sizes.get(metric.split("_")[1])
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
    metric: str  # the budget's name as in budgets.toml (``Metric.budget_key``)
    limit: str  # "≤ 800 ms"
    description: str = ""


@dataclass(frozen=True)
class ProcessInfo:
    """One measured process of a (device, variant) pair and the interference it saw."""

    device: str
    variant: str
    index: int
    status: str
    samples: int
    cpu_share: Optional[float]
    contention: Optional[float]
    samples_disturbed: int
    remeasured: int
    disturbed: bool
    reason: Optional[str]
    output_check: Optional[str] = None  # the board's outputs against the controller's (first process)
    memory_timeline: Optional[Mapping[str, Any]] = None  # t_s, rss_bytes, hwm_bytes, marks (agent-polled)


def output_check_text(check: Optional[Mapping[str, Any]]) -> Optional[str]:
    """One line for a process's ``output_check`` (devices.ondevice.outputs), or None without one."""
    if not isinstance(check, Mapping):
        return None
    rms = check.get("mel_rel_rms")
    what = f"{check.get('precision')}, {check.get('quantized_engine') or 'default engine'}"
    rms_text = f"mel {100 * rms:.3g} % rms" if isinstance(rms, (int, float)) else "mel shapes differ"
    verdict = "agrees" if check.get("ok") else "DIFFERS"
    return (f"{verdict} ({what}): {rms_text}, max |diff| {check.get('mel_max_abs')}; "
            f"{check.get('durations_differ')}/{check.get('phones')} durations differ")


@dataclass(frozen=True)
class RuntimeAgreement:
    """How far an onnxruntime artifact's outputs are from torch on the same weights (computed when it was
    built: ``variants.build``, manifest ``onnx_agreement``), and what ORT quantized in it."""

    variant: str  # the measured name, e.g. quantized@onnxruntime
    against: str
    n: int
    mel_rel_rms: Optional[float]
    mel_max_abs: Optional[float]
    wav_max_abs: Optional[float]
    durations_differ: Optional[int]
    quantized_ops: Tuple[str, ...] = ()
    opset: Optional[int] = None


@dataclass(frozen=True)
class ReportData:
    run: RunInfo
    verdict: Optional[Verdict]  # the stored verdict; None: the run was never gated
    results: Tuple[VariantResult, ...] = ()
    samples: Mapping[Tuple[str, str], Tuple[Sample, ...]] = field(default_factory=dict)
    devices: Tuple[DeviceInfo, ...] = ()
    attempts: Tuple[Attempt, ...] = ()
    history: Tuple[TrendPoint, ...] = ()
    audio: Tuple[AudioClip, ...] = ()
    budgets: Tuple[BudgetLine, ...] = ()  # the budgets in force, for display
    model_source: Mapping[str, Any] = field(default_factory=dict)  # the original's manifest "source"
    processes: Tuple[ProcessInfo, ...] = ()  # every measured process, with its interference
    runtime_agreement: Tuple[RuntimeAgreement, ...] = ()  # one per onnxruntime artifact of the run
    #: Each phase against its device's measured limits (``harness.explain``); None: not explained
    explanation: Optional[Any] = None
    prediction_checks: Tuple[Any, ...] = ()  # harness.explain.PredictionCheck

    def phases_of(self, device: str) -> Tuple[Any, ...]:
        """The explained phases of a device (``harness.explain.PhaseExplanation``), variants in order."""
        if self.explanation is None:
            return ()
        order = {v: i for i, v in enumerate(self.variant_names)}
        return tuple(sorted((p for p in self.explanation.phases if p.device == device),
                            key=lambda p: (order.get(p.variant, len(order)), p.phase)))

    def checks_of(self, device: str) -> Tuple[Any, ...]:
        return tuple(c for c in self.prediction_checks if c.device == device)

    def processes_of(self, device: str) -> Tuple[ProcessInfo, ...]:
        return tuple(p for p in self.processes if p.device == device)

    @property
    def comparisons(self) -> Tuple[Comparison, ...]:
        """Every comparison with a baseline the verdict holds (regressed, improved, unchanged, ...)."""
        return tuple(self.verdict.comparisons) if self.verdict is not None else ()

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
# From the store. Everything below reads harness.store output into the types above.
# --------------------------------------------------------------------------------------------------

#: How many earlier runs the trend chart looks back over.
HISTORY_RUNS = 30


def load_report_data(store, run_id: str) -> ReportData:
    """Build the ``ReportData`` of one run from a ``harness.store.Store`` (the only store access).

    The verdict is the one the gate stored for the run (None when it was never gated): the report never
    judges a run itself. A stored verdict this edgebench cannot read is a ``VerdictFormatError``.
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
    stored = store.verdict(run_id)
    verdict = None if stored is None else read_verdict(stored, where=f"verdict of run {run_id}")
    attempts = tuple(_attempts(results.attempts_df(store, run_id)))
    effective_attempts = store.effective_attempts(run_id)
    effective = {key: a["status"] for key, a in effective_attempts.items()}
    identities = {device: dict(a.get("identity") or {}) for (device, _), a in effective_attempts.items()}
    budgets = verdict.budgets if verdict is not None else (meta.get("budgets") or {})
    explanation = explain(store, run_id)
    return ReportData(
        run=run,
        verdict=verdict,
        results=tuple(_results(results.summary_df(store, run_id), attempts, effective)),
        samples=_samples(results.samples_df(store, run_id)),
        devices=tuple(_devices(store.facts(run_id), attempts, identities)),
        attempts=attempts,
        history=tuple(_history(store, run)),
        audio=tuple(_audio(store.artifacts(run_id))),
        budgets=tuple(budget_lines(budgets)),
        model_source=_model_source(store.artifacts(run_id)),
        processes=tuple(_processes(effective_attempts)),
        runtime_agreement=tuple(_runtime_agreement(store.artifacts(run_id))),
        explanation=explanation,
        prediction_checks=tuple(check_predictions(explanation)),
    )


def _processes(effective: Mapping[Tuple[str, str], Mapping[str, Any]]) -> Iterable[ProcessInfo]:
    """The processes of every pair's counted attempt, in round order (interference per process)."""
    for (device, variant), attempt in sorted(effective.items()):
        for i, p in enumerate((attempt.get("header") or {}).get("processes") or []):
            info = p.get("interference") or {}
            yield ProcessInfo(
                device=str(device), variant=str(variant), index=int(p.get("index", i)),
                status=str(p.get("status") or ""), samples=int(p.get("n_samples") or 0),
                cpu_share=_opt_float(info.get("cpu_share")), contention=_opt_float(info.get("contention")),
                samples_disturbed=int(info.get("samples_disturbed") or 0),
                remeasured=int(info.get("remeasured") or 0), disturbed=bool(p.get("disturbed")),
                reason=_opt_str(p.get("disturbed_reason")),
                output_check=output_check_text(p.get("output_check")),
                memory_timeline=p.get("memory_timeline") if isinstance(p.get("memory_timeline"), Mapping)
                else None,
            )


def budget_lines(budgets: Mapping[str, Any]) -> Iterable[BudgetLine]:
    """The budgets in force (``Budgets.to_dict()``), one line per budget and scope."""
    scopes = [("all devices", budgets.get("budgets") or {})]
    scopes += [(f"device class {k}", v) for k, v in (budgets.get("class") or {}).items()]
    scopes += [(f"variant {k}", v) for k, v in (budgets.get("variant") or {}).items()]
    for scope, table in scopes:
        for name, value in table.items():
            m = BUDGET_METRICS.get(name)
            if value is None:
                yield BudgetLine(scope, name, "off", m.description if m else "")
            elif m is None:
                yield BudgetLine(scope, name, str(value))
            else:
                op = "≤" if m.lower_is_better else "≥"
                unit = f" {m.display_unit}" if m.display_unit in ("ms", "s", "MB", "MiB") else ""
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
            rtf=METRICS["rtf"].value_of(group),
            first_inference_s=METRICS["first_inference_s"].value_of(group),
            load_s=METRICS["load_s"].value_of(group),
            import_s=_opt_float(first.get("import_s")),
            peak_rss_bytes=_opt_int(METRICS["peak_rss_bytes"].value_of(group)),
            mcd_db=METRICS["mcd_db"].value_of(group),
            mel_l1=METRICS["mel_l1"].value_of(group),
            emotion_id_accuracy=METRICS["emotion_id_accuracy"].value_of(group),
            mos=METRICS["mos"].value_of(group),
            mos_n=_opt_int(first.get("mos_n")),
            throttled=bool(_opt(first.get("throttled"))),
            hot=bool(_opt(first.get("hot"))),
            disturbed=_disturbance(group),
            stream_chunk_frames=_opt_int(first.get("stream_chunk_frames")),
            streaming={k: METRICS[k].value_of(group) for k in STREAMING_METRICS},
        )


def _disturbance(group) -> Optional[str]:
    """What disturbed a pair's measurement (summary columns ``disturbed``, ``disturbed_reason``; stores
    without them record no interference)."""
    if not any(_opt(r.get("disturbed")) for r in group):
        return None
    reasons = [str(r["disturbed_reason"]) for r in group if _opt(r.get("disturbed_reason"))]
    return "; ".join(dict.fromkeys(reasons)) or "interference during the measurement"


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
    df = results.history_df(store, limit=HISTORY_RUNS)
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
    from devices.ondevice.frontend import EMOTIONS  # the voice's emotion order: neutral first

    def order(item: Tuple[str, Any]) -> Tuple[int, str]:
        return (EMOTIONS.index(item[0]) if item[0] in EMOTIONS else len(EMOTIONS), item[0])

    for variant, entry in artifacts.items():
        base = Path(str(entry["path"]))
        for emotion, rel in sorted(((entry.get("manifest") or {}).get("samples") or {}).items(), key=order):
            yield AudioClip(variant=str(variant), emotion=str(emotion), source=base / str(rel))


def _runtime_agreement(artifacts: Mapping[str, Mapping[str, Any]]) -> Iterable[RuntimeAgreement]:
    for variant, entry in artifacts.items():
        manifest = entry.get("manifest") or {}
        agreement = manifest.get("onnx_agreement")
        if not isinstance(agreement, Mapping):
            continue
        report = (manifest.get("build") or {}).get("step_report") or {}
        quantized = report.get("quantized") or {}
        yield RuntimeAgreement(
            variant=variant, against=str(agreement.get("against") or "torch"), n=int(agreement.get("n") or 0),
            mel_rel_rms=_opt_float(agreement.get("mel_rel_rms")),
            mel_max_abs=_opt_float(agreement.get("mel_max_abs")),
            wav_max_abs=_opt_float(agreement.get("wav_max_abs")),
            durations_differ=_opt_int(agreement.get("durations_differ")),
            quantized_ops=tuple(quantized.get("ops") or ()),
            opset=_opt_int((report.get("onnx") or {}).get("opset")),
        )


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
