"""Symbol tables (ondevice.symbols): KAN-TTS dictionaries, the builtin table, golden token encoding."""

from __future__ import annotations

import shutil

import pytest
from conftest import KANTTS_SMALL, KANTTS_SMALL_SPEAKERS, KANTTS_SMALL_VOICE, require_kantts_small

from devices.ondevice.frontend import text_to_ids
from devices.ondevice.symbols import (
    STREAMS,
    SymbolTable,
    builtin_table,
    encode_tokens,
    format_tokens,
    parse_token_string,
    read_voice_tables,
)
from variants.errors import ArtifactError, FrontendError, ModelDirError

SIZES = {"sy": 147, "tone": 10, "syllable_flag": 8, "word_segment": 8, "emotion": 36, "speaker": 9}
CASES = ("short", "medium", "long")
#: The golden cases' texts, emotions and speakers (README of the fixture).
GOLDEN_TEXTS = {
    "short": ("你好", "happy", 0),
    "medium": ("今天北京天气怎么样", "neutral", 1),
    "long": ("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。床前明月光，疑是地上霜。", "sad", 0),
}


@pytest.fixture(scope="module")
def golden():
    import torch

    require_kantts_small()  # shipped in shared/: missing is a broken checkout, a failure, never a skip
    return torch.load(KANTTS_SMALL / "golden" / "acoustic.pt", weights_only=True)


def test_fixture_dictionaries_sizes_and_ids(kantts_table):
    t = kantts_table
    assert t.sizes() == SIZES
    assert (
        t.index("tone", "tone3") == 4 and t.index("tone", "tone_none") == 1 and t.index("tone", "tone0") == 6
    )
    assert t.index("syllable_flag", "s_begin") == 0 and t.index("syllable_flag", "s_middle") == 4
    assert t.index("word_segment", "word_none") == 4
    assert t.index("emotion", "emotion_happy") == 5 and t.index("emotion", "emotion_disgust") == 3
    assert t.index("emotion", "emotion_placeholder9") == 32
    assert t.index("sy", "#1") == 140 and t.index("sy", "n_c") == 34 and t.index("sy", "i_c") == 17
    assert t.index("sy", "pau") == 139
    for stream in STREAMS:
        assert t.names(stream)[-3:] == ("_", "~", "@[MASK]")
    assert t.speakers == ("F7", "F74", "FBYN", "FRXL", "M7", "xiaoyu")
    assert SymbolTable.from_dict(t.to_dict(), "roundtrip") == t


def test_builtin_table_sizes_and_layout():
    t = builtin_table()
    assert t.sizes() == SIZES
    assert t.sy[140:] == ("#1", "#2", "#3", "#4", "_", "~", "@[MASK]")
    assert t.tone == ("tone1", "tone_none", "tone4", "tone2", "tone3", "tone5", "tone0", "_", "~", "@[MASK]")
    assert t.speakers == tuple(f"speaker{k}" for k in range(6))
    assert t.index("emotion", "emotion_happy") == 5 and t.index("syllable_flag", "s_both") == 3


def test_builtin_phones_are_kantts_pinyin_phones(kantts_table):
    real = set(kantts_table.sy)
    used = [name for name in builtin_table().sy if not name.startswith("<reserved_")]
    assert set(used) <= real


@pytest.mark.parametrize("case", CASES)
def test_golden_encoding_is_reproduced_exactly(golden, case):
    import torch

    inputs = golden[case]["inputs"]
    table = read_voice_tables(KANTTS_SMALL_VOICE / "dict", KANTTS_SMALL_SPEAKERS)
    tokens = parse_token_string(inputs["symbols"])
    assert format_tokens(tokens) == inputs["symbols"]
    ids = encode_tokens(table, tokens)
    for stream in STREAMS:
        assert ids[stream] == inputs["encoded_with_eos"][stream].tolist(), stream
    ling = torch.tensor([list(zip(*(ids[s][:-1] for s in STREAMS[:4])))], dtype=torch.long)
    assert torch.equal(ling, inputs["inputs_ling"])
    assert ids["emotion"][:-1] == inputs["inputs_emotion"][0].tolist()
    assert ids["speaker"][:-1] == inputs["inputs_speaker"][0].tolist()
    assert len(tokens) == int(inputs["input_lengths"][0])


@pytest.mark.parametrize("case", CASES)
def test_frontend_matches_golden_phones(golden, kantts_table, case):
    """Phone names, syllable flags, emotion and speaker agree with the original frontend's tokens once its
    prosodic #1/#2 breaks (predicted, not from punctuation) are left out. Tones agree except where pypinyin
    reads a character differently; word segments are not compared (pypinyin's segmenter only knows
    polyphonic words)."""
    text, emotion, speaker = GOLDEN_TEXTS[case]
    ours = parse_token_string(text_to_ids(text, emotion, speaker, symbols=kantts_table).token_string())
    gold = [t for t in parse_token_string(golden[case]["inputs"]["symbols"]) if t[0] not in ("#1", "#2")]
    assert [(t[0], t[2], t[4], t[5]) for t in ours] == [(t[0], t[2], t[4], t[5]) for t in gold]
    tone_diffs = [(i, g[0], g[1], o[1]) for i, (g, o) in enumerate(zip(gold, ours)) if g[1] != o[1]]
    # 尽 in 白日依山尽 is jin4; pypinyin's single-character reading is jin3
    assert tone_diffs == (
        [(8, "j_c", "tone4", "tone3"), (9, "in_c", "tone4", "tone3")] if case == "long" else []
    )


