"""A second, small user model for the plugin tests (``model = "plugin_model:make"``).

Not Sambert: an LSTM text encoder, a per-phone duration head, a length regulator and a Linear mel head;
the vocoder is one transposed convolution with the 200-sample hop. It obeys the call conventions of
``variants.plugin`` (keyword ids in, ``.mel`` [1, frames, 80] and ``.durations`` [1, T] out, ``durations=``
forces lengths; ``vocoder(mel [1, 80, frames]) -> [1, 1, frames * 200]``).
"""

from typing import NamedTuple, Optional

import torch
from torch import nn

HOP = 200


class Output(NamedTuple):
    mel: torch.Tensor
    durations: torch.Tensor


class TinyAcoustic(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.sy = nn.Embedding(147, hidden)
        self.emotion = nn.Embedding(36, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.duration = nn.Linear(hidden, 1)
        self.mel = nn.Linear(hidden, 80)

    def forward(
        self,
        sy,
        tone,
        syllable_flag,
        word_segment,
        emotion,
        speaker,
        durations: Optional[torch.Tensor] = None,
    ) -> Output:
        h, _ = self.lstm(self.sy(sy) + self.emotion(emotion))
        if durations is None:
            durations = torch.exp(self.duration(h).squeeze(-1) + 1.5).round().long().clamp(1, 8)
        frames = torch.repeat_interleave(h[0], durations[0], dim=0).unsqueeze(0)
        return Output(self.mel(frames), durations)


class TinyVocoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(80, 1, HOP, stride=HOP)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(mel))


def make(config, seed):
    hidden = int((config or {}).get("hidden", 24))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        acoustic, vocoder = TinyAcoustic(hidden), TinyVocoder()
    return acoustic.eval(), vocoder.eval()


class _Flat(nn.Module):
    def forward(self, mel):
        return mel.reshape(-1)


def make_broken(config, seed):
    """Breaks the vocoder convention (returns a flat tensor)."""
    acoustic, _ = make(config, seed)
    return acoustic, _Flat()


def make_not_a_pair(config, seed):
    return make(config, seed)[0]
