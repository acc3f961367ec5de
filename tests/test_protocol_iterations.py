"""The measurement protocol's iteration logic, deterministic with a fake clock (no model, no timing)."""

from __future__ import annotations

from collections import Counter, namedtuple

import pytest

from devices.errors import DevicesError
from devices.ondevice.agent import __main__ as agent_cli
from devices.ondevice.agent.worker import StopRule, balanced_block, measure_phases, steady_state
from devices.ondevice.protocol import Protocol

Sentence = namedtuple("Sentence", "id text length_class")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSynth:
    """Costs ``cost(item)`` seconds of fake time per call and remembers every call."""

    def __init__(self, clock: FakeClock, cost=lambda item: 0.125) -> None:
        self.clock = clock
        self.cost = cost
        self.calls = []

    def __call__(self, item) -> dict:
        self.calls.append(item)
        self.clock.advance(self.cost(item))
        return {"item": item, "call": len(self.calls)}


def plan_of(n: int):
    return [(Sentence(f"s{i}", "x", "short"), "neutral") for i in range(n)]


def run(rule: StopRule, plan=None, cost=lambda item: 0.125):
    clock = FakeClock()
    synth = FakeSynth(clock, cost)
    rule.deadline = None if rule.deadline is None else clock() + rule.deadline
    samples, reason, steady_s = steady_state(plan or plan_of(1), synth, rule, clock)
    return samples, reason, steady_s


def test_min_iters_binds_when_min_seconds_is_short():
    samples, reason, steady_s = run(StopRule(min_iters=10, min_seconds=0.5, max_iters=200))
    assert (len(samples), reason, steady_s) == (10, "target", 1.25)


def test_min_seconds_binds_when_iterations_are_fast():
    samples, reason, steady_s = run(StopRule(min_iters=2, min_seconds=1.0, max_iters=200))
    assert (len(samples), reason, steady_s) == (8, "target", 1.0)


def test_both_minimums_must_be_reached():
    # 3 s per iteration: min_seconds is met after 1, min_iters after 4.
    samples, reason, _ = run(StopRule(min_iters=4, min_seconds=2.0, max_iters=200), cost=lambda item: 3.0)
    assert (len(samples), reason) == (4, "target")


def test_hard_cap_wins_over_minimum_seconds():
    samples, reason, _ = run(StopRule(min_iters=1, min_seconds=1e9, max_iters=7))
    assert (len(samples), reason) == (7, "max_iters")


def test_deadline_stops_early_and_says_so():
    samples, reason, steady_s = run(StopRule(min_iters=100, min_seconds=0.0, max_iters=200, deadline=0.5))
    assert (len(samples), reason, steady_s) == (4, "deadline", 0.5)


def test_stops_only_at_the_end_of_a_balanced_round():
    plan = plan_of(4)
    samples, reason, _ = run(StopRule(min_iters=10, min_seconds=0.0, max_iters=200, block=4), plan=plan)
    assert (len(samples), reason) == (12, "target")
    assert set(Counter(s["item"][0].id for s in samples).values()) == {3}


def test_round_longer_than_the_cap_stops_at_the_cap():
    samples, reason, _ = run(StopRule(min_iters=1, min_seconds=0.0, max_iters=5, block=63), plan=plan_of(63))
    assert (len(samples), reason) == (5, "max_iters")


def test_samples_are_numbered_and_cycle_over_the_plan():
    plan = plan_of(3)
    samples, _, _ = run(StopRule(min_iters=7, min_seconds=0.0, max_iters=7), plan=plan)
    assert [s["iteration"] for s in samples] == list(range(7))
    assert [s["item"] for s in samples] == [plan[i % 3] for i in range(7)]


def test_first_inference_and_warmup_never_become_samples():
    clock = FakeClock()
    first_cost = {"done": False}

    def cost(item):  # the first call is slow (lazy init), the rest take 0.125 s
        if not first_cost["done"]:
            first_cost["done"] = True
            return 5.0
        return 0.125

    synth = FakeSynth(clock, cost)
    plan = plan_of(3)
    rule = StopRule(min_iters=6, min_seconds=0.0, max_iters=100, block=3)
    first_s, warmup_done, samples, reason, steady_s = measure_phases(synth, plan, 2, rule, clock)
    assert first_s == 5.0
    assert warmup_done == 2
    assert len(synth.calls) == 1 + 2 + 6
    assert [s["call"] for s in samples] == [4, 5, 6, 7, 8, 9]  # calls 1..3 were first inference + warmup
    assert [s["item"] for s in samples] == plan + plan          # the steady state starts a fresh round
    assert (reason, steady_s) == ("target", 0.75)


