"""Place a stage's measured time against the device's measured limits, and say what bounds it.

A stage that did ``macs`` multiply-accumulates in ``ops`` operator calls, reading ``weight_bytes`` of
weights, in ``seconds`` cannot have been faster than any of three floors on that device
(``devices.ondevice.microbench`` measures them):

* compute: ``macs / peak MAC rate`` (the int8 rate for an int8 variant);
* memory: ``weight_bytes / copy bandwidth`` (every weight read at least once);
* dispatch: ``ops x seconds per operator call``.

The largest floor is what the stage is bound by; its share of the measured time says how much of that
time it explains (near 1: the stage runs at that limit; small: something else, unmodelled, dominates).
From the bound follow the predictions the report states and a later run checks: dynamic int8 helps a
compute-bound stage (when the device's int8 rate beats fp32) and not a dispatch-bound one (it adds
quantize calls); structured pruning helps in proportion to the MACs it removes only where compute
bounds; a runtime with fewer, fused calls (ONNX Runtime) helps a dispatch-bound stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence

COMPUTE, MEMORY, DISPATCH = "compute-bound", "memory-bound", "dispatch-bound"
#: Below this share of the measured time, the bound is named but said not to explain the time.
UNEXPLAINED_SHARE = 0.25


@dataclass(frozen=True)
class Bounds:
    """A device's limits for one runtime: peak MAC/s (fp32, int8), copy bytes/s, seconds per call."""

    mac_per_s_fp32: float
    mac_per_s_int8: float
    bytes_per_s: float
    s_per_op: float
    #: (rows, inner, columns) -> (fp32, int8) MAC/s measured at the model's own product shapes
    shape_rates: Mapping[tuple, tuple] = field(default_factory=dict, compare=False)

    def nearest(self, shape: Sequence[int]) -> tuple | None:
        """The measured shape that stands for ``shape``: itself, else the one with the same weight (all
        but the first number: inner and columns, or channels, kernel and groups) and the fewest rows (or
        frames) at or above its own. More rows never lower a product's rate, so that rate is at least what
        ``shape`` gets and a floor computed from it stays a floor; None (the peak applies) when no such
        shape was measured."""
        key = tuple(int(v) for v in shape)
        if key in self.shape_rates:
            return key
        above = [k for k in self.shape_rates if len(k) == len(key) and k[1:] == key[1:] and k[0] >= key[0]]
        return min(above, key=lambda k: k[0]) if above else None

    def rate(self, shape: Sequence[int] | None, int8: bool) -> float:
        """MAC/s of a product of ``shape`` (the measured rate at that shape, else the peak). A convolution
        (five numbers) runs in fp32 in a dynamic-int8 variant too."""
        known = self.shape_rates.get(self.nearest(shape)) if shape is not None else None
        int8 = int8 and (shape is None or len(shape) == 3)
        if known is not None and known[1 if int8 else 0]:
            return known[1 if int8 else 0]
        return self.mac_per_s_int8 if int8 else self.mac_per_s_fp32

    @classmethod
    def from_microbench(cls, doc: Mapping[str, Any], statistic: str = "median") -> Bounds:
        """From ``devices.ondevice.microbench.run``'s document: the per-call medians (what the hardware can
        do: the roofline), or ``statistic="sustained"`` (what it did over the whole window: drift)."""
        def median(key: str) -> float:
            value = (doc.get(key) or {}).get(statistic)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"microbench: {key} has no positive {statistic}")
            return float(value)

        rates: dict = {}
        for i, key in enumerate(("model_fp32", "model_int8")):
            for entry in doc.get(key) or []:
                value = entry.get(statistic) if isinstance(entry, Mapping) else None
                if isinstance(value, (int, float)) and value > 0 and isinstance(entry.get("shape"), list):
                    pair = list(rates.get(tuple(entry["shape"]), (None, None)))
                    pair[i] = float(value)
                    rates[tuple(entry["shape"])] = tuple(pair)
        return cls(median("matmul_fp32"), median("matmul_int8"), median("copy"), median("dispatch"), rates)


