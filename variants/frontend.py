"""Chinese text -> Sambert's four linguistic id sequences (sy, tone, syllable_flag, word_segment).

An approximation of ModelScope's closed-source frontend with the same format and length statistics
(about 2 phones per character):

* normalisation: NFKC (full-width letters, digits and punctuation become half-width); digit runs are read
  as Chinese numerals (``2026`` -> 二千零二十六, ``3.5`` -> 三点五, ``50%`` -> 百分之五十; runs longer than 9
  digits, with a leading zero, or 4 digits before 年 are read digit by digit: phone numbers, years);
* pinyin: ``pypinyin`` TONE3 with the neutral tone as 5, split into an initial (23 incl. ``y``/``w``) and a
  final; words from pypinyin's own maximum-matching segmenter (``pypinyin.seg.mmseg``, no jieba, so the
  frontend travels to the device with pypinyin only) give ``word_segment`` and polyphone context;
* Latin letters are spelled out: one ``EN_<LETTER>`` symbol per letter (tone 6), a run of letters is one
  word; any other character (emoji, symbols) is dropped;
* prosodic breaks from punctuation: ``、`` -> #2, ``, ; : -`` -> #3, em dash / ellipsis -> pau,
  ``. ! ?`` -> #4, spaces between words -> #1; consecutive breaks keep the strongest, leading ones are
  dropped, the sequence always ends with #4. Quotes and brackets are dropped.

Errors (``FrontendError``): empty or punctuation-only text ("...: nothing to synthesise"), text longer
than ``max_chars``, unknown emotion, speaker outside the table.

Runs on the device too: Python 3.8+, standard library + pypinyin (+ torch for ``to_tensors``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from variants.errors import FrontendError

#: The multi-emotion voice's emotions, ids in the 36-row emotion table (KAN-TTS ``emotion_types``;
#: 0 is emotion_none, "hate" is KAN-TTS's emotion_disgust).
EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
EMOTION_IDS: Dict[str, int] = {
    "neutral": 1,
    "angry": 2,
    "hate": 3,
    "fear": 4,
    "happy": 5,
    "sad": 6,
    "surprise": 7,
}
NUM_SPEAKERS = 9
NUM_SYMBOLS = 147

SPECIALS = ("<pad>", "<unk>", "sil", "pau", "#1", "#2", "#3", "#4")
INITIALS = (
    "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x",
    "zh", "ch", "sh", "r", "z", "c", "s", "y", "w",
)  # fmt: skip
FINALS = (
    "a", "o", "e", "ai", "ei", "ao", "ou", "an", "en", "ang", "eng", "ong", "er",
    "i", "ia", "ie", "iao", "iu", "ian", "in", "iang", "ing", "iong",
    "u", "ua", "uo", "uai", "ui", "uan", "un", "uang", "ue", "v", "ve",
    "m_syl", "n_syl", "ng", "ê",
)  # fmt: skip
LETTERS = tuple("EN_" + chr(c) for c in range(ord("A"), ord("Z") + 1))
_USED = SPECIALS + INITIALS + FINALS + LETTERS
#: The fixed 147-entry ``sy`` table (unused tail entries reserved so ids never move).
SYMBOLS: Tuple[str, ...] = _USED + tuple(f"<reserved_{i}>" for i in range(len(_USED), NUM_SYMBOLS))
SYMBOL_IDS: Dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}

# tone ids (table of 10): 0 none (breaks), 1-4 tones, 5 neutral, 6 Latin letter
TONE_NONE, TONE_LETTER = 0, 6
# syllable_flag / word_segment ids (tables of 8): 0 pad
BEGIN, MIDDLE, END, BOTH, NONE = 1, 2, 3, 4, 5

_BREAK_STRENGTH = {"#1": 1, "#2": 2, "#3": 3, "pau": 4, "#4": 5}
_PUNCT_BREAKS = {
    "、": "#2",
    ",": "#3", ";": "#3", ":": "#3", "-": "#3", "~": "#3", "|": "#3",
    ".": "#4", "!": "#4", "?": "#4", "。": "#4", "｡": "#4",
    "\u2014": "pau", "\u2026": "pau",  # em dash, ellipsis (replaced before NFKC)
}  # fmt: skip
_PAU_MARK = "\u2014"
_DIGITS = "零一二三四五六七八九"
_INITIALS_BY_LENGTH = sorted(INITIALS, key=len, reverse=True)
_SYLLABIC = {"m", "n", "ng", "hm", "hng", "ê"}


@dataclass(frozen=True)
class PhoneSequence:
    """The frontend's output: one entry per phone in each list."""

    phones: List[str]
    sy: List[int]
    tone: List[int]
    syllable_flag: List[int]
    word_segment: List[int]
    emotion_id: int
    speaker_id: int

    def __len__(self) -> int:
        return len(self.phones)

    def to_tensors(self) -> Dict[str, object]:
        """dict of LongTensor [1, T]: sy, tone, syllable_flag, word_segment, emotion, speaker."""
        import torch

        n = len(self.phones)
        return {
            "sy": torch.tensor([self.sy], dtype=torch.long),
            "tone": torch.tensor([self.tone], dtype=torch.long),
            "syllable_flag": torch.tensor([self.syllable_flag], dtype=torch.long),
            "word_segment": torch.tensor([self.word_segment], dtype=torch.long),
            "emotion": torch.full((1, n), self.emotion_id, dtype=torch.long),
            "speaker": torch.full((1, n), self.speaker_id, dtype=torch.long),
        }


