"""The verdict contract: what the gate stores for a run, and the only way to read it back.

A ``Verdict`` is an immutable value written by ``harness.gate.evaluate`` (``to_dict`` ->
``Store.save_verdict``) and read by the report, ``edgebench gate`` and CI (``read_verdict``). Readers render
the stored verdict; they never judge the run again. Values are in the unit of their metric
(``harness.vocabulary``: seconds, bytes, ...).

Verdict format versions (``VERDICT_VERSION``; ``read_verdict`` migrates older ones, refuses newer ones):
    1: checks named by budgets.toml key with values in budget units ("budget"); "ineligible" pairs listed
       apart and never counted; no "disturbed" outcome.
    2: checks named by metric key with values and limits in the metric's unit; every unmeasured pair in
       "unmeasured" (``allowed``: it did not count, as with ``--allow-unmeasured``); the "disturbed"
       outcome, check status and comparison verdict; "disturbances", "device_classes",
       "allow_unmeasured".

Standard library only (plus ``harness.vocabulary`` and ``harness.errors``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from harness import vocabulary as vocab
from harness.errors import UserError

VERDICT_FORMAT = "edgebench.verdict"
VERDICT_VERSION = 2


class VerdictFormatError(UserError):
    """A stored verdict this edgebench cannot read (unknown format, newer or unmigratable version)."""


def _none_for_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass(frozen=True)
class Check:
    """One budget check of one metric on one (device, variant). ``value`` and ``limit`` in the metric's
    unit; ``disturbed`` says what disturbed the pair's measurement (also on a check that passed)."""

    metric: str  # a harness.vocabulary.METRICS key
    device: str
    variant: str
    value: float | None
    limit: float
    status: str  # a harness.vocabulary.CHECK_STATUSES key
    device_identity: str | None = None
    device_class: str | None = None
    message: str = ""
    disturbed: str | None = None

    @property
    def spec(self) -> vocab.Metric:
        return vocab.METRICS[self.metric]

    @property
    def length_class(self) -> str | None:
        return self.spec.length_class

    @property
    def passed(self) -> bool:
        return vocab.CHECK_STATUSES[self.status].outcome is None

    @property
    def outcome(self) -> str | None:
        return vocab.CHECK_STATUSES[self.status].outcome

    def to_dict(self) -> dict:
        d = {k: _none_for_nan(v) for k, v in asdict(self).items()}
        m = vocab.METRICS.get(self.metric)
        if m is not None:  # for readers of `gate --json`; read_verdict ignores them
            d.update(budget_key=m.budget_key, unit=m.unit, better=m.better)
        return d


@dataclass(frozen=True)
class Comparison:
    """One (device, variant, length class) of a run compared with its baseline run (``harness.regress``).

    Medians in seconds; ratio, interval and p-value are None when a side had too few samples.
    ``disturbed``: what disturbed either side's measurement (verdict "disturbed" instead of "regressed").
    """

    device: str
    device_identity: str | None
    baseline_run_id: str
    baseline_identity: str | None
    variant: str
    length_class: str
    n_baseline: int
    n_candidate: int
    baseline_median: float | None
    candidate_median: float | None
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: str  # a harness.vocabulary.COMPARISON_VERDICTS key
    normalized: bool = False
    disturbed: str | None = None
    #: For a regression: ``harness.attribution``'s "device_drift", "model_regression" or "unattributed",
    #: and the evidence (None for comparisons that are not regressions, and in verdicts stored before).
    attribution: str | None = None
    attribution_evidence: str | None = None

    def __post_init__(self) -> None:
        for f in ("baseline_median", "candidate_median", "ratio", "ci_low", "ci_high", "p_value"):
            object.__setattr__(self, f, _none_for_nan(getattr(self, f)))

    @property
    def regressed(self) -> bool:
        return self.verdict == vocab.REGRESSED

    @property
    def improved(self) -> bool:
        return self.verdict == vocab.IMPROVED

    @property
    def outcome(self) -> str | None:
        return vocab.COMPARISON_VERDICTS[self.verdict].outcome

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Unmeasured:
    """A planned (device, variant) without an ok attempt; status "missing" if it was never attempted.

    ``allowed``: it does not count against the verdict (``--allow-unmeasured``); it is a warning instead.
    """

    device: str
    variant: str
    status: str
    error: str | None = None
    allowed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Disturbance:
    """A (device, variant) measurement of ``run_id`` that interference disturbed, and what disturbed it."""

    run_id: str
    device: str
    variant: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Cause:
    """One reason the verdict is what it is (a line of the report's banner)."""

    outcome: str
    device: str | None = None
    variant: str | None = None
    metric: str | None = None
    length_class: str | None = None
    value: float | None = None
    limit: float | None = None
    message: str = ""
    disturbed: str | None = None


