"""Structured pruning (heads and FFN channels really removed) and unstructured L1 pruning."""

import pytest
import torch

from devices.ondevice.models import ModelConfig, build_acoustic, get_preset
from variants import artifact as art
from variants.prune import encoder_decoder_params, prunable_modules, structured_prune, unstructured_prune
from variants.recipes import BUILTIN_VARIANTS, make_step

CFG = get_preset("tiny")
DEFAULT = BUILTIN_VARIANTS["pruned"].steps[0].args


def random_inputs(n_phones=15, emotion=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = {
        k: torch.randint(0, hi, (1, n_phones), generator=g)
        for k, hi in (("sy", 147), ("tone", 10), ("syllable_flag", 8), ("word_segment", 8))
    }
    ids["emotion"] = torch.full((1, n_phones), emotion)
    ids["speaker"] = torch.zeros(1, n_phones, dtype=torch.long)
    return ids


CALIBRATION = [random_inputs(seed=i, emotion=i) for i in range(3)]


def build(cfg_dict):
    return build_acoustic(ModelConfig.from_dict(cfg_dict).acoustic, seed=0)


@pytest.fixture(scope="module")
def original():
    return build_acoustic(CFG.acoustic, seed=0)


@pytest.fixture(scope="module")
def pruned(original):
    return structured_prune(original, CFG.to_dict(), DEFAULT, build, CALIBRATION)


def test_tensors_really_shrink_in_line_with_the_ratio(original, pruned):
    model, cfg, report = pruned
    ac = cfg["acoustic"]
    assert ac["enc_heads"] == [2, 1] and ac["dec_heads"] == [1, 1]  # first encoder attention protected
    assert ac["enc_ffn"] == [26, 26] and ac["dec_ffn"] == [26, 26]  # 64 - round(0.6 * 64)
    layer = model.encoder.layers[1].attn
    assert (
        layer.n_heads == 1 and layer.qkv.weight.shape == (3 * 16, 32) and layer.out.weight.shape == (32, 16)
    )
    pnca = model.decoder.layers[0]  # one head set: the shared query's self- and memory attention
    assert pnca.self_attn.qkv.weight.shape[0] == 3 * 16 and pnca.self_attn.out.weight.shape[1] == 16
    assert pnca.cross_attn.kv.weight.shape[0] == 32 and pnca.cross_attn.out.weight.shape[1] == 16
    assert (
        model.decoder.layers[0].ffn.w1.weight.shape == (26, 32, 1)  # kernel-1 Conv1d (original impl.)
        and model.encoder.layers[0].ffn.w1.weight.shape[0] == 26
    )
    before, after = report["encoder_decoder_params"]["before"], report["encoder_decoder_params"]["after"]
    assert before == encoder_decoder_params(original) and after == encoder_decoder_params(model)
    assert 0.4 < 1 - after / before < 0.65
    assert art.count_params(model) == art.count_params(original) - (before - after)
    assert len(art.state_dict_bytes(model)) < len(art.state_dict_bytes(original)) - 4 * (before - after) * 0.9


def test_embeddings_and_untouched_parts_are_copied(original, pruned):
    model = pruned[0]
    for name in (
        "encoder.sy_emb.weight",
        "emotion_emb.weight",
        "speaker_emb.weight",
        "decoder.prenet.layers.0.weight",
        "encoder.layers.0.attn.qkv.weight",
        "postnet.fc.weight",
    ):
        assert torch.equal(model.state_dict()[name], original.state_dict()[name]), name


def test_output_shapes_unchanged_and_config_rebuilds_the_model(original, pruned):
    model, cfg, _ = pruned
    x = random_inputs(seed=11)
    with torch.inference_mode():
        ref = original(**x)
        out = model(**x, durations=ref.durations)
        free = model(**x)
    assert out.mel.shape == ref.mel.shape and free.mel.dim() == 3 and free.mel.shape[-1] == 80
    rebuilt = build(cfg)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("importance", ["activation", "weight_norm"])
def test_dead_heads_and_channels_are_the_ones_removed(importance):
    """Silence one head per attention and 60% of FFN channels: pruning must remove exactly those, so the
    pruned model computes the same function as the silenced one."""
    model = build_acoustic(CFG.acoustic, seed=1)
    dead_ffn = list(range(1, 64, 2))[:20] + list(range(0, 64, 2))[:18]  # 38 = round(0.6 * 64)
    with torch.no_grad():
        for t in prunable_modules(model):
            mod = model.get_submodule(t.path)
            if t.path == "encoder.layers.0.attn":
                continue
            if t.kind == "ffn":
                mod.w1.weight[dead_ffn] = 0
                mod.w1.bias[dead_ffn] = 0
                mod.w2.weight[:, dead_ffn] = 0
                continue
            dh = mod.d_head
            dead = slice(dh, 2 * dh)  # head 1
            mod.out.weight[:, dead] = 0
            for block in range(3):
                mod.qkv.weight[block * 2 * dh :][dead] = 0
            if t.kind == "pnca":  # the same head of the layer's memory attention
                cross = model.get_submodule(t.path.rsplit(".", 1)[0] + ".cross_attn")
                cross.out.weight[:, dead] = 0
                cross.kv.weight[dead] = 0
                cross.kv.weight[2 * dh :][dead] = 0
    args = make_step("prune", importance=importance).args
    pruned, _, report = structured_prune(model, CFG.to_dict(), args, build, CALIBRATION)
    assert report["kept"]["encoder.layers.1.attn"] == [0]
    assert report["kept"]["decoder.layers.1.self_attn"] == [0]
    assert report["kept"]["decoder.layers.1.cross_attn"] == [0]
    assert set(report["kept"]["decoder.layers.0.ffn"]).isdisjoint(dead_ffn)
    x = random_inputs(seed=5)
    with torch.inference_mode():
        ref = model(**x)
        out = pruned(**x, durations=ref.durations)
    torch.testing.assert_close(out.mel, ref.mel, rtol=1e-4, atol=1e-4)


def test_zero_ratios_are_the_identity(original):
    args = make_step("prune", heads=0.0, ffn=0.0, importance="weight_norm").args
    model, cfg, _ = structured_prune(original, CFG.to_dict(), args, build)
    assert cfg == CFG.to_dict()
    x = random_inputs(seed=2)
    with torch.inference_mode():
        assert torch.equal(model(**x).mel, original(**x).mel)


def test_unstructured_zeroes_weights_but_keeps_size(original):
    model, report = unstructured_prune(original, 0.4)
    assert abs(report["sparsity"] - 0.4) < 0.01
    assert art.count_params(model) == art.count_params(original)
    size, orig = len(art.state_dict_bytes(model)), len(art.state_dict_bytes(original))
    assert abs(size - orig) < 0.01 * orig  # same tensors, same bytes: the article's point
    qkv = model.encoder.layers[1].attn.qkv.weight
    assert abs(float((qkv == 0).float().mean()) - 0.4) < 0.01
    assert not hasattr(model.encoder.layers[1].attn.qkv, "weight_mask")  # masks folded in
    assert float((original.encoder.layers[1].attn.qkv.weight == 0).float().mean()) == 0.0  # input untouched
