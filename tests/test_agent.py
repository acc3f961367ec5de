"""The device agent without the model: facts, the supervisor watching stand-in workers, the lock, the CLI.

Stand-in workers are tiny Python programs (allocate memory, crash, hang, print garbage), so every
failure path of the supervisor runs for real, in real processes, in well under a second each.
The real agent on a real (tiny) model runs in tests/test_measure.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from devices.ondevice.agent import facts, supervisor
from devices.ondevice.agent.format import FACT_FIELDS, RECORD_FORMAT, RECORD_VERSION, field_names
from devices.ondevice.protocol import Protocol

PY = sys.executable
MIB = 2**20


def worker_doc(n: int = 3, status: str = "ok", error=None) -> dict:
    samples = []
    for i in range(n):
        samples.append({"iteration": i, "sentence_id": "short-01", "length_class": "short",
                        "emotion": "happy", "phones": 12, "frames": 60, "audio_s": 0.75,
                        "frontend_s": 0.001, "acoustic_s": 0.01, "vocoder_s": 0.02, "total_s": 0.031})
    return {"status": status, "error": error,
            "phases": {"import_s": 0.5, "acoustic_load_s": 0.1, "vocoder_load_s": 0.1,
                       "first_inference_s": 0.2},
            "samples": samples if status == "ok" else [], "stop_reason": "target" if status == "ok" else None,
            "steady_s": 0.1 if status == "ok" else None, "warmup_done": 2, "threads": 1, "torch": "1.13.1",
            "quantized_engine": "qnnpack"}


def script(body: str) -> list:
    return [PY, "-c", textwrap.dedent(body)]


def printing(doc: dict, before: str = "") -> list:
    return script(f"""
        import json, sys, time
        {before}
        sys.stdout.write(json.dumps({doc!r}))
    """)


# --------------------------------------------------------------------------------------------- facts


def test_facts_have_every_field_and_never_crash_on_this_machine():
    got = facts.collect()
    assert list(got) == list(field_names(FACT_FIELDS))
    assert got["cores"] >= 1 and got["mem_total_bytes"] > 0 and got["python"]
    json.dumps(got)


def test_facts_are_none_where_the_device_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.setattr(facts, "PROC", str(tmp_path / "noproc"))
    monkeypatch.setattr(facts, "SYS_CPU", str(tmp_path / "nocpu"))
    monkeypatch.setattr(facts, "SYS_THERMAL", str(tmp_path / "nothermal"))
    monkeypatch.setenv("PATH", str(tmp_path))
    got = facts.collect()
    for key in ("governor", "freq_mhz", "freq_max_mhz", "freq_cap_mhz", "temp_c", "throttled_flags",
                "mem_total_bytes", "mem_available_bytes"):
        assert got[key] is None, key


def fake_board(tmp_path, monkeypatch, throttled: str = "0x0", cap_khz: int = 1800000):
    """A Raspberry-Pi-like /proc and /sys, and a vcgencmd on PATH."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 4 Model B\n")
    (proc / "meminfo").write_text("MemTotal:        3884412 kB\nMemAvailable:    3000000 kB\n")
    cpufreq = tmp_path / "cpu" / "cpu0" / "cpufreq"
    cpufreq.mkdir(parents=True)
    for name, value in {"scaling_governor": "ondemand", "scaling_cur_freq": "600000",
                        "cpuinfo_max_freq": "1800000", "scaling_max_freq": str(cap_khz)}.items():
        (cpufreq / name).write_text(value + "\n")
    thermal = tmp_path / "thermal"
    for i, (kind, milli) in enumerate([("battery", "95000"), ("cpu-thermal", "61234"), ("bogus", "-273000")]):
        zone = thermal / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vcgencmd = bin_dir / "vcgencmd"
    vcgencmd.write_text(f"#!/bin/sh\necho throttled={throttled}\n")
    vcgencmd.chmod(0o755)
    monkeypatch.setattr(facts, "PROC", str(proc))
    monkeypatch.setattr(facts, "SYS_CPU", str(tmp_path / "cpu"))
    monkeypatch.setattr(facts, "SYS_THERMAL", str(thermal))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_facts_of_a_raspberry_pi_like_board(tmp_path, monkeypatch):
    fake_board(tmp_path, monkeypatch, throttled="0x50000")
    got = facts.collect()
    assert got["cpu_model"] == "Raspberry Pi 4 Model B"
    assert got["governor"] == "ondemand"
    assert (got["freq_mhz"], got["freq_max_mhz"], got["freq_cap_mhz"]) == (600.0, 1800.0, 1800.0)
    assert got["temp_c"] == 61.2          # the CPU zone, not the battery; the bogus sensor is ignored
    assert got["throttled_flags"] == "0x50000"
    assert (got["mem_total_bytes"], got["mem_available_bytes"]) == (3884412 * 1024, 3000000 * 1024)