def test_warmup_stops_at_the_deadline():
    clock = FakeClock()
    synth = FakeSynth(clock, lambda item: 1.0)
    rule = StopRule(min_iters=5, min_seconds=0.0, max_iters=100, deadline=clock() + 2.5)
    first_s, warmup_done, samples, reason, _ = measure_phases(synth, plan_of(2), 10, rule, clock)
    assert (first_s, warmup_done, len(samples), reason) == (1.0, 2, 0, "deadline")


def test_balanced_block_is_the_round_when_the_schedule_has_rounds():
    a, b, c = (Sentence(x, "", "short") for x in "abc")
    in_rounds = [(a, "happy"), (b, "sad"), (c, "fear"), (c, "happy"), (a, "sad"), (b, "fear")]
    shuffled = [(a, "happy"), (a, "sad"), (c, "fear"), (c, "happy"), (b, "sad"), (b, "fear")]
    assert balanced_block(in_rounds, 3) == 3
    assert balanced_block(shuffled, 3) == 6


def test_stop_rule_rejects_a_zero_block():
    with pytest.raises(ValueError):
        StopRule(1, 0.0, 2, block=0)


# ------------------------------------------------------------------------------------------ Protocol


def test_protocol_defaults_match_the_contract():
    p = Protocol()
    assert (p.processes, p.warmup, p.min_iters, p.min_seconds, p.max_iters, p.threads, p.timeout_s,
            p.sentences) == (3, 2, 10, 5.0, 200, None, 900, ("short", "medium", "long"))


@pytest.mark.parametrize("kwargs, message", [
    ({"processes": 0}, "processes must be >= 1"),
    ({"min_iters": 20, "max_iters": 10}, "min_iters (20) is larger than max_iters (10)"),
    ({"min_seconds": float("nan")}, "min_seconds must be a finite number"),
    ({"threads": True}, "threads must be an integer"),
    ({"sentences": ("short", "huge")}, "unknown length class 'huge'"),
    ({"sentences": ()}, "sentences is empty"),
    ({"warmup": -1}, "warmup must be >= 0"),
])
def test_protocol_rejects_bad_settings(kwargs, message):
    with pytest.raises(DevicesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Protocol(**kwargs)


def test_protocol_from_dict_rejects_unknown_keys():
    assert Protocol.from_dict({"processes": 2}).processes == 2
    with pytest.raises(DevicesError, match="unknown key"):
        Protocol.from_dict({"proceses": 2})


def test_protocol_arguments_parse_back_in_the_agent():
    p = Protocol(processes=2, warmup=1, min_iters=3, min_seconds=0.5, max_iters=9, threads=2,
                 timeout_s=120, sentences=("short", "long"), seed=4)
    argv = ["measure", "--artifact", "a", "--variant", "v", *p.agent_args()]
    args = agent_cli.make_parser().parse_args(argv)
    assert args.protocol == p  # one document, read back by the same class on the device
    assert args.protocol.echoed() == p.echoed()
    assert p.transport_timeout() > p.timeout_s


# ------------------------------------------------------------------------------- the corpus schedule


def test_plan_from_the_real_schedule_is_balanced_in_rounds():
    from devices.ondevice import corpus
    from devices.ondevice.agent.worker import in_rounds, make_plan
    from devices.ondevice.frontend import EMOTIONS

    plan, block = make_plan(corpus, EMOTIONS, ["short", "long"], seed=3)
    sentences = [s for s in corpus.default_corpus(seed=3) if s.length_class in ("short", "long")]
    cycle = corpus.schedule(sentences, EMOTIONS, len(sentences) * len(EMOTIONS), 3)
    assert sorted((s.id, e) for s, e in plan) == sorted((s.id, e) for s, e in cycle)  # same pairs
    assert block == len(sentences)
    for start in range(0, len(plan), block):
        assert sorted(s.id for s, _ in plan[start:start + block]) == sorted(s.id for s in sentences)
    assert make_plan(corpus, EMOTIONS, ["short", "long"], seed=3)[0] == plan          # seeded
    assert make_plan(corpus, EMOTIONS, ["short", "long"], seed=4)[0] != plan
    assert in_rounds(cycle[:5]) == cycle[:5]   # not a whole cycle: left alone


def test_plan_narrowed_to_sentence_ids():
    from devices.ondevice import corpus
    from devices.ondevice.agent.worker import WorkerError, make_plan
    from devices.ondevice.frontend import EMOTIONS

    plan, block = make_plan(corpus, EMOTIONS, ["short"], 0, sentence_ids=["short-01"])
    assert {s.id for s, _ in plan} == {"short-01"} and sorted(e for _, e in plan) == sorted(EMOTIONS)
    assert block == 1
    with pytest.raises(WorkerError, match="unknown corpus sentence id"):
        make_plan(corpus, EMOTIONS, ["short"], 0, sentence_ids=["short-99"])
    with pytest.raises(WorkerError, match="no corpus sentence in the length classes long"):
        make_plan(corpus, EMOTIONS, ["long"], 0, sentence_ids=["short-01"])
