"""Device health (``edgebench devices check``): can this device take part in a run?

Reachable, Python and a runtime present (torch, or numpy and onnxruntime; with versions and, for
onnxruntime, its execution providers), enough free disk in the work directory and free
memory, temperature, torch's quantized engine. Checked with a small Python program run through the
transport (stdlib + torch, Python 3.8+), before any bundle is pushed. A device that fails is ineligible
with the reason (``Health.ok`` False); checking many devices runs them in parallel and one device's
failure never stops the others.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from devices.errors import DevicesError, HostKeyError
from devices.inventory import Device
from devices.transport import Transport, open_transport

MIN_PYTHON = (3, 8)
MIN_TORCH = (1, 13)
MIN_ONNXRUNTIME = (1, 14)
MIN_FREE_DISK_BYTES = 512 * 1024**2
MIN_MEM_AVAILABLE_BYTES = 256 * 1024**2
MAX_TEMP_C = 80.0
CHECK_TIMEOUT_S = 90.0     # importing torch on a cold Pi takes tens of seconds

# Runs on the device: python -c HEALTH_SNIPPET WORK_DIR ; prints one JSON object.
HEALTH_SNIPPET = r"""
import glob, json, os, platform, shutil, signal, socket, subprocess, sys, time
work = os.path.abspath(os.path.expanduser(sys.argv[1]))
# "os" and "cpu_model" are read exactly as devices/ondevice/agent/facts.py reads them: the device identity
# (devices.measure.device_identity) must not depend on which of the two reported the facts.
os_name = None
try:
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"') or None
except OSError:
    pass
facts = {"python": platform.python_version(), "machine": platform.machine(),
         "os": os_name or platform.system() or None,
         "hostname": socket.gethostname(), "cores": os.cpu_count(), "work_dir": work}
probe = work
while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
try:
    facts["disk_free_bytes"] = shutil.disk_usage(probe).free
except OSError:
    facts["disk_free_bytes"] = None
