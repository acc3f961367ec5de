"""Regression detection on raw samples against a baseline run.

For every (device, variant, sentence length class) the candidate's per-iteration ``total_s`` samples are
compared with the baseline's. A class is **regressed** only when both hold:

1. the one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, alternative "greater") rejects
   "candidate is not slower" at ``alpha`` (default 0.01), and
2. the effect is large enough: the ratio of medians candidate / baseline is >= ``min_ratio`` (1.05).

A bootstrap 95 % interval on the ratio is reported alongside (seeded, so verdicts are reproducible).
"improved" is the mirror image (ratio <= 1 / min_ratio and significant the other way).

Sentence normalisation: a length class mixes sentences of different lengths (5 to 12 characters for
"short"), whose latencies differ far more than a 10 % slowdown. When both sides carry sentence ids and
every candidate sentence appears in the baseline, each sample is divided by the baseline's median for its
sentence before testing, so the test sees the run-to-run change, not the corpus spread. The medians
reported stay raw seconds.

Baseline: a named run, or per device identity the last passing run on that same identity
(``Store.baseline_run_id``). Results of different identities are never compared automatically; comparing
to a named run whose identity differs works but warns loudly (``IdentityChangeWarning``).

Comparison verdicts are ``harness.vocabulary.COMPARISON_VERDICTS``; "disturbed" (a regression measured
while the device was disturbed) is decided by the gate, which knows the store's interference flags.

The false-positive rate (A/A) and the power (10 % slowdown) are checked in tests/test_regress.py on
generated lognormal samples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy.stats import mannwhitneyu

from harness import results, stats
from harness.budgets import RegressionSettings
from harness.store import LENGTH_CLASSES, Store
from harness.verdict import Comparison
from harness.vocabulary import IMPROVED, INSUFFICIENT, REGRESSED, UNCHANGED

__all__ = ["Comparison", "IMPROVED", "INSUFFICIENT", "REGRESSED", "UNCHANGED", "compare_samples", "detect"]


class IdentityChangeWarning(UserWarning):
    """Results of one device name measured under two different identities are being compared."""


@dataclass(frozen=True)
class SampleTest:
    """Outcome of comparing two samples (no device/variant context)."""

    n_baseline: int
    n_candidate: int
    baseline_median: float
    candidate_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    normalized: bool


def compare_samples(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    baseline_keys: Sequence[str] | None = None,
    candidate_keys: Sequence[str] | None = None,
    settings: RegressionSettings | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> SampleTest:
    """Is ``candidate`` slower than ``baseline``? See the module docstring for the rule."""
    settings = settings or RegressionSettings()
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    base_med = float(np.median(base)) if base.size else math.nan
    cand_med = float(np.median(cand)) if cand.size else math.nan
    if base.size < settings.min_samples or cand.size < settings.min_samples:
        return SampleTest(int(base.size), int(cand.size), base_med, cand_med, math.nan, math.nan, math.nan,
                          math.nan, INSUFFICIENT, False)
    base_n, cand_n, normalized = _normalize(base, cand, baseline_keys, candidate_keys)
    p_slower = float(mannwhitneyu(cand_n, base_n, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(cand_n, base_n, alternative="less").pvalue)
    interval = stats.bootstrap_ratio_ci(base_n, cand_n, n_resamples=n_resamples, seed=seed)
    ratio = interval.estimate
    if p_slower < settings.alpha and ratio >= settings.min_ratio:
        verdict, p_value = REGRESSED, p_slower
    elif p_faster < settings.alpha and ratio <= 1.0 / settings.min_ratio:
        verdict, p_value = IMPROVED, p_faster
    else:
        verdict, p_value = UNCHANGED, (p_slower if ratio >= 1.0 else p_faster)
    return SampleTest(int(base.size), int(cand.size), base_med, cand_med, ratio, interval.low,
                      interval.high, p_value, verdict, normalized)


def _normalize(
    base: np.ndarray, cand: np.ndarray, base_keys: Sequence[str] | None, cand_keys: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, bool]:
    if base_keys is None or cand_keys is None:
        return base, cand, False
    bk = np.asarray(base_keys, dtype=object)
    ck = np.asarray(cand_keys, dtype=object)
    if bk.size != base.size or ck.size != cand.size:
        raise ValueError("sentence keys must have one entry per sample")
    medians = {k: float(np.median(base[bk == k])) for k in set(bk.tolist())}
    if not set(ck.tolist()) <= set(medians) or any(m <= 0 for m in medians.values()):
        return base, cand, False
    scale_b = np.array([medians[k] for k in bk])
    scale_c = np.array([medians[k] for k in ck])
    return base / scale_b, cand / scale_c, True


@dataclass
class RegressionResult:
    """All comparisons of a run; ``baselines`` maps each device to its baseline run (None: none found)."""

    run_id: str
    comparisons: list[Comparison] = field(default_factory=list)
    baselines: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == REGRESSED]

    @property
    def no_baseline(self) -> list[str]:
        return [d for d, b in self.baselines.items() if b is None]


def detect(
    store: Store,
    run_id: str,
    baseline: str | None = None,
    settings: RegressionSettings | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> RegressionResult:
    """Compare a run's effective samples with ``baseline`` (a run id) or each identity's last passing run."""
    settings = settings or RegressionSettings()
    store.run(run_id)  # unknown run -> StoreError
    if baseline is not None:
        store.run(baseline)
    result = RegressionResult(run_id)
    cand_all = results.samples_df(store, run_id)
    cache: dict[str, object] = {}

    def samples_of(rid: str):
        if rid not in cache:
            cache[rid] = results.samples_df(store, rid)
        return cache[rid]

    for (device, identity), cand_dev in cand_all.groupby(["device", "device_identity"], sort=True,
                                                         dropna=False):
        identity = None if identity is None or (isinstance(identity, float) and math.isnan(identity)) \
            else str(identity)
        if baseline is not None:
            base_run = baseline
        else:
            base_run = store.baseline_run_id(run_id, identity)
            if base_run is None:
                _warn_other_identities(store, result, device, identity)
        result.baselines[device] = base_run
        if base_run is None:
            continue
        base_all = samples_of(base_run)
        base_dev = base_all[base_all["device"] == device]
        if base_dev.empty:
            result.warnings.append(f"baseline run {base_run} has no samples on device {device!r}")
            result.baselines[device] = None
            continue
        base_identities = set(base_dev["device_identity"].dropna().astype(str))
        if identity not in base_identities:
            _loud(result, f"device {device!r}: comparing identity {identity} with baseline run {base_run}'s "
                          f"identity {', '.join(sorted(base_identities)) or 'unknown'}: the hardware or "
                          "software changed, differences may not be regressions")
        base_identity = sorted(base_identities)[0] if len(base_identities) == 1 else None
        for variant, cand_var in cand_dev.groupby("variant", sort=True):
            base_var = base_dev[base_dev["variant"] == variant]
            if base_var.empty:
                result.warnings.append(f"device {device!r}: variant {variant!r} is not in baseline run "
                                       f"{base_run}; not compared")
                continue
            classes = [c for c in LENGTH_CLASSES if c in set(cand_var["length_class"])]
            classes += sorted(set(cand_var["length_class"]) - set(LENGTH_CLASSES))
            for length_class in classes:
                c = cand_var[cand_var["length_class"] == length_class]
                b = base_var[base_var["length_class"] == length_class]
                test = compare_samples(
                    b["total_s"].to_numpy(float), c["total_s"].to_numpy(float),
                    baseline_keys=b["sentence_id"].tolist(), candidate_keys=c["sentence_id"].tolist(),
                    settings=settings, n_resamples=n_resamples, seed=seed,
                )
                result.comparisons.append(Comparison(
                    device=device, device_identity=identity, baseline_run_id=base_run,
                    baseline_identity=base_identity, variant=variant, length_class=length_class,
                    **asdict(test),
                ))
    return result


def _warn_other_identities(store: Store, result: RegressionResult, device: str, identity: str | None) -> None:
    others = [i["fingerprint"] for i in store.identities_of(device) if i["fingerprint"] != identity]
    if others:
        _loud(result, f"device {device!r} changed identity ({', '.join(others)} -> {identity}): earlier runs "
                      "on the old identity are not used as a baseline; pass --baseline RUN to compare anyway")


def _loud(result: RegressionResult, message: str) -> None:
    result.warnings.append(message)
    warnings.warn(message, IdentityChangeWarning, stacklevel=3)
