"""The measurement protocol's settings (see design.md, "Measurement protocol").

One immutable value object, and the only place its defaults are written. The controller sends it to the
agent as one versioned JSON document (``to_document``); the agent and its workers read it back with the
same class (``from_document``: this module travels in the agent bundle), so no default or bound is written
twice on the two sides of the process boundary. Standard library only, Python 3.8+.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields

from devices.ondevice.errors import DevicesError

LENGTH_CLASSES = ("short", "medium", "long")

# The protocol travels to the agent as one document (``Protocol.to_document``). Versions:
#   1 -- the fields of Protocol (edgebench 0.2).
#   2 -- quantized_engine: the board's quantized engine for the workers (None: torch's default there);
#        stream_chunk_frames: streaming synthesis in chunks of that many mel frames (None: whole utterance).
PROTOCOL_FORMAT = "edgebench.protocol"
#   3 -- ort_graph_optimization, ort_providers: ONNX Runtime session options of onnxruntime variants.
PROTOCOL_VERSION = 3
KNOWN_PROTOCOL_VERSIONS = (3,)

# Time the agent may need beyond the measurement timeout: interpreter start, facts, lock, JSON out.
AGENT_OVERHEAD_S = 60.0

#: Upper bound of every protocol value (inclusive); the lower bounds are checked in ``__post_init__``.
#: Documented in the Protocol docstring and the README's configuration section.
MAX_PROCESSES = 50
MAX_WARMUP = 100
MAX_ITERS = 100_000
MAX_MIN_SECONDS = 3600.0
MAX_THREADS = 256
MAX_TIMEOUT_S = 86400.0
MAX_SEED = 2**31 - 1
MAX_HOT_LIMIT_C = 150.0
MAX_STREAM_CHUNK_FRAMES = 10_000
BOUNDS = {
    "processes": MAX_PROCESSES, "warmup": MAX_WARMUP, "min_iters": MAX_ITERS, "max_iters": MAX_ITERS,
    "min_seconds": MAX_MIN_SECONDS, "threads": MAX_THREADS, "timeout_s": MAX_TIMEOUT_S, "seed": MAX_SEED,
    "hot_limit_c": MAX_HOT_LIMIT_C, "stream_chunk_frames": MAX_STREAM_CHUNK_FRAMES,
}
#: torch.backends.quantized.engine values a protocol may ask for (which of them a board's torch supports is
#: its own: x86 builds have fbgemm/x86/onednn/qnnpack, aarch64 builds qnnpack/onednn).
QUANTIZED_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
#: onnxruntime.GraphOptimizationLevel by name (ORT_DISABLE_ALL, ORT_ENABLE_BASIC, _EXTENDED, _ALL).
ORT_GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
_PROVIDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}ExecutionProvider$")


@dataclass(frozen=True)
class Protocol:
    """How one variant is measured on one device.

    processes: fresh worker processes, run one after another (never two at once on a device).
    warmup: iterations run after the first inference and dropped.
    min_iters / min_seconds: the steady state runs until both are reached (and a balanced round of
    the corpus schedule is complete), capped at max_iters.
    threads: torch.set_num_threads in the worker; None keeps torch's default.
    timeout_s: overall limit of one agent invocation (all processes); each process gets a fair share.
    sentences: length classes of the corpus to measure.
    seed: seed of the corpus schedule.
    hot_limit_c: a process is flagged ``hot`` above this temperature.
    quantized_engine: ``torch.backends.quantized.engine`` in the workers (one of QUANTIZED_ENGINES);
    None keeps the board's own default. Usually set per device (devices.toml), recorded with the result.
    stream_chunk_frames: None measures whole-utterance synthesis (what the source article measured); a
    number measures streaming synthesis (devices.ondevice.streaming) in chunks of that many mel frames
    (80 frames = 1 s of audio at 16 kHz, hop 200), with time to first audio per sample.
    ort_graph_optimization / ort_providers: the ONNX Runtime session options of onnxruntime variants (graph
    optimisation level, one of ORT_GRAPH_OPTIMIZATIONS; execution providers in order of preference, each
    ``...ExecutionProvider``). ``threads`` is ORT's intra-op thread count too (inter-op: 1, sequential).

    Every value has an upper bound (``BOUNDS``), checked here, so that a typo (``min_seconds = 1e9``,
    ``processes = 5000``) is a configuration error before anything is built or measured, never a run
    that measures until someone stops it: processes 1-50, warmup 0-100, min_iters 1-max_iters,
    max_iters 1-100000, min_seconds 0-3600, threads 1-256, timeout_s 1-86400 (one day), seed
    0-2147483647 (2**31 - 1), hot_limit_c 0-150, stream_chunk_frames 1-10000.
    """

    processes: int = 3
    warmup: int = 2
    min_iters: int = 10
    min_seconds: float = 5.0
    max_iters: int = 200
    threads: int | None = None
    timeout_s: float = 900.0
    sentences: tuple[str, ...] = LENGTH_CLASSES
    seed: int = 0
    hot_limit_c: float = 80.0
    quantized_engine: str | None = None
    stream_chunk_frames: int | None = None
    ort_graph_optimization: str = "all"
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sentences", tuple(self.sentences))
        if isinstance(self.ort_providers, (list, tuple)):
            object.__setattr__(self, "ort_providers", tuple(self.ort_providers))
        for name in ("processes", "min_iters", "max_iters"):
            _check_int(name, getattr(self, name), minimum=1, maximum=BOUNDS[name])
        _check_int("warmup", self.warmup, minimum=0, maximum=MAX_WARMUP)
        _check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1, maximum=MAX_THREADS)
        if self.stream_chunk_frames is not None:
            _check_int("stream_chunk_frames", self.stream_chunk_frames, minimum=1,
                       maximum=MAX_STREAM_CHUNK_FRAMES)
        _check_number("min_seconds", self.min_seconds, minimum=0.0, maximum=MAX_MIN_SECONDS)
        _check_number("timeout_s", self.timeout_s, minimum=1.0, maximum=MAX_TIMEOUT_S)
        _check_number("hot_limit_c", self.hot_limit_c, minimum=0.0, maximum=MAX_HOT_LIMIT_C)
        if self.quantized_engine is not None and self.quantized_engine not in QUANTIZED_ENGINES:
            raise DevicesError(f"protocol: quantized_engine must be one of {', '.join(QUANTIZED_ENGINES)}, "
                               f"got {self.quantized_engine!r}")
        if self.ort_graph_optimization not in ORT_GRAPH_OPTIMIZATIONS:
            raise DevicesError(f"protocol: ort_graph_optimization must be one of "
                               f"{', '.join(ORT_GRAPH_OPTIMIZATIONS)}, got {self.ort_graph_optimization!r}")
        providers = self.ort_providers
        if (not isinstance(providers, tuple) or not providers or len(providers) > 8
                or not all(isinstance(p, str) and _PROVIDER_NAME.match(p) for p in providers)):
            raise DevicesError(f"protocol: ort_providers must be a list of 1-8 execution provider names like "
                               f"'CPUExecutionProvider', got {providers!r}")
        if self.min_iters > self.max_iters:
            raise DevicesError(
                f"protocol: min_iters ({self.min_iters}) is larger than max_iters ({self.max_iters})"
            )
        if not self.sentences:
            raise DevicesError(f"protocol: sentences is empty; use some of {', '.join(LENGTH_CLASSES)}")
        for cls in self.sentences:
            if cls not in LENGTH_CLASSES:
                raise DevicesError(
                    f"protocol: sentences: unknown length class {cls!r}; known: {', '.join(LENGTH_CLASSES)}"
                )
        if len(set(self.sentences)) != len(self.sentences):
            raise DevicesError(f"protocol: sentences lists a length class twice: {list(self.sentences)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sentences"] = list(self.sentences)
        d["ort_providers"] = list(self.ort_providers)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        """Build from a mapping (e.g. the ``[protocol]`` table of edgebench.toml); unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DevicesError(
                f"protocol: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_document(self) -> dict:
        """The protocol as the one versioned document the agent (and its workers) receive."""
        return {"format": PROTOCOL_FORMAT, "version": PROTOCOL_VERSION, **self.to_dict()}

    @classmethod
    def from_document(cls, doc: object) -> Protocol:
        """Read a protocol document (``to_document``); DevicesError on a foreign or unknown version, a
        missing or unknown key, or a value out of bounds. Every key must be present: the defaults live in
        this class only, on the controller, never again on the device."""
        if not isinstance(doc, dict) or doc.get("format") != PROTOCOL_FORMAT:
            raise DevicesError(f"protocol document: not an {PROTOCOL_FORMAT} document")
        if doc.get("version") not in KNOWN_PROTOCOL_VERSIONS:
            raise DevicesError(
                f"protocol document: version {doc.get('version')!r} is not known (known: "
                f"{', '.join(map(str, KNOWN_PROTOCOL_VERSIONS))}); the controller and the agent come from "
                "different edgebench releases: let the controller push its own bundle"
            )
        data = {k: v for k, v in doc.items() if k not in ("format", "version")}
        missing = sorted({f.name for f in fields(cls)} - set(data))
        if missing:
            raise DevicesError(f"protocol document: missing key(s) {', '.join(missing)}")
        return cls.from_dict(data)

    def agent_args(self) -> list[str]:
        """Arguments of ``agent measure`` that carry this protocol (artifact and variant not included)."""
        return ["--protocol", json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))]

    def transport_timeout(self) -> float:
        """Seconds the controller waits for one agent invocation before giving up on it."""
        return float(self.timeout_s) + AGENT_OVERHEAD_S

    def echoed(self) -> dict:
        """The ``protocol`` object a record measured under this protocol must carry."""
        return {
            "processes": self.processes,
            "warmup": self.warmup,
            "min_iters": self.min_iters,
            "min_seconds": float(self.min_seconds),
            "max_iters": self.max_iters,
            "threads": self.threads,
            "timeout_s": float(self.timeout_s),
            "sentences": list(self.sentences),
            "seed": self.seed,
            "quantized_engine": self.quantized_engine,
            "stream_chunk_frames": self.stream_chunk_frames,
            "ort_graph_optimization": self.ort_graph_optimization,
            "ort_providers": list(self.ort_providers),
        }


def _check_int(name: str, value: object, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DevicesError(f"protocol: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise DevicesError(f"protocol: {name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise DevicesError(f"protocol: {name} must be <= {maximum}, got {value}")


def _check_number(name: str, value: object, minimum: float, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DevicesError(f"protocol: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise DevicesError(f"protocol: {name} must be a finite number >= {minimum}, got {value}")
    if value > maximum:
        raise DevicesError(f"protocol: {name} must be <= {maximum:g}, got {value:g}")
