"""Sambert acoustic model: a PyTorch re-implementation of KAN-TTS ``KanTtsSAMBERT`` (ModelScope
``speech_sambert-hifigan_tts_zhitian_emo_zh-cn_16k``), with seeded random weights.

Pipeline (see /shared/workload.md for the dimensions of the ``base`` preset)::

    ids --4 embeddings (summed)--> TextEncoder (pre-LN attention, ConvFFN) --Linear--> text [B,T,32]
    VarianceAdaptor: pitch/energy FSMN+BiLSTM predictors (embedded by Conv1d k9, added),
                     autoregressive duration predictor (LSTM over phones, log-duration),
                     length regulator (pad to a multiple of r) + duration-relative position encoding
    memory per decoder step = [3 frames of text | speaker | emotion]            [B, S, 160]
    PNCA decoder: autoregressive, r=3 frames per step, KV cache; band-limited self-attention over past
                  steps and cross-attention over memory steps [t, t+band]       [B, S*3, 80]
    PostNet: FSMN + LSTM + Linear, residual                                    mel [B, frames, 80]

Deviation from KAN-TTS (kept for the team's pruning contract): KAN-TTS's PNCA block shares one query
projection between the self- and the memory attention; here ``cross_attn`` has its own ``q`` Linear
(+d*d+d parameters per decoder layer, ~1.6 % of the base model).

Decoder modes:

* autoregressive (default): step loop, one step = 3 frames, self-attention keys/values of past steps
  in a preallocated cache, memory keys/values projected once;
* teacher-forced parallel (``teacher_mel=`` given): one pass over all steps with band masks (the input
  of step t is the last frame of step t-1 of ``teacher_mel``), for fast distillation training. With
  ``teacher_mel`` equal to the autoregressive decoder output it reproduces that output.

Batches: inputs are [B, T] without padding (every sequence has the same number of phones); output
frames differ per item: ``mel`` is padded to the longest, ``frames`` holds each length. The frontend
produces B = 1.

Runs on the device too: Python 3.8+, torch 1.13+.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    ConvFeedForward,
    CrossAttention,
    FsmnEncoder,
    LinearFeedForward,
    MultiHeadSelfAttention,
    Prenet,
    sinusoid_table,
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
    """Pre-LN self-attention block; no residual around the attention when it changes the width (block 0)."""

    def __init__(self, d_in: int, d_model: int, n_heads: int, d_head: int, d_ffn: int, kernel: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_in, eps=1e-6)
        self.attn = MultiHeadSelfAttention(d_in, d_model, n_heads, d_head)
        self.ffn = ConvFeedForward(d_model, d_ffn, kernel)
        self.residual = d_in == d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.attn_norm(x))
        x = x + h if self.residual else h
        return self.ffn(x)


class TextEncoder(nn.Module):
    """KAN-TTS ``TextFftEncoder``: 4 summed embeddings, sinusoidal positions (input scaled by sqrt(d_model)),
    ``layers``, final LayerNorm, ``proj`` Linear (no bias) to the text projection width."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        e = cfg.embedding_dim
        self.sy_emb = nn.Embedding(cfg.n_sy, e)
        self.tone_emb = nn.Embedding(cfg.n_tone, e)
        self.syllable_flag_emb = nn.Embedding(cfg.n_syllable_flag, e)
        self.word_segment_emb = nn.Embedding(cfg.n_word_segment, e)
        self.d_model = cfg.enc_d_model
        self.layers = nn.ModuleList(
            [
                EncoderLayer(
                    e if i == 0 else cfg.enc_d_model,
                    cfg.enc_d_model,
                    h,
                    cfg.enc_d_head,
                    f,
                    cfg.enc_ffn_kernel,
                )
                for i, (h, f) in enumerate(zip(cfg.enc_heads, cfg.enc_ffn))
            ]
        )
        self.norm = nn.LayerNorm(cfg.enc_d_model, eps=1e-6)
        self.proj = nn.Linear(cfg.enc_d_model, cfg.enc_proj_dim, bias=False)

    def forward(self, sy, tone, syllable_flag, word_segment) -> torch.Tensor:
        x = self.sy_emb(sy) + self.tone_emb(tone) + self.syllable_flag_emb(syllable_flag)
        x = x + self.word_segment_emb(word_segment)
        positions = torch.arange(x.size(1), device=x.device)
        x = x * math.sqrt(self.d_model) + sinusoid_table(positions, x.size(-1)).unsqueeze(0)
        for layer in self.layers:
            x = layer(x)
        return self.proj(self.norm(x))


