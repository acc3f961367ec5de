"""Controller-side validation of measurement records: a device is not trusted.

Each bad record below is a valid one with one thing broken; the error must name where.
"""

from __future__ import annotations

import copy
import json

import pytest
from records import make_record

from devices.errors import DevicesError, RecordError
from devices.ondevice.agent.format import RECORD_VERSION
from devices.ondevice.protocol import Protocol
from devices.record import parse_facts, parse_record, validate_record

EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")


def facts(**overrides) -> dict:
    base = {"cpu_model": "Cortex-A72", "cores": 4, "cores_available": 4, "governor": "ondemand",
            "freq_mhz": 1500.0, "freq_max_mhz": 1800.0, "freq_cap_mhz": 1800.0, "temp_c": 55.5,
            "throttled_flags": "0x0", "load_avg": [0.5, 0.4, 0.3], "mem_total_bytes": 4 * 2**30,
            "mem_available_bytes": 3 * 2**30, "os": "Debian GNU/Linux 11 (bullseye)", "kernel": "6.1.21-v8+",
            "machine": "aarch64", "python": "3.9.2", "torch": "1.13.1", "quantized_engine": "qnnpack",
            "hostname": "pi4-a"}
    base.update(overrides)
    return base


def sample(i: int, sentence: int) -> dict:
    return {"iteration": i, "sentence_id": f"short-0{sentence}", "length_class": "short",
            "emotion": EMOTIONS[i % 7], "phones": 20, "frames": 90, "audio_s": 1.125,
            "frontend_s": 0.002, "acoustic_s": 0.25, "vocoder_s": 0.5, "total_s": 0.752}


def process(index: int, n: int = 6) -> dict:
    return {"index": index, "status": "ok", "error": None, "exit_code": 0, "wall_s": 9.5,
            "phases": {"import_s": 2.1, "acoustic_load_s": 0.3, "vocoder_load_s": 0.2,
                       "first_inference_s": 1.1},
            "peak_rss_bytes": 300_000_000, "rss_anon_bytes": 240_000_000, "rss_file_bytes": 60_000_000,
            "ru_maxrss_bytes": 300_000_000, "vm_hwm_bytes": 299_000_000, "rss_polls": 30, "temp_max_c": 61.0,
            "threads": 2, "warmup_done": 2, "stop_reason": "target", "steady_s": 4.6,
            "facts_before": facts(), "facts_after": facts(temp_c=60.0), "throttled": False, "hot": False,
            "samples": [sample(i, i % 3 + 1) for i in range(n)]}


def good() -> dict:
    return {"format": "edgebench.measurement", "version": RECORD_VERSION, "status": "ok", "error": None,
            "variant": "pruned", "artifact": "ab" * 32, "agent_version": "1.0",
            "protocol": {"processes": 2, "warmup": 2, "min_iters": 6, "min_seconds": 1.0, "max_iters": 50,
                         "threads": 2, "timeout_s": 300.0, "sentences": ["short"], "seed": 0},
            "hot_limit_c": 80.0, "facts_before": facts(), "facts_after": facts(), "throttled": False,
            "hot": False, "processes": [process(0), process(1)]}


PROTOCOL = Protocol(processes=2, warmup=2, min_iters=6, min_seconds=1.0, max_iters=50, threads=2,
                    timeout_s=300, sentences=("short",))


def test_a_good_record_validates_unchanged():
    record = good()
    checked = validate_record(copy.deepcopy(record), protocol=PROTOCOL, variant="pruned", artifact="ab" * 32)
    assert checked == record
    assert parse_record(json.dumps(record), protocol=PROTOCOL) == record


def test_the_shared_test_helper_records_validate():
    validate_record(make_record("pruned", processes=3))
    validate_record(make_record("q", processes=1, status="failed", error="process 0: boom"))


def test_a_failed_record_with_failed_processes_validates():
    record = good()
    record["status"], record["error"] = "failed", "process 1: timed out after 150.0s (killed)"
    proc = record["processes"][1]
    proc.update(status="failed", error="timed out after 150.0s (killed)", exit_code=-9, samples=[],
                stop_reason=None, steady_s=None, threads=None, warmup_done=None)
    proc["phases"]["first_inference_s"] = None
    validate_record(record)
    record["processes"] = []
    record["error"] = "device busy"
    validate_record(record)


