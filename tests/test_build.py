"""build_variants and `edgebench build` on the tiny preset: artifacts, parents, cache, samples, quality."""

import json

import pytest
import soundfile as sf

from devices.ondevice.frontend import EMOTIONS
from harness.cli import main
from variants.artifact import load_artifact, read_config
from variants.build import build_variants
from variants.errors import RecipeError
from variants.quantize import quantized_module_names
from variants.recipes import parse_recipe

CORE = ("original", "pruned", "quantized", "pruned+quantized")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    messages = []
    first = build_variants(
        preset="tiny",
        variants=CORE,
        out=root / "out",
        cache_dir=root / "cache",
        quality_sentences=1,
        progress=messages.append,
    )
    return root, {b.name: b for b in first}, messages


def test_artifacts_sizes_params_and_parents(built):
    root, b, messages = built
    assert [b[n].path.name for n in CORE] == ["original", "pruned", "quantized", "pruned-quantized"]
    assert not any(v.cached for v in b.values())
    m = {n: v.manifest for n, v in b.items()}
    size = {n: m[n]["sizes"]["acoustic"] for n in CORE}
    params = {n: m[n]["params"]["acoustic"] for n in CORE}
    assert params["pruned"] < 0.85 * params["original"] and params["quantized"] == params["original"]
    assert size["pruned"] < size["original"] and size["quantized"] < size["original"]
    assert size["pruned+quantized"] == min(size.values())
    assert len({m[n]["sizes"]["vocoder"] for n in CORE}) == 1  # HifiGan untouched
    # pruned+quantized is built from the pruned artifact; single-step variants from the original
    assert m["pruned+quantized"]["parent"] == m["pruned"]["content_hash"]
    assert m["pruned"]["parent"] == m["quantized"]["parent"] == m["original"]["content_hash"]
    assert m["original"]["parent"] is None and m["original"]["recipe"] == []
    assert [s["step"] for s in m["pruned+quantized"]["recipe"]] == ["prune", "quantize"]
    assert m["pruned+quantized"]["name"] == "pruned+quantized" and m["original"]["preset"] == "tiny"
    assert sum("building the original" in x for x in messages) == 1  # the parent was built once
    cfg = read_config(b["pruned+quantized"].path)
    assert cfg["model"]["config"]["acoustic"]["enc_heads"] == [2, 1]
    assert cfg["transforms"][0]["op"] == "quantize_dynamic"
    report = m["pruned"]["build"]["step_report"]["encoder_decoder_params"]
    assert 0.4 < 1 - report["after"] / report["before"] < 0.65


def test_quality_proxies_in_the_manifest(built):
    _, b, _ = built
    q = {n: v.manifest["quality"] for n, v in b.items()}
    assert q["original"] == {"mel_l1": 0.0, "mcd_db": 0.0, "emotion_id_accuracy": 1.0, "n": 7}
    assert 0 < q["quantized"]["mcd_db"] < q["pruned"]["mcd_db"]
    for name in CORE:
        assert set(q[name]) == {"mel_l1", "mcd_db", "emotion_id_accuracy", "n"}
        assert 0.0 <= q[name]["emotion_id_accuracy"] <= 1.0


def test_samples_one_wav_per_emotion_outside_the_content_hash(built):
    _, b, _ = built
    m = b["pruned"].manifest
    assert sorted(m["samples"]) == sorted(EMOTIONS)
    assert "samples/happy.wav" not in m["files"]
    info = sf.info(str(b["pruned"].path / m["samples"]["happy"]))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames > 0 and m["sample_text"]


def test_loaded_pruned_quantized_is_quantized(built):
    _, b, _ = built
    loaded = load_artifact(b["pruned+quantized"].path)
    assert "encoder.layers.1.attn.qkv" in quantized_module_names(loaded.acoustic)
    assert loaded.acoustic.encoder.layers[1].attn.n_heads == 1


def test_second_build_is_a_cache_hit(built):
    root, b, _ = built
    messages = []
    again = build_variants(
        preset="tiny",
        variants=CORE,
        out=root / "out",
        cache_dir=root / "cache",
        quality_sentences=1,
        progress=messages.append,
    )
    assert all(v.cached for v in again)
    assert [v.manifest["content_hash"] for v in again] == [b[n].manifest["content_hash"] for n in CORE]
    assert not [x for x in messages if "step" in x or "building" in x or "samples" in x]
    # a fresh output directory is filled from the cache, nothing rebuilt
    other = build_variants(
        preset="tiny",
        variants=["pruned+quantized"],
        out=root / "out2",
        cache_dir=root / "cache",
        quality_sentences=1,
    )
    assert other[0].cached and (root / "out2" / "pruned-quantized" / "acoustic.pt").exists()


def test_a_different_seed_is_a_different_artifact(built):
    root, b, _ = built
    other = build_variants(
        preset="tiny",
        variants=["original"],
        out=root / "seed1",
        cache_dir=root / "cache",
        seed=1,
        quality=False,
    )
    assert not other[0].cached and other[0].manifest["quality"] is None
    assert other[0].manifest["content_hash"] != b["original"].manifest["content_hash"]