def test_a_lowered_frequency_cap_counts_as_throttled(tmp_path, monkeypatch):
    fake_board(tmp_path, monkeypatch, cap_khz=1000000)
    got = facts.collect()
    assert facts.is_throttled(got, got)


@pytest.mark.parametrize("before, after, throttled", [
    ("0x0", "0x0", False),
    ("0x50000", "0x50000", False),   # happened before this measurement, not during it
    ("0x0", "0x4", True),             # throttled now
    ("0x0", "0x20000", True),         # capped at some point during the measurement
    (None, None, False),
])
def test_throttle_flags(before, after, throttled):
    assert facts.is_throttled({"throttled_flags": before}, {"throttled_flags": after}) is throttled


def test_hot_is_any_temperature_above_the_limit():
    assert facts.is_hot(80.0, 50.0, None, 81.0)
    assert not facts.is_hot(80.0, None, 79.9)


# ------------------------------------------------------------------------------ watching the worker


def test_peak_rss_is_read_from_outside_the_process():
    argv = printing(worker_doc(), before="block = bytearray(160 * 2**20); time.sleep(0.6)")
    run = supervisor.run_worker(argv, timeout_s=30, poll_interval=0.05)
    assert run["exit_code"] == 0 and not run["timed_out"]
    assert run["ru_maxrss_bytes"] >= 160 * MIB
    rec = supervisor.process_record(0, run, facts.collect(), facts.collect(), 30, 80.0)
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["peak_rss_bytes"] >= 160 * MIB
    assert rec["rss_polls"] >= 2
    if os.path.exists(f"/proc/{os.getpid()}/status"):
        assert rec["vm_hwm_bytes"] >= 160 * MIB
        assert rec["rss_anon_bytes"] >= 150 * MIB           # the bytearray, seen at the peak sample
        assert rec["rss_file_bytes"] is not None
    assert len(rec["samples"]) == 3
    assert rec["facts_before"]["quantized_engine"] == "qnnpack"   # filled in from the worker


@pytest.mark.parametrize("argv, error", [
    (script("import sys; sys.stderr.write('Traceback...\\nRuntimeError: boom\\n'); sys.exit(3)"),
     "the worker exited with code 3: RuntimeError: boom"),
    (script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), "the worker was killed by SIGKILL"),
    (script("print('hello, not json')"), "garbage instead of JSON: 'hello, not json'"),
    (script("pass"), "printed nothing on stdout"),
    (script("print('[1, 2]')"), "not an object"),
    (script("print('{\"status\": \"ok\"}')"), "the worker's JSON lacks error"),
    (printing(worker_doc(status="failed", error="ArtifactError: acoustic.pt: sha256 mismatch")),
     "ArtifactError: acoustic.pt: sha256 mismatch"),
])
def test_a_failing_worker_makes_a_failed_process_with_the_reason(argv, error):
    run = supervisor.run_worker(argv, timeout_s=30, poll_interval=0.05)
    rec = supervisor.process_record(1, run, facts.collect(), facts.collect(), 30, 80.0)
    assert rec["status"] == "failed"
    assert error in rec["error"]
    assert rec["samples"] == []
    assert rec["index"] == 1


def test_a_huge_log_line_is_cut_in_the_error():
    argv = script("import sys; sys.stderr.write('x' * 100000); sys.exit(1)")
    run = supervisor.run_worker(argv, timeout_s=30)
    rec = supervisor.process_record(0, run, {}, {}, 30, 80.0)
    assert rec["status"] == "failed" and len(rec["error"]) < 600 and rec["error"].endswith("...")


def test_a_hanging_worker_is_killed_at_its_timeout():
    argv = script("import sys, time; sys.stderr.write('loading...\\n'); sys.stderr.flush(); time.sleep(60)")
    run = supervisor.run_worker(argv, timeout_s=0.5, poll_interval=0.05)
    assert run["timed_out"] and run["exit_code"] < 0
    rec = supervisor.process_record(0, run, {}, {}, 0.5, 80.0)
    assert rec["status"] == "failed"
    assert rec["error"].startswith("timed out after 0.5s (killed)")
    assert "loading..." in rec["error"]


def test_a_worker_that_cannot_start_is_a_failed_process():
    run = supervisor.run_worker([os.path.join(os.sep, "nonexistent", "python")], timeout_s=5)
    rec = supervisor.process_record(0, run, {}, {}, 5, 80.0)
    assert rec["status"] == "failed" and "cannot start the worker" in rec["error"]
    assert rec["exit_code"] is None and rec["peak_rss_bytes"] is None


# ---------------------------------------------------------------------------------- the supervisor


