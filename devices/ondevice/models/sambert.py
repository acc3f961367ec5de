"""Sambert acoustic model: a PyTorch re-implementation of KAN-TTS ``KanTtsSAMBERT`` (ModelScope
``speech_sambert-hifigan_tts_zhitian_emo_zh-cn_16k``).

It reproduces the original forward semantics (checked against the original code's outputs in
``shared/fixtures/kantts-small``; the numbered points of that fixture's README are cited as [n]) and loads
the original checkpoints through ``variants.modelscope``. The built-in presets are this architecture with
seeded weights. Pipeline::

    ids --4 embeddings summed, x sqrt(d_model) + position table--> FFT blocks --LN, Linear--> text [B,T,P]
    VarianceAdaptor: pitch/energy FSMN+BiLSTM predictors on [text|spk|emo], embedded (Conv1d k9) and
                     added to the text; autoregressive duration predictor (ReLU'd log(1+frames)) on
                     [text_aug|spk|emo]; length regulator (pad to a multiple of r) + duration position code
    memory per decoder step = [r frames of text | speaker | emotion of the group's first frame]
    PNCA decoder: autoregressive, r frames per step; a shared query attends its own past steps (band
                  x_band) and the memory steps [t, t + h_band]                       [B, S*r, 80]
    PostNet (masked FSMN + LSTM + Linear, residual)                                   mel [B, frames, 80]

Two implementations, one set of weights (``SambertConfig.optimized``):

* ``optimized=False`` (``original``): what the original code does and costs: kernel-1 convolutions run as
  ``Conv1d``, the decoder attends over its whole history with a mask and grows its key/value cache step by
  step, and the memory attention scores every memory step under a mask;
* ``optimized=True`` (the ``optimize`` recipe step): kernel-1 convolutions as ``Linear``, the decoder's
  self-attention cache preallocated and both attentions computed on their band only. Outputs equal the
  original's within float rounding (1e-5).

``teacher_mel=`` switches the decoder to a parallel teacher-forced pass (for distillation): the input of
step t is the last frame of step t-1 of ``teacher_mel``.

Batches: inputs are [B, T] without padding (every sequence has the same number of phones). The frontend
produces B = 1. Runs on the device too: Python 3.8+, torch 1.13+.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    ConvFeedForward,
    FsmnEncoder,
    MemoryAttention,
    MultiHeadSelfAttention,
    PointwiseFeedForward,
    Prenet,
    attend,
    duration_position_code,
    duration_timescales,
    encoder_position_table,
    merge_heads,
)
from .presets import SambertConfig


class AcousticOutput(NamedTuple):
    """What ``Sambert.forward`` returns. ``mel`` [B, frames, 80] (after the post-net), ``durations`` [B, T]
    long (frames per phone), ``frames`` [B] long, ``mel_decoder`` [B, frames, 80] (before the post-net),
    ``log_durations`` [B, T] (predictor output, log(frames+1)), ``pitch`` / ``energy`` [B, T]."""

    mel: torch.Tensor
    durations: torch.Tensor
    frames: torch.Tensor
    mel_decoder: torch.Tensor
    log_durations: torch.Tensor
    pitch: torch.Tensor
    energy: torch.Tensor


# ----------------------------------------------------------------------------------------------- encoder


class EncoderLayer(nn.Module):
    """Pre-LN FFT block [4]; no residual around the attention when it changes the width (block 0)."""

    def __init__(
        self, d_in: int, d_model: int, n_heads: int, d_head: int, d_ffn: int, kernel: int, as_linear: bool
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_in, eps=1e-6)
        self.attn = MultiHeadSelfAttention(d_in, d_model, n_heads, d_head)
        self.ffn = ConvFeedForward(d_model, d_ffn, kernel, as_linear)
        self.residual = d_in == d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.attn_norm(x))
        x = x + h if self.residual else h
        return self.ffn(x)


class TextEncoder(nn.Module):
    """KAN-TTS ``TextFftEncoder`` [1-5]: 4 summed embeddings, times sqrt(d_model), plus the stored position
    table (``position_enc``), FFT blocks, final LayerNorm, ``proj`` Linear (no bias)."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        e = cfg.embedding_dim
        self.sy_emb = nn.Embedding(cfg.n_sy, e)
        self.tone_emb = nn.Embedding(cfg.n_tone, e)
        self.syllable_flag_emb = nn.Embedding(cfg.n_syllable_flag, e)
        self.word_segment_emb = nn.Embedding(cfg.n_word_segment, e)
        self.d_model = cfg.enc_d_model
        self.register_buffer("position_enc", encoder_position_table(cfg.max_len, e))
        self.layers = nn.ModuleList(
            [
                EncoderLayer(
                    e if i == 0 else cfg.enc_d_model,
                    cfg.enc_d_model,
                    h,
                    cfg.enc_d_head,
                    f,
                    cfg.enc_ffn_kernel,
                    cfg.optimized,
                )
                for i, (h, f) in enumerate(zip(cfg.enc_heads, cfg.enc_ffn))
            ]
        )
        self.norm = nn.LayerNorm(cfg.enc_d_model, eps=1e-6)
        self.proj = nn.Linear(cfg.enc_d_model, cfg.enc_proj_dim, bias=False)

    def forward(self, sy, tone, syllable_flag, word_segment) -> torch.Tensor:
        t = sy.size(1)
        if t > self.position_enc.size(1):
            raise ValueError(
                f"Sambert: {t} phones, more than the model's position table ({self.position_enc.size(1)}, "
                "max_len); split the text"
            )
        x = self.sy_emb(sy) + self.tone_emb(tone) + self.syllable_flag_emb(syllable_flag)
        x = x + self.word_segment_emb(word_segment)
        x = x * math.sqrt(self.d_model) + self.position_enc[:, :t]
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.norm(x))


