"""The gate: budgets and regressions of one run turned into a stored verdict, an exit code and JUnit XML.

Outcomes (``harness.vocabulary.OUTCOMES``; ``Verdict.outcome`` is the most serious that applies,
``Verdict.outcomes`` lists all of them):

| outcome             | exit | meaning                                                                   |
|---------------------|------|---------------------------------------------------------------------------|
| "could_not_measure" | 2    | a planned (device, variant) has no ok attempt (unreachable, agent crash,   |
|                     |      | timeout, ineligible, busy farm place, never attempted), a budgeted metric |
|                     |      | has no value, or nothing at all was measured                               |
| "disturbed"         | 2    | a latency/RTF/memory budget failed, or a regression was found, on a       |
|                     |      | measurement that interference disturbed (this run's or the baseline's)    |
| "budget_failed"     | 1    | a budget check failed                                                     |
| "regressed"         | 1    | a (device, variant, length class) is slower than its baseline             |
| "no_baseline"       | 0    | budgets met, but some device had no baseline to compare with (not a      |
|                     |      | failure by itself: the first run on a device identity)                    |
| "pass"              | 0    | every budget met, no regression                                           |

"could not measure" wins over failures on purpose: an incomplete run's verdict is incomplete, and CI
should rerun it rather than trust it. ``allow_unmeasured`` (``--allow-unmeasured``) turns unmeasured pairs
into warnings (``Unmeasured.allowed``) and lets the measured ones decide; a run in which no pair at all
was measured is "could_not_measure" even then. Optional metrics (MOS, emotion identifiability) without a
value are "skipped".

Disturbed measurements (``results.summary_df`` column ``disturbed``, with ``disturbed_reason``) never become
"budget_failed" or "regressed": interference only slows a measurement down, so a failed timing or memory
check on disturbed data is "disturbed", a passed one stays a pass (an upper bound) with the disturbance
noted, and a regression where either side was disturbed is "disturbed". Size and quality checks do not
depend on it.

Attribution (``harness.attribution``): every regression carries whether device drift (the board's own
micro-benchmarks moved by what the variant lost, or every variant on it slowed alike while other boards did
not) or the model (one variant slower on several boards, or on a board whose limits held) explains it, with
the evidence. It does not change the outcome unless ``[regression] device_drift = "disturbed"`` in the
budgets: then a regression the device explains is "disturbed" (exit 2, measure again), not "regressed".

Device budget classes come from the store only: ``budget_class`` in each attempt's identity; for runs
stored before classes were recorded, an explicit ``device_classes`` mapping, else the inventory file the
run's stored configuration names (with a warning).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Tuple

import pandas as pd

from harness import results
from harness import vocabulary as vocab
from harness.budgets import Budgets, default_budgets
from harness.errors import ConfigError
from harness.regress import detect
from harness.store import Store
from harness.verdict import (
    VERDICT_VERSION,
    Check,
    Comparison,
    Disturbance,
    Unmeasured,
    Verdict,
    comparison_text,
    read_verdict,
)

__all__ = ["VERDICT_VERSION", "Verdict", "evaluate", "junit_xml", "stored_verdict", "write_junit"]

_Pair = Tuple[str, str]  # (device, variant)


def evaluate(
    store: Store,
    run_id: str,
    budgets: Budgets | None = None,
    baseline: str | None = None,
    *,
    device_classes: Mapping[str, str | None] | None = None,
    allow_unmeasured: bool = False,
    save: bool = True,
    seed: int = 0,
) -> Verdict:
    """Judge a run: budget checks per (device, variant) and regressions against ``baseline``.

    ``budgets``: None uses the budgets stored with the run (the ones in force when it started).
    ``device_classes``: device name -> budget class, used only for devices whose attempts stored none
    (runs recorded before classes were stored); a class stored with the run always wins.
    ``allow_unmeasured``: unmeasured pairs are warnings, not "could_not_measure" (unless nothing was
    measured at all).
    ``save`` (default) stores the verdict (``store.save_verdict``): ``stored_verdict`` is what the report
    shows, and a passing run becomes the baseline of later runs on the same device identity.
    """
    run = store.run(run_id)
    if budgets is None:
        budgets = _budgets_of_run(run)
    warnings: list[str] = []
    attempts = store.effective_attempts(run_id)
    summary = results.summary_df(store, run_id)
    rows = _rows_by_pair(summary)
    disturbed = _disturbed_pairs(summary)
    classes = _budget_classes(run, attempts, device_classes, need=bool(budgets.classes), warnings=warnings)

    checks: list[Check] = []
    unmeasured: list[Unmeasured] = []
    planned = [(d, v) for d in run["devices"] for v in run["variants"]]
    planned += sorted(k for k in attempts if k not in set(planned))
    measured = 0
    for device, variant in planned:
        attempt = attempts.get((device, variant))
        if attempt is None:
            unmeasured.append(Unmeasured(device, variant, "missing", "never attempted (run interrupted?)",
                                         allowed=allow_unmeasured))
            continue
        if attempt["status"] != "ok":
            unmeasured.append(Unmeasured(device, variant, attempt["status"], attempt["error"],
                                         allowed=allow_unmeasured))
            continue
        measured += 1
        pair_rows = rows.get((device, variant), [])
        head = pair_rows[0] if pair_rows else {}
        for flag, meaning in (("throttled", "throttled"), ("hot", "ran hot")):
            if _truthy(head.get(flag)):
                warnings.append(f"{device}/{variant}: the device {meaning} during the measurement; "
                                "its latencies may be pessimistic")
        reason = disturbed.get((device, variant))
        device_class = classes.get(device)
        pair_checks = [
            _check(metric, device, attempt["device_identity"], device_class, variant,
                   metric.value_of(pair_rows), metric.from_display(budget), reason)
            for metric, budget in (
                (vocab.BUDGET_METRICS[k], b) for k, b in budgets.resolved(device_class, variant).items()
            )
        ]  # fmt: skip
        checks += pair_checks
        passed = [c.spec.budget_key for c in pair_checks if c.status == vocab.CHECK_PASS and c.disturbed]
        if passed:
            warnings.append(f"{device}/{variant}: measured while disturbed ({reason}); {', '.join(passed)} "
                            "passed anyway (interference only slows a measurement down)")
    if measured == 0:
        if allow_unmeasured and unmeasured:
            warnings.append("nothing was measured: --allow-unmeasured applies only when some pair was")
        unmeasured = [Unmeasured(u.device, u.variant, u.status, u.error, allowed=False) for u in unmeasured]
    for u in unmeasured:
        if u.allowed:
            warnings.append(f"{u.device}/{u.variant} was not measured ({u.status}: "
                            f"{u.error or 'no detail'}); allowed by --allow-unmeasured")

    regression = detect(store, run_id, baseline, budgets.regression, seed=seed)
    attributed = _attributed(store, run_id, regression.comparisons)
    comparisons, baseline_disturbances = _disturbed_comparisons(store, attributed, disturbed)
    if budgets.regression.device_drift == vocab.DISTURBED:
        comparisons = [_drift_disturbed(c) for c in comparisons]
    disturbances = [Disturbance(run_id, d, v, r) for (d, v), r in disturbed.items()] + baseline_disturbances

    found = [vocab.COULD_NOT_MEASURE] if measured == 0 or any(not u.allowed for u in unmeasured) else []
    found += [c.outcome for c in checks if c.outcome is not None]
    found += [c.outcome for c in comparisons if c.outcome is not None]
    if regression.no_baseline:
        found.append(vocab.NO_BASELINE)
    outcomes = vocab.order_outcomes(found)
    verdict = Verdict(
        run_id=run_id, outcome=outcomes[0], outcomes=outcomes, checks=tuple(checks),
        comparisons=tuple(comparisons), unmeasured=tuple(unmeasured), disturbances=tuple(disturbances),
        baselines=dict(regression.baselines), warnings=tuple(warnings + regression.warnings),
        budgets=budgets.to_dict(), device_classes=classes, allow_unmeasured=allow_unmeasured,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    if save:
        store.save_verdict(run_id, verdict.to_dict())
    return verdict


def stored_verdict(store: Store, run_id: str) -> Verdict | None:
    """The verdict stored for ``run_id`` (None if the gate never judged it); VerdictFormatError if this
    edgebench cannot read it (newer version, damaged)."""
    data = store.verdict(run_id)
    return None if data is None else read_verdict(data, where=f"verdict of run {run_id}")


# ------------------------------------------------------------------------------------------- helpers


def _truthy(value: Any) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and value != value) \
        and bool(value)


def _rows_by_pair(summary: pd.DataFrame) -> dict[_Pair, list[dict]]:
    out: dict[_Pair, list[dict]] = {}
    for row in summary.to_dict("records"):
        out.setdefault((row["device"], row["variant"]), []).append(row)
    return out


def _disturbed_pairs(summary: pd.DataFrame) -> dict[_Pair, str]:
    """(device, variant) -> what disturbed its measurement, from the summary's ``disturbed`` column
    (absent in stores that do not record interference: nothing is disturbed)."""
    if "disturbed" not in summary.columns:
        return {}
    out: dict[_Pair, list[str]] = {}
    for row in summary.to_dict("records"):
        if _truthy(row.get("disturbed")):
            reason = row.get("disturbed_reason")
            reason = str(reason) if _truthy(reason) else "interference detected"
            reasons = out.setdefault((row["device"], row["variant"]), [])
            if reason not in reasons:
                reasons.append(reason)
    return {pair: "; ".join(reasons) for pair, reasons in out.items()}


def _attributed(store: Store, run_id: str, comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with each regression attributed to device drift or the model
    (``harness.attribution``), from the devices' micro-benchmarks in this run and in each baseline run."""
    from harness import roofline
    from harness.attribution import attribute

    def bounds(rid: str) -> dict:
        """device -> its sustained limits (a burst-throttled board keeps its per-call medians)."""
        out = {}
        for device, row in store.microbench(rid).items():
            for statistic in ("sustained", "median"):
                try:
                    out[device] = roofline.Bounds.from_microbench(row["doc"], statistic)
                    break
                except ValueError:
                    continue
        return out

    now = bounds(run_id)
    before: dict[str, dict] = {}
    drift: dict[str, dict | None] = {}
    for c in comparisons:
        if c.verdict != vocab.REGRESSED or c.device in drift:
            continue
        if c.baseline_run_id not in before:
            before[c.baseline_run_id] = bounds(c.baseline_run_id)
        a, b = now.get(c.device), before[c.baseline_run_id].get(c.device)
        drift[c.device] = roofline.drift(a, b) if a is not None and b is not None else None
    found = attribute(comparisons, drift)
    return [Comparison(**{**c.to_dict(), "attribution": found[i].kind,
                          "attribution_evidence": found[i].evidence})
            if i in found else c for i, c in enumerate(comparisons)]


