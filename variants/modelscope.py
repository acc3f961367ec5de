"""Load a ModelScope Sambert-HifiGan model directory (what ``modelscope download`` writes) into edgebench's
reference model: configs, symbol dictionaries and checkpoints of one voice.

The directory layout and the loading rules are those of ModelScope's own loader (documented in
``shared/fixtures/kantts-small/LAYOUT.md``)::

    <model_dir>/voices/voices.json             {"voices": [...]}: the first entry is the default voice
    <model_dir>/voices/<voice>/am/config.yaml  KAN-TTS Sambert config (Model.KanTtsSAMBERT.params)
    <model_dir>/voices/<voice>/am/ckpt/checkpoint_<N>.pth    the largest N wins; weights in ['model']
    <model_dir>/voices/<voice>/voc/config.yaml KAN-TTS HifiGan config (Model.Generator.params)
    <model_dir>/voices/<voice>/voc/ckpt/checkpoint_<N>.pth   weights in ['model']['generator'], weight norm
    <model_dir>/voices/<voice>/dict/<language>/PhoneSet.xml, tonelist.txt   the voice's symbol tables

The checkpoints' parameter names are mapped onto edgebench's module names (one rule table, below), the
vocoder's weight norm is folded (w = g * v / |v|, norm over every axis but 0), the dimensions come from the
two configs and the embedding table sizes from the dictionaries. Every problem is a ``ModelDirError``
naming the file (and key) with a one-line reason; nothing is written.

Controller only (needs PyYAML); the device loads the resulting artifacts, not the model directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from variants.artifact import sha256_file
from variants.errors import ModelDirError, VariantsError

# --------------------------------------------------------------------------------- parameter names

#: (original name pattern, edgebench name) for the acoustic model; ``{i}`` is a layer index.
_AM_RULES: Tuple[Tuple[str, str], ...] = (
    ("text_encoder.sy_emb.", "encoder.sy_emb."),
    ("text_encoder.tone_emb.", "encoder.tone_emb."),
    ("text_encoder.syllable_flag_emb.", "encoder.syllable_flag_emb."),
    ("text_encoder.ws_emb.", "encoder.word_segment_emb."),
    ("text_encoder.ling_enc.fft.{i}.slf_attn.layer_norm.", "encoder.layers.{i}.attn_norm."),
    ("text_encoder.ling_enc.fft.{i}.slf_attn.w_qkv.", "encoder.layers.{i}.attn.qkv."),
    ("text_encoder.ling_enc.fft.{i}.slf_attn.fc.", "encoder.layers.{i}.attn.out."),
    ("text_encoder.ling_enc.fft.{i}.pos_ffn.layer_norm.", "encoder.layers.{i}.ffn.norm."),
    ("text_encoder.ling_enc.fft.{i}.pos_ffn.w_1.", "encoder.layers.{i}.ffn.w1."),
    ("text_encoder.ling_enc.fft.{i}.pos_ffn.w_2.", "encoder.layers.{i}.ffn.w2."),
    ("text_encoder.ling_enc.ln.", "encoder.norm."),
    ("text_encoder.ling_enc.position_enc.position_enc", "encoder.position_enc"),
    ("text_encoder.ling_proj.", "encoder.proj."),
    ("spk_tokenizer.", "speaker_emb."),
    ("emo_tokenizer.", "emotion_emb."),
    (
        "variance_adaptor.{p}_predictor.fsmn.ffn_lst.{i}.w_1.",
        "variance_adaptor.{p}_predictor.fsmn.ffns.{i}.w1.",
    ),
    (
        "variance_adaptor.{p}_predictor.fsmn.ffn_lst.{i}.w_2.",
        "variance_adaptor.{p}_predictor.fsmn.ffns.{i}.w2.",
    ),
    (
        "variance_adaptor.{p}_predictor.fsmn.memory_block_lst.{i}.conv_dw.",
        "variance_adaptor.{p}_predictor.fsmn.memories.{i}.conv_dw.",
    ),
    ("variance_adaptor.{p}_predictor.blstm.", "variance_adaptor.{p}_predictor.lstm."),
    ("variance_adaptor.{p}_predictor.fc.", "variance_adaptor.{p}_predictor.fc."),
    (
        "variance_adaptor.duration_predictor.prenet.fcs.0.",
        "variance_adaptor.duration_predictor.prenet.layers.0.",
    ),
    (
        "variance_adaptor.duration_predictor.prenet.fcs.3.",
        "variance_adaptor.duration_predictor.prenet.layers.1.",
    ),
    ("variance_adaptor.duration_predictor.lstm.", "variance_adaptor.duration_predictor.lstm."),
    ("variance_adaptor.duration_predictor.fc.", "variance_adaptor.duration_predictor.fc."),
    ("variance_adaptor.dur_position_encoder.inv_timescales", "variance_adaptor.dur_timescales"),
    ("variance_adaptor.pitch_emb.", "variance_adaptor.pitch_emb."),
    ("variance_adaptor.energy_emb.", "variance_adaptor.energy_emb."),
    ("mel_decoder.mel_dec.prenet.fcs.0.", "decoder.prenet.layers.0."),
    ("mel_decoder.mel_dec.prenet.fcs.3.", "decoder.prenet.layers.1."),
    ("mel_decoder.mel_dec.prenet.fcs.6.", "decoder.prenet.proj."),
    ("mel_decoder.mel_dec.dec_in_proj.", "decoder.in_proj."),
    ("mel_decoder.mel_dec.pnca.{i}.pnca_attn.layer_norm.", "decoder.layers.{i}.attn_norm."),
    ("mel_decoder.mel_dec.pnca.{i}.pnca_attn.w_x_qkv.", "decoder.layers.{i}.self_attn.qkv."),
    ("mel_decoder.mel_dec.pnca.{i}.pnca_attn.fc_x.", "decoder.layers.{i}.self_attn.out."),
    ("mel_decoder.mel_dec.pnca.{i}.pnca_attn.w_h_kv.", "decoder.layers.{i}.cross_attn.kv."),
    ("mel_decoder.mel_dec.pnca.{i}.pnca_attn.fc_h.", "decoder.layers.{i}.cross_attn.out."),
    ("mel_decoder.mel_dec.pnca.{i}.pos_ffn.layer_norm.", "decoder.layers.{i}.ffn.norm."),
    ("mel_decoder.mel_dec.pnca.{i}.pos_ffn.w_1.", "decoder.layers.{i}.ffn.w1."),
    ("mel_decoder.mel_dec.pnca.{i}.pos_ffn.w_2.", "decoder.layers.{i}.ffn.w2."),
    ("mel_decoder.mel_dec.ln.", "decoder.norm."),
    ("mel_decoder.mel_dec.dec_out_proj.", "decoder.out_proj."),
    ("mel_postnet.fsmn.ffn_lst.{i}.w_1.", "postnet.fsmn.ffns.{i}.w1."),
    ("mel_postnet.fsmn.ffn_lst.{i}.w_2.", "postnet.fsmn.ffns.{i}.w2."),
    ("mel_postnet.fsmn.memory_block_lst.{i}.conv_dw.", "postnet.fsmn.memories.{i}.conv_dw."),
    ("mel_postnet.lstm.", "postnet.lstm."),
    ("mel_postnet.fc.", "postnet.fc."),
)

#: The same for the HifiGan generator (after weight norm is folded).
_VOC_RULES: Tuple[Tuple[str, str], ...] = (
    ("conv_pre.conv1d.", "conv_pre.conv."),
    ("transpose_upsamples.{i}.1.deconv.", "ups.{i}.deconv."),
    ("repeat_upsamples.{i}.2.conv1d.", "repeat_ups.{i}.conv.conv."),
    ("conv_blocks.{i}.convs1.{j}.conv1d.", "resblocks.{i}.convs1.{j}.conv."),
    ("conv_blocks.{i}.convs2.{j}.conv1d.", "resblocks.{i}.convs2.{j}.conv."),
    ("conv_post.conv1d.", "conv_post.conv."),
)

_PLACEHOLDER = re.compile(r"\{([a-z])\}")


def _compile(rules) -> List[Tuple[re.Pattern, str, re.Pattern, str]]:
    """Each rule as (original regex, edgebench template, edgebench regex, original template)."""
    out = []
    for src, dst in rules:

        def regex(pattern: str) -> re.Pattern:
            parts = re.split(r"(\{[a-z]\})", pattern)
            body = "".join(
                f"(?P<{p[1]}>{'pitch|energy' if p[1] == 'p' else '[0-9]+'})"
                if _PLACEHOLDER.fullmatch(p)
                else re.escape(p)
                for p in parts
            )
            return re.compile("^" + body)

        out.append((regex(src), dst, regex(dst), src))
    return out


_AM = _compile(_AM_RULES)
_VOC = _compile(_VOC_RULES)


def _rename(name: str, rules, forward: bool = True) -> Optional[str]:
    for src_re, dst, dst_re, src in rules:
        pattern, template = (src_re, dst) if forward else (dst_re, src)
        m = pattern.match(name)
        if m:
            groups = m.groupdict()
            return _PLACEHOLDER.sub(lambda g, d=groups: d[g.group(1)], template) + name[m.end() :]
    return None


def acoustic_name(original: str) -> Optional[str]:
    """edgebench's name of an original Sambert parameter (None: no rule knows it)."""
    return _rename(original, _AM)


