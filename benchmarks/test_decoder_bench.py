"""``original`` against ``optimize`` on the same weights: decoder cost per autoregressive step, and how much
the acoustic model's peak memory grows while it synthesises.

``original`` runs what KAN-TTS runs (a decoder that attends over its whole history under a mask and grows
its cache step by step; kernel-1 convolutions as Conv1d); ``optimized`` is the ``optimize`` recipe step
(banded attention, preallocated cache, Linear). Both are timed in one run, interleaved (A B, then B A, ...),
on inputs of fixed length (forced durations, so both decode exactly the same number of steps):

* ``test_decoder_step_cost``: ``decoder.infer`` on the same memory, seconds per step, per implementation;
  the ratio of medians (original / optimized) and n go to ``extra_info`` and are printed.
* ``test_acoustic_peak_memory_growth``: one fresh process per measurement (interleaved): peak RSS
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus RSS before the forward pass.

    pytest benchmarks/test_decoder_bench.py --benchmark-only -s

EDGEBENCH_DECODER_PRESET (default ``base``), EDGEBENCH_DECODER_ROUNDS (default 6).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import pytest
import torch

PRESET = os.environ.get("EDGEBENCH_DECODER_PRESET", "base")
ROUNDS = int(os.environ.get("EDGEBENCH_DECODER_ROUNDS", "6"))
PHONES = (22, 88)
FRAMES_PER_PHONE = 7  # forced: 22 phones -> 154 frames (52 steps), 88 phones -> 616 frames (206 steps)
THREADS = 1


def _inputs(n_phones: int) -> dict:
    g = torch.Generator().manual_seed(n_phones)
    ids = {
        k: torch.randint(0, hi, (1, n_phones), generator=g)
        for k, hi in (("sy", 140), ("tone", 7), ("syllable_flag", 5), ("word_segment", 5))
    }
    ids["emotion"] = torch.full((1, n_phones), 5)
    ids["speaker"] = torch.zeros(1, n_phones, dtype=torch.long)
    ids["durations"] = torch.full((1, n_phones), FRAMES_PER_PHONE)
    return ids


@pytest.fixture(scope="module")
def models():
    from devices.ondevice.models import ModelConfig, build_acoustic, get_preset
    from variants.optimize import optimize

    torch.set_num_threads(THREADS)
    cfg = get_preset(PRESET)
    original = build_acoustic(cfg.acoustic, seed=0)
    build = lambda d: build_acoustic(ModelConfig.from_dict(d).acoustic)  # noqa: E731
    fast, _, _ = optimize(original, cfg.to_dict(), build)
    return {"original": original, "optimized": fast}


@pytest.mark.parametrize("n_phones", PHONES)
def test_decoder_step_cost(benchmark, models, n_phones):
    with torch.inference_mode():
        out = models["original"].run(**_inputs(n_phones))
    memory, band = out["memory"], out["x_band_width"]
    steps = memory.size(1)
    per_step = {"original": [], "optimized": []}
    order = ["original", "optimized"]

    def one_round():
        for name in order:
            decoder = models[name].decoder
            t0 = time.perf_counter()
            with torch.inference_mode():
                decoder.infer(memory, band, band)
            per_step[name].append((time.perf_counter() - t0) / steps)
        order.reverse()  # A B, B A, A B, ...: drift reaches both alike

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    med = {k: statistics.median(v[-ROUNDS:]) for k, v in per_step.items()}
    ratio = med["original"] / med["optimized"]
    benchmark.extra_info.update(
        preset=PRESET,
        phones=n_phones,
        steps=steps,
        n=ROUNDS,
        original_ms_per_step=med["original"] * 1e3,
        optimized_ms_per_step=med["optimized"] * 1e3,
        ratio_original_over_optimized=ratio,
    )
    print(
        f"\n{PRESET} {n_phones} phones ({steps} steps, n={ROUNDS} each, interleaved): "
        f"original {med['original'] * 1e3:.2f} ms/step, optimized {med['optimized'] * 1e3:.2f} ms/step, "
        f"ratio {ratio:.2f}x"
    )
    assert all(v > 0 for v in med.values())


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from devices.ondevice.models import ModelConfig, build_acoustic, get_preset
    from variants.optimize import optimize
    sys.path.insert(0, sys.argv[4])
    from test_decoder_bench import _inputs
    cfg = get_preset(sys.argv[1])
    model = build_acoustic(cfg.acoustic, seed=0)
    if sys.argv[2] == "optimized":
        build = lambda d: build_acoustic(ModelConfig.from_dict(d).acoustic)
        model, _, _ = optimize(model, cfg.to_dict(), build)
    inputs = _inputs(int(sys.argv[3]))

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    with torch.inference_mode():
        model(**_inputs(4))  # first-call allocations are not what grows with length
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        before = status("VmRSS")
        model(**inputs)
    print(json.dumps({"growth": status("VmHWM") - before}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_acoustic_peak_memory_growth(benchmark):
    here = os.path.dirname(os.path.abspath(__file__))
    results = {(impl, n): [] for impl in ("original", "optimized") for n in PHONES}
    reps = max(2, ROUNDS // 3)
    order = list(results)

    def one_round():
        for impl, n in order:
            out = subprocess.run(
                [sys.executable, "-c", _MEMORY_PROBE, PRESET, impl, str(n), here],
                capture_output=True, text=True, check=True, timeout=600,
            )
            results[(impl, n)].append(json.loads(out.stdout.strip().splitlines()[-1])["growth"])
        order.reverse()

    benchmark.pedantic(one_round, rounds=reps, iterations=1)
    lines = []
    for n in PHONES:
        o = statistics.median(results[("original", n)])
        f = statistics.median(results[("optimized", n)])
        benchmark.extra_info[f"growth_mb_original_{n}"] = o / 1e6
        benchmark.extra_info[f"growth_mb_optimized_{n}"] = f / 1e6
        lines.append(f"{n} phones: original +{o / 1e6:.1f} MB, optimized +{f / 1e6:.1f} MB")
    benchmark.extra_info["n"] = reps
    head = f"{PRESET} acoustic peak RSS growth during one forward (n={reps} processes each)"
    print(f"\n{head}: " + "; ".join(lines))
    assert all(v for v in results.values())


def test_both_implementations_decode_the_same_frames(models):
    """Not a timing: the comparison above is between two implementations of one function."""
    x = _inputs(22)
    with torch.inference_mode():
        a, b = models["original"](**x), models["optimized"](**x)
    assert torch.equal(a.durations, b.durations)
    torch.testing.assert_close(a.mel, b.mel, rtol=0, atol=1e-4)
