"""The reference workload (ondevice.models): configs, shapes, determinism, decoder modes, compression."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from devices.ondevice.frontend import text_to_ids
from devices.ondevice.models import (
    PRESETS,
    HifiGanConfig,
    ModelConfig,
    SambertConfig,
    build_acoustic,
    build_vocoder,
    count_parameters,
    get_preset,
    reference,
)
from devices.ondevice.models.sambert import Sambert


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids spin-wait slowdowns on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    return cfg, build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)


@pytest.fixture(scope="module")
def inputs():
    return text_to_ids("今天天气真好,我很开心!", emotion="happy").to_tensors()


@pytest.fixture(scope="module")
def short_inputs():
    return text_to_ids("你好。", emotion="sad").to_tensors()


def _state_sha(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json(name):
    cfg = get_preset(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(data["acoustic"]["enc_heads"], list)
    assert ModelConfig.from_dict(data) == cfg


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="tiny"):
        get_preset("huge")


def test_config_rejects_inconsistent_or_unknown_fields():
    with pytest.raises(ValueError, match="enc_ffn"):
        SambertConfig(enc_heads=(8, 8), enc_ffn=(1024,))
    with pytest.raises(ValueError, match=">= 1"):
        SambertConfig(dec_heads=(0,) * 12)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"acoustic": {"n_layers": 3}, "vocoder": {}})


def test_base_and_large_parameter_counts():
    with torch.device("meta"):
        base_acoustic = Sambert(get_preset("base").acoustic)
        large_acoustic = Sambert(get_preset("large").acoustic)
    base_vocoder = build_vocoder(get_preset("base").vocoder, seed=0)
    n_base, n_voc, n_large = map(count_parameters, (base_acoustic, base_vocoder, large_acoustic))
    print(
        f"base acoustic {n_base} ({n_base * 4 / 1e6:.1f} MB fp32), vocoder {n_voc}, large acoustic {n_large}"
    )
    # the original's trainable parameters: 12.30M (the position tables are buffers), HifiGan ~4.86M
    assert abs(n_base - 12.30e6) / 12.30e6 < 0.001
    assert abs(n_voc - 4.86e6) / 4.86e6 < 0.01
    assert 190e6 < n_large * 4 < 230e6  # ~200 MB fp32, like the seed article's model


def test_contract_module_names(tiny):
    cfg, acoustic, _ = tiny
    attn = acoustic.encoder.layers[0].attn
    assert (attn.n_heads, attn.d_head) == (cfg.acoustic.enc_heads[0], cfg.acoustic.enc_d_head)
    assert attn.qkv.out_features == 3 * attn.n_heads * attn.d_head
    assert attn.qkv.in_features == cfg.acoustic.embedding_dim  # block 0 maps the embeddings down
    ffn = acoustic.encoder.layers[1].ffn
    assert isinstance(ffn.w1, nn.Conv1d) and ffn.w1.kernel_size == (3,)
    assert isinstance(ffn.w2, nn.Conv1d) and ffn.w2.kernel_size == (1,)  # the original's kernel-1 conv
    layer = acoustic.decoder.layers[0]
    assert isinstance(layer.self_attn.qkv, nn.Linear) and isinstance(layer.self_attn.out, nn.Linear)
    assert layer.cross_attn.kv.in_features == cfg.acoustic.memory_dim
    assert not hasattr(layer.cross_attn, "q")  # the PNCA query is shared with the self-attention
    assert isinstance(layer.ffn.w1, nn.Conv1d)
    fast = build_acoustic(dataclasses.replace(cfg.acoustic, optimized=True))
    assert isinstance(fast.decoder.layers[0].ffn.w1, nn.Linear)
    assert isinstance(fast.encoder.layers[1].ffn.w2, nn.Linear)


# ------------------------------------------------------------------------------------------------ outputs


def test_tiny_shapes_and_realistic_length(tiny, inputs):
    _, acoustic, vocoder = tiny
    with torch.inference_mode():
        out = acoustic(**inputs)
        wav = vocoder(out.mel.transpose(1, 2))
    n_phones = inputs["sy"].size(1)
    frames = int(out.durations.sum())
    assert out.durations.shape == (1, n_phones) and out.durations.dtype == torch.long
    assert out.mel.shape == (1, frames, 80) and out.mel_decoder.shape == out.mel.shape
    assert out.frames.tolist() == [frames]
    assert wav.shape == (1, 1, frames * 200)
    assert int(out.durations.min()) >= 1
    assert 1.5 <= frames * 0.0125 <= 2.5  # a 10-character sentence: about two seconds
    assert torch.isfinite(out.mel).all() and torch.isfinite(wav).all()
    assert float(wav.abs().max()) <= 1.0


def test_inference_is_deterministic(tiny, short_inputs):
    _, acoustic, vocoder = tiny
    with torch.inference_mode():
        a, b = acoustic(**short_inputs), acoustic(**short_inputs)
        assert torch.equal(a.mel, b.mel) and torch.equal(a.durations, b.durations)
        assert torch.equal(vocoder(a.mel.transpose(1, 2)), vocoder(b.mel.transpose(1, 2)))


def test_builds_are_bit_identical_and_leave_the_global_rng_alone():
    cfg = get_preset("tiny")
    rng = torch.get_rng_state()
    first = build_acoustic(cfg.acoustic, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    second = build_acoustic(cfg.acoustic, seed=3)
    other = build_acoustic(cfg.acoustic, seed=4)
    assert _state_sha(first) == _state_sha(second) != _state_sha(other)
    assert _state_sha(build_vocoder(cfg.vocoder, 3)) == _state_sha(build_vocoder(cfg.vocoder, 3))


def test_builds_match_in_a_fresh_process(tiny):
    _, acoustic, vocoder = tiny
    code = textwrap.dedent(
        """
        import hashlib, torch
        from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
        def sha(m):
            d = hashlib.sha256()
            for k, v in sorted(m.state_dict().items()):
                d.update(k.encode()); d.update(v.detach().contiguous().numpy().tobytes())
            return d.hexdigest()
        torch.manual_seed(1234)  # the global RNG must not matter
        cfg = get_preset("tiny")
        print(sha(build_acoustic(cfg.acoustic, seed=0)), sha(build_vocoder(cfg.vocoder, seed=0)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split() == [_state_sha(acoustic), _state_sha(vocoder)]


def test_forced_durations(tiny, short_inputs):
    _, acoustic, _ = tiny
    forced = torch.full_like(short_inputs["sy"], 3)
    forced[0, 0] = 5
    with torch.inference_mode():
        out = acoustic(**short_inputs, durations=forced)
        again = acoustic(**short_inputs, durations=acoustic(**short_inputs).durations)
        free = acoustic(**short_inputs)
    assert torch.equal(out.durations, forced)
    assert out.mel.shape[1] == int(forced.sum())
    assert out.log_durations.shape == forced.shape
    assert torch.equal(again.mel, free.mel)
    with pytest.raises(ValueError, match="durations shape"):
        acoustic(**short_inputs, durations=forced[:, 1:])


def test_more_frames_than_max_frames_is_a_clear_error(short_inputs):
    cfg = dataclasses.replace(get_preset("tiny").acoustic, max_frames=5)
    with torch.inference_mode(), pytest.raises(ValueError, match="more than max_frames=5"):
        build_acoustic(cfg, seed=0)(**short_inputs)


def test_zero_frame_phones_are_kept_and_all_zero_is_an_error(tiny, short_inputs):
    _, acoustic, _ = tiny
    n = short_inputs["sy"].size(1)
    durations = torch.full((1, n), 3, dtype=torch.long)
    durations[0, 1] = 0  # the original gives a phone 0 frames (a #1 break); no clamp to 1
    with torch.inference_mode():
        out = acoustic(**short_inputs, durations=durations)
        assert out.mel.shape[1] == 3 * (n - 1)
        with pytest.raises(ValueError, match="0 frames"):
            acoustic(**short_inputs, durations=torch.zeros_like(durations))


# ------------------------------------------------------------------------------------------------ decoder


@pytest.mark.parametrize("optimized", [False, True])
@pytest.mark.parametrize("band", [0, 2])
def test_kv_cache_decoder_equals_uncached_steps(tiny, optimized, band):
    _, acoustic, _ = tiny
    if optimized:
        from variants.optimize import optimized_state

        fast = build_acoustic(dataclasses.replace(acoustic.cfg, optimized=True))
        fast.load_state_dict(optimized_state(acoustic.state_dict(), fast.state_dict()))
        acoustic = fast.eval()
    decoder = acoustic.decoder
    torch.manual_seed(0)
    memory = torch.randn(1, 9, acoustic.cfg.memory_dim)
    with torch.inference_mode():
        cached = decoder.infer(memory, band, band)
        frame = torch.zeros(1, 1, 80)
        inputs_so_far = []
        for t in range(memory.size(1)):  # recompute every past step from scratch, no cache
            inputs_so_far.append(frame)
            step = decoder.forward_parallel(torch.cat(inputs_so_far, dim=1), memory, band, band)[:, -1:]
            torch.testing.assert_close(step, cached[:, t : t + 1], rtol=1e-4, atol=1e-5)
            frame = cached[:, t : t + 1, -80:]


def test_optimize_keeps_the_outputs_of_the_original(tiny, inputs):
    """``optimize`` (Linear kernel-1 convs, banded attention, preallocated cache) equals the original
    implementation within 1e-5 on the same weights."""
    from variants.optimize import optimize

    cfg, acoustic, _ = tiny
    fast, new_cfg, report = optimize(
        acoustic, cfg.to_dict(), lambda d: build_acoustic(ModelConfig.from_dict(d).acoustic)
    )
    assert new_cfg["acoustic"]["optimized"] is True and report["kernel1_convs_as_linear"] > 0
    with torch.inference_mode():
        ref, got = acoustic(**inputs), fast(**inputs)
    assert torch.equal(ref.durations, got.durations)
    torch.testing.assert_close(got.mel, ref.mel, rtol=0, atol=1e-5)


def test_teacher_forced_parallel_pass_reproduces_autoregressive_output(tiny, inputs):
    _, acoustic, _ = tiny
    with torch.inference_mode():
        ar = acoustic(**inputs)
        tf = acoustic(**inputs, durations=ar.durations, teacher_mel=ar.mel_decoder)
    torch.testing.assert_close(tf.mel_decoder, ar.mel_decoder, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tf.mel, ar.mel, rtol=1e-4, atol=1e-4)


def test_teacher_forced_pass_trains(tiny, short_inputs):
    cfg = get_preset("tiny")
    student = build_acoustic(cfg.acoustic, seed=1).train()
    with torch.inference_mode():
        target = tiny[1](**short_inputs)
    out = student(**short_inputs, durations=target.durations, teacher_mel=target.mel.clone())
    loss = nn.functional.l1_loss(out.mel, target.mel.clone())
    loss.backward()
    assert student.decoder.layers[0].ffn.w1.weight.grad is not None


# ------------------------------------------------------------------------------------ compression hooks


def test_pruned_per_layer_dims_rebuild_from_config(short_inputs):
    base = get_preset("tiny").acoustic
    pruned = dataclasses.replace(base, enc_heads=[1, 2], enc_ffn=[5, 64], dec_heads=[2, 1], dec_ffn=[1, 7])
    cfg = ModelConfig.from_dict(
        json.loads(json.dumps(ModelConfig(pruned, get_preset("tiny").vocoder).to_dict()))
    )
    acoustic = build_acoustic(cfg.acoustic, seed=0)
    assert acoustic.encoder.layers[0].attn.qkv.out_features == 3 * 1 * base.enc_d_head
    assert acoustic.decoder.layers[1].cross_attn.kv.out_features == 2 * 1 * base.dec_d_head
    with torch.inference_mode():
        out = acoustic(**short_inputs)
    assert out.mel.shape[1] == int(out.durations.sum())


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_dynamic_int8_quantization_runs(tiny, short_inputs):
    _, acoustic, _ = tiny
    quantized = torch.ao.quantization.quantize_dynamic(acoustic, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
    with torch.inference_mode():
        out = quantized(**short_inputs)
    assert out.mel.shape[1] == int(out.durations.sum()) and torch.isfinite(out.mel).all()


def test_vocoder_weight_norm_is_folded():
    cfg = HifiGanConfig(**{**get_preset("tiny").vocoder.to_dict()})
    folded = build_vocoder(cfg, seed=0)
    unfolded = build_vocoder(cfg, seed=0, fold_weight_norm=False)
    keys = list(folded.state_dict())
    assert all(k.endswith((".weight", ".bias")) for k in keys) and "conv_pre.conv.weight" in keys
    mel = torch.randn(1, 80, 7)
    with torch.inference_mode():
        torch.testing.assert_close(folded(mel), unfolded(mel), rtol=1e-4, atol=1e-6)


def test_reference_factory_accepts_a_config_dict():
    acoustic, vocoder = reference(get_preset("tiny").to_dict(), seed=0)
    assert isinstance(acoustic, Sambert) and not acoustic.training and not vocoder.training
