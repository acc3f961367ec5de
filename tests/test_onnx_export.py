"""The onnxruntime runtime: ONNX export of the reference Sambert-HifiGan (variants.onnx_export) and the
numpy loops that run it on the device (devices.ondevice.ort), against torch. Real torch and onnxruntime."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_kantts_small

from devices.ondevice import ort
from devices.ondevice.corpus import default_corpus
from devices.ondevice.frontend import text_to_ids
from devices.ondevice.load import REFERENCE_FACTORY, symbol_table
from devices.ondevice.models import build_acoustic, get_preset, reference
from variants import onnx_export
from variants.onnx_export import ExportError
from variants.optimize import optimized_state

ROOT = Path(__file__).resolve().parents[1]
TOL = ort.TORCH_AGREEMENT_FP32
INT8_REL_RMS = 0.10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread avoids spin-wait slowdowns on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sentences(symbols=None):
    """Two short, two medium and one long corpus sentence, with several emotions."""
    corpus = default_corpus(seed=0)
    picked = [s for s in corpus if s.length_class == "short"][:2]
    picked += [s for s in corpus if s.length_class == "medium"][:2]
    picked += [s for s in corpus if s.length_class == "long"][:1]
    emotions = ("neutral", "happy", "sad", "angry", "neutral")
    return [text_to_ids(s.text, emotion=e, symbols=symbols).to_tensors() for s, e in zip(picked, emotions)]


def _arrays(inputs):
    return {k: v.numpy() for k, v in inputs.items()}


def _runtime(graphs, meta):
    return ort.OrtAcoustic(graphs, meta, threads=1), ort.OrtVocoder(graphs, meta, threads=1)


def _within(result, tol=TOL):
    for key, bound in tol.items():
        assert result[key] <= bound, f"{key} {result[key]:.3e} > {bound:.1e} ({result})"


@pytest.fixture(scope="module")
def tiny():
    acoustic, vocoder = reference(get_preset("tiny"), seed=0)
    graphs, meta = onnx_export.export(acoustic, vocoder)
    return {"acoustic": acoustic, "vocoder": vocoder, "graphs": graphs, "meta": meta}


@pytest.fixture(scope="module")
def tiny_runtime(tiny):
    return _runtime(tiny["graphs"], tiny["meta"])


@pytest.fixture(scope="module")
def inputs():
    return _sentences()


# ------------------------------------------------------------------------------------------ fp32 agreement


def test_meta_describes_the_graphs(tiny):
    graphs, meta = tiny["graphs"], tiny["meta"]
    assert set(graphs) == set(ort.GRAPHS) == set(meta["graphs"])
    assert meta["opset"] == onnx_export.OPSET == 17
    assert meta["exporter"] == {"method": "torchscript", "torch": torch.__version__,
                                "onnx": __import__("onnx").__version__}
    assert meta["quantized"] is None
    assert meta["vocoder"]["hop_length"] == get_preset("tiny").vocoder.hop_length
    assert meta["acoustic"]["dec_heads"] == list(get_preset("tiny").acoustic.dec_heads)
    import hashlib

    for name, data in graphs.items():
        info = meta["graphs"][name]
        assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    step = meta["graphs"]["decoder_step"]
    assert step["inputs"][:6] == ["frame", "memory_step", "past_k_0", "past_v_0", "mem_k_0", "mem_v_0"]
    assert step["outputs"][:3] == ["y", "k_0", "v_0"]
    json.dumps(meta)  # goes into config.json


def test_export_is_deterministic(tiny):
    again, meta = onnx_export.export(tiny["acoustic"], tiny["vocoder"])
    assert {k: v == tiny["graphs"][k] for k, v in again.items()} == {k: True for k in ort.GRAPHS}
    assert meta == tiny["meta"]


def test_fp32_agrees_with_torch_forced_and_predicted(tiny, tiny_runtime, inputs):
    acoustic, vocoder = tiny["acoustic"], tiny["vocoder"]
    oa, ov = tiny_runtime
    result = onnx_export.agreement(acoustic, vocoder, oa, ov, inputs)
    assert result["n"] == len(inputs) and result["durations_differ"] == 0
    _within(result)
    for item in inputs[:3]:
        with torch.inference_mode():
            ref = acoustic(**item)
        got = oa(**_arrays(item))  # the whole predicted path: durations, band, decoder loop
        assert isinstance(got, ort.AcousticResult)
        assert got.durations.dtype == np.int64 and np.array_equal(got.durations, ref.durations.numpy())
        assert got.frames == int(ref.frames[0]) == got.mel.shape[1]
        assert got.mel.dtype == np.float32 and got.mel.shape == tuple(ref.mel.shape)
        assert float(np.abs(got.mel - ref.mel.numpy()).max()) <= TOL["mel_max_abs"]
        # forced durations other than the predicted ones (a 0-frame phone, longer phones: another band)
        forced = ref.durations.clone()
        forced[0, 0] = 0
        forced[0, 1::3] += 4
        with torch.inference_mode():
            ref_forced = acoustic(**item, durations=forced)
            wav_ref = vocoder(ref_forced.mel.transpose(1, 2)).numpy()
        got = oa(**_arrays(item), durations=forced.numpy())
        assert np.array_equal(got.durations, forced.numpy())
        diff = got.mel - ref_forced.mel.numpy()
        assert float(np.abs(diff).max()) <= TOL["mel_max_abs"]
        wav = ov(ref_forced.mel.transpose(1, 2).numpy())
        assert wav.dtype == np.float32 and wav.shape == wav_ref.shape
        assert wav.shape[-1] == got.frames * ov.hop_length
        assert float(np.abs(wav - wav_ref).max()) <= TOL["wav_max_abs"]


def test_optimized_config_exports_and_agrees(tiny, inputs):
    original = tiny["acoustic"]
    fast = build_acoustic(dataclasses.replace(original.cfg, optimized=True))
    fast.load_state_dict(optimized_state(original.state_dict(), fast.state_dict()), strict=True)
    fast.eval()
    graphs, meta = onnx_export.export(fast, tiny["vocoder"])
    result = onnx_export.agreement(fast, tiny["vocoder"], *_runtime(graphs, meta), inputs[:3])
    assert result["durations_differ"] == 0
    _within(result)


def test_modelscope_fixture_voice_exports_and_agrees():
    from variants.modelscope import build_voice, load_voice

    voice = load_voice(require_kantts_small())
    acoustic, vocoder = build_voice(voice)
    symbols = symbol_table({"model": {"factory": REFERENCE_FACTORY, "config": voice.model_config}})
    assert symbols is not None
    graphs, meta = onnx_export.export(acoustic, vocoder)
    items = _sentences(symbols)[:3]
    result = onnx_export.agreement(acoustic, vocoder, *_runtime(graphs, meta), items)
    assert result["n"] == 3 and result["durations_differ"] == 0
    _within(result)


def test_graph_optimization_levels_and_options(tiny, inputs):
    item = _arrays(inputs[0])
    base = ort.OrtAcoustic(tiny["graphs"], tiny["meta"], threads=1)(**item)
    plain = ort.OrtAcoustic(tiny["graphs"], tiny["meta"], threads=None, graph_optimization="disable")(**item)
    assert np.array_equal(plain.durations, base.durations)
    assert float(np.abs(plain.mel - base.mel).max()) <= TOL["mel_max_abs"]
    assert set(ort.GRAPH_OPTIMIZATION) == {"disable", "basic", "extended", "all"}
    options = ort.session_options(2, "basic")
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    with pytest.raises(ValueError, match="graph_optimization"):
        ort.session_options(1, "max")
    with pytest.raises(ValueError, match="threads"):
        ort.session_options(-1)
    assert set(ort.versions()) == {"onnxruntime", "numpy", "providers"}
    assert "CPUExecutionProvider" in ort.versions()["providers"]


def test_ort_raises_what_sambert_raises(tiny, tiny_runtime, inputs):
    oa = tiny_runtime[0]
    item = _arrays(inputs[0])
    zeros = np.zeros_like(item["sy"])
    with pytest.raises(ValueError, match="0 frames"):
        oa(**item, durations=zeros)
    with pytest.raises(ValueError, match="max_frames"):
        oa(**item, durations=zeros + tiny["acoustic"].cfg.max_frames)
    with pytest.raises(ValueError, match=">= 0"):
        oa(**item, durations=zeros - 1)
    with pytest.raises(ValueError, match="shape"):
        oa(**item, durations=zeros[:, :-1])
    with pytest.raises(ValueError, match=r"\[1, phones>=1\]"):
        oa(**{k: np.concatenate([v, v]) for k, v in item.items()})
    with pytest.raises(ValueError, match="outside the table"):
        oa(**{**item, "sy": item["sy"] + 10_000})


# ------------------------------------------------------------------------------------------ quantization


def test_quantize_matmul_by_default_and_conv_when_asked(tiny, inputs):
    graphs, meta = tiny["graphs"], tiny["meta"]
    q, qmeta = onnx_export.quantize(graphs, meta)
    assert qmeta["quantized"]["component"] == "acoustic" and qmeta["quantized"]["weight_type"] == "QInt8"
    assert qmeta["quantized"]["ops"] == ["MatMul", "Gemm"] and meta["quantized"] is None  # input untouched
    ops = {name: onnx_export.graph_op_types(q[name]) for name in ort.GRAPHS}
    assert not any("ConvInteger" in o for o in ops.values())
    for name in ("text", "duration_step", "memory", "decoder_step"):
        assert "MatMulInteger" in ops[name] or "DynamicQuantizeMatMul" in ops[name], (name, ops[name])
    assert q["vocoder"] == graphs["vocoder"]
    for name in ort.GRAPHS:
        assert qmeta["graphs"][name]["bytes"] == len(q[name])
    assert sum(len(q[n]) for n in ort.ACOUSTIC_GRAPHS) < sum(len(graphs[n]) for n in ort.ACOUSTIC_GRAPHS)
    result = onnx_export.agreement(tiny["acoustic"], tiny["vocoder"], *_runtime(q, qmeta), inputs[:3])
    assert 0 < result["mel_rel_rms"] <= INT8_REL_RMS

    qc, qcmeta = onnx_export.quantize(graphs, meta, component="both", ops=("MatMul", "Gemm", "Conv"))
    assert qcmeta["quantized"]["component"] == "both"
    for name in ("text", "postnet", "vocoder"):
        assert "ConvInteger" in onnx_export.graph_op_types(qc[name]), name
    result = onnx_export.agreement(tiny["acoustic"], tiny["vocoder"], *_runtime(qc, qcmeta), inputs[:1])
    assert result["mel_rel_rms"] <= INT8_REL_RMS
    with pytest.raises(ValueError, match="component"):
        onnx_export.quantize(graphs, meta, component="decoder")


# ------------------------------------------------------------------------------------------ export errors


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_export_refuses_torch_quantized_and_non_reference_models(tiny):
    quantized = torch.ao.quantization.quantize_dynamic(
        tiny["acoustic"], {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8
    )
    with pytest.raises(ExportError, match=r"'encoder\.layers\.0\.attn\.qkv'.*reference fp32 architecture"):
        onnx_export.export(quantized, tiny["vocoder"])
    with pytest.raises(ExportError, match="not the reference HifiGan.*reference fp32"):
        onnx_export.export(tiny["acoustic"], torch.nn.Conv1d(80, 1, 1))


def test_export_error_names_the_failing_module():
    acoustic, vocoder = reference(get_preset("tiny"), seed=0)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported here")

    acoustic.decoder.layers[1].ffn.forward = broken
    with pytest.raises(ExportError, match=r"ONNX export of 'decoder\.layers\.1\.ffn' \(decoder_step\) "
                                          r"failed: RuntimeError: unsupported here"):
        onnx_export.export(acoustic, vocoder)
    del acoustic.decoder.layers[1].ffn.forward
    vocoder.conv_post.forward = broken
    with pytest.raises(ExportError, match=r"'vocoder\.conv_post' \(vocoder\)"):
        onnx_export.export(acoustic, vocoder)


# ------------------------------------------------------------------------------------------ on the device


def test_device_loads_and_runs_an_artifact_without_torch(tiny, tiny_runtime, inputs, tmp_path):
    for name, data in tiny["graphs"].items():
        (tmp_path / f"{name}.onnx").write_bytes(data)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 2, "runtime": "onnxruntime",
                                                      "onnx": tiny["meta"]}))
    item = {k: v.tolist() for k, v in inputs[0].items()}
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        import devices.ondevice.ort as o
        acoustic, vocoder = o.load(sys.argv[1], threads=1)
        ids = {k: np.array(v, dtype=np.int64) for k, v in json.loads(sys.argv[2]).items()}
        out = acoustic(**ids)
        wav = vocoder(out.mel.transpose(0, 2, 1))
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print(json.dumps({"durations": out.durations.tolist(), "frames": out.frames,
                          "mel": out.mel.tolist(), "wav_shape": list(wav.shape),
                          "hop": vocoder.hop_length, "torch": [m for m in loaded if sys.modules[m]]}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(item)],
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["torch"] == []
    ref = tiny_runtime[0](**_arrays(inputs[0]))
    assert got["durations"] == ref.durations.tolist() and got["frames"] == ref.frames
    assert float(np.abs(np.array(got["mel"], dtype=np.float32) - ref.mel).max()) <= 1e-6
    assert got["wav_shape"] == [1, 1, ref.frames * got["hop"]]
    acoustic = ort.load_component(tmp_path, "acoustic", threads=1)
    assert isinstance(acoustic, ort.OrtAcoustic) and acoustic.providers == ["CPUExecutionProvider"]


def test_load_names_what_is_missing(tiny, tmp_path):
    from devices.ondevice.errors import ArtifactError

    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="no 'onnx' section"):
        ort.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1, "onnx": tiny["meta"]}))
    with pytest.raises(ArtifactError, match=r"text\.onnx: missing"):
        ort.load(tmp_path)
