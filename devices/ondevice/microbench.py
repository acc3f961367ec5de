"""The device's own limits, measured on the device: what a stage's time is compared against.

Three numbers bound how fast a stage can run on a board with a runtime:

* ``matmul`` rates (multiply-accumulates per second): fp32 and dynamic int8 matrix products, at a large
  shape (the compute bound) and at the model's own shapes (what its layers can get: its matrix products,
  and its 1-D convolutions timed as ``conv1d``, which dynamic int8 leaves in fp32);
* ``copy`` bandwidth (bytes per second): a large tensor copied, read once and written once;
* ``dispatch`` overhead (seconds per operator call): a loop of the small operations one autoregressive
  step makes on one frame (256 values: element-wise, softmax, layer norm, views), whose arithmetic is next
  to nothing, so their time is the runtime's cost of one such call (Python, dispatcher, allocation).

Each is timed in repeats until ``min_s`` seconds have passed (at least ``min_reps``, at most
``max_reps``), and reported as the median with the spread (quartiles) and ``n``, and as the ``sustained``
value over the whole window (total work / total time): a board throttled in bursts (a CPU quota, thermal
cycling) keeps its per-call median, not its sustained rate. Pure logic; the clock
is injectable (tests use a fake one). Runs on the device: standard library + torch, Python 3.8+.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

FORMAT = "edgebench.microbench"
VERSION = 1
#: The large shape: (rows, inner, columns) of a matrix product big enough to reach a core's peak.
LARGE_SHAPE = (256, 1024, 1024)
COPY_BYTES = 64 << 20
DISPATCH_CALLS = 2000
#: One call of the large product longer than this (an emulated or very slow board) halves its rows and
#: columns until it is not: the whole run stays within seconds there too. The shape used is reported.
MAX_CALL_S = 0.25


def _quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    s = sorted(values)
    n = len(s)

    def at(q: float) -> float:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def repeat(fn: Callable[[], Any], *, min_s: float, min_reps: int = 3, max_reps: int = 1000,
           clock: Callable[[], float] = time.perf_counter) -> List[float]:
    """Seconds of each call of ``fn`` (one warm-up call first, not timed), until ``min_s`` seconds of
    timed calls and at least ``min_reps`` of them, at most ``max_reps``."""
    fn()
    times: List[float] = []
    spent = 0.0
    while len(times) < max_reps and (len(times) < min_reps or spent < min_s):
        t0 = clock()
        fn()
        dt = clock() - t0
        times.append(dt)
        spent += dt
    return times


def rate(work: float, times: Sequence[float], unit: str) -> Dict[str, Any]:
    """``work`` per call over each call's seconds: median and quartiles of the rate, n."""
    rates = [work / t for t in times if t > 0]
    if not rates:
        return {"unit": unit, "n": 0, "median": None, "q1": None, "q3": None, "sustained": None}
    q1, med, q3 = _quartiles(rates)
    sustained = work * len(rates) / sum(t for t in times if t > 0)
    return {"unit": unit, "n": len(rates), "median": med, "q1": q1, "q3": q3, "sustained": sustained}


def matmul(torch, shape: Tuple[int, int, int], *, int8: bool = False, min_s: float = 0.5,
           clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """MACs per second of ``x[rows, inner] @ W[inner, cols]``: fp32 (``torch.nn.functional.linear``), or
    dynamic int8 as a dynamic-quantized Linear runs it (``quantized::linear_dynamic``)."""
    rows, inner, cols = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inner, generator=gen)
    layer = torch.nn.Linear(inner, cols, bias=False)
    if int8:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear},
                                                          dtype=torch.qint8)
    with torch.inference_mode():
        times = repeat(lambda: layer(x), min_s=min_s, clock=clock)
    out = rate(float(rows * inner * cols), times, "MAC/s")
    out["shape"] = list(shape)
    return out


