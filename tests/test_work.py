"""Work counting (variants/work.py) against counts written by hand from the tiny preset's configuration:
the encoder for T phones, one autoregressive decoder step, the post-net, the vocoder per mel frame. The
formulas below read only the configuration, never the counter's code."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from devices.ondevice.models import get_preset, reference
from variants.work import ACOUSTIC_STAGES, STAGES, count_work, weight_bytes

PHONES = 12


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    acoustic, vocoder = reference(cfg, 0)
    g = torch.Generator().manual_seed(3)

    def ids(hi):
        return torch.randint(1, hi, (1, PHONES), generator=g)

    inputs = dict(sy=ids(40), tone=ids(5), syllable_flag=ids(4), word_segment=ids(4),
                  emotion=torch.ones(1, PHONES, dtype=torch.long),
                  speaker=torch.zeros(1, PHONES, dtype=torch.long))
    return cfg, acoustic, vocoder, inputs, count_work(acoustic, vocoder, inputs)


def encoder_macs(a, t: int) -> int:
    """Per block: fused qkv, scores and weighted sum over all T phones, output projection, FFN (a
    kernel-k conv to ffn channels, a kernel-1 conv back); then the projection to enc_proj_dim."""
    total, d_in = 0, a.embedding_dim
    for heads, ffn in zip(a.enc_heads, a.enc_ffn):
        hd = heads * a.enc_d_head
        total += t * d_in * 3 * hd              # qkv
        total += 2 * heads * t * t * a.enc_d_head  # q.k over every phone, then the weighted sum of v
        total += t * hd * a.enc_d_model          # out
        total += t * a.enc_d_model * ffn * a.enc_ffn_kernel + t * ffn * a.enc_d_model
        d_in = a.enc_d_model
    return total + t * a.enc_d_model * a.enc_proj_dim


def decoder_step_macs(a, t: int, steps: int) -> int:
    """Step t of the original (not banded) decoder: prenet, input projection, per block qkv, attention
    over the t+1 cached steps and over all memory steps (masked, but computed), two output projections,
    the pointwise FFN; then the output projection to r frames."""
    d = a.dec_d_model
    units = [a.n_mels, *a.dec_prenet, d]
    total = sum(x * y for x, y in zip(units[:-1], units[1:]))
    total += (a.memory_dim + d) * d
    for heads, ffn in zip(a.dec_heads, a.dec_ffn):
        hd = heads * a.dec_d_head
        total += d * 3 * hd
        total += 2 * heads * (t + 1) * a.dec_d_head   # self-attention over the cache
        total += 2 * heads * steps * a.dec_d_head     # memory attention over every memory step
        total += 2 * hd * d                          # both output projections
        total += 2 * d * ffn
    return total + d * a.outputs_per_step * a.n_mels


def decoder_macs(a, steps: int) -> int:
    """Every step, plus each block's memory keys and values, projected once before the loop."""
    pre = sum(steps * a.memory_dim * 2 * h * a.dec_d_head for h in a.dec_heads)
    return pre + sum(decoder_step_macs(a, t, steps) for t in range(steps))


def fsmn_macs(frames: int, d_in: int, ffns, memory: int, kernel: int) -> int:
    total = 0
    for ffn in ffns:
        total += frames * (d_in * ffn + ffn * memory + memory * kernel)   # w1, w2, depthwise memory conv
        d_in = memory
    return total


def postnet_macs(a, frames: int) -> int:
    """FSMN on the 80-bin mel, LSTM (4 gates, input and recurrent products per frame), Linear to 80."""
    h = a.postnet_lstm
    return (fsmn_macs(frames, a.n_mels, a.postnet_ffn, a.postnet_memory, a.postnet_kernel)
            + frames * 4 * h * (a.postnet_memory + h) + frames * h * a.n_mels)


def vocoder_macs_per_frame(v) -> int:
    """conv_pre; per upsampling stage the transposed conv (every input sample meets the whole kernel), the
    repeat branch's conv, two convs per dilation in every resblock; conv_post. Per mel frame."""
    total = v.in_channels * v.channels * v.kernel_size
    samples = 1
    for i, (rate, kernel) in enumerate(zip(v.upsample_rates, v.upsample_kernels)):
        c_in, c_out = v.channels >> i, v.channels >> (i + 1)
        total += samples * c_in * c_out * kernel
        samples *= rate
        if v.repeat_upsample:
            total += samples * c_in * c_out * v.repeat_kernel
        for k in v.resblock_kernels:
            total += samples * len(v.resblock_dilations) * 2 * c_out * c_out * k
    return total + samples * (v.channels >> len(v.upsample_rates)) * v.kernel_size


