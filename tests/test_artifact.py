"""The artifact format: atomic save, sha256 verification, versioning, fresh-process bit-identical load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
from variants import artifact as art
from variants.errors import ArtifactError
from variants.quantize import quantize, quantized_module_names
from variants.recipes import BUILTIN_VARIANTS

CFG = get_preset("tiny")


def random_inputs(n_phones=17, emotion=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = {
        k: torch.randint(0, hi, (1, n_phones), generator=g)
        for k, hi in (("sy", 147), ("tone", 10), ("syllable_flag", 8), ("word_segment", 8))
    }
    ids["emotion"] = torch.full((1, n_phones), emotion)
    ids["speaker"] = torch.zeros(1, n_phones, dtype=torch.long)
    return ids


def outputs(acoustic, vocoder):
    torch.set_num_threads(1)
    with torch.inference_mode():
        out = acoustic(**random_inputs())
        return {"mel": out.mel, "durations": out.durations, "wav": vocoder(out.mel.transpose(1, 2))}


@pytest.fixture(scope="module")
def models():
    return build_acoustic(CFG.acoustic, seed=0), build_vocoder(CFG.vocoder, seed=0)


@pytest.fixture()
def saved(tmp_path, models):
    acoustic, vocoder = models
    qa, qv, transform = quantize(acoustic, vocoder, BUILTIN_VARIANTS["quantized"].steps[0].args)
    a = art.save_artifact(
        tmp_path / "quantized",
        qa,
        qv,
        CFG.to_dict(),
        [transform],
        {"name": "quantized", "recipe": BUILTIN_VARIANTS["quantized"].to_list()},
        samples={"happy": b"RIFF....", "sad": b"RIFF...."},
    )
    return a, qa, qv


def test_layout_and_manifest(saved):
    a, qa, _ = saved
    names = sorted(p.name for p in a.path.iterdir())
    assert names == ["acoustic.pt", "config.json", "manifest.json", "samples", "vocoder.pt"]
    m = art.read_manifest(a.path)
    assert m["format_version"] == art.ARTIFACT_FORMAT_VERSION == 1
    assert m["name"] == "quantized" and m["recipe"][0]["step"] == "quantize"
    assert set(m["files"]) == {"config.json", "acoustic.pt", "vocoder.pt"}
    assert m["content_hash"] == art.content_hash(m["files"])
    assert m["sizes"]["acoustic"] == (a.path / "acoustic.pt").stat().st_size
    assert m["params"]["acoustic"] == sum(p.numel() for p in build_acoustic(CFG.acoustic).parameters())
    assert m["samples"] == {"happy": "samples/happy.wav", "sad": "samples/sad.wav"}
    assert m["torch_version"] == torch.__version__
    cfg = json.loads((a.path / "config.json").read_text())
    assert cfg["model"] == {"factory": "devices.ondevice.models:reference", "config": CFG.to_dict()}
    assert cfg["transforms"] == [
        {"op": "quantize_dynamic", "component": "acoustic", "dtype": "qint8", "modules": ["Linear", "LSTM"]}
    ]
    assert not [p for p in a.path.parent.iterdir() if p.name.startswith(".")]  # no temporary dirs left


def test_load_in_process_restores_structure_and_outputs(saved):
    a, qa, qv = saved
    loaded = art.load_artifact(a.path)
    assert quantized_module_names(loaded.acoustic) == quantized_module_names(qa) != {}
    expected, got = outputs(qa, qv), outputs(loaded.acoustic, loaded.vocoder)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    vocoder_only = art.load_component(a.path, "vocoder")
    assert torch.equal(outputs(qa, vocoder_only)["wav"], expected["wav"])


def test_fresh_process_load_is_bit_identical(saved, tmp_path):
    a, qa, qv = saved
    expected = outputs(qa, qv)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_artifact import outputs
        from variants.artifact import load_artifact
        loaded = load_artifact(sys.argv[1])
        torch.save(outputs(loaded.acoustic, loaded.vocoder), sys.argv[2])
    """)
    out_file = tmp_path / "fresh.pt"
    subprocess.run([sys.executable, "-c", script, str(a.path), str(out_file)], check=True, timeout=120)
    got = torch.load(out_file)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_saving_is_deterministic_and_replaces_atomically(tmp_path, models):
    acoustic, vocoder = models
    first = art.save_artifact(tmp_path / "a", acoustic, vocoder, CFG.to_dict())
    second = art.save_artifact(tmp_path / "a", acoustic, vocoder, CFG.to_dict(), manifest_extra={"name": "x"})
    assert first.content_hash == second.content_hash
    assert art.read_manifest(tmp_path / "a")["name"] == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_update_manifest_keeps_the_content_hash(saved):
    a, _, _ = saved
    m = art.update_manifest(a.path, quality={"mcd_db": 1.0})
    assert m["content_hash"] == a.content_hash and art.read_manifest(a.path)["quality"] == {"mcd_db": 1.0}
    with pytest.raises(ValueError):
        art.update_manifest(a.path, content_hash="0" * 64)