def original_acoustic_name(name: str) -> str:
    """The original checkpoint's name of an edgebench acoustic parameter (for error messages)."""
    return _rename(name, _AM, forward=False) or name


def vocoder_name(original: str) -> Optional[str]:
    return _rename(original, _VOC)


def original_vocoder_name(name: str) -> str:
    return _rename(name, _VOC, forward=False) or name


# --------------------------------------------------------------------------------- files


def _read_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: cannot read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelDirError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a mapping at the top level")
    return data


def _section(data: Mapping[str, Any], path: Path, *keys: str) -> Dict[str, Any]:
    node: Any = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ModelDirError(f"{path}: {'.'.join(keys[: i + 1])}: missing")
        node = node[key]
    if not isinstance(node, dict):
        raise ModelDirError(f"{path}: {'.'.join(keys)}: expected a mapping")
    return node


def checkpoint_index(name: str) -> Optional[int]:
    """ModelScope's scan rule: a name that starts with ``checkpoint``, ends with ``.pth`` and is longer than
    15 characters; its index is the text after the last ``_`` of the part before the first ``.``."""
    if not (name.startswith("checkpoint") and name.endswith(".pth") and len(name) > 15):
        return None
    stem = name.split(".", 1)[0]
    index = stem.rsplit("_", 1)[-1]
    return int(index) if index.isdigit() else None


