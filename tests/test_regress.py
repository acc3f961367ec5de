"""harness.regress: the false-positive rate (A/A) and the power (10 % slowdown) on generated samples with
realistic noise, then detection against baselines in a real store (identities, warnings).

Generated samples: per length class, sentences of different lengths in turn (latency proportional to
length), lognormal per-iteration noise (sigma 0.06), a per-process offset (3 fresh processes, sigma 0.01)
and 3 % scheduler hiccups (x 1 + Exp(0.3)); n per class 30, 45 or 60 like a real run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from records import make_identity, make_record, make_samples

from harness.budgets import RegressionSettings, default_budgets
from harness.regress import (
    IMPROVED,
    INSUFFICIENT,
    REGRESSED,
    UNCHANGED,
    IdentityChangeWarning,
    compare_samples,
    detect,
)
from harness.store import Store

TRIALS = 300
SIZES = (30, 45, 60)


def generated(rng, n: int, slowdown: float, length_class: str = "short", processes: int = 3):
    values, keys = [], []
    for _ in range(processes):
        offset = float(rng.lognormal(0.0, 0.01))
        for s in make_samples(rng, n // processes, classes=(length_class,), slowdown=slowdown, sigma=0.06,
                              process_offset=offset, outlier_rate=0.03):
            values.append(s["total_s"])
            keys.append(s["sentence_id"])
    return np.array(values), keys


def flag_rate(slowdown: float, trials: int = TRIALS) -> float:
    flagged = 0
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        n = SIZES[seed % len(SIZES)]
        length_class = ("short", "medium", "long")[seed % 3]
        base, base_keys = generated(rng, n, 1.0, length_class)
        cand, cand_keys = generated(rng, n, slowdown, length_class)
        test = compare_samples(base, cand, baseline_keys=base_keys, candidate_keys=cand_keys,
                               n_resamples=200, seed=seed)
        flagged += test.verdict == REGRESSED
    return flagged / trials


def test_aa_false_positive_rate_is_at_most_1_percent():
    assert flag_rate(1.0) <= 0.01


def test_ten_percent_slowdown_is_caught_at_least_95_percent_of_the_time():
    assert flag_rate(1.10) >= 0.95


def test_effect_size_floor_ignores_a_significant_but_tiny_slowdown():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.01, size=2000)
    cand = rng.lognormal(np.log(1.02), 0.01, size=2000)   # 2 %: significant with n = 2000, too small
    test = compare_samples(base, cand, n_resamples=200)
    assert test.p_value < 1e-6 and test.ratio < 1.05
    assert test.verdict == UNCHANGED


def test_improvement_and_insufficient_samples():
    rng = np.random.default_rng(1)
    base = rng.lognormal(0.0, 0.05, size=40)
    faster = rng.lognormal(np.log(0.8), 0.05, size=40)
    test = compare_samples(base, faster, n_resamples=200)
    assert test.verdict == IMPROVED and test.ratio < 0.9 and test.ci_high < 1.0
    few = compare_samples(base[:5], faster[:5])
    assert few.verdict == INSUFFICIENT and few.n_baseline == 5
    settings = RegressionSettings(min_samples=10)
    assert compare_samples(base, base[:9], settings=settings).verdict == INSUFFICIENT


def test_reported_ci_brackets_the_ratio_and_is_reproducible():
    rng = np.random.default_rng(2)
    base, bk = generated(rng, 45, 1.0)
    cand, ck = generated(rng, 45, 1.2)
    a = compare_samples(base, cand, baseline_keys=bk, candidate_keys=ck, seed=5)
    b = compare_samples(base, cand, baseline_keys=bk, candidate_keys=ck, seed=5)
    assert a == b and a.normalized
    assert a.verdict == REGRESSED and a.ci_low <= a.ratio <= a.ci_high
    assert a.ratio == pytest.approx(1.2, rel=0.05)


def test_unknown_candidate_sentences_fall_back_to_raw_samples():
    rng = np.random.default_rng(3)
    base, bk = generated(rng, 45, 1.0)
    cand, ck = generated(rng, 45, 1.0)
    test = compare_samples(base, cand, baseline_keys=bk, candidate_keys=["new"] * len(cand))
    assert not test.normalized and test.verdict == UNCHANGED


# --------------------------------------------------------------------------------------- with a store


def add_run(st, slowdown=1.0, seed=0, fingerprint=None, verdict="pass", variants=("original",)):
    rid = st.start_run({}, default_budgets().to_dict(), "test", "tiny", list(variants), ["pi4-a"])
    for v in variants:
        record = make_record(v, samples_per_class=45, seed=seed, slowdown=slowdown)
        st.record_attempt(rid, "pi4-a", make_identity("pi4-a", fingerprint), v, "ok", None, record)
    if verdict:
        code = 0 if verdict in ("pass", "no_baseline") else 1
        st.save_verdict(rid, {"outcome": verdict, "exit_code": code})
    return rid


@pytest.fixture
def st(tmp_path):
    with Store(tmp_path / "results.sqlite") as s:
        yield s


def test_detect_against_the_last_passing_run(st):
    first = add_run(st, seed=0, verdict="no_baseline")
    add_run(st, slowdown=1.3, seed=1, verdict="regressed")     # failing runs are never baselines
    cand = add_run(st, slowdown=1.15, seed=2, verdict=None)
    result = detect(st, cand)
    assert result.baselines == {"pi4-a": first}
    assert [c.length_class for c in result.comparisons] == ["short", "medium", "long"]
    assert all(c.verdict == REGRESSED for c in result.comparisons)
    assert result.regressions and not result.no_baseline and not result.warnings


def test_no_baseline_for_a_new_identity_warns_loudly(st):
    add_run(st, seed=0, fingerprint="aaaaaaaaaaaa")
    cand = add_run(st, seed=1, fingerprint="bbbbbbbbbbbb", verdict=None)
    with pytest.warns(IdentityChangeWarning):
        result = detect(st, cand)
    assert result.no_baseline == ["pi4-a"] and not result.comparisons
    assert "changed identity" in result.warnings[0]


def test_named_baseline_across_identities_compares_but_warns(st):
    base = add_run(st, seed=0, fingerprint="aaaaaaaaaaaa")
    cand = add_run(st, seed=1, fingerprint="bbbbbbbbbbbb", verdict=None)
    with pytest.warns(IdentityChangeWarning, match="aaaaaaaaaaaa"):
        result = detect(st, cand, baseline=base)
    assert result.baselines == {"pi4-a": base}
    assert len(result.comparisons) == 3 and all(c.verdict == UNCHANGED for c in result.comparisons)


def test_same_identity_named_baseline_is_quiet(st):
    base = add_run(st, seed=0)
    cand = add_run(st, seed=1, verdict=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = detect(st, cand, baseline=base)
    assert [c.verdict for c in result.comparisons] == [UNCHANGED] * 3


def test_variant_missing_from_baseline_is_reported(st):
    base = add_run(st, seed=0, variants=("original",))
    cand = add_run(st, seed=1, verdict=None, variants=("original", "pruned"))
    result = detect(st, cand, baseline=base)
    assert {c.variant for c in result.comparisons} == {"original"}
    assert any("'pruned' is not in baseline" in w for w in result.warnings)