def test_unknown_format_version_says_how_to_fix(saved):
    a, _, _ = saved
    path = a.path / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"format_version 99 is not supported.*rebuild the artifact"):
        art.load_artifact(a.path)


def test_corrupt_weights_are_detected(saved):
    a, _, _ = saved
    with open(a.path / "acoustic.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match=r"acoustic.pt: sha256 .* does not match"):
        art.load_component(a.path, "acoustic")
    art.load_component(a.path, "vocoder")  # the other component is fine


def test_missing_directory_and_unknown_component(tmp_path, saved):
    with pytest.raises(ArtifactError, match="missing"):
        art.load_artifact(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="unknown component"):
        art.load_component(saved[0].path, "postnet")


@pytest.mark.parametrize("modern", [True, False])
def test_fp32_loading_maps_the_file_and_keeps_the_loaded_tensors(tmp_path, models, monkeypatch, modern):
    """torch >= 2.1: an fp32 component is built on the meta device and takes the memory-mapped tensors as
    they are (no random initialisation, no copy); an older torch reads the file and copies, with the same
    result."""
    from devices.ondevice import load

    if not modern:
        monkeypatch.setattr(load, "MMAP", False)
        monkeypatch.setattr(load, "ASSIGN", False)
    acoustic, vocoder = models
    a = art.save_artifact(tmp_path / "original", acoustic, vocoder, CFG.to_dict(), (), {"name": "original"})
    loaded = art.load_artifact(a.path)
    tensors = [*loaded.acoustic.parameters(), *loaded.acoustic.buffers(), *loaded.vocoder.parameters()]
    assert not any(t.is_meta for t in tensors)
    expected, got = outputs(acoustic, vocoder), outputs(loaded.acoustic, loaded.vocoder)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    if modern and load.MMAP and load.ASSIGN:
        # the loaded tensor is the module's parameter (assign), not a copy into a freshly initialised one
        state = load._torch_load(a.path / "vocoder.pt", quantized=False)
        assert torch.equal(state["conv_pre.conv.weight"], loaded.vocoder.conv_pre.conv.weight)
        assert load._bare_structure({"factory": "devices.ondevice.models:reference", "config": CFG.to_dict()},
                                    "vocoder").conv_pre.conv.weight.is_meta


def test_a_file_missing_a_tensor_of_the_structure_is_an_artifact_error(tmp_path, models):
    acoustic, vocoder = models
    a = art.save_artifact(tmp_path / "original", acoustic, vocoder, CFG.to_dict(), (), {"name": "original"})
    state = torch.load(a.path / "vocoder.pt")
    state.pop("conv_post.conv.bias")
    torch.save(state, a.path / "vocoder.pt")
    with pytest.raises(ArtifactError, match="vocoder.pt: does not match the structure in config.json"):
        art.load_component(a.path, "vocoder", verify=False)
