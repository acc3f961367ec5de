"""Streaming synthesis: audio chunk by chunk while the acoustic model is still decoding.

The reference model's pieces and what streaming each one takes:

* the PNCA decoder is autoregressive: ``PncaDecoder.steps`` hands over each step's ``r`` frames as soon
  as the step has run;
* the post-net is four FSMN layers (each a depthwise convolution over time that sees ``left`` past and
  ``right`` future frames) and a unidirectional LSTM: a frame's post-net output is final once ``right``
  x layers decoder frames after it exist. ``PostnetStream`` recomputes the FSMN layers on a window with
  that much context on both sides and carries the LSTM state across chunks, so the mel equals the
  whole-utterance mel;
* the HifiGan vocoder is causal by default: a chunk of mel frames vocoded with ``HifiGan.context_frames()``
  frames of past context (carried, never re-synthesised as output) gives the whole utterance's samples.
  A non-causal configuration needs future frames too; the same context rule then also delays the chunk
  by ``right`` frames (the overlap), and the error is what tests/test_streaming.py measures.

Streamed audio equals the whole-utterance audio up to float rounding (different convolution lengths may
take different kernels): tests/test_streaming.py holds it to ``STREAM_TOLERANCE``.

Standard library and torch only (runs on the device), Python 3.8+.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional

import torch

#: max |streamed - whole| of the waveform (full scale 1.0) and of the mel, in tests/test_streaming.py.
STREAM_TOLERANCE = 1e-5


class PostnetStream:
    """The post-net over decoder frames that arrive in order; ``pull`` returns the frames now final."""

    def __init__(self, postnet, keep: torch.Tensor, padded: int) -> None:
        self.postnet = postnet
        self.keep = keep                    # [1, padded, 1]
        self.padded = padded
        self.left = sum(m.left for m in postnet.fsmn.memories)
        self.right = sum(m.right for m in postnet.fsmn.memories)
        self.frames: list = []              # decoder frames pushed, [1, k, n_mels] each
        self.available = 0
        self.done = 0
        self.state = None
        self._dec: Optional[torch.Tensor] = None

    def push(self, dec_frames: torch.Tensor) -> None:
        self.frames.append(dec_frames)
        self.available += dec_frames.size(1)
        self._dec = None

    def _decoder(self) -> torch.Tensor:
        if self._dec is None:
            self._dec = torch.cat(self.frames, dim=1)
            self.frames = [self._dec]
        return self._dec

    def pull(self, final: bool = False) -> Optional[torch.Tensor]:
        """The post-net mel [1, f, n_mels] of the frames that became final (None when none did)."""
        end = self.padded if final else min(self.padded, self.available - self.right)
        if end <= self.done:
            return None
        a = self.done
        lo = max(0, a - self.left)
        hi = min(self.available, end + self.right)
        keep = self.keep[:, lo:hi]
        dec = self._decoder()[:, lo:hi] * keep
        h = self.postnet.fsmn(dec, keep)[:, a - lo:end - lo]
        out, self.state = self.postnet.lstm(h, self.state)
        mel = (dec[:, a - lo:end - lo] + self.postnet.fc(out)) * keep[:, a - lo:end - lo]
        self.done = end
        return mel


class VocoderStream:
    """The vocoder over mel frames that arrive in order, with its receptive field carried as context."""

    def __init__(self, vocoder) -> None:
        self.vocoder = vocoder
        self.left, self.right = vocoder.context_frames()
        self.hop = vocoder.cfg.hop_length
        self.mel: list = []
        self.available = 0
        self.done = 0

    def push(self, mel: torch.Tensor) -> None:
        self.mel.append(mel)
        self.available += mel.size(1)

    def ready(self, final: bool = False) -> int:
        """Frames that can be vocoded now: all of them at the end of the utterance (``final``), else those
        whose future context (none for a causal vocoder) has arrived."""
        limit = self.available if final else self.available - self.right
        return max(0, limit - self.done)

    def pull(self, frames: int) -> torch.Tensor:
        """Waveform [samples] of the next ``frames`` frames (at most ``ready``)."""
        mel = torch.cat(self.mel, dim=1)
        self.mel = [mel]
        a, e = self.done, self.done + frames
        lo = max(0, a - self.left)
        hi = min(self.available, e + self.right)
        wav = self.vocoder(mel[:, lo:hi].transpose(1, 2)).reshape(-1)
        self.done = e
        return wav[(a - lo) * self.hop:(e - lo) * self.hop]


def stream_mel(acoustic, inputs: Dict[str, torch.Tensor],
               durations: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """The post-net mel [1, f, n_mels] of one utterance in order, each piece handed over as soon as it is
    final; the pieces together are the whole utterance's ``mel`` (its ``frames`` frames)."""
    p = acoustic.prepare(**inputs, durations=durations)
    if p["memory"].size(0) != 1:
        raise ValueError("streaming: one utterance at a time (batch of 1)")
    r, n_mels, total = acoustic.r, acoustic.cfg.n_mels, p["max_frames"]
    post = PostnetStream(acoustic.postnet, p["keep"], p["padded"])
    sent = 0
    for y in acoustic.decoder.steps(p["memory"], p["band"], p["band"]):
        post.push(y.reshape(1, r, n_mels))
        mel = post.pull()
        if mel is not None and sent < total:
            mel = mel[:, :total - sent]
            sent += mel.size(1)
            yield mel
    mel = post.pull(final=True)
    if mel is not None and sent < total:
        yield mel[:, :total - sent]


def stream(acoustic, vocoder, inputs: Dict[str, torch.Tensor], chunk_frames: int,
           durations: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Waveform chunks of ``chunk_frames`` mel frames each (the last one shorter) for one utterance,
    each handed over as soon as it is synthesised. ``inputs``: the frontend's tensors (batch of 1)."""
    if chunk_frames < 1:
        raise ValueError(f"streaming: chunk_frames must be >= 1, got {chunk_frames}")
    voc = VocoderStream(vocoder)
    for mel in stream_mel(acoustic, inputs, durations):
        voc.push(mel)
        while voc.ready() >= chunk_frames:
            yield voc.pull(chunk_frames)
    while voc.ready(final=True) > 0:
        yield voc.pull(min(chunk_frames, voc.ready(final=True)))


def realtime_margin(ready_s, chunk_s) -> Optional[float]:
    """Seconds by which each chunk was ready before the previous one finished playing, at the worst chunk
    (negative: playback stalled). ``ready_s``: when each chunk was ready (same clock, in order);
    ``chunk_s``: each chunk's audio length. None with fewer than two chunks (nothing to be late for)."""
    if len(ready_s) < 2:
        return None
    play_end = ready_s[0] + chunk_s[0]
    worst = None
    for ready, length in zip(ready_s[1:], chunk_s[1:]):
        slack = play_end - ready
        worst = slack if worst is None else min(worst, slack)
        play_end = max(play_end, ready) + length
    return worst