# --------------------------------------------------------------------------------------- normalisation


def _read_integer(digits: str) -> str:
    """Cardinal reading of up to 12 digits without a leading zero (0 -> 零, 10 -> 十)."""
    value = int(digits)
    if value == 0:
        return "零"
    units = ("", "十", "百", "千")
    groups = []
    while value:
        groups.append(value % 10000)
        value //= 10000
    out = ""
    need_zero = False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            need_zero = bool(out)
            continue
        text = ""
        zero = need_zero or (bool(out) and group < 1000)
        for pos in range(3, -1, -1):
            d = (group // 10**pos) % 10
            if d == 0:
                zero = bool(text) or zero
                continue
            if zero and (text or out):
                text += "零"
            zero = False
            text += _DIGITS[d] + units[pos]
        out += text + ("", "万", "亿")[index]
        need_zero = False
    if out.startswith("一十"):
        out = out[1:]
    return out


def _read_digits(digits: str) -> str:
    return "".join(_DIGITS[int(d)] for d in digits)


def _read_number(match: re.Match[str]) -> str:
    integer, fraction, percent = match.group(1), match.group(2), match.group(3)
    is_year = len(integer) == 4 and not fraction and match.string[match.end() : match.end() + 1] == "年"
    if is_year or len(integer) > 9 or (len(integer) > 1 and integer.startswith("0")):
        text = _read_digits(integer)
    else:
        text = _read_integer(integer)
    if fraction:
        text += "点" + _read_digits(fraction)
    return "百分之" + text if percent else text


_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(%)?")


def normalize(text: str) -> str:
    """NFKC, em dash / ellipsis kept as pause marks, digits read as Chinese numerals."""
    text = text.replace("\u2026", _PAU_MARK).replace("\u2014", _PAU_MARK)
    text = unicodedata.normalize("NFKC", text).replace("\u2014", _PAU_MARK)
    return _NUMBER.sub(_read_number, text)


# ------------------------------------------------------------------------------------------ conversion


def _is_hanzi(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def _split_syllable(pinyin: str) -> Tuple[List[str], int]:
    """'zhong1' -> (['zh', 'ong'], 1); zero-initial and syllabic nasals give one phone."""
    tone = 5
    if pinyin and pinyin[-1].isdigit():
        tone = int(pinyin[-1]) or 5
        pinyin = pinyin[:-1]
    pinyin = pinyin.replace("ü", "v")
    if pinyin in _SYLLABIC:  # syllabic nasals (嗯 n, 呣 m, 哼 hng): m/n finals are not the initials m/n
        final = pinyin[1:] if pinyin.startswith("h") else pinyin
        final = final + "_syl" if final in ("m", "n") else final
        return (["h", final] if pinyin.startswith("h") else [final]), tone
    for initial in _INITIALS_BY_LENGTH:
        if pinyin.startswith(initial) and len(pinyin) > len(initial):
            return [initial, pinyin[len(initial) :]], tone
    return [pinyin], tone


def _position(index: int, count: int) -> int:
    if count == 1:
        return BOTH
    if index == 0:
        return BEGIN
    return END if index == count - 1 else MIDDLE


class _Builder:
    def __init__(self) -> None:
        self.phones: List[str] = []
        self.sy: List[int] = []
        self.tone: List[int] = []
        self.syllable_flag: List[int] = []
        self.word_segment: List[int] = []
        self.pending_break: Optional[str] = None

    def add_break(self, symbol: str) -> None:
        if not self.phones:  # leading breaks are dropped
            return
        if self.pending_break is None or _BREAK_STRENGTH[symbol] > _BREAK_STRENGTH[self.pending_break]:
            self.pending_break = symbol

    def _flush_break(self) -> None:
        if self.pending_break is not None:
            self._append(self.pending_break, TONE_NONE, NONE, NONE)
            self.pending_break = None

    def _append(self, symbol: str, tone: int, flag: int, ws: int) -> None:
        self.phones.append(symbol)
        self.sy.append(SYMBOL_IDS.get(symbol, SYMBOL_IDS["<unk>"]))
        self.tone.append(tone)
        self.syllable_flag.append(flag)
        self.word_segment.append(ws)

    def add_syllable(self, phones: List[str], tone: int, word_position: int) -> None:
        self._flush_break()
        for i, phone in enumerate(phones):
            self._append(phone, tone, _position(i, len(phones)), word_position)

    def finish(self) -> None:
        if self.phones:
            self.pending_break = "#4"
            self._flush_break()


def _add_hanzi_run(builder: _Builder, run: str) -> None:
    from pypinyin import Style, lazy_pinyin
    from pypinyin.seg.mmseg import seg

    for word in seg.cut(run):
        syllables = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda _: [""])
        syllables = [s for s in syllables if s]
        for i, syllable in enumerate(syllables):
            phones, tone = _split_syllable(syllable)
            builder.add_syllable(phones, tone, _position(i, len(syllables)))


def _add_letters(builder: _Builder, run: str) -> None:
    for i, letter in enumerate(run.upper()):
        builder.add_syllable(["EN_" + letter], TONE_LETTER, _position(i, len(run)))


_TOKENS = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff]+)|([A-Za-z]+)|(\s+)|(.)", re.S)