def test_record_error_is_a_devices_error():
    assert issubclass(RecordError, DevicesError)


def test_unknown_version_says_which_versions_are_known():
    record = good()
    record["version"] = 7
    with pytest.raises(RecordError, match=r"version: 7 is not a known record version \(known: 1, 2\)"):
        validate_record(record)


def set_path(record: dict, path: str, value) -> dict:
    """Set ``a.b[0].c`` in a copy; value DELETE removes the key."""
    record = copy.deepcopy(record)
    parts = path.replace("]", "").replace("[", ".").split(".")
    target = record
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return record


DELETE = object()
NAN = float("nan")

BAD = [
    # (path, value, message fragment)
    ("format", "something.else", "format: expected 'edgebench.measurement'"),
    ("version", "1", "version: '1' is not a known record version"),
    ("version", True, "is not a known record version"),
    ("version", DELETE, "is not a known record version"),
    ("status", "great", "record.status: 'great' is not one of"),
    ("status", "failed", "record.error: a failed status needs its error text"),
    ("error", "oops", "record.error: must be null when status is ok"),
    ("variant", 42, "record.variant: expected a string, got int 42"),
    ("variant", DELETE, "record.variant: missing"),
    ("agent_version", None, "record.agent_version: must not be null"),
    ("extra_field", 1, "record: unknown field(s) extra_field"),
    ("protocol", [], "record.protocol: expected an object, got list"),
    ("protocol.processes", "2", "record.protocol.processes: expected an integer, got str"),
    ("protocol.processes", 2.0, "expected an integer, got float"),
    ("protocol.processes", 0, "record.protocol.processes: 0 is out of range"),
    ("protocol.min_iters", 100, "min_iters 100 is larger than max_iters 50"),
    ("protocol.sentences", ["short", "epic"], "record.protocol.sentences: expected some of"),
    ("protocol.min_seconds", NAN, "record.protocol.min_seconds: not a finite number"),
    ("protocol.sentence_ids", ["short-02"], "samples[0].sentence_id: 'short-01' was not asked for"),
    ("protocol.sentence_ids", [], "record.protocol.sentence_ids: expected a list of sentence ids"),
    ("protocol.sentence_ids", [3], "record.protocol.sentence_ids: expected a list of sentence ids"),
    ("throttled", "no", "record.throttled: expected true or false, got str"),
    ("throttled", 0, "record.throttled: expected true or false, got int"),
    ("facts_before", None, "record.facts_before: must not be null"),
    ("facts_before.cores", "4", "record.facts_before.cores: expected an integer, got str"),
    ("facts_before.cores", 0, "record.facts_before.cores: 0 is out of range"),
    ("facts_before.temp_c", 900.0, "record.facts_before.temp_c: 900.0 is out of range"),
    ("facts_before.load_avg", [1, 2], "record.facts_before.load_avg: expected 3 numbers"),
    ("facts_before.load_avg", [1, "x", 2], "record.facts_before.load_avg[1]: expected a load average"),
    ("facts_before.throttled_flags", "rm -rf /", "expected a hex value"),
    ("facts_before.cpu_model", {"nested": {"deeper": 1}}, "record.facts_before.cpu_model: expected a string"),
    ("facts_before.mem_total_bytes", 10**30, "record.facts_before.mem_total_bytes"),
    ("facts_before.gpu", "none", "record.facts_before: unknown field(s) gpu"),
    ("processes", {}, "record.processes: expected a list"),
    ("processes.0", "ok", "record.processes[0]: expected an object, got str"),
    ("processes.0.index", 1, "record.processes[0].index: expected 0, got 1"),
    ("processes.0.status", None, "record.processes[0].status: must not be null"),
    ("processes.0.error", "x", "record.processes[0].error: must be null when status is ok"),
    ("processes.0.peak_rss_bytes", -5, "record.processes[0].peak_rss_bytes: -5 is out of range"),
    ("processes.0.peak_rss_bytes", 2**41, "peak_rss_bytes: 2199023255552 is out of range"),
    ("processes.0.peak_rss_bytes", "300MB", "peak_rss_bytes: expected an integer, got str"),
    ("processes.0.peak_rss_bytes", None, "peak_rss_bytes: missing from a process whose status is ok"),
    ("processes.0.peak_rss_bytes", 3e8, "peak_rss_bytes: expected an integer, got float"),
    ("processes.0.rss_anon_bytes", -1, "rss_anon_bytes: -1 is out of range"),
    ("processes.0.wall_s", -1.0, "record.processes[0].wall_s: -1.0 is out of range"),
    ("processes.0.phases", None, "record.processes[0].phases: must not be null"),
    ("processes.0.phases.import_s", -0.1, "record.processes[0].phases.import_s: -0.1 is out of range"),
    ("processes.0.phases.import_s", 7200.0, "phases.import_s: 7200.0 is out of range"),
    ("processes.0.phases.first_inference_s", None, "first_inference_s: missing from a process whose status"),
    ("processes.0.phases.first_inference_s", DELETE, "phases.first_inference_s: missing"),
    ("processes.0.phases.steady_s", 1.0, "record.processes[0].phases: unknown field(s) steady_s"),
    ("processes.0.stop_reason", "bored", "stop_reason: 'bored' is not one of"),
    ("processes.0.threads", 8, "record.processes[0].threads: the worker ran 8 threads, 2 were asked for"),
    ("processes.0.warmup_done", 5, "warmup_done: 5 is out of range"),
    ("processes.0.steady_s", 0.5, "steady_s: 0.5 s, shorter than min_seconds 1.0"),
    ("processes.0.steady_s", 2.0, "steady_s: 2.0 s, shorter than the samples' total"),
    ("processes.0.samples", [], "a process whose status is ok has no samples"),
    ("processes.0.samples", "lots", "record.processes[0].samples: expected a list, got str"),
    ("processes.0.samples.0", [1, 2, 3], "record.processes[0].samples[0]: expected an object, got list"),
    ("processes.0.samples.0.acoustic_s", "0.25", "samples[0].acoustic_s: expected a number, got str"),
    ("processes.0.samples.0.acoustic_s", NAN, "samples[0].acoustic_s: not a finite number"),
    ("processes.0.samples.0.acoustic_s", -0.25, "samples[0].acoustic_s: -0.25 is out of range"),
    ("processes.0.samples.0.acoustic_s", 5000.0, "samples[0].acoustic_s: 5000.0 is out of range"),
    ("processes.0.samples.0.total_s", 2.0, "samples[0].total_s: 2.0 is not frontend_s + acoustic_s"),
    ("processes.0.samples.0.audio_s", 0.0, "samples[0].audio_s: 0.0 is out of range (must be > 0.0"),
    ("processes.0.samples.0.audio_s", -1.0, "samples[0].audio_s: -1.0 is out of range"),
    ("processes.0.samples.0.phones", 0, "samples[0].phones: 0 is out of range"),
    ("processes.0.samples.0.frames", 1.5, "samples[0].frames: expected an integer, got float"),
    ("processes.0.samples.0.iteration", 3, "samples[0].iteration: expected 0 (samples are consecutive)"),
    ("processes.0.samples.0.emotion", "bored", "samples[0].emotion: 'bored' is not one of"),
    ("processes.0.samples.0.length_class", "long", "samples[0].length_class: 'long' is not one of ['short']"),
    ("processes.0.samples.0.sentence_id", "", "samples[0].sentence_id: empty"),
    ("processes.0.samples.0.sentence_id", "x" * 5000, "samples[0].sentence_id: string of 5000 characters"),
    ("processes.0.samples.0.sentence_id", None, "samples[0].sentence_id: must not be null"),
    ("processes.0.samples.0.extra", {"a": [1]}, "samples[0]: unknown field(s) extra"),
    ("processes.0.samples.0.vocoder_s", DELETE, "samples[0].vocoder_s: missing"),
    ("processes.0.throttled", True, "record.throttled: false, but a process is throttled"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD])