@dataclass(frozen=True)
class Placement:
    """One stage of one variant on one device, against that device's bounds."""

    stage: str
    seconds: float
    macs: int
    ops: int
    weight_bytes: int
    int8: bool
    floors: Dict[str, float]          # bound -> seconds that bound alone would take
    bound: str                        # the largest floor's name
    share: float                      # that floor / the measured seconds

    @property
    def achieved_mac_per_s(self) -> float:
        return self.macs / self.seconds if self.seconds > 0 else 0.0

    def fraction_of_peak(self, bounds: Bounds) -> float:
        peak = bounds.mac_per_s_int8 if self.int8 else bounds.mac_per_s_fp32
        return self.achieved_mac_per_s / peak

    def reason(self) -> str:
        ms = self.seconds * 1e3
        if self.bound == DISPATCH:
            per_op = self.floors[DISPATCH] / self.ops * 1e6 if self.ops else 0.0
            return (f"{self.ops} operator calls x {per_op:.1f} us = {self.floors[DISPATCH] * 1e3:.1f} ms of "
                    f"{ms:.1f} ms")
        if self.bound == COMPUTE:
            return (f"{self.macs / 1e6:.1f} MMAC at the device's measured rates take "
                    f"{self.floors[COMPUTE] * 1e3:.1f} ms of {ms:.1f} ms")
        return (f"{self.weight_bytes / 1e6:.1f} MB of weights at the copy bandwidth take "
                f"{self.floors[MEMORY] * 1e3:.1f} ms of {ms:.1f} ms")

    def predictions(self, bounds: Bounds) -> Dict[str, str]:
        if self.share < UNEXPLAINED_SHARE:
            unclear = (f"unclear: its bound explains only {self.share:.0%} of its time, so what limits it is "
                       "not measured here")
            return {"int8": unclear, "pruning": unclear, "runtime": unclear}
        int8_faster = bounds.mac_per_s_int8 > bounds.mac_per_s_fp32
        if self.bound == COMPUTE:
            int8 = ("faster: int8 products run at "
                    f"{bounds.mac_per_s_int8 / bounds.mac_per_s_fp32:.1f}x the fp32 rate here"
                    if int8_faster else "no faster: this device's int8 products are not faster than fp32")
            prune = "faster, in proportion to the multiply-accumulates removed"
            runtime = "about the same: the arithmetic, not the calls, takes the time"
        elif self.bound == DISPATCH:
            int8 = "no faster, likely slower: int8 adds quantize calls and the calls take the time"
            prune = "little change: pruning removes arithmetic, not calls"
            runtime = "faster with a runtime that makes fewer, fused calls (ONNX Runtime)"
        else:
            int8 = "faster: int8 weights are a quarter of the bytes to read"
            prune = "faster, in proportion to the weight bytes removed"
            runtime = "about the same: the bytes must be read either way"
        return {"int8": int8, "pruning": prune, "runtime": runtime}

    def sentence(self, variant: str, bounds: Bounds) -> str:
        text = (f"{variant} {self.stage}: {self.bound} ({self.reason()}); "
                f"{self.achieved_mac_per_s / 1e9:.2f} GMAC/s, {self.fraction_of_peak(bounds):.1%} of the "
                f"{'int8' if self.int8 else 'fp32'} peak")
        if self.share < UNEXPLAINED_SHARE:
            text += (f"; that bound explains only {self.share:.0%} of the time: the rest is neither peak "
                     "arithmetic, weight traffic nor call overhead (small products far below the peak, "
                     "element-wise work)")
        return text


def compute_seconds(macs: float, shapes: Sequence[Sequence[float]], bounds: Bounds, int8: bool) -> float:
    """Seconds ``macs`` multiply-accumulates take at the device's rates: those done in products of a
    measured shape (``shapes``: ``[*shape, macs]``) at that shape's rate, the rest at the peak."""
    at_shapes = 0.0
    seconds = 0.0
    for s in shapes:
        shape = tuple(int(v) for v in s[:-1])
        if bounds.nearest(shape) is not None:
            seconds += s[-1] / bounds.rate(shape, int8)
            at_shapes += s[-1]
    rest = max(0.0, macs - at_shapes)
    return seconds + rest / bounds.rate(None, int8)


def place(stage: str, *, seconds: float, macs: int, ops: int | None, weight_bytes: int, bounds: Bounds,
          int8: bool = False, shapes: Sequence[Sequence[float]] = ()) -> Placement:
    """The stage against the bounds (``seconds`` > 0: the stage's measured time for this work). ``ops``
    None: the runtime's operator calls are unknown (no dispatch floor). ``shapes``: where the MACs were
    done (``[*shape, macs]``, ``variants.work``); those of a shape the device measured count at its rate
    there (a one-row product runs far below the peak), the rest at the peak."""
    if seconds <= 0:
        raise ValueError(f"{stage}: measured seconds must be positive, got {seconds!r}")
    floors = {
        COMPUTE: compute_seconds(macs, shapes, bounds, int8),
        MEMORY: weight_bytes / bounds.bytes_per_s,
        DISPATCH: (ops or 0) * bounds.s_per_op,
    }
    bound = max(floors, key=lambda k: floors[k])
    return Placement(stage, seconds, int(macs), int(ops or 0), int(weight_bytes), int8, floors, bound,
                     floors[bound] / seconds)


def drift(now: Bounds, before: Bounds) -> Dict[str, float]:
    """How the device's own limits moved since ``before`` (ratios now/before of its compute rate,
    bandwidth and per-call overhead, inverted so that > 1 always means slower now)."""
    return {
        "compute": before.mac_per_s_fp32 / now.mac_per_s_fp32,
        "memory": before.bytes_per_s / now.bytes_per_s,
        "dispatch": now.s_per_op / before.s_per_op,
    }
