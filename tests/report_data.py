"""Hand-made, realistic ``ReportData`` for the report tests (no store, no models, seeded).

Two devices (a Raspberry Pi 4 that fails the latency budget and throttles once, an Intel N100 that
passes except where a distilled measurement timed out), six variants, raw samples in three length
classes, a nightly history, a regression against a baseline and one WAV per emotion per variant.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from harness.budgets import default_budgets
from harness.verdict import Check, Comparison, Unmeasured, Verdict
from harness.vocabulary import LENGTH_CLASSES, METRICS
from reports.model import (
    Attempt,
    AudioClip,
    DeviceInfo,
    LatencyStats,
    ReportData,
    RunInfo,
    Sample,
    TrendPoint,
    VariantResult,
    budget_lines,
)

VARIANTS = ("original", "pruned", "quantized", "pruned+quantized", "unstructured", "distilled")
EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
# variant -> (acoustic MB, params acoustic M, acoustic speed factor, peak RSS MiB, mcd dB, emotion acc)
VARIANT_SHAPE = {
    "original": (49.2, 12.3, 1.00, 690, 0.0, 0.95),
    "pruned": (19.7, 4.9, 0.45, 430, 1.9, 0.92),
    "quantized": (14.1, 12.3, 0.36, 380, 0.8, 0.94),
    "pruned+quantized": (6.2, 4.9, 0.30, 300, 2.4, 0.91),
    "unstructured": (49.2, 12.3, 0.88, 690, 1.1, 0.93),
    "distilled": (24.6, 6.1, 0.40, 420, 2.9, 0.89),
}
VOCODER_MB, VOCODER_PARAMS_M = 19.4, 4.86
PHONES = {"short": (14, 24), "medium": (40, 75), "long": (120, 190)}
DEVICES = {  # device -> (seconds per phone for original acoustic, vocoder RTF)
    "pi4": (0.030, 0.22),
    "n100": (0.0075, 0.07),
}
MIB = 2**20
BASELINE = "20261122-020000-0008"

def _comparison(device, variant, base, cand, ratio, ci_low, ci_high, p, verdict) -> Comparison:
    """A comparison as harness.regress makes it (medians in seconds)."""
    return Comparison(device, None, BASELINE, None, variant, "short", 30, 30, base, cand, ratio, ci_low,
                      ci_high, p, verdict)  # fmt: skip


COMPARISONS = (
    _comparison("pi4", "quantized", 0.262, 0.294, 1.122, 1.071, 1.183, 0.0004, "regressed"),
    _comparison("pi4", "pruned", 0.311, 0.305, 0.981, 0.944, 1.021, 0.41, "unchanged"),
    _comparison("n100", "pruned+quantized", 0.071, 0.064, 0.90, 0.86, 0.94, 0.002, "improved"),
)


def _check(device: str, variant: str, metric: str, value: float, limit: float) -> Check:
    """A budget check as harness.gate makes it (metric key, values in the metric's unit)."""
    status = "pass" if METRICS[metric].meets(value, limit) else "fail"
    return Check(metric, device, variant, value, limit, status, message=f"{metric} = {value:.4g}")


def _nearest_rank(values: List[float], q: float) -> float:
    s = sorted(values)
    k = max(1, int(-(-q * len(s) // 1)))
    return s[min(k, len(s)) - 1]


def _samples(
    rng: random.Random, device: str, variant: str, n_per_class: int, slow: float = 1.0
) -> List[Sample]:
    per_phone, voc_rtf = DEVICES[device]
    factor = VARIANT_SHAPE[variant][2]
    vocoder_factor = 0.8 if "quantized" in variant else 1.0
    out = []
    for lc in LENGTH_CLASSES:
        lo, hi = PHONES[lc]
        for _ in range(n_per_class):
            phones = rng.randint(lo, hi)
            audio_s = phones * 0.085 * rng.uniform(0.9, 1.1)
            frontend = 0.0015 + phones * 2e-5
            acoustic = phones * per_phone * factor * slow * rng.lognormvariate(0, 0.08)
            vocoder = audio_s * voc_rtf * vocoder_factor * slow * rng.lognormvariate(0, 0.05)
            out.append(
                Sample(lc, phones, audio_s, frontend, acoustic, vocoder, frontend + acoustic + vocoder)
            )
    return out


def make_report_data(
    tmp_path: Optional[Path] = None,
    *,
    hostile_fact: Optional[str] = None,
    seed: int = 0,
    n_per_class: int = 30,
) -> ReportData:
    """A run on two devices with every section of the report populated.

    ``tmp_path``: where to write the sample WAVs (no audio section when None).
    ``hostile_fact``: put this string into the pi4's reported CPU model (escaping tests).
    """
    rng = random.Random(seed)
    results: List[VariantResult] = []
    samples: Dict[Tuple[str, str], Tuple[Sample, ...]] = {}
    checks: List[Check] = []
    attempts: List[Attempt] = []
    for device in DEVICES:
        for variant in VARIANTS:
            if device == "n100" and variant == "distilled":
                attempts.append(
                    Attempt(
                        device,
                        variant,
                        "timeout",
                        "measurement exceeded its timeout (900 s) in process 2 of 3",
                    )
                )
                results.append(
                    VariantResult(
                        device, variant, status="timeout", error="measurement exceeded its timeout (900 s)"
                    )
                )
                continue
            throttled = device == "pi4" and variant == "original"
            slow = 1.12 if (device == "pi4" and variant == "quantized") else 1.0
            ss = _samples(rng, device, variant, n_per_class, slow)
            samples[(device, variant)] = tuple(ss)
            latency = {}
            for lc in LENGTH_CLASSES:
                tot = [s.total_s for s in ss if s.length_class == lc]
                audio = sum(s.audio_s for s in ss if s.length_class == lc)
                latency[lc] = LatencyStats(
                    n=len(tot),
                    p50_s=_nearest_rank(tot, 0.5),
                    p90_s=_nearest_rank(tot, 0.9),
                    p99_s=_nearest_rank(tot, 0.99),
                    mean_s=sum(tot) / len(tot),
                    rtf=sum(tot) / audio,
                )
            ac_mb, ac_params, _, rss_mib, mcd, emo = VARIANT_SHAPE[variant]
            r = VariantResult(
                device=device,
                variant=variant,
                sizes={"acoustic": int(ac_mb * 1e6), "vocoder": int(VOCODER_MB * 1e6)},
                params={"acoustic": int(ac_params * 1e6), "vocoder": int(VOCODER_PARAMS_M * 1e6)},
                latency=latency,
                rtf=sum(s.total_s for s in ss) / sum(s.audio_s for s in ss),
                first_inference_s=latency["short"].p50_s * 2.6,
                load_s=(ac_mb + VOCODER_MB) / (60.0 if device == "pi4" else 400.0),
                import_s=1.9 if device == "pi4" else 0.6,
                peak_rss_bytes=int(rss_mib * MIB * (1.0 if device == "pi4" else 1.04)),
                mcd_db=mcd,
                mel_l1=mcd / 10,
                emotion_id_accuracy=emo,
                mos=4.2 if variant == "original" else (3.9 if variant == "pruned+quantized" else None),
                mos_n=12 if variant in ("original", "pruned+quantized") else None,
                throttled=throttled,
                hot=throttled,
            )
            results.append(r)
            attempts.append(Attempt(device, variant, "ok", None, throttled=throttled, hot=throttled))
            checks += [
                _check(device, variant, "latency_short_p90_s", latency["short"].p90_s, 0.8),
                _check(device, variant, "size_acoustic_bytes", ac_mb * 1e6, 100e6),
                _check(device, variant, "peak_rss_bytes", r.peak_rss_bytes, 512.0 * MIB),
                _check(device, variant, "emotion_id_accuracy", emo, 0.9),
            ]
    history = []
    for i in range(10):
        rid = f"202611{14 + i:02d}-020000-{i:04x}"
        for device in DEVICES:
            for variant in ("original", "pruned", "quantized", "pruned+quantized"):
                r = next(x for x in results if x.device == device and x.variant == variant)
                drift = 1.0 + (0.1 if (variant == "quantized" and device == "pi4" and i == 9) else 0.0)
                value = (
                    r.latency["short"].p90_s * drift * rng.uniform(0.96, 1.04)
                    if i < 9
                    else r.latency["short"].p90_s
                )
                history.append(TrendPoint(rid, f"2026-11-{14 + i:02d}T02:00:00Z", device, variant, value))
    run_id = history[-1].run_id
    verdict = Verdict(
        run_id=run_id,
        outcome="could_not_measure",
        outcomes=("could_not_measure", "budget_failed", "regressed"),
        checks=tuple(checks),
        comparisons=COMPARISONS,
        unmeasured=(
            Unmeasured("n100", "distilled", "timeout", "measurement exceeded its timeout (900 s)"),
        ),
        baselines={"pi4": BASELINE, "n100": BASELINE},
        budgets=default_budgets().to_dict(),
    )
    devices = (
        DeviceInfo(
            "pi4",
            identity={"name": "pi4", "fingerprint": "9f2c41d07ab3"},
            facts_before=_facts("pi4", hostile_fact, temp=61.2, freq=1800.0, flags="0x0"),
            facts_after=_facts("pi4", hostile_fact, temp=81.7, freq=1500.0, flags="0x20002"),
            throttled=True,
            hot=True,
        ),
        DeviceInfo(
            "n100",
            identity={"name": "n100", "fingerprint": "4b11e9a0c2d5"},
            facts_before=_facts("n100", None, temp=48.0, freq=3400.0, flags=None),
            facts_after=_facts("n100", None, temp=55.0, freq=3400.0, flags=None),
        ),
    )
    audio: List[AudioClip] = []
    if tmp_path is not None:
        audio = _write_audio(Path(tmp_path))
    return ReportData(
        run=RunInfo(
            run_id=run_id,
            started_at="2026-11-23T02:00:00Z",
            finished_at="2026-11-23T03:41:10Z",
            status="incomplete",
            preset="base",
            code_version="0.1.0+g1a2b3c4",
            variants=VARIANTS,
            devices=tuple(DEVICES),
        ),
        verdict=verdict,
        results=tuple(results),
        samples=samples,
        devices=devices,
        attempts=tuple(attempts),
        history=tuple(history),
        audio=tuple(audio),
        budgets=tuple(budget_lines(verdict.budgets)),
    )


def _facts(device: str, hostile: Optional[str], temp: float, freq: float, flags: Optional[str]) -> dict:
    pi = device == "pi4"
    return {
        "cpu_model": hostile or ("Cortex-A72 (BCM2711)" if pi else "Intel(R) N100"),
        "cores": 4,
        "governor": "ondemand" if pi else "performance",
        "freq_mhz": freq,
        "temp_c": temp,
        "throttled_flags": flags,
        "load_avg": [0.31, 0.52, 0.48] if pi else [0.05, 0.1, 0.08],
        "mem_total_bytes": 4_000_000_000 if pi else 16_000_000_000,
        "mem_available_bytes": 3_100_000_000 if pi else 14_200_000_000,
        "os": "Ubuntu 22.04.4 LTS",
        "machine": "aarch64" if pi else "x86_64",
        "python": "3.9.18" if pi else "3.10.12",
        "torch": "1.13.1",
        "quantized_engine": "qnnpack" if pi else "fbgemm",
        "hostname": f"{device}-bench-01",
    }


def _write_audio(root: Path) -> List[AudioClip]:
    import numpy as np
    import soundfile as sf

    clips = []
    t = np.arange(int(16000 * 0.6)) / 16000.0
    for vi, variant in enumerate(VARIANTS):
        folder = root / "artifacts" / variant.replace("+", "-") / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for ei, emotion in enumerate(EMOTIONS):
            wav = 0.2 * np.sin(2 * np.pi * (180 + 20 * ei + 5 * vi) * t) * np.hanning(len(t))
            path = folder / f"{emotion}.wav"
            sf.write(path, wav.astype("float32"), 16000)
            clips.append(AudioClip(variant, emotion, path))
    return clips