def _drift_disturbed(c: Comparison) -> Comparison:
    """``[regression] device_drift = "disturbed"``: a regression the device explains is "disturbed" (exit 2,
    measure again on a healthy board) instead of "regressed"."""
    from harness.attribution import DEVICE_DRIFT

    if c.verdict != vocab.REGRESSED or c.attribution != DEVICE_DRIFT:
        return c
    return Comparison(**{**c.to_dict(), "verdict": vocab.DISTURBED,
                         "disturbed": f"device drift: {c.attribution_evidence}"})


def _disturbed_comparisons(
    store: Store, comparisons: list[Comparison], disturbed: Mapping[_Pair, str]
) -> tuple[list[Comparison], list[Disturbance]]:
    """Regressions where this run's or the baseline's pair was disturbed become "disturbed"."""
    baseline_disturbed: dict[str, dict[_Pair, str]] = {}
    noted: dict[tuple, Disturbance] = {}
    out = []
    for c in comparisons:
        if c.verdict != vocab.REGRESSED:
            out.append(c)
            continue
        if c.baseline_run_id not in baseline_disturbed:
            baseline_disturbed[c.baseline_run_id] = _disturbed_pairs(
                results.summary_df(store, c.baseline_run_id))
        reasons = []
        if (c.device, c.variant) in disturbed:
            reasons.append(f"this run: {disturbed[(c.device, c.variant)]}")
        base_reason = baseline_disturbed[c.baseline_run_id].get((c.device, c.variant))
        if base_reason is not None:
            reasons.append(f"baseline run {c.baseline_run_id}: {base_reason}")
            key = (c.baseline_run_id, c.device, c.variant)
            noted.setdefault(key, Disturbance(c.baseline_run_id, c.device, c.variant, base_reason))
        if reasons:
            c = Comparison(**{**c.to_dict(), "verdict": vocab.DISTURBED, "disturbed": "; ".join(reasons)})
        out.append(c)
    return out, list(noted.values())