def make_artifact(tmp_path, content_hash: str = "ab" * 32):
    art = tmp_path / "work" / "artifacts" / content_hash
    art.mkdir(parents=True)
    (art / "manifest.json").write_text(json.dumps({"format_version": 1, "content_hash": content_hash}))
    return art


def test_measure_runs_fresh_processes_one_after_another(tmp_path, monkeypatch):
    art = make_artifact(tmp_path)
    log = tmp_path / "starts.log"
    body = f"""
        import json, os, sys, time
        with open({str(log)!r}, "a") as f:
            f.write("%d %.6f\\n" % (os.getpid(), time.time()))
        time.sleep(0.2)
        sys.stdout.write(json.dumps({worker_doc()!r}))
    """
    seen = []

    def fake_argv(args, deadline_s, check_outputs=False):
        seen.append((dict(args), deadline_s))
        return script(body)

    monkeypatch.setattr(supervisor, "worker_argv", fake_argv)
    record = supervisor.measure(str(art), "pruned", Protocol(processes=3, timeout_s=60), poll_interval=0.05,
                                log=lambda msg: None)
    assert record["format"] == RECORD_FORMAT and record["version"] == RECORD_VERSION
    assert record["status"] == "ok", record["error"]
    assert record["artifact"] == "ab" * 32 and record["variant"] == "pruned"
    assert [p["index"] for p in record["processes"]] == [0, 1, 2]
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(set(pids)) == 3                                   # fresh processes
    assert all(p["wall_s"] >= 0.2 for p in record["processes"])
    assert record["facts_before"]["quantized_engine"] == "qnnpack"
    assert seen[0][0]["artifact"] == str(art)
    assert seen[0][1] < 60 / 3                                   # the worker's soft deadline
    assert (tmp_path / "work" / supervisor.LOCK_NAME).exists()   # the lock lives in the work dir


def test_one_failed_process_fails_the_record_but_the_others_still_run(tmp_path, monkeypatch):
    art = make_artifact(tmp_path)
    calls = []

    def fake_argv(args, deadline_s, check_outputs=False):
        calls.append(1)
        if len(calls) == 2:
            return script("import sys; sys.stderr.write('Segmentation fault\\n'); sys.exit(139)")
        return printing(worker_doc())

    monkeypatch.setattr(supervisor, "worker_argv", fake_argv)
    record = supervisor.measure(str(art), "q", Protocol(processes=3, timeout_s=60), poll_interval=0.05,
                                log=lambda msg: None)
    assert record["status"] == "failed"
    assert record["error"] == "process 1: the worker exited with code 139: Segmentation fault"
    assert [p["status"] for p in record["processes"]] == ["ok", "failed", "ok"]


def test_a_missing_artifact_is_a_failed_record_not_a_crash(tmp_path):
    record = supervisor.measure(str(tmp_path / "nope"), "v", Protocol(timeout_s=5), log=lambda msg: None)
    assert record["status"] == "failed"
    assert "manifest.json: missing" in record["error"]
    assert record["processes"] == [] and record["artifact"] is None


def test_two_measurements_on_one_device_never_overlap(tmp_path, monkeypatch):
    import threading

    art = make_artifact(tmp_path)
    spans = tmp_path / "spans.log"
    body = f"""
        import json, sys, time
        start = time.time()
        time.sleep(0.3)
        with open({str(spans)!r}, "a") as f:
            f.write("%.6f %.6f\\n" % (start, time.time()))
        sys.stdout.write(json.dumps({worker_doc()!r}))
    """
    monkeypatch.setattr(supervisor, "worker_argv", lambda args, deadline_s, check_outputs=False: script(body))
    records = []

    def one():
        records.append(supervisor.measure(str(art), "v", Protocol(processes=2, timeout_s=60),
                                          poll_interval=0.05, log=lambda msg: None))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r["status"] for r in records] == ["ok", "ok"]
    intervals = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
    assert len(intervals) == 4
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end  # one worker at a time on the device


def test_the_lock_allows_one_measurement_at_a_time(tmp_path):
    first = supervisor.DeviceLock(str(tmp_path))
    assert first.acquire(deadline=0) is None
    now = [0.0]

    def sleep(s):
        now[0] += s

    second = supervisor.DeviceLock(str(tmp_path))
    why = second.acquire(deadline=2.0, clock=lambda: now[0], sleep=sleep)
    assert why.startswith(f"device busy: another measurement (pid {os.getpid()})")
    assert now[0] >= 2.0
    first.release()
    assert second.acquire(deadline=0) is None
    second.release()


