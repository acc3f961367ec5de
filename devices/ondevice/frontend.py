"""Chinese text -> Sambert's linguistic input: KAN-TTS symbol names, turned into ids by a symbol table.

An approximation of ModelScope's closed-source frontend (ttsfrd) with the same vocabulary and the same length
statistics (about 2 phones per character). Every phone gets six symbol names, as in ttsfrd's
``{phone$tone$syllable_flag$word_segment$emotion$speaker}`` tokens; a
``devices.ondevice.symbols.SymbolTable`` (the
voice's dictionaries, or ``builtin_table()`` for edgebench's seeded presets) turns them into ids.

* normalisation: NFKC (full-width letters, digits and punctuation become half-width); digit runs are read
  as Chinese numerals (``2026`` -> 二千零二十六, ``3.5`` -> 三点五, ``50%`` -> 百分之五十; runs longer than 9
  digits, with a leading zero, or 4 digits before 年 are read digit by digit: phone numbers, years);
* pinyin: ``pypinyin`` TONE3 with the neutral tone as 5 (``tone1``..``tone5``); words from pypinyin's own
  maximum-matching segmenter (``pypinyin.seg.mmseg``, no jieba, so the frontend travels to the device with
  pypinyin only) give ``word_segment`` (word_begin / word_middle / word_end per syllable, word_both for a
  one-syllable word) and polyphone context;
* phones in KAN-TTS's PinYin inventory (``<phone>_c``), two per syllable, as KAN-TTS's py2phone map splits
  them: the initial (``xx_c`` for x; y_c and w_c are initials: yi -> y_c i_c, you -> y_c ou_c, yu -> y_c v_c,
  yuan -> y_c van_c, wei -> w_c ei_c) and the final, with iu -> iou_c, ui -> uei_c, un -> uen_c, ü after j q x
  -> v_c / ve_c / van_c / vn_c, zhi chi shi ri -> ih_c, zi ci si -> ii_c; zero-initial syllables starting with
  a / e / o get the glottal initials ``ga`` / ``ge`` / ``go`` (an -> ga an_c, er -> ge er_c, ou -> go ou_c).
  ``syllable_flag``: s_begin / s_end (s_middle inside a longer syllable, s_both for a one-phone syllable);
* Latin letters are spelled out with the voice's English phones, tone ``tone0``, one syllable per letter
  name (W has three): A -> ey, B -> b iy, ..., Z -> z iy (American names); a run of letters is one word;
  any other character (emoji, symbols) is dropped;
* prosodic breaks from punctuation: ``、`` -> #2, ``, ; : -`` -> #3, em dash / ellipsis -> pau,
  ``. ! ?`` -> #4, spaces between words -> #1; consecutive breaks keep the strongest, leading ones are
  dropped, the sequence always ends with #4. Breaks get tone_none, s_none, word_none. Quotes and brackets
  are dropped. (ttsfrd also predicts #1/#2 inside sentences from prosody; this frontend does not.)
* emotions: neutral, happy, angry, sad, fear, surprise -> ``emotion_<name>``; "hate" -> ``emotion_disgust``.

Fallbacks for sounds a PinYin voice has no symbol for (documented approximations):

* syllabic nasals: 嗯 n / ng -> ``ge en_c`` (read as en), 呣 m -> ``m_c`` alone (one-phone syllable,
  s_both), 噷 hm -> ``h_c m_c``, 哼 hng -> ``h_c eng_c`` (heng);
* ê (欸 as ê) -> ``ge e_c`` (read as e);
* KAN-TTS's erhua finals (``ar_c``, ``iour_c``...) are never emitted: pypinyin reads 儿 as its own syllable.

Errors (``FrontendError``): empty or punctuation-only text ("...: nothing to synthesise"), text longer
than ``max_chars``, unknown emotion, speaker outside the table, a symbol the table does not have (naming
the stream and the symbol).

Runs on the device too: Python 3.8+, standard library + pypinyin (+ torch for ``to_tensors``, numpy for
``to_arrays``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from devices.ondevice.errors import FrontendError
from devices.ondevice.symbols import (
    EMOTION_TYPES,
    PAUSE,
    STREAMS,
    SymbolTable,
    builtin_table,
    format_tokens,
)

#: The multi-emotion voice's emotions (edgebench names; "hate" is KAN-TTS's emotion_disgust).
EMOTIONS = ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
#: edgebench emotion -> KAN-TTS emotion symbol.
EMOTION_SYMBOLS: Dict[str, str] = {
    "neutral": "emotion_neutral",
    "happy": "emotion_happy",
    "angry": "emotion_angry",
    "sad": "emotion_sad",
    "fear": "emotion_fear",
    "hate": "emotion_disgust",
    "surprise": "emotion_surprise",
}
#: edgebench emotion -> id in the (fixed) 36-row emotion table.
EMOTION_IDS: Dict[str, int] = {e: EMOTION_TYPES.index(EMOTION_SYMBOLS[e]) for e in EMOTIONS}

TONE_NONE, TONE_ENGLISH = "tone_none", "tone0"
S_BEGIN, S_MIDDLE, S_END, S_BOTH, S_NONE = "s_begin", "s_middle", "s_end", "s_both", "s_none"
W_BEGIN, W_MIDDLE, W_END, W_BOTH, W_NONE = "word_begin", "word_middle", "word_end", "word_both", "word_none"
_SYLLABLE_POSITIONS = (S_BEGIN, S_MIDDLE, S_END, S_BOTH)
_WORD_POSITIONS = (W_BEGIN, W_MIDDLE, W_END, W_BOTH)

#: pinyin initials (longest first where one is a prefix of another); x is KAN-TTS's xx_c.
_INITIALS = (
    "zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x",
    "r", "z", "c", "s", "y", "w",
)  # fmt: skip
_SYLLABIC = {
    "n": ["ge", "en_c"],
    "ng": ["ge", "en_c"],
    "m": ["m_c"],
    "hm": ["h_c", "m_c"],
    "hng": ["h_c", "eng_c"],
    "ê": ["ge", "e_c"],
}
#: Latin letter -> its name's syllables in the voice's English phones.
LETTER_PHONES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "A": (("ey",),), "B": (("b", "iy"),), "C": (("s", "iy"),), "D": (("d", "iy"),), "E": (("iy",),),
    "F": (("eh", "f"),), "G": (("jh", "iy"),), "H": (("ey", "ch"),), "I": (("ay",),),
    "J": (("jh", "ey"),), "K": (("k", "ey"),), "L": (("eh", "l"),), "M": (("eh", "m"),),
    "N": (("eh", "n"),), "O": (("ow",),), "P": (("p", "iy"),), "Q": (("k", "y", "uw"),),
    "R": (("aa", "r"),), "S": (("eh", "s"),), "T": (("t", "iy"),), "U": (("y", "uw"),),
    "V": (("v", "iy"),), "W": (("d", "ah"), ("b", "ah", "l"), ("y", "uw")), "X": (("eh", "k", "s"),),
    "Y": (("w", "ay"),), "Z": (("z", "iy"),),
}  # fmt: skip

_BREAK_STRENGTH = {"#1": 1, "#2": 2, "#3": 3, PAUSE: 4, "#4": 5}
_PUNCT_BREAKS = {
    "、": "#2",
    ",": "#3", ";": "#3", ":": "#3", "-": "#3", "~": "#3", "|": "#3",
    ".": "#4", "!": "#4", "?": "#4", "。": "#4", "｡": "#4",
    "\u2014": PAUSE, "\u2026": PAUSE,  # em dash, ellipsis (replaced before NFKC)
}  # fmt: skip
_PAU_MARK = "\u2014"
_DIGITS = "零一二三四五六七八九"


@dataclass(frozen=True)
class PhoneSequence:
    """The frontend's output: one entry per phone in each list.

    ``phones`` are the sy names; ``sy``/``tone``/``syllable_flag``/``word_segment`` the ids in the symbol
    table used; ``names`` maps each of the six streams to its per-phone symbol names."""

    phones: List[str]
    sy: List[int]
    tone: List[int]
    syllable_flag: List[int]
    word_segment: List[int]
    emotion_id: int
    speaker_id: int
    names: Dict[str, List[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.phones)

    def token_string(self) -> str:
        """ttsfrd-style ``{phone$tone$syllable_flag$word_segment$emotion$speaker} ...``."""
        return format_tokens(zip(*(self.names[s] for s in STREAMS)))

    def _rows(self) -> Dict[str, List[List[int]]]:
        """The model inputs as lists [1, T]: sy, tone, syllable_flag, word_segment, emotion, speaker."""
        n = len(self.phones)
        return {"sy": [self.sy], "tone": [self.tone], "syllable_flag": [self.syllable_flag],
                "word_segment": [self.word_segment], "emotion": [[self.emotion_id] * n],
                "speaker": [[self.speaker_id] * n]}

    def to_arrays(self) -> Dict[str, object]:
        """dict of numpy int64 arrays [1, T] (the onnxruntime runtime's inputs; numpy imported here only)."""
        import numpy as np

        return {k: np.array(v, dtype=np.int64) for k, v in self._rows().items()}

    def to_tensors(self) -> Dict[str, object]:
        """dict of LongTensor [1, T]: sy, tone, syllable_flag, word_segment, emotion, speaker."""
        import torch

        return {k: torch.tensor(v, dtype=torch.long) for k, v in self._rows().items()}


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


def _final(initial: str, final: str) -> str:
    """A pinyin final after ``initial`` -> its KAN-TTS PinYin name (without ``_c``)."""
    if initial in ("j", "q", "x", "y") and final.startswith("u"):
        return "v" + final[1:]  # ju -> jv, quan -> qvan, xue -> xve, yun -> yvn
    if initial in ("l", "n") and final == "ue":
        return "ve"  # lüe / nüe written lue / nue
    if final == "i":
        if initial in ("zh", "ch", "sh", "r"):
            return "ih"
        if initial in ("z", "c", "s"):
            return "ii"
    return {"iu": "iou", "ui": "uei", "un": "uen"}.get(final, final)


def syllable_phones(pinyin: str) -> Tuple[List[str], str]:
    """'zhong1' -> (['zh_c', 'ong_c'], 'tone1'); tone 5 (or none) is the neutral tone ``tone5``."""
    tone = 5
    if pinyin and pinyin[-1].isdigit():
        tone = int(pinyin[-1]) or 5
        pinyin = pinyin[:-1]
    pinyin = pinyin.replace("ü", "v")
    if pinyin in _SYLLABIC:
        return list(_SYLLABIC[pinyin]), f"tone{tone}"
    if pinyin[:1] in ("a", "e", "o"):  # zero initial: glottal ga / ge / go
        return ["g" + pinyin[0], pinyin + "_c"], f"tone{tone}"
    for initial in _INITIALS:
        if pinyin.startswith(initial) and len(pinyin) > len(initial):
            name = "xx" if initial == "x" else initial
            return [name + "_c", _final(initial, pinyin[len(initial) :]) + "_c"], f"tone{tone}"
    return [pinyin + "_c"], f"tone{tone}"  # not a Mandarin syllable: the table check names it


def _position(index: int, count: int, names: Tuple[str, str, str, str]) -> str:
    begin, middle, end, both = names
    if count == 1:
        return both
    if index == 0:
        return begin
    return end if index == count - 1 else middle


class _Builder:
    def __init__(self) -> None:
        self.phones: List[str] = []
        self.tones: List[str] = []
        self.syllable_flags: List[str] = []
        self.word_segments: List[str] = []
        self.pending_break: Optional[str] = None

    def add_break(self, symbol: str) -> None:
        if not self.phones:  # leading breaks are dropped
            return
        if self.pending_break is None or _BREAK_STRENGTH[symbol] > _BREAK_STRENGTH[self.pending_break]:
            self.pending_break = symbol

    def _flush_break(self) -> None:
        if self.pending_break is not None:
            self._append(self.pending_break, TONE_NONE, S_NONE, W_NONE)
            self.pending_break = None

    def _append(self, phone: str, tone: str, flag: str, ws: str) -> None:
        self.phones.append(phone)
        self.tones.append(tone)
        self.syllable_flags.append(flag)
        self.word_segments.append(ws)

    def add_syllable(self, phones: List[str], tone: str, word_position: str) -> None:
        self._flush_break()
        for i, phone in enumerate(phones):
            self._append(phone, tone, _position(i, len(phones), _SYLLABLE_POSITIONS), word_position)

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
            phones, tone = syllable_phones(syllable)
            builder.add_syllable(phones, tone, _position(i, len(syllables), _WORD_POSITIONS))


def _add_letters(builder: _Builder, run: str) -> None:
    syllables = [syl for letter in run.upper() for syl in LETTER_PHONES[letter]]
    for i, phones in enumerate(syllables):
        builder.add_syllable(list(phones), TONE_ENGLISH, _position(i, len(syllables), _WORD_POSITIONS))


_TOKENS = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff]+)|([A-Za-z]+)|(\s+)|(.)", re.S)


