"""Why a variant takes the time it takes: each phase on each device placed against that device's limits.

For a stored run, per (device, variant) and phase (``acoustic``: the text-to-mel model, ``vocoder``), from

* the samples (each one's phase seconds, phones and frames),
* the work counted at build time (``variants.work``: the manifest's ``work``, one sentence per length class,
  scaled to each sample's phones and frames), and
* the device's micro-benchmarks of this run (``Store.microbench``: ``harness.roofline.Bounds``),

``explain`` gives the achieved MAC rate per sample (median, quartiles, n), the phase placed against the
device's bounds (``harness.roofline.place`` over the samples' total work and time: compute-, memory- or
dispatch-bound, with the reason) and the predictions that follow for int8, pruning and another runtime.
``check_predictions`` then holds each prediction against what the run measured for the variants that
apply that change to the same parent (``quantized`` against ``original``, ...).

A phase without counted work (a plugin model the counter cannot run), or a device without usable
micro-benchmarks, is left out with the reason in ``Explanation.missing``: never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from harness import results, roofline
from harness.store import Store

PHASES = ("acoustic", "vocoder")
#: Work stages (``variants.work.STAGES``) of each phase.
PHASE_STAGES = {"acoustic": ("encoder", "variance_adaptor", "decoder", "postnet", "acoustic_other"),
                "vocoder": ("vocoder",)}


@dataclass(frozen=True)
class PhaseExplanation:
    device: str
    variant: str
    phase: str
    n: int                                # samples
    placement: roofline.Placement
    bounds: roofline.Bounds
    rate_median: float                    # achieved MAC/s per sample
    rate_q1: float
    rate_q3: float
    ops_counted: bool                     # False: the runtime's operator calls are not counted (ONNX Runtime)
    dominant_stage: str                   # the stage with the most operator calls (or MACs)
    frames: int                           # mel frames of the samples

    @property
    def seconds_per_frame(self) -> float:
        return self.placement.seconds / max(1, self.frames)

    @property
    def fraction_of_peak(self) -> float:
        return self.placement.fraction_of_peak(self.bounds)

    def sentence(self) -> str:
        text = self.placement.sentence(self.variant, self.bounds)
        if not self.ops_counted:
            text += " (operator calls of this runtime not counted: no dispatch floor)"
        return text

    def to_dict(self) -> dict:
        p = self.placement
        return {"device": self.device, "variant": self.variant, "phase": self.phase, "n": self.n,
                "bound": p.bound, "share": p.share, "floors_s": dict(p.floors), "seconds": p.seconds,
                "macs": p.macs, "ops": p.ops if self.ops_counted else None, "weight_bytes": p.weight_bytes,
                "int8": p.int8, "achieved_mac_per_s": p.achieved_mac_per_s,
                "fraction_of_peak": self.fraction_of_peak, "rate_median": self.rate_median,
                "rate_q1": self.rate_q1, "rate_q3": self.rate_q3, "reason": p.reason(),
                "predictions": p.predictions(self.bounds), "sentence": self.sentence()}


@dataclass
class Explanation:
    run_id: str
    bounds: dict[str, roofline.Bounds] = field(default_factory=dict)           # device -> its limits
    microbench: dict[str, dict] = field(default_factory=dict)                  # device -> stored row
    phases: list[PhaseExplanation] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def of(self, device: str, variant: str, phase: str) -> PhaseExplanation | None:
        return next((p for p in self.phases
                     if (p.device, p.variant, p.phase) == (device, variant, phase)), None)


def int8_phases(manifest: Mapping[str, Any]) -> set[str]:
    """The phases a variant's recipe quantizes to int8 (torch's dynamic quantization, or ONNX Runtime's)."""
    out = set()
    for step in manifest.get("recipe") or []:
        if step.get("op", step.get("step")) == "quantize":
            out.add(str((step.get("args") or step).get("component", "acoustic")))
    return out