def test_unknown_symbol_names_it(kantts_table):
    with pytest.raises(FrontendError, match="sy symbol 'zz_c' is not in the voice's dictionary"):
        kantts_table.index("sy", "zz_c")
    with pytest.raises(FrontendError, match="speaker symbol 'nobody'"):
        encode_tokens(kantts_table, [("a_c", "tone1", "s_begin", "word_begin", "emotion_happy", "nobody")])


def test_token_string_errors():
    with pytest.raises(FrontendError, match="6 non-empty"):
        parse_token_string("{a_c$tone1$s_begin}")
    with pytest.raises(FrontendError, match="outside"):
        parse_token_string("a_c {a_c$tone1$s_begin$word_begin$emotion_happy$F7}")
    assert parse_token_string("") == []


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("speaker"), "lacks the streams speaker"),
        (lambda d: d.update(voice=["x"]), "unknown streams"),
        (lambda d: d.update(tone=["tone1", "tone1"]), "stream 'tone' has 'tone1' twice"),
        (lambda d: d.update(emotion=[]), "stream 'emotion' is empty"),
        (lambda d: d.update(sy=["a_c", ""]), "stream 'sy' entry 1"),
        (lambda d: d.update(word_segment="word_begin"), "stream 'word_segment' must be a list"),
    ],
)
def test_from_dict_validates(change, message):
    data = builtin_table().to_dict()
    change(data)
    with pytest.raises(ArtifactError, match=message) as info:
        SymbolTable.from_dict(data, "artifact.json symbols")
    assert str(info.value).startswith("artifact.json symbols: ")
    with pytest.raises(ArtifactError, match="must be a mapping"):
        SymbolTable.from_dict(["sy"], "artifact.json symbols")


@pytest.fixture
def dict_copy(tmp_path, kantts_table):
    target = tmp_path / "voice" / "dict"
    shutil.copytree(KANTTS_SMALL_VOICE / "dict", target)
    assert read_voice_tables(target, KANTTS_SMALL_SPEAKERS) == kantts_table
    return target


def _one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_missing_phoneset(dict_copy):
    (dict_copy / "PinYin" / "PhoneSet.xml").unlink()
    with pytest.raises(ModelDirError, match=r"PhoneSet\.xml: missing") as info:
        read_voice_tables(dict_copy, KANTTS_SMALL_SPEAKERS)
    assert str(dict_copy / "PinYin" / "PhoneSet.xml") in _one_line(info.value)


def test_malformed_phoneset(dict_copy):
    path = dict_copy / "PinYin" / "PhoneSet.xml"
    path.write_text(path.read_text(encoding="utf-8")[:500], encoding="utf-8")
    with pytest.raises(ModelDirError, match=r"PhoneSet\.xml: not valid XML") as info:
        read_voice_tables(dict_copy, KANTTS_SMALL_SPEAKERS)
    _one_line(info.value)


@pytest.mark.parametrize(
    "xml, message",
    [
        ('<phoneSet xmlns="http://schemas.alibaba-inc.com/tts"></phoneSet>', "no <phone> elements"),
        ("<phoneSet><phone><name>a_c</name></phone></phoneSet>", "expected <phoneSet> in namespace"),
        ('<phoneSet xmlns="http://schemas.alibaba-inc.com/tts"><phone><id>0</id></phone></phoneSet>',
         "<phone> element 0 has no <name>"),
        ('<phoneSet xmlns="http://schemas.alibaba-inc.com/tts"><phone><name>a_c</name></phone>'
         "<phone><name>a_c</name></phone></phoneSet>", "phone name 'a_c' appears twice"),
    ],
)  # fmt: skip
def test_bad_phonesets(dict_copy, xml, message):
    (dict_copy / "PinYin" / "PhoneSet.xml").write_text(xml, encoding="utf-8")
    with pytest.raises(ModelDirError, match="PhoneSet.xml: ") as info:
        read_voice_tables(dict_copy, KANTTS_SMALL_SPEAKERS)
    assert message in _one_line(info.value)


def test_missing_or_bad_tonelist(dict_copy):
    path = dict_copy / "PinYin" / "tonelist.txt"
    path.write_text("1\n2\n1\n", encoding="utf-8")
    with pytest.raises(ModelDirError, match=r"tonelist\.txt: tone 'tone1' appears twice"):
        read_voice_tables(dict_copy, KANTTS_SMALL_SPEAKERS)
    path.unlink()
    with pytest.raises(ModelDirError, match=r"tonelist\.txt: missing") as info:
        read_voice_tables(dict_copy, KANTTS_SMALL_SPEAKERS)
    _one_line(info.value)


def test_bad_speaker_list_and_language(dict_copy):
    with pytest.raises(
        ModelDirError, match=r"am[/\\]config\.yaml: linguistic_unit\.speaker_list: '' has an empty"
    ):
        read_voice_tables(dict_copy, "")
    with pytest.raises(ModelDirError, match="'F7' twice"):
        read_voice_tables(dict_copy, "F7,F7")
    with pytest.raises(ModelDirError, match="empty speaker name"):
        read_voice_tables(dict_copy, "F7,,M7")
    with pytest.raises(ModelDirError, match="language 'Sichuan' is not supported"):
        read_voice_tables(dict_copy, "F7", language="Sichuan")