def _budget_classes(
    run: Mapping[str, Any],
    attempts: Mapping[_Pair, Mapping[str, Any]],
    explicit: Mapping[str, str | None] | None,
    *,
    need: bool,
    warnings: list[str],
) -> dict[str, str | None]:
    """Device -> budget class as stored with the run (the identity of its ok attempts first)."""
    stored: dict[str, str | None] = {}
    for (device, _), attempt in sorted(attempts.items(), key=lambda kv: kv[1]["status"] != "ok"):
        identity = attempt.get("identity") or {}
        if "budget_class" in identity and device not in stored:
            stored[device] = identity["budget_class"]
    devices = list(dict.fromkeys([*run["devices"], *(d for d, _ in attempts)]))
    missing = [d for d in devices if d not in stored]
    classes = dict(stored)
    if not missing:
        return classes
    if explicit is not None:
        classes.update({d: explicit.get(d) for d in missing})
        return classes
    path = (run.get("config") or {}).get("inventory")
    fallback = _classes_from_inventory(path, warnings if need else []) if path is not None else None
    classes.update({d: (fallback or {}).get(d) for d in missing})
    if need and fallback is not None:
        warnings.append(f"{', '.join(missing)}: no budget class stored with run {run['run_id']} (recorded "
                        f"before edgebench stored them); read from {path} as it is now")
    elif need:
        warnings.append(f"{', '.join(missing)}: no budget class stored with run {run['run_id']}; class "
                        "budgets not applied to them (`edgebench gate --inventory devices.toml` names them)")
    return classes