def test_bad_records_are_rejected_with_the_path(path, value, message):
    with pytest.raises(RecordError) as info:
        validate_record(set_path(good(), path, value), protocol=PROTOCOL)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid measurement record")


def test_sample_counts_must_fit_the_protocol():
    record = good()
    del record["processes"][0]["samples"][5]
    with pytest.raises(RecordError, match=r"5 samples, fewer than min_iters 6"):
        validate_record(record)
    record = good()
    record["processes"][0]["samples"] = [sample(i, i % 3 + 1) for i in range(51)]
    with pytest.raises(RecordError, match="51 samples but max_iters is 50"):
        validate_record(record)
    record = good()
    record["processes"][0]["stop_reason"] = "max_iters"
    with pytest.raises(RecordError, match="stopped at max_iters 50 with 6 samples"):
        validate_record(record)


def test_a_target_stop_must_have_measured_each_sentence_equally_often():
    record = good()
    record["processes"][0]["samples"] = [sample(i, 1 if i < 4 else 2) for i in range(6)]
    with pytest.raises(RecordError, match="sentences measured unequally often"):
        validate_record(record)
    record["processes"][0]["stop_reason"] = "deadline"  # cut short: the record says so, no balance promised
    validate_record(record)


def test_ok_record_needs_every_process_ok_and_all_of_them():
    record = good()
    record["processes"] = record["processes"][:1]
    with pytest.raises(RecordError, match="1 processes in an ok record, the protocol has 2"):
        validate_record(record)
    record = good()
    record["processes"].append(process(2))
    with pytest.raises(RecordError, match="3 processes, but the protocol has 2"):
        validate_record(record)
    record = good()
    record["processes"][1].update(status="failed", error="boom", samples=[])
    with pytest.raises(RecordError, match=r"record.status: ok, but process\(es\) \[1\] failed"):
        validate_record(record)