def text_to_ids(text: str, emotion: str = "neutral", speaker: int = 0, max_chars: int = 200) -> PhoneSequence:
    """Chinese text -> PhoneSequence (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise FrontendError(f"text must be a string, got {type(text).__name__}")
    if emotion not in EMOTION_IDS:
        raise FrontendError(f"unknown emotion {emotion!r}; known emotions: {', '.join(EMOTIONS)}")
    if isinstance(speaker, bool) or not isinstance(speaker, int) or not 0 <= speaker < NUM_SPEAKERS:
        raise FrontendError(f"speaker {speaker!r} outside the speaker table (0..{NUM_SPEAKERS - 1})")
    stripped = text.strip()
    if len(stripped) > max_chars:
        raise FrontendError(
            f"text of {len(stripped)} characters is longer than max_chars={max_chars}; split it up"
        )
    builder = _Builder()
    for match in _TOKENS.finditer(normalize(stripped)):
        hanzi, letters, space, other = match.groups()
        if hanzi:
            _add_hanzi_run(builder, hanzi)
        elif letters:
            _add_letters(builder, letters)
        elif space:
            builder.add_break("#1")
        elif other in _PUNCT_BREAKS:
            builder.add_break(_PUNCT_BREAKS[other])
        # anything else (quotes, brackets, symbols, emoji) is dropped
    builder.finish()
    if not builder.phones:
        shown = stripped if len(stripped) <= 20 else stripped[:20] + "..."
        raise FrontendError(
            f"text {shown!r}: nothing to synthesise (no Chinese characters, digits or letters)"
        )
    return PhoneSequence(
        phones=builder.phones,
        sy=builder.sy,
        tone=builder.tone,
        syllable_flag=builder.syllable_flag,
        word_segment=builder.word_segment,
        emotion_id=EMOTION_IDS[emotion],
        speaker_id=speaker,
    )
