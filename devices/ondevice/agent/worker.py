"""One measured process: import, load, first inference, warmup, steady state. Prints one JSON document.

Started by the supervisor as ``python -m devices.ondevice.agent.worker ...`` in a fresh interpreter, so every
phase (import of torch and the model code included) is paid again, as a user's process would pay it.
Only the final JSON goes to stdout (file descriptor 1 is pointed at stderr while the model code runs,
so a stray print cannot corrupt it); logs go to stderr.

Runs on the device: standard library + the artifact's runtime (torch, or numpy and onnxruntime: torch is then
never imported) + the bundled model code, Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

from devices.ondevice.agent.format import PHASE_FIELDS, field_names

SAMPLE_RATE = 16000  # Hz of the vocoder's output (contracts.md: 16 kHz, hop 200)

# What the worker prints. The supervisor checks these keys before trusting the document.
WORKER_KEYS = ("status", "error", "phases", "samples", "stop_reason", "steady_s", "warmup_done",
               "threads", "torch", "quantized_engine")
# Also printed (optional for the supervisor): "interference", the process-level numbers and what is left
# disturbed after re-measuring (see devices.ondevice.agent.interference).


PHASES = field_names(PHASE_FIELDS)


class WorkerError(Exception):
    """An expected failure of the measurement itself (reported in the document, exit status 1)."""


class StopRule:
    """When the steady state ends (pure logic; tested with a fake clock).

    Stops at the first of: ``max_iters`` samples (hard cap); the deadline; or both ``min_iters`` samples
    and ``min_seconds`` of steady state, at a multiple of ``block`` samples (the length of a balanced
    round of the schedule, so each sentence is measured equally often).
    """

    def __init__(self, min_iters: int, min_seconds: float, max_iters: int, block: int = 1,
                 deadline: Optional[float] = None) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.min_iters = min_iters
        self.min_seconds = min_seconds
        self.max_iters = max_iters
        self.block = block
        self.deadline = deadline

    def reason(self, done: int, elapsed_s: float, now: float) -> Optional[str]:
        """None to go on, else why to stop ("max_iters", "deadline" or "target")."""
        if done >= self.max_iters:
            return "max_iters"
        if self.deadline is not None and now >= self.deadline:
            return "deadline"
        if done >= self.min_iters and elapsed_s >= self.min_seconds and done % self.block == 0:
            return "target"
        return None


def balanced_block(plan: Sequence[tuple], n_sentences: int) -> int:
    """Smallest stopping granularity at which ``plan`` (a cycle of (sentence, emotion)) stays balanced.

    ``n_sentences`` when every consecutive chunk of that length holds each sentence once (the schedule
    is organised in rounds), else the whole cycle (every (sentence, emotion) pair once).
    """
    if n_sentences and len(plan) % n_sentences == 0:
        for start in range(0, len(plan), n_sentences):
            ids = [item[0].id for item in plan[start:start + n_sentences]]
            if len(set(ids)) != n_sentences:
                return len(plan)
        return n_sentences
    return len(plan)


def steady_state(plan: Sequence, step: Callable[[object], dict], rule: StopRule,
                 clock: Callable[[], float]):
    """Run ``step`` over ``plan`` (cycled) until ``rule`` says stop. Returns (samples, reason, seconds)."""
    samples: List[dict] = []
    start = clock()
    while True:
        now = clock()
        reason = rule.reason(len(samples), now - start, now)
        if reason is not None:
            return samples, reason, now - start
        sample = step(plan[len(samples) % len(plan)])
        sample["iteration"] = len(samples)
        samples.append(sample)


def in_rounds(cycle: Sequence[tuple]) -> List[tuple]:
    """A schedule cycle (every (sentence, emotion) once) rearranged into rounds of every sentence once.

    Round k holds each sentence with the emotion of its k-th occurrence in ``cycle``, in the order those
    occurrences appear there; so the seeded order is kept, each sentence is measured equally often at the
    end of every round, and each (sentence, emotion) pair equally often at the end of the cycle.
    """
    occurrences = {}  # sentence id -> [(position in cycle, item)], in cycle order
    for position, item in enumerate(cycle):
        occurrences.setdefault(item[0].id, []).append((position, item))
    counts = {len(v) for v in occurrences.values()}
    if len(counts) != 1:
        return list(cycle)  # not a full cycle: keep it as it is (balanced_block will say so)
    plan = []
    for k in range(counts.pop()):
        plan.extend(item for _, item in sorted(occ[k] for occ in occurrences.values()))
    return plan


def make_plan(corpus_module, emotions: Sequence[str], classes: Sequence[str], seed: int,
              sentence_ids: Optional[Sequence[str]] = None):
    """The steady state's plan: one full cycle of ``corpus.schedule`` over the requested classes x
    emotions (seeded), arranged in rounds; and the stop granularity that keeps it balanced.
    ``sentence_ids`` narrows the corpus to those sentences (e.g. to compare one sentence elsewhere)."""
    corpus = corpus_module.default_corpus(seed=seed)
    if sentence_ids:
        unknown = sorted(set(sentence_ids) - {s.id for s in corpus})
        if unknown:
            raise WorkerError("unknown corpus sentence id(s): " + ", ".join(unknown))
        corpus = [s for s in corpus if s.id in sentence_ids]
    sentences = [s for s in corpus if s.length_class in classes]
    if not sentences:
        raise WorkerError("no corpus sentence in the length classes " + ",".join(classes))
    cycle = list(corpus_module.schedule(sentences, emotions, len(sentences) * len(emotions), seed))
    plan = in_rounds(cycle)
    return plan, balanced_block(plan, len(sentences))


def remeasure(plan: Sequence, synth: Callable[[object], dict], samples: List[dict], threads: int,
              n_cpus: int, rule: StopRule, clock: Callable[[], float]) -> dict:
    """Flag disturbed samples (``interference.flag``) and measure their (sentence, emotion) again, at most
    ``REMEASURE_FRACTION`` of the steady state (at least 2), never past the deadline. A re-measured
    sample is appended (``remeasure_of`` names the original); statistics skip the disturbed ones. Returns
    the interference summary with ``samples_disturbed``, ``remeasured`` and ``unreplaced``."""
    from devices.ondevice.agent import interference

    reasons = interference.flag(samples, threads, n_cpus)
    budget = max(2, int(len(samples) * interference.REMEASURE_FRACTION + 0.999))
    first_reason = next((r for r in reasons if r), None)
    done = 0
    pending = [i for i, s in enumerate(samples) if s.get("disturbed")]
    while pending and done < budget:
        batch = []
        for i in pending:
            if done >= budget or (rule.deadline is not None and clock() >= rule.deadline):
                break
            # the original steady-state iteration: a re-measurement that was disturbed again is measured
            # again as its original (its own iteration is its place in the list, not in the plan)
            original = samples[i].get("remeasure_of", samples[i]["iteration"])
            again = synth(plan[original % len(plan)])
            again["iteration"] = len(samples)
            again["remeasure_of"] = original
            samples.append(again)
            batch.append(len(samples) - 1)
            done += 1
        if not batch:
            break
        new_reasons = interference.flag([samples[i] for i in batch], threads, n_cpus)
        first_reason = first_reason or next((r for r in new_reasons if r), None)
        pending = [i for i in batch if samples[i].get("disturbed")]
    replaced = {s["remeasure_of"] for s in samples if s.get("remeasure_of") is not None
                and not s.get("disturbed")}
    unreplaced = [s for s in samples if s.get("disturbed") and s.get("remeasure_of") is None
                  and s["iteration"] not in replaced]
    counted = [s for s in samples if not s.get("disturbed")]
    out = interference.summary(counted or samples, threads, n_cpus)
    out.update(samples_disturbed=sum(1 for s in samples if s.get("disturbed")), remeasured=done,
               unreplaced=len(unreplaced), reason=first_reason if unreplaced else None)
    return out


def measure_phases(synth: Callable[[object], dict], plan: Sequence, warmup: int, rule: StopRule,
                   clock: Callable[[], float], marks: Optional[dict] = None):
    """First inference (timed alone, never a sample), ``warmup`` dropped iterations, then the steady state.

    Returns (first_inference_s, warmup_done, samples, stop_reason, steady_s). Warmup stops early at the
    rule's deadline; the steady state always starts at the beginning of ``plan`` so its rounds stay
    balanced.
    """
    marks = {} if marks is None else marks
    t = clock()
    synth(plan[0])
    first_s = clock() - t
    marks["first_inference"] = time.time()
    warmup_done = 0
    for i in range(warmup):
        if rule.deadline is not None and clock() >= rule.deadline:
            break
        synth(plan[(i + 1) % len(plan)])
        warmup_done += 1
    marks["warmup"] = time.time()
    samples, reason, steady_s = steady_state(plan, synth, rule, clock)
    return first_s, warmup_done, samples, reason, steady_s


class _Timed:
    """A module whose calls are timed (the vocoder inside a stream: its share of the interleaved work)."""

    def __init__(self, module, clock: Callable[[], float]) -> None:
        self.module = module
        self.clock = clock
        self.elapsed = 0.0

    def __call__(self, *args, **kwargs):
        t = self.clock()
        out = self.module(*args, **kwargs)
        self.elapsed += self.clock() - t
        return out

    def __getattr__(self, name):
        return getattr(self.module, name)


class Synthesizer:
    """Times one (sentence, emotion) through the frontend, the acoustic model and the vocoder: the whole
    utterance at once, or streamed in chunks of ``stream_chunk_frames`` mel frames
    (``devices.ondevice.streaming``), with the time to the first audio."""

    def __init__(self, frontend_module, acoustic, vocoder, clock: Callable[[], float], symbols=None,
                 stream_chunk_frames: Optional[int] = None, to_inputs=None) -> None:
        self.frontend = frontend_module
        self.symbols = symbols  # the voice's symbol table (None: the frontend's built-in one)
        from devices.ondevice.agent.interference import Probe

        self.probe = Probe()
        self.acoustic = acoustic
        self.vocoder = vocoder
        self.clock = clock
        self.parent = os.getppid()
        self.chunk = stream_chunk_frames
        self.to_inputs = to_inputs or (lambda ids: ids.to_tensors())
        if self.chunk is not None:
            missing = [name for obj, name in ((acoustic, "prepare"), (vocoder, "context_frames"))
                       if not callable(getattr(obj, name, None))]
            if missing:
                raise WorkerError(f"streaming synthesis needs the reference model's streaming interface "
                                  f"(missing: {', '.join(missing)}); measure this model without "
                                  "stream_chunk_frames")

    def __call__(self, item) -> dict:
        if os.getppid() != self.parent:
            raise WorkerError("the supervisor went away; stopping")  # orphaned: never load the device alone
        sentence, emotion = item
        clock = self.clock
        before = self.probe.snapshot()  # read outside the timed span
        t0 = clock()
        ids = self.frontend.text_to_ids(sentence.text, emotion=emotion, symbols=self.symbols)
        inputs = self.to_inputs(ids)
        t1 = clock()
        if self.chunk is None:
            out = self.acoustic(**inputs)
            t2 = clock()
            wav = self.vocoder(out.mel.swapaxes(1, 2))  # torch tensors and numpy arrays alike
            t3 = clock()
            frames, samples = int(out.mel.shape[1]), int(wav.shape[-1])
            acoustic_s, vocoder_s, ttfa_s, margin, chunks = t2 - t1, t3 - t2, t3 - t0, None, 1
        else:
            from devices.ondevice import streaming

            vocoder = _Timed(self.vocoder, clock)
            ready, lengths = [], []
            for wav in streaming.stream(self.acoustic, vocoder, inputs, self.chunk):
                ready.append(clock())
                lengths.append(int(wav.numel()) / float(SAMPLE_RATE))
            t3 = clock()
            samples = int(round(sum(lengths) * SAMPLE_RATE))
            frames = samples // int(self.vocoder.cfg.hop_length)
            vocoder_s = vocoder.elapsed
            acoustic_s = (t3 - t1) - vocoder_s
            ttfa_s = ready[0] - t0 if ready else t3 - t0
            margin = streaming.realtime_margin(ready, lengths)
            chunks = len(ready)
        counters = self.probe.delta(before, self.probe.snapshot())
        return {
            **counters,
            "disturbed": False,
            "iteration": -1,
            "sentence_id": sentence.id,
            "length_class": sentence.length_class,
            "emotion": emotion,
            "phones": int(inputs["sy"].shape[-1]),
            "frames": frames,
            "audio_s": samples / float(SAMPLE_RATE),
            "frontend_s": t1 - t0,
            "acoustic_s": acoustic_s,
            "vocoder_s": vocoder_s,
            "total_s": t3 - t0,
            "ttfa_s": ttfa_s,
            "rt_margin_s": margin,
            "chunks": chunks,
        }


class TorchRuntime:
    """The worker's runtime for a torch artifact: the state_dicts loaded into the bundled model code."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        from devices.ondevice import load
        from devices.ondevice import models as _models  # noqa: F401 - part of the model code a user's process imports

        self.torch = torch
        self.load_module = load

    def configure(self, protocol) -> None:
        torch = self.torch
        if protocol.threads:
            torch.set_num_threads(protocol.threads)
        if protocol.quantized_engine:
            supported = [str(e) for e in torch.backends.quantized.supported_engines]
            if protocol.quantized_engine not in supported:
                raise WorkerError(f"quantized engine {protocol.quantized_engine!r} is not supported by torch "
                                  f"{torch.__version__} here (supported: {', '.join(supported)})")
            torch.backends.quantized.engine = protocol.quantized_engine

    def load(self, artifact_dir: str, component: str):
        return self.load_module.load_component(artifact_dir, component, verify=False).eval()

    def inputs(self, ids) -> dict:
        return ids.to_tensors()

    def context(self):
        return self.torch.inference_mode()

    def threads(self) -> int:
        return self.torch.get_num_threads()

    def engine(self) -> str:
        return str(self.torch.backends.quantized.engine)

    def doc(self) -> dict:
        return {"torch": str(self.torch.__version__), "quantized_engine": self.engine()}