def test_the_lock_is_held_across_processes(tmp_path):
    holder = subprocess.Popen(
        [PY, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
                   "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
         str(tmp_path / supervisor.LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = supervisor.DeviceLock(str(tmp_path))
        assert lock.acquire(deadline=0).startswith("device busy")
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire(deadline=5) is None
    lock.release()


def test_work_dir_defaults_to_the_push_layout(tmp_path):
    assert supervisor.default_work_dir(str(tmp_path / "w" / "artifacts" / "abc")) == str(tmp_path / "w")
    assert supervisor.default_work_dir(str(tmp_path / "x" / "abc")) == str(tmp_path / "x")


# ------------------------------------------------------------------------------------------- the CLI


def agent(*args, timeout=120):
    return subprocess.run([PY, "-m", "devices.ondevice.agent", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_facts_prints_one_json_document():
    out = agent("facts")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["format"] == "edgebench.facts" and doc["version"] == 1
    assert doc["facts"]["torch"] and doc["facts"]["quantized_engine"]


def test_cli_measure_on_a_missing_artifact_prints_a_failed_record(tmp_path):
    out = agent("measure", "--artifact", str(tmp_path / "missing"), "--variant", "v",
                *Protocol(timeout_s=5).agent_args(), "--work-dir", str(tmp_path))
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["status"] == "failed" and "manifest.json" in record["error"]


def _doc(**changes) -> str:
    doc = Protocol().to_document()
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


@pytest.mark.parametrize("args, message", [
    (["measure", "--variant", "v", "--protocol", _doc()], "--artifact"),
    (["measure", "--artifact", "a", "--variant", "v"], "--protocol"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", _doc(processes=0)],
     "processes must be >= 1"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", _doc(min_iters=5, max_iters=2)],
     "min_iters (5) is larger than max_iters (2)"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", _doc(sentences=["huge"])], "huge"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", _doc(version=99)], "version 99"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", _doc(warmup=...)],
     "missing key(s) warmup"),
    (["measure", "--artifact", "a", "--variant", "v", "--protocol", "{not json"], "not a JSON document"),
    ([], ""),
])
def test_cli_rejects_bad_arguments_with_exit_2_and_nothing_on_stdout(args, message):
    """The protocol is one document with every value given (the defaults live on the controller only):
    a missing key, an unknown version or a value out of bounds is refused before anything runs."""
    out = agent(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert message in out.stderr


# ------------------------------------------------------------------------------ one synthesis, timed


class _Seq:
    def __init__(self, n):
        self.n = n

    def to_tensors(self):
        import torch

        return {"sy": torch.zeros(1, self.n, dtype=torch.long)}


def test_synthesizer_times_each_stage_on_one_clock(monkeypatch):
    import torch

    from devices.ondevice.agent.worker import SAMPLE_RATE, Synthesizer

    now = [0.0]

    def clock():
        return now[0]

    class Frontend:
        @staticmethod
        def text_to_ids(text, emotion, symbols=None):
            now[0] += 0.001
            return _Seq(len(text) * 2)

    class Out:
        mel = torch.zeros(1, 40, 80)

    def acoustic(**inputs):
        now[0] += 0.25
        return Out()

    def vocoder(mel):
        assert mel.shape == (1, 80, 40)
        now[0] += 0.5
        return torch.zeros(1, 1, 40 * 200)

    Sentence = type("Sentence", (), {"id": "short-01", "text": "今天天气真好", "length_class": "short"})
    synth = Synthesizer(Frontend, acoustic, vocoder, clock)
    got = synth((Sentence, "happy"))
    assert got["sentence_id"] == "short-01" and got["emotion"] == "happy" and got["length_class"] == "short"
    assert (got["phones"], got["frames"], got["audio_s"]) == (12, 40, 40 * 200 / SAMPLE_RATE)
    assert got["frontend_s"] == pytest.approx(0.001) and got["acoustic_s"] == pytest.approx(0.25)
    assert got["vocoder_s"] == pytest.approx(0.5) and got["total_s"] == pytest.approx(0.751)

    from devices.ondevice.agent import worker

    monkeypatch.setattr(worker.os, "getppid", lambda: -1)   # the supervisor died: stop, never run alone
    with pytest.raises(worker.WorkerError, match="supervisor went away"):
        synth((Sentence, "happy"))


def test_the_memory_timeline_keeps_every_peak_when_it_is_thinned():
    watch = supervisor.MemoryWatch()
    for i in range(1000):
        rss = 500 * 2**20 if i == 617 else (100 + i % 7) * 2**20
        watch.add({"VmRSS": rss, "VmHWM": 500 * 2**20 if i >= 617 else 106 * 2**20}, t=i * 0.25)
    tl = watch.timeline(max_points=100)
    assert len(tl["t_s"]) <= 100 and tl["t_s"] == sorted(tl["t_s"])
    assert max(tl["rss_bytes"]) == 500 * 2**20 and 617 * 0.25 in tl["t_s"]
    assert tl["hwm_bytes"][-1] == 500 * 2**20
    assert supervisor.MemoryWatch().timeline() is None
