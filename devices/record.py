"""Controller-side validation of what a device says. A device is not trusted.

``parse_record(text, ...)`` / ``validate_record(obj, ...)`` return the record when it is a well-formed
measurement record (format, version, every field's type, no NaN/negative/absurd values, sample counts
consistent with the protocol) and raise ``RecordError`` naming the offending path otherwise; the
orchestrator then stores the attempt as failed with that text, never as data.

The field registry lives in ``devices.ondevice.agent.format`` (shared with the agent that writes records).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

from devices.errors import RecordError
from devices.ondevice.agent.format import (
    FACT_FIELDS,
    FACTS_FORMAT,
    KNOWN_FACTS_VERSIONS,
    KNOWN_RECORD_VERSIONS,
    PHASE_FIELDS,
    PROCESS_FIELDS,
    PROTOCOL_FIELDS,
    RECORD_FIELDS,
    RECORD_FORMAT,
    SAMPLE_FIELDS,
    STATUS_OK,
    STATUSES,
    STOP_REASONS,
)
from devices.ondevice.frontend import EMOTIONS
from devices.ondevice.protocol import LENGTH_CLASSES, Protocol

MAX_RECORD_CHARS = 64 * 2**20
MAX_STRING = 4096
MAX_ERROR_STRING = 20000
MAX_SECONDS = 3600.0           # one latency, phase or sample longer than an hour is not a measurement
MAX_WALL_S = 7 * 24 * 3600.0   # a process running for more than a week
MAX_BYTES = 2**40              # 1 TiB of RSS
MAX_MEM_BYTES = 2**46          # 64 TiB of device memory
MAX_COUNT = 10**7              # phones, frames, iterations
MAX_CORES = 4096
MAX_MHZ = 20000.0
TEMP_RANGE_C = (-60.0, 200.0)
MAX_PROCESSES = 1000
#: total_s must equal frontend_s + acoustic_s + vocoder_s (one clock) within this tolerance.
SUM_ABS_TOL_S = 1e-3
SUM_REL_TOL = 0.01
_HEX = re.compile(r"^0x[0-9a-fA-F]{1,16}$")


def _fail(path: str, problem: str) -> RecordError:
    return RecordError(f"invalid measurement record: {path}: {problem}")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(text: str, what: str = "record") -> Any:
    """json.loads refusing NaN/Infinity, duplicate keys, huge or absurdly nested documents."""
    if not isinstance(text, str):
        raise RecordError(f"invalid measurement {what}: expected text, got {type(text).__name__}")
    if len(text) > MAX_RECORD_CHARS:
        raise RecordError(f"invalid measurement {what}: {len(text)} characters (limit {MAX_RECORD_CHARS})")
    stripped = text.strip()
    if not stripped:
        raise RecordError(f"invalid measurement {what}: the agent printed nothing on stdout")
    try:
        return json.loads(stripped, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise RecordError(f"invalid measurement {what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise RecordError(f"invalid measurement {what}: not JSON ({exc}): {stripped[:200]!r}") from None


def parse_record(text: str, protocol: Protocol | None = None, variant: str | None = None,
                 artifact: str | None = None) -> dict:
    """The agent's stdout -> a validated record (see ``validate_record``)."""
    return validate_record(loads_strict(text), protocol=protocol, variant=variant, artifact=artifact)


def parse_facts(text: str) -> dict:
    """The stdout of ``agent facts`` -> the validated facts dict."""
    doc = loads_strict(text, what="facts")
    if not isinstance(doc, dict) or doc.get("format") != FACTS_FORMAT:
        raise RecordError(f"invalid device facts: not an {FACTS_FORMAT} document")
    version = doc.get("version")
    if isinstance(version, bool) or version not in KNOWN_FACTS_VERSIONS:
        raise RecordError(
            f"invalid device facts: version {version!r} is unknown (known: "
            f"{', '.join(map(str, KNOWN_FACTS_VERSIONS))}); redeploy the agent bundle or update edgebench"
        )
    if set(doc) != {"format", "version", "facts"}:
        extra = sorted(set(doc) - {"format", "version", "facts"})
        raise RecordError(f"invalid device facts: unexpected keys {extra}")
    return _check_facts(doc["facts"], "facts").copy()