mem = {}
try:
    with open("/proc/meminfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                mem[k.strip()] = int(parts[0]) * 1024
except OSError:
    pass
facts["mem_total_bytes"] = mem.get("MemTotal"); facts["mem_available_bytes"] = mem.get("MemAvailable")
temps = []
for zone in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
    try:
        with open(zone) as f:
            value = float(f.read().strip()) / 1000.0
        if -40.0 < value < 150.0:
            temps.append(value)
    except (OSError, ValueError):
        pass
facts["temp_c"] = max(temps) if temps else None
model = None
cpuinfo = {}
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            cpuinfo.setdefault(k.strip(), v.strip())
except OSError:
    pass
for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
    if cpuinfo.get(key):
        model = cpuinfo[key]; break
facts["cpu_model"] = model or platform.processor() or None
# torch is imported in a child interpreter: a torch built for newer CPU features than the board has dies
# with SIGILL at import, which must become a reason here, not a lost SSH session (sys.executable is the
# board's python command, so this also works where the interpreter is started through a wrapper).
# onnxruntime (with numpy) is probed the same way: the runtimes a board has decide which pairs it can measure.
limit = float(sys.argv[2]) if len(sys.argv) > 2 else None
def child(code, what):
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return None, "%s took longer than %ss" % (what, limit), None, time.time() - t0
    except (OSError, ValueError) as exc:
        return None, "%s: %s" % (type(exc).__name__, exc), None, time.time() - t0
    if proc.returncode == 0:
        try:
            got = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            return got, None, None, time.time() - t0
        except (ValueError, IndexError) as exc:
            return None, "%s printed no facts (%s)" % (what, exc), None, time.time() - t0
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = "signal %d" % -proc.returncode
        return None, "%s died with %s" % (what, name), name, time.time() - t0
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return None, lines[-1] if lines else "exit %d" % proc.returncode, None, time.time() - t0
got, error, sig, took = child(
    "import json, torch; print(json.dumps({'torch': str(torch.__version__), "
    "'engine': str(torch.backends.quantized.engine), "
    "'engines': [str(e) for e in torch.backends.quantized.supported_engines]}))", "import torch")
facts["torch"] = None
facts["torch_import_s"] = round(took, 3)
# the installed version even where it cannot be imported: part of the device identity (as the agent reads it)
try:
    from importlib import metadata
    facts["torch_installed"] = metadata.version("torch")
except Exception:
    facts["torch_installed"] = None
if got is not None:
    facts["torch"] = got["torch"].split("+")[0]
    facts["quantized_engine"] = got["engine"]
    facts["quantized_engines"] = got["engines"]
else:
    facts["torch_error"] = error
    if sig:
        facts["torch_signal"] = sig
got, error, sig, took = child(
    "import json, numpy, onnxruntime as o; print(json.dumps({'onnxruntime': str(o.__version__), "
    "'numpy': str(numpy.__version__), 'providers': [str(p) for p in o.get_available_providers()]}))",
    "import onnxruntime")
facts["onnxruntime"] = None
if got is not None:
    facts["onnxruntime"] = got["onnxruntime"]
    facts["numpy"] = got["numpy"]
    facts["ort_providers"] = got["providers"]
else:
    facts["onnxruntime_error"] = error
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str | None
    facts: dict = field(default_factory=dict)
    device: str = ""
    warnings: tuple = ()
    duration_s: float = 0.0
    # False when the device could not be reached at all (connection, host key, timeout): the
    # orchestrator records "unreachable" rather than "ineligible" (reachable but unfit).
    reachable: bool = True
    # runtime -> why it cannot run here (None: it can); empty when the device was not reached
    runtimes: dict = field(default_factory=dict)

    def runtime_problem(self, runtime: str) -> str | None:
        """Why ``runtime`` cannot run on this device (None: it can)."""
        if not self.runtimes:
            return self.reason
        return self.runtimes.get(runtime, f"unknown runtime {runtime!r}")

    def to_dict(self) -> dict:
        return {"device": self.device, "ok": self.ok, "reason": self.reason, "warnings": list(self.warnings),
                "facts": dict(self.facts), "duration_s": round(self.duration_s, 3),
                "reachable": self.reachable, "runtimes": dict(self.runtimes)}


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in str(text).split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


#: What a signal at ``import torch`` means for the person preparing the board.
SIGNAL_HINTS = {
    "SIGILL": "illegal instruction: this torch build uses CPU instructions this CPU lacks (PyPI's aarch64 "
              "torch 2.10 needs ARMv8.2 and dies on a Pi 4's Cortex-A72); install a torch built for this CPU "
              "(README: preparing a real board)",
    "SIGBUS": "bus error: a damaged torch install or a full disk",
    "SIGSEGV": "segmentation fault: a torch build that does not match this system's libraries",
}


def runtime_problems(facts: dict, quantized_engine: str | None = None) -> dict:
    """Why each runtime cannot run on the device (None: it can): {"torch": ..., "onnxruntime": ...}."""
    out: dict = {}
    torch = facts.get("torch")
    if not torch and facts.get("torch_signal") in SIGNAL_HINTS:
        sig = facts["torch_signal"]
        what = "torch cannot run on this CPU" if sig == "SIGILL" else "torch crashes at import"
        out["torch"] = f"{what}: {facts.get('torch_error')} ({SIGNAL_HINTS[sig]})"
    elif not torch:
        out["torch"] = f"torch not importable ({facts.get('torch_error', 'not installed')})"
    elif _version_tuple(torch) < MIN_TORCH:
        out["torch"] = f"torch {torch} < {'.'.join(map(str, MIN_TORCH))}"
    else:
        engines = facts.get("quantized_engines")
        if quantized_engine and isinstance(engines, list) and quantized_engine not in engines:
            out["torch"] = (f"quantized_engine {quantized_engine!r} is not supported by torch {torch} here "
                            f"(supported: {', '.join(engines) or 'none'})")
        else:
            out["torch"] = None
    ort = facts.get("onnxruntime")
    if not ort:
        out["onnxruntime"] = (f"onnxruntime not importable "
                              f"({facts.get('onnxruntime_error', 'not installed, or numpy missing')})")
    elif _version_tuple(ort) < MIN_ONNXRUNTIME:
        out["onnxruntime"] = f"onnxruntime {ort} < {'.'.join(map(str, MIN_ONNXRUNTIME))}"
    else:
        out["onnxruntime"] = None
    return out


def judge(facts: dict, quantized_engine: str | None = None, runtimes: Sequence[str] = ("torch",)) -> tuple:
    """(reason or None, warnings) for facts reported by HEALTH_SNIPPET; ``quantized_engine`` is the
    engine the device is configured to use (None: the board's default). The device is eligible when it is
    fit and at least one of ``runtimes`` can run there (a pair whose runtime cannot is ineligible on its own:
    ``runtime_problems``)."""
    problems, warnings = [], []
    python = facts.get("python") or "?"
    if _version_tuple(python) < MIN_PYTHON:
        problems.append(f"Python {python} < {'.'.join(map(str, MIN_PYTHON))}")
    by_runtime = runtime_problems(facts, quantized_engine)
    if all(by_runtime.get(r) for r in runtimes):
        problems.extend(by_runtime[r] for r in runtimes)
    free = facts.get("disk_free_bytes")
    if isinstance(free, int) and free < MIN_FREE_DISK_BYTES:
        problems.append(f"only {free / 1024**2:.0f} MiB free disk in {facts.get('work_dir')} "
                        f"(needs {MIN_FREE_DISK_BYTES / 1024**2:.0f} MiB)")
    avail = facts.get("mem_available_bytes")
    if isinstance(avail, int) and avail < MIN_MEM_AVAILABLE_BYTES:
        problems.append(f"only {avail / 1024**2:.0f} MiB memory available "
                        f"(needs {MIN_MEM_AVAILABLE_BYTES / 1024**2:.0f} MiB)")
    temp = facts.get("temp_c")
    if isinstance(temp, (int, float)) and temp >= MAX_TEMP_C:
        problems.append(f"too hot: {temp:.0f} °C (limit {MAX_TEMP_C:.0f} °C; let it cool down)")
    torch = facts.get("torch")
    if torch and facts.get("quantized_engine") in (None, "none") and "torch" in runtimes:
        warnings.append("torch has no quantized engine: quantized variants will fail on this device")
    if free is None:
        warnings.append("free disk unknown")
    if avail is None:
        warnings.append("available memory unknown")
    return ("; ".join(problems) or None), warnings


def check(transport: Transport, device: Device, timeout: float = CHECK_TIMEOUT_S,
          runtimes: Sequence[str] = ("torch",)) -> Health:
    """Health of one device; device failures become ``Health(ok=False, reason=...)``, never exceptions.
    ``runtimes``: those the caller needs (the device is eligible when one of them can run)."""
    start = time.monotonic()
    try:
        argv = [device.python, "-c", HEALTH_SNIPPET, transport.work_dir, f"{timeout * 0.9:g}"]
        result = transport.run(argv, timeout=timeout)
    except DevicesError as exc:   # unreachable, untrusted host key, timeout: the device is ineligible
        what = "host key" if isinstance(exc, HostKeyError) else "unreachable"
        return Health(False, f"{what}: {exc}", {}, device.name, (), time.monotonic() - start,
                      reachable=False)
    elapsed = time.monotonic() - start
    if result.exit_code != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        what = ("Python not found" if result.exit_code in (126, 127)
                else f"health check failed (exit {result.exit_code})")
        return Health(False, f"{what}: {device.python}: {last}", {}, device.name, (), elapsed)
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        if not isinstance(facts, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        return Health(False, f"health check printed no facts: {result.stdout[-200:]!r}", {}, device.name,
                      (), elapsed)
    engine = getattr(device, "quantized_engine", None)
    reason, warnings = judge(facts, engine, runtimes)
    if engine and facts.get("torch"):
        # what the workers will use: the device's setting (the board's default is kept beside it)
        facts["quantized_engine_default"] = facts.get("quantized_engine")
        facts["quantized_engine"] = engine
    return Health(reason is None, reason, facts, device.name, tuple(warnings), elapsed,
                  runtimes=runtime_problems(facts, engine))


def check_device(device: Device, known_hosts: Path | None = None, state_dir: Path | None = None,
                 timeout: float = CHECK_TIMEOUT_S, runtimes: Sequence[str] = ("torch",)) -> Health:
    """Open a transport, check, close. Never raises for a device-side failure."""
    from devices import labgrid

    start = time.monotonic()
    try:
        # a board of a labgrid farm is checked while held, and only if it is free now (no waiting)
        with labgrid.borrowed(device, owner=f"edgebench-check-{os.getpid()}", wait_s=0) as board:
            try:
                transport = open_transport(board, known_hosts=known_hosts, state_dir=state_dir)
            except DevicesError as exc:
                return Health(False, str(exc), {}, device.name, (), time.monotonic() - start,
                              reachable=False)
            with transport:
                return check(transport, board, timeout=timeout, runtimes=runtimes)
    except labgrid.PlaceBusy as exc:
        return Health(False, f"busy: {exc}", {}, device.name, (), time.monotonic() - start, reachable=False)
    except labgrid.LabgridError as exc:
        return Health(False, f"unreachable: {exc}", {}, device.name, (), time.monotonic() - start,
                      reachable=False)


def check_devices(devices: Sequence[Device], known_hosts: Path | None = None, state_dir: Path | None = None,
                  timeout: float = CHECK_TIMEOUT_S, max_workers: int = 8,
                  runtimes: Sequence[str] = ("torch",)) -> list:
    """Health of every device, checked in parallel; results in the order given."""
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(devices))) as pool:
        futures = [pool.submit(check_device, d, known_hosts, state_dir, timeout, runtimes) for d in devices]
        return [f.result() for f in futures]
