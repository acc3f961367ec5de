"""Streaming against whole-utterance synthesis: peak RSS over the corpus, and time to first audio against
total latency, for ``original`` and ``pruned+quantized``.

Each (variant, mode) is one fresh agent process on this machine (1 thread, short and long sentences, one
round of each), measured interleaved: rounds of the four, the order reversed every other round (A B C D,
D C B A, ...). Reported per (variant, mode): peak RSS (max over processes), TTFA p50 and total p50 per
length class (medians over the rounds' samples), n.

    EDGEBENCH_BENCH_PRESET=base pytest benchmarks/test_streaming_bench.py --benchmark-only -s

Environment: EDGEBENCH_STREAM_CHUNK (mel frames per chunk, default 40 = 0.5 s of audio),
EDGEBENCH_STREAM_ROUNDS (default 2), and the build cache of conftest.py.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from conftest import PRESET

from devices.bundle import build_bundle
from devices.inventory import local_device
from devices.measure import measure_variant
from devices.ondevice.protocol import Protocol
from devices.transport import LocalTransport

CHUNK = int(os.environ.get("EDGEBENCH_STREAM_CHUNK", "40"))
ROUNDS = int(os.environ.get("EDGEBENCH_STREAM_ROUNDS", "2"))
VARIANTS = ("original", "pruned+quantized")
MODES = (None, CHUNK)
CLASSES = ("short", "long")


def _protocol(chunk, n_sentences: int) -> Protocol:
    return Protocol(processes=1, warmup=0, min_iters=n_sentences, min_seconds=0.0, max_iters=n_sentences,
                    threads=1, timeout_s=3600, sentences=CLASSES, stream_chunk_frames=chunk)


def test_streaming_against_whole_utterance(benchmark, tmp_path_factory):
    from devices.ondevice.corpus import default_corpus
    from variants.build import build_variants

    out = tmp_path_factory.mktemp("stream-bench")
    built = {b.name: b for b in build_variants(PRESET, VARIANTS, out=out / "artifacts", quality=False)}
    n = sum(1 for s in default_corpus() if s.length_class in CLASSES)
    dev = local_device()
    transport = LocalTransport(dev, out / "device")
    bundle = build_bundle(out / "state")
    pairs = [(v, m) for v in VARIANTS for m in MODES]
    results = {p: {"rss": [], "ttfa": {c: [] for c in CLASSES}, "total": {c: [] for c in CLASSES}}
               for p in pairs}
    round_no = [0]

    def one_round():
        order = pairs if round_no[0] % 2 == 0 else list(reversed(pairs))
        round_no[0] += 1
        for variant, chunk in order:
            record = measure_variant(transport, dev, Path(built[variant].path), variant, _protocol(chunk, n),
                                     bundle=bundle)
            assert record["status"] == "ok", record["error"]
            proc = record["processes"][0]
            r = results[(variant, chunk)]
            r["rss"].append(proc["peak_rss_bytes"])
            for s in proc["samples"]:
                if not s.get("disturbed"):
                    r["ttfa"][s["length_class"]].append(s["ttfa_s"])
                    r["total"][s["length_class"]].append(s["total_s"])

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    print(f"\nstreaming vs whole ({PRESET}, 1 thread, chunk {CHUNK} frames, {ROUNDS} interleaved rounds)")
    for (variant, chunk), r in results.items():
        mode = f"stream {chunk}" if chunk else "whole"
        line = f"{variant:17} {mode:10} peak RSS {max(r['rss']) / 2**20:7.1f} MiB"
        for c in CLASSES:
            ttfa, total = statistics.median(r["ttfa"][c]), statistics.median(r["total"][c])
            line += (f" | {c}: TTFA {ttfa * 1e3:7.0f} ms, total {total * 1e3:7.0f} ms, "
                     f"ratio {ttfa / total:.2f} (n={len(r['ttfa'][c])})")
        print(line)
        benchmark.extra_info[f"{variant}/{mode}"] = {
            "peak_rss_mib": max(r["rss"]) / 2**20,
            **{f"ttfa_p50_ms_{c}": statistics.median(r["ttfa"][c]) * 1e3 for c in CLASSES},
            **{f"total_p50_ms_{c}": statistics.median(r["total"][c]) * 1e3 for c in CLASSES},
        }