def test_encoder_postnet_decoder_and_vocoder_match_the_hand_counts(tiny):
    cfg, _, _, _, work = tiny
    a = cfg.acoustic
    assert not a.optimized   # the original decoder (full attention over the cache and the memory)
    assert work.phones == PHONES and work.frames > 0
    steps = math.ceil(work.frames / a.outputs_per_step)
    assert work.stages["encoder"].macs == encoder_macs(a, PHONES)
    assert work.stages["decoder"].macs == decoder_macs(a, steps)
    assert work.stages["postnet"].macs == postnet_macs(a, steps * a.outputs_per_step)
    assert work.stages["vocoder"].macs == vocoder_macs_per_frame(cfg.vocoder) * work.frames


def test_one_decoder_step_by_hand():
    """The formula itself, at a size small enough to check on paper (d 4, 1 head of 4, ffn 8, prenet
    80->2->2->4, memory 6, r 1, 3 memory steps, step 1): the numbers, not the code, are the reference."""
    from types import SimpleNamespace

    a = SimpleNamespace(dec_d_model=4, n_mels=80, dec_prenet=(2, 2), memory_dim=6, dec_heads=(1,),
                        dec_d_head=4, dec_ffn=(8,), outputs_per_step=1)
    prenet = 80 * 2 + 2 * 2 + 2 * 4            # 172
    in_proj = (6 + 4) * 4                      # 40
    block = 4 * 12 + 2 * 1 * 2 * 4 + 2 * 1 * 3 * 4 + 2 * 4 * 4 + 2 * 4 * 8   # 48 + 16 + 24 + 32 + 64
    out = 4 * 80                               # 320
    assert block == 184
    assert decoder_step_macs(a, 1, 3) == prenet + in_proj + block + out == 716


def test_every_stage_is_counted_and_the_variance_adaptor_does_work(tiny):
    _, acoustic, vocoder, _, work = tiny
    assert set(work.stages) == set(STAGES)
    assert work.stages["variance_adaptor"].macs > 0 and work.stages["variance_adaptor"].ops > 0
    assert work.acoustic.macs == sum(work.stages[s].macs for s in ACOUSTIC_STAGES)
    # the decoder's step loop is the busiest dispatcher: most operator calls per MAC
    dec, voc = work.stages["decoder"], work.stages["vocoder"]
    assert dec.ops > 10 * voc.ops and dec.macs < voc.macs
    # weights: fp32 parameters and buffers, every byte in exactly one stage
    params = sum(t.numel() * 4 for t in acoustic.state_dict().values() if t.dtype == torch.float32)
    assert sum(work.stages[s].weight_bytes for s in ACOUSTIC_STAGES) == weight_bytes(acoustic) == params
    assert work.stages["vocoder"].weight_bytes == sum(p.numel() * 4 for p in vocoder.parameters())


def test_dynamic_int8_does_the_same_products_with_fewer_weight_bytes(tiny):
    _, acoustic, vocoder, inputs, work = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(acoustic, {torch.nn.Linear, torch.nn.LSTM},
                                                   dtype=torch.qint8)
    forced = dict(inputs, durations=torch.full((1, PHONES), 4))   # int8 noise must not change the shapes
    fp32, int8 = count_work(acoustic, vocoder, forced), count_work(q, vocoder, forced)
    assert int8.frames == fp32.frames == 4 * PHONES
    for stage in STAGES:
        assert int8.stages[stage].macs == fp32.stages[stage].macs, stage
    # Linear and LSTM weights are int8 now; embeddings, convolutions and the vocoder stay fp32
    assert int8.acoustic.weight_bytes < fp32.acoustic.weight_bytes
    assert int8.stages["vocoder"].weight_bytes == fp32.stages["vocoder"].weight_bytes


def test_weight_bytes_of_a_dynamic_int8_linear_are_its_int8_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 32)),
                                                   {torch.nn.Linear}, dtype=torch.qint8)
    # 64x32 int8 weights and 32 fp32 biases, plus a scale and a zero point
    assert 64 * 32 + 32 * 4 <= weight_bytes(q) <= 64 * 32 + 32 * 4 + 64


def test_the_shapes_where_the_macs_went_are_kept_per_stage(tiny):
    cfg, _, _, _, work = tiny
    for stage in STAGES:
        shapes = work.stage_shapes(stage, n=99)
        assert sum(s[-1] for s in shapes) <= work.stages[stage].macs      # a part of the stage's MACs
        assert all(len(s) in (4, 6) for s in shapes)                      # a product or a convolution
    # the decoder's step loop makes one-row products (one frame at a time)
    assert any(s[0] == 1 and len(s) == 4 for s in work.stage_shapes("decoder", n=99))
    # the vocoder's convolutions, as (frames, channels in, channels out, kernel, groups)
    conv = work.stage_shapes("vocoder", n=99)
    assert conv and all(len(s) == 6 and s[0] >= work.frames and s[3] >= 1 and s[4] >= 1 for s in conv)
    top = work.top_shapes()
    assert 1 <= len(top) <= 12 and top[0] == work.stage_shapes("vocoder", 1)[0][:-1]
