"""User models through ``model = "module:factory"``: build, artifact config, fresh-process load."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from devices.ondevice.frontend import text_to_ids
from variants.artifact import load_artifact, read_config
from variants.build import build_variants
from variants.errors import RecipeError, VariantsError
from variants.quantize import quantized_module_names

HERE = Path(__file__).resolve().parent
FACTORY = "plugin_model:make"


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def outputs(loaded):
    torch.set_num_threads(1)
    inputs = text_to_ids("你好，世界。", emotion="sad").to_tensors()
    with torch.inference_mode():
        out = loaded.acoustic(**inputs)
        return {"mel": out.mel, "wav": loaded.vocoder(out.mel.transpose(1, 2))}


def test_plugin_model_builds_and_loads_bit_identically_in_a_fresh_process(tmp_path):
    built = build_variants(
        preset="tiny",
        variants=["original", "quantized", "unstructured"],
        out=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        model_factory=FACTORY,
        model_config={"hidden": 20},
        quality_sentences=1,
    )
    by = {b.name: b for b in built}
    cfg = read_config(by["quantized"].path)
    assert cfg["model"] == {"factory": FACTORY, "config": {"hidden": 20}}
    assert by["quantized"].manifest["sizes"]["acoustic"] < by["original"].manifest["sizes"]["acoustic"]
    assert by["quantized"].manifest["quality"]["n"] == 7
    assert by["unstructured"].manifest["build"]["step_report"]["sparsity"] > 0.39
    loaded = load_artifact(by["quantized"].path)
    assert set(quantized_module_names(loaded.acoustic).values()) == {"Linear", "LSTM"}
    expected = outputs(loaded)
    script = textwrap.dedent("""
        import sys, torch
        from test_plugin import outputs
        from variants.artifact import load_artifact
        torch.save(outputs(load_artifact(sys.argv[1])), sys.argv[2])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(
        [sys.executable, "-c", script, str(by["quantized"].path), str(tmp_path / "o.pt")],
        check=True,
        timeout=120,
        env=env,
    )
    got = torch.load(tmp_path / "o.pt")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_structural_steps_need_the_reference_structure(tmp_path):
    with pytest.raises(RecipeError, match="needs the reference Sambert structure"):
        build_variants(variants=["original", "pruned"], out=tmp_path / "out", model_factory=FACTORY)
    assert not (tmp_path / "out").exists()


def test_a_plugin_model_is_refused_on_onnxruntime_before_anything_is_built(tmp_path):
    with pytest.raises(VariantsError, match="onnxruntime needs the reference Sambert-HifiGan.*plugin_model"):
        build_variants(variants=["original"], out=tmp_path / "out", model_factory=FACTORY,
                       runtimes=("torch", "onnxruntime"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("plugin_model", "expected 'package.module:callable'"),
        ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
        ("plugin_model:nope", "has no attribute 'nope'"),
        ("plugin_model:make_broken", "vocoder(mel.transpose(1, 2)) must return audio [1, 1, samples]"),
        ("plugin_model:make_not_a_pair", "must return (acoustic, vocoder)"),
    ],
)
def test_bad_factories_are_expected_errors(tmp_path, spec, needle):
    with pytest.raises(VariantsError) as exc:
        build_variants(variants=["original"], out=tmp_path / "out", model_factory=spec)
    assert needle in str(exc.value) and spec.split(":")[0] in str(exc.value)
    assert not (tmp_path / "out").exists()
