"""``edgebench export`` and ``harness.export``: BMF documents checked against Bencher's BMF JSON schema and
recomputed from the raw samples, the JSON summaries, one file per testbed, the error paths; on a real
SQLite store through ``harness.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from records import make_identity, make_manifest, make_record

from harness import export, results, stats
from harness.budgets import default_budgets
from harness.cli import main
from harness.store import Store

#: Bencher Metric Format (https://bencher.dev/docs/reference/bencher-metric-format): benchmark name ->
#: measure (slug, at most 64 characters) -> metric with a required number ``value`` and optional number
#: bounds; stricter than Bencher's published schema in refusing any other key.
BMF_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"minLength": 1, "maxLength": 1024},
    "additionalProperties": {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"minLength": 1, "maxLength": 64},
        "additionalProperties": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "lower_value": {"type": "number"},
                "upper_value": {"type": "number"},
            },
            "required": ["value"],
            "additionalProperties": False,
        },
    },
}

VARIANTS = ("original", "quantized@onnxruntime")
#: run "multi": device -> budget class (None: none stored, the device is its own testbed)
MULTI_DEVICES = {"pi4-a": "pi4", "pi4-b": "pi4", "pi5-a": "pi5", "local": None}
MULTI_RUN = "20261122-020000-00000a"
SINGLE_RUN = "20261123-020000-00000b"  # the latest: one device, class pi5
EMPTY_RUN = "20261121-020000-00000c"  # nothing measured
RSS = (300_000_000, 302_000_000, 301_000_000)  # per process: the bounds are min and max


def _record(variant: str, seed: int, slowdown: float) -> dict:
    record = make_record(variant, processes=3, samples_per_class=15, seed=seed, slowdown=slowdown)
    for p, rss in zip(record["processes"], RSS):
        p["peak_rss_bytes"] = rss
    return record


def _attempt(st, run_id, device, budget_class, variant, seed, slowdown=1.0):
    identity = make_identity(device)
    if budget_class is not None:
        identity["budget_class"] = budget_class
    st.record_attempt(run_id, device, identity, variant, "ok", None, _record(variant, seed, slowdown))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "results.sqlite"
    budgets = default_budgets().to_dict()
    with Store(path) as st:
        st.start_run({}, budgets, "test", "tiny", list(VARIANTS), ["pi4-a"], run_id=EMPTY_RUN,
                     started_at="2026-11-21T02:00:00+00:00")
        st.record_attempt(EMPTY_RUN, "pi4-a", make_identity("pi4-a"), "original", "timeout", "timed out",
                          None)
        st.finish_run(EMPTY_RUN, "incomplete")

        st.start_run({}, budgets, "test", "tiny", list(VARIANTS), list(MULTI_DEVICES), run_id=MULTI_RUN,
                     started_at="2026-11-22T02:00:00+00:00")
        for i, v in enumerate(VARIANTS):
            manifest = make_manifest(v, acoustic_bytes=40_000_000 - i)
            st.record_artifact(MULTI_RUN, v, f"/artifacts/{v}", manifest)
            for j, (device, cls) in enumerate(MULTI_DEVICES.items()):
                if (device, v) == ("local", "quantized@onnxruntime"):
                    st.record_attempt(MULTI_RUN, device, make_identity(device), v, "failed", "boom", None)
                    continue
                _attempt(st, MULTI_RUN, device, cls, v, seed=10 * i + j, slowdown=1.0 + 0.2 * j)
        st.finish_run(MULTI_RUN, "incomplete")

        st.start_run({}, budgets, "test", "tiny", list(VARIANTS), ["pi5-a"], run_id=SINGLE_RUN,
                     started_at="2026-11-23T02:00:00+00:00")
        st.record_artifact(SINGLE_RUN, "original", "/artifacts/original", make_manifest("original"))
        # no artifact recorded for the quantized variant: its size is unknown, so no size measure
        for i, v in enumerate(VARIANTS):
            _attempt(st, SINGLE_RUN, "pi5-a", "pi5", v, seed=100 + i, slowdown=1.0 - 0.3 * i)
        st.finish_run(SINGLE_RUN, "complete")
    return path


def _loaded(store_path: Path, run_id: str):
    with Store(store_path) as st:
        return results.load(st, run_id), results.samples_df(st, run_id)


def _strict_json(text: str):
    def reject(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def _check_bmf(doc: dict) -> None:
    jsonschema.Draft7Validator(BMF_SCHEMA).validate(doc)
    for name, measures in doc.items():
        assert set(measures) <= set(export.MEASURES), name
        for slug, metric in measures.items():
            if "lower_value" in metric or "upper_value" in metric:
                assert metric["lower_value"] <= metric["value"] <= metric["upper_value"], (name, slug, metric)


def _row_percentile(q):
    """The nearest-rank percentile of each row, one row at a time with ``stats.percentile``."""
    return lambda matrix: np.array([stats.percentile(row, q) for row in matrix])


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------------ BMF


def test_the_schema_in_this_file_rejects_what_bencher_would(store_path):
    validator = jsonschema.Draft7Validator(BMF_SCHEMA)
    assert validator.is_valid({"b": {"latency-p50-ms": {"value": 1.5, "lower_value": 1, "upper_value": 2}}})
    for bad in ({}, {"b": {}}, {"b": {"m": {}}}, {"b": {"m": {"value": "1"}}}, {"b": {"m": {"value": None}}},
                {"b": {"m": {"value": 1, "unit": "ms"}}}, {"b": {"m" * 65: {"value": 1}}}):
        assert not validator.is_valid(bad), bad


def test_single_testbed_bmf_to_stdout_matches_the_summaries_and_the_samples(store_path, capsys):
    code, out, err = _run(["export", "latest", "--format", "bmf", "--store", str(store_path)], capsys)
    assert code == 0, err
    assert "bencher run --testbed pi5" in err  # how to upload what went to stdout
    doc = _strict_json(out)
    _check_bmf(doc)
    res, samples = _loaded(store_path, SINGLE_RUN)
    assert res.device_classes == {"pi5-a": "pi5"}
    assert set(doc) == {f"edgebench/{v}/{c}" for v in VARIANTS for c in ("short", "medium", "long")}
    for s in res.summaries:
        m = doc[f"edgebench/{s.variant}/{s.length_class}"]
        assert m["latency-p50-ms"]["value"] == s["p50_ms"]
        assert m["latency-p90-ms"]["value"] == s["p90_ms"]
        assert m["rtf"]["value"] == pytest.approx(s["rtf"], rel=1e-12) and 0 < s["rtf"] < 1
        assert m["peak-rss-bytes"] == {"value": max(RSS), "lower_value": min(RSS), "upper_value": max(RSS)}
        if s.variant == "original":
            assert m["size-bytes"] == {"value": 48_500_000 + 19_400_000}
        else:
            assert "size-bytes" not in m  # no artifact recorded: no size, not a made-up one
        # the bounds are the 95 % bootstrap CI of the nearest-rank percentile of this summary's samples
        rows = samples[(samples.variant == s.variant) & (samples.length_class == s.length_class)]
        total = rows["total_s"].to_numpy(dtype=float)
        assert len(total) == s.n
        for slug, q in (("latency-p50-ms", 50), ("latency-p90-ms", 90)):
            ci = stats.bootstrap_ci(total, _row_percentile(q))
            assert ci.estimate * 1e3 == m[slug]["value"]
            assert m[slug]["lower_value"] == pytest.approx(min(ci.low * 1e3, ci.estimate * 1e3))
            assert m[slug]["upper_value"] == pytest.approx(max(ci.high * 1e3, ci.estimate * 1e3))
        assert m["latency-p50-ms"]["lower_value"] < m["latency-p50-ms"]["upper_value"]
        assert m["rtf"]["lower_value"] < s["rtf"] < m["rtf"]["upper_value"]


def test_bounds_always_contain_the_value(store_path):
    """A percentile interval need not contain its estimate; with one resample it is a single point off
    the value nearly always, and the exported bounds are widened to the value."""
    res, samples = _loaded(store_path, SINGLE_RUN)
    widened = 0
    for s in res.summaries:
        rows = samples[(samples.variant == s.variant) & (samples.length_class == s.length_class)]
        measures = export.bmf_measures(s, rows, n_resamples=1, seed=3)
        _check_bmf({"b": measures})
        bounded = [m for m in measures.values() if "lower_value" in m]
        assert len(bounded) == 3  # both latencies and the RTF (no RSS per process given)
        widened += sum(m["lower_value"] < m["upper_value"]
                       and m["value"] in (m["lower_value"], m["upper_value"]) for m in bounded)
    assert widened >= 6


def test_measures_without_a_value_are_left_out(store_path):
    res, samples = _loaded(store_path, SINGLE_RUN)
    s = res.summaries[0]
    values = dict(s.values, rtf=float("nan"), peak_rss_bytes=None, size_vocoder_bytes=None)
    hollow = results.Summary(s.device, s.device_identity, s.variant, s.length_class, s.n, values)
    measures = export.bmf_measures(hollow, None, None)
    assert measures == {"latency-p50-ms": {"value": s["p50_ms"]}, "latency-p90-ms": {"value": s["p90_ms"]}}


def test_a_shared_testbed_names_its_devices_and_each_testbed_gets_a_file(store_path, tmp_path, capsys):
    out_dir = tmp_path / "bmf"
    code, out, err = _run(["export", MULTI_RUN, "--format", "bmf", "-o", str(out_dir), "--store",
                           str(store_path)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["local.json", "pi4.json", "pi5.json"]
    assert out.splitlines() == [
        f"bencher run --testbed {t} --adapter json --file {out_dir / (t + '.json')}"
        for t in ("local", "pi4", "pi5")
    ]
    docs = {t: _strict_json((out_dir / f"{t}.json").read_text()) for t in ("local", "pi4", "pi5")}
    for doc in docs.values():
        _check_bmf(doc)
    classes = ("short", "medium", "long")
    # pi4-a and pi4-b share the pi4 testbed: their benchmarks end with the device
    assert set(docs["pi4"]) == {f"edgebench/{v}/{c}/{d}" for v in VARIANTS for c in classes
                                for d in ("pi4-a", "pi4-b")}
    assert set(docs["pi5"]) == {f"edgebench/{v}/{c}" for v in VARIANTS for c in classes}
    # a device without a class is its own testbed; its failed pair is not exported
    assert set(docs["local"]) == {f"edgebench/original/{c}" for c in classes}
    res, _ = _loaded(store_path, MULTI_RUN)
    for s in res.summaries:
        t = res.device_classes[s.device] or s.device
        name = f"edgebench/{s.variant}/{s.length_class}" + (f"/{s.device}" if t == "pi4" else "")
        assert docs[t][name]["latency-p50-ms"]["value"] == s["p50_ms"]
        assert docs[t][name]["size-bytes"]["value"] == s["size_acoustic_bytes"] + s["size_vocoder_bytes"]
    assert docs["pi4"]["edgebench/original/long/pi4-a"] != docs["pi4"]["edgebench/original/long/pi4-b"]


def test_testbed_picks_one_document(store_path, tmp_path, capsys):
    target = tmp_path / "pi4-only.json"
    code, out, err = _run(["export", MULTI_RUN, "--format", "bmf", "--testbed", "pi4", "-o", str(target),
                           "--store", str(store_path)], capsys)
    assert code == 0, err
    assert out.strip() == f"bencher run --testbed pi4 --adapter json --file {target}"
    doc = _strict_json(target.read_text())
    _check_bmf(doc)
    res, samples = _loaded(store_path, MULTI_RUN)
    assert doc == export.bmf_documents(res, samples, {
        (d, v): list(RSS) for d in MULTI_DEVICES for v in VARIANTS})["pi4"]
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_an_existing_folder_gets_a_named_file(store_path, tmp_path, capsys):
    code, out, err = _run(["export", SINGLE_RUN, "--format", "bmf", "-o", str(tmp_path), "--store",
                           str(store_path)], capsys)
    assert code == 0, err
    assert out.strip() == f"bencher run --testbed pi5 --adapter json --file {tmp_path / 'pi5.json'}"
    _check_bmf(_strict_json((tmp_path / "pi5.json").read_text()))
    code, out, err = _run(["export", SINGLE_RUN, "--format", "json", "-o", str(tmp_path), "--store",
                           str(store_path)], capsys)
    assert code == 0, err
    assert _strict_json((tmp_path / f"{SINGLE_RUN}.json").read_text())["run"]["run_id"] == SINGLE_RUN
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pi5.json", f"{SINGLE_RUN}.json"])


def test_two_summaries_for_one_benchmark_are_refused():
    s = results.Summary("pi4-a", None, "original", "short", 1, {"p50_ms": 1.0, "p90_ms": 1.0})
    res = results.RunResults({"run_id": "r"}, (s, s), {"pi4-a": "pi4"})
    with pytest.raises(ValueError, match="edgebench/original/short"):
        export.bmf_documents(res, None)


# ----------------------------------------------------------------------------------------------- JSON


def test_json_round_trips_the_summaries(store_path, tmp_path, capsys):
    code, out, err = _run(["export", MULTI_RUN, "--format", "json", "--store", str(store_path)], capsys)
    assert code == 0, err
    res, _ = _loaded(store_path, MULTI_RUN)
    data = _strict_json(out)
    assert data == res.to_dict()
    assert len(data["summaries"]) == len(res.summaries) == 7 * 3
    assert out == json.dumps(data, indent=2, sort_keys=True) + "\n"

    target = tmp_path / "run.json"
    assert _run(["export", MULTI_RUN, "--format", "json", "-o", str(target), "--store", str(store_path)],
                capsys)[0] == 0
    assert _strict_json(target.read_text()) == res.to_dict()


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, needle", [
    (["nope", "--format", "bmf"], "no run 'nope'"),
    (["nope", "--format", "json"], "no run 'nope'"),
    ([MULTI_RUN, "--format", "bmf", "--testbed", "pi3"], "no testbed 'pi3'"),
    ([MULTI_RUN, "--format", "bmf"], "-o DIR"),
    ([MULTI_RUN, "--format", "json", "--testbed", "pi4"], "--testbed"),
    ([EMPTY_RUN, "--format", "bmf"], "no measured results"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(store_path, tmp_path, capsys, args, needle):
    target = tmp_path / "out.json"
    before = _files(tmp_path)
    for extra in ([], ["-o", str(target)]):
        if needle == "-o DIR" and extra:
            continue
        code, out, err = _run(["export", *args, *extra, "--store", str(store_path)], capsys)
        assert code == 2
        assert err.startswith("edgebench: error: ") and err.count("\n") == 1, err
        assert needle in err
        assert out == ""
        assert _files(tmp_path) == before


def test_several_testbeds_into_an_existing_file_is_refused(store_path, tmp_path, capsys):
    target = tmp_path / "exists.json"
    target.write_text("keep me")
    code, out, err = _run(["export", MULTI_RUN, "--format", "bmf", "-o", str(target), "--store",
                           str(store_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "3 testbeds (local, pi4, pi5)" in err
    assert target.read_text() == "keep me" and _files(tmp_path) == {target}


def test_no_store_and_an_empty_store_are_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.sqlite"
    code, _, err = _run(["export", "latest", "--format", "json", "--store", str(missing)], capsys)
    assert code == 2 and "no results store" in err and err.count("\n") == 1
    assert not missing.exists()
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    code, _, err = _run(["export", "latest", "--format", "bmf", "--store", str(empty)], capsys)
    assert code == 2 and "holds no runs" in err and err.count("\n") == 1
