"""Interference: did something else take the CPU from a measurement? Read per sample, decided per window.

Around every steady-state sample the worker reads, outside the timed span:

* ``cpu_s``: the CPU seconds of its own process (``time.process_time``: every thread, user + system);
* ``others_cpu_s``: the busy CPU seconds of the CPUs it may run on (``/proc/stat`` per-CPU lines: user,
  nice, system, irq, softirq, steal) minus its own: what other processes used there;
* ``psi_some_s``: the growth of ``/proc/pressure/cpu`` "some" (seconds during which a runnable task waited
  for a CPU), where the kernel has pressure stall information; recorded as evidence, not decided on (it is
  system-wide: a busy CPU the worker never uses raises it too).

Decision (``flag``), on windows of consecutive samples at least ``MIN_WINDOW_S`` long (``/proc/stat``
counts in 10 ms ticks, so a shorter window cannot be judged):

* contention = (others_cpu_s - spare x wall) / wall, where spare = allowed CPUs - torch threads (CPUs the
  worker leaves idle, on which other processes do not compete with it). Above ``CONTENTION_LIMIT`` the
  window is disturbed: other processes wanted the worker's CPUs for that share of the time.
* with one torch thread the process should have the CPU nearly all the time: cpu_s / wall below
  ``CPU_SHARE_LIMIT`` is disturbed (preempted, or waiting for something). With more threads the expected
  share depends on how much of the work is parallel, so it is not judged.

Calibration (this project's 2-core development machine, tiny and base presets, 1 thread): quiet
processes had a contention of -0.05..0.08 and a CPU share of 0.96..1.00 per 0.2 s window; with one busy
loop pinned to the worker's CPU, 0.45..0.55 and 0.48..0.55 (about a 2x slowdown). The limits sit between.

Standard library only (runs on the device); Linux ``/proc`` (elsewhere nothing is flagged).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence

MIN_WINDOW_S = 0.2
CONTENTION_LIMIT = 0.25
CPU_SHARE_LIMIT = 0.75
#: Disturbed samples re-measured per process at most: this fraction of the steady state (at least 2).
REMEASURE_FRACTION = 0.25

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system (idle iowait) irq softirq steal


def allowed_cpus() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


class Probe:
    """Reads the counters before and after a sample (cheap: two small /proc files)."""

    def __init__(self, cpus: Optional[Sequence[int]] = None) -> None:
        self.cpus = {f"cpu{c}" for c in (cpus if cpus is not None else allowed_cpus())}
        try:
            self.hz = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self.hz = 100.0

    def busy_s(self) -> Optional[float]:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        ticks = 0
        for line in lines:
            parts = line.split()
            if parts and parts[0] in self.cpus:
                values = [int(v) for v in parts[1:9]]
                ticks += sum(values[i] for i in _BUSY_FIELDS if i < len(values))
        return ticks / self.hz

    @staticmethod
    def psi_some_s() -> Optional[float]:
        try:
            with open("/proc/pressure/cpu", encoding="ascii") as f:
                for line in f:
                    if line.startswith("some"):
                        for part in line.split():
                            if part.startswith("total="):
                                return int(part[6:]) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def snapshot(self) -> tuple:
        return time.process_time(), self.busy_s(), self.psi_some_s()

    @staticmethod
    def delta(before: tuple, after: tuple) -> Dict[str, Optional[float]]:
        cpu = after[0] - before[0]
        busy = None if before[1] is None or after[1] is None else after[1] - before[1]
        psi = None if before[2] is None or after[2] is None else after[2] - before[2]
        return {
            "cpu_s": cpu,
            "others_cpu_s": None if busy is None else max(0.0, busy - cpu),
            "psi_some_s": psi,
        }


def judge(wall_s: float, cpu_s: float, others_cpu_s: Optional[float], threads: int, n_cpus: int):
    """(disturbed, reason) of one window."""
    if wall_s <= 0:
        return False, None
    if others_cpu_s is not None:
        spare = max(0, n_cpus - threads)
        contention = (others_cpu_s - spare * wall_s) / wall_s
        if contention > CONTENTION_LIMIT:
            return True, f"other processes wanted {contention:.2f} of its CPUs"
    if threads == 1 and cpu_s / wall_s < CPU_SHARE_LIMIT:
        return True, f"it had the CPU {cpu_s / wall_s:.2f} of the time"
    return False, None


def flag(samples: Sequence[dict], threads: int, n_cpus: int) -> List[Optional[str]]:
    """Set ``sample["disturbed"]`` on every sample (windows of consecutive samples >= MIN_WINDOW_S; a
    shorter tail joins the window before it) and return each sample's reason (None when undisturbed)."""
    reasons: List[Optional[str]] = [None] * len(samples)
    windows: List[List[int]] = []
    current: List[int] = []
    length = 0.0
    for i, s in enumerate(samples):
        current.append(i)
        length += float(s.get("total_s") or 0.0)
        if length >= MIN_WINDOW_S:
            windows.append(current)
            current, length = [], 0.0
    if current:
        if windows:
            windows[-1].extend(current)
        else:
            windows.append(current)
    for window in windows:
        wall = sum(float(samples[i].get("total_s") or 0.0) for i in window)
        cpu = sum(float(samples[i].get("cpu_s") or 0.0) for i in window)
        others = [samples[i].get("others_cpu_s") for i in window]
        other = None if any(o is None for o in others) else sum(float(o) for o in others)
        disturbed, reason = judge(wall, cpu, other, threads, n_cpus)
        for i in window:
            samples[i]["disturbed"] = disturbed
            reasons[i] = reason
    return reasons


def summary(samples: Sequence[dict], threads: int, n_cpus: int) -> dict:
    """Process-level numbers over the counted samples (every sample not flagged disturbed)."""
    wall = sum(float(s.get("total_s") or 0.0) for s in samples)
    cpu = sum(float(s.get("cpu_s") or 0.0) for s in samples)
    others = [s.get("others_cpu_s") for s in samples]
    psi = [s.get("psi_some_s") for s in samples]
    other = None if not samples or any(o is None for o in others) else sum(float(o) for o in others)
    spare = max(0, n_cpus - threads)
    return {
        "cpu_share": cpu / wall if wall > 0 else None,
        "contention": None if other is None or wall <= 0 else (other - spare * wall) / wall,
        "psi_some_frac": None if not psi or any(p is None for p in psi) or wall <= 0
        else sum(float(p) for p in psi) / wall,
        "cpus": n_cpus,
    }