# -------------------------------------------------------------------------------------- variance adaptor


class FsmnPredictor(nn.Module):
    """KAN-TTS ``VarFsmnRnnNARPredictor`` (pitch, energy): FSMN -> BiLSTM -> Linear(2*lstm, 1)."""

    def __init__(self, d_in: int, cfg: SambertConfig) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            d_in, cfg.predictor_ffn, cfg.predictor_memory, cfg.predictor_kernel, cfg.predictor_shift
        )
        self.lstm = nn.LSTM(cfg.predictor_memory, cfg.predictor_lstm, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * cfg.predictor_lstm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.fsmn(x))
        return self.fc(h).squeeze(-1)


class DurationPredictor(nn.Module):
    """KAN-TTS ``VarRnnARPredictor``: autoregressive over phones. Input of phone i is the log-duration of
    phone i-1 (0 for the first) through ``prenet`` 1->128->128, concatenated with the condition (224 in
    base), 2-layer ``lstm``, ``fc`` -> log(frames + 1)."""

    def __init__(self, d_cond: int, cfg: SambertConfig) -> None:
        super().__init__()
        self.prenet = Prenet(1, cfg.dur_prenet)
        self.lstm = nn.LSTM(
            cfg.dur_prenet[-1] + d_cond, cfg.dur_lstm, num_layers=cfg.dur_lstm_layers, batch_first=True
        )
        self.fc = nn.Linear(cfg.dur_lstm, 1)

    def forward(self, cond: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
        """Teacher-forced: all phones at once from known durations [B,T]."""
        prev = F.pad(durations[:, :-1].float(), (1, 0))
        x = self.prenet(torch.log(prev + 1.0).unsqueeze(-1))
        h, _ = self.lstm(torch.cat([x, cond], dim=-1))
        return self.fc(h).squeeze(-1)

    def infer(self, cond: torch.Tensor) -> torch.Tensor:
        """Autoregressive: one LSTM step per phone, feeding back the predicted log-duration."""
        b = cond.size(0)
        x = cond.new_zeros(b, 1, 1)
        state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        outputs = []
        for i in range(cond.size(1)):
            step_in = torch.cat([self.prenet(x), cond[:, i : i + 1]], dim=-1)
            h, state = self.lstm(step_in, state)
            x = self.fc(h)
            outputs.append(x)
        return torch.cat(outputs, dim=1).squeeze(-1)


def length_regulate(x: torch.Tensor, durations: torch.Tensor, total: int) -> torch.Tensor:
    """Repeat phone i of x [B,T,D] durations[b,i] times -> [B,total,D] (zeros after each item's end)."""
    b, t, _ = x.shape
    ends = torch.cumsum(durations, dim=1)  # [B,T]
    frame = torch.arange(total, device=x.device)
    index = torch.searchsorted(ends, frame.unsqueeze(0).expand(b, -1).contiguous(), right=True)  # [B,total]
    valid = index < t
    index = index.clamp(max=t - 1)
    out = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))
    return out * valid.unsqueeze(-1).to(out.dtype)


def duration_positions(durations: torch.Tensor, total: int) -> torch.Tensor:
    """Position of each frame inside its phone, 1-based (0 after each item's end): [B,total] float."""
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


# --------------------------------------------------------------------------------------------- decoder


