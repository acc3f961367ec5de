"""Results: immutable summaries of a run, built from the store's raw rows with ``harness.stats``.

The store (``harness.store``) keeps persistence only: it writes runs, attempts, samples and facts, and
reads them back raw. Everything that *interprets* those rows lives here:

- which attempt of a (device, variant) pair counts (the store's ``effective_attempts``: the latest ok one),
- which of its processes and samples count (``counted_processes``: undisturbed ok processes; in a process
  whose disturbed samples were measured again, the re-measurements replace them),
- the per-(device, identity, variant, length class) summary: nearest-rank percentiles (``stats.summarize``),
  the real-time factor (``stats.rtf``), time to first audio, and the numbers the attempt's header (phases,
  peak RSS, flags) and the artifact's manifest (sizes, parameters, quality proxies) give.

```python
res = results.load(st, run_id)          # RunResults (frozen)
res.summaries[0].device, res.summaries[0]["p90_ms"]
res.frame()                              # one row per (device, identity, variant, length class)
res.to_dict()                            # JSON-able, for ``edgebench export --format json``
results.summary_df(st, run_id)           # == results.load(st, run_id).frame()
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd

from harness import stats
from harness.store import LENGTH_CLASSES, RAW_SAMPLE_COLUMNS

PHASES = ("import_s", "acoustic_load_s", "vocoder_load_s", "first_inference_s")
SUMMARY_COLUMNS = (
    "run_id", "device", "device_identity", "variant", "length_class", "n", "p50", "p90", "p99",
    "mean", "p50_ms", "p90_ms", "p99_ms", "frontend_p50", "acoustic_p50", "vocoder_p50", "audio_s",
    "rtf", "ttfa_p50", "ttfa_p90", "rt_margin_min", "stream_chunk_frames", "peak_rss_bytes",
    "rss_anon_bytes", "rss_file_bytes", *PHASES, "throttled", "hot",
    "disturbed", "disturbed_reason", "size_acoustic_bytes", "size_vocoder_bytes", "params_acoustic",
    "params_vocoder",
    "quality_mel_l1", "quality_mcd_db", "emotion_id_accuracy", "quality_n", "mos", "mos_n",
    "content_hash",
)
ATTEMPT_COLUMNS = ("attempt_id", "run_id", "device", "device_identity", "variant", "status", "error",
                   "started_at", "ended_at", "n_samples", "n_processes", "peak_rss_bytes", "rss_anon_bytes",
                   "rss_file_bytes", *PHASES, "throttled", "hot")


@dataclass(frozen=True)
class Summary:
    """One (device, device identity, variant, length class) of a run: ``values`` holds every column of
    ``SUMMARY_COLUMNS`` (seconds, milliseconds and bytes as the names say)."""

    device: str
    device_identity: str | None
    variant: str
    length_class: str
    n: int
    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass(frozen=True)
class RunResults:
    """A run's summaries, with the run's row and each device's budget class (from the stored identity)."""

    run: Mapping[str, Any]
    summaries: tuple[Summary, ...]
    device_classes: Mapping[str, str | None]

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    def frame(self) -> pd.DataFrame:
        if not self.summaries:
            return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
        return pd.DataFrame([dict(s.values) for s in self.summaries], columns=list(SUMMARY_COLUMNS))

    def to_dict(self) -> dict:
        return {"run": json_value(dict(self.run)), "device_classes": dict(self.device_classes),
                "summaries": json_records(self.frame())}


def load(st, run_id: str) -> RunResults:
    """The run's results (StoreError for an unknown run id)."""
    run = st.run(run_id)
    attempts = st.effective_attempts(run_id)
    classes: dict[str, str | None] = {}
    for a in attempts.values():
        classes.setdefault(a["device"], (a.get("identity") or {}).get("budget_class"))
    rows = _summary_rows(st, run_id, attempts)
    summaries = tuple(
        Summary(r["device"], r["device_identity"], r["variant"], r["length_class"], int(r["n"]),
                MappingProxyType(r))
        for r in rows
    )
    return RunResults(MappingProxyType(run), summaries, MappingProxyType(classes))


def summary_df(st, run_id: str) -> pd.DataFrame:
    """One row per (device, device_identity, variant, length_class) of a run's counted samples.

    Columns ``SUMMARY_COLUMNS``: n, p50, p90, p99, mean (seconds of ``total_s``; percentiles nearest-rank),
    p50_ms, p90_ms, p99_ms, frontend_p50, acoustic_p50, vocoder_p50, audio_s (sum), rtf (sum total_s / sum
    audio_s), ttfa_p50 / ttfa_p90 (time to first audio: ``total_s`` of whole-utterance samples),
    rt_margin_min (worst streaming chunk), stream_chunk_frames (the protocol's: None for whole-utterance
    synthesis), peak_rss_bytes (max over processes), import_s, acoustic_load_s, vocoder_load_s,
    first_inference_s (median over processes), throttled, hot, disturbed, size_acoustic_bytes,
    size_vocoder_bytes, params_acoustic, params_vocoder, quality_mel_l1, quality_mcd_db,
    emotion_id_accuracy, quality_n, mos, mos_n, content_hash.
    """
    st.run(run_id)  # an unknown run is a StoreError, not an empty table
    rows = _summary_rows(st, run_id, st.effective_attempts(run_id))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)) if rows else pd.DataFrame(
        columns=list(SUMMARY_COLUMNS))