@dataclass(frozen=True)
class Verdict:
    run_id: str
    outcome: str
    outcomes: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    unmeasured: tuple[Unmeasured, ...] = ()
    disturbances: tuple[Disturbance, ...] = ()
    baselines: Mapping[str, str | None] = field(default_factory=dict)  # device -> baseline run id
    warnings: tuple[str, ...] = ()
    budgets: Mapping[str, Any] = field(default_factory=dict)  # Budgets.to_dict()
    device_classes: Mapping[str, str | None] = field(default_factory=dict)
    allow_unmeasured: bool = False
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in vocab.OUTCOMES:
            raise ValueError(f"unknown verdict outcome {self.outcome!r}")
        if not self.outcomes:
            object.__setattr__(self, "outcomes", (self.outcome,))

    @property
    def exit_code(self) -> int:
        return vocab.EXIT_CODES[self.outcome]

    @property
    def label(self) -> str:
        return vocab.OUTCOMES[self.outcome].label

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(c for c in self.comparisons if c.regressed)

    @property
    def failed_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == vocab.CHECK_FAIL)

    @property
    def disturbed_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == vocab.CHECK_DISTURBED)

    @property
    def counted_unmeasured(self) -> tuple[Unmeasured, ...]:
        return tuple(u for u in self.unmeasured if not u.allowed)

    def check(self, device: str, variant: str, metric: str) -> Check | None:
        for c in self.checks:
            if (c.device, c.variant, c.metric) == (device, variant, metric):
                return c
        return None

    def causes(self) -> tuple[Cause, ...]:
        """Why the verdict is what it is, most serious outcome first."""
        out: list[Cause] = []
        for u in self.counted_unmeasured:
            out.append(Cause(vocab.COULD_NOT_MEASURE, u.device, u.variant,
                             message=f"{u.status}: {u.error or 'no reason recorded'}"))  # fmt: skip
        for c in self.checks:
            if c.outcome is not None:
                message = c.message or vocab.CHECK_STATUSES[c.status].meaning
                out.append(Cause(c.outcome, c.device, c.variant, c.metric, c.length_class, c.value, c.limit,
                                 message, c.disturbed))  # fmt: skip
        for r in self.comparisons:
            if r.outcome is not None:
                out.append(Cause(r.outcome, r.device, r.variant, length_class=r.length_class,
                                 message=comparison_text(r), disturbed=r.disturbed))  # fmt: skip
        for device, base in self.baselines.items():
            if base is None:
                out.append(Cause(vocab.NO_BASELINE, device,
                                 message="no earlier passing run on this device to compare with"))
        if self.outcome not in {c.outcome for c in out} and self.outcome != vocab.PASS:
            out.append(Cause(self.outcome, message=vocab.OUTCOMES[self.outcome].meaning))
        return tuple(sorted(out, key=lambda c: vocab.OUTCOME_ORDER.index(c.outcome)))

    def to_dict(self) -> dict:
        return {
            "format": VERDICT_FORMAT, "version": VERDICT_VERSION, "run_id": self.run_id,
            "outcome": self.outcome, "outcomes": list(self.outcomes), "exit_code": self.exit_code,
            "created_at": self.created_at, "allow_unmeasured": self.allow_unmeasured,
            "checks": [c.to_dict() for c in self.checks],
            "regressions": [c.to_dict() for c in self.regressions],  # for readers; derived from comparisons
            "comparisons": [c.to_dict() for c in self.comparisons],
            "unmeasured": [u.to_dict() for u in self.unmeasured],
            "disturbances": [d.to_dict() for d in self.disturbances],
            "baselines": dict(self.baselines), "warnings": list(self.warnings), "budgets": dict(self.budgets),
            "device_classes": dict(self.device_classes),
        }  # fmt: skip


# ------------------------------------------------------------------------------------------------ reading