def test_bad_recipe_is_rejected_before_any_work(tmp_path):
    greedy = parse_recipe([{"step": "prune", "heads": 0.8}], "edgebench.toml: variants.greedy", name="greedy")
    with pytest.raises(RecipeError, match="would remove every head"):
        build_variants(
            preset="tiny",
            variants=["original", "greedy"],
            out=tmp_path / "out",
            cache_dir=tmp_path / "cache",
            recipes={"greedy": greedy},
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(RecipeError, match="unknown variant 'shrunk'"):
        build_variants(preset="tiny", variants=["shrunk"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unstructured_and_distilled(built):
    root, b, _ = built
    quick = parse_recipe([{"step": "distill", "steps": 4, "sentences": 2}], "test", name="quick-distill")
    got = build_variants(
        preset="tiny",
        variants=["unstructured", "quick-distill"],
        out=root / "out",
        cache_dir=root / "cache",
        recipes={"quick-distill": quick},
        quality_sentences=1,
    )
    unstructured, distilled = got
    orig = b["original"].manifest
    # the article's point: same size on disk, same parameter count
    assert (
        abs(unstructured.manifest["sizes"]["acoustic"] - orig["sizes"]["acoustic"])
        < 0.01 * orig["sizes"]["acoustic"]
    )
    assert unstructured.manifest["params"] == orig["params"]
    report = distilled.manifest["build"]["step_report"]
    assert report["kept_layers"] == {"encoder": [0], "decoder": [0]} and report["parallel_decoder"]
    assert distilled.manifest["params"]["acoustic"] < orig["params"]["acoustic"]
    assert len(read_config(distilled.path)["model"]["config"]["acoustic"]["dec_heads"]) == 1
    assert distilled.manifest["quality"]["n"] == 7


def test_cli_build_prints_a_table(built, capsys, monkeypatch):
    root, _, _ = built
    monkeypatch.chdir(root)  # no ./edgebench.toml here
    code = main(
        [
            "build",
            "--preset",
            "tiny",
            "--variants",
            "original,quantized",
            "--out",
            str(root / "out"),
            "--cache-dir",
            str(root / "cache"),
            "--no-quality",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "quantized" in out and "cached" in out and "yes" in out
    assert "quantized" in err  # progress on stderr


def test_cli_build_reads_user_recipes_from_the_config(built, tmp_path, capsys, monkeypatch):
    root, b, _ = built
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "edgebench.toml"
    config.write_text(
        'preset = "tiny"\nvariants = ["original", "light"]\n\n'
        '[recipes.light]\nsteps = [{step = "prune", heads = 0.0, ffn = 0.25}, {step = "quantize"}]\n'
    )
    code = main(
        [
            "build",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
            "--cache-dir",
            str(root / "cache"),
            "--no-quality",
        ]
    )
    assert code == 0 and "light" in capsys.readouterr().out
    light = json.loads((tmp_path / "out" / "light" / "manifest.json").read_text())
    assert [s["step"] for s in light["recipe"]] == ["prune", "quantize"]
    assert light["params"]["acoustic"] < b["original"].manifest["params"]["acoustic"]
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'preset = "tiny"\nvariants = ["x"]\n[recipes.x]\nsteps = [{step = "quantize"}, {step = "prune"}]\n'
    )
    assert main(["build", "--config", str(bad), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: recipes.x: step 2 ('prune') comes after 'quantize'" in err
    assert not (tmp_path / "out2").exists() and not (tmp_path / ".edgebench").exists()


def test_cli_bad_variant_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["build", "--preset", "tiny", "--variants", "original,tiny-pruned", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("edgebench: error: unknown variant 'tiny-pruned'")
    assert len(err.splitlines()) == 1


def test_manifest_is_plain_json(built):
    _, b, _ = built
    data = json.loads((b["quantized"].path / "manifest.json").read_text())
    assert data["code_version"] and data["torch_version"] and data["built_at"]


def test_listening_samples_are_written_at_a_safe_level():
    """Random weights give a near full-scale buzz: samples are scaled to peak <= -6 dBFS and RMS <= -20 dBFS
    (a quiet signal is not blown up beyond either)."""
    import io

    import numpy as np
    import soundfile as sf
    import torch

    from variants.build import SAMPLE_PEAK, SAMPLE_RMS, wav_bytes

    buzz = torch.sign(torch.sin(torch.arange(16000) * 0.3)) * 0.9
    quiet = torch.sin(torch.arange(16000) * 0.05) * 0.01
    for wav in (buzz, quiet):
        data, rate = sf.read(io.BytesIO(wav_bytes(wav)))
        assert rate == 16000
        assert np.abs(data).max() <= SAMPLE_PEAK + 1e-3
        assert np.sqrt(np.mean(data**2)) <= SAMPLE_RMS + 1e-3
    data, _ = sf.read(io.BytesIO(wav_bytes(buzz)))
    assert np.sqrt(np.mean(data**2)) > 0.05  # still audible