# -------------------------------------------------------------------------------------- variance adaptor


class FsmnPredictor(nn.Module):
    """KAN-TTS ``VarFsmnRnnNARPredictor`` (pitch, energy) [7, 18]: FSMN -> BiLSTM -> Linear(2*lstm, 1)."""

    def __init__(self, d_in: int, cfg: SambertConfig) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            d_in,
            cfg.predictor_ffn,
            cfg.predictor_memory,
            cfg.predictor_kernel,
            cfg.predictor_shift,
            cfg.optimized,
        )
        self.lstm = nn.LSTM(cfg.predictor_memory, cfg.predictor_lstm, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * cfg.predictor_lstm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.fsmn(x))
        return self.fc(h).squeeze(-1)


class DurationPredictor(nn.Module):
    """KAN-TTS ``VarRnnARPredictor`` [8]: autoregressive over phones. Step i: ``prenet`` of the previous
    output, concatenated before the condition, 2-layer ``lstm``, ``fc``, ReLU -> log(1 + frames) >= 0."""

    def __init__(self, d_cond: int, cfg: SambertConfig) -> None:
        super().__init__()
        self.prenet = Prenet(1, cfg.dur_prenet)
        self.lstm = nn.LSTM(
            cfg.dur_prenet[-1] + d_cond, cfg.dur_lstm, num_layers=cfg.dur_lstm_layers, batch_first=True
        )
        self.fc = nn.Linear(cfg.dur_lstm, 1)

    def forward(self, cond: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: all phones at once, step i fed log(1 + durations[i-1]) (step 0: 0)."""
        prev = torch.log(F.pad(durations[:, :-1].float(), (1, 0)) + 1.0)  # step 0: log(1) = 0
        h, _ = self.lstm(torch.cat([self.prenet(prev.unsqueeze(-1)), cond], dim=-1))
        return F.relu(self.fc(h)).squeeze(-1)

    def infer(self, cond: torch.Tensor) -> torch.Tensor:
        """Autoregressive: one LSTM step per phone, feeding back the (ReLU'd, unrounded) output."""
        x = cond.new_zeros(cond.size(0), 1, 1)
        state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        outputs = []
        for i in range(cond.size(1)):
            h, state = self.lstm(torch.cat([self.prenet(x), cond[:, i : i + 1]], dim=-1), state)
            x = F.relu(self.fc(h))
            outputs.append(x)
        return torch.cat(outputs, dim=1).squeeze(-1)


def length_regulate(x: torch.Tensor, durations: torch.Tensor, total: int) -> torch.Tensor:
    """Repeat phone i of x [B,T,D] durations[b,i] times -> [B,total,D] (zeros after each item's end) [9]."""
    b, t, _ = x.shape
    ends = torch.cumsum(durations, dim=1)  # [B,T]
    frame = torch.arange(total, device=x.device)
    index = torch.searchsorted(ends, frame.unsqueeze(0).expand(b, -1).contiguous(), right=True)  # [B,total]
    valid = index < t
    index = index.clamp(max=t - 1)
    out = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))
    return out * valid.unsqueeze(-1).to(out.dtype)


