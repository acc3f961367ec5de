"""devices.measure: the controller side of a measurement, and the real agent end to end on this machine.

The end-to-end tests build a tiny artifact, push the real bundle to a LocalTransport work directory and
run the real agent (fresh worker processes, torch, the tiny model) the way a remote device would.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_record import good

from devices.bundle import Bundle, build_bundle
from devices.errors import AgentError, RecordError, TransportError
from devices.inventory import local_device
from devices.measure import agent_command, device_identity, effective_protocol, measure_variant
from devices.ondevice.protocol import Protocol
from devices.push import CHECK_ARTIFACT, PREPARE_BUNDLE
from devices.testing import FakeTransport
from devices.transport import LocalTransport

EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
PROTOCOL = Protocol(processes=2, warmup=2, min_iters=6, min_seconds=1.0, max_iters=50, threads=2,
                    timeout_s=300, sentences=("short",))
CONTENT_HASH = "ab" * 32


# ----------------------------------------------------------------------------- with a fake transport


@pytest.fixture
def fake_artifact(tmp_path) -> Path:
    art = tmp_path / "artifact"
    art.mkdir()
    files = {}
    for name in ("config.json", "acoustic.pt", "vocoder.pt"):
        (art / name).write_bytes(name.encode())
        files[name] = "0" * 64
    (art / "manifest.json").write_text(json.dumps({"format_version": 1, "content_hash": CONTENT_HASH,
                                                   "files": files}))
    return art


@pytest.fixture
def fake_bundle(tmp_path) -> Bundle:
    path = tmp_path / "bundle.zip"
    path.write_bytes(b"zip")
    return Bundle(path=path, sha256="cd" * 32, size=3)


def scripted(record_stdout: str = "", exit_code: int = 0, stderr: str = "", device=None) -> FakeTransport:
    t = FakeTransport(device or local_device(python="python3"))
    t.on(lambda argv: PREPARE_BUNDLE in argv, stdout=json.dumps(
        {"state": "ready", "dir": "/fake/edgebench/bundles/cdcd", "zip": "/fake/x.zip", "work_dir": "/fake"}))
    t.on(lambda argv: CHECK_ARTIFACT in argv, stdout=json.dumps(
        {"bad": [], "dir": f"/fake/edgebench/artifacts/{CONTENT_HASH}", "work_dir": "/fake"}))
    t.on(lambda argv: "measure" in argv, stdout=record_stdout, exit_code=exit_code, stderr=stderr)
    return t


def test_measure_variant_runs_the_agent_with_the_protocol_and_validates(fake_artifact, fake_bundle):
    t = scripted(json.dumps(good()))
    record = measure_variant(t, t.device, fake_artifact, "pruned", PROTOCOL, bundle=fake_bundle)
    assert record == good()
    call = t.runs()[-1]
    assert call.argv[:2] == ["python3", "/fake/edgebench/bundles/cdcd/edgebench_agent.py"]
    assert call.argv == agent_command(call.argv[:2], f"/fake/edgebench/artifacts/{CONTENT_HASH}", "pruned",
                                      PROTOCOL, "/fake/edgebench")
    assert json.loads(call.argv[call.argv.index("--protocol") + 1])["threads"] == 2
    assert call.argv[call.argv.index("--work-dir") + 1] == "/fake/edgebench"
    assert call.timeout == PROTOCOL.transport_timeout()


def test_a_failed_record_is_returned_not_raised(fake_artifact, fake_bundle):
    record = good()
    record["status"], record["error"] = "failed", "process 0: the worker exited with code 1: OOM"
    record["processes"][0].update(status="failed", error="the worker exited with code 1: OOM", samples=[])
    t = scripted(json.dumps(record), exit_code=1)
    assert measure_variant(t, t.device, fake_artifact, "pruned", PROTOCOL, bundle=fake_bundle) == record


def test_no_record_at_all_is_an_agent_error_with_the_device_output(fake_artifact, fake_bundle):
    t = scripted("", exit_code=1, stderr="Traceback (most recent call last):\nImportError: no torch\n")
    with pytest.raises(AgentError, match=r"printed no record \(exit 1 after .*ImportError: no torch"):
        measure_variant(t, t.device, fake_artifact, "pruned", PROTOCOL, bundle=fake_bundle)


@pytest.mark.parametrize("stdout, message", [
    ("Segmentation fault", "not JSON"),
    (json.dumps(dict(good(), variant="original")), "record.variant: 'original', but 'pruned' was measured"),
    (json.dumps(dict(good(), artifact="ef" * 32)), "record.artifact"),
    (json.dumps(dict(good(), version=99)), "known: 1"),
])
def test_what_the_device_says_is_validated(fake_artifact, fake_bundle, stdout, message):
    t = scripted(stdout)
    with pytest.raises(RecordError, match=message):
        measure_variant(t, t.device, fake_artifact, "pruned", PROTOCOL, bundle=fake_bundle)


def test_an_unreachable_device_is_a_transport_error(fake_artifact, fake_bundle):
    t = FakeTransport(local_device(python="python3"))
    t.on(lambda argv: True, raises=TransportError("device 'local': connect timed out after 10.0s"))
    with pytest.raises(TransportError, match="connect timed out"):
        measure_variant(t, t.device, fake_artifact, "pruned", PROTOCOL, bundle=fake_bundle)


def test_device_threads_apply_when_the_protocol_leaves_them_open():
    dev = local_device(threads=3)
    assert effective_protocol(dev, Protocol()).threads == 3
    assert effective_protocol(dev, Protocol(threads=1)).threads == 1
    assert effective_protocol(local_device(), Protocol()).threads is None


def test_device_identity_fingerprints_the_machine_not_its_mood():
    facts = good()["facts_before"]
    a = device_identity(local_device(), facts)
    assert a["name"] == "local" and len(a["fingerprint"]) == 12
    assert {"cpu_model", "cores", "mem_total_bytes", "os", "machine", "torch"} <= set(a)
    busy = dict(facts, temp_c=79.0, load_avg=[3.0, 3.0, 3.0], mem_available_bytes=1, freq_mhz=600.0,
                torch=facts["torch"] + "+cpu", mem_total_bytes=facts["mem_total_bytes"] - 4096)
    assert device_identity("local", busy)["fingerprint"] == a["fingerprint"]
    assert device_identity("local", dict(facts, cpu_model="Cortex-A76"))["fingerprint"] != a["fingerprint"]
    assert device_identity("local", dict(facts, torch="2.1.0"))["fingerprint"] != a["fingerprint"]
    assert device_identity("local", {})["fingerprint"]  # nothing known is still an identity


# ------------------------------------------------------------------------- the real agent, end to end


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> Path:
    from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
    from variants.artifact import save_artifact

    cfg = get_preset("tiny")
    out = tmp_path_factory.mktemp("artifacts") / "original"
    acoustic, vocoder = build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)
    save_artifact(out, acoustic, vocoder, cfg.to_dict(),
                  manifest_extra={"name": "original", "preset": "tiny", "seed": 0})
    return out


def short_cycle() -> int:
    from devices.ondevice.corpus import default_corpus

    return 7 * sum(1 for s in default_corpus() if s.length_class == "short")


@pytest.mark.slow
def test_the_real_agent_measures_the_tiny_model_end_to_end(tmp_path, tiny_artifact):
    cycle = short_cycle()
    protocol = Protocol(processes=2, warmup=1, min_iters=cycle, min_seconds=0.0, max_iters=2 * cycle,
                        threads=1, timeout_s=300, sentences=("short",))
    dev = local_device()
    transport = LocalTransport(dev, tmp_path / "device")
    bundle = build_bundle(tmp_path / "state")
    record = measure_variant(transport, dev, tiny_artifact, "original", protocol, bundle=bundle)

    assert record["status"] == "ok", record["error"]
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert record["artifact"] == manifest["content_hash"]
    assert len(record["processes"]) == 2
    for proc in record["processes"]:
        assert proc["status"] == "ok" and proc["exit_code"] == 0
        assert all(proc["phases"][k] > 0 for k in ("import_s", "acoustic_load_s", "vocoder_load_s",
                                                    "first_inference_s"))
        # The first inference and the warmup are not samples: exactly one balanced cycle is.
        assert proc["warmup_done"] == 1 and proc["stop_reason"] == "target"
        # re-measurements of samples flagged disturbed (a busy machine) are appended after the cycle
        samples = [s for s in proc["samples"] if s.get("remeasure_of") is None]
        assert len(samples) == cycle
        pairs = Counter((s["sentence_id"], s["emotion"]) for s in samples)
        assert set(pairs.values()) == {1} and len(pairs) == cycle
        assert {s["emotion"] for s in samples} == set(EMOTIONS)
        assert {s["length_class"] for s in samples} == {"short"}
        assert all(s["audio_s"] > 0 and s["frames"] > 0 and s["phones"] > 0 for s in samples)
        # Peak RSS read from outside the worker: torch alone is tens of MiB.
        assert proc["peak_rss_bytes"] > 20 * 2**20
        assert proc["ru_maxrss_bytes"] > 20 * 2**20
        assert proc["threads"] == 1
        assert proc["facts_before"]["quantized_engine"]
    assert record["facts_before"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (tmp_path / "device" / "measure.lock").exists()


@pytest.mark.slow
def test_a_broken_artifact_on_the_device_is_a_failed_record(tmp_path, tiny_artifact):
    protocol = Protocol(processes=1, warmup=0, min_iters=1, min_seconds=0.0, max_iters=1, timeout_s=120,
                        sentences=("short",))
    dev = local_device()
    transport = LocalTransport(dev, tmp_path / "device")
    bundle = build_bundle(tmp_path / "state")
    from devices.push import ensure_artifact, ensure_bundle

    agent = ensure_bundle(transport, bundle)
    remote = ensure_artifact(transport, tiny_artifact).remote_path
    Path(remote, "vocoder.pt").write_bytes(b"not a state dict")
    argv = agent_command(agent.agent_argv, remote, "original", protocol, transport.work_dir)
    result = transport.run(argv, timeout=protocol.transport_timeout())
    from devices.record import parse_record

    record = parse_record(result.stdout, protocol=protocol)
    assert result.exit_code == 1
    assert record["status"] == "failed"
    proc = record["processes"][0]
    assert proc["status"] == "failed" and proc["phases"]["import_s"] is not None
    assert proc["error"].startswith("ArtifactError: ") and "vocoder.pt: sha256" in proc["error"]
    assert record["error"] == f"process 0: {proc['error']}"
