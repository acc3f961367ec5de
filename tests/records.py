"""Hand-made measurement records shaped like the contract (RECORD_VERSION 1), for tests of any layer.

``make_record(variant="pruned", processes=3, samples_per_class=20, seed=0, slowdown=1.0)`` builds a
record whose latencies are realistic: per-sentence base latency proportional to its length, lognormal
per-iteration noise, a small per-process offset. ``make_identity(name)`` and ``make_manifest(name)``
build the matching device identity and artifact manifest.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
#: sentence id -> (length class, characters); a small fixed corpus like devices.ondevice.corpus's.
SENTENCES = {
    "short-01": ("short", 6), "short-02": ("short", 9), "short-03": ("short", 12),
    "medium-01": ("medium", 22), "medium-02": ("medium", 31), "medium-03": ("medium", 38),
    "long-01": ("long", 64), "long-02": ("long", 80), "long-03": ("long", 97),
}


def make_facts(hostname: str = "bench-01", temp_c: float | None = 48.0, **overrides) -> dict:
    facts = {
        "cpu_model": "Cortex-A72", "cores": 4, "governor": "performance", "freq_mhz": 1800.0,
        "temp_c": temp_c, "throttled_flags": "0x0", "load_avg": [0.1, 0.2, 0.3],
        "mem_total_bytes": 4 * 2**30, "mem_available_bytes": 3 * 2**30, "os": "Linux-6.1",
        "machine": "aarch64", "python": "3.8.10", "torch": "1.13.1", "quantized_engine": "qnnpack",
        "hostname": hostname,
    }
    facts.update(overrides)
    return facts


def make_samples(
    rng: np.random.Generator,
    n_per_class: int,
    *,
    classes: Sequence[str] = ("short", "medium", "long"),
    slowdown: float = 1.0,
    sigma: float = 0.06,
    process_offset: float = 1.0,
    seconds_per_char: float = 0.02,
    outlier_rate: float = 0.0,
) -> list[dict]:
    """Samples cycling over the corpus's sentences of each class, emotions in turn.

    Latency = seconds_per_char * characters * slowdown * process_offset * lognormal(0, sigma); with
    probability ``outlier_rate`` a sample is stretched by 1 + exponential(0.3) (a scheduler hiccup).
    """
    out = []
    iteration = 0
    for length_class in classes:
        ids = [sid for sid, (c, _) in SENTENCES.items() if c == length_class]
        for i in range(n_per_class):
            sid = ids[i % len(ids)]
            chars = SENTENCES[sid][1]
            phones = 2 * chars
            frames = 12 * chars
            audio_s = frames * 200 / 16000
            base = seconds_per_char * chars * slowdown * process_offset
            total = float(base * rng.lognormal(0.0, sigma))
            if outlier_rate and rng.random() < outlier_rate:
                total *= 1.0 + float(rng.exponential(0.3))
            frontend = 0.001 * total
            acoustic = 0.45 * total
            out.append({
                "iteration": iteration, "sentence_id": sid, "length_class": length_class,
                "emotion": EMOTIONS[i % len(EMOTIONS)], "phones": phones, "frames": frames,
                "audio_s": audio_s, "frontend_s": frontend, "acoustic_s": acoustic,
                "vocoder_s": total - frontend - acoustic, "total_s": total,
            })
            iteration += 1
    return out


def make_record(
    variant: str = "original",
    *,
    processes: int = 3,
    samples_per_class: int = 20,
    seed: int = 0,
    slowdown: float = 1.0,
    sigma: float = 0.06,
    classes: Sequence[str] = ("short", "medium", "long"),
    peak_rss_bytes: int = 312_000_000,
    status: str = "ok",
    error: str | None = None,
    throttled: bool = False,
    hostname: str = "bench-01",
    artifact: str | None = None,
    stream_chunk_frames: int | None = None,
) -> dict:
    """A measurement record (format edgebench.measurement, version 1); samples split over processes.
    ``stream_chunk_frames``: streaming synthesis, whose samples get their first audio after a fifth of
    their time, and a real-time margin of 0.1 s (0.05 s in the last process)."""
    rng = np.random.default_rng(seed)
    procs = []
    per_process = max(1, samples_per_class // processes) if samples_per_class else 0
    for index in range(processes):
        offset = float(rng.lognormal(0.0, 0.01))
        samples = make_samples(rng, per_process, classes=classes, slowdown=slowdown, sigma=sigma,
                               process_offset=offset)
        if stream_chunk_frames:
            for s in samples:
                s.update(ttfa_s=s["total_s"] / 5, rt_margin_s=0.05 if index == processes - 1 else 0.1,
                         chunks=4)
        procs.append({
            "index": index, "status": "ok", "error": None, "exit_code": 0, "wall_s": 12.3,
            "phases": {"import_s": 0.9, "acoustic_load_s": 0.2, "vocoder_load_s": 0.1,
                       "first_inference_s": 0.8},
            "peak_rss_bytes": peak_rss_bytes, "rss_anon_bytes": int(peak_rss_bytes * 0.8),
            "rss_file_bytes": int(peak_rss_bytes * 0.2),
            "facts_before": make_facts(hostname), "facts_after": make_facts(hostname, temp_c=55.0),
            "throttled": throttled, "hot": False, "samples": samples,
        })
    return {
        "format": "edgebench.measurement", "version": 1, "status": status, "error": error,
        "variant": variant, "artifact": artifact or hashlib.sha256(variant.encode()).hexdigest(),
        "agent_version": "test",
        "protocol": {"processes": processes, "warmup": 2, "min_iters": 10, "min_seconds": 5.0,
                     "max_iters": 200, "threads": 2, "stream_chunk_frames": stream_chunk_frames},
        "facts_before": make_facts(hostname), "facts_after": make_facts(hostname, temp_c=55.0),
        "throttled": throttled, "hot": False, "processes": procs,
    }


def make_identity(
    name: str = "pi4-a", fingerprint: str | None = None, device_class: str | None = None
) -> dict:
    identity = {"name": name, "fingerprint": fingerprint or hashlib.sha256(name.encode()).hexdigest()[:12],
                "cpu_model": "Cortex-A72", "cores": 4, "machine": "aarch64"}
    if device_class is not None:
        identity["class"] = device_class
    return identity


def make_manifest(
    name: str = "original",
    *,
    acoustic_bytes: int = 48_500_000,
    vocoder_bytes: int = 19_400_000,
    emotion_id_accuracy: float | None = 0.95,
) -> dict:
    files = {"config.json": "a" * 64, "acoustic.pt": "b" * 64, "vocoder.pt": "c" * 64}
    content = "\n".join(f"{k}:{v}" for k, v in sorted(files.items())) + name
    quality = None
    if emotion_id_accuracy is not None:
        quality = {"mel_l1": 0.1, "mcd_db": 4.2, "emotion_id_accuracy": emotion_id_accuracy, "n": 28}
    return {
        "format_version": 1, "name": name, "recipe": [], "parent": None, "preset": "tiny", "seed": 0,
        "params": {"acoustic": acoustic_bytes // 4, "vocoder": vocoder_bytes // 4},
        "sizes": {"acoustic": acoustic_bytes, "vocoder": vocoder_bytes}, "files": files,
        "content_hash": hashlib.sha256(content.encode()).hexdigest(), "torch_version": "2.13.0",
        "code_version": "test", "quality": quality, "built_at": "2026-11-24T19:00:00+00:00",
    }