def explain(store: Store, run_id: str) -> Explanation:
    """Every (device, variant, phase) of a run that has samples, counted work and device limits."""
    from variants.work import scale

    out = Explanation(run_id)
    rows = store.microbench(run_id)
    for device, row in rows.items():
        out.microbench[device] = row
        try:
            out.bounds[device] = roofline.Bounds.from_microbench(row["doc"])
        except ValueError as exc:
            out.missing.append(f"{device}: no usable micro-benchmarks ({row['doc'].get('error') or exc})")
    manifests = {v: a["manifest"] for v, a in store.artifacts(run_id).items()}
    samples = results.samples_df(store, run_id)
    if samples.empty:
        return out
    for (device, variant), df in samples.groupby(["device", "variant"], sort=True):
        if device not in out.bounds:
            if device not in rows:
                out.missing.append(f"{device}: no micro-benchmarks in this run")
            continue
        entry = (manifests.get(variant) or {}).get("work") or {}
        if "sentences" not in entry:
            out.missing.append(f"{variant}: no counted work ({entry.get('error') or 'not counted'})")
            continue
        int8 = int8_phases(manifests.get(variant) or {})
        for phase in PHASES:
            exp = _phase(device, variant, phase, df, entry, out.bounds[device], phase in int8, scale)
            if exp is not None:
                out.phases.append(exp)
    out.missing = list(dict.fromkeys(out.missing))
    return out


def _phase(device, variant, phase, df, entry, bounds, int8, scale) -> PhaseExplanation | None:
    column = f"{phase}_s"
    macs, ops, secs, rates = 0.0, 0.0, 0.0, []
    weight = 0.0
    per_stage_ops: dict[str, float] = {}
    per_stage_macs: dict[str, float] = {}
    shapes: dict[tuple, float] = {}
    n = frames = 0
    ops_counted = True
    for row in df.to_dict("records"):
        seconds = row.get(column)
        if not isinstance(seconds, (int, float)) or not seconds > 0 or not row.get("frames"):
            continue
        work = scale(entry, row["length_class"], int(row.get("phones") or 0), int(row["frames"]))
        if work is None:
            continue
        stages = [work[s] for s in PHASE_STAGES[phase] if s in work]
        m = sum(w["macs"] for w in stages)
        if any(w["ops"] is None for w in stages):
            ops_counted = False
        o = sum(w["ops"] or 0 for w in stages)
        for s in PHASE_STAGES[phase]:
            if s in work:
                per_stage_ops[s] = per_stage_ops.get(s, 0) + (work[s]["ops"] or 0)
                per_stage_macs[s] = per_stage_macs.get(s, 0) + work[s]["macs"]
                for shape in work[s].get("shapes") or []:
                    key = tuple(int(v) for v in shape[:-1])
                    shapes[key] = shapes.get(key, 0.0) + shape[-1]
        macs += m
        ops += o
        secs += seconds
        weight += sum(w["weight_bytes"] for w in stages)
        rates.append(m / seconds)
        n += 1
        frames += int(row["frames"])
    if n == 0 or secs <= 0:
        return None
    placement = roofline.place(phase, seconds=secs, macs=int(macs), ops=int(ops) if ops_counted else None,
                               weight_bytes=int(weight), bounds=bounds, int8=int8,
                               shapes=[[*k, v] for k, v in shapes.items()])
    q1, med, q3 = (float(v) for v in np.percentile(rates, [25, 50, 75]))
    key = per_stage_ops if ops_counted and any(per_stage_ops.values()) else per_stage_macs
    dominant = max(key, key=lambda s: key[s]) if key else phase
    return PhaseExplanation(device, variant, phase, n, placement, bounds, med, q1, q3, ops_counted, dominant,
                            frames)


# --------------------------------------------------------------------------------- predictions vs what ran

#: (variant, its parent, the change) pairs a run can check: the prediction of the parent's placement for
#: that change, against the measured ratio of the two.
CHANGES = (("quantized", "original", "int8"), ("pruned", "original", "pruning"),
           ("pruned+quantized", "pruned", "int8"))


