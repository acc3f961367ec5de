"""The gate: budgets and regressions of one run turned into a verdict, an exit code and JUnit XML.

Outcomes (``Verdict.outcome``, the most serious that applies; ``Verdict.outcomes`` lists all of them):

| outcome             | exit | meaning                                                                   |
|---------------------|------|---------------------------------------------------------------------------|
| "could_not_measure" | 2    | a planned (device, variant) has no ok attempt (unreachable, agent crash,   |
|                     |      | timeout, never attempted) or a budgeted metric has no value               |
| "budget_failed"     | 1    | a budget check failed                                                     |
| "regressed"         | 1    | a (device, variant, length class) is slower than its baseline             |
| "no_baseline"       | 0    | budgets met, but some device had no baseline to compare with (not a      |
|                     |      | failure by itself: the first run on a device identity)                    |
| "pass"              | 0    | every budget met, no regression                                           |

"could not measure" wins over failures on purpose: an incomplete run's verdict is incomplete, and CI
should rerun it rather than trust it. "ineligible" attempts (the device cannot run that variant by
design) are reported, not counted as failures. Optional metrics (MOS, emotion identifiability) without a
value are "skipped".

Verdict dict versions (``VERDICT_VERSION``): 1.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from harness.budgets import MB, METRICS, MIB, Budgets, default_budgets
from harness.errors import ConfigError
from harness.regress import REGRESSED, Comparison, detect
from harness.store import Store

VERDICT_VERSION = 1

PASS, BUDGET_FAILED, REGRESSED_OUTCOME = "pass", "budget_failed", "regressed"
COULD_NOT_MEASURE, NO_BASELINE = "could_not_measure", "no_baseline"
#: Most serious first; the first that applies is the verdict's outcome.
OUTCOME_ORDER = (COULD_NOT_MEASURE, BUDGET_FAILED, REGRESSED_OUTCOME, NO_BASELINE, PASS)
EXIT_CODES = {PASS: 0, NO_BASELINE: 0, BUDGET_FAILED: 1, REGRESSED_OUTCOME: 1, COULD_NOT_MEASURE: 2}

CHECK_PASS, CHECK_FAIL, CHECK_SKIPPED, CHECK_NOT_MEASURED = "pass", "fail", "skipped", "not_measured"


@dataclass(frozen=True)
class Check:
    """One budget check of one metric on one (device, variant)."""

    metric: str
    device: str
    device_identity: str | None
    device_class: str | None
    variant: str
    value: float | None
    budget: float
    unit: str
    direction: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status in (CHECK_PASS, CHECK_SKIPPED)

    def to_dict(self) -> dict:
        return _clean(asdict(self))


@dataclass(frozen=True)
class Unmeasured:
    """A planned (device, variant) without an ok attempt; status "missing" if it was never attempted."""

    device: str
    variant: str
    status: str
    error: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    run_id: str
    outcome: str
    outcomes: list[str]
    checks: list[Check] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    unmeasured: list[Unmeasured] = field(default_factory=list)
    ineligible: list[Unmeasured] = field(default_factory=list)
    baselines: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    budgets: dict = field(default_factory=dict)
    created_at: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == REGRESSED]

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.status == CHECK_FAIL]

    def to_dict(self) -> dict:
        return {
            "format": "edgebench.verdict", "version": VERDICT_VERSION, "run_id": self.run_id,
            "outcome": self.outcome, "outcomes": list(self.outcomes), "exit_code": self.exit_code,
            "created_at": self.created_at,
            "checks": [c.to_dict() for c in self.checks],
            "regressions": [c.to_dict() for c in self.regressions],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "unmeasured": [u.to_dict() for u in self.unmeasured],
            "ineligible": [u.to_dict() for u in self.ineligible],
            "baselines": dict(self.baselines), "warnings": list(self.warnings), "budgets": self.budgets,
        }


def evaluate(
    store: Store,
    run_id: str,
    budgets: Budgets | None = None,
    baseline: str | None = None,
    *,
    device_classes: Mapping[str, str | None] | None = None,
    save: bool = True,
    seed: int = 0,
) -> Verdict:
    """Judge a run: budget checks per (device, variant) and regressions against ``baseline``.

    ``budgets``: None uses the budgets stored with the run (the ones in force when it started).
    ``device_classes``: device name -> budget class; None reads ``budget_class`` from the inventory the
    run's configuration names (an unreadable inventory is a warning), then from the attempt's identity.
    ``save`` (default) stores the verdict (``store.save_verdict``): ``store.verdict(run_id)`` is what the
    report shows, and a passing run becomes the baseline of later runs on the same device identity.
    """
    run = store.run(run_id)
    if budgets is None:
        budgets = _budgets_of_run(run)
    early_warnings: list[str] = []
    if device_classes is None:
        device_classes = _classes_from_inventory(run, early_warnings)
    device_classes = dict(device_classes)
    attempts = store.effective_attempts(run_id)
    summary = store.summary_df(run_id)
    header_df = store.attempts_df(run_id).set_index("attempt_id")
    artifacts = store.artifacts(run_id)
    mos = store.latest_mos()

    checks: list[Check] = []
    unmeasured: list[Unmeasured] = []
    ineligible: list[Unmeasured] = []
    planned = [(d, v) for d in run["devices"] for v in run["variants"]]
    planned += sorted(k for k in attempts if k not in set(planned))
    for device, variant in planned:
        attempt = attempts.get((device, variant))
        if attempt is None:
            unmeasured.append(Unmeasured(device, variant, "missing", "never attempted (run interrupted?)"))
            continue
        if attempt["status"] == "ineligible":
            ineligible.append(Unmeasured(device, variant, "ineligible", attempt["error"]))
            continue
        if attempt["status"] != "ok":
            unmeasured.append(Unmeasured(device, variant, attempt["status"], attempt["error"]))
            continue
        identity = attempt["identity"] or {}
        device_class = device_classes.get(device) or identity.get("budget_class") or identity.get("class")
        rows = summary[(summary["device"] == device) & (summary["variant"] == variant)]
        header = header_df.loc[attempt["attempt_id"]]
        for flag, meaning in (("throttled", "throttled"), ("hot", "ran hot")):
            if bool(header.get(flag)):
                early_warnings.append(f"{device}/{variant}: the device {meaning} during the measurement; "
                                      "its latencies may be pessimistic")
        for metric, budget in budgets.resolved(device_class, variant).items():
            value = _value(metric, rows, header, artifacts.get(variant), mos.get(variant))
            checks.append(_check(metric, device, attempt["device_identity"], device_class, variant, value,
                                 budget))

    regression = detect(store, run_id, baseline, budgets.regression, seed=seed)
    outcomes = []
    if unmeasured or any(c.status == CHECK_NOT_MEASURED for c in checks):
        outcomes.append(COULD_NOT_MEASURE)
    if any(c.status == CHECK_FAIL for c in checks):
        outcomes.append(BUDGET_FAILED)
    if regression.regressions:
        outcomes.append(REGRESSED_OUTCOME)
    if regression.no_baseline:
        outcomes.append(NO_BASELINE)
    if not outcomes:
        outcomes.append(PASS)
    outcomes.sort(key=OUTCOME_ORDER.index)
    verdict = Verdict(
        run_id=run_id, outcome=outcomes[0], outcomes=outcomes, checks=checks,
        comparisons=regression.comparisons, unmeasured=unmeasured, ineligible=ineligible,
        baselines=regression.baselines, warnings=early_warnings + regression.warnings,
        budgets=budgets.to_dict(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if save:
        store.save_verdict(run_id, verdict.to_dict())
    return verdict


def _classes_from_inventory(run: Mapping[str, Any], warnings_out: list[str]) -> dict[str, str | None]:
    from devices.errors import DevicesError
    from devices.inventory import load_inventory

    path = (run.get("config") or {}).get("inventory")
    try:
        inventory = load_inventory(path)
    except DevicesError as exc:
        warnings_out.append(f"device budget classes unknown (inventory: {exc}); class budgets not applied")
        return {}
    return {name: dev.budget_class for name, dev in inventory.devices.items()}


def _budgets_of_run(run: Mapping[str, Any]) -> Budgets:
    stored = run.get("budgets") or {}
    if not stored:
        return default_budgets()
    try:
        return Budgets.from_dict(stored, source=f"budgets stored with run {run['run_id']}")
    except ConfigError:
        return default_budgets()


def _value(metric: str, rows: pd.DataFrame, header: pd.Series, artifact: Mapping | None,
           mos: Mapping | None) -> float | None:
    manifest = (artifact or {}).get("manifest") or {}
    m = METRICS[metric]
    if metric in ("acoustic_size_mb", "vocoder_size_mb"):
        size = (manifest.get("sizes") or {}).get(metric.split("_")[0])
        return None if size is None else size / MB
    if m.length_class is not None:
        stat = metric.split("_")[1]  # latency_<stat>_ms_<class>
        row = rows[rows["length_class"] == m.length_class]
        return None if row.empty else float(row.iloc[0][f"{stat}_ms"])
    if metric == "rtf":
        audio = float(rows["audio_s"].sum()) if not rows.empty else 0.0
        return float((rows["mean"] * rows["n"]).sum()) / audio if audio > 0 else None
    if metric == "peak_rss_mib":
        return _number(header.get("peak_rss_bytes"), scale=1 / MIB)
    if metric == "first_inference_s":
        return _number(header.get("first_inference_s"))
    if metric == "mos":
        return _number((mos or {}).get("mos"))
    if metric == "emotion_id_accuracy":
        return _number((manifest.get("quality") or {}).get("emotion_id_accuracy"))
    raise KeyError(f"no value extractor for metric {metric!r}")  # a registry entry without an extractor


def _number(value: Any, scale: float = 1.0) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value * scale


def _check(metric: str, device: str, identity: str | None, device_class: str | None, variant: str,
           value: float | None, budget: float) -> Check:
    m = METRICS[metric]
    op = "<=" if m.direction == "max" else ">="
    if value is None:
        status = CHECK_SKIPPED if m.optional else CHECK_NOT_MEASURED
        message = f"{metric}: no value ({'optional, skipped' if m.optional else 'not measured'})"
    else:
        ok = value <= budget if m.direction == "max" else value >= budget
        status = CHECK_PASS if ok else CHECK_FAIL
        message = (f"{metric} = {value:.4g} {m.unit} on {device}/{variant}: "
                   f"{'meets' if ok else 'violates'} budget {op} {budget:.4g} {m.unit}")
    return Check(metric, device, identity, device_class, variant, value, budget, m.unit, m.direction,
                 status, message)


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------- JUnit


def junit_xml(verdict: Verdict) -> str:
    """JUnit XML: one testcase per budget check, per regression comparison and per unmeasured pair."""
    cases: list[ET.Element] = []
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    for c in verdict.checks:
        case = ET.Element("testcase", classname=f"budgets.{c.device}.{c.variant}", name=c.metric)
        if c.status == CHECK_FAIL:
            ET.SubElement(case, "failure", message=c.message, type="budget_failed").text = c.message
            counts["failures"] += 1
        elif c.status == CHECK_NOT_MEASURED:
            ET.SubElement(case, "error", message=c.message, type="could_not_measure").text = c.message
            counts["errors"] += 1
        elif c.status == CHECK_SKIPPED:
            ET.SubElement(case, "skipped", message=c.message)
            counts["skipped"] += 1
        cases.append(case)
    for r in verdict.comparisons:
        case = ET.Element("testcase", classname=f"regressions.{r.device}.{r.variant}", name=r.length_class)
        if r.verdict == REGRESSED:
            text = (f"{r.variant} on {r.device}, {r.length_class} sentences: "
                    f"median {r.candidate_median:.4g} s vs {r.baseline_median:.4g} s "
                    f"in {r.baseline_run_id} (ratio {r.ratio:.3f}, 95% CI "
                    f"{r.ci_low:.3f}-{r.ci_high:.3f}, p = {r.p_value:.2g})")
            ET.SubElement(case, "failure", message=text, type="regressed").text = text
            counts["failures"] += 1
        cases.append(case)
    for u in verdict.unmeasured:
        case = ET.Element("testcase", classname=f"measure.{u.device}", name=u.variant)
        text = f"{u.variant} on {u.device}: {u.status}: {u.error or 'no detail'}"
        ET.SubElement(case, "error", message=text, type="could_not_measure").text = text
        counts["errors"] += 1
        cases.append(case)
    for u in verdict.ineligible:
        case = ET.Element("testcase", classname=f"measure.{u.device}", name=u.variant)
        ET.SubElement(case, "skipped", message=f"ineligible: {u.error or ''}")
        counts["skipped"] += 1
        cases.append(case)
    suite = ET.Element("testsuite", name=f"edgebench.gate.{verdict.run_id}", tests=str(len(cases)),
                       failures=str(counts["failures"]), errors=str(counts["errors"]),
                       skipped=str(counts["skipped"]), timestamp=verdict.created_at)
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="outcome", value=verdict.outcome)
    ET.SubElement(props, "property", name="exit_code", value=str(verdict.exit_code))
    for w in verdict.warnings:
        ET.SubElement(props, "property", name="warning", value=w)
    suite.extend(cases)
    root = ET.Element("testsuites", name="edgebench", tests=str(len(cases)),
                      failures=str(counts["failures"]), errors=str(counts["errors"]))
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def write_junit(verdict: Verdict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(verdict), encoding="utf-8")
    return path
