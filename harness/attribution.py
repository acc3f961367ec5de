"""The board or the model? Attribute each regression to device drift or to the model, with the evidence.

A board whose governor, firmware, cooling or neighbours changed slows every variant it runs alike, and its
own micro-benchmarks (``devices.ondevice.microbench``, stored per run) show it; a model change slows one
variant wherever it runs, on a board whose limits did not move. For each regressed comparison
(device D, variant V, length class L, ratio r = candidate / baseline median), in this order:

1. **device drift**, the device's limits moved: D's micro-benchmarks of this run against those of the
   baseline run (``harness.roofline.drift``: > 1 = slower now) have a component that slowed by at least
   ``DRIFT_MIN`` and that is within a factor ``TOLERANCE`` of r (the board lost what the variant lost);
2. **device drift**, every variant alike: every variant compared on D for L regressed (two or more), their
   ratios within a factor ``TOLERANCE`` of each other, and at least one other device compared for L where
   none regressed;
3. **model regression**, V is slower on every device: V regressed on two or more devices (any class) and on
   D not every variant compared regressed;
4. **model regression**, a steady board: D's limits did not move (every component within ``DRIFT_MIN``)
   and other variants compared on D for L did not regress;
5. otherwise **unattributed**, with what was seen (a common slowdown on a steady board, a device without
   micro-benchmarks on one side, ...).

Pure logic over ``Comparison`` objects and per-device drift ratios; ``harness.gate`` supplies both and stores
the attribution with each comparison. Whether a device-drift regression still fails the gate is the user's
choice (``[regression] device_drift`` in budgets.toml); by default the exit code rules do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness import vocabulary as vocab
from harness.verdict import Comparison

DEVICE_DRIFT, MODEL_REGRESSION, UNATTRIBUTED = "device_drift", "model_regression", "unattributed"
#: A micro-benchmark component that slowed by less than this is steady (their run-to-run spread on a
#: quiet core is a few per cent).
DRIFT_MIN = 1.10
#: Two slowdowns are "alike" within this factor of each other.
TOLERANCE = 1.35
_NAMES = {"compute": "matrix-product rate", "memory": "copy bandwidth", "dispatch": "per-call overhead"}


@dataclass(frozen=True)
class Attribution:
    kind: str           # DEVICE_DRIFT, MODEL_REGRESSION or UNATTRIBUTED
    evidence: str


def _alike(a: float, b: float) -> bool:
    return a > 0 and b > 0 and abs(math.log(a / b)) <= math.log(TOLERANCE)


def drift_text(drift: Mapping[str, float]) -> str:
    return ", ".join(f"{_NAMES[k]} {v:.2f}x as slow" for k, v in drift.items())


def attribute(comparisons: Sequence[Comparison], drift: Mapping[str, Mapping[str, float] | None]
              ) -> dict[int, Attribution]:
    """index in ``comparisons`` -> attribution, for every regressed comparison. ``drift``: device -> the
    ratios of its micro-benchmarks now / at the baseline (None or absent: not known on both sides)."""
    regressed = [c for c in comparisons if c.verdict == vocab.REGRESSED]
    by_device_class: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        if c.ratio is not None:
            by_device_class.setdefault((c.device, c.length_class), []).append(c)
    devices_of_variant: dict[str, set[str]] = {}
    for c in regressed:
        devices_of_variant.setdefault(c.variant, set()).add(c.device)
    out: dict[int, Attribution] = {}
    for i, c in enumerate(comparisons):
        if c.verdict != vocab.REGRESSED or c.ratio is None:
            continue
        out[i] = _one(c, by_device_class, devices_of_variant, drift.get(c.device))
    return out


def _one(c: Comparison, by_device_class, devices_of_variant, drift) -> Attribution:
    r = c.ratio
    here = by_device_class.get((c.device, c.length_class), [])
    others_here = [o for o in here if o.variant != c.variant]
    # 1. the board's own limits moved by what the variant lost
    if drift:
        moved = {k: v for k, v in drift.items() if v >= DRIFT_MIN}
        match = [k for k, v in moved.items() if _alike(v, r)]
        if match:
            return Attribution(DEVICE_DRIFT, (
                f"{c.device}'s own micro-benchmarks moved since baseline run {c.baseline_run_id}: "
                f"{drift_text(drift)}; {c.variant} is {r:.2f}x as slow, in line with its "
                f"{' and '.join(_NAMES[k] for k in match)}"))
    # 2. every variant on the board alike, other boards not
    all_regressed = len(here) >= 2 and all(o.verdict == vocab.REGRESSED for o in here)
    if all_regressed and all(_alike(o.ratio, r) for o in here):
        elsewhere = [o for (dev, cls), cs in by_device_class.items() if dev != c.device
                     and cls == c.length_class for o in cs]
        if elsewhere and not any(o.verdict == vocab.REGRESSED for o in elsewhere):
            lo, hi = min(o.ratio for o in here), max(o.ratio for o in here)
            steady = sorted({o.device for o in elsewhere})
            return Attribution(DEVICE_DRIFT, (
                f"every variant on {c.device} slowed alike ({lo:.2f}x-{hi:.2f}x, {len(here)} variants) "
                f"while {', '.join(steady)} did not"))
    # 3. the variant is slower on every device that regressed it, the board's other variants are not
    boards = sorted(devices_of_variant.get(c.variant, ()))
    if len(boards) >= 2 and not all_regressed:
        return Attribution(MODEL_REGRESSION, (
            f"{c.variant} is slower on {len(boards)} devices ({', '.join(boards)}) while other variants on "
            f"{c.device} are not"))
    # 4. a steady board, and only this variant slowed on it
    steady_board = drift is not None and all(v < DRIFT_MIN for v in drift.values())
    if steady_board and others_here and not any(o.verdict == vocab.REGRESSED for o in others_here):
        return Attribution(MODEL_REGRESSION, (
            f"{c.device}'s own micro-benchmarks did not move ({drift_text(drift)}) and its other variants "
            f"({', '.join(sorted(o.variant for o in others_here))}) did not slow; {c.variant} is {r:.2f}x "
            "as slow"))
    # 5. neither
    seen = []
    if drift is None:
        seen.append(f"no micro-benchmarks of {c.device} on both runs")
    else:
        seen.append(f"{c.device}'s micro-benchmarks: {drift_text(drift)}")
    if all_regressed:
        seen.append(f"every variant on {c.device} slowed")
    if len(boards) < 2:
        seen.append(f"{c.variant} regressed on {len(boards)} device(s)")
    return Attribution(UNATTRIBUTED, "; ".join(seen))
