"""Export a run's results for other tools: its summaries as JSON, or Bencher Metric Format (BMF) documents.

Pure functions from ``harness.results.RunResults`` (plus the run's counted samples and, optionally, the
per-process peak RSS of each pair) to plain JSON-able dicts; ``edgebench export``
(``harness.commands.export``) reads the store and writes the files.

``--format json``: ``RunResults.to_dict()`` unchanged (``{"run", "device_classes", "summaries"}``).

``--format bmf``: Bencher's JSON adapter input, ``{benchmark: {measure: {"value", "lower_value",
"upper_value"}}}`` (https://bencher.dev/docs/reference/bencher-metric-format). The mapping:

- **Testbed**: a BMF document carries no testbed (``bencher run --testbed`` names it), so there is one
  document per testbed. The testbed of a device is its budget class as stored with the run
  (``RunResults.device_classes``), or the device's name when it has none.
- **Benchmark**: one per (variant, length class): ``edgebench/<variant>/<length class>``, e.g.
  ``edgebench/quantized@onnxruntime/short``. When several devices of the run share a testbed (two boards of
  one class), their benchmarks would collide, so *in that testbed* every name ends with the device:
  ``edgebench/<variant>/<length class>/<device>``. (Bencher then tracks each board on its own; a testbed
  measured by one device keeps the short names.)
- **Measures** (slugs carry their unit; Bencher creates a measure the first time it sees its slug):

  ==================  ==========================================================  ======================
  slug                value                                                       lower / upper
  ==================  ==========================================================  ======================
  ``latency-p50-ms``  nearest-rank median of ``total_s``, ms (summary ``p50_ms``)  95 % bootstrap CI
  ``latency-p90-ms``  nearest-rank p90 of ``total_s``, ms (summary ``p90_ms``)     95 % bootstrap CI
  ``rtf``             real-time factor, sum ``total_s`` / sum ``audio_s``          95 % bootstrap CI
  ``peak-rss-bytes``  peak RSS, bytes: max over the pair's counted processes        min / max over them
  ``size-bytes``      artifact size, bytes: acoustic + vocoder                      none
  ==================  ==========================================================  ======================

  The bootstrap (``harness.stats.bootstrap_ci``, seeded, 2000 resamples) resamples the summary's own
  counted samples and uses the summary's own statistic (nearest-rank percentile; the RTF resamples
  (total, audio) pairs together), so its point estimate is the value. A percentile interval need not
  contain its estimate; the bounds are widened to it, so ``lower_value <= value <= upper_value`` always.
  A measure whose value is missing (no audio duration, no RSS, no manifest sizes) is left out: BMF values
  must be numbers. Flags (disturbed, throttled) have no place in BMF and are not exported.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness import stats
from harness.results import RunResults, Summary, counted_processes

BENCHMARK_PREFIX = "edgebench"
LATENCY_P50 = "latency-p50-ms"
LATENCY_P90 = "latency-p90-ms"
RTF = "rtf"
PEAK_RSS = "peak-rss-bytes"
SIZE = "size-bytes"
#: Every measure slug an exported benchmark may have, in this order.
MEASURES = (LATENCY_P50, LATENCY_P90, RTF, PEAK_RSS, SIZE)
CONFIDENCE = 0.95
N_RESAMPLES = 2000


def testbed_of(results: RunResults, device: str) -> str:
    """The Bencher testbed of a device: its stored budget class, else its own name."""
    return results.device_classes.get(device) or device


def testbeds(results: RunResults) -> dict[str, list[str]]:
    """testbed -> the run's measured devices in it (both sorted)."""
    out: dict[str, set] = {}
    for s in results.summaries:
        out.setdefault(testbed_of(results, s.device), set()).add(s.device)
    return {t: sorted(out[t]) for t in sorted(out)}


def benchmark_name(variant: str, length_class: str, device: str | None = None) -> str:
    """``edgebench/<variant>/<length class>``, with ``/<device>`` when the testbed holds several devices."""
    name = f"{BENCHMARK_PREFIX}/{variant}/{length_class}"
    return f"{name}/{device}" if device is not None else name


def process_peak_rss(header: Mapping[str, Any] | None) -> list[int]:
    """The peak RSS (bytes) of each process whose numbers a summary uses: the counted ones of the attempt
    (``harness.results.header_metrics``' choice: counted, else ok, else all processes)."""
    procs = list((header or {}).get("processes") or [])
    counted = counted_processes(header)
    chosen = [p for i, p in enumerate(procs) if counted is not None and int(p.get("index", i)) in counted]
    chosen = chosen or [p for p in procs if p.get("status", "ok") == "ok"] or procs
    return [int(p["peak_rss_bytes"]) for p in chosen if _number(p.get("peak_rss_bytes")) is not None]