class OrtRuntime:
    """The worker's runtime for an onnxruntime artifact: numpy and onnxruntime only (torch is never imported:
    a board without torch measures these)."""

    name = "onnxruntime"

    def __init__(self) -> None:
        import numpy  # noqa: F401 - part of the runtime a user's process imports

        from devices.ondevice import ort

        self.ort = ort
        self.protocol = None
        self.providers: list = []

    def configure(self, protocol) -> None:
        if protocol.stream_chunk_frames is not None:
            raise WorkerError("streaming synthesis is not implemented for onnxruntime variants (the streamed "
                              "post-net and vocoder are torch code); measure them without "
                              "stream_chunk_frames")
        available = list(self.ort.versions()["providers"])
        missing = [p for p in protocol.ort_providers if p not in available]
        if missing:
            raise WorkerError(f"onnxruntime {self.ort.versions()['onnxruntime']} here has no "
                              f"{', '.join(missing)} (available: {', '.join(available)})")
        self.protocol = protocol

    def load(self, artifact_dir: str, component: str):
        p = self.protocol
        options = dict(threads=p.threads, graph_optimization=p.ort_graph_optimization,
                       providers=list(p.ort_providers))
        model = self.ort.load_component(artifact_dir, component, **options)
        self.providers = list(getattr(model, "providers", None) or self.providers or p.ort_providers)
        return model

    def inputs(self, ids) -> dict:
        return ids.to_arrays()

    def context(self):
        import contextlib

        return contextlib.nullcontext()

    def threads(self):
        return self.protocol.threads if self.protocol is not None else None

    def engine(self):
        return None

    def doc(self) -> dict:
        return {"torch": None, "quantized_engine": None, "onnxruntime": self.ort.versions()["onnxruntime"],
                "ort_providers": self.providers}