def text_to_ids(
    text: str,
    emotion: str = "neutral",
    speaker: int = 0,
    max_chars: int = 200,
    symbols: Optional[SymbolTable] = None,
) -> PhoneSequence:
    """Chinese text -> PhoneSequence (see the module docstring for the rules).

    ``symbols``: the voice's symbol table (None: ``builtin_table()``); ``speaker`` indexes its speaker
    names (``symbols.speakers``)."""
    table = symbols if symbols is not None else builtin_table()
    if not isinstance(text, str):
        raise FrontendError(f"text must be a string, got {type(text).__name__}")
    if emotion not in EMOTION_SYMBOLS:
        raise FrontendError(f"unknown emotion {emotion!r}; known emotions: {', '.join(EMOTIONS)}")
    speakers = table.speakers
    if isinstance(speaker, bool) or not isinstance(speaker, int) or not 0 <= speaker < len(speakers):
        raise FrontendError(
            f"speaker {speaker!r} outside the speaker table (0..{len(speakers) - 1}: {', '.join(speakers)})"
        )
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
    n = len(builder.phones)
    names = {
        "sy": builder.phones,
        "tone": builder.tones,
        "syllable_flag": builder.syllable_flags,
        "word_segment": builder.word_segments,
        "emotion": [EMOTION_SYMBOLS[emotion]] * n,
        "speaker": [speakers[speaker]] * n,
    }
    return PhoneSequence(
        phones=builder.phones,
        sy=table.encode("sy", builder.phones),
        tone=table.encode("tone", builder.tones),
        syllable_flag=table.encode("syllable_flag", builder.syllable_flags),
        word_segment=table.encode("word_segment", builder.word_segments),
        emotion_id=table.index("emotion", EMOTION_SYMBOLS[emotion]),
        speaker_id=table.index("speaker", speakers[speaker]),
        names=names,
    )
