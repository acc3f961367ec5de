"""The runtime axis: a variant is measured with torch (eager, the artifact's state_dicts) or with ONNX Runtime
(the same weights exported as ONNX graphs, ``variants.onnx_export``; the loops stay in the device's Python,
``devices.ondevice.ort``).

What is measured is named ``variant`` on torch and ``variant@runtime`` on another runtime
(``quantized@onnxruntime``). That name is the key of a pair in the store, the budgets and the reports; ``@``
cannot occur in a variant's own name (``variants.recipes``), so the two never collide.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

from devices.ondevice.artifact import RUNTIMES

DEFAULT_RUNTIME = "torch"
SEPARATOR = "@"


def measured_name(variant: str, runtime: str = DEFAULT_RUNTIME) -> str:
    """``variant`` on torch, ``variant@runtime`` otherwise."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    return variant if runtime == DEFAULT_RUNTIME else f"{variant}{SEPARATOR}{runtime}"


def split_measured(name: str) -> Tuple[str, str]:
    """(variant, runtime) of a measured name; a name without ``@`` is the torch variant."""
    variant, sep, runtime = str(name).partition(SEPARATOR)
    return (variant, runtime) if sep and runtime in RUNTIMES else (str(name), DEFAULT_RUNTIME)


def measured_names(variants: Iterable[str], runtimes: Iterable[str]) -> List[str]:
    """Every (variant, runtime) as measured names, runtime by runtime (torch first when asked)."""
    runtimes = list(runtimes)
    return [measured_name(v, rt) for rt in runtimes for v in variants]
