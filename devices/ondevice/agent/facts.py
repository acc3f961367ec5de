"""Device facts: what the machine was and how it was doing around a measurement.

Every fact is None when the device cannot tell (no cpufreq, no thermal zone, no vcgencmd); reading
facts never raises. Standard library only (torch is imported only when asked for), Python 3.8+.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess

from devices.ondevice.agent.format import empty_facts

PROC = "/proc"
SYS_CPU = "/sys/devices/system/cpu"
SYS_THERMAL = "/sys/class/thermal"

# vcgencmd get_throttled bits: 0 under-voltage, 1 ARM frequency capped, 2 throttled, 3 soft temperature
# limit -- "now"; bits 16..19 are the same conditions "has occurred since boot".
THROTTLE_NOW_MASK = 0xF
THROTTLE_OCCURRED_MASK = 0xF0000
#: vcgencmd get_throttled bit -> condition (bit + 16 is the same condition "since boot").
THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}
DEVICE_TREE_MODEL = "/proc/device-tree/model"
#: ARM cores by (CPU implementer, CPU part) of /proc/cpuinfo (the kernel's arm64 cputype table).
ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd04"): "Cortex-A35", ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57", ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75", ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77", ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd44"): "Cortex-X1", ("0x41", "0xd46"): "Cortex-A510", ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd4b"): "Cortex-A78C", ("0x4e", "0x004"): "NVIDIA Carmel",
}
# A frequency cap below this fraction of the hardware maximum counts as throttling.
FREQ_CAP_RATIO = 0.85
# Thermal zones whose type names the CPU/SoC (preferred over battery, wifi, ... zones).
_CPU_ZONE = re.compile(r"cpu|soc|x86_pkg|package|core|k10temp|tctl|arm", re.IGNORECASE)


def _read(path: str):
    """A small text file's stripped content, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _read_number(path: str):
    text = _read(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _cpuinfo() -> dict:
    return parse_cpuinfo(_read(os.path.join(PROC, "cpuinfo")) or "")


def parse_cpuinfo(text: str) -> dict:
    """First occurrence of each key of a /proc/cpuinfo text."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def cpu_model(cpuinfo: dict):
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if cpuinfo.get(key):
            return cpuinfo[key]
    return platform.processor() or None


def board_model(path: str = DEVICE_TREE_MODEL):
    """The board as its device tree names it ("Raspberry Pi 5 Model B Rev 1.0"), or None (no device tree:
    x86 machines, most VMs)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(512)
    except OSError:
        return None
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return text or None


def cpu_part(cpuinfo: dict):
    """"Cortex-A72 (0x41:0xd08)" from an ARM /proc/cpuinfo (implementer:part when the core is not in
    ARM_PARTS), or None where cpuinfo has no CPU part (x86)."""
    implementer = cpuinfo.get("CPU implementer", "").lower()
    part = cpuinfo.get("CPU part", "").lower()
    if not part:
        return None
    name = ARM_PARTS.get((implementer, part))
    return f"{name} ({implementer}:{part})" if name else f"{implementer or '?'}:{part}"


def cpu_features(cpuinfo: dict):
    """The Features line of an ARM /proc/cpuinfo as a list (x86's long ``flags`` are not kept), or None."""
    text = cpuinfo.get("Features")
    return text.split() if text else None


def throttled_conditions(flags):
    """``vcgencmd get_throttled``'s value ("0x50005") as conditions: "<condition> now" for bits 0-3 and
    "<condition> since boot" for bits 16-19; None when the value is unknown."""
    if not isinstance(flags, str):
        return None
    try:
        value = int(flags, 16)
    except ValueError:
        return None
    out = [f"{name} now" for bit, name in THROTTLE_BITS.items() if value >> bit & 1]
    out += [f"{name} since boot" for bit, name in THROTTLE_BITS.items() if value >> (bit + 16) & 1]
    return out


def _meminfo() -> dict:
    out = {}
    text = _read(os.path.join(PROC, "meminfo")) or ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            out[key.strip()] = int(parts[0]) * scale
    return out


def _freq_mhz(name: str):
    khz = _read_number(os.path.join(SYS_CPU, "cpu0", "cpufreq", name))
    return None if khz is None else round(khz / 1000.0, 1)


def read_temp_c():
    """Hottest CPU/SoC thermal zone in degrees C (any zone if none is named like a CPU), or None."""
    cpu_temps, other = [], []
    for zone in sorted(glob.glob(os.path.join(SYS_THERMAL, "thermal_zone*"))):
        milli = _read_number(os.path.join(zone, "temp"))
        if milli is None:
            continue
        celsius = milli / 1000.0
        if not -40.0 <= celsius <= 150.0:  # disconnected sensors report nonsense
            continue
        zone_type = _read(os.path.join(zone, "type")) or ""
        (cpu_temps if _CPU_ZONE.search(zone_type) else other).append(celsius)
    temps = cpu_temps or other
    return round(max(temps), 1) if temps else None


def read_throttled_flags(timeout: float = 5.0):
    """`vcgencmd get_throttled` as "0x..." (Raspberry Pi), or None where there is no vcgencmd."""
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=timeout
        ).stdout.decode("ascii", "replace")
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"throttled=(0x[0-9a-fA-F]+)", out)
    return match.group(1) if match else None


