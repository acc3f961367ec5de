"""Dynamic int8 quantization of the acoustic model: module types change, weights shrink, HifiGan fp32."""

import pytest
import torch
from torch import nn

from variants import artifact as art
from variants.models import build_acoustic, build_vocoder, get_preset
from variants.quantize import QUANTIZED_TYPES, quantize, quantize_transform, quantized_module_names
from variants.recipes import BUILTIN_VARIANTS, make_step

CFG = get_preset("tiny")
ARGS = BUILTIN_VARIANTS["quantized"].steps[0].args


def random_inputs(n_phones=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = {
        k: torch.randint(0, hi, (1, n_phones), generator=g)
        for k, hi in (("sy", 147), ("tone", 10), ("syllable_flag", 8), ("word_segment", 8))
    }
    ids["emotion"] = torch.full((1, n_phones), 3)
    ids["speaker"] = torch.zeros(1, n_phones, dtype=torch.long)
    return ids


@pytest.fixture(scope="module")
def quantized():
    acoustic, vocoder = build_acoustic(CFG.acoustic), build_vocoder(CFG.vocoder)
    qa, qv, transform = quantize(acoustic, vocoder, ARGS)
    return acoustic, vocoder, qa, qv, transform


def test_every_linear_and_lstm_of_the_acoustic_model_is_quantized(quantized):
    acoustic, vocoder, qa, qv, _ = quantized
    n_linear = sum(isinstance(m, nn.Linear) for m in acoustic.modules())
    n_lstm = sum(isinstance(m, nn.LSTM) for m in acoustic.modules())
    types = list(quantized_module_names(qa).values())
    assert types.count("Linear") == n_linear > 0 and types.count("LSTM") == n_lstm > 0
    assert not any(type(m) in (nn.Linear, nn.LSTM) for m in qa.modules())
    # names the pruning step relies on survive, now quantized
    assert isinstance(qa.encoder.layers[1].attn.qkv, QUANTIZED_TYPES)
    assert isinstance(qa.decoder.layers[0].ffn.w1, QUANTIZED_TYPES)
    # the input modules are untouched, and HifiGan (convolutions only) is left fp32 as in the article
    assert type(acoustic.encoder.layers[1].attn.qkv) is nn.Linear
    assert qv is vocoder and quantized_module_names(qv) == {}


def test_quantized_is_smaller_same_params_same_shapes(quantized):
    acoustic, _, qa, _, _ = quantized
    assert len(art.state_dict_bytes(qa)) < 0.6 * len(art.state_dict_bytes(acoustic))
    assert art.count_params(qa) == art.count_params(acoustic) == sum(p.numel() for p in acoustic.parameters())
    x = random_inputs()
    with torch.inference_mode():
        ref = acoustic(**x)
        got = qa(**x, durations=ref.durations)
    assert got.mel.shape == ref.mel.shape
    assert torch.isfinite(got.mel).all()


def test_transform_describes_the_step(quantized):
    assert quantized[4] == {
        "op": "quantize_dynamic",
        "component": "acoustic",
        "dtype": "qint8",
        "modules": ["Linear", "LSTM"],
    }
    f16 = make_step("quantize", dtype="float16", modules=["Linear"]).args
    assert quantize_transform(f16)["dtype"] == "float16"


def test_rebuilt_structure_with_transform_loads_the_quantized_state(quantized):
    _, _, qa, _, transform = quantized
    rebuilt = art.apply_transforms(build_acoustic(CFG.acoustic, seed=7), [transform], "acoustic")
    rebuilt.load_state_dict(qa.state_dict())
    x = random_inputs(seed=3)
    with torch.inference_mode():
        assert torch.equal(rebuilt(**x).mel, qa(**x).mel)
