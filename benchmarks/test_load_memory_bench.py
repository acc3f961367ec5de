"""How much loading an artifact raises a fresh process's memory high-water mark: the mapped, assign-in-place
load (torch >= 2.1) against the read-and-copy load that older torch gets (the same code with ``MMAP`` and
``ASSIGN`` off: what every torch did before).

One fresh interpreter per measurement (torch imported first, then VmHWM read before and after loading both
components), interleaved: (modern, legacy) x (original, quantized), the order reversed every other round.

    EDGEBENCH_BENCH_PRESET=base pytest benchmarks/test_load_memory_bench.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from conftest import PRESET

ROUNDS = int(os.environ.get("EDGEBENCH_LOAD_ROUNDS", "2"))

PROBE = r"""
import json, sys
import torch
from devices.ondevice import load
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
if sys.argv[2] == "legacy":
    load.MMAP = load.ASSIGN = False
before = hwm()
a = load.load_component(sys.argv[1], "acoustic", verify=False)
v = load.load_component(sys.argv[1], "vocoder", verify=False)
print(json.dumps({"before": before, "after": hwm()}))
"""


def test_load_memory(benchmark, tmp_path):
    from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
    from variants.artifact import quantize_module, save_artifact

    cfg = get_preset(PRESET)
    acoustic, vocoder = build_acoustic(cfg.acoustic), build_vocoder(cfg.vocoder)
    arts = {
        "original": save_artifact(tmp_path / "original", acoustic, vocoder, cfg.to_dict()).path,
        "quantized": save_artifact(tmp_path / "quantized", quantize_module(acoustic), vocoder, cfg.to_dict(),
                                   [{"op": "quantize_dynamic", "component": "acoustic", "dtype": "qint8",
                                     "modules": ["Linear", "LSTM"]}]).path,
    }
    files = {k: sum(p.stat().st_size for p in v.glob("*.pt")) for k, v in arts.items()}
    pairs = [(variant, mode) for variant in arts for mode in ("modern", "legacy")]
    grown = {p: [] for p in pairs}
    round_no = [0]

    def one_round():
        order = pairs if round_no[0] % 2 == 0 else list(reversed(pairs))
        round_no[0] += 1
        for variant, mode in order:
            out = subprocess.run([sys.executable, "-c", PROBE, str(arts[variant]), mode], capture_output=True,
                                 text=True, timeout=600, check=True)
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            grown[(variant, mode)].append(doc["after"] - doc["before"])

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    print(f"\nload memory ({PRESET}, {ROUNDS} interleaved rounds, fresh process each)")
    for (variant, mode), values in grown.items():
        mib = statistics.median(values) / 2**20
        print(f"{variant:10} {mode:7} VmHWM +{mib:6.1f} MiB "
              f"(files {files[variant] / 2**20:.1f} MiB, n={len(values)})")
        benchmark.extra_info[f"{variant}/{mode}"] = mib
