"""Output check: a device's outputs on one sentence against the controller's (devices.ondevice.outputs),
and the quantized engine chosen per device (protocol, devices.toml, the worker)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from devices.bundle import build_bundle
from devices.errors import DevicesError, InventoryError
from devices.inventory import local_device, parse_device
from devices.measure import check_device_outputs, effective_protocol, measure_variant
from devices.ondevice import corpus, frontend, outputs
from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
from devices.ondevice.protocol import Protocol
from devices.transport import LocalTransport
from variants.artifact import quantize_module, save_artifact


@pytest.fixture(scope="module")
def tiny_pair():
    cfg = get_preset("tiny")
    return cfg, build_acoustic(cfg.acoustic, seed=0).eval(), build_vocoder(cfg.vocoder, seed=0).eval()


def _sentence(length_class="short"):
    return next(s for s in corpus.default_corpus() if s.length_class == length_class)


def test_encode_decode_round_trip():
    x = torch.randn(3, 5)
    back = outputs.decode(json.loads(json.dumps(outputs.encode(x))))
    assert back.dtype == np.float32 and np.array_equal(back, x.numpy())
    assert np.array_equal(outputs.decode(outputs.encode(x.numpy())), x.numpy())  # arrays (onnxruntime) too


def test_same_model_agrees_exactly(tiny_pair):
    _, acoustic, vocoder = tiny_pair
    sent = outputs.device_outputs(frontend, None, acoustic, vocoder, _sentence(), "happy", "x86")
    check = outputs.compare(sent, frontend, None, acoustic, vocoder, _sentence(), "fp32")
    assert check["ok"] and check["mel_max_abs"] == 0.0 and check["wav_max_abs"] == 0.0
    assert check["durations_differ"] == 0 and check["phones"] == len(sent["durations"])


def test_another_model_or_a_tampered_mel_fails(tiny_pair):
    cfg, acoustic, vocoder = tiny_pair
    sent = outputs.device_outputs(frontend, None, acoustic, vocoder, _sentence(), "neutral", "x86")
    other = build_acoustic(cfg.acoustic, seed=1).eval()
    check = outputs.compare(sent, frontend, None, other, vocoder, _sentence(), "int8")
    assert not check["ok"] and check["mel_rel_rms"] > outputs.TOLERANCES["int8"]["mel_rel_rms"]
    mel = outputs.decode(sent["mel"])
    mel[3, 7] += 0.01
    tampered = {**sent, "mel": outputs.encode(mel)}
    check = outputs.compare(tampered, frontend, None, acoustic, vocoder, _sentence(), "fp32")
    assert not check["ok"] and check["mel_max_abs"] == pytest.approx(0.01, rel=1e-3)
    # the same 0.01 is within the int8 tolerance (quantized engines differ by more than that)
    assert outputs.compare(tampered, frontend, None, acoustic, vocoder, _sentence(), "int8")["ok"]


def test_int8_on_another_engine_is_within_the_int8_tolerance(tiny_pair):
    """Same weights quantized for another engine (what a board's own engine does) stay within tolerance;
    the durations the device predicted are forced on the controller, so frames always line up."""
    _, acoustic, vocoder = tiny_pair
    engines = torch.backends.quantized.supported_engines
    if "qnnpack" not in engines:
        pytest.fail(f"this torch lacks qnnpack ({engines}); the test needs two engines")
    ref = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "qnnpack"
        q_dev = quantize_module(acoustic)
        sent = outputs.device_outputs(frontend, None, q_dev, vocoder, _sentence("long"), "sad", "qnnpack")
    finally:
        torch.backends.quantized.engine = ref
    q_ctl = quantize_module(acoustic)
    check = outputs.compare(sent, frontend, None, q_ctl, vocoder, _sentence("long"), "int8")
    assert check["ok"], check
    assert 0 < check["mel_rel_rms"] < outputs.TOLERANCES["int8"]["mel_rel_rms"]
    assert not outputs.compare(sent, frontend, None, q_ctl, vocoder, _sentence("long"), "fp32")["ok"]


def test_a_record_without_the_asked_outputs_fails(tmp_path):
    record = {"status": "ok", "error": None, "processes": [{"index": 0}]}
    check_device_outputs(record, tmp_path, Protocol())
    assert record["status"] == "failed" and "did not report its outputs" in record["error"]


# ----------------------------------------------------------------------------- quantized engine


def test_protocol_and_devices_toml_take_known_engines_only():
    assert Protocol(quantized_engine="qnnpack").to_document()["quantized_engine"] == "qnnpack"
    doc = Protocol(quantized_engine="onednn").to_document()
    assert Protocol.from_document(doc).quantized_engine == "onednn"
    with pytest.raises(DevicesError, match="quantized_engine must be one of"):
        Protocol(quantized_engine="arm")
    table = {"host": "127.0.0.1", "user": "pi", "key_file": __file__, "quantized_engine": "qnnpack"}
    assert parse_device("pi5", table).quantized_engine == "qnnpack"
    with pytest.raises(InventoryError, match=r"devices.toml: devices.pi5.quantized_engine: expected one of"):
        parse_device("pi5", {**table, "quantized_engine": "QNNPACK"})
    dev = parse_device("pi5", table)
    assert effective_protocol(dev, Protocol()).quantized_engine == "qnnpack"
    assert effective_protocol(dev, Protocol(quantized_engine="onednn")).quantized_engine == "onednn"


@pytest.mark.slow
def test_the_agent_uses_the_devices_engine_and_checks_its_outputs(tmp_path):
    """One real process on this machine: the engine asked for is the one used and recorded, and the
    output check replaces the device's outputs by the comparison."""
    cfg = get_preset("tiny")
    acoustic, vocoder = build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)
    art = save_artifact(tmp_path / "art", quantize_module(acoustic), vocoder, cfg.to_dict(),
                        transforms=[{"op": "quantize_dynamic", "component": "acoustic", "dtype": "qint8",
                                     "modules": ["Linear", "LSTM"]}],
                        manifest_extra={"name": "quantized"}).path
    dev = local_device(quantized_engine="qnnpack")
    protocol = Protocol(processes=1, warmup=0, min_iters=7, min_seconds=0.0, max_iters=7, threads=1,
                        timeout_s=300, sentences=("short",))
    record = measure_variant(LocalTransport(dev, tmp_path / "device"), dev, Path(art), "quantized", protocol,
                             bundle=build_bundle(tmp_path / "state"), check_outputs=True)
    assert record["status"] == "ok", record["error"]
    assert record["protocol"]["quantized_engine"] == "qnnpack"
    proc = record["processes"][0]
    assert proc["facts_before"]["quantized_engine"] == "qnnpack"
    assert "outputs" not in proc
    check = proc["output_check"]
    assert check["ok"] and check["precision"] == "int8" and check["quantized_engine"] == "qnnpack"
    assert 0 < check["mel_rel_rms"] < outputs.TOLERANCES["int8"]["mel_rel_rms"]


