"""Fixtures of the variants benchmarks: the variants of one preset, built (or fetched) through the cache.

Environment:
  EDGEBENCH_BENCH_PRESET    tiny (default) | base | large
  EDGEBENCH_BENCH_VARIANTS  comma-separated variant names (default: all built-in variants)
  EDGEBENCH_BENCH_THREADS   torch intra-op threads while timing (default: 1)
  EDGEBENCH_BENCH_CACHE     build cache directory (default: the state dir's cache/build, which
                            `edgebench build` fills, so a prior build makes this start at once)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from variants.recipes import BUILTIN_VARIANTS

PRESET = os.environ.get("EDGEBENCH_BENCH_PRESET", "tiny")
VARIANTS = [v for v in os.environ.get("EDGEBENCH_BENCH_VARIANTS", ",".join(BUILTIN_VARIANTS)).split(",") if v]
THREADS = int(os.environ.get("EDGEBENCH_BENCH_THREADS", "1"))


def _cache_dir() -> Path:
    if os.environ.get("EDGEBENCH_BENCH_CACHE"):
        return Path(os.environ["EDGEBENCH_BENCH_CACHE"])
    from harness import paths

    return paths.cache_dir() / "build"


_RESULTS: dict = {}  # (variant, stage) -> {"median_s": ..., "manifest": ...}, filled by the benchmarks


@pytest.fixture(scope="session")
def bench_results():
    """Where the benchmarks leave their medians for the summary table printed at the end."""
    return _RESULTS


def pytest_terminal_summary(terminalreporter):
    """One table per run: size, params, acoustic/vocoder median and quality proxies per variant."""
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section(f"variants summary ({PRESET}, {THREADS} thread(s), short sentence, median)")
    tr.write_line(
        f"{'variant':18} {'acoustic MB':>11} {'params':>11} {'acoustic ms':>11} {'vocoder ms':>10} "
        f"{'frames':>6} {'MCD dB':>7} {'mel L1':>7} {'emotion id':>10}"
    )
    for name in VARIANTS:
        ac, vo = _RESULTS.get((name, "acoustic")), _RESULTS.get((name, "vocoder"))
        m = (ac or vo or {}).get("manifest")
        if m is None:
            continue
        q = m.get("quality") or {}

        def fmt(value, spec):
            return format(value, spec) if value is not None else "-"

        ac_ms = fmt(ac and ac["median_s"] * 1e3, "11.1f")
        vo_ms = fmt(vo and vo["median_s"] * 1e3, "10.1f")
        tr.write_line(
            f"{name:18} {m['sizes']['acoustic'] / 1e6:11.2f} {m['params']['acoustic']:11,} "
            f"{ac_ms:>11} {vo_ms:>10} "
            f"{fmt(ac and ac['frames'], '6d'):>6} {fmt(q.get('mcd_db'), '7.2f'):>7} "
            f"{fmt(q.get('mel_l1'), '7.4f'):>7} {fmt(q.get('emotion_id_accuracy'), '10.0%'):>10}"
        )


def pytest_generate_tests(metafunc):
    if "variant" in metafunc.fixturenames and metafunc.module.__name__.endswith("test_variants_bench"):
        metafunc.parametrize("variant", VARIANTS)


@pytest.fixture(scope="session")
def bench_settings():
    return {"preset": PRESET, "threads": THREADS, "rounds": {"tiny": 10, "base": 7}.get(PRESET, 5)}


@pytest.fixture(scope="session")
def built_variants(tmp_path_factory):
    """name -> BuiltVariant for every benchmarked variant (quality proxies kept if the cache has them)."""
    from variants.build import build_variants

    built = build_variants(
        preset=PRESET,
        variants=VARIANTS,
        out=tmp_path_factory.mktemp("artifacts"),
        cache_dir=_cache_dir(),
        quality=False,
    )
    return {b.name: b for b in built}


@pytest.fixture(scope="session")
def short_inputs():
    """The corpus' short sample sentence, neutral emotion, as model inputs."""
    from devices.ondevice.corpus import sample_sentence
    from devices.ondevice.frontend import text_to_ids

    return text_to_ids(sample_sentence().text, emotion="neutral").to_tensors()


@pytest.fixture()
def bench_threads():
    """torch threads while a variants benchmark runs (EDGEBENCH_BENCH_THREADS, default 1)."""
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory) -> Path:
    """The tiny preset's original as an artifact directory (seeded weights), for agent-level benchmarks."""
    from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
    from variants.artifact import save_artifact

    cfg = get_preset("tiny")
    art = save_artifact(tmp_path_factory.mktemp("tiny") / "original", build_acoustic(cfg.acoustic),
                        build_vocoder(cfg.vocoder), cfg.to_dict(), manifest_extra={"name": "original"})
    return art.path