def test_record_must_match_what_was_asked():
    with pytest.raises(RecordError, match="record.protocol.threads: the device measured with 2, but 4"):
        validate_record(good(), protocol=Protocol(processes=2, warmup=2, min_iters=6, min_seconds=1.0,
                                                  max_iters=50, threads=4, timeout_s=300,
                                                  sentences=("short",)))
    with pytest.raises(RecordError, match="record.variant: 'pruned', but 'original' was measured"):
        validate_record(good(), variant="original")
    with pytest.raises(RecordError, match="record.artifact"):
        validate_record(good(), artifact="cd" * 32)


@pytest.mark.parametrize("text, message", [
    ("", "printed nothing"),
    ("Traceback (most recent call last):", "not JSON"),
    ('{"a": NaN}', "not JSON"),
    ('{"a": Infinity}', "not JSON"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ("[1, 2, 3]", "expected a JSON object"),
    ("null", "expected a JSON object"),
    ('"edgebench.measurement"', "expected a JSON object"),
])
def test_garbage_text_is_rejected(text, message):
    with pytest.raises(RecordError, match=message):
        parse_record(text)


def test_nan_inside_a_record_text_is_rejected():
    text = json.dumps(good()).replace('"acoustic_s": 0.25', '"acoustic_s": NaN', 1)
    with pytest.raises(RecordError, match="not JSON"):
        parse_record(text)


def test_huge_text_is_rejected_before_parsing(monkeypatch):
    import devices.record as record_mod

    monkeypatch.setattr(record_mod, "MAX_RECORD_CHARS", 100)
    with pytest.raises(RecordError, match="characters"):
        parse_record(json.dumps(good()))


def test_facts_document():
    doc = {"format": "edgebench.facts", "version": 1, "facts": facts()}
    assert parse_facts(json.dumps(doc)) == facts()
    with pytest.raises(RecordError, match="version 2 is unknown"):
        parse_facts(json.dumps(dict(doc, version=2)))
    with pytest.raises(RecordError, match="facts.cores: expected an integer"):
        parse_facts(json.dumps(dict(doc, facts=facts(cores="four"))))
