"""The interference detector and the regression test on real agent runs of the tiny model (local device).

* ``test_detector_flags_disturbed_processes``: 40 fresh agent processes, one CPU, one torch thread; every
  other one (interleaved: Q H Q H ...) shares its CPU with a busy loop pinned there (about a 2x slowdown).
  A process counts as flagged when the detector flagged any of its samples. Aim: >= 95 % of the disturbed
  processes flagged, at most 1 of the quiet ones.
* ``test_a_a_pairs_give_no_false_regression``: 20 A/A pairs (the same artifact measured twice, one agent
  process each, back to back): the regression test (``harness.regress.compare_samples``) on their
  undisturbed samples. Aim: at most 1 false regression.

    pytest benchmarks/test_interference_bench.py --benchmark-only -s

EDGEBENCH_INTERFERENCE_PROCESSES (default 40), EDGEBENCH_AA_PAIRS (default 20).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices.ondevice.protocol import Protocol

N_PROCESSES = int(os.environ.get("EDGEBENCH_INTERFERENCE_PROCESSES", "40"))
N_PAIRS = int(os.environ.get("EDGEBENCH_AA_PAIRS", "20"))
PROTOCOL = Protocol(processes=1, warmup=1, min_iters=14, min_seconds=1.0, max_iters=200, threads=1,
                    timeout_s=300, sentences=("short",))


def _cpu() -> int:
    return sorted(os.sched_getaffinity(0))[0]


def agent_process(artifact: Path, work: Path) -> dict:
    """One agent measurement (one worker process) pinned to one CPU; returns its process entry."""
    shim = (f"import os, sys; os.sched_setaffinity(0, [{_cpu()}]); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    argv = [sys.executable, "-c", shim, "-m", "devices.ondevice.agent", "measure",
            "--artifact", str(artifact),
            "--variant", "original", "--work-dir", str(work), *PROTOCOL.agent_args()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    record = json.loads(out.stdout)
    assert record["status"] == "ok", record["error"]
    return record["processes"][0]


def hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", (
        f"import os, time; os.sched_setaffinity(0, [{_cpu()}]); end = time.monotonic() + 300\n"
        "while time.monotonic() < end: pass")])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_detector_flags_disturbed_processes(benchmark, tiny_artifact, tmp_path):
    results = {"quiet": [], "hog": []}

    def run_all():
        for i in range(N_PROCESSES):
            kind = "hog" if i % 2 else "quiet"
            busy = hog() if kind == "hog" else None
            try:
                proc = agent_process(tiny_artifact, tmp_path)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            info = proc["interference"] or {}
            primary = [s for s in proc["samples"] if s.get("remeasure_of") is None]
            results[kind].append({
                "flagged": bool(info.get("samples_disturbed")),
                "disturbed": proc["disturbed"],
                "median_s": sorted(s["total_s"] for s in primary)[len(primary) // 2],
                "contention": info.get("contention"),
            })

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    hogged = sum(r["flagged"] for r in results["hog"])
    false = sum(r["flagged"] for r in results["quiet"])
    slow = sorted(r["median_s"] for r in results["hog"])
    fast = sorted(r["median_s"] for r in results["quiet"])
    slowdown = slow[len(slow) // 2] / fast[len(fast) // 2]
    benchmark.extra_info.update(disturbed_flagged=hogged, disturbed_n=len(results["hog"]),
                                quiet_flagged=false, quiet_n=len(results["quiet"]), slowdown=slowdown)
    print(f"\ndetector: {hogged}/{len(results['hog'])} disturbed processes flagged, "
          f"{false}/{len(results['quiet'])} quiet ones; the hog slowed the median {slowdown:.2f}x")
    assert hogged >= 0.95 * len(results["hog"])
    assert false <= 1


def test_a_a_pairs_give_no_false_regression(benchmark, tiny_artifact, tmp_path):
    from harness.regress import compare_samples

    verdicts = []

    def run_pairs():
        for _ in range(N_PAIRS):
            a, b = agent_process(tiny_artifact, tmp_path), agent_process(tiny_artifact, tmp_path)

            def clean(proc):
                return [s for s in proc["samples"] if not s.get("disturbed")]

            sa, sb = clean(a), clean(b)
            test = compare_samples([s["total_s"] for s in sa], [s["total_s"] for s in sb],
                                   baseline_keys=[s["sentence_id"] for s in sa],
                                   candidate_keys=[s["sentence_id"] for s in sb])
            verdicts.append(test.verdict)

    benchmark.pedantic(run_pairs, rounds=1, iterations=1)
    false = sum(v == "regressed" for v in verdicts)
    benchmark.extra_info.update(pairs=len(verdicts), false_regressions=false)
    print(f"\nA/A: {false} false regression(s) in {len(verdicts)} pairs: {verdicts}")
    assert false <= 1
