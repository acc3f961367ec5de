"""Configurations of the reference workload (Sambert acoustic model + KAN-TTS HifiGan vocoder).

Every config is a frozen dataclass. Per-layer dimensions that compression may change (attention heads,
FFN widths) are sequences with one entry per layer, so a pruned model is rebuilt from its config alone.
They are stored as tuples (frozen, hashable) and written as lists by ``to_dict()``.

Runs on the device too (travels in the agent bundle): Python 3.8+, standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: Per-layer fields, normalised to tuples of ints.
_SAMBERT_LIST_FIELDS = (
    "enc_heads",
    "enc_ffn",
    "dec_heads",
    "dec_ffn",
    "predictor_ffn",
    "postnet_ffn",
    "dur_prenet",
    "dec_prenet",
)
_HIFIGAN_LIST_FIELDS = ("upsample_rates", "upsample_kernels", "resblock_kernels", "resblock_dilations")


def _as_int_tuple(owner: str, name: str, value: Any) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{owner}.{name}: expected a list of integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or int(item) != item:
            raise ValueError(f"{owner}.{name}: expected integers, got {item!r}")
        out.append(int(item))
    return tuple(out)


def _check_positive(owner: str, name: str, values: Tuple[int, ...]) -> None:
    if not values:
        raise ValueError(f"{owner}.{name}: needs at least one entry")
    for v in values:
        if v < 1:
            raise ValueError(f"{owner}.{name}: every entry must be >= 1, got {list(values)}")


@dataclass(frozen=True)
class SambertConfig:
    """Sambert (KAN-TTS) acoustic model. Defaults are the real ``sambert_16k.yaml`` dimensions."""

    # linguistic inputs
    n_sy: int = 147
    n_tone: int = 10
    n_syllable_flag: int = 8
    n_word_segment: int = 8
    embedding_dim: int = 512
    n_emotions: int = 36
    n_speakers: int = 9
    emotion_dim: int = 32
    speaker_dim: int = 32
    # text encoder (one entry per layer in enc_heads / enc_ffn)
    enc_d_model: int = 128
    enc_d_head: int = 16
    enc_heads: Tuple[int, ...] = (8,) * 8
    enc_ffn: Tuple[int, ...] = (1024,) * 8
    enc_ffn_kernel: int = 3
    enc_proj_dim: int = 32
    max_len: int = 800  # rows of the encoder's stored position table: the most phones per input
    # variance adaptor: pitch/energy FSMN predictors (predictor_ffn: one entry per FSMN layer)
    predictor_ffn: Tuple[int, ...] = (256,) * 3
    predictor_memory: int = 128
    predictor_kernel: int = 41
    predictor_shift: int = 0
    predictor_lstm: int = 128
    variance_emb_kernel: int = 9
    # autoregressive duration predictor
    dur_prenet: Tuple[int, ...] = (128, 128)
    dur_lstm: int = 128
    dur_lstm_layers: int = 2
    dur_init_frames: float = 8.0  # initial output bias: exp(b) - 1 frames per phone (random weights)
    dur_init_spread: float = 0.15  # std of the initial log-duration around that bias
    max_frames: int = 4000  # an input predicted longer than this is an error (50 s at 12.5 ms)
    # PNCA decoder (one entry per layer in dec_heads / dec_ffn)
    outputs_per_step: int = 3
    dec_d_model: int = 128
    dec_d_head: int = 16
    dec_heads: Tuple[int, ...] = (8,) * 12
    dec_ffn: Tuple[int, ...] = (1024,) * 12
    dec_prenet: Tuple[int, ...] = (256, 256)
    n_mels: int = 80
    # FSMN post-net (postnet_ffn: one entry per FSMN layer)
    postnet_ffn: Tuple[int, ...] = (512,) * 4
    postnet_memory: int = 256
    postnet_kernel: int = 41
    postnet_shift: int = 17  # left context = (kernel-1)/2 + shift = 37 past, 3 future frames
    postnet_lstm: int = 128
    # implementation: False = the original's (kernel-1 Conv1d, full-history masked decoder attention);
    # True = written by the ``optimize`` recipe step (Linear, banded attention, preallocated cache)
    optimized: bool = False

    def __post_init__(self) -> None:
        for name in _SAMBERT_LIST_FIELDS:
            object.__setattr__(self, name, _as_int_tuple("SambertConfig", name, getattr(self, name)))
            _check_positive("SambertConfig", name, getattr(self, name))
        if len(self.enc_ffn) != len(self.enc_heads):
            raise ValueError(
                f"SambertConfig: enc_heads has {len(self.enc_heads)} layers, enc_ffn {len(self.enc_ffn)}"
            )
        if len(self.dec_ffn) != len(self.dec_heads):
            raise ValueError(
                f"SambertConfig: dec_heads has {len(self.dec_heads)} layers, dec_ffn {len(self.dec_ffn)}"
            )
        for name in (
            "embedding_dim",
            "enc_d_model",
            "enc_d_head",
            "dec_d_model",
            "dec_d_head",
            "outputs_per_step",
            "predictor_memory",
            "predictor_lstm",
            "postnet_memory",
            "postnet_lstm",
            "max_len",
            "max_frames",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SambertConfig.{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.predictor_kernel % 2 != 1 or self.postnet_kernel % 2 != 1:
            raise ValueError("SambertConfig: FSMN kernels must be odd")
        if self.embedding_dim % 2:
            raise ValueError(f"SambertConfig.embedding_dim={self.embedding_dim}: must be even")
        if not isinstance(self.optimized, bool):
            raise ValueError(f"SambertConfig.optimized: expected true or false, got {self.optimized!r}")

    @property
    def enc_layers(self) -> int:
        return len(self.enc_heads)

    @property
    def dec_layers(self) -> int:
        return len(self.dec_heads)

    @property
    def memory_dim(self) -> int:
        """Decoder memory per step: r x text projection + speaker + emotion (160 for base)."""
        return self.outputs_per_step * self.enc_proj_dim + self.speaker_dim + self.emotion_dim

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> SambertConfig:
        return _from_dict(cls, data, "acoustic")


@dataclass(frozen=True)
class HifiGanConfig:
    """KAN-TTS HifiGan generator (``hifigan_v1_16k.yaml``): hop = prod(upsample_rates) = 200."""

    in_channels: int = 80
    channels: int = 256
    kernel_size: int = 7
    upsample_rates: Tuple[int, ...] = (10, 5, 2, 2)
    upsample_kernels: Tuple[int, ...] = (20, 10, 4, 4)
    resblock_kernels: Tuple[int, ...] = (3, 7, 11)
    resblock_dilations: Tuple[int, ...] = (1, 3, 5, 7)
    repeat_upsample: bool = True
    repeat_kernel: int = 7
    causal: bool = True
    weight_norm: bool = True  # applied at construction, folded into plain convs by build_vocoder
    leaky_slope: float = 0.1
    init_std: float = 0.01  # KAN-TTS reset_parameters: conv weights ~ N(0, 0.01)

    def __post_init__(self) -> None:
        for name in _HIFIGAN_LIST_FIELDS:
            object.__setattr__(self, name, _as_int_tuple("HifiGanConfig", name, getattr(self, name)))
            _check_positive("HifiGanConfig", name, getattr(self, name))
        if len(self.upsample_rates) != len(self.upsample_kernels):
            raise ValueError("HifiGanConfig: upsample_rates and upsample_kernels differ in length")
        if self.channels >> len(self.upsample_rates) < 1:
            raise ValueError(
                f"HifiGanConfig.channels={self.channels}: too few for {len(self.upsample_rates)} stages"
            )

    @property
    def hop_length(self) -> int:
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        return hop

    def to_dict(self) -> Dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> HifiGanConfig:
        return _from_dict(cls, data, "vocoder")


@dataclass(frozen=True)
class ModelConfig:
    """Acoustic model + vocoder (+ the voice's symbol tables). ``to_dict()`` / ``from_dict()`` round-trip
    through JSON. ``symbols`` maps each input stream (sy, tone, syllable_flag, word_segment, emotion,
    speaker) to its ordered symbol names (a loaded voice's dictionaries); None means edgebench's built-in
    table (``devices.ondevice.symbols.builtin_table``), which the seeded presets use."""

    acoustic: SambertConfig = field(default_factory=SambertConfig)
    vocoder: HifiGanConfig = field(default_factory=HifiGanConfig)
    symbols: Optional[Dict[str, List[str]]] = None

    def __post_init__(self) -> None:
        if self.symbols is None:
            return
        if not isinstance(self.symbols, dict):
            raise ValueError("model config: 'symbols' must be an object of symbol lists")
        sizes = {
            "sy": self.acoustic.n_sy,
            "tone": self.acoustic.n_tone,
            "syllable_flag": self.acoustic.n_syllable_flag,
            "word_segment": self.acoustic.n_word_segment,
            "emotion": self.acoustic.n_emotions,
            "speaker": self.acoustic.n_speakers,
        }
        for stream, rows in sizes.items():
            names = self.symbols.get(stream)
            if not isinstance(names, list) or len(names) != rows:
                got = len(names) if isinstance(names, list) else names
                raise ValueError(
                    f"model config: symbols.{stream}: expected {rows} names (the table size), got {got!r}"
                )

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"acoustic": self.acoustic.to_dict(), "vocoder": self.vocoder.to_dict()}
        if self.symbols is not None:
            out["symbols"] = {k: list(v) for k, v in self.symbols.items()}
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(
                f"model config: expected an object with 'acoustic' and 'vocoder', got {type(data)}"
            )
        unknown = sorted(set(data) - {"acoustic", "vocoder", "symbols"})
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}")
        return cls(
            acoustic=SambertConfig.from_dict(data.get("acoustic", {})),
            vocoder=HifiGanConfig.from_dict(data.get("vocoder", {})),
            symbols=data.get("symbols"),
        )


def _to_dict(cfg: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _from_dict(cls: Any, data: Dict[str, Any], section: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"model config: '{section}' must be an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"model config: unknown keys in '{section}': {unknown}")
    return cls(**data)


def _tiny() -> ModelConfig:
    acoustic = SambertConfig(
        embedding_dim=64,
        enc_d_model=32,
        enc_d_head=16,
        enc_heads=(2, 2),
        enc_ffn=(64, 64),
        enc_proj_dim=16,
        emotion_dim=8,
        speaker_dim=8,
        predictor_ffn=(32, 32),
        predictor_memory=16,
        predictor_kernel=11,
        predictor_lstm=16,
        dur_prenet=(16, 16),
        dur_lstm=16,
        dec_d_model=32,
        dec_d_head=16,
        dec_heads=(2, 2),
        dec_ffn=(64, 64),
        dec_prenet=(32, 32),
        postnet_ffn=(32, 32),
        postnet_memory=32,
        postnet_kernel=11,
        postnet_shift=3,
        postnet_lstm=16,
    )
    vocoder = HifiGanConfig(channels=32, resblock_kernels=(3,), resblock_dilations=(1, 3), repeat_kernel=3)
    return ModelConfig(acoustic=acoustic, vocoder=vocoder)


def _large() -> ModelConfig:
    # Scaled so the fp32 acoustic state_dict is ~200 MB, like the seed article's Sambert (210 MB).
    # The vocoder stays the base HifiGan (the article's size is the acoustic model's).
    acoustic = SambertConfig(
        enc_d_model=256,
        enc_d_head=32,
        enc_heads=(8,) * 10,
        enc_ffn=(2048,) * 10,
        enc_proj_dim=64,
        emotion_dim=64,
        speaker_dim=64,
        predictor_ffn=(512,) * 3,
        predictor_memory=256,
        predictor_lstm=256,
        dur_prenet=(256, 256),
        dur_lstm=256,
        dec_d_model=256,
        dec_d_head=32,
        dec_heads=(8,) * 12,
        dec_ffn=(2048,) * 12,
        dec_prenet=(512, 512),
        postnet_ffn=(1024,) * 4,
        postnet_memory=512,
        postnet_lstm=256,
    )
    return ModelConfig(acoustic=acoustic, vocoder=HifiGanConfig())


PRESETS: Dict[str, ModelConfig] = {
    "tiny": _tiny(),
    "base": ModelConfig(),
    "large": _large(),
}


def get_preset(name: str) -> ModelConfig:
    """The named preset (``tiny``, ``base``, ``large``); ValueError naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
