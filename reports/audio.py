"""Audio samples for the report: copy each variant's ``samples/<emotion>.wav`` next to the report.

Files are referenced relatively (``audio/<variant>/<emotion>.wav``) so the report folder can be moved or
zipped as a whole; a clip no larger than ``embed_max_bytes`` is embedded as a base64 ``data:`` URI instead
(the report then plays it even when copied alone).
"""

from __future__ import annotations

import base64
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple

from reports.model import AudioClip

AUDIO_DIR = "audio"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A file name for a variant or emotion: ``pruned+quantized`` -> ``pruned-quantized``."""
    cleaned = _UNSAFE.sub("-", name).strip("-.")
    return cleaned or "unnamed"


@dataclass(frozen=True)
class AudioCell:
    variant: str
    emotion: str
    src: Optional[str]  # relative path or data: URI; None when the clip is missing
    size_bytes: int = 0
    problem: Optional[str] = None


@dataclass(frozen=True)
class AudioGrid:
    variants: Tuple[str, ...]
    emotions: Tuple[str, ...]
    cells: Mapping[Tuple[str, str], AudioCell]  # (emotion, variant) -> cell

    def cell(self, emotion: str, variant: str) -> Optional[AudioCell]:
        return self.cells.get((emotion, variant))


def collect_audio(
    clips: Iterable[AudioClip], out_dir: Path, variants_order: Iterable[str] = (), embed_max_bytes: int = 0
) -> AudioGrid:
    """Copy (or embed) every clip; a missing source file becomes a cell with ``problem`` set."""
    clips = list(clips)
    variants = [v for v in variants_order if any(c.variant == v for c in clips)]
    variants += [c.variant for c in clips if c.variant not in variants]
    emotions: list = []
    for c in clips:
        if c.emotion not in emotions:
            emotions.append(c.emotion)
    cells = {}
    for clip in clips:
        source = Path(clip.source)
        if not source.is_file():
            cells[(clip.emotion, clip.variant)] = AudioCell(
                clip.variant, clip.emotion, None, problem="sample file missing"
            )
            continue
        size = source.stat().st_size
        if size <= embed_max_bytes:
            src = "data:audio/wav;base64," + base64.b64encode(source.read_bytes()).decode("ascii")
        else:
            rel = Path(AUDIO_DIR) / safe_name(clip.variant) / f"{safe_name(clip.emotion)}.wav"
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            src = rel.as_posix()
        cells[(clip.emotion, clip.variant)] = AudioCell(clip.variant, clip.emotion, src, size)
    return AudioGrid(variants=tuple(variants), emotions=tuple(emotions), cells=cells)
