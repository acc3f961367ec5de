"""Text frontend (ondevice.frontend): KAN-TTS names, pinyin split, normalisation, breaks, edge cases."""

from __future__ import annotations

import pytest
import torch

from devices.ondevice.frontend import EMOTION_IDS, EMOTIONS, normalize, syllable_phones, text_to_ids
from devices.ondevice.symbols import STREAMS, SymbolTable, builtin_table
from variants.errors import FrontendError, VariantsError

ARTICLE = "今天天气真好,我很开心!"


def test_emotions_have_kantts_ids():
    assert EMOTIONS == ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
    assert EMOTION_IDS == {
        "neutral": 1, "angry": 2, "hate": 3, "fear": 4, "happy": 5, "sad": 6, "surprise": 7,
    }  # fmt: skip
    for emotion in EMOTIONS:
        assert text_to_ids("你好", emotion=emotion).emotion_id == EMOTION_IDS[emotion]
    assert text_to_ids("你好", emotion="hate").names["emotion"][0] == "emotion_disgust"


def test_article_sentence():
    seq = text_to_ids(ARTICLE, emotion="happy")
    assert seq.phones[:4] == ["j_c", "in_c", "t_c", "ian_c"]
    assert seq.names["tone"][:2] == ["tone1", "tone1"]
    assert seq.phones[-1] == "#4" and "#3" in seq.phones  # comma -> #3, sentence end -> #4
    assert 1.8 <= len(seq) / 10 <= 2.6  # about two phones per character
    assert len(seq) == len(seq.sy) == len(seq.tone) == len(seq.syllable_flag) == len(seq.word_segment)
    assert all(len(seq.names[s]) == len(seq) for s in STREAMS)
    assert (
        max(seq.sy) < 147 and max(seq.tone) < 10 and max(seq.syllable_flag) < 8 and max(seq.word_segment) < 8
    )
    table = builtin_table()
    assert seq.sy == [table.sy.index(p) for p in seq.phones]
    assert not any(
        table.sy[i].startswith("<reserved") or table.sy[i] in ("_", "~", "@[MASK]") for i in seq.sy
    )
    assert seq.emotion_id == EMOTION_IDS["happy"] and seq.speaker_id == 0
    assert seq.names["speaker"][0] == "speaker0"


def test_ids_follow_kantts_order():
    seq = text_to_ids("你好")  # n_c i_c h_c ao_c #4, all tone3
    assert seq.tone == [4, 4, 4, 4, 1]  # tone3 is id 4, tone_none 1
    assert seq.syllable_flag == [0, 1, 0, 1, 2]  # s_begin 0, s_end 1, s_none 2
    assert seq.word_segment == [0, 0, 1, 1, 4]  # word_begin 0, word_end 1, word_none 4
    assert seq.sy[-1] == 143  # '#4' as in KAN-TTS's table
    assert seq.token_string().split()[0] == "{n_c$tone3$s_begin$word_begin$emotion_neutral$speaker0}"


def test_to_tensors():
    seq = text_to_ids(ARTICLE, emotion="sad", speaker=2)
    tensors = seq.to_tensors()
    assert set(tensors) == {"sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker"}
    for value in tensors.values():
        assert value.dtype == torch.long and value.shape == (1, len(seq))
    assert tensors["emotion"].unique().tolist() == [EMOTION_IDS["sad"]]
    assert tensors["speaker"].unique().tolist() == [2]


def test_neutral_tone_is_five_and_syllable_flags():
    seq = text_to_ids("你好吧")
    assert seq.names["tone"][-2] == "tone5"  # 吧 ba5
    assert seq.names["syllable_flag"][:2] == ["s_begin", "s_end"]
    single = text_to_ids("二")  # er4: zero initial -> glottal 'ge'
    assert single.phones == ["ge", "er_c", "#4"]
    assert single.names["word_segment"][:2] == ["word_both", "word_both"]


@pytest.mark.parametrize(
    "pinyin, phones",
    [
        ("ri4", ["r_c", "ih_c"]), ("zhi1", ["zh_c", "ih_c"]), ("si1", ["s_c", "ii_c"]),
        ("yi1", ["y_c", "i_c"]), ("you3", ["y_c", "ou_c"]), ("yu4", ["y_c", "v_c"]),
        ("yuan2", ["y_c", "van_c"]), ("yue4", ["y_c", "ve_c"]), ("yun2", ["y_c", "vn_c"]),
        ("wei4", ["w_c", "ei_c"]), ("wu3", ["w_c", "u_c"]), ("shan1", ["sh_c", "an_c"]),
        ("liu2", ["l_c", "iou_c"]), ("gui4", ["g_c", "uei_c"]), ("lun2", ["l_c", "uen_c"]),
        ("ju2", ["j_c", "v_c"]), ("que4", ["q_c", "ve_c"]), ("xuan3", ["xx_c", "van_c"]),
        ("jun1", ["j_c", "vn_c"]), ("lv4", ["l_c", "v_c"]), ("nve4", ["n_c", "ve_c"]),
        ("xi1", ["xx_c", "i_c"]), ("an1", ["ga", "an_c"]), ("e2", ["ge", "e_c"]),
        ("ou1", ["go", "ou_c"]), ("n2", ["ge", "en_c"]), ("m2", ["m_c"]), ("ê4", ["ge", "e_c"]),
    ],
)  # fmt: skip
def test_syllable_split_in_kantts_names(pinyin, phones):
    assert syllable_phones(pinyin)[0] == phones