#: A predicted speed-up matches the measured one within this factor.
PREDICTION_TOLERANCE = 1.15


@dataclass(frozen=True)
class PredictionCheck:
    device: str
    phase: str
    change: str                 # "int8", "pruning"
    parent: str
    variant: str
    bound: str                  # the parent's bound
    predicted: str              # the prediction's text
    expect_faster: bool | None  # None: "about the same"
    speedup: float              # the parent's seconds per frame / the variant's (> 1: faster)
    matched: bool
    #: The speed-up the counted work predicts: the parent's time per frame, with its compute and dispatch
    #: floors replaced by the variant's (the unexplained rest assumed unchanged); None without call counts
    predicted_speedup: float | None = None

    def sentence(self) -> str:
        verdict = "matched" if self.matched else "did not match"
        figure = (f"; its counted work predicted {self.predicted_speedup:.2f}x"
                  if self.predicted_speedup is not None else "")
        return (f"{self.device} {self.phase}, {self.change} ({self.parent} -> {self.variant}): the "
                f"{self.bound} {self.parent} predicted \"{self.predicted}\"{figure}; measured "
                f"{self.speedup:.2f}x the speed: {verdict}")


def check_predictions(exp: Explanation, *, tolerance: float = 0.05) -> list[PredictionCheck]:
    """Each built-in change whose variant and parent were both explained on a device: the parent's
    prediction held against the measured speed-up (the parent's seconds per mel frame over the variant's:
    output length held fixed). "faster" matches a speed-up above 1 + tolerance; "no faster" one at or
    below it; "about the same" one within it."""
    out = []
    for parent_exp in exp.phases:
        for variant, parent, change in CHANGES:
            if parent_exp.variant != parent:
                continue
            child = exp.of(parent_exp.device, variant, parent_exp.phase)
            if child is None:
                continue
            if change == "int8" and child.placement.int8 == parent_exp.placement.int8:
                continue   # this phase is not the one the variant quantizes
            if change == "pruning" and _weights_per_sample(child) == _weights_per_sample(parent_exp):
                continue   # this phase is not the one the variant prunes
            text = parent_exp.placement.predictions(parent_exp.bounds)[change]
            if text.startswith("unclear"):
                continue   # nothing was predicted: nothing to hold against the run
            expect = True if text.startswith("faster") else None if text.startswith("about") else False
            speedup = parent_exp.seconds_per_frame / child.seconds_per_frame
            predicted = _predicted_speedup(parent_exp, child)
            if predicted is not None:
                matched = abs(math.log(speedup / predicted)) <= math.log(PREDICTION_TOLERANCE)
            elif expect is True:
                matched = speedup > 1 + tolerance
            elif expect is False:
                matched = speedup <= 1 + tolerance
            else:
                matched = abs(speedup - 1) <= tolerance
            out.append(PredictionCheck(parent_exp.device, parent_exp.phase, change, parent, variant,
                                       parent_exp.placement.bound, text, expect, speedup, matched, predicted))
    return out


def _weights_per_sample(p: PhaseExplanation) -> float:
    return p.placement.weight_bytes / max(1, p.n)


def _floors_per_frame(p: PhaseExplanation) -> float:
    return (p.placement.floors[roofline.COMPUTE] + p.placement.floors[roofline.DISPATCH]) / max(1, p.frames)


def _predicted_speedup(parent: PhaseExplanation, child: PhaseExplanation) -> float | None:
    """The parent's seconds per frame over the variant's as its counted work predicts it: the parent's
    measured time with its compute and dispatch floors (additive: every call pays its overhead and its
    arithmetic) exchanged for the variant's; what neither floor explains is assumed unchanged."""
    if not (parent.ops_counted and child.ops_counted):
        return None
    predicted = parent.seconds_per_frame - _floors_per_frame(parent) + _floors_per_frame(child)
    return parent.seconds_per_frame / predicted if predicted > 0 else None
