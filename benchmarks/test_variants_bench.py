"""Forward-pass time of each variant, per stage (acoustic, vocoder), in process (pytest-benchmark).

    EDGEBENCH_BENCH_PRESET=base pytest benchmarks/test_variants_bench.py --benchmark-columns=median,iqr,rounds

This times the models on this machine only; on-device numbers come from `edgebench run`. Each benchmark
records the artifact's size, parameter count and quality proxies in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch

from variants.artifact import load_artifact


@pytest.fixture(scope="module")
def loaded(built_variants):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_artifact(built_variants[name].path)
        return cache[name]

    return get


def _group(benchmark, settings, stage):
    threads = settings["threads"]
    benchmark.group = f"{stage} ({settings['preset']}, {threads} thread{'s' if threads > 1 else ''})"


def _info(benchmark, settings, built, stage, frames, results):
    m = built.manifest
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        results[(built.name, stage)] = {"median_s": stats.stats.median, "frames": frames, "manifest": m}
    benchmark.extra_info.update(
        {
            "preset": settings["preset"],
            "stage": stage,
            "frames": frames,
            "size_bytes": m["sizes"][stage],
            "params": m["params"][stage],
            "quality": m.get("quality"),
            "content_hash": m["content_hash"],
        }
    )


def test_acoustic(
    benchmark, bench_threads, bench_settings, bench_results, built_variants, loaded, short_inputs, variant
):
    model = loaded(variant).acoustic
    _group(benchmark, bench_settings, "acoustic")

    def run():
        with torch.inference_mode():
            return model(**short_inputs)

    out = benchmark.pedantic(run, rounds=bench_settings["rounds"], warmup_rounds=1, iterations=1)
    assert out.mel.shape[-1] == 80
    _info(
        benchmark, bench_settings, built_variants[variant], "acoustic", int(out.mel.shape[1]), bench_results
    )


def test_vocoder(
    benchmark, bench_threads, bench_settings, bench_results, built_variants, loaded, short_inputs, variant
):
    art = loaded(variant)
    _group(benchmark, bench_settings, "vocoder")
    with torch.inference_mode():
        mel = art.acoustic(**short_inputs).mel.transpose(1, 2).contiguous()

    def run():
        with torch.inference_mode():
            return art.vocoder(mel)

    wav = benchmark.pedantic(run, rounds=bench_settings["rounds"], warmup_rounds=1, iterations=1)
    assert wav.shape[-1] == mel.shape[-1] * 200
    _info(benchmark, bench_settings, built_variants[variant], "vocoder", int(mel.shape[-1]), bench_results)