def _classes_from_inventory(path: str, warnings_out: list[str]) -> dict[str, str | None] | None:
    """Budget classes from the inventory file a run's stored configuration names (old runs only)."""
    from devices.errors import DevicesError
    from devices.inventory import load_inventory

    try:
        inventory = load_inventory(path)
    except DevicesError as exc:
        warnings_out.append(f"device budget classes unknown (inventory: {exc}); class budgets not applied")
        return None
    return {name: dev.budget_class for name, dev in inventory.devices.items()}


def _budgets_of_run(run: Mapping[str, Any]) -> Budgets:
    stored = run.get("budgets") or {}
    if not stored:
        return default_budgets()
    try:
        return Budgets.from_dict(stored, source=f"budgets stored with run {run['run_id']}")
    except ConfigError:
        return default_budgets()


def _check(metric: vocab.Metric, device: str, identity: str | None, device_class: str | None, variant: str,
           value: float | None, limit: float, disturbed: str | None) -> Check:
    name = metric.budget_key
    if value is None:
        status = vocab.CHECK_SKIPPED if metric.optional else vocab.CHECK_NOT_MEASURED
        message = f"{name}: no value ({'optional, skipped' if metric.optional else 'not measured'})"
        return Check(metric.key, device, variant, None, limit, status, identity, device_class, message)
    ok = metric.meets(value, limit)
    status = vocab.CHECK_PASS if ok else vocab.CHECK_FAIL
    message = (f"{name} = {metric.display_text(value)} on {device}/{variant}: "
               f"{'meets' if ok else 'violates'} budget {metric.op} {metric.display_text(limit)}")
    if not (metric.disturbable and disturbed):
        return Check(metric.key, device, variant, value, limit, status, identity, device_class, message)
    if not ok:
        status = vocab.CHECK_DISTURBED
        message += f", but the measurement was disturbed ({disturbed}): measure it again"
    else:
        message += f" (measured while disturbed: {disturbed})"
    return Check(metric.key, device, variant, value, limit, status, identity, device_class, message,
                 disturbed)


# ---------------------------------------------------------------------------------------------- JUnit


def junit_xml(verdict: Verdict) -> str:
    """JUnit XML: one testcase per budget check, per regression comparison and per unmeasured pair.

    Exit-1 outcomes are ``<failure>``, exit-2 ones (could not measure, disturbed) ``<error>``; the
    element's ``type`` is the outcome. A pass on disturbed data carries the disturbance in ``system-out``.
    """
    cases: list[ET.Element] = []
    counts = {"failures": 0, "errors": 0, "skipped": 0}

    def add(case: ET.Element, element: str | None, kind: str | None, text: str) -> None:
        if element == vocab.JUNIT_SKIPPED:
            ET.SubElement(case, "skipped", message=text)
            counts["skipped"] += 1
        elif element is not None:
            ET.SubElement(case, element, message=text, type=kind or "").text = text
            counts["failures" if element == vocab.JUNIT_FAILURE else "errors"] += 1
        cases.append(case)

    for c in verdict.checks:
        case = ET.Element("testcase", classname=f"budgets.{c.device}.{c.variant}",
                          name=c.spec.budget_key or c.metric)
        if c.disturbed and c.passed:
            ET.SubElement(case, "system-out").text = f"measured while disturbed: {c.disturbed}"
        status = vocab.CHECK_STATUSES[c.status]
        add(case, status.junit, status.outcome, c.message)
    for r in verdict.comparisons:
        case = ET.Element("testcase", classname=f"regressions.{r.device}.{r.variant}", name=r.length_class)
        status = vocab.COMPARISON_VERDICTS[r.verdict]
        text = f"{r.variant} on {r.device}, {comparison_text(r)} in {r.baseline_run_id}"
        if r.disturbed:
            text += f"; disturbed: {r.disturbed}"
        add(case, status.junit, status.outcome, text)
    for u in verdict.unmeasured:
        case = ET.Element("testcase", classname=f"measure.{u.device}", name=u.variant)
        text = f"{u.variant} on {u.device}: {u.status}: {u.error or 'no detail'}"
        if u.allowed:
            add(case, vocab.JUNIT_SKIPPED, None, f"not measured, allowed: {text}")
        else:
            add(case, vocab.JUNIT_ERROR, vocab.COULD_NOT_MEASURE, text)
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