# ----------------------------------------------------------------------------------------- generic


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(field, value: Any, path: str) -> None:
    if value is None:
        if not field.nullable:
            raise _fail(path, "must not be null")
        return
    kind = field.kind
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(path, f"expected a string, got {_show(value)}")
        limit = MAX_ERROR_STRING if field.name == "error" else MAX_STRING
        if len(value) > limit:
            raise _fail(path, f"string of {len(value)} characters (limit {limit})")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"expected an integer, got {_show(value)}")
    elif kind == "float":
        if not _is_number(value):
            raise _fail(path, f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise _fail(path, f"not a finite number: {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _fail(path, f"expected true or false, got {_show(value)}")
    elif kind == "list":
        if not isinstance(value, list):
            raise _fail(path, f"expected a list, got {_show(value)}")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {_show(value)}")
    else:  # pragma: no cover - a typo in the registry
        raise ValueError(f"unknown field kind {kind!r}")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_object(obj: Any, fields, path: str) -> dict:
    """Type-check ``obj`` against a field registry: required fields present, no unknown keys."""
    if not isinstance(obj, dict):
        raise _fail(path, f"expected an object, got {_show(obj)}")
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in obj if k not in known)
    if unknown:
        raise _fail(path, f"unknown field(s) {', '.join(unknown[:5])}")
    for field in fields:
        sub = f"{path}.{field.name}"
        if field.name not in obj:
            if field.required:
                raise _fail(sub, "missing")
            continue
        _check_value(field, obj[field.name], sub)
    return obj


def _range(obj: dict, key: str, path: str, low: float, high: float, low_inclusive: bool = True) -> None:
    value = obj.get(key)
    if value is None:
        return
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        bound = f">= {low}" if low_inclusive else f"> {low}"
        raise _fail(f"{path}.{key}", f"{value!r} is out of range (must be {bound} and <= {high})")


# ------------------------------------------------------------------------------------------ pieces


def _check_facts(facts: Any, path: str) -> dict:
    _check_object(facts, FACT_FIELDS, path)
    _range(facts, "cores", path, 1, MAX_CORES)
    _range(facts, "cores_available", path, 1, MAX_CORES)
    for key in ("freq_mhz", "freq_max_mhz", "freq_cap_mhz"):
        _range(facts, key, path, 0.0, MAX_MHZ, low_inclusive=False)
    _range(facts, "temp_c", path, *TEMP_RANGE_C)
    _range(facts, "mem_total_bytes", path, 1, MAX_MEM_BYTES)
    _range(facts, "mem_available_bytes", path, 0, MAX_MEM_BYTES)
    flags = facts.get("throttled_flags")
    if flags is not None and not _HEX.match(flags):
        raise _fail(f"{path}.throttled_flags", f"expected a hex value like 0x50000, got {flags!r}")
    load = facts.get("load_avg")
    if load is not None:
        if len(load) != 3:
            raise _fail(f"{path}.load_avg", f"expected 3 numbers, got {len(load)} values")
        for i, value in enumerate(load):
            if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= 1e6:
                raise _fail(f"{path}.load_avg[{i}]", f"expected a load average, got {_show(value)}")
    return facts


def _check_protocol(proto: Any, path: str, expected: Protocol | None) -> dict:
    _check_object(proto, PROTOCOL_FIELDS, path)
    for key in ("processes", "min_iters", "max_iters"):
        _range(proto, key, path, 1, MAX_COUNT)
    _range(proto, "processes", path, 1, MAX_PROCESSES)
    _range(proto, "warmup", path, 0, MAX_COUNT)
    _range(proto, "threads", path, 1, MAX_CORES)
    _range(proto, "min_seconds", path, 0.0, MAX_WALL_S)
    _range(proto, "timeout_s", path, 0.0, MAX_WALL_S, low_inclusive=False)
    _range(proto, "seed", path, 0, 2**63)
    if proto["min_iters"] > proto["max_iters"]:
        raise _fail(path, f"min_iters {proto['min_iters']} is larger than max_iters {proto['max_iters']}")
    sentences = proto.get("sentences")
    if sentences is not None:
        if not sentences or any(s not in LENGTH_CLASSES for s in sentences):
            raise _fail(f"{path}.sentences",
                        f"expected some of {list(LENGTH_CLASSES)}, got {_show(sentences)}")
    ids = proto.get("sentence_ids")
    if ids is not None and (not ids or not all(isinstance(i, str) and 0 < len(i) <= MAX_STRING for i in ids)):
        raise _fail(f"{path}.sentence_ids", f"expected a list of sentence ids, got {_show(ids)}")
    if expected is not None:
        for key, want in expected.echoed().items():
            if key in proto and proto[key] != want:
                raise _fail(f"{path}.{key}",
                            f"the device measured with {proto[key]!r}, but {want!r} was asked for")
    return proto


def _check_sample(sample: Any, path: str, index: int, classes, sentence_ids=None) -> dict:
    _check_object(sample, SAMPLE_FIELDS, path)
    if sample["iteration"] != index:
        raise _fail(f"{path}.iteration",
                    f"expected {index} (samples are consecutive), got {sample['iteration']}")
    if sample["length_class"] not in classes:
        raise _fail(f"{path}.length_class", f"{sample['length_class']!r} is not one of {list(classes)}")
    if sample["emotion"] not in EMOTIONS:
        raise _fail(f"{path}.emotion", f"{sample['emotion']!r} is not one of {list(EMOTIONS)}")
    if not sample["sentence_id"]:
        raise _fail(f"{path}.sentence_id", "empty")
    if sentence_ids is not None and sample["sentence_id"] not in sentence_ids:
        raise _fail(f"{path}.sentence_id", f"{sample['sentence_id']!r} was not asked for")
    _range(sample, "phones", path, 1, MAX_COUNT)
    _range(sample, "frames", path, 1, MAX_COUNT)
    _range(sample, "audio_s", path, 0.0, MAX_SECONDS, low_inclusive=False)
    for key in ("frontend_s", "acoustic_s", "vocoder_s", "total_s"):
        _range(sample, key, path, 0.0, MAX_SECONDS)
    for key in ("cpu_s", "others_cpu_s", "psi_some_s"):  # CPU seconds of many threads or CPUs
        _range(sample, key, path, 0.0, MAX_SECONDS * MAX_CORES)
    parts = sample["frontend_s"] + sample["acoustic_s"] + sample["vocoder_s"]
    if abs(sample["total_s"] - parts) > SUM_ABS_TOL_S + SUM_REL_TOL * sample["total_s"]:
        raise _fail(f"{path}.total_s", f"{sample['total_s']!r} is not frontend_s + acoustic_s + vocoder_s "
                                       f"({parts!r})")
    return sample


def _check_process(proc: Any, path: str, index: int, proto: dict) -> dict:
    _check_object(proc, PROCESS_FIELDS, path)
    if proc["index"] != index:
        raise _fail(f"{path}.index", f"expected {index}, got {proc['index']}")
    _check_status(proc, path)
    _range(proc, "exit_code", path, -255, 255)
    _range(proc, "wall_s", path, 0.0, MAX_WALL_S)
    for key in ("peak_rss_bytes", "ru_maxrss_bytes", "vm_hwm_bytes"):
        _range(proc, key, path, 1, MAX_BYTES)
    for key in ("rss_anon_bytes", "rss_file_bytes"):
        _range(proc, key, path, 0, MAX_BYTES)
    _range(proc, "rss_polls", path, 0, MAX_COUNT)
    _range(proc, "temp_max_c", path, *TEMP_RANGE_C)
    _range(proc, "threads", path, 1, MAX_CORES)
    _range(proc, "warmup_done", path, 0, proto["warmup"])
    _range(proc, "steady_s", path, 0.0, MAX_WALL_S)
    _check_object(proc["phases"], PHASE_FIELDS, f"{path}.phases")
    for field in PHASE_FIELDS:
        _range(proc["phases"], field.name, f"{path}.phases", 0.0, MAX_SECONDS)
    _check_facts(proc["facts_before"], f"{path}.facts_before")
    _check_facts(proc["facts_after"], f"{path}.facts_after")
    if proc.get("stop_reason") is not None and proc["stop_reason"] not in STOP_REASONS:
        raise _fail(f"{path}.stop_reason", f"{proc['stop_reason']!r} is not one of {list(STOP_REASONS)}")
    classes = proto.get("sentences") or LENGTH_CLASSES
    samples = proc["samples"]
    for i, sample in enumerate(samples):
        _check_sample(sample, f"{path}.samples[{i}]", i, classes, proto.get("sentence_ids"))
    if sum(1 for s in samples if s.get("remeasure_of") is None) > proto["max_iters"]:
        raise _fail(f"{path}.samples", f"{len(samples)} samples but max_iters is {proto['max_iters']}")
    for i, sample in enumerate(samples):
        again = sample.get("remeasure_of")
        if again is not None:
            if not isinstance(again, int) or isinstance(again, bool) or not 0 <= again < i \
                    or samples[again].get("remeasure_of") is not None:
                raise _fail(f"{path}.samples[{i}].remeasure_of", f"{_show(again)} is not an earlier "
                                                                   "steady-state iteration")
            first = samples[again]
            if (first["sentence_id"], first["emotion"]) != (sample["sentence_id"], sample["emotion"]):
                raise _fail(f"{path}.samples[{i}]", "a re-measurement of another sentence or emotion")
        elif any(s.get("remeasure_of") is not None for s in samples[:i]):
            raise _fail(f"{path}.samples[{i}]", "a steady-state sample after the re-measurements")
    primary = [s for s in samples if s.get("remeasure_of") is None]
    if len(samples) - len(primary) > max(2, (len(primary) + 3) // 4):
        raise _fail(f"{path}.samples", f"{len(samples) - len(primary)} re-measurements of {len(primary)}"
                                       " samples: more than the budget")
    if proc["status"] == STATUS_OK:
        _check_ok_process(proc, path, proto)
    return proc


def _check_ok_process(proc: dict, path: str, proto: dict) -> None:
    """A process that says it measured: every phase, its memory and sample counts that fit the protocol."""
    for field in PHASE_FIELDS:
        if proc["phases"][field.name] is None:
            raise _fail(f"{path}.phases.{field.name}", "missing from a process whose status is ok")
    if proc["peak_rss_bytes"] is None:
        raise _fail(f"{path}.peak_rss_bytes", "missing from a process whose status is ok")
    threads, asked = proc.get("threads"), proto.get("threads")
    if threads is not None and asked is not None and threads != asked:
        raise _fail(f"{path}.threads", f"the worker ran {threads} threads, {asked} were asked for")
    samples = [s for s in proc["samples"] if s.get("remeasure_of") is None]  # the steady state
    n = len(samples)
    if n == 0:
        raise _fail(f"{path}.samples", "a process whose status is ok has no samples")
    reason = proc.get("stop_reason")
    steady_s = proc.get("steady_s")
    if reason is None or reason == "target":
        if n < proto["min_iters"]:
            raise _fail(f"{path}.samples", f"{n} samples, fewer than min_iters {proto['min_iters']}")
    if reason == "max_iters" and n != proto["max_iters"]:
        raise _fail(f"{path}.samples", f"stopped at max_iters {proto['max_iters']} with {n} samples")
    if reason == "deadline" and n >= proto["max_iters"]:
        raise _fail(f"{path}.stop_reason", "deadline, but every iteration up to max_iters ran")
    if reason == "target":
        if steady_s is not None and steady_s < proto["min_seconds"]:
            raise _fail(f"{path}.steady_s",
                        f"{steady_s!r} s, shorter than min_seconds {proto['min_seconds']}")
        counts = Counter(s["sentence_id"] for s in samples)
        if len(set(counts.values())) > 1:
            raise _fail(f"{path}.samples",
                        f"sentences measured unequally often: {dict(sorted(counts.items()))}")
    if steady_s is not None:
        busy = sum(s["total_s"] for s in samples)
        if busy > steady_s * (1 + SUM_REL_TOL) + SUM_ABS_TOL_S * n:
            raise _fail(f"{path}.steady_s", f"{steady_s!r} s, shorter than the samples' total {busy!r} s")


def _check_status(obj: dict, path: str) -> None:
    status = obj["status"]
    if status not in STATUSES:
        raise _fail(f"{path}.status", f"{status!r} is not one of {list(STATUSES)}")
    if status == STATUS_OK and obj["error"] is not None:
        raise _fail(f"{path}.error", "must be null when status is ok")
    if status != STATUS_OK and not obj["error"]:
        raise _fail(f"{path}.error", "a failed status needs its error text")


# -------------------------------------------------------------------------------------------- record


def validate_record(record: Any, protocol: Protocol | None = None, variant: str | None = None,
                    artifact: str | None = None) -> dict:
    """Check a parsed record; return it unchanged, or raise RecordError naming the first problem.

    protocol / variant / artifact: what the controller asked for; the record must say the same.
    """
    if not isinstance(record, dict):
        raise RecordError(f"invalid measurement record: expected a JSON object, got {_show(record)}")
    if record.get("format") != RECORD_FORMAT:
        raise _fail("format", f"expected {RECORD_FORMAT!r}, got {_show(record.get('format'))} "
                              "(is the device running an edgebench agent?)")
    version = record.get("version")
    if isinstance(version, bool) or version not in KNOWN_RECORD_VERSIONS:
        raise _fail("version", f"{version!r} is not a known record version (known: "
                               f"{', '.join(map(str, KNOWN_RECORD_VERSIONS))}); the device runs an agent of "
                               "another edgebench version: update edgebench or let it push its own bundle")
    _check_object(record, RECORD_FIELDS, "record")
    _check_status(record, "record")
    _range(record, "hot_limit_c", "record", 0.0, 200.0)
    proto = _check_protocol(record["protocol"], "record.protocol", protocol)
    if variant is not None and record["variant"] != variant:
        raise _fail("record.variant", f"{record['variant']!r}, but {variant!r} was measured")
    if artifact is not None and record["artifact"] != artifact:
        raise _fail("record.artifact", f"{record['artifact']!r}, but artifact {artifact!r} was measured")
    _check_facts(record["facts_before"], "record.facts_before")
    _check_facts(record["facts_after"], "record.facts_after")
    processes = record["processes"]
    if len(processes) > proto["processes"]:
        raise _fail("record.processes",
                    f"{len(processes)} processes, but the protocol has {proto['processes']}")
    for i, proc in enumerate(processes):
        _check_process(proc, f"record.processes[{i}]", i, proto)
    if record["status"] == STATUS_OK:
        if len(processes) != proto["processes"]:
            raise _fail("record.processes", f"{len(processes)} processes in an ok record, "
                                            f"the protocol has {proto['processes']}")
        bad = [p["index"] for p in processes if p["status"] != STATUS_OK]
        if bad:
            raise _fail("record.status", f"ok, but process(es) {bad} failed")
    for flag in ("throttled", "hot"):
        if any(p[flag] for p in processes) and not record[flag]:
            raise _fail(f"record.{flag}", f"false, but a process is {flag}")
    return record