def read_verdict(data: Mapping[str, Any], *, where: str = "stored verdict") -> Verdict:
    """A ``Verdict`` from its stored dict, migrated from older versions; VerdictFormatError otherwise.

    ``where`` names the verdict in messages ("verdict of run 20261123-020000-ab12").
    """
    if not isinstance(data, Mapping) or data.get("format") != VERDICT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise VerdictFormatError(
            f"{where}: not an edgebench verdict (format {found!r}, expected {VERDICT_FORMAT!r}); judge the "
            "run again with `edgebench gate --run RUN_ID`"
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise VerdictFormatError(f"{where}: bad verdict format version {version!r}; judge the run again "
                                 "with `edgebench gate --run RUN_ID`")
    if version > VERDICT_VERSION:
        raise VerdictFormatError(
            f"{where}: verdict format version {version} is newer than this edgebench reads "
            f"({VERDICT_VERSION}); upgrade edgebench, or judge the run again with this one "
            "(`edgebench gate --run RUN_ID`)"
        )
    d = dict(data)
    while version < VERDICT_VERSION:
        d = MIGRATIONS[version](d, where)
        version += 1
    try:
        return _from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise VerdictFormatError(f"{where}: damaged verdict ({type(exc).__name__}: {exc}); judge the run "
                                 "again with `edgebench gate --run RUN_ID`") from exc


def _known(cls: type, d: Mapping[str, Any]) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _from_dict(d: Mapping[str, Any]) -> Verdict:
    checks = []
    for c in d.get("checks", ()):
        if c["metric"] not in vocab.METRICS or c["status"] not in vocab.CHECK_STATUSES:
            raise ValueError(f"check of unknown metric {c['metric']!r} or status {c['status']!r}")
        checks.append(Check(**_known(Check, c)))
    comparisons = []
    for c in d.get("comparisons", ()):
        if c["verdict"] not in vocab.COMPARISON_VERDICTS:
            raise ValueError(f"unknown comparison verdict {c['verdict']!r}")
        comparisons.append(Comparison(**_known(Comparison, c)))
    return Verdict(
        run_id=str(d["run_id"]),
        outcome=str(d["outcome"]),
        outcomes=tuple(str(o) for o in d.get("outcomes", ())),
        checks=tuple(checks),
        comparisons=tuple(comparisons),
        unmeasured=tuple(Unmeasured(**_known(Unmeasured, u)) for u in d.get("unmeasured", ())),
        disturbances=tuple(Disturbance(**_known(Disturbance, x)) for x in d.get("disturbances", ())),
        baselines=dict(d.get("baselines") or {}),
        warnings=tuple(str(w) for w in d.get("warnings", ())),
        budgets=dict(d.get("budgets") or {}),
        device_classes=dict(d.get("device_classes") or {}),
        allow_unmeasured=bool(d.get("allow_unmeasured", False)),
        created_at=str(d.get("created_at") or ""),
    )


def _migrate_1_to_2(d: dict, where: str) -> dict:
    """Version 1 -> 2: checks renamed to metric keys in metric units; ineligible pairs become unmeasured
    pairs that did not count (version 1 never counted them). The outcome stays what was decided then."""
    checks = []
    for c in d.get("checks", ()):
        metric = vocab.BUDGET_METRICS.get(str(c.get("metric")))
        if metric is None:
            raise VerdictFormatError(
                f"{where}: version 1 check of unknown metric {c.get('metric')!r} cannot be migrated; judge "
                "the run again with `edgebench gate --run RUN_ID`"
            )
        value, budget = c.get("value"), c.get("budget")
        checks.append({
            "metric": metric.key, "device": c["device"], "variant": c["variant"],
            "value": None if value is None else metric.from_display(float(value)),
            "limit": metric.from_display(float(budget)), "status": c["status"],
            "device_identity": c.get("device_identity"), "device_class": c.get("device_class"),
            "message": c.get("message") or "",
        })  # fmt: skip
    unmeasured = [dict(u, allowed=False) for u in d.get("unmeasured", ())]
    unmeasured += [dict(u, allowed=True) for u in d.get("ineligible", ())]
    out = {k: v for k, v in d.items() if k not in ("ineligible", "regressions")}
    out.update(version=2, checks=checks, unmeasured=unmeasured, allow_unmeasured=False)
    return out


#: MIGRATIONS[n] turns a version n verdict dict into a version n + 1 one.
MIGRATIONS: dict[int, Callable[[dict, str], dict]] = {1: _migrate_1_to_2}


def comparison_text(c: Comparison) -> str:
    """``short sentences: median 1.12× the baseline (95 % CI 1.07–1.18, p = 0.0004)``."""
    if c.ratio is None:
        return f"{c.length_class} sentences: {vocab.COMPARISON_VERDICTS[c.verdict].meaning}"
    text = f"{c.length_class} sentences: median {c.ratio:.2f}× the baseline"
    if c.ci_low is not None and c.ci_high is not None:
        text += f" (95 % CI {c.ci_low:.2f}–{c.ci_high:.2f}"
        text += f", p = {c.p_value:.2g})" if c.p_value is not None else ")"
    if c.attribution:
        text += f"; {c.attribution.replace('_', ' ')}: {c.attribution_evidence}"
    return text