def test_a_board_that_computes_another_model_fails_the_pair(tmp_path, tiny_pair):
    cfg, acoustic, vocoder = tiny_pair
    art = save_artifact(tmp_path / "art", acoustic, vocoder, cfg.to_dict(),
                        manifest_extra={"name": "original"})
    sentence = next(s for s in corpus.default_corpus() if s.length_class == "short")
    other = build_acoustic(cfg.acoustic, seed=7).eval()
    sent = outputs.device_outputs(frontend, None, other, vocoder, sentence, "angry", "qnnpack")
    record = {"status": "ok", "error": None, "processes": [{"index": 0, "outputs": sent}]}
    check_device_outputs(record, Path(art.path), Protocol())
    assert record["status"] == "failed" and "outputs" not in record["processes"][0]
    assert record["error"].startswith(f"outputs differ from the controller's on sentence {sentence.id} "
                                      "(fp32, engine qnnpack): mel relative rms ")
    assert not record["processes"][0]["output_check"]["ok"]
    good = {"status": "ok", "error": None, "processes": [{"index": 0, "outputs": outputs.device_outputs(
        frontend, None, acoustic, vocoder, sentence, "angry", "x86")}]}
    check_device_outputs(good, Path(art.path), Protocol())
    assert good["status"] == "ok" and good["processes"][0]["output_check"]["ok"]