def _summary_rows(st, run_id: str, attempts: Mapping[tuple[str, str], dict]) -> list[dict]:
    samples = _counted_samples(st, run_id, attempts)
    if samples.empty:
        return []
    by_id = {a["attempt_id"]: a for a in attempts.values()}
    artifacts = st.artifacts(run_id)
    mos = st.latest_mos()
    order = {c: i for i, c in enumerate(LENGTH_CLASSES)}
    rows = []
    keys = ["device", "device_identity", "variant", "length_class", "attempt_id"]
    for (device, identity, variant, length_class, attempt_id), g in samples.groupby(
        keys, sort=False, dropna=False
    ):
        total = g["total_s"].to_numpy(dtype=float)
        s = stats.summarize(total)
        audio = g["audio_s"].to_numpy(dtype=float)
        # whole-utterance samples (and those stored before schema 3) give their first audio at the end
        t = stats.summarize(g["ttfa_s"].fillna(g["total_s"]).to_numpy(dtype=float))
        margins = g["rt_margin_s"].dropna()
        row = {
            "run_id": run_id, "device": device, "device_identity": identity, "variant": variant,
            "length_class": length_class, "n": s.n, "p50": s.p50, "p90": s.p90, "p99": s.p99,
            "mean": s.mean, "p50_ms": s.p50 * 1e3, "p90_ms": s.p90 * 1e3, "p99_ms": s.p99 * 1e3,
            "frontend_p50": _p50(g["frontend_s"]), "acoustic_p50": _p50(g["acoustic_s"]),
            "vocoder_p50": _p50(g["vocoder_s"]), "audio_s": float(np.nansum(audio)),
            "rtf": stats.rtf(total, audio) if np.nansum(audio) > 0 else math.nan,
            "ttfa_p50": t.p50, "ttfa_p90": t.p90,
            "rt_margin_min": float(margins.min()) if len(margins) else math.nan,
        }
        header = by_id[attempt_id]["header"]
        row.update(header_metrics(header))
        row["disturbed"], row["disturbed_reason"] = pair_disturbance(header)
        row.update(_artifact_metrics(artifacts.get(variant), mos.get(variant)))
        rows.append((order.get(length_class, len(order)), row))
    rows.sort(key=lambda item: (item[1]["device"], item[1]["variant"], item[0]))  # stable
    return [{c: r.get(c) for c in SUMMARY_COLUMNS} for _, r in rows]


def samples_df(st, run_id: str, *, all_attempts: bool = False) -> pd.DataFrame:
    """A run's samples (columns ``SAMPLE_COLUMNS``, ``attempt_id``, interference and streaming columns).

    By default only the samples that count: the effective attempt of each (device, variant), its counted
    processes, and in a process whose disturbed samples were measured again, the re-measurements in their
    place. ``all_attempts=True``: every stored sample of every attempt, failed ones included.
    """
    if all_attempts:
        return st.raw_samples(run_id)
    return _counted_samples(st, run_id, st.effective_attempts(run_id))


def _counted_samples(st, run_id: str, attempts: Mapping[tuple[str, str], dict]) -> pd.DataFrame:
    counted: dict[int, set | None] = {}
    disturbed_procs: dict[int, set] = {}
    for a in attempts.values():
        if a["status"] == "ok":
            counted[a["attempt_id"]] = counted_processes(a["header"])
            disturbed_procs[a["attempt_id"]] = {
                int(p.get("index", i))
                for i, p in enumerate((a["header"] or {}).get("processes") or [])
                if p.get("disturbed")
            }
    df = st.raw_samples(run_id, list(counted))
    if df.empty:
        return pd.DataFrame(columns=list(RAW_SAMPLE_COLUMNS))
    # Statistics see the undisturbed processes of a pair (all of them when it stayed disturbed). In a
    # process whose disturbed samples were all measured again, the re-measurements replace them; a process
    # that stayed disturbed counts its steady state as measured.
    keep = []
    for a, p, d, again in zip(df["attempt_id"], df["process"], df["disturbed"].fillna(0),
                              df["remeasure_of"].isna()):
        if counted[a] is not None and p not in counted[a]:
            keep.append(False)
        elif p in disturbed_procs.get(a, ()):
            keep.append(bool(again))  # steady-state samples only
        else:
            keep.append(d != 1)
    return df[keep].reset_index(drop=True)