def find_checkpoint(ckpt_dir: Path) -> Path:
    """The checkpoint with the largest index in ``ckpt_dir``."""
    if not ckpt_dir.is_dir():
        raise ModelDirError(f"{ckpt_dir}: missing (expected checkpoint_<N>.pth files)")
    found = [(checkpoint_index(p.name), p) for p in ckpt_dir.iterdir() if p.is_file()]
    found = [(i, p) for i, p in found if i is not None]
    if not found:
        raise ModelDirError(f"{ckpt_dir}: no checkpoint (expected a file named checkpoint_<N>.pth)")
    return max(found, key=lambda item: item[0])[1]


def _load_checkpoint(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelDirError(f"{path}: not a readable torch checkpoint ({reason})") from None


def _state_at(ckpt: Any, path: Path, keys: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
    node = ckpt
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = "".join(f"[{k!r}]" for k in keys[: i + 1])
            raise ModelDirError(f"{path}: checkpoint{where}: missing (not a KAN-TTS checkpoint)")
        node = node[key]
    if not isinstance(node, dict) or not all(isinstance(v, torch.Tensor) for v in node.values()):
        where = "".join(f"[{k!r}]" for k in keys)
        raise ModelDirError(f"{path}: checkpoint{where}: expected a state_dict of tensors")
    return node


# --------------------------------------------------------------------------------- configs


def _int(params: Mapping[str, Any], key: str, path: Path, where: str) -> int:
    if key not in params:
        raise ModelDirError(f"{path}: {where}.{key}: missing")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelDirError(f"{path}: {where}.{key}: expected a positive integer, got {value!r}")
    return value


def _int_list(params: Mapping[str, Any], key: str, path: Path, where: str) -> List[int]:
    value = params.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise ModelDirError(f"{path}: {where}.{key}: expected a list of positive integers, got {value!r}")
    return list(value)


def acoustic_config(params: Mapping[str, Any], sizes: Mapping[str, int], path: Path) -> Dict[str, Any]:
    """``SambertConfig`` fields from ``Model.KanTtsSAMBERT.params`` and the dictionaries' table sizes."""
    where = "Model.KanTtsSAMBERT.params"

    def num(key: str) -> int:
        return _int(params, key, path, where)

    for flag in ("SE", "NSF", "MAS"):
        if params.get(flag):
            raise ModelDirError(f"{path}: {where}.{flag}: {flag} models are not supported by edgebench yet")
    enc_units, enc_heads = num("encoder_num_units"), num("encoder_num_heads")
    dec_units, dec_heads = num("decoder_num_units"), num("decoder_num_heads")
    for units, heads, side in ((enc_units, enc_heads, "encoder"), (dec_units, dec_heads, "decoder")):
        if units % heads:
            raise ModelDirError(
                f"{path}: {where}.{side}_num_units={units} is not a multiple of {side}_num_heads={heads}"
            )
    return {
        "n_sy": sizes["sy"],
        "n_tone": sizes["tone"],
        "n_syllable_flag": sizes["syllable_flag"],
        "n_word_segment": sizes["word_segment"],
        "n_emotions": sizes["emotion"],
        "n_speakers": sizes["speaker"],
        "embedding_dim": num("embedding_dim"),
        "emotion_dim": num("emotion_units"),
        "speaker_dim": num("speaker_units"),
        "max_len": num("max_len"),
        "enc_d_model": enc_units,
        "enc_d_head": enc_units // enc_heads,
        "enc_heads": [enc_heads] * num("encoder_num_layers"),
        "enc_ffn": [num("encoder_ffn_inner_dim")] * num("encoder_num_layers"),
        "enc_proj_dim": num("encoder_projection_units"),
        "predictor_ffn": [num("predictor_ffn_inner_dim")] * num("predictor_fsmn_num_layers"),
        "predictor_memory": num("predictor_num_memory_units"),
        "predictor_kernel": num("predictor_filter_size"),
        "predictor_shift": int(params.get("predictor_shift", 0)),
        "predictor_lstm": num("predictor_lstm_units"),
        "dur_prenet": _int_list(params, "dur_pred_prenet_units", path, where),
        "dur_lstm": num("dur_pred_lstm_units"),
        "outputs_per_step": num("outputs_per_step"),
        "dec_d_model": dec_units,
        "dec_d_head": dec_units // dec_heads,
        "dec_heads": [dec_heads] * num("decoder_num_layers"),
        "dec_ffn": [num("decoder_ffn_inner_dim")] * num("decoder_num_layers"),
        "dec_prenet": _int_list(params, "decoder_prenet_units", path, where),
        "n_mels": num("num_mels"),
        "postnet_ffn": [num("postnet_ffn_inner_dim")] * num("postnet_fsmn_num_layers"),
        "postnet_memory": num("postnet_num_memory_units"),
        "postnet_kernel": num("postnet_filter_size"),
        "postnet_shift": int(params.get("postnet_shift", 0)),
        "postnet_lstm": num("postnet_lstm_units"),
    }


def vocoder_config(params: Mapping[str, Any], path: Path) -> Dict[str, Any]:
    """``HifiGanConfig`` fields from ``Model.Generator.params``."""
    where = "Model.Generator.params"
    if params.get("out_channels", 1) != 1:
        raise ModelDirError(f"{path}: {where}.out_channels: only 1 (mono) is supported")
    if params.get("causal", False) is not True:
        raise ModelDirError(f"{path}: {where}.causal: only the causal HifiGan (causal: true) is supported")
    if params.get("nonlinear_activation", "LeakyReLU") != "LeakyReLU":
        raise ModelDirError(f"{path}: {where}.nonlinear_activation: only LeakyReLU is supported")
    dilations = params.get("resblock_dilations")
    if (
        not isinstance(dilations, list)
        or not dilations
        or not all(isinstance(d, list) and d == dilations[0] for d in dilations)
    ):
        raise ModelDirError(
            f"{path}: {where}.resblock_dilations: expected the same list of dilations for every kernel"
        )
    kernels = _int_list(params, "resblock_kernel_sizes", path, where)
    if len(dilations) != len(kernels):
        raise ModelDirError(
            f"{path}: {where}.resblock_dilations: one entry per resblock kernel size expected"
        )
    slope = (params.get("nonlinear_activation_params") or {}).get("negative_slope", 0.1)
    return {
        "in_channels": _int(params, "in_channels", path, where),
        "channels": _int(params, "channels", path, where),
        "kernel_size": _int(params, "kernel_size", path, where),
        "upsample_rates": _int_list(params, "upsample_scales", path, where),
        "upsample_kernels": _int_list(params, "upsample_kernal_sizes", path, where),
        "resblock_kernels": kernels,
        "resblock_dilations": list(dilations[0]),
        "causal": True,
        "weight_norm": False,  # folded by the loader
        "leaky_slope": float(slope),
    }


# --------------------------------------------------------------------------------- weights


def fold_weight_norm(state: Mapping[str, torch.Tensor], path: Path) -> Dict[str, torch.Tensor]:
    """Replace every ``X.weight_g`` / ``X.weight_v`` pair by ``X.weight`` = g * v / |v| (norm over all axes
    except 0, as ``torch.nn.utils.weight_norm(dim=0)``)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            prefix = key[: -len("weight_v")]
            g = state.get(prefix + "weight_g")
            if g is None:
                raise ModelDirError(f"{path}: {prefix}weight_v has no {prefix}weight_g")
            v = value.float()
            norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape([-1] + [1] * (v.dim() - 1))
            out[prefix + "weight"] = g.float() * v / norm
        else:
            out[key] = value
    stray = [k for k in state if k.endswith(".weight_g") and k[: -len("g")] + "v" not in state]
    if stray:
        raise ModelDirError(f"{path}: {stray[0]} has no matching weight_v")
    return out


def _mapped(
    state: Mapping[str, torch.Tensor], rules_forward, path: Path, what: str
) -> Dict[str, torch.Tensor]:
    out = {}
    unknown = []
    for key, value in state.items():
        name = rules_forward(key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ModelDirError(
            f"{path}: unexpected {what} keys {', '.join(unknown[:3])}{more} "
            "(not a Sambert-HifiGan checkpoint?)"
        )
    return out


def check_state(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, config_path: Path, to_original
) -> None:
    """Every key present, none extra, every shape as the config says; ModelDirError naming the first."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            names = ", ".join(to_original(k) for k in missing[:3])
            parts.append(
                f"missing keys {names}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            )
        if extra:
            names = ", ".join(to_original(k) for k in extra[:3])
            parts.append(
                f"unexpected keys {names}" + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            )
        raise ModelDirError(f"{path}: {'; '.join(parts)}")
    for key, tensor in expected.items():
        got = tuple(state[key].shape)
        if got != tuple(tensor.shape):
            raise ModelDirError(
                f"{path}: {to_original(key)} has shape {list(got)} but {config_path.name} (and the "
                f"dictionaries) give {list(tensor.shape)}: the config disagrees with the checkpoint"
            )


# --------------------------------------------------------------------------------- the voice


@dataclass(frozen=True)
class Voice:
    """One voice of a model directory, ready to build: the reference model config (with the voice's
    symbol tables), edgebench-named state dicts, and where they came from."""

    model_config: Dict[str, Any]  # ModelConfig.to_dict(), symbols included
    acoustic_state: Dict[str, torch.Tensor]
    vocoder_state: Dict[str, torch.Tensor]
    source: Dict[str, Any]  # model_dir, voice, checkpoint files and their sha256


def voice_names(model_dir: Path) -> List[str]:
    path = Path(model_dir) / "voices" / "voices.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not Path(model_dir).is_dir():
            raise ModelDirError(f"{model_dir}: not a directory") from None
        raise ModelDirError(f"{path}: missing (not a ModelScope Sambert-HifiGan model directory?)") from None
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc})") from None
    voices = data.get("voices") if isinstance(data, dict) else None
    if not isinstance(voices, list) or not voices or not all(isinstance(v, str) and v for v in voices):
        raise ModelDirError(f"{path}: voices: expected a non-empty list of voice names")
    return voices


def _has_mask(model_dir: Path) -> bool:
    """False for a legacy model card (``model.am.linguistic_unit.has_mask: false`` in configuration.json)."""
    path = model_dir / "configuration.json"
    if not path.exists():
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc})") from None
    node: Any = data
    for key in ("model", "am", "linguistic_unit"):
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and "has_mask" in node:
        return bool(node["has_mask"])
    return True


