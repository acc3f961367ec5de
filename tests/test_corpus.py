"""Benchmark corpus (devices.ondevice.corpus): length classes, seeded balanced schedule."""

from __future__ import annotations

from collections import Counter

import pytest

from devices.ondevice.corpus import (
    LENGTH_CLASSES,
    LENGTH_RANGES,
    by_class,
    default_corpus,
    sample_sentence,
    schedule,
)
from devices.ondevice.frontend import EMOTIONS, text_to_ids


def test_corpus_classes_and_lengths():
    corpus = default_corpus()
    counts = Counter(s.length_class for s in corpus)
    assert set(counts) == set(LENGTH_CLASSES) and min(counts.values()) >= 4
    for sentence in corpus:
        low, high = LENGTH_RANGES[sentence.length_class]
        assert low <= len(sentence.text) <= high, sentence
        assert sentence.id.startswith(sentence.length_class)
    assert len({s.id for s in corpus}) == len(corpus)
    assert "今天天气真好,我很开心!" in [s.text for s in corpus]


def test_every_sentence_goes_through_the_frontend():
    for sentence in default_corpus():
        seq = text_to_ids(sentence.text, emotion="neutral")
        assert 1.8 <= len(seq) / len(sentence.text) <= 2.6


def test_corpus_seed_only_permutes():
    canonical = default_corpus()
    assert default_corpus(seed=0) == canonical
    shuffled = default_corpus(seed=7)
    assert sorted(shuffled, key=lambda s: s.id) == sorted(canonical, key=lambda s: s.id)
    assert shuffled == default_corpus(seed=7)


def test_schedule_is_balanced_and_seeded():
    corpus = default_corpus()
    pairs = len(corpus) * len(EMOTIONS)
    plan = schedule(corpus, EMOTIONS, 3 * pairs, seed=1)
    counts = Counter((s.id, e) for s, e in plan)
    assert len(counts) == pairs and set(counts.values()) == {3}
    assert plan == schedule(corpus, EMOTIONS, 3 * pairs, seed=1)
    assert plan != schedule(corpus, EMOTIONS, 3 * pairs, seed=2)
    partial = Counter((s.id, e) for s, e in schedule(corpus, EMOTIONS, pairs + 5, seed=1))
    assert max(partial.values()) - min(partial.values()) <= 1 and sum(partial.values()) == pairs + 5
    assert schedule(corpus, EMOTIONS, 0) == []


def test_schedule_and_filter_errors():
    with pytest.raises(ValueError):
        schedule([], EMOTIONS, 3)
    with pytest.raises(ValueError, match="unknown length classes"):
        by_class(default_corpus(), ["tiny"])
    assert {s.length_class for s in by_class(default_corpus(), ["short", "long"])} == {"short", "long"}


def test_sample_sentence_is_short_and_fixed():
    sentence = sample_sentence()
    assert sentence.length_class == "short" and sentence == sample_sentence()