def conv1d(torch, shape: Tuple[int, ...], *, min_s: float = 0.5,
           clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """MACs per second of a 1-D convolution of batch 1: ``shape`` = (frames out, channels in, channels
    out, kernel, groups), stride and dilation 1, the input just long enough (how a model's convolution
    layer calls ``conv1d``). Dynamic int8 leaves convolutions in fp32, so this one rate serves both."""
    frames, c_in, c_out, kernel, groups = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c_in, frames + kernel - 1, generator=gen)
    w = torch.randn(c_out, c_in // groups, kernel, generator=gen)
    with torch.inference_mode():
        times = repeat(lambda: torch.nn.functional.conv1d(x, w, groups=groups), min_s=min_s, clock=clock)
    out = rate(float(frames * c_out * (c_in // groups) * kernel), times, "MAC/s")
    out["shape"] = list(shape)
    return out


def product(torch, shape: Sequence[int], *, int8: bool = False, min_s: float = 0.5,
            clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """A model shape timed the way the model runs it: three numbers a matrix product (``matmul``), five a
    1-D convolution (``conv1d``)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 5:
        return conv1d(torch, shape, min_s=min_s, clock=clock)
    return matmul(torch, shape, int8=int8, min_s=min_s, clock=clock)


def copy(torch, nbytes: int = COPY_BYTES, *, min_s: float = 0.5,
         clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Bytes per second moved by copying a ``nbytes`` tensor into another (each byte read and written
    once: 2 x nbytes per call)."""
    n = max(1, nbytes // 4)
    src = torch.ones(n)
    dst = torch.empty(n)
    with torch.inference_mode():
        times = repeat(lambda: dst.copy_(src), min_s=min_s, clock=clock)
    out = rate(float(2 * n * 4), times, "B/s")
    out["bytes"] = n * 4
    return out


#: Values per tensor in the dispatch loop: one frame of a model's hidden state.
DISPATCH_WIDTH = 256


def dispatch(torch, calls: int = DISPATCH_CALLS, *, width: int = DISPATCH_WIDTH, min_s: float = 0.5,
             clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Seconds per operator call: ``calls`` calls per repeat of the small operations one step of an
    autoregressive model makes on one frame (``width`` values): add, multiply, tanh, softmax, layer norm,
    transpose, reshape, slice. Their arithmetic is a few hundred values, so what is timed is the
    runtime's cost of such a call (Python, dispatcher, allocation). Reported as seconds per call."""
    import torch.nn.functional as F

    x = torch.zeros(1, width)
    rounds = max(1, calls // 8)

    def loop() -> None:
        y = x
        for _ in range(rounds):
            y = y + 1.0
            y = y * 0.5
            y = torch.tanh(y)
            y = torch.softmax(y, -1)
            y = F.layer_norm(y, (width,))
            y = y.transpose(0, 1)
            y = y.reshape(1, width)
            y = y[:, :width]

    with torch.inference_mode():
        times = repeat(loop, min_s=min_s, clock=clock)
    per_call = [t / (8 * rounds) for t in times]
    q1, med, q3 = _quartiles(per_call)
    return {"unit": "s/op", "n": len(per_call), "median": med, "q1": q1, "q3": q3, "calls": 8 * rounds,
            "width": width, "sustained": sum(per_call) / len(per_call)}


def large_shape(torch, max_call_s: float = MAX_CALL_S, clock: Callable[[], float] = time.perf_counter
                ) -> Tuple[int, int, int]:
    """``LARGE_SHAPE``, its rows and columns halved while one fp32 call takes longer than ``max_call_s``
    (at least 16 x inner x 64)."""
    rows, inner, cols = LARGE_SHAPE
    x = torch.ones(rows, inner)
    w = torch.ones(cols, inner)
    with torch.inference_mode():
        while rows > 16 and cols > 64:
            t0 = clock()
            torch.nn.functional.linear(x[:rows], w[:cols])
            if clock() - t0 <= max_call_s:
                break
            rows, cols = rows // 2, cols // 2
    return rows, inner, cols


def run(torch, *, model_shapes: Sequence[Tuple[int, ...]] = (), min_s: float = 0.5,
        threads: Optional[int] = None, quantized_engine: Optional[str] = None,
        max_call_s: float = MAX_CALL_S, clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Every micro-benchmark once: the device's bounds for the runtime ``torch`` (about 5 x ``min_s``
    seconds plus the model shapes)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if quantized_engine:
        torch.backends.quantized.engine = quantized_engine
    shapes = [tuple(int(v) for v in s) for s in model_shapes]
    t0 = clock()
    big = large_shape(torch, max_call_s, clock)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quantized_engine": str(torch.backends.quantized.engine),
        "matmul_fp32": matmul(torch, big, min_s=min_s, clock=clock),
        "matmul_int8": matmul(torch, big, int8=True, min_s=min_s, clock=clock),
        "model_fp32": [product(torch, s, min_s=min_s / 4, clock=clock) for s in shapes],
        "model_int8": [product(torch, s, int8=True, min_s=min_s / 4, clock=clock)
                       for s in shapes if len(s) == 3],
        "copy": copy(torch, min_s=min_s, clock=clock),
        "dispatch": dispatch(torch, min_s=min_s, clock=clock),
    }
    doc["seconds"] = clock() - t0
    return doc


def check(doc: Dict[str, Any]) -> Optional[str]:
    """None when a document's bounds are usable (each a positive finite median with n >= 1 and q1 <= median
    <= q3), else what is wrong: a board that prints nonsense gets no roofline rather than a false one."""
    for key in ("matmul_fp32", "matmul_int8", "copy", "dispatch"):
        entry = doc.get(key)
        if not isinstance(entry, dict):
            return f"{key} is missing"
        med, q1, q3, n = (entry.get(k) for k in ("median", "q1", "q3", "n"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (med, q1, q3, n)):
            return f"{key} lacks its median, quartiles or n"
        if not (0 < med < float("inf")) or n < 1 or not (q1 <= med <= q3):
            return f"{key}: median {med!r}, quartiles {q1!r}..{q3!r}, n {n!r}"
    return None
