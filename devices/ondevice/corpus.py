"""The fixed benchmark corpus: Chinese sentences in three length classes, and a seeded schedule.

Length classes count characters of the text as written (punctuation included): short 5-12, medium
20-40, long 60-100. ``schedule`` cycles through every (sentence, emotion) pair in a seeded order so
each pair appears equally often (counts differ by at most one when ``n`` is not a multiple).

Runs on the device too: Python 3.8+, standard library only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

LENGTH_CLASSES = ("short", "medium", "long")
#: Inclusive character-count range of each length class.
LENGTH_RANGES = {"short": (5, 12), "medium": (20, 40), "long": (60, 100)}


@dataclass(frozen=True)
class Sentence:
    id: str
    text: str
    length_class: str


_SHORT = (
    "今天天气真好,我很开心!",  # the seed article's sentence
    "欢迎使用语音合成。",
    "请把门关上。",
    "我们明天见吧!",
    "这本书很有意思。",
    "你吃过晚饭了吗?",
)
_MEDIUM = (
    "今天下午三点,我们在会议室讨论下一季度的产品计划。",
    "听到这个消息以后,他激动得一晚上都没有睡着。",
    "窗外下着小雨,街上的行人撑着五颜六色的雨伞匆匆走过。",
    "如果你有任何问题,请随时拨打我们的客服热线。",
    "这家小餐馆的面条味道很好,价格也非常便宜。",
)
_LONG = (
    "春天来了,公园里的桃花和樱花都开了,很多家长带着孩子出来散步、放风筝,"
    "湖边的柳树也长出了嫩绿的新芽,到处都充满了春天的生机。",
    "根据气象台的最新预报,明天白天到夜间本市将有中到大雨,局部地区有暴雨,"
    "请广大市民出门时携带雨具,注意交通安全,尽量减少不必要的外出。",
    "我小时候住在南方的一个小镇上,每到夏天,外婆都会在院子里摆一张竹床,"
    "我们一边乘凉一边听她讲过去的故事,那是我最难忘的时光。",
    "为了提高工作效率,公司决定从下个月开始推行新的考勤制度,所有员工需要通过手机应用打卡,"
    "具体细则将在本周五之前发送到大家的邮箱。",
)

_SENTENCES: Tuple[Sentence, ...] = tuple(
    Sentence(f"{cls}-{i + 1:02d}", text, cls)
    for cls, texts in (("short", _SHORT), ("medium", _MEDIUM), ("long", _LONG))
    for i, text in enumerate(texts)
)


def default_corpus(seed: int = 0) -> List[Sentence]:
    """The fixed corpus. ``seed=0`` gives the canonical order (short, medium, long, by id); another seed a
    seeded permutation of the same sentences."""
    sentences = list(_SENTENCES)
    if seed:
        random.Random(seed).shuffle(sentences)
    return sentences


def by_class(corpus: Iterable[Sentence], classes: Sequence[str]) -> List[Sentence]:
    """The sentences of the given length classes (ValueError for an unknown class or an empty result)."""
    unknown = sorted(set(classes) - set(LENGTH_CLASSES))
    if unknown:
        raise ValueError(f"unknown length classes {unknown}; known: {', '.join(LENGTH_CLASSES)}")
    chosen = [s for s in corpus if s.length_class in classes]
    if not chosen:
        raise ValueError(f"no sentences of classes {list(classes)} in the corpus")
    return chosen


def schedule(
    corpus: Sequence[Sentence], emotions: Sequence[str], n: int, seed: int = 0
) -> List[Tuple[Sentence, str]]:
    """``n`` (sentence, emotion) pairs: every pair once per cycle, each cycle in a seeded random order."""
    if n < 0:
        raise ValueError(f"schedule: n must be >= 0, got {n}")
    pairs = [(sentence, emotion) for sentence in corpus for emotion in emotions]
    if not pairs and n:
        raise ValueError("schedule: the corpus and the emotions must not be empty")
    rng = random.Random(seed)
    out: List[Tuple[Sentence, str]] = []
    while len(out) < n:
        cycle = list(pairs)
        rng.shuffle(cycle)
        out.extend(cycle[: n - len(out)])
    return out


def sample_sentence() -> Sentence:
    """The one short fixed sentence used for the report's audio samples."""
    return _SENTENCES[0]