def bmf_documents(
    results: RunResults,
    samples: pd.DataFrame,
    process_rss: Mapping[tuple[str, str], Sequence[int]] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict]:
    """testbed -> its BMF document, for every testbed of the run (an empty dict when nothing was measured).

    ``samples``: the run's counted samples (``harness.results.samples_df``); ``process_rss``: (device,
    variant) -> the peak RSS of each counted process (``process_peak_rss``), for the RSS bounds.
    ValueError if two summaries would get one benchmark name in one testbed (cannot happen for a run
    loaded from a store: a device has one effective attempt per variant).
    """
    groups = _sample_groups(samples)
    shared = {t for t, devices in testbeds(results).items() if len(devices) > 1}
    docs: dict[str, dict] = {}
    for s in results.summaries:
        testbed = testbed_of(results, s.device)
        name = benchmark_name(s.variant, s.length_class, s.device if testbed in shared else None)
        doc = docs.setdefault(testbed, {})
        if name in doc:
            raise ValueError(f"testbed {testbed!r}: two summaries for benchmark {name!r}")
        rows = groups.get((s.device, _none(s.device_identity), s.variant, s.length_class))
        rss = (process_rss or {}).get((s.device, s.variant))
        doc[name] = bmf_measures(s, rows, rss, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {t: docs[t] for t in sorted(docs)}


def bmf_measures(
    summary: Summary,
    samples: pd.DataFrame | None,
    process_rss: Sequence[int] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, dict]:
    """measure slug -> metric for one summary; ``samples``: its counted samples (None: values only)."""
    total = audio = None
    if samples is not None and len(samples):
        total = pd.to_numeric(samples["total_s"], errors="coerce").to_numpy(dtype=float)
        audio = pd.to_numeric(samples["audio_s"], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(total).all():
            total = audio = None
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    out: dict[str, dict] = {}

    for slug, key, q in ((LATENCY_P50, "p50_ms", 50), (LATENCY_P90, "p90_ms", 90)):
        bounds = None
        if total is not None:
            ci = stats.bootstrap_ci(total, _nearest_rank_rows(q), **boot)
            bounds = (ci.low * 1e3, ci.high * 1e3)
        _put(out, slug, summary.get(key), bounds)

    rtf_bounds = None
    if total is not None and audio is not None and np.isfinite(audio).all() and audio.sum() > 0:
        ci = stats.bootstrap_ci(np.arange(total.size), _ratio_rows(total, audio), **boot)
        rtf_bounds = (ci.low, ci.high)
    _put(out, RTF, summary.get("rtf"), rtf_bounds)

    rss = [int(v) for v in process_rss or ()]
    _put(out, PEAK_RSS, summary.get("peak_rss_bytes"), (min(rss), max(rss)) if rss else None)

    acoustic = _number(summary.get("size_acoustic_bytes"))
    vocoder = _number(summary.get("size_vocoder_bytes"))
    if acoustic is not None and vocoder is not None:
        _put(out, SIZE, acoustic + vocoder, None)
    return out


# ------------------------------------------------------------------------------------------- helpers


def _nearest_rank_rows(q: float) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise ``stats.percentile(row, q)`` (nearest rank) of a resample matrix."""

    def statistic(matrix: np.ndarray) -> np.ndarray:
        n = matrix.shape[1]
        rank = max(1, math.ceil(q / 100.0 * n - 1e-9))
        k = min(rank, n) - 1
        return np.partition(matrix, k, axis=1)[:, k]

    return statistic


def _ratio_rows(total: np.ndarray, audio: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise RTF of resampled sample *indices* (bootstrapping indices keeps (total, audio) paired)."""

    def statistic(indices: np.ndarray) -> np.ndarray:
        idx = indices.astype(np.intp)
        with np.errstate(divide="ignore", invalid="ignore"):
            return total[idx].sum(axis=1) / audio[idx].sum(axis=1)

    return statistic


def _put(out: dict, slug: str, value: Any, bounds: tuple[float, float] | None) -> None:
    """Add a metric when its value is a finite number; bounds widened to contain it, dropped unless finite."""
    v = _number(value)
    if v is None:
        return
    metric: dict[str, float | int] = {"value": v}
    if bounds is not None:
        low, high = _number(bounds[0]), _number(bounds[1])
        if low is not None and high is not None:
            metric["lower_value"] = min(low, v)
            metric["upper_value"] = max(high, v)
    out[slug] = metric


def _number(v: Any) -> float | int | None:
    """A finite int or float as a plain Python number; None for anything else (None, NaN, bools, text)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _none(v: Any) -> Any:
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v


def _sample_groups(samples: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """(device, device identity, variant, length class) -> its rows (identity None when missing)."""
    if samples is None or samples.empty:
        return {}
    keys = ["device", "device_identity", "variant", "length_class"]
    return {
        (device, _none(identity), variant, length_class): g
        for (device, identity, variant, length_class), g in samples.groupby(keys, sort=False, dropna=False)
    }


def safe_file_stem(testbed: str) -> str:
    """A testbed name fit for a file name: anything but letters, digits, ``.``, ``_``, ``-`` becomes ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", testbed).lstrip(".")
    return stem or "testbed"


def file_stems(names: Iterable[str]) -> dict[str, str]:
    """testbed -> file stem; ValueError if two testbeds would share one file."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        stem = safe_file_stem(name)
        if stem in seen:
            raise ValueError(f"testbeds {seen[stem]!r} and {name!r} would both be written to {stem}.json")
        seen[stem] = name
        out[name] = stem
    return out