def duration_positions(durations: torch.Tensor, total: int) -> torch.Tensor:
    """Position of each frame inside its phone, 1-based; 0 on padded frames [10]: [B,total] float."""
    b, t = durations.shape
    ends = torch.cumsum(durations, dim=1)
    starts = ends - durations
    frame = torch.arange(total, device=durations.device).unsqueeze(0).expand(b, -1).contiguous()
    index = torch.searchsorted(ends, frame, right=True)
    valid = index < t
    start = torch.gather(starts, 1, index.clamp(max=t - 1))
    return ((frame - start + 1) * valid).float()


class VarianceAdaptor(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        d_cond = cfg.enc_proj_dim + cfg.speaker_dim + cfg.emotion_dim
        self.pitch_predictor = FsmnPredictor(d_cond, cfg)
        self.energy_predictor = FsmnPredictor(d_cond, cfg)
        self.duration_predictor = DurationPredictor(d_cond, cfg)
        k = cfg.variance_emb_kernel
        self.pitch_emb = nn.Conv1d(1, cfg.enc_proj_dim, k, padding=(k - 1) // 2)
        self.energy_emb = nn.Conv1d(1, cfg.enc_proj_dim, k, padding=(k - 1) // 2)
        self.register_buffer("dur_timescales", duration_timescales(cfg.enc_proj_dim))


# --------------------------------------------------------------------------------------------- decoder


def band_masks(
    n_query: int, n_memory: int, x_band: int, h_band: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean (True = attend) masks of the PNCA decoder [14]: query step t sees its own steps
    [t - x_band, t] and memory steps [t, t + h_band]."""
    q = torch.arange(n_query, device=device).unsqueeze(1)
    k = torch.arange(n_query, device=device).unsqueeze(0)
    m = torch.arange(n_memory, device=device).unsqueeze(0)
    self_mask = (k <= q) & (k >= q - x_band)
    mem_mask = (m >= q) & (m <= q + h_band)
    return self_mask, mem_mask


class DecoderLayer(nn.Module):
    """PNCA block [14]: one LayerNorm and one ``self_attn.qkv`` projection; the query attends the past
    steps (``self_attn``) and the memory (``cross_attn``, k/v from the memory); both outputs are added to
    the residual; then ``ffn``."""

    def __init__(
        self, d_model: int, d_mem: int, n_heads: int, d_head: int, d_ffn: int, as_linear: bool
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.self_attn = MultiHeadSelfAttention(d_model, d_model, n_heads, d_head)
        self.cross_attn = MemoryAttention(d_model, d_mem, n_heads, d_head)
        self.ffn = PointwiseFeedForward(d_model, d_ffn, as_linear)

    def forward(self, x, memory_kv, self_mask, mem_mask) -> torch.Tensor:
        q, k, v = self.self_attn.project(self.attn_norm(x))
        mk, mv = memory_kv
        x = x + self.self_attn.out(merge_heads(attend(q, k, v, self_mask)))
        x = x + self.cross_attn.out(merge_heads(attend(q, mk, mv, mem_mask)))
        return self.ffn(x)


class PncaDecoder(nn.Module):
    """KAN-TTS ``MelPNCADecoder`` [12-16]: ``prenet`` 80 -> units -> d_model, ``in_proj`` on
    [memory step | prenet] times sqrt(d_model), PNCA ``layers``, final LayerNorm, ``out_proj`` -> r*80."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.r = cfg.outputs_per_step
        self.n_mels = cfg.n_mels
        self.optimized = cfg.optimized
        d = cfg.dec_d_model
        self.scale = math.sqrt(d)
        self.prenet = Prenet(cfg.n_mels, cfg.dec_prenet, d)
        self.in_proj = nn.Linear(cfg.memory_dim + d, d)
        self.layers = nn.ModuleList(
            [
                DecoderLayer(d, cfg.memory_dim, h, cfg.dec_d_head, f, cfg.optimized)
                for h, f in zip(cfg.dec_heads, cfg.dec_ffn)
            ]
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.out_proj = nn.Linear(d, self.r * cfg.n_mels)

    def _input(self, frames: torch.Tensor, memory_steps: torch.Tensor) -> torch.Tensor:
        return self.in_proj(torch.cat([memory_steps, self.prenet(frames)], dim=-1)) * self.scale

    def forward_parallel(
        self, inputs: torch.Tensor, memory: torch.Tensor, x_band: int, h_band: int
    ) -> torch.Tensor:
        """All steps at once. inputs [B,L,80] (step t's input frame), memory [B,S,Dm] with S >= L."""
        n = inputs.size(1)
        x = self._input(inputs, memory[:, :n])
        self_mask, mem_mask = band_masks(n, memory.size(1), x_band, h_band, memory.device)
        for layer in self.layers:
            x = layer(x, layer.cross_attn.project_memory(memory), self_mask, mem_mask)
        return self.out_proj(self.norm(x))

    def teacher_forced(
        self, teacher_mel: torch.Tensor, memory: torch.Tensor, x_band: int, h_band: int
    ) -> torch.Tensor:
        """Parallel pass with the teacher's frames: the input of step t is frame r*t - 1 of teacher_mel."""
        steps = memory.size(1)
        prev = teacher_mel[:, self.r - 1 :: self.r][:, : steps - 1]
        inputs = torch.cat([teacher_mel.new_zeros(teacher_mel.size(0), 1, self.n_mels), prev], dim=1)
        return self.forward_parallel(inputs, memory, x_band, h_band)

    def infer(self, memory: torch.Tensor, x_band: int, h_band: int) -> torch.Tensor:
        """Autoregressive step loop: memory [B,S,Dm] -> [B,S,r*80]. Step 0 gets a zero frame, step t the
        last frame of step t-1 [12]."""
        return torch.cat(list(self.steps(memory, x_band, h_band)), dim=1)

    def steps(self, memory: torch.Tensor, x_band: int, h_band: int) -> Iterator[torch.Tensor]:
        """The step loop as a generator: one [B,1,r*80] output per autoregressive step, handed over as soon
        as the step has run (streaming synthesis consumes them frame group by frame group)."""
        if self.optimized:
            return self._infer_banded(memory, x_band, h_band)
        return self._infer_full(memory, x_band, h_band)

    def _infer_full(self, memory: torch.Tensor, x_band: int, h_band: int) -> Iterator[torch.Tensor]:
        """The original's cost model: a growing cache, every past step and memory step scored, masked."""
        b, steps, _ = memory.shape
        mem_kv = [layer.cross_attn.project_memory(memory) for layer in self.layers]
        caches = [(None, None)] * len(self.layers)
        mem_pos = torch.arange(steps, device=memory.device)
        frame = memory.new_zeros(b, 1, self.n_mels)
        for t in range(steps):
            x = self._input(frame, memory[:, t : t + 1])
            past = torch.arange(t + 1, device=memory.device)
            self_mask = (past >= t - x_band).unsqueeze(0)
            mem_mask = ((mem_pos >= t) & (mem_pos <= t + h_band)).unsqueeze(0)
            for i, layer in enumerate(self.layers):
                q, k, v = layer.self_attn.project(layer.attn_norm(x))
                kc, vc = caches[i]
                kc = k if kc is None else torch.cat([kc, k], dim=2)
                vc = v if vc is None else torch.cat([vc, v], dim=2)
                caches[i] = (kc, vc)
                mk, mv = mem_kv[i]
                x = x + layer.self_attn.out(merge_heads(attend(q, kc, vc, self_mask)))
                x = x + layer.cross_attn.out(merge_heads(attend(q, mk, mv, mem_mask)))
                x = layer.ffn(x)
            y = self.out_proj(self.norm(x))
            yield y
            frame = y[:, :, -self.n_mels :]

    def _infer_banded(self, memory: torch.Tensor, x_band: int, h_band: int) -> Iterator[torch.Tensor]:
        """The ``optimize`` step's decoder: preallocated cache, attention on the bands only."""
        b, steps, _ = memory.shape
        caches = []
        for layer in self.layers:
            mk, mv = layer.cross_attn.project_memory(memory)  # projected once for all steps
            sa = layer.self_attn
            kc = memory.new_zeros(b, sa.n_heads, steps, sa.d_head)
            vc = memory.new_zeros(b, sa.n_heads, steps, sa.d_head)
            caches.append((mk, mv, kc, vc))
        frame = memory.new_zeros(b, 1, self.n_mels)
        for t in range(steps):
            x = self._input(frame, memory[:, t : t + 1])
            lo, hi = max(0, t - x_band), min(steps, t + h_band + 1)
            for layer, (mk, mv, kc, vc) in zip(self.layers, caches):
                q, k, v = layer.self_attn.project(layer.attn_norm(x))
                kc[:, :, t : t + 1] = k
                vc[:, :, t : t + 1] = v
                x = x + layer.self_attn.out(
                    merge_heads(attend(q, kc[:, :, lo : t + 1], vc[:, :, lo : t + 1]))
                )
                x = x + layer.cross_attn.out(merge_heads(attend(q, mk[:, :, t:hi], mv[:, :, t:hi])))
                x = layer.ffn(x)
            y = self.out_proj(self.norm(x))
            yield y
            frame = y[:, :, -self.n_mels :]


# --------------------------------------------------------------------------------------------- postnet


class PostNet(nn.Module):
    """KAN-TTS ``PostNet`` [17]: masked FSMN (80 in) -> LSTM -> Linear -> 80 (the caller adds the
    residual)."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            cfg.n_mels,
            cfg.postnet_ffn,
            cfg.postnet_memory,
            cfg.postnet_kernel,
            cfg.postnet_shift,
            cfg.optimized,
        )
        self.lstm = nn.LSTM(cfg.postnet_memory, cfg.postnet_lstm, batch_first=True)
        self.fc = nn.Linear(cfg.postnet_lstm, cfg.n_mels)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, _ = self.lstm(self.fsmn(x, keep))
        return self.fc(h)


# ---------------------------------------------------------------------------------------------- model


class Sambert(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.r = cfg.outputs_per_step
        self.encoder = TextEncoder(cfg)
        self.emotion_emb = nn.Embedding(cfg.n_emotions, cfg.emotion_dim)
        self.speaker_emb = nn.Embedding(cfg.n_speakers, cfg.speaker_dim)
        self.variance_adaptor = VarianceAdaptor(cfg)
        self.decoder = PncaDecoder(cfg)
        self.postnet = PostNet(cfg)

    def init_duration_output(self, generator: Optional[torch.Generator] = None) -> None:
        """Make random weights predict realistic durations: log(frames+1) ~ N(log(init+1), spread).

        Calibrated on one pass over random ids: the output weight gets a random direction scaled by the
        hidden states' magnitude and the bias centres the log-durations on ``log(dur_init_frames + 1)``.
        """
        cfg = self.cfg
        predictor = self.variance_adaptor.duration_predictor
        fc = predictor.fc
        n = 32
        with torch.no_grad():
            # keep the autoregressive feedback weak, or random weights drift to 0 or very long phones
            predictor.prenet.layers[0].weight.mul_(0.05)
            fc.weight.zero_()
            fc.bias.fill_(math.log(cfg.dur_init_frames + 1.0))
            ids = [
                torch.randint(1, v, (1, n), generator=generator)
                for v in (cfg.n_sy, cfg.n_tone, cfg.n_syllable_flag, cfg.n_word_segment)
            ]
            emotion = torch.full((1, n), 1, dtype=torch.long)
            speaker = torch.zeros((1, n), dtype=torch.long)
            cond = self._conditions(*ids, emotion, speaker)["dur_cond"]
            prev = predictor.prenet(cond.new_full((1, n, 1), fc.bias.item()))
            hidden, _ = predictor.lstm(torch.cat([prev, cond], dim=-1))
            direction = torch.randn(fc.weight.shape, generator=generator)
            # Random text barely changes a random encoder's output from phone to phone, so scale by the
            # hidden state's overall magnitude (not its variation over phones): deviations stay ~spread.
            direction = direction / direction.norm()
            projected = hidden @ direction.t()
            scale = cfg.dur_init_spread / max(float(hidden.pow(2).mean().sqrt()), 1e-6)
            fc.weight.copy_(direction * scale)
            fc.bias.sub_(float(projected.mean()) * scale)

    def _conditions(self, sy, tone, syllable_flag, word_segment, emotion, speaker) -> Dict[str, torch.Tensor]:
        """Encoder + pitch/energy [6, 7]: text_hid (encoder output), text (with the pitch and energy
        embeddings added), pitch, energy, the duration condition [text | spk | emo], spk, emo."""
        text_hid = self.encoder(sy, tone, syllable_flag, word_segment)  # [B,T,P]
        emo = self.emotion_emb(emotion)
        spk = self.speaker_emb(speaker)
        va = self.variance_adaptor
        cond = torch.cat([text_hid, spk, emo], dim=-1)
        pitch = va.pitch_predictor(cond)
        energy = va.energy_predictor(cond)
        text = text_hid + va.pitch_emb(pitch.unsqueeze(1)).transpose(1, 2)
        text = text + va.energy_emb(energy.unsqueeze(1)).transpose(1, 2)
        return {
            "text_hid": text_hid,
            "text": text,
            "pitch": pitch,
            "energy": energy,
            "dur_cond": torch.cat([text, spk, emo], dim=-1),
            "spk": spk,
            "emo": emo,
        }

    def prepare(
        self,
        sy: torch.Tensor,
        tone: torch.Tensor,
        syllable_flag: torch.Tensor,
        word_segment: torch.Tensor,
        emotion: torch.Tensor,
        speaker: torch.Tensor,
        durations: Optional[torch.Tensor] = None,
    ) -> Dict[str, object]:
        """Everything before the decoder: conditions, durations (predicted or forced), the decoder memory
        [B,steps,Dm], the band width, the number of steps and the frame mask ``keep`` [B,steps*r,1]."""
        if sy.dim() != 2 or sy.size(1) < 1:
            raise ValueError(f"Sambert: expected ids of shape [batch, phones>=1], got {tuple(sy.shape)}")
        c = self._conditions(sy, tone, syllable_flag, word_segment, emotion, speaker)
        va = self.variance_adaptor
        if durations is None:
            log_durations = va.duration_predictor.infer(c["dur_cond"])
            frames_float = torch.exp(log_durations) - 1.0
            durations = torch.floor(frames_float + 0.5).long()  # [8]: no clamp, 0 frames allowed
            longest = float(frames_float.max())  # [15]: the unrounded prediction
        else:
            if durations.shape != sy.shape:
                raise ValueError(
                    f"Sambert: durations shape {tuple(durations.shape)} != ids shape {tuple(sy.shape)}"
                )
            durations = durations.long()
            if bool((durations < 0).any()):
                raise ValueError("Sambert: forced durations must be >= 0")
            log_durations = va.duration_predictor(c["dur_cond"], durations)
            longest = float(durations.max())
        frames = durations.sum(dim=1)
        max_frames = int(frames.max())
        if int(frames.min()) < 1:
            raise ValueError("Sambert: every phone got 0 frames; nothing to decode")
        if max_frames > self.cfg.max_frames:
            raise ValueError(
                f"Sambert: {max_frames} frames, more than max_frames={self.cfg.max_frames}; split the text"
            )
        band = int(longest / self.r + 0.5)
        steps = (max_frames + self.r - 1) // self.r
        padded = steps * self.r
        positions = duration_positions(durations, padded)
        lr_text = length_regulate(c["text"], durations, padded)
        lr_text = lr_text + duration_position_code(positions, va.dur_timescales)  # [10]
        b = sy.size(0)
        group_start = torch.arange(steps, device=sy.device) * self.r
        memory = torch.cat(  # [11]
            [
                lr_text.reshape(b, steps, self.r * lr_text.size(-1)),
                length_regulate(c["spk"], durations, padded)[:, group_start],
                length_regulate(c["emo"], durations, padded)[:, group_start],
            ],
            dim=-1,
        )
        keep = (torch.arange(padded, device=sy.device).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(-1)
        return {"conditions": c, "durations": durations, "log_durations": log_durations, "frames": frames,
                "max_frames": max_frames, "band": band, "steps": steps, "padded": padded, "memory": memory,
                "keep": keep.to(memory.dtype)}

    def run(
        self,
        sy: torch.Tensor,
        tone: torch.Tensor,
        syllable_flag: torch.Tensor,
        word_segment: torch.Tensor,
        emotion: torch.Tensor,
        speaker: torch.Tensor,
        durations: Optional[torch.Tensor] = None,
        teacher_mel: Optional[torch.Tensor] = None,
    ) -> Dict[str, object]:
        """The forward pass with every intermediate, named after the original's outputs: durations,
        log_duration_predictions, pitch_predictions, energy_predictions, text_hid, LR_length_rounded,
        x_band_width, h_band_width, memory [B,S,Dm], dec_outputs and postnet_outputs [B,S*r,80] (frames past
        each item's length are zero)."""
        p = self.prepare(sy, tone, syllable_flag, word_segment, emotion, speaker, durations)
        c, memory, band, padded, frames = p["conditions"], p["memory"], p["band"], p["padded"], p["frames"]
        max_frames, b = p["max_frames"], sy.size(0)
        if teacher_mel is None:
            dec = self.decoder.infer(memory, band, band)
        else:
            if teacher_mel.size(1) < max_frames:
                raise ValueError(
                    f"Sambert: teacher_mel has {teacher_mel.size(1)} frames, the durations need {max_frames}"
                )
            teacher = teacher_mel[:, :padded]
            if teacher.size(1) < padded:
                teacher = F.pad(teacher, (0, 0, 0, padded - teacher.size(1)))
            dec = self.decoder.teacher_forced(teacher, memory, band, band)
        keep = p["keep"]
        dec_outputs = dec.reshape(b, padded, self.cfg.n_mels) * keep  # [16]
        postnet_outputs = (dec_outputs + self.postnet(dec_outputs, keep)) * keep  # [17]
        return {
            "durations": p["durations"],
            "log_duration_predictions": p["log_durations"],
            "pitch_predictions": c["pitch"],
            "energy_predictions": c["energy"],
            "text_hid": c["text_hid"],
            "LR_length_rounded": frames,
            "x_band_width": band,
            "h_band_width": band,
            "memory": memory,
            "dec_outputs": dec_outputs,
            "postnet_outputs": postnet_outputs,
        }

    def forward(
        self,
        sy: torch.Tensor,
        tone: torch.Tensor,
        syllable_flag: torch.Tensor,
        word_segment: torch.Tensor,
        emotion: torch.Tensor,
        speaker: torch.Tensor,
        durations: Optional[torch.Tensor] = None,
        teacher_mel: Optional[torch.Tensor] = None,
    ) -> AcousticOutput:
        """ids [B,T] -> AcousticOutput. ``durations`` [B,T] forces frames per phone; ``teacher_mel``
        [B,>=frames,80] switches the decoder to the parallel teacher-forced pass."""
        out = self.run(sy, tone, syllable_flag, word_segment, emotion, speaker, durations, teacher_mel)
        frames = out["LR_length_rounded"]
        n = int(frames.max())
        return AcousticOutput(
            mel=out["postnet_outputs"][:, :n],
            durations=out["durations"],
            frames=frames,
            mel_decoder=out["dec_outputs"][:, :n],
            log_durations=out["log_duration_predictions"],
            pitch=out["pitch_predictions"],
            energy=out["energy_predictions"],
        )