def band_masks(
    n_query: int, n_memory: int, band: int, device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boolean (True = attend) masks of the PNCA decoder: query step t sees its own past steps
    [t-band, t] and memory steps [t, t+band]."""
    q = torch.arange(n_query, device=device).unsqueeze(1)
    k = torch.arange(n_query, device=device).unsqueeze(0)
    m = torch.arange(n_memory, device=device).unsqueeze(0)
    self_mask = (k <= q) & (k >= q - band)
    mem_mask = (m >= q) & (m <= q + band)
    return self_mask, mem_mask


class DecoderLayer(nn.Module):
    """PNCA block: one pre-LN feeding ``self_attn`` (over past steps) and ``cross_attn`` (over memory),
    outputs summed with the residual; then ``ffn`` (kernel-1 convs as Linear)."""

    def __init__(self, d_model: int, d_mem: int, n_heads: int, d_head: int, d_ffn: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.self_attn = MultiHeadSelfAttention(d_model, d_model, n_heads, d_head)
        self.cross_attn = CrossAttention(d_model, d_mem, n_heads, d_head)
        self.ffn = LinearFeedForward(d_model, d_ffn)

    def forward(self, x, memory, self_mask, mem_mask) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.self_attn(h, self_mask) + self.cross_attn(h, memory, mem_mask)
        return self.ffn(x)


class PncaDecoder(nn.Module):
    """KAN-TTS ``MelPNCADecoder`` / ``HybridAttentionDecoder``: ``prenet`` 80->256->256->128, ``in_proj``
    (128 + memory -> d_model), ``layers``, final LayerNorm, ``out_proj`` -> r*80."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.r = cfg.outputs_per_step
        self.n_mels = cfg.n_mels
        d = cfg.dec_d_model
        self.prenet = Prenet(cfg.n_mels, cfg.dec_prenet, d)
        self.in_proj = nn.Linear(d + cfg.memory_dim, d)
        self.layers = nn.ModuleList(
            [
                DecoderLayer(d, cfg.memory_dim, h, cfg.dec_d_head, f)
                for h, f in zip(cfg.dec_heads, cfg.dec_ffn)
            ]
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.out_proj = nn.Linear(d, self.r * cfg.n_mels)

    def forward_parallel(self, inputs: torch.Tensor, memory: torch.Tensor, band: int) -> torch.Tensor:
        """All steps at once. inputs [B,L,80] (step t's input frame), memory [B,S,Dm] with S >= L; step t
        uses memory[t] as input and attends memory steps [t, t+band] of the whole memory."""
        n = inputs.size(1)
        x = self.in_proj(torch.cat([self.prenet(inputs), memory[:, :n]], dim=-1))
        self_mask, mem_mask = band_masks(n, memory.size(1), band, memory.device)
        for layer in self.layers:
            x = layer(x, memory, self_mask, mem_mask)
        return self.out_proj(self.norm(x))

    def teacher_forced(self, teacher_mel: torch.Tensor, memory: torch.Tensor, band: int) -> torch.Tensor:
        """Parallel pass with the teacher's frames: the input of step t is frame r*t - 1 of teacher_mel."""
        steps = memory.size(1)
        prev = teacher_mel[:, self.r - 1 :: self.r][:, : steps - 1]
        inputs = torch.cat([teacher_mel.new_zeros(teacher_mel.size(0), 1, self.n_mels), prev], dim=1)
        return self.forward_parallel(inputs, memory, band)

    def infer(self, memory: torch.Tensor, band: int) -> torch.Tensor:
        """Autoregressive step loop with a key/value cache: memory [B,S,Dm] -> [B,S,r*80]."""
        b, steps, _ = memory.shape
        caches = []
        for layer in self.layers:
            mk, mv = layer.cross_attn.project_memory(memory)  # projected once for all steps
            sa = layer.self_attn
            kc = memory.new_zeros(b, sa.n_heads, steps, sa.d_head)
            vc = memory.new_zeros(b, sa.n_heads, steps, sa.d_head)
            caches.append((mk, mv, kc, vc))
        frame = memory.new_zeros(b, 1, self.n_mels)
        outputs = []
        for t in range(steps):
            x = self.in_proj(torch.cat([self.prenet(frame), memory[:, t : t + 1]], dim=-1))
            lo, hi = max(0, t - band), min(steps, t + band + 1)
            for layer, (mk, mv, kc, vc) in zip(self.layers, caches):
                h = layer.attn_norm(x)
                sa, ca = layer.self_attn, layer.cross_attn
                q, k, v = sa.project(h)
                kc[:, :, t : t + 1] = k
                vc[:, :, t : t + 1] = v
                self_out = sa.out(_merge(_attend(q, kc[:, :, lo : t + 1], vc[:, :, lo : t + 1])))
                cross_out = ca.out(_merge(_attend(ca.project_query(h), mk[:, :, t:hi], mv[:, :, t:hi])))
                x = layer.ffn(x + self_out + cross_out)
            y = self.out_proj(self.norm(x))
            outputs.append(y)
            frame = y[:, :, -self.n_mels :]
        return torch.cat(outputs, dim=1)


def _attend(q, k, v):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _merge(x):
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


# --------------------------------------------------------------------------------------------- postnet


class PostNet(nn.Module):
    """FSMN (80 in, 37 past / 3 future frames) -> LSTM -> Linear -> 80 (residual added by the caller)."""

    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            cfg.n_mels, cfg.postnet_ffn, cfg.postnet_memory, cfg.postnet_kernel, cfg.postnet_shift
        )
        self.lstm = nn.LSTM(cfg.postnet_memory, cfg.postnet_lstm, batch_first=True)
        self.fc = nn.Linear(cfg.postnet_lstm, cfg.n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.fsmn(x))
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
            # keep the autoregressive feedback weak, or random weights drift to 1 or max_dur frames
            predictor.prenet.layers[0].weight.mul_(0.05)
            fc.weight.zero_()
            fc.bias.fill_(math.log(cfg.dur_init_frames + 1.0))
            ids = [
                torch.randint(1, v, (1, n), generator=generator)
                for v in (cfg.n_sy, cfg.n_tone, cfg.n_syllable_flag, cfg.n_word_segment)
            ]
            emotion = torch.full((1, n), 1, dtype=torch.long)
            speaker = torch.zeros((1, n), dtype=torch.long)
            cond = self._duration_condition(*ids, emotion, speaker)[3]
            prev = self.variance_adaptor.duration_predictor.prenet(cond.new_full((1, n, 1), fc.bias.item()))
            hidden, _ = predictor.lstm(torch.cat([prev, cond], dim=-1))
            direction = torch.randn(fc.weight.shape, generator=generator)
            # Random text barely changes a random encoder's output from phone to phone, so scale by the
            # hidden state's overall magnitude (not its variation over phones): deviations stay ~spread.
            direction = direction / direction.norm()
            projected = hidden @ direction.t()
            scale = cfg.dur_init_spread / max(float(hidden.pow(2).mean().sqrt()), 1e-6)
            fc.weight.copy_(direction * scale)
            fc.bias.sub_(float(projected.mean()) * scale)

    def _durations_from_log(self, log_durations: torch.Tensor) -> torch.Tensor:
        frames = torch.round(torch.exp(log_durations) - 1.0).long().clamp(1, self.cfg.max_dur)
        return self._cap_total(frames)

    def _cap_total(self, durations: torch.Tensor) -> torch.Tensor:
        total = durations.sum(dim=1, keepdim=True)
        cap = self.cfg.max_frames
        if bool((total > cap).any()):
            scaled = torch.div(durations * cap, total, rounding_mode="floor").clamp(min=1)
            durations = torch.where(total > cap, scaled, durations)
        return durations

    def _duration_condition(self, sy, tone, syllable_flag, word_segment, emotion, speaker):
        """Encoder + pitch/energy: (text incl. pitch/energy embeddings, pitch, energy, duration condition,
        speaker, emotion)."""
        text = self.encoder(sy, tone, syllable_flag, word_segment)  # [B,T,P]
        emo = self.emotion_emb(emotion)
        spk = self.speaker_emb(speaker)
        va = self.variance_adaptor
        cond = torch.cat([text, spk, emo], dim=-1)
        pitch = va.pitch_predictor(cond)
        energy = va.energy_predictor(cond)
        text = text + va.pitch_emb(pitch.unsqueeze(1)).transpose(1, 2)
        text = text + va.energy_emb(energy.unsqueeze(1)).transpose(1, 2)
        return text, pitch, energy, torch.cat([text, spk, emo], dim=-1), spk, emo

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
        """ids [B,T] -> AcousticOutput. ``durations`` [B,T] forces frames per phone (teacher-forced lengths);
        ``teacher_mel`` [B,>=frames,80] switches the decoder to the parallel teacher-forced pass."""
        if sy.dim() != 2 or sy.size(1) < 1:
            raise ValueError(f"Sambert: expected ids of shape [batch, phones>=1], got {tuple(sy.shape)}")
        text, pitch, energy, dur_cond, spk, emo = self._duration_condition(
            sy, tone, syllable_flag, word_segment, emotion, speaker
        )
        va = self.variance_adaptor
        if durations is None:
            log_durations = va.duration_predictor.infer(dur_cond)
            durations = self._durations_from_log(log_durations)
        else:
            if durations.shape != sy.shape:
                raise ValueError(
                    f"Sambert: durations shape {tuple(durations.shape)} != ids shape {tuple(sy.shape)}"
                )
            durations = durations.long().clamp(min=0)
            if bool((durations.sum(dim=1) < 1).any()):
                raise ValueError("Sambert: forced durations give zero frames")
            log_durations = va.duration_predictor(dur_cond, durations)

        frames = durations.sum(dim=1)
        max_frames = int(frames.max())
        steps = (max_frames + self.r - 1) // self.r
        padded = steps * self.r
        lr_text = length_regulate(text, durations, padded)
        lr_text = lr_text + sinusoid_table(duration_positions(durations, padded), text.size(-1))
        lr_text = lr_text * (duration_positions(durations, padded) > 0).unsqueeze(-1).to(lr_text.dtype)
        b = sy.size(0)
        step_start = torch.arange(steps, device=sy.device) * self.r
        memory = torch.cat(
            [
                lr_text.reshape(b, steps, self.r * text.size(-1)),
                length_regulate(spk, durations, padded)[:, step_start],
                length_regulate(emo, durations, padded)[:, step_start],
            ],
            dim=-1,
        )
        band = max(1, int(float(durations.max()) / self.r + 0.5))
        if teacher_mel is None:
            dec = self.decoder.infer(memory, band)
        else:
            if teacher_mel.size(1) < max_frames:
                raise ValueError(
                    f"Sambert: teacher_mel has {teacher_mel.size(1)} frames, the durations need {max_frames}"
                )
            teacher = teacher_mel[:, :padded]
            if teacher.size(1) < padded:
                teacher = F.pad(teacher, (0, 0, 0, padded - teacher.size(1)))
            dec = self.decoder.teacher_forced(teacher, memory, band)
        # frames past each item's length (padding to a multiple of r) are zeroed before the post-net
        valid = (torch.arange(padded, device=sy.device).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(-1)
        mel_decoder = dec.reshape(b, padded, self.cfg.n_mels) * valid.to(dec.dtype)
        mel = mel_decoder + self.postnet(mel_decoder)
        return AcousticOutput(
            mel=mel[:, :max_frames],
            durations=durations,
            frames=frames,
            mel_decoder=mel_decoder[:, :max_frames],
            log_durations=log_durations,
            pitch=pitch,
            energy=energy,
        )
