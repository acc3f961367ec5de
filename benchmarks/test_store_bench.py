"""Store throughput: recording a realistic run (4 variants x 3 processes x 60 samples per process, 20 per
length class) and computing its summary_df, on a real SQLite file (WAL, one transaction per attempt).

    pytest benchmarks/test_store_bench.py --benchmark-only
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from records import make_identity, make_manifest, make_record  # noqa: E402

from harness import results  # noqa: E402
from harness.budgets import default_budgets  # noqa: E402
from harness.store import Store  # noqa: E402

VARIANTS = ("original", "pruned", "quantized", "pruned+quantized")
RECORDS = {v: make_record(v, processes=3, samples_per_class=60, seed=i) for i, v in enumerate(VARIANTS)}


def record_run(st: Store) -> str:
    rid = st.start_run({"preset": "base"}, default_budgets().to_dict(), "bench", "base", list(VARIANTS),
                       ["pi4-a"])
    for v in VARIANTS:
        st.record_artifact(rid, v, f"/artifacts/{v}", make_manifest(v))
        st.record_attempt(rid, "pi4-a", make_identity("pi4-a"), v, "ok", None, RECORDS[v])
    st.finish_run(rid, "complete")
    return rid


def test_insert_a_realistic_run(benchmark, tmp_path):
    st = Store(tmp_path / "results.sqlite")
    rid = benchmark(record_run, st)
    assert len(results.samples_df(st, rid)) == len(VARIANTS) * 3 * 60
    st.close()


def test_summary_df_of_a_realistic_run(benchmark, tmp_path):
    st = Store(tmp_path / "results.sqlite")
    rid = record_run(st)
    summary = benchmark(results.summary_df, st, rid)
    assert len(summary) == len(VARIANTS) * 3 and set(summary["n"]) == {60}
    st.close()


def test_record_a_run_sqlite_vs_postgresql_side_by_side(benchmark, tmp_path):
    """One realistic run recorded on each backend per round, the order alternating (A B, B A, ...), so
    load on this shared machine reaches both alike; the ratio of medians is in extra_info. PostgreSQL
    runs on loopback (tests/pgserver.py): a network hop on a real farm adds its round trips."""
    import statistics
    import time

    import pgserver
    import pytest

    if not pgserver.available():
        pytest.skip("needs PostgreSQL's server binaries and psycopg (.ci/setup installs them)")
    server = pgserver.PostgresServer.start()
    try:
        stores = {"sqlite": Store(tmp_path / "results.sqlite"), "postgresql": Store(server.new_database())}
        seconds: dict = {name: [] for name in stores}
        rounds = [0]

        def one_round():
            order = list(stores) if rounds[0] % 2 == 0 else list(reversed(stores))
            rounds[0] += 1
            for name in order:
                t0 = time.perf_counter()
                record_run(stores[name])
                seconds[name].append(time.perf_counter() - t0)

        benchmark.pedantic(one_round, rounds=10, iterations=1, warmup_rounds=1)
        medians = {name: statistics.median(v) for name, v in seconds.items()}
        benchmark.extra_info.update({f"{name}_median_s": round(m, 4) for name, m in medians.items()})
        benchmark.extra_info["postgresql_over_sqlite"] = round(medians["postgresql"] / medians["sqlite"], 2)
        benchmark.extra_info["n_per_backend"] = len(seconds["sqlite"])
        for st in stores.values():
            st.close()
    finally:
        server.stop()