def _os_name():
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return platform.system() or None


def _version_without_import(package: str = "torch"):
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return metadata.version(package)
    except Exception:  # noqa: BLE001 - any metadata problem means "unknown", never a crash
        return None


def collect(import_torch: bool = False) -> dict:
    """Every fact (FACT_FIELDS); unavailable ones are None.

    import_torch: also import torch for its version and quantized engine. The supervisor passes False
    (torch would bloat the process that forks the workers); it then reads torch's version from the
    package metadata and takes the quantized engine from the worker.
    """
    facts = empty_facts()
    info = _cpuinfo()
    facts["cpu_model"] = cpu_model(info)
    facts["cores"] = os.cpu_count()
    try:
        facts["cores_available"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        facts["cores_available"] = None
    facts["governor"] = _read(os.path.join(SYS_CPU, "cpu0", "cpufreq", "scaling_governor")) or None
    freq = _freq_mhz("scaling_cur_freq")
    if freq is None and info.get("cpu MHz"):
        try:
            freq = round(float(info["cpu MHz"]), 1)
        except ValueError:
            freq = None
    facts["freq_mhz"] = freq
    facts["freq_max_mhz"] = _freq_mhz("cpuinfo_max_freq")
    facts["freq_cap_mhz"] = _freq_mhz("scaling_max_freq")
    facts["temp_c"] = read_temp_c()
    facts["throttled_flags"] = read_throttled_flags()
    facts["throttled_conditions"] = throttled_conditions(facts["throttled_flags"])
    facts["board_model"] = board_model()
    facts["cpu_part"] = cpu_part(info)
    facts["cpu_features"] = cpu_features(info)
    try:
        facts["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        facts["load_avg"] = None
    mem = _meminfo()
    facts["mem_total_bytes"] = mem.get("MemTotal")
    facts["mem_available_bytes"] = mem.get("MemAvailable")
    facts["os"] = _os_name()
    facts["kernel"] = platform.release() or None
    facts["machine"] = platform.machine() or None
    facts["python"] = platform.python_version()
    try:
        facts["hostname"] = socket.gethostname() or None
    except OSError:
        facts["hostname"] = None
    if import_torch:
        try:
            import torch

            facts["torch"] = str(torch.__version__)
            facts["quantized_engine"] = str(torch.backends.quantized.engine)
        except Exception:  # noqa: BLE001 - a broken torch is a fact to report, not a crash
            facts["torch"] = _version_without_import()
    else:
        facts["torch"] = _version_without_import()
    facts["onnxruntime"] = _version_without_import("onnxruntime")
    return facts


def _flags_value(facts: dict):
    text = facts.get("throttled_flags")
    if not isinstance(text, str):
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def is_throttled(before: dict, after: dict) -> bool:
    """Did the device throttle around a measurement?

    True when vcgencmd reports a throttling condition now (before or after), or a "has occurred" bit that
    was clear before is set after; or when the cpufreq policy cap is well below the hardware maximum.
    """
    b, a = _flags_value(before), _flags_value(after)
    for value in (b, a):
        if value is not None and value & THROTTLE_NOW_MASK:
            return True
    if b is not None and a is not None and (a & ~b) & THROTTLE_OCCURRED_MASK:
        return True
    for facts in (before, after):
        cap, hw_max = facts.get("freq_cap_mhz"), facts.get("freq_max_mhz")
        if cap and hw_max and cap < FREQ_CAP_RATIO * hw_max:
            return True
    return False


def is_hot(limit_c: float, *temps) -> bool:
    """Any of the temperatures (None = unknown) above the limit."""
    return any(t is not None and t > limit_c for t in temps)