RUNTIMES = {"torch": TorchRuntime, "onnxruntime": OrtRuntime}


def run(args, started: float, phases: dict, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Every phase of one process, filling ``phases`` as it goes; returns the worker document."""
    deadline = started + args.deadline_s if args.deadline_s else None
    from devices.ondevice import artifact

    config = artifact.read_config(args.artifact)  # standard library: which runtime to import
    runtime_name = artifact.runtime_of(config)
    t = clock()
    runtime = RUNTIMES[runtime_name]()
    from devices.ondevice import corpus, frontend

    phases["import_s"] = clock() - t
    marks = {"import": time.time()}  # wall-clock ends of the phases: the supervisor's memory timeline
    from devices.ondevice.protocol import Protocol

    protocol = Protocol.from_document(json.loads(args.protocol))
    runtime.configure(protocol)
    # The sha256 check runs before the load timers: a user's process loading a model does not hash it.
    artifact.verify_files(args.artifact)
    t = clock()
    acoustic = runtime.load(args.artifact, "acoustic")
    phases["acoustic_load_s"] = clock() - t
    t = clock()
    vocoder = runtime.load(args.artifact, "vocoder")
    phases["vocoder_load_s"] = clock() - t
    marks["load"] = time.time()

    ids = args.sentence_ids.split(",") if args.sentence_ids else None
    plan, block = make_plan(corpus, frontend.EMOTIONS, list(protocol.sentences), protocol.seed, ids)
    from devices.ondevice.symbols import symbol_table

    symbols = symbol_table(config)
    synth = Synthesizer(frontend, acoustic, vocoder, clock, symbols, protocol.stream_chunk_frames,
                        to_inputs=runtime.inputs)
    rule = StopRule(protocol.min_iters, protocol.min_seconds, protocol.max_iters, block, deadline)
    with runtime.context():
        measured = measure_phases(synth, plan, protocol.warmup, rule, clock, marks)
    first_s, warmup_done, samples, reason, steady_s = measured
    phases["first_inference_s"] = first_s
    from devices.ondevice.agent.interference import allowed_cpus

    with runtime.context():
        interference = remeasure(
            plan, synth, samples, runtime.threads() or len(allowed_cpus()), len(allowed_cpus()), rule, clock
        )
    marks["steady"] = time.time()
    outputs_doc = None
    if args.check_outputs and samples:
        from devices.ondevice import outputs

        sentence, emotion = plan[0]
        with runtime.context():
            outputs_doc = outputs.device_outputs(frontend, symbols, acoustic, vocoder, sentence, emotion,
                                                 runtime.engine(), to_inputs=runtime.inputs)
    doc = {
        "status": "ok", "error": None, "phases": phases, "samples": samples, "stop_reason": reason,
        "steady_s": steady_s, "warmup_done": warmup_done, "threads": runtime.threads(),
        "interference": interference, "marks": marks, **runtime.doc(),
    }
    if outputs_doc is not None:
        doc["outputs"] = outputs_doc
    if not samples:
        doc["status"] = "failed"
        doc["error"] = "the process's time share ran out before the first steady-state iteration"
    return doc


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(prog="edgebench-agent-worker", description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True)
    p.add_argument("--protocol", required=True, help="the edgebench.protocol document (JSON)")
    p.add_argument("--sentence-ids", default=None)
    p.add_argument("--check-outputs", action="store_true",
                   help="after measuring, synthesise the plan's first sentence once and print its outputs")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop iterating this many seconds after the process started")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    # Keep the real stdout for the JSON document; everything else written to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    phases = dict.fromkeys(PHASES)
    try:
        from devices.ondevice.errors import DevicesError, VariantsError

        try:
            doc = run(args, started, phases)
        except (VariantsError, WorkerError, DevicesError) as exc:
            doc = _failed(f"{type(exc).__name__}: {exc}", phases)
    except ImportError as exc:
        doc = _failed(f"cannot import the model code: {exc}", phases)
    # Any other exception is a bug: its traceback goes to stderr and the supervisor records the exit.
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")
    out.flush()
    return 0 if doc["status"] == "ok" else 1


def _failed(error: str, phases: dict) -> dict:
    doc = dict.fromkeys(WORKER_KEYS)
    doc.update(status="failed", error=error, phases=phases, samples=[])
    return doc


if __name__ == "__main__":
    sys.exit(main())