def load_voice(model_dir: Path, voice: Optional[str] = None) -> Voice:
    """Read one voice (default: the first in voices.json) of a ModelScope model directory."""
    from devices.ondevice.models import build_acoustic, build_vocoder
    from devices.ondevice.models.presets import HifiGanConfig, ModelConfig, SambertConfig
    from devices.ondevice.symbols import SymbolTable, read_voice_tables

    model_dir = Path(model_dir).expanduser().resolve()
    voices = voice_names(model_dir)
    name = voice if voice is not None else voices[0]
    if name not in voices:
        raise ModelDirError(
            f"{model_dir / 'voices' / 'voices.json'}: no voice {name!r} (voices: {', '.join(voices)})"
        )
    vdir = model_dir / "voices" / name
    if not vdir.is_dir():
        raise ModelDirError(f"{vdir}: missing (voices.json lists {name!r})")

    am_cfg_path = vdir / "am" / "config.yaml"
    am_yaml = _read_yaml(am_cfg_path)
    am_params = _section(am_yaml, am_cfg_path, "Model", "KanTtsSAMBERT", "params")
    ling = am_yaml.get("linguistic_unit") or {}
    if not isinstance(ling, dict):
        raise ModelDirError(f"{am_cfg_path}: linguistic_unit: expected a mapping")
    table = read_voice_tables(
        vdir / "dict",
        ling.get("speaker_list", "F7"),
        str(ling.get("language", "PinYin")),
        speaker_where=f"{am_cfg_path}: linguistic_unit.speaker_list",
    )
    if not _has_mask(model_dir):  # legacy model card: no "@[MASK]" row in any table
        table = SymbolTable.from_dict({k: v[:-1] for k, v in table.to_dict().items()}, str(model_dir))

    voc_cfg_path = vdir / "voc" / "config.yaml"
    voc_params = _section(_read_yaml(voc_cfg_path), voc_cfg_path, "Model", "Generator", "params")
    try:
        acoustic_cfg = SambertConfig(**acoustic_config(am_params, table.sizes(), am_cfg_path))
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"{am_cfg_path}: Model.KanTtsSAMBERT.params: {exc}") from None
    try:
        vocoder_cfg = HifiGanConfig(**vocoder_config(voc_params, voc_cfg_path))
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"{voc_cfg_path}: Model.Generator.params: {exc}") from None

    am_path = find_checkpoint(vdir / "am" / "ckpt")
    am_state = _mapped(
        _state_at(_load_checkpoint(am_path), am_path, ("model",)), acoustic_name, am_path, "acoustic"
    )
    check_state(build_acoustic(acoustic_cfg), am_state, am_path, am_cfg_path, original_acoustic_name)

    voc_path = find_checkpoint(vdir / "voc" / "ckpt")
    voc_raw = _state_at(_load_checkpoint(voc_path), voc_path, ("model", "generator"))
    voc_state = _mapped(fold_weight_norm(voc_raw, voc_path), vocoder_name, voc_path, "vocoder")
    check_state(build_vocoder(vocoder_cfg), voc_state, voc_path, voc_cfg_path, original_vocoder_name)

    config = ModelConfig(acoustic=acoustic_cfg, vocoder=vocoder_cfg, symbols=table.to_dict())
    source = {
        "model_dir": str(model_dir),
        "voice": name,
        "acoustic_checkpoint": str(am_path.relative_to(model_dir)),
        "acoustic_sha256": sha256_file(am_path),
        "vocoder_checkpoint": str(voc_path.relative_to(model_dir)),
        "vocoder_sha256": sha256_file(voc_path),
    }
    return Voice(config.to_dict(), am_state, voc_state, source)


def build_voice(voice: Voice) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(acoustic, vocoder) in eval mode with the voice's weights."""
    from devices.ondevice.models import ModelConfig, build_acoustic, build_vocoder

    cfg = ModelConfig.from_dict(voice.model_config)
    acoustic = build_acoustic(cfg.acoustic)
    vocoder = build_vocoder(cfg.vocoder)
    try:
        acoustic.load_state_dict(voice.acoustic_state, strict=True)
        vocoder.load_state_dict(voice.vocoder_state, strict=True)
    except RuntimeError as exc:  # check_state ran already: this is a bug, not bad input
        raise VariantsError(f"loading {voice.source.get('model_dir')}: {str(exc)[:300]}") from None
    return acoustic.eval(), vocoder.eval()
