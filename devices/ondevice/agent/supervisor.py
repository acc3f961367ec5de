"""The measuring side that stays outside the measured process.

``measure(...)`` takes the device's lock (one measurement at a time), reads facts, starts one fresh
worker process after another, watches each from outside (polls ``/proc/PID/status`` for VmHWM, RssAnon
and RssFile at a low rate, reads ``os.wait4``'s ``ru_maxrss`` at exit, polls the temperature), kills a
worker that overruns its share of the timeout, and assembles the measurement record. Any failure of a
worker (crash, timeout, garbage on stdout) becomes that process's status and error text; the record is
always printed.

The supervisor never imports torch: a big supervisor would inflate ru_maxrss (inherited across fork)
and slow the device down. Standard library only, Python 3.8+.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence

from devices.ondevice.agent import facts as facts_mod
from devices.ondevice.agent.format import (
    AGENT_VERSION,
    PHASE_FIELDS,
    RECORD_FORMAT,
    RECORD_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    field_names,
)
from devices.ondevice.agent.worker import WORKER_KEYS

LOCK_NAME = "measure.lock"
#: The process that started the agent (the controller, or the SSH session that carries its command).
#: When it is gone the agent was orphaned: it stops its worker, frees the device lock and exits within
#: about a poll interval, so a dead controller never holds a board for the next run.
_STARTED_BY = os.getppid()


def controller_gone() -> bool:
    return os.getppid() != _STARTED_BY
POLL_INTERVAL_S = 0.25
LOCK_RETRY_S = 0.5
# A worker stops iterating after this fraction of its time share, leaving room to print its samples.
SOFT_DEADLINE_FRACTION = 0.75
LINE_CHARS = 500         # a log line quoted in an error
MAX_ERROR_CHARS = 4000   # the record's error text (every failed process, joined)


def bundle_root() -> str:
    """The directory (or zip) the ``devices`` package was imported from: the workers' PYTHONPATH."""
    import devices.ondevice as package

    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(package.__file__))))


def default_work_dir(artifact: str) -> str:
    """<work_dir> of ``<work_dir>/artifacts/<hash>``; otherwise the artifact's parent directory."""
    parent = os.path.dirname(os.path.abspath(artifact))
    if os.path.basename(parent) == "artifacts":
        return os.path.dirname(parent)
    return parent


def read_content_hash(artifact: str):
    """(content_hash, None) from the artifact's manifest (the format's one reader, with its version
    check), or (None, error text)."""
    from devices.ondevice.artifact import read_manifest
    from devices.ondevice.errors import ArtifactError

    try:
        manifest = read_manifest(artifact)
    except ArtifactError as exc:
        return None, str(exc)
    value = manifest.get("content_hash")
    if not isinstance(value, str):
        return None, f"artifact {artifact}: manifest.json has no content_hash; rebuild the artifact"
    return value, None


