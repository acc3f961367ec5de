"""harness.stats: nearest-rank percentiles, summaries, RTF and the seeded bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from harness import stats


def test_nearest_rank_definition_on_1_to_10():
    values = list(range(10, 0, -1))  # unsorted on purpose
    assert stats.percentile(values, 50) == 5
    assert stats.percentile(values, 90) == 9
    assert stats.percentile(values, 91) == 10
    assert stats.percentile(values, 99) == 10
    assert stats.percentile(values, 100) == 10
    assert stats.percentile(values, 0) == 1


def test_percentile_is_always_a_measured_value():
    rng = np.random.default_rng(1)
    data = rng.lognormal(size=37)
    for q in (1, 25, 50, 75, 90, 99):
        assert stats.percentile(data, q) in set(data.tolist())


def test_p99_is_the_maximum_below_101_samples():
    data = np.arange(1, 101, dtype=float)
    assert stats.percentile(data, 99) == 99.0
    assert stats.percentile(data[:50], 99) == 50.0


@pytest.mark.parametrize("bad", [[], np.array([])])
def test_empty_sample_is_an_error(bad):
    with pytest.raises(ValueError):
        stats.percentile(bad, 50)
    with pytest.raises(ValueError):
        stats.summarize(bad)


def test_q_outside_range_is_an_error():
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summary_carries_n():
    s = stats.summarize([3.0, 1.0, 2.0])
    assert s.n == 3 and s.p50 == 2.0 and s.p90 == 3.0 and s.mean == pytest.approx(2.0)
    assert s.as_dict()["n"] == 3


def test_rtf_is_synthesis_over_audio():
    assert stats.rtf(0.5, 2.0) == 0.25
    assert stats.rtf([0.5, 1.5], [2.0, 2.0]) == 0.5
    with pytest.raises(ValueError):
        stats.rtf(1.0, 0.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    data = np.random.default_rng(0).lognormal(0, 0.1, size=50)
    a = stats.bootstrap_ci(data, seed=3, n_resamples=500)
    b = stats.bootstrap_ci(data, seed=3, n_resamples=500)
    assert a == b
    assert a.low <= a.estimate <= a.high
    assert a.estimate == pytest.approx(float(np.median(data)))


def test_bootstrap_ratio_of_medians():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0, 0.05, size=60)
    cand = base * 1.2
    ci = stats.bootstrap_ratio_ci(base, cand, n_resamples=500, seed=1)
    assert ci.estimate == pytest.approx(1.2)
    assert 1.05 < ci.low <= ci.estimate <= ci.high < 1.4
    with pytest.raises(ValueError):
        stats.bootstrap_ratio_ci([], [1.0])
