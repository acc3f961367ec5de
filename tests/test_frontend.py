"""Text frontend (variants.frontend): symbol table, pinyin split, normalisation, breaks, edge cases."""

from __future__ import annotations

import pytest
import torch

from variants.errors import FrontendError, VariantsError
from variants.frontend import (
    EMOTION_IDS,
    EMOTIONS,
    NUM_SYMBOLS,
    SYMBOL_IDS,
    SYMBOLS,
    normalize,
    text_to_ids,
)

ARTICLE = "今天天气真好,我很开心!"


def test_symbol_table_is_fixed_and_unique():
    assert len(SYMBOLS) == NUM_SYMBOLS == 147 and len(set(SYMBOLS)) == 147
    assert SYMBOLS[0] == "<pad>"
    for symbol in ("#1", "#2", "#3", "#4", "pau", "zh", "ong", "v", "EN_A"):
        assert symbol in SYMBOL_IDS


def test_emotions_have_ids_in_the_emotion_table():
    assert EMOTIONS == ("neutral", "happy", "angry", "sad", "fear", "hate", "surprise")
    ids = [EMOTION_IDS[e] for e in EMOTIONS]
    assert len(set(ids)) == 7 and all(0 < i < 36 for i in ids)


def test_article_sentence():
    seq = text_to_ids(ARTICLE, emotion="happy")
    assert seq.phones[:4] == ["j", "in", "t", "ian"]
    assert seq.tone[:2] == [1, 1]
    assert seq.phones[-1] == "#4" and "#3" in seq.phones  # comma -> #3, sentence end -> #4
    assert 1.8 <= len(seq) / 10 <= 2.6  # about two phones per character
    assert len(seq) == len(seq.sy) == len(seq.tone) == len(seq.syllable_flag) == len(seq.word_segment)
    assert (
        max(seq.sy) < 147 and max(seq.tone) < 10 and max(seq.syllable_flag) < 8 and max(seq.word_segment) < 8
    )
    assert min(seq.sy) > 0  # no padding or unknown symbols
    assert seq.emotion_id == EMOTION_IDS["happy"] and seq.speaker_id == 0


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
    assert seq.tone[-2] == 5  # 吧 ba5
    assert seq.syllable_flag[:2] == [1, 3]  # n (begin), i (end)
    single = text_to_ids("二")  # er4: one phone for the whole syllable
    assert single.phones == ["er", "#4"] and single.syllable_flag[0] == 4


def test_polyphones_follow_the_word():
    bank = text_to_ids("银行")
    walk = text_to_ids("行走")
    assert bank.phones[2:4] == ["h", "ang"]
    assert walk.phones[:2] == ["x", "ing"]


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


def test_latin_letters_are_spelled_out():
    seq = text_to_ids("AI技术")
    assert seq.phones[:2] == ["EN_A", "EN_I"]
    assert seq.word_segment[:2] == [1, 3]
    assert text_to_ids("ai技术").sy == seq.sy
    assert text_to_ids("ＡＩ技术").sy == seq.sy


def test_breaks_merge_and_leading_ones_are_dropped():
    seq = text_to_ids("，，你好、，世界。。")
    assert seq.phones == ["n", "i", "h", "ao", "#3", "sh", "i", "j", "ie", "#4"]
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
        text_to_ids(ARTICLE, speaker=9)
    with pytest.raises(VariantsError):
        text_to_ids(None)  # type: ignore[arg-type]