def attempts_df(st, run_id: str | None = None) -> pd.DataFrame:
    """One row per attempt (all of them, retries included) with phases (median over processes), peak RSS
    (max over processes), the throttled/hot flags and the number of samples."""
    rows = []
    for a in st.attempts(run_id):
        d = {k: v for k, v in a.items() if k not in ("identity", "header")}
        d.update(header_metrics(a["header"]))
        rows.append(d)
    return pd.DataFrame(rows, columns=list(ATTEMPT_COLUMNS))


def history_df(st, *, device: str | None = None, variant: str | None = None,
               limit: int | None = None) -> pd.DataFrame:
    """``summary_df`` rows of the latest ``limit`` runs (newest first) with the run's start time, status
    and outcome, optionally for one device and/or variant."""
    frames = []
    for run in st.runs_df(limit=limit).itertuples():
        df = summary_df(st, run.run_id)
        if device is not None:
            df = df[df["device"] == device]
        if variant is not None:
            df = df[df["variant"] == variant]
        if df.empty:
            continue
        frames.append(df.assign(started_at=run.started_at, status=run.status, outcome=run.outcome))
    if not frames:
        return pd.DataFrame(columns=["started_at", "status", "outcome", *SUMMARY_COLUMNS])
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------- helpers


def counted_processes(header: Mapping[str, Any] | None) -> set | None:
    """Indices of the processes whose samples count for an ok attempt: the undisturbed ok ones, or every
    ok one when the pair stayed disturbed; None for headers without process entries."""
    procs = (header or {}).get("processes")
    if not procs:
        return None
    ok = [p for p in procs if p.get("status", "ok") == "ok"]
    clean = [p for p in ok if not p.get("disturbed")]
    chosen = ok if (header or {}).get("disturbed") or not clean else clean
    return {int(p.get("index", i)) for i, p in enumerate(chosen)}


def pair_disturbance(header: Mapping[str, Any] | None) -> tuple[bool, str | None]:
    """Whether an ok attempt's counted data is disturbed, and what disturbed it."""
    header = header or {}
    if not header.get("disturbed"):
        return False, None
    reasons = [
        f"process {p.get('index')}: {p.get('disturbed_reason')}"
        for p in header.get("processes") or []
        if p.get("disturbed") and p.get("disturbed_reason")
    ]
    return True, "; ".join(reasons[:3]) or "interference during the measurement"


def header_metrics(header: Mapping[str, Any] | None) -> dict:
    """Per-attempt numbers from a stored header: phases (median over processes), peak RSS (max), flags.
    Of an ok attempt only the processes whose samples count (``counted_processes``) are used."""
    all_procs = list((header or {}).get("processes", []))
    counted = counted_processes(header)
    procs = [p for i, p in enumerate(all_procs) if counted is not None and int(p.get("index", i)) in counted]
    procs = procs or [p for p in all_procs if p.get("status", "ok") == "ok"] or all_procs
    out: dict[str, Any] = {"n_processes": len(procs)}
    for key in ("peak_rss_bytes", "rss_anon_bytes", "rss_file_bytes"):
        values = [p.get(key) for p in procs if p.get(key) is not None]
        out[key] = max(values) if values else None
    for phase in PHASES:
        out[phase] = _median_or_nan([(p.get("phases") or {}).get(phase) for p in procs])
    out["throttled"] = bool((header or {}).get("throttled")) or any(p.get("throttled") for p in procs)
    out["hot"] = bool((header or {}).get("hot")) or any(p.get("hot") for p in procs)
    out["stream_chunk_frames"] = ((header or {}).get("protocol") or {}).get("stream_chunk_frames")
    return out


def _artifact_metrics(artifact: Mapping[str, Any] | None, mos: Mapping[str, Any] | None) -> dict:
    manifest = (artifact or {}).get("manifest") or {}
    sizes = manifest.get("sizes") or {}
    params = manifest.get("params") or {}
    quality = manifest.get("quality") or {}
    return {
        "size_acoustic_bytes": sizes.get("acoustic"), "size_vocoder_bytes": sizes.get("vocoder"),
        "params_acoustic": params.get("acoustic"), "params_vocoder": params.get("vocoder"),
        "quality_mel_l1": quality.get("mel_l1"), "quality_mcd_db": quality.get("mcd_db"),
        "emotion_id_accuracy": quality.get("emotion_id_accuracy"), "quality_n": quality.get("n"),
        "mos": (mos or {}).get("mos"), "mos_n": (mos or {}).get("n"),
        "content_hash": (artifact or {}).get("content_hash"),
    }


def _p50(series: pd.Series) -> float:
    data = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)
    return stats.percentile(data, 50) if data.size else math.nan


def _median_or_nan(values: list) -> float:
    data = [float(v) for v in values if v is not None]
    return float(np.median(data)) if data else math.nan


def json_value(v: Any) -> Any:
    """A value as plain JSON (NaN/NA -> None, numpy scalars -> Python; containers walked)."""
    if isinstance(v, Mapping):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def json_records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain JSON-able dicts (NaN/NA -> None, numpy scalars -> Python)."""
    return [json_value(row) for row in df.to_dict(orient="records")]
