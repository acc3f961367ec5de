"""Symbol tables: KAN-TTS symbol names -> the ids of Sambert's six embedding tables.

The frontend (``frontend``) emits symbol *names* in the KAN-TTS vocabulary (``n_c``, ``tone3``,
``s_begin``, ``word_end``, ``#1``, ``emotion_happy``, a speaker name); a ``SymbolTable`` turns them into ids.
A real ModelScope voice brings its own table (``read_voice_tables``: the voice's ``dict/PinYin/PhoneSet.xml``
and ``tonelist.txt`` plus the speaker list of its ``am/config.yaml``); edgebench's seeded presets use
``builtin_table()``.

Table layout, as KAN-TTS's linguistic unit builds it (every table ends in the three specials ``_ ~ @[MASK]``;
``~`` is the end-of-sequence symbol appended to each stream, ``_`` padding, ``@[MASK]`` the mask row):

* ``sy``: the ``phone``/``name`` elements of PhoneSet.xml in document order, then ``#1 #2 #3 #4``;
* ``tone``: one entry per tonelist.txt line, ``d`` -> ``tone<d>``, an empty line -> ``tone_none``;
* ``syllable_flag`` (fixed): s_begin, s_end, s_none, s_both, s_middle;
* ``word_segment`` (fixed): word_begin, word_end, word_middle, word_both, word_none;
* ``emotion`` (fixed, 33): emotion_none, emotion_neutral, emotion_angry, emotion_disgust, emotion_fear,
  emotion_happy, emotion_sad, emotion_surprise (ids 0-7, the only ones the emotional voices use), then 25
  further KAN-TTS emotion types ending in emotion_placeholder9 (id 32), kept only so the ids line up;
* ``speaker``: the comma-separated ``linguistic_unit.speaker_list``.

Runs on the device too: Python 3.8+, standard library only.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from devices.ondevice.errors import ArtifactError, FrontendError, ModelDirError

STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker")
#: Appended to every table: padding, end of sequence, mask.
SPECIALS = ("_", "~", "@[MASK]")
PAD, EOS, MASK = SPECIALS
BREAKS = ("#1", "#2", "#3", "#4")

SYLLABLE_FLAGS = ("s_begin", "s_end", "s_none", "s_both", "s_middle")
WORD_SEGMENTS = ("word_begin", "word_end", "word_middle", "word_both", "word_none")
#: KAN-TTS ``emotion_types`` (33). Only ids 0-7 are used by the emotional voices; the rest keep ids aligned.
EMOTION_TYPES = (
    "emotion_none", "emotion_neutral", "emotion_angry", "emotion_disgust", "emotion_fear",
    "emotion_happy", "emotion_sad", "emotion_surprise",
    "emotion_calm", "emotion_gentle", "emotion_relax", "emotion_lyrical", "emotion_serious",
    "emotion_disgruntled", "emotion_satisfied", "emotion_disappointed", "emotion_excited",
    "emotion_anxiety", "emotion_jealousy", "emotion_hate", "emotion_pity", "emotion_pleasure",
    "emotion_arousal", "emotion_dominance",
) + tuple(f"emotion_placeholder{k}" for k in range(1, 10))  # fmt: skip
#: KAN-TTS's PinYin tonelist.txt order (``1, (empty), 4, 2, 3, 5, 0``).
KAN_TONES = ("tone1", "tone_none", "tone4", "tone2", "tone3", "tone5", "tone0")

# Phones of the KAN-TTS PinYin inventory that the frontend emits (all present in the voice's PhoneSet.xml).
#: Initials (``xx_c`` is KAN-TTS's name for pinyin x; y/w are kept as initials).
CHINESE_INITIALS = tuple(
    p + "_c"
    for p in ("b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "xx",
              "zh", "ch", "sh", "r", "z", "c", "s", "y", "w")
)  # fmt: skip
#: Initials of the zero-initial syllables starting with a / e / o (a -> ``ga a_c``, er -> ``ge er_c``).
GLOTTAL_INITIALS = ("ga", "ge", "go")
CHINESE_FINALS = tuple(
    p + "_c"
    for p in ("a", "o", "e", "ai", "ei", "ao", "ou", "an", "en", "ang", "eng", "ong", "er",
              "i", "ia", "ie", "iao", "iou", "ian", "in", "iang", "ing", "iong",
              "u", "ua", "uo", "uai", "uei", "uan", "uen", "uang",
              "v", "ve", "van", "vn", "ih", "ii")
)  # fmt: skip
#: The English (ARPAbet-like) phones of the PinYin inventory, used to spell Latin letters.
ENGLISH_PHONES = (
    "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh", "ih",
    "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw", "v",
    "w", "y", "z", "zh",
)  # fmt: skip
PAUSE = "pau"

PHONESET_NS = "http://schemas.alibaba-inc.com/tts"
#: language -> (phone set file, tone list file) inside ``dict/<language>/``.
LANGUAGE_FILES = {"PinYin": ("PhoneSet.xml", "tonelist.txt")}

_BUILTIN_PHONE_ROWS = 140  # like KAN-TTS's PinYin set: #1 is sy id 140 in both tables


def _check_names(names: Any, stream: str, where: str, error: type) -> Tuple[str, ...]:
    if not isinstance(names, (list, tuple)):
        raise error(
            f"{where}: symbol table stream {stream!r} must be a list of names, got {type(names).__name__}"
        )
    if not names:
        raise error(f"{where}: symbol table stream {stream!r} is empty")
    seen = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise error(
                f"{where}: symbol table stream {stream!r} entry {i} is {name!r}, not a non-empty string"
            )
        if name in seen:
            raise error(f"{where}: symbol table stream {stream!r} has {name!r} twice")
        seen.add(name)
    return tuple(names)


@dataclass(frozen=True)
class SymbolTable:
    """One tuple of names per stream; a name's position is its id (the embedding row)."""

    sy: Tuple[str, ...]
    tone: Tuple[str, ...]
    syllable_flag: Tuple[str, ...]
    word_segment: Tuple[str, ...]
    emotion: Tuple[str, ...]
    speaker: Tuple[str, ...]
    _ids: Dict[str, Dict[str, int]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        ids = {}
        for stream in STREAMS:
            names = _check_names(getattr(self, stream), stream, "SymbolTable", ValueError)
            object.__setattr__(self, stream, names)
            ids[stream] = {name: i for i, name in enumerate(names)}
        object.__setattr__(self, "_ids", ids)

    def names(self, stream: str) -> Tuple[str, ...]:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; streams: {', '.join(STREAMS)}")
        return getattr(self, stream)

    def sizes(self) -> Dict[str, int]:
        """stream -> number of rows (the embedding table size)."""
        return {stream: len(getattr(self, stream)) for stream in STREAMS}

    @property
    def speakers(self) -> Tuple[str, ...]:
        """The speaker names without the specials; ``text_to_ids(speaker=k)`` picks ``speakers[k]``."""
        return tuple(name for name in self.speaker if name not in SPECIALS)

    def index(self, stream: str, name: str) -> int:
        """The id of ``name`` in ``stream``; FrontendError naming the symbol if the table lacks it."""
        try:
            return self._ids[stream][name]
        except KeyError:
            if stream not in self._ids:
                raise ValueError(f"unknown stream {stream!r}; streams: {', '.join(STREAMS)}") from None
            raise FrontendError(
                f"{stream} symbol {name!r} is not in the voice's dictionary "
                f"({len(self._ids[stream])} {stream} symbols)"
            ) from None

    def encode(self, stream: str, names: Iterable[str]) -> List[int]:
        return [self.index(stream, name) for name in names]

    def to_dict(self) -> Dict[str, List[str]]:
        return {stream: list(getattr(self, stream)) for stream in STREAMS}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SymbolTable:
        """Validate and build; ArtifactError naming ``where`` and the stream on bad data."""
        if not isinstance(data, Mapping):
            raise ArtifactError(
                f"{where}: symbol table must be a mapping of streams, got {type(data).__name__}"
            )
        unknown = sorted(set(map(str, data)) - set(STREAMS))
        if unknown:
            raise ArtifactError(
                f"{where}: symbol table has unknown streams {unknown}; streams: {', '.join(STREAMS)}"
            )
        missing = [s for s in STREAMS if s not in data]
        if missing:
            raise ArtifactError(f"{where}: symbol table lacks the streams {', '.join(missing)}")
        return cls(**{s: _check_names(data[s], s, where, ArtifactError) for s in STREAMS})


# ------------------------------------------------------------------------------------- fixed tables


def fixed_tables() -> Dict[str, Tuple[str, ...]]:
    """The three tables fixed in KAN-TTS's code, specials included."""
    return {
        "syllable_flag": SYLLABLE_FLAGS + SPECIALS,
        "word_segment": WORD_SEGMENTS + SPECIALS,
        "emotion": EMOTION_TYPES + SPECIALS,
    }


def builtin_phones() -> Tuple[str, ...]:
    """Every sy phone the frontend can emit (Chinese in KAN-TTS PinYin names, English fallback, pau)."""
    return CHINESE_INITIALS + GLOTTAL_INITIALS + CHINESE_FINALS + ENGLISH_PHONES + (PAUSE,)


@lru_cache(maxsize=None)
def builtin_table() -> SymbolTable:
    """edgebench's table for its seeded presets: sy 147, tone 10, syllable_flag 8, word_segment 8, emotion 36,
    speaker 9. ``sy`` = the frontend's phones, ``<reserved_k>`` rows up to 140, ``#1..#4`` (ids 140-143, as in
    KAN-TTS's PinYin table), the specials; ``tone`` in KAN-TTS order; speakers ``speaker0..speaker5``."""
    phones = builtin_phones()
    reserved = tuple(f"<reserved_{k}>" for k in range(len(phones), _BUILTIN_PHONE_ROWS))
    return SymbolTable(
        sy=phones + reserved + BREAKS + SPECIALS,
        tone=KAN_TONES + SPECIALS,
        speaker=tuple(f"speaker{k}" for k in range(6)) + SPECIALS,
        **fixed_tables(),
    )


# ------------------------------------------------------------------------------------ voice dictionaries


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise ModelDirError(f"{path}: missing ({what})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: cannot read ({what}): {exc}") from None


def _unique(names: Sequence[str], path: Path, what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ModelDirError(f"{path}: {what} {name!r} appears twice")
        seen.add(name)


def read_phoneset(path: Path) -> Tuple[str, ...]:
    """The ``phone``/``name`` texts of a KAN-TTS PhoneSet.xml, in document order."""
    text = _read_text(path, "the voice's phone inventory")
    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as exc:
        raise ModelDirError(f"{path}: not valid XML ({exc})") from None
    ns = "{" + PHONESET_NS + "}"
    if root.tag != ns + "phoneSet":
        raise ModelDirError(
            f"{path}: root element is <{root.tag}>, expected <phoneSet> in namespace {PHONESET_NS}"
        )
    names = []
    for k, phone in enumerate(root.findall(ns + "phone")):
        name = phone.find(ns + "name")
        value = (name.text or "").strip() if name is not None else ""
        if not value:
            raise ModelDirError(f"{path}: <phone> element {k} has no <name>")
        names.append(value)
    if not names:
        raise ModelDirError(f"{path}: no <phone> elements in <phoneSet>")
    _unique(names + list(BREAKS) + list(SPECIALS), path, "phone name")
    return tuple(names)


def read_tonelist(path: Path) -> Tuple[str, ...]:
    """tonelist.txt lines: ``d`` -> ``tone<d>``, an empty line -> ``tone_none``."""
    lines = _read_text(path, "the voice's tone list").splitlines()
    if not lines:
        raise ModelDirError(f"{path}: empty tone list")
    tones = [f"tone{line.strip()}" if line.strip() else "tone_none" for line in lines]
    _unique(tones + list(SPECIALS), path, "tone")
    return tuple(tones)


def parse_speaker_list(speaker_list: Any, where: str) -> Tuple[str, ...]:
    if not isinstance(speaker_list, str):
        raise ModelDirError(f"{where}: expected a comma-separated string of names, got {speaker_list!r}")
    names = [name.strip() for name in speaker_list.split(",")]
    if not speaker_list.strip() or any(not name for name in names):
        raise ModelDirError(f"{where}: {speaker_list!r} has an empty speaker name")
    seen = set()
    for name in names:
        if name in SPECIALS:
            raise ModelDirError(f"{where}: {name!r} is a reserved symbol, not a speaker name")
        if name in seen:
            raise ModelDirError(f"{where}: names {name!r} twice")
        seen.add(name)
    return tuple(names)


def read_voice_tables(
    dict_dir: Path, speaker_list: str, language: str = "PinYin", *, speaker_where: Optional[str] = None
) -> SymbolTable:
    """The voice's symbol table from ``dict_dir/<language>/{PhoneSet.xml,tonelist.txt}`` and its
    ``linguistic_unit.speaker_list``. ModelDirError (one line naming the file) on any problem.
    ``speaker_where`` names the speaker list's source in errors (default:
    ``<voice>/am/config.yaml: linguistic_unit.speaker_list``)."""
    dict_dir = Path(dict_dir)
    if language not in LANGUAGE_FILES:
        raise ModelDirError(
            f"{dict_dir.parent / 'am' / 'config.yaml'}: linguistic_unit.language {language!r} "
            "is not supported "
            f"(edgebench's frontend emits the symbols of: {', '.join(LANGUAGE_FILES)})"
        )
    phoneset_name, tonelist_name = LANGUAGE_FILES[language]
    phones = read_phoneset(dict_dir / language / phoneset_name)
    tones = read_tonelist(dict_dir / language / tonelist_name)
    where = speaker_where or f"{dict_dir.parent / 'am' / 'config.yaml'}: linguistic_unit.speaker_list"
    speakers = parse_speaker_list(speaker_list, where)
    return SymbolTable(
        sy=phones + BREAKS + SPECIALS,
        tone=tones + SPECIALS,
        speaker=speakers + SPECIALS,
        **fixed_tables(),
    )


# ------------------------------------------------------------------------------------- token strings

Token = Tuple[str, str, str, str, str, str]
_TOKEN = re.compile(r"\{([^{}]*)\}")


def parse_token_string(text: str) -> List[Token]:
    """ttsfrd-style ``{phone$tone$syllable_flag$word_segment$emotion$speaker} ...`` -> list of 6-tuples."""
    tokens: List[Token] = []
    rest = _TOKEN.sub(" ", text)
    if rest.strip():
        raise FrontendError(f"token string has text outside {{...}} tokens: {rest.strip()[:40]!r}")
    for body in _TOKEN.findall(text):
        parts = body.split("$")
        if len(parts) != len(STREAMS) or not all(parts):
            raise FrontendError(
                f"token {{{body}}} does not have {len(STREAMS)} non-empty '$'-separated fields"
            )
        tokens.append(tuple(parts))  # type: ignore[arg-type]
    return tokens


def format_tokens(tokens: Iterable[Sequence[str]]) -> str:
    """The inverse of ``parse_token_string``."""
    return " ".join("{" + "$".join(token) + "}" for token in tokens)


def encode_tokens(
    table: SymbolTable, tokens: Sequence[Sequence[str]], eos: bool = True
) -> Dict[str, List[int]]:
    """stream -> ids, one per token (plus the ``~`` id at the end of each stream when ``eos``), as KAN-TTS's
    linguistic unit encodes a token string."""
    out = {}
    for k, stream in enumerate(STREAMS):
        ids = table.encode(stream, (token[k] for token in tokens))
        if eos:
            ids.append(table.index(stream, EOS))
        out[stream] = ids
    return out


def symbol_table(config: Mapping[str, Any]):
    """The input symbol table of an artifact's config.json: the loaded voice's dictionaries, or None
    (the frontend's built-in table: the seeded presets and plugin models)."""
    from devices.ondevice.artifact import LEGACY_FACTORIES, REFERENCE_FACTORY

    model = config.get("model") or {}
    cfg = model.get("config") if isinstance(model, Mapping) else None
    factory = model.get("factory", REFERENCE_FACTORY) if isinstance(model, Mapping) else None
    if LEGACY_FACTORIES.get(factory, factory) != REFERENCE_FACTORY or not isinstance(cfg, Mapping):
        return None
    if cfg.get("symbols") is None:
        return None
    return SymbolTable.from_dict(cfg["symbols"], "config.json: model.config.symbols")