def test_every_pypinyin_reading_is_in_both_tables(kantts_table):
    from pypinyin import Style
    from pypinyin.pinyin_dict import pinyin_dict
    from pypinyin.style import convert

    readings = {r for value in pinyin_dict.values() for r in value.split(",")}
    builtin = set(builtin_table().sy)
    voice = set(kantts_table.sy)
    for reading in readings:
        phones, tone = syllable_phones(
            convert(reading, Style.TONE3, strict=True, neutral_tone_with_five=True)
        )
        assert tone in ("tone1", "tone2", "tone3", "tone4", "tone5")
        for phone in phones:
            assert phone in builtin and phone in voice, (reading, phone)


def test_polyphones_follow_the_word():
    bank = text_to_ids("银行")
    walk = text_to_ids("行走")
    assert bank.phones[2:4] == ["h_c", "ang_c"]
    assert walk.phones[:2] == ["xx_c", "ing_c"]


def test_full_and_half_width_punctuation_are_the_same():
    assert text_to_ids("今天天气真好，我很开心！").sy == text_to_ids(ARTICLE).sy


def test_digits_become_chinese_numerals():
    assert normalize("3个") == "三个"
    assert normalize("2026年") == "二零二六年"
    assert normalize("共2026个") == "共二千零二十六个"
    assert normalize("10001") == "一万零一"
    assert normalize("3.14") == "三点一四"
    assert normalize("50%") == "百分之五十"
    assert normalize("13812345678") == "一三八一二三四五六七八"
    assert text_to_ids("我有3个苹果").sy == text_to_ids("我有三个苹果").sy
    assert text_to_ids("１２３").sy == text_to_ids("一百二十三").sy  # full-width digits


def test_latin_letters_are_spelled_with_english_phones():
    seq = text_to_ids("AI技术")
    assert seq.phones[:2] == ["ey", "ay"]
    assert seq.names["tone"][:2] == ["tone0", "tone0"]
    assert seq.names["syllable_flag"][:2] == ["s_both", "s_both"]
    assert seq.names["word_segment"][:2] == ["word_begin", "word_end"]
    assert text_to_ids("ai技术").sy == seq.sy
    assert text_to_ids("ＡＩ技术").sy == seq.sy
    w = text_to_ids("W")  # double-u: three syllables
    assert w.phones[:-1] == ["d", "ah", "b", "ah", "l", "y", "uw"]
    assert w.names["syllable_flag"][2:5] == ["s_begin", "s_middle", "s_end"]


def test_breaks_merge_and_leading_ones_are_dropped():
    seq = text_to_ids("，，你好、，世界。。")
    assert seq.phones == ["n_c", "i_c", "h_c", "ao_c", "#3", "sh_c", "ih_c", "j_c", "ie_c", "#4"]
    assert [seq.names[s][4] for s in ("tone", "syllable_flag", "word_segment")] == [
        "tone_none", "s_none", "word_none",
    ]  # fmt: skip
    assert "pau" in text_to_ids("好吧——走").phones
    assert text_to_ids("“你好”").phones == text_to_ids("你好").phones  # quotes dropped


@pytest.mark.parametrize("text", ["", "   ", "!!!", "，。？", "😀", "“”"])
def test_nothing_to_synthesise(text):
    with pytest.raises(FrontendError, match="nothing to synthesise"):
        text_to_ids(text)


def test_too_long_names_the_limit():
    with pytest.raises(FrontendError, match="max_chars=10"):
        text_to_ids("你好" * 6, max_chars=10)
    assert len(text_to_ids("你好" * 5, max_chars=10)) > 0


def test_bad_emotion_speaker_and_type_are_expected_errors():
    with pytest.raises(FrontendError, match="unknown emotion"):
        text_to_ids(ARTICLE, emotion="bored")
    with pytest.raises(FrontendError, match="speaker"):
        text_to_ids(ARTICLE, speaker=6)  # builtin: speaker0..speaker5
    with pytest.raises(FrontendError, match="speaker"):
        text_to_ids(ARTICLE, speaker=-1)
    with pytest.raises(VariantsError):
        text_to_ids(None)  # type: ignore[arg-type]


def test_voice_table_gives_its_ids_and_speakers(kantts_table):
    seq = text_to_ids("你好", emotion="happy", speaker=1, symbols=kantts_table)
    assert seq.sy == [34, 17, 16, 4, 143]  # n_c i_c h_c ao_c #4 in the voice's PhoneSet order
    assert seq.emotion_id == 5 and seq.speaker_id == 1 and seq.names["speaker"][0] == "F74"
    with pytest.raises(FrontendError, match="speaker 6 outside"):
        text_to_ids("你好", speaker=6, symbols=kantts_table)


def test_symbol_missing_from_the_table_is_a_frontend_error():
    data = builtin_table().to_dict()
    data["sy"] = [name for name in data["sy"] if name != "ao_c"]
    table = SymbolTable.from_dict(data, "test")
    with pytest.raises(FrontendError, match="sy symbol 'ao_c' is not in the voice's dictionary"):
        text_to_ids("你好", symbols=table)
    data = builtin_table().to_dict()
    data["tone"] = [name for name in data["tone"] if name != "tone0"]
    with pytest.raises(FrontendError, match="tone symbol 'tone0'"):
        text_to_ids("AI", symbols=SymbolTable.from_dict(data, "test"))
