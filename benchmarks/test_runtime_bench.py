"""torch against ONNX Runtime, per variant, side by side (issue: "would ORT meet the budget where torch does
not?").

1. Latency, in one process, interleaved: every round runs each (variant, runtime) once on the corpus' short
   sample sentence, in a seeded shuffled order, one thread for both runtimes; acoustic and vocoder timed
   apart. The medians are over the rounds (n = rounds); frames are printed, since a pruned or quantized
   model predicts other durations (ms per frame is the length-independent figure).
2. Peak RSS over the whole corpus: one fresh interpreter per (variant, runtime), interleaved, that imports
   only its runtime (the onnxruntime process never imports torch: checked), loads the artifact and
   synthesises every corpus sentence once; VmHWM at the end.

    EDGEBENCH_BENCH_PRESET=base pytest benchmarks/test_runtime_bench.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time

import pytest
from conftest import PRESET, THREADS, _cache_dir

CORE = ["original", "pruned", "quantized", "pruned+quantized"]
RUNTIMES = ["torch", "onnxruntime"]
ROUNDS = int(os.environ.get("EDGEBENCH_RUNTIME_ROUNDS", "9"))
RSS_ROUNDS = int(os.environ.get("EDGEBENCH_RUNTIME_RSS_ROUNDS", "1"))

PROBE = r"""
import json, sys
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
path, runtime = sys.argv[1], sys.argv[2]
from devices.ondevice import corpus, frontend
from devices.ondevice.artifact import read_config
from devices.ondevice.symbols import symbol_table
symbols = symbol_table(read_config(path))
if runtime == "torch":
    import torch
    torch.set_num_threads(1)
    from devices.ondevice import load
    a = load.load_component(path, "acoustic", verify=False)
    v = load.load_component(path, "vocoder", verify=False)
    to_inputs = lambda ids: ids.to_tensors()
    ctx = torch.inference_mode
else:
    import contextlib
    from devices.ondevice import ort
    a, v = ort.load(path, threads=1)
    to_inputs = lambda ids: ids.to_arrays()
    ctx = contextlib.nullcontext
loaded = hwm()
with ctx():
    for s in corpus.default_corpus(seed=0):
        out = a(**to_inputs(frontend.text_to_ids(s.text, emotion="neutral", symbols=symbols)))
        v(out.mel.swapaxes(1, 2))
print(json.dumps({"loaded": loaded, "peak": hwm(), "torch_imported": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def both_runtimes(tmp_path_factory):
    from variants.build import build_variants

    built = build_variants(preset=PRESET, variants=CORE, out=tmp_path_factory.mktemp("artifacts"),
                           cache_dir=_cache_dir(), quality=False, runtimes=RUNTIMES)
    return {b.name: b for b in built}


def _name(variant: str, runtime: str) -> str:
    return variant if runtime == "torch" else f"{variant}@{runtime}"


def test_torch_against_onnxruntime(benchmark, both_runtimes):
    import torch

    from devices.ondevice import ort
    from devices.ondevice.corpus import sample_sentence
    from devices.ondevice.frontend import text_to_ids
    from devices.ondevice.load import load_artifact

    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    models = {}
    for v in CORE:
        loaded = load_artifact(both_runtimes[v].path)
        models[(v, "torch")] = (loaded.acoustic, loaded.vocoder)
        models[(v, "onnxruntime")] = ort.load(both_runtimes[_name(v, "onnxruntime")].path, threads=THREADS)
    ids = text_to_ids(sample_sentence().text, emotion="neutral")
    inputs = {"torch": ids.to_tensors(), "onnxruntime": ids.to_arrays()}
    times = {k: {"acoustic": [], "vocoder": [], "frames": None} for k in models}
    pairs = list(models)
    round_no = [0]

    def one_round():
        order = list(pairs)
        random.Random(round_no[0]).shuffle(order)
        round_no[0] += 1
        for key in order:
            acoustic, vocoder = models[key]
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = acoustic(**inputs[key[1]])
                t1 = time.perf_counter()
                vocoder(out.mel.swapaxes(1, 2))
                t2 = time.perf_counter()
            times[key]["acoustic"].append(t1 - t0)
            times[key]["vocoder"].append(t2 - t1)
            times[key]["frames"] = int(out.mel.shape[1])

    try:
        one_round()  # first inference of every model: not counted
        for key in times:
            times[key]["acoustic"].clear()
            times[key]["vocoder"].clear()
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    finally:
        torch.set_num_threads(old)

    ref = statistics.median(times[("original", "torch")]["acoustic"])
    print(f"\n{PRESET}, {THREADS} thread(s), short sample sentence, n = {ROUNDS} interleaved rounds "
          "(medians)")
    print(f"{'variant':18} {'runtime':12} {'acoustic MB':>11} {'frames':>6} {'acoustic ms':>11} "
          f"{'ms/frame':>8} {'vocoder ms':>10} {'vs torch original':>17}")
    for v, rt in pairs:
        t = times[(v, rt)]
        ac, vo = statistics.median(t["acoustic"]), statistics.median(t["vocoder"])
        size = both_runtimes[_name(v, rt)].manifest["sizes"]["acoustic"] / 1e6
        print(f"{v:18} {rt:12} {size:11.1f} {t['frames']:6d} {ac * 1e3:11.1f} {ac * 1e3 / t['frames']:8.2f} "
              f"{vo * 1e3:10.1f} {ref / ac:16.2f}x")
    for key, t in times.items():
        assert len(t["acoustic"]) == ROUNDS and all(x > 0 for x in t["acoustic"]), key


def test_peak_rss_over_the_corpus(both_runtimes):
    pairs = [(v, rt) for v in CORE for rt in RUNTIMES]
    got = {p: [] for p in pairs}
    for r in range(RSS_ROUNDS):
        order = list(pairs)
        random.Random(100 + r).shuffle(order)
        for v, rt in order:
            out = subprocess.run([sys.executable, "-c", PROBE, str(both_runtimes[_name(v, rt)].path), rt],
                                 capture_output=True, text=True, timeout=1800)
            assert out.returncode == 0, out.stderr[-2000:]
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            assert doc["torch_imported"] == (rt == "torch")
            got[(v, rt)].append(doc)
    print(f"\n{PRESET}: peak RSS (VmHWM) of a fresh process synthesising the whole corpus once, "
          f"n = {RSS_ROUNDS} per pair, interleaved")
    print(f"{'variant':18} {'runtime':12} {'after load MiB':>14} {'peak MiB':>9}")
    for v, rt in pairs:
        docs = got[(v, rt)]
        loaded = statistics.median(d["loaded"] for d in docs) / 2**20
        peak = statistics.median(d["peak"] for d in docs) / 2**20
        print(f"{v:18} {rt:12} {loaded:14.1f} {peak:9.1f}")
