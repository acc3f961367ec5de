"""Dynamic int8 quantization of the acoustic model: module types change, weights shrink, HifiGan fp32."""

import dataclasses

import pytest
import torch
from torch import nn

from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
from variants import artifact as art
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
    """The optimized implementation (kernel-1 convs as Linear), quantized."""
    acoustic = build_acoustic(dataclasses.replace(CFG.acoustic, optimized=True))
    vocoder = build_vocoder(CFG.vocoder)
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
    tables = sum(b.numel() * 4 for _, b in acoustic.named_buffers())  # fp32 position tables, not weights
    assert len(art.state_dict_bytes(qa)) - tables < 0.6 * (len(art.state_dict_bytes(acoustic)) - tables)
    assert art.count_params(qa) == art.count_params(acoustic) == sum(p.numel() for p in acoustic.parameters())
    x = random_inputs()
    with torch.inference_mode():
        ref = acoustic(**x)
        got = qa(**x, durations=ref.durations)
    assert got.mel.shape == ref.mel.shape
    assert torch.isfinite(got.mel).all()


def _quantized_share(model: nn.Module) -> float:
    """Fraction of the acoustic model's weights held by dynamically quantized modules."""
    total = art.count_params(model)
    inside = sum(art.count_params(m) for m in model.modules() if isinstance(m, QUANTIZED_TYPES))
    return inside / total


def test_on_the_original_implementation_kernel1_convs_stay_fp32():
    """The original runs its kernel-1 convolutions as Conv1d, which PyTorch dynamic int8 does not reach:
    the same weights are far less quantized than after ``optimize``."""
    original = build_acoustic(CFG.acoustic)
    qa, _, _ = quantize(original, build_vocoder(CFG.vocoder), ARGS)
    assert isinstance(qa.decoder.layers[0].ffn.w1, nn.Conv1d)
    assert isinstance(qa.encoder.layers[1].attn.qkv, QUANTIZED_TYPES)
    fast = build_acoustic(dataclasses.replace(CFG.acoustic, optimized=True))
    qf, _, _ = quantize(fast, build_vocoder(CFG.vocoder), ARGS)
    assert _quantized_share(qa) < _quantized_share(qf) - 0.2


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
    structure = build_acoustic(dataclasses.replace(CFG.acoustic, optimized=True), seed=7)
    rebuilt = art.apply_transforms(structure, [transform], "acoustic")
    rebuilt.load_state_dict(qa.state_dict())
    x = random_inputs(seed=3)
    with torch.inference_mode():
        assert torch.equal(rebuilt(**x).mel, qa(**x).mel)
