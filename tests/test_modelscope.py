"""Loading a ModelScope Sambert-HifiGan model directory, checked against the original code's outputs.

The kantts-small fixture (shared/fixtures/kantts-small) holds random weights of the original KAN-TTS
implementation in ModelScope's layout and what that code computes for fixed inputs (golden/). Tolerances
are the fixture README's: integer outputs exact, float outputs within 1e-4.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import KANTTS_SMALL, require_kantts_small

from devices.ondevice.models import ModelConfig, build_acoustic
from variants.errors import ModelDirError
from variants.modelscope import (
    acoustic_name,
    build_voice,
    checkpoint_index,
    load_voice,
    original_acoustic_name,
    vocoder_name,
)
from variants.optimize import optimized_state

TOL = 1e-4
CASES = ("short", "medium", "long")


@pytest.fixture(scope="module")
def voice():
    return load_voice(require_kantts_small())


@pytest.fixture(scope="module")
def models(voice):
    acoustic, vocoder = build_voice(voice)
    cfg = ModelConfig.from_dict(voice.model_config)
    fast = build_acoustic(dataclasses.replace(cfg.acoustic, optimized=True))
    fast.load_state_dict(optimized_state(voice.acoustic_state, fast.state_dict()), strict=True)
    return {"original": acoustic, "optimized": fast.eval(), "vocoder": vocoder}


@pytest.fixture(scope="module")
def golden():
    require_kantts_small()
    return {
        "acoustic": torch.load(KANTTS_SMALL / "golden" / "acoustic.pt", weights_only=True),
        "vocoder": torch.load(KANTTS_SMALL / "golden" / "vocoder.pt", weights_only=True),
    }


def _inputs(case_inputs):
    ling = case_inputs["inputs_ling"]
    return {
        "sy": ling[..., 0],
        "tone": ling[..., 1],
        "syllable_flag": ling[..., 2],
        "word_segment": ling[..., 3],
        "emotion": case_inputs["inputs_emotion"],
        "speaker": case_inputs["inputs_speaker"],
    }


def _compare(out, gold, where):
    for key, expected in gold.items():
        if key == "mel":
            got = out["postnet_outputs"][0, : int(out["LR_length_rounded"][0])]
        else:
            assert key in out, f"{where}: no {key}"
            got = out[key]
        if isinstance(expected, int):
            assert int(got) == expected, f"{where}: {key} {got} != {expected}"
        elif expected.dtype == torch.int64:
            assert torch.equal(got, expected), f"{where}: {key} differs"
        else:
            assert got.shape == expected.shape, f"{where}: {key} shape {tuple(got.shape)}"
            diff = float((got - expected).abs().max())
            assert diff <= TOL, f"{where}: {key} differs by {diff:.2e}"


@pytest.mark.parametrize("impl", ["original", "optimized"])
@pytest.mark.parametrize("mode", ["forced", "predicted"])
@pytest.mark.parametrize("case", CASES)
def test_acoustic_reproduces_the_original_code(models, golden, case, mode, impl):
    torch.set_num_threads(1)
    data = golden["acoustic"][case]
    forced = data["forced"]["durations"] if mode == "forced" else None
    with torch.inference_mode():
        out = models[impl].run(**_inputs(data["inputs"]), durations=forced)
    _compare(out, data[mode], f"{case}/{mode}/{impl}")


@pytest.mark.parametrize("name", ["synthetic", "from_acoustic_medium_forced"])
def test_vocoder_reproduces_the_original_code(models, golden, name):
    data = golden["vocoder"][name]
    with torch.inference_mode():
        wav = models["vocoder"](data["mel"])
    assert wav.shape == data["wav"].shape
    assert float((wav - data["wav"]).abs().max()) <= TOL


def test_frontend_tokens_through_the_voice_dictionaries_give_the_golden_ids(voice, golden):
    from devices.ondevice.symbols import SymbolTable, encode_tokens, parse_token_string

    table = SymbolTable.from_dict(voice.model_config["symbols"], "test")
    for case in CASES:
        inputs = golden["acoustic"][case]["inputs"]
        ids = encode_tokens(table, parse_token_string(inputs["symbols"]))
        for stream, expected in inputs["encoded_with_eos"].items():
            assert ids[stream] == expected.tolist(), f"{case}: {stream}"


def test_loader_reads_dims_tables_and_provenance(voice):
    ac = voice.model_config["acoustic"]
    assert (ac["n_sy"], ac["n_tone"], ac["n_emotions"], ac["n_speakers"]) == (147, 10, 36, 9)
    assert ac["enc_heads"] == [2, 2] and ac["enc_d_model"] == 32 and ac["embedding_dim"] == 64
    assert ac["max_len"] == 800 and ac["optimized"] is False
    assert voice.model_config["vocoder"]["channels"] == 64
    assert voice.source["voice"] == "zhitian_emo"
    assert voice.source["acoustic_checkpoint"].endswith("am/ckpt/checkpoint_0.pth")
    assert len(voice.source["acoustic_sha256"]) == 64 and len(voice.source["vocoder_sha256"]) == 64
    # weight norm folded: plain weights only
    assert not any(k.endswith(("weight_g", "weight_v")) for k in voice.vocoder_state)


def test_name_mapping_round_trips():
    for original in (
        "text_encoder.ling_enc.fft.7.slf_attn.w_qkv.weight",
        "mel_decoder.mel_dec.pnca.11.pnca_attn.fc_h.bias",
        "variance_adaptor.energy_predictor.fsmn.memory_block_lst.2.conv_dw.weight",
        "variance_adaptor.dur_position_encoder.inv_timescales",
    ):
        assert original_acoustic_name(acoustic_name(original)) == original
    assert acoustic_name("text_encoder.ws_emb.weight") == "encoder.word_segment_emb.weight"
    assert vocoder_name("repeat_upsamples.3.2.conv1d.bias") == "repeat_ups.3.conv.conv.bias"
    assert acoustic_name("something.else") is None


def test_checkpoint_scan_rule():
    assert checkpoint_index("checkpoint_0.pth") == 0
    assert checkpoint_index("checkpoint_120000.pth") == 120000
    assert checkpoint_index("ckpt_5.pth") is None
    assert checkpoint_index("checkpoint_1.pt") is None
    assert checkpoint_index("checkpoint.pth") is None  # not longer than 15 characters


# ----------------------------------------------------------------------------------- bad directories


@pytest.fixture
def model_dir(tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(require_kantts_small(), dest)
    return dest


def _voice_dir(model_dir: Path) -> Path:
    return model_dir / "voices" / "zhitian_emo"


def _expect(model_dir, match, voice=None):
    with pytest.raises(ModelDirError, match=match) as info:
        load_voice(model_dir, voice)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_largest_checkpoint_index_wins(model_dir):
    ckpt = _voice_dir(model_dir) / "am" / "ckpt"
    shutil.copy(ckpt / "checkpoint_0.pth", ckpt / "checkpoint_10.pth")
    (ckpt / "checkpoint_9.pth").write_bytes(b"not a checkpoint")  # 9 < 10 numerically, not as text
    assert load_voice(model_dir).source["acoustic_checkpoint"].endswith("checkpoint_10.pth")


def test_voice_selection(model_dir):
    shutil.copytree(_voice_dir(model_dir), model_dir / "voices" / "second")
    (model_dir / "voices" / "voices.json").write_text(json.dumps({"voices": ["zhitian_emo", "second"]}))
    assert load_voice(model_dir).source["voice"] == "zhitian_emo"  # the first is the default
    assert load_voice(model_dir, "second").source["voice"] == "second"
    msg = _expect(model_dir, "no voice 'nope'", voice="nope")
    assert "voices.json" in msg and "zhitian_emo, second" in msg


def test_missing_voices_json(model_dir):
    (model_dir / "voices" / "voices.json").unlink()
    _expect(model_dir, "voices.json: missing")


def test_missing_voice_folder(model_dir):
    shutil.rmtree(_voice_dir(model_dir))
    _expect(model_dir, r"zhitian_emo: missing \(voices.json lists")


def test_no_checkpoint(model_dir):
    ckpt = _voice_dir(model_dir) / "voc" / "ckpt"
    (ckpt / "checkpoint_1.pth").rename(ckpt / "generator.pth")
    _expect(model_dir, r"voc/ckpt: no checkpoint")


def test_truncated_checkpoint(model_dir):
    path = _voice_dir(model_dir) / "am" / "ckpt" / "checkpoint_0.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(model_dir, r"checkpoint_0.pth: not a readable torch checkpoint")


def test_a_file_that_is_not_a_checkpoint(model_dir):
    (_voice_dir(model_dir) / "am" / "ckpt" / "checkpoint_7.pth").write_text("hello")
    _expect(model_dir, r"checkpoint_7.pth: not a readable torch checkpoint")


def test_checkpoint_without_model_key(model_dir):
    path = _voice_dir(model_dir) / "am" / "ckpt" / "checkpoint_0.pth"
    torch.save({"steps": 0, "weights": {}}, path)
    _expect(model_dir, r"checkpoint\['model'\]: missing")


def test_key_mismatch_names_the_first_keys(model_dir):
    path = _voice_dir(model_dir) / "am" / "ckpt" / "checkpoint_0.pth"
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["model"]
    state.pop("mel_decoder.mel_dec.dec_out_proj.bias")
    torch.save(ckpt, path)
    _expect(model_dir, r"missing keys mel_decoder\.mel_dec\.dec_out_proj\.bias")
    state["mel_decoder.mel_dec.dec_out_proj.bias"] = torch.zeros(240)
    state["mel_decoder.mel_dec.pnca.2.pnca_attn.fc_x.weight"] = torch.zeros(32, 32)  # a third layer
    torch.save(ckpt, path)
    _expect(model_dir, r"unexpected keys mel_decoder\.mel_dec\.pnca\.2\.pnca_attn\.fc_x\.weight")
    state["discriminator.conv.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    _expect(model_dir, r"unexpected acoustic keys discriminator\.conv\.weight")


def test_config_dims_that_disagree_with_the_checkpoint(model_dir):
    path = _voice_dir(model_dir) / "am" / "config.yaml"
    path.write_text(path.read_text().replace("encoder_ffn_inner_dim: 64", "encoder_ffn_inner_dim: 48"))
    msg = _expect(model_dir, r"text_encoder\.ling_enc\.fft\.0\.pos_ffn\.w_1\.weight has shape \[64, 32, 3\]")
    assert "config.yaml" in msg and "[48, 32, 3]" in msg


def test_vocoder_config_that_disagrees(model_dir):
    path = _voice_dir(model_dir) / "voc" / "config.yaml"
    path.write_text(path.read_text().replace("channels: 64", "channels: 32", 1))
    _expect(model_dir, r"checkpoint_1\.pth: conv_pre\.conv1d\.weight has shape")


def test_missing_config_key(model_dir):
    path = _voice_dir(model_dir) / "am" / "config.yaml"
    path.write_text(path.read_text().replace("      decoder_num_heads: 2\n", ""))
    _expect(model_dir, r"am/config.yaml: Model\.KanTtsSAMBERT\.params\.decoder_num_heads: missing")


def test_unreadable_dictionary(model_dir):
    (_voice_dir(model_dir) / "dict" / "PinYin" / "PhoneSet.xml").write_text("<phoneSet><phone>")
    _expect(model_dir, r"PhoneSet\.xml")


def test_missing_dictionary(model_dir):
    (_voice_dir(model_dir) / "dict" / "PinYin" / "tonelist.txt").unlink()
    _expect(model_dir, r"tonelist\.txt")


def test_a_dictionary_whose_size_disagrees_with_the_embeddings(model_dir):
    path = _voice_dir(model_dir) / "dict" / "PinYin" / "tonelist.txt"
    path.write_text(path.read_text() + "6\n")  # one tone more than the checkpoint's table has rows
    _expect(model_dir, r"text_encoder\.tone_emb\.weight has shape \[10, 64\] but config\.yaml \(and the")


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not a directory"):
        load_voice(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------- recipes on a voice


def test_every_recipe_builds_from_the_model_directory(tmp_path):
    from variants.build import build_variants
    from variants.quantize import quantized_module_names

    names = ["original", "optimized", "pruned", "quantized", "pruned+quantized", "unstructured", "distilled"]
    built = build_variants(
        variants=names, out=tmp_path / "out", model_dir=require_kantts_small(), quality_sentences=1
    )
    by_name = {b.name: b for b in built}
    for b in built:
        source = b.manifest["source"]
        assert source["kind"] == "model_dir" and source["voice"] == "zhitian_emo"
        assert len(source["acoustic_sha256"]) == 64 and b.manifest["quality"]["n"] == 7
    assert by_name["optimized"].manifest["quality"]["mcd_db"] < 1e-3
    params = {name: b.manifest["params"]["acoustic"] for name, b in by_name.items()}
    assert params["pruned"] < params["original"] == params["optimized"]
    from variants.artifact import load_artifact

    # the symbol tables travel in the artifact; dynamic int8 reaches the Linear layers only
    loaded = load_artifact(by_name["quantized"].path)
    assert loaded.config["model"]["config"]["symbols"]["speaker"][0] == "F7"
    assert "encoder.layers.0.attn.qkv" in quantized_module_names(loaded.acoustic)
    assert "decoder.layers.0.ffn.w1" not in quantized_module_names(loaded.acoustic)  # a Conv1d there