class DeviceLock:
    """An exclusive fcntl lock on ``<work_dir>/measure.lock``: one measurement on a device at a time."""

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(work_dir, LOCK_NAME)
        self.fd = None

    def acquire(self, deadline: float, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> Optional[str]:
        """None when held, else why not (waits until ``deadline`` for another measurement to end)."""
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            return f"cannot open the device lock {self.path}: {exc}"
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    return f"cannot lock {self.path}: {exc}"
            if clock() >= deadline:
                holder = _read_text(self.path).strip() or "unknown"
                os.close(fd)
                return f"device busy: another measurement (pid {holder}) held {self.path} until the timeout"
            if controller_gone():
                os.close(fd)
                return "the controller went away while the agent waited for the device lock"
            sleep(LOCK_RETRY_S)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def read_proc_status(pid: int) -> dict:
    """Vm*/Rss* lines of /proc/PID/status in bytes ({} when gone or not Linux)."""
    out = {}
    for line in _read_text(f"/proc/{pid}/status").splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and (key.startswith("Vm") or key.startswith("Rss")) and parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024  # the kernel reports kB
    return out


#: The most points of a process's stored memory timeline (longer ones keep each bucket's highest RSS).
MAX_TIMELINE_POINTS = 240


class MemoryWatch:
    """Peak memory of one process from its /proc status samples, and its timeline (seconds since the
    process started, RSS, high-water mark): the polls the supervisor makes anyway, from outside."""

    def __init__(self) -> None:
        self.polls = 0
        self.vm_hwm = None
        self.peak_rss = -1
        self.rss_anon = None
        self.rss_file = None
        self.points: List[tuple] = []

    def add(self, status: dict, t: Optional[float] = None) -> None:
        if not status:
            return
        self.polls += 1
        if "VmHWM" in status:
            self.vm_hwm = max(self.vm_hwm or 0, status["VmHWM"])
        rss = status.get("VmRSS")
        if rss is None:
            rss = status.get("RssAnon", 0) + status.get("RssFile", 0) + status.get("RssShmem", 0)
        if rss > self.peak_rss:
            self.peak_rss = rss
            self.rss_anon = status.get("RssAnon")
            self.rss_file = status.get("RssFile")
        if t is not None:
            self.points.append((round(t, 3), int(rss), int(status.get("VmHWM", rss))))

    def timeline(self, max_points: int = MAX_TIMELINE_POINTS) -> Optional[dict]:
        """``{"t_s": [...], "rss_bytes": [...], "hwm_bytes": [...]}`` (None without polls); at most
        ``max_points``: each bucket of consecutive polls keeps its highest RSS, so no peak is lost."""
        points = self.points
        if not points:
            return None
        if len(points) > max_points:
            size = -(-len(points) // max_points)
            points = [max(points[i:i + size], key=lambda p: p[1]) for i in range(0, len(points), size)]
        return {"t_s": [p[0] for p in points], "rss_bytes": [p[1] for p in points],
                "hwm_bytes": [p[2] for p in points]}


def ru_maxrss_bytes(ru) -> int:
    """ru_maxrss is in KiB on Linux, bytes on macOS."""
    return int(ru.ru_maxrss) if sys.platform == "darwin" else int(ru.ru_maxrss) * 1024


def exit_code_of(status: int) -> int:
    """A wait status as an exit code; negative = killed by that signal (like subprocess)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def worker_argv(args: dict, deadline_s: float, check_outputs: bool = False) -> List[str]:
    argv = [sys.executable, "-m", "devices.ondevice.agent.worker",
            "--artifact", args["artifact"],
            "--protocol", args["protocol"],
            "--deadline-s", repr(float(deadline_s))]  # fmt: skip
    if args.get("sentence_ids"):
        argv += ["--sentence-ids", ",".join(args["sentence_ids"])]
    if check_outputs:
        argv.append("--check-outputs")
    return argv


def run_worker(argv: Sequence[str], timeout_s: float, poll_interval: float = POLL_INTERVAL_S) -> dict:
    """Start one worker, watch it from outside, return what happened (no interpretation yet).

    Keys: started (bool), start_error, exit_code, timed_out, wall_s, stdout, stderr, ru_maxrss_bytes,
    memory (MemoryWatch), temp_max_c.
    """
    env = dict(os.environ)
    root = bundle_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    memory = MemoryWatch()
    result = {"started": False, "start_error": None, "exit_code": None, "timed_out": False, "wall_s": None,
              "stdout": "", "stderr": "", "ru_maxrss_bytes": None, "memory": memory, "temp_max_c": None,
              "orphaned": False}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        result["started_at"] = time.time()  # the worker's phase marks are wall-clock times
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        except OSError as exc:
            result["start_error"] = f"cannot start the worker ({argv[0]}): {exc}"
            return result
        result["started"] = True
        deadline = start + timeout_s
        temps = []
        while True:
            memory.add(read_proc_status(proc.pid), time.monotonic() - start)
            temp = facts_mod.read_temp_c()
            if temp is not None:
                temps.append(temp)
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() >= deadline or controller_gone():
                result["timed_out" if not controller_gone() else "orphaned"] = True
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(poll_interval)
        result["wall_s"] = time.monotonic() - start
        proc.returncode = exit_code_of(status)  # reaped by wait4: tell Popen so it never waits again
        result["exit_code"] = proc.returncode
        result["ru_maxrss_bytes"] = ru_maxrss_bytes(ru)
        result["temp_max_c"] = max(temps) if temps else None
        out.seek(0)
        err.seek(0)
        result["stdout"] = out.read().decode("utf-8", "replace")
        result["stderr"] = err.read().decode("utf-8", "replace")
    return result


def parse_worker_output(stdout: str):
    """(document, None) when stdout is one JSON object with the worker's keys, else (None, why not)."""
    text = stdout.strip()
    if not text:
        return None, "the worker printed nothing on stdout"
    try:
        doc = json.loads(text)
    except ValueError:
        return None, f"the worker printed garbage instead of JSON: {text[:200]!r}"
    if not isinstance(doc, dict):
        return None, f"the worker printed JSON that is not an object: {text[:200]!r}"
    missing = [k for k in WORKER_KEYS if k not in doc]
    if missing:
        return None, f"the worker's JSON lacks {', '.join(missing)}"
    if doc["status"] not in (STATUS_OK, STATUS_FAILED) or not isinstance(doc["samples"], list) \
            or not isinstance(doc["phases"], dict):
        return None, "the worker's JSON has a wrong status, samples or phases"
    return doc, None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    line = lines[-1].strip() if lines else "no output on stderr"
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 3] + "..."


def process_record(index: int, run: dict, before: dict, after: dict, timeout_s: float,
                   hot_limit_c: float) -> dict:
    """Interpret one worker's run as a process entry of the record."""
    memory = run["memory"]
    phases = dict.fromkeys(field_names(PHASE_FIELDS))
    rec = {
        "index": index, "status": STATUS_FAILED, "error": None, "exit_code": run["exit_code"],
        "wall_s": run["wall_s"], "phases": phases, "peak_rss_bytes": None, "rss_anon_bytes": memory.rss_anon,
        "rss_file_bytes": memory.rss_file, "ru_maxrss_bytes": run["ru_maxrss_bytes"],
        "vm_hwm_bytes": memory.vm_hwm, "rss_polls": memory.polls, "temp_max_c": run["temp_max_c"],
        "threads": None, "warmup_done": None, "stop_reason": None, "steady_s": None,
        "facts_before": before, "facts_after": after, "throttled": False, "hot": False,
        "disturbed": False, "disturbed_reason": None, "interference": None, "samples": [],
    }
    peaks = [v for v in (run["ru_maxrss_bytes"], memory.vm_hwm) if v]
    rec["peak_rss_bytes"] = max(peaks) if peaks else None
    rec["throttled"] = facts_mod.is_throttled(before, after)
    rec["hot"] = facts_mod.is_hot(hot_limit_c, before.get("temp_c"), after.get("temp_c"), run["temp_max_c"])
    if not run["started"]:
        rec["error"] = run["start_error"]
        return rec
    doc, garbage = parse_worker_output(run["stdout"])
    if doc is not None:
        for key in field_names(PHASE_FIELDS):
            phases[key] = doc["phases"].get(key)
        for key in ("threads", "warmup_done", "stop_reason", "steady_s"):
            rec[key] = doc[key]
        if isinstance(doc.get("outputs"), dict):
            rec["outputs"] = doc["outputs"]
        timeline = memory.timeline()
        if timeline is not None:
            marks = doc.get("marks") if isinstance(doc.get("marks"), dict) else {}
            started = run.get("started_at")
            timeline["marks"] = {k: round(float(v) - started, 3) for k, v in marks.items()
                                 if isinstance(v, (int, float)) and started is not None}
            rec["memory_timeline"] = timeline
        interference = doc.get("interference") if isinstance(doc.get("interference"), dict) else None
        rec["interference"] = interference
        if interference and interference.get("unreplaced"):
            rec["disturbed"] = True
            rec["disturbed_reason"] = (
                f"{interference['unreplaced']} sample(s) stayed disturbed after "
                f"{interference.get('remeasured', 0)} re-measurement(s): {interference.get('reason')}"
            )
        for facts in (before, after):
            facts["torch"] = doc.get("torch") or facts.get("torch")
            facts["quantized_engine"] = doc.get("quantized_engine") or facts.get("quantized_engine")
            facts["onnxruntime"] = doc.get("onnxruntime") or facts.get("onnxruntime")
            if doc.get("ort_providers"):
                facts["ort_providers"] = list(doc["ort_providers"])
    code = run["exit_code"]
    if run.get("orphaned"):
        rec["error"] = "the controller went away: the worker was stopped"
    elif run["timed_out"]:
        last = _last_line(run["stderr"])
        rec["error"] = f"timed out after {timeout_s:.1f}s (killed); last log line: {last}"
    elif doc is not None and doc["status"] == STATUS_FAILED:
        reason = str(doc.get("error") or "the worker reported a failure without a reason")
        rec["error"] = reason[:MAX_ERROR_CHARS]
    elif code != 0:
        how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with code {code}"
        rec["error"] = f"the worker {how}: {_last_line(run['stderr'])}"
    elif doc is None:
        rec["error"] = garbage
    else:
        rec["status"] = STATUS_OK
        rec["samples"] = doc["samples"]
    if rec["throttled"] and not rec["disturbed"]:
        rec["disturbed"] = True
        rec["disturbed_reason"] = "the device throttled (frequency capped) around or during the process"
    return rec


def measure(artifact: str, variant: str, protocol, work_dir: Optional[str] = None,
            sentence_ids: Optional[Sequence[str]] = None,
            poll_interval: float = POLL_INTERVAL_S, log: Optional[Callable[[str], None]] = None,
            check_outputs: bool = False) -> dict:
    """Measure one variant in ``protocol.processes`` fresh worker processes (``protocol``: a
    ``devices.ondevice.protocol.Protocol``, passed on to each worker as its document); returns the record
    (never raises for a device-side failure: the record's status and error say what happened).
    ``check_outputs``: the first process also reports its outputs on one sentence (``outputs``)."""
    import json as _json

    processes, timeout_s, hot_limit_c = protocol.processes, protocol.timeout_s, protocol.hot_limit_c
    log = log or (lambda msg: print(f"edgebench-agent: {msg}", file=sys.stderr, flush=True))
    start = time.monotonic()
    deadline = start + timeout_s
    artifact = os.path.abspath(os.path.expanduser(artifact))
    work_dir = os.path.abspath(os.path.expanduser(work_dir)) if work_dir else default_work_dir(artifact)
    args = {"artifact": artifact, "protocol": _json.dumps(protocol.to_document(), separators=(",", ":")),
            "sentence_ids": list(sentence_ids) if sentence_ids else None}
    record = {
        "format": RECORD_FORMAT, "version": RECORD_VERSION, "status": STATUS_FAILED, "error": None,
        "variant": variant, "artifact": None, "agent_version": AGENT_VERSION,
        "protocol": {**protocol.echoed(), "sentence_ids": args["sentence_ids"]},
        "hot_limit_c": float(hot_limit_c),
        "facts_before": facts_mod.collect(), "facts_after": None, "throttled": False, "hot": False,
        "processes": [],
    }
    record["artifact"], error = read_content_hash(artifact)
    lock = DeviceLock(work_dir)
    if error is None:
        error = lock.acquire(deadline)
    try:
        if error is None:
            record["facts_before"] = facts_mod.collect()  # again: waiting for the lock may have taken long
            for index in range(processes):
                share = (deadline - time.monotonic()) / (processes - index)
                if share <= 0:
                    error = f"the timeout ({timeout_s:.0f}s) ran out before process {index}"
                    break
                log(f"process {index + 1}/{processes}: {variant} (up to {share:.0f}s)")
                before = facts_mod.collect()
                argv = worker_argv(args, share * SOFT_DEADLINE_FRACTION, check_outputs and index == 0)
                run = run_worker(argv, share, poll_interval)
                after = facts_mod.collect()
                if run["stderr"].strip():
                    sys.stderr.write(run["stderr"] if run["stderr"].endswith("\n") else run["stderr"] + "\n")
                proc = process_record(index, run, before, after, share, hot_limit_c)
                record["processes"].append(proc)
                if run.get("orphaned"):
                    error = "the controller went away; the measurement was stopped"
                    break
                log(f"process {index + 1}/{processes}: {proc['status']}"
                    + (f" ({proc['error']})" if proc["error"] else f", {len(proc['samples'])} samples"))
    finally:
        lock.release()
    record["facts_after"] = facts_mod.collect()
    _fill_torch_facts(record)
    errors = [f"process {p['index']}: {p['error']}" for p in record["processes"] if p["status"] != STATUS_OK]
    if error is not None:
        errors.append(error)
    elif len(record["processes"]) != processes:
        errors.append(f"only {len(record['processes'])} of {processes} processes ran")
    error = "; ".join(errors) if errors else None
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS - 3] + "..."
    record["error"] = error
    record["status"] = STATUS_OK if error is None else STATUS_FAILED
    procs = record["processes"]
    record["throttled"] = any(p["throttled"] for p in procs) or facts_mod.is_throttled(
        record["facts_before"], record["facts_after"])
    record["hot"] = any(p["hot"] for p in procs) or facts_mod.is_hot(
        hot_limit_c, record["facts_before"].get("temp_c"), record["facts_after"].get("temp_c"))
    return record


def _fill_torch_facts(record: dict) -> None:
    """The supervisor does not import torch: take the quantized engine from a worker that reported it."""
    for proc in record["processes"]:
        engine = proc["facts_before"].get("quantized_engine")
        if engine:
            for key in ("facts_before", "facts_after"):
                record[key]["quantized_engine"] = engine
                record[key]["torch"] = proc["facts_before"].get("torch") or record[key]["torch"]
            return
