"""The device's limits (devices/ondevice/microbench.py) and a stage placed against them
(harness/roofline.py), on a fake clock: every timed call takes exactly what the clock says."""

from __future__ import annotations

import itertools

import pytest
import torch

from devices.ondevice import microbench
from harness.roofline import COMPUTE, DISPATCH, MEMORY, Bounds, drift, place


def fake_clock(step: float):
    """Each reading is ``step`` seconds after the previous one: every timed call lasts ``step``."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_repeat_times_until_min_s_and_min_reps_within_max_reps():
    calls = []
    times = microbench.repeat(lambda: calls.append(1), min_s=0.05, min_reps=3, clock=fake_clock(0.01))
    assert times == pytest.approx([0.01] * 5) and len(calls) == 6   # one untimed warm-up
    assert len(microbench.repeat(lambda: None, min_s=0.0, min_reps=3, clock=fake_clock(1.0))) == 3
    assert len(microbench.repeat(lambda: None, min_s=99.0, max_reps=7, clock=fake_clock(1.0))) == 7


def test_the_device_limits_are_medians_with_spread_and_n():
    doc = microbench.run(torch, model_shapes=[(3, 32, 96)], min_s=0.045, clock=fake_clock(0.01))
    rows, inner, cols = microbench.LARGE_SHAPE
    fp32 = doc["matmul_fp32"]
    assert fp32["median"] == pytest.approx(rows * inner * cols / 0.01)
    assert fp32["n"] == 5 and fp32["q1"] == pytest.approx(fp32["q3"]) and fp32["unit"] == "MAC/s"
    assert doc["matmul_int8"]["median"] == pytest.approx(fp32["median"])   # same clock, same shape
    assert doc["model_fp32"][0]["median"] == pytest.approx(3 * 32 * 96 / 0.01)
    assert doc["model_fp32"][0]["shape"] == [3, 32, 96] and doc["model_int8"][0]["n"] >= 3
    assert doc["copy"]["median"] == pytest.approx(2 * microbench.COPY_BYTES / 0.01)
    assert doc["dispatch"]["median"] == pytest.approx(0.01 / microbench.DISPATCH_CALLS)
    assert (doc["format"], doc["version"]) == (microbench.FORMAT, microbench.VERSION)
    bounds = Bounds.from_microbench(doc)
    assert bounds.s_per_op == pytest.approx(5e-6)


def test_a_slow_board_gets_a_smaller_large_shape_and_says_which():
    # every call takes 1 s: the product is halved until the smallest allowed shape
    doc = microbench.run(torch, min_s=0.0, clock=fake_clock(1.0))
    assert doc["matmul_fp32"]["shape"] == [16, microbench.LARGE_SHAPE[1], 64]
    # every call takes 10 ms: the large shape stays
    assert microbench.large_shape(torch, clock=fake_clock(0.01)) == microbench.LARGE_SHAPE


def test_a_document_with_nonsense_bounds_is_refused():
    good = microbench.run(torch, min_s=0.0, clock=fake_clock(0.01))
    assert microbench.check(good) is None
    assert "copy" in microbench.check({**good, "copy": {"median": -1.0, "q1": -1.0, "q3": -1.0, "n": 3}})
    assert "dispatch is missing" == microbench.check({k: v for k, v in good.items() if k != "dispatch"})
    assert "quartiles" in microbench.check({**good, "matmul_int8": {"median": 5.0, "n": 3}})


def test_the_real_limits_are_positive_on_this_machine():
    doc = microbench.run(torch, min_s=0.02)
    bounds = Bounds.from_microbench(doc)
    assert bounds.mac_per_s_fp32 > 1e6 and bounds.bytes_per_s > 1e6 and 0 < bounds.s_per_op < 1e-2
    assert doc["threads"] >= 1


BOUNDS = Bounds(mac_per_s_fp32=10e9, mac_per_s_int8=20e9, bytes_per_s=5e9, s_per_op=5e-6)


def test_many_tiny_calls_are_dispatch_bound_and_int8_is_not_predicted_to_help():
    # a decoder-like stage: 26,498 calls, 268 MMAC, 19 MB of weights, 180 ms
    p = place("decoder", seconds=0.180, macs=268_000_000, ops=26_498, weight_bytes=19_000_000, bounds=BOUNDS)
    assert p.bound == DISPATCH
    assert p.floors[DISPATCH] == pytest.approx(26_498 * 5e-6)
    assert p.share == pytest.approx(26_498 * 5e-6 / 0.180)
    assert p.achieved_mac_per_s == pytest.approx(268e6 / 0.180)
    assert p.fraction_of_peak(BOUNDS) == pytest.approx(268e6 / 0.180 / 10e9)
    assert "26498 operator calls x 5.0 us = 132.5 ms of 180.0 ms" in p.reason()
    pred = p.predictions(BOUNDS)
    assert pred["int8"].startswith("no faster") and pred["runtime"].startswith("faster")
    assert p.sentence("quantized", BOUNDS).startswith("quantized decoder: dispatch-bound (")


def test_big_products_are_compute_bound_and_int8_helps_where_its_rate_is_higher():
    p = place("vocoder", seconds=3.0, macs=15_400_000_000, ops=394, weight_bytes=19_400_000, bounds=BOUNDS)
    assert p.bound == COMPUTE and p.share == pytest.approx(1.54 / 3.0)
    assert p.predictions(BOUNDS)["int8"].startswith("faster: int8 products run at 2.0x")
    slow_int8 = Bounds(10e9, 8e9, 5e9, 5e-6)
    assert p.predictions(slow_int8)["int8"].startswith("no faster")
    # an int8 stage is placed against the int8 peak
    q = place("vocoder", seconds=3.0, macs=15_400_000_000, ops=394, weight_bytes=19_400_000, bounds=BOUNDS,
              int8=True)
    assert q.floors[COMPUTE] == pytest.approx(15.4e9 / 20e9)


def test_streaming_big_weights_with_little_arithmetic_is_memory_bound():
    p = place("embeddings", seconds=0.05, macs=1_000, ops=3, weight_bytes=200_000_000, bounds=BOUNDS)
    assert p.bound == MEMORY and "200.0 MB of weights" in p.reason()
    with pytest.raises(ValueError, match="positive"):
        place("x", seconds=0.0, macs=1, ops=1, weight_bytes=1, bounds=BOUNDS)


def test_tiny_preset_stages_from_counted_work():
    """The counted work of the tiny model, placed with fake stage times: its decoder's calls dominate."""
    from devices.ondevice.models import get_preset, reference
    from variants.work import count_work

    acoustic, vocoder = reference(get_preset("tiny"), 0)
    n = 10
    inputs = {k: torch.ones(1, n, dtype=torch.long) for k in
              ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker")}
    work = count_work(acoustic, vocoder, inputs)
    dec = work.stages["decoder"]
    p = place("decoder", seconds=dec.ops * 6e-6, macs=dec.macs, ops=dec.ops, weight_bytes=dec.weight_bytes,
              bounds=BOUNDS)
    assert p.bound == DISPATCH and p.share == pytest.approx(5 / 6)


def test_device_drift_ratios_say_slower_now_as_above_one():
    before = BOUNDS
    halved = Bounds(5e9, 10e9, 5e9, 10e-6)   # a CPU-capped board: half the rate, twice the call cost
    d = drift(halved, before)
    assert d == pytest.approx({"compute": 2.0, "memory": 1.0, "dispatch": 2.0})


def test_products_of_a_measured_shape_count_at_that_shapes_rate_the_rest_at_the_peak():
    doc = microbench.run(torch, model_shapes=[(1, 128, 384)], min_s=0.045, clock=fake_clock(0.01))
    bounds = Bounds.from_microbench(doc)
    one_row = 128 * 384 / 0.01                                   # MAC/s of one call per 10 ms
    assert bounds.rate((1, 128, 384), int8=False) == pytest.approx(one_row)
    assert bounds.rate((1, 128, 384), int8=True) == pytest.approx(one_row)
    assert bounds.rate((7, 7, 7), int8=False) == bounds.mac_per_s_fp32          # not measured: the peak
    p = place("decoder", seconds=1.0, macs=3_000_000, ops=0, weight_bytes=0, bounds=bounds,
              shapes=[[1, 128, 384, 1_000_000], [7, 7, 7, 500_000]])
    want = 1_000_000 / one_row + 2_000_000 / bounds.mac_per_s_fp32
    assert p.floors[COMPUTE] == pytest.approx(want) and p.bound == COMPUTE


def test_a_convolution_shape_is_timed_as_a_convolution_and_stays_fp32_in_an_int8_variant():
    conv = (20, 8, 16, 3, 1)                                     # frames, in, out, kernel, groups
    doc = microbench.run(torch, model_shapes=[conv, (1, 8, 16)], min_s=0.045, clock=fake_clock(0.01))
    assert [e["shape"] for e in doc["model_fp32"]] == [list(conv), [1, 8, 16]]
    assert [e["shape"] for e in doc["model_int8"]] == [[1, 8, 16]]   # dynamic int8 leaves convolutions
    bounds = Bounds.from_microbench(doc)
    conv_rate = 20 * 16 * 8 * 3 / 0.01
    assert bounds.rate(conv, int8=False) == bounds.rate(conv, int8=True) == pytest.approx(conv_rate)


def test_an_unmeasured_length_takes_the_rate_of_the_next_longer_measured_one_never_a_shorter():
    bounds = Bounds(10e9, 20e9, 5e9, 5e-6, shape_rates={(1, 64, 64): (1e9, 0.5e9), (50, 64, 64): (6e9, 9e9)})
    assert bounds.nearest((1, 64, 64)) == (1, 64, 64)
    assert bounds.nearest((20, 64, 64)) == (50, 64, 64)   # more rows: at least as fast, the floor holds
    assert bounds.nearest((80, 64, 64)) is None           # longer than any measured: the peak
    assert bounds.rate((80, 64, 64), int8=False) == 10e9
    assert bounds.nearest((20, 64, 32)) is None           # another layer


def test_a_device_that_prints_garbage_or_nonsense_limits_gets_none_with_the_reason():
    from devices.measure import MAX_LIMITS_BYTES, parse_limits

    good = microbench.run(torch, min_s=0.0, clock=fake_clock(0.01))
    import json

    assert parse_limits(json.dumps(good)) == good
    assert "printed no micro-benchmarks (exit 1): x | Killed" in parse_limits("", "x\nKilled\n", 1)["error"]
    assert "not an edgebench.microbench" in parse_limits(json.dumps({"format": "other"}))["error"]
    assert parse_limits(json.dumps({**good, "error": "torch is not importable"})) == {
        "error": "torch is not importable"}
    assert "implausible" in parse_limits(json.dumps({**good, "dispatch": {"median": 0.0}}))["error"]
    assert "not believed" in parse_limits(" " * (MAX_LIMITS_BYTES + 1))["error"]
