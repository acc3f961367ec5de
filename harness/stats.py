"""Statistics used by the store, the gate and the reports: one percentile definition, RTF, bootstrap.

Percentiles use the **nearest-rank** definition and are always reported together with ``n``:

    rank(q) = ceil(q / 100 * n)   (1-based, clamped to [1, n]);   P_q = sorted(values)[rank - 1]

so every reported percentile is a value that was actually measured (no interpolation). With few samples
high percentiles collapse onto the maximum: P99 is the maximum for every n <= 100, which is why budgets
gate on P90 by default (P99 would need about 660 samples to be meaningful).

RTF (real-time factor) = synthesis seconds / seconds of audio produced; below 1 is faster than real time.
For a group of samples it is the ratio of the sums (total synthesis time / total audio time), which
weights each sentence by its length, as a listener would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

#: The percentiles every summary reports, in this order.
SUMMARY_PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0 < q <= 100; q == 0 gives the minimum) of ``values``.

    Raises ValueError for an empty input or q outside [0, 100]; NaN for none is not a number anyone wants.
    """
    data = np.sort(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float))
    n = data.size
    if n == 0:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    rank = max(1, math.ceil(q / 100.0 * n - 1e-9))
    return float(data[min(rank, n) - 1])


@dataclass(frozen=True)
class Summary:
    """Location and spread of one sample; every percentile is nearest-rank and comes with ``n``."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values: Iterable[float]) -> Summary:
    """Summary of a non-empty sample (ValueError if empty)."""
    data = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if data.size == 0:
        raise ValueError("summary of an empty sample")
    return Summary(
        n=int(data.size),
        p50=percentile(data, 50),
        p90=percentile(data, 90),
        p99=percentile(data, 99),
        mean=float(data.mean()),
        min=float(data.min()),
        max=float(data.max()),
    )


def rtf(synthesis_s: float | Sequence[float], audio_s: float | Sequence[float]) -> float:
    """Real-time factor: synthesis seconds / audio seconds (sums for sequences); ValueError if no audio."""
    synth = float(np.sum(synthesis_s))
    audio = float(np.sum(audio_s))
    if audio <= 0:
        raise ValueError("RTF needs a positive duration of audio")
    return synth / audio


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval around a point estimate."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def _median_rows(matrix: np.ndarray) -> np.ndarray:
    return np.median(matrix, axis=1)


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] = _median_rows,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over one sample (seeded, reproducible).

    ``statistic`` takes a 2-D array (one resample per row) and returns one value per row; the default is
    the median. The point estimate is the statistic of the sample itself.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap of an empty sample")
    _check_bootstrap_args(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(n_resamples, data.size))
    stats = statistic(data[idx])
    estimate = float(statistic(data[np.newaxis, :])[0])
    return _interval(estimate, stats, confidence, n_resamples)


def bootstrap_ratio_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of median(candidate) / median(baseline), each resampled on its own."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if base.size == 0 or cand.size == 0:
        raise ValueError("bootstrap of an empty sample")
    _check_bootstrap_args(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    base_med = np.median(base[rng.integers(0, base.size, size=(n_resamples, base.size))], axis=1)
    cand_med = np.median(cand[rng.integers(0, cand.size, size=(n_resamples, cand.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = cand_med / base_med
    estimate = float(np.median(cand) / np.median(base)) if np.median(base) != 0 else math.inf
    return _interval(estimate, ratios, confidence, n_resamples)


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _interval(estimate: float, stats: np.ndarray, confidence: float, n_resamples: int) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(stats, [tail, 100.0 - tail])
    return Interval(float(estimate), float(low), float(high), confidence, n_resamples)
